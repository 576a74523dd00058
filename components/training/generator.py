"""Train, evaluate, export and log the copy generator.

    python -m components.training.generator --profile P --params F --out DIR [--parent-run-id R]

Launched as its own process (components.training.launcher): under DDP Lightning re-executes this
command for every extra rank. Every rank trains; rank 0 alone prepares the tokenizer (the other
ranks, started later by Lightning, read what it wrote), evaluates, exports ONNX, logs to MLflow
and writes manifest.json.

Checkpoints go to a folder named by a fingerprint of everything that shapes the weights
(components/training/checkpoints.py), outside DIR: a run stopped part-way resumes from its last
epoch, with the time budget it had left, and a run that finished is reused (only evaluated again)
when nothing but decoding or evaluation settings changed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import shutil
import sys
import time
from datetime import timedelta
from pathlib import Path

import lightning.pytorch as pl
import pandas as pd
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, EMAWeightAveraging, ModelCheckpoint
from torch.utils.data import DataLoader

from components.config import Config, load_config
from components.data.attributes import parse_attributes
from components.data.corpus import CorpusError, load_corpus_splits
from components.models.generator.api import BUNDLE_ARTIFACT, load_generator, save_model_dir
from components.models.generator.constraints import ValueVocabulary, corpus_value_vocabulary, load_ad_law_words, load_latin_words
from components.models.generator.dataset import BucketedBatches, ControlSampling, build_examples
from components.models.generator.decoding import DecodingSettings
from components.models.generator.evaluate import evaluate_heldout, tradeoff_settings, tradeoff_table
from components.models.generator.focus import ANY, LENGTHS, TONES, focusable_values, length_edges
from components.models.generator.model import CopyTransformer, GeneratorModule, ModelSpec
from components.models.generator.retrieval import RetrievalGenerator, substitute_values
from components.models.generator.tokenizer import META_FILE as TOKENIZER_META
from components.models.generator.tokenizer import CopyTokenizer
from components.training.checkpoints import LAST, checkpoint_root, prune, read_done, run_dir, write_done
from components.training.launcher import exit_code_on_sigterm, write_manifest

log = logging.getLogger("copyflow.generator")

METRIC_KEYS = (
    "bleu4", "rouge1", "rouge2", "rougeL", "distinct1", "distinct2", "distinct2_vs_human", "repetition4", "doubling_rate", "stutter_rate",
    "foreign_word_rate", "attr_coverage", "focus_coverage", "random_focus_coverage", "no_focus_mention_rate", "short_random_focus_coverage", "short_no_focus_mention_rate",
    "short_length_rate", "long_length_rate", "no_length_short_rate", "no_length_long_rate",
    "hallucination_rate", "unlisted_rate", "ad_law_violations",
)
PIP_REQUIREMENTS = ["torch==2.13.0", "sentencepiece==0.2.3", "onnxruntime==1.32.0", "numpy", "pandas"]
STAGE = "generator"
# Part of the checkpoint fingerprint: bump when a code change makes old checkpoints unusable.
MODEL_CODE_VERSION = 1
# Knobs that do not shape the weights: decoding, evaluation, threads, and the value vocabulary's
# rates (the constraints built around the model). Changing only these reuses a finished training.
NOT_TRAINING = frozenset({
    "decoding", "beam_size", "top_p", "temperature", "length_penalty", "no_repeat_ngram", "num_candidates", "rerank_coverage",
    "min_len", "max_decode_len", "length_budget", "catalog_penalty", "no_doubling", "forbid_unlisted",
    "torch_threads", "train_threads", "focus_samples", "eval_samples", "tradeoff_samples", "parity_samples",
    "faithful_key_max_rate", "faithful_alias_max_rate", "faithful_alias_min_uses",
})


def is_launcher_rank() -> bool:
    """The process Lightning started from (global rank 0 before DDP spawns the others)."""
    return os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0"


def decoding_defaults(cfg: Config) -> DecodingSettings:
    g = cfg.generator
    return DecodingSettings(
        method=g.decoding, beam_size=g.beam_size, top_p=g.top_p, temperature=g.temperature,
        length_penalty=g.length_penalty, no_repeat_ngram=g.no_repeat_ngram, num_candidates=g.num_candidates,
        rerank_coverage=g.rerank_coverage, max_len=min(g.max_decode_len, g.max_target_len), min_len=g.min_len, seed=cfg.seed,
        length_budget=g.length_budget, catalog_penalty=g.catalog_penalty, no_doubling=g.no_doubling, forbid_unlisted=g.forbid_unlisted,
    )


def fingerprint(cfg: Config, splits: dict[str, pd.DataFrame]) -> str:
    """Everything that shapes the weights: the training knobs, seed, trainer and the training and
    validation rows (the tokenizer and exemplars are built from them)."""
    knobs = cfg.generator.model_dump(exclude=set(NOT_TRAINING))
    digest = hashlib.sha256()
    digest.update(json.dumps({"code": MODEL_CODE_VERSION, "seed": cfg.seed, "knobs": knobs, "trainer": cfg.trainer.model_dump()}, sort_keys=True, default=str).encode())
    for split in ("train", "valid"):
        rows = splits[split]
        digest.update(json.dumps([list(rows["attributes"]), list(rows["summary"])], ensure_ascii=False, sort_keys=True).encode())
    return digest.hexdigest()[:16]


def prepare(cfg: Config, prepared_dir: Path, splits: dict[str, pd.DataFrame], tokenizer_dir: Path) -> tuple[CopyTokenizer, ValueVocabulary, list[float]]:
    """Tokenizer, value vocabulary and length buckets from the training split (rank 0 writes,
    other ranks read the same files so every rank sees identical token ids). The tokenizer is
    kept with the checkpoints (`tokenizer_dir`): a resumed run must use the ids it trained with."""
    meta = prepared_dir / "prepared.json"
    if is_launcher_rank():
        train = splits["train"]
        if (tokenizer_dir / TOKENIZER_META).exists():  # written last: a complete tokenizer
            tokenizer = CopyTokenizer.load(tokenizer_dir)
        else:
            keys = {k for attrs in train["attributes"] for k in attrs}
            values = {v for attrs in train["attributes"] for vs in attrs.values() for v in vs}
            tokenizer = CopyTokenizer.train(train["summary"], keys, values, cfg.generator.tokenizer_vocab_size)
            tokenizer.save(tokenizer_dir)
        vocabulary = corpus_value_vocabulary(train, cfg.generator)
        edges = length_edges([len(t) for t in train["summary"]])
        tokenizer.save(prepared_dir)
        meta.write_text(json.dumps({"vocabulary": vocabulary.to_dict(), "length_edges": edges}, ensure_ascii=False), encoding="utf-8")
        return tokenizer, vocabulary, edges
    data = json.loads(meta.read_text(encoding="utf-8"))
    return CopyTokenizer.load(prepared_dir), ValueVocabulary.from_dict(data["vocabulary"]), data["length_edges"]


def exemplar_texts(train: pd.DataFrame, valid: pd.DataFrame, edges, k: int) -> tuple[list[list[str]], list[list[str]]]:
    """Retrieved copies to edit: for a training row its k nearest *other* training rows, for a
    validation row its nearest training row, each with the row's own values substituted."""
    attributes, texts = list(train["attributes"]), list(train["summary"])
    index = RetrievalGenerator(attributes, texts, edges)
    train_side = [
        [substitute_values(texts[j], attributes[j], attributes[i]) for j in neighbors]
        for i, neighbors in enumerate(index.training_neighbors(k))
    ]
    valid_side = [index.generate(attrs, n=1) for attrs in valid["attributes"]]
    return train_side, valid_side


class MlflowEpochLogger(Callback):
    """Per-epoch losses to the active MLflow run, from global rank 0 only."""

    def on_validation_epoch_end(self, trainer, pl_module):
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        import mlflow

        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k in ("train_loss", "val_loss")}
        metrics["lr"] = float(trainer.optimizers[0].param_groups[0]["lr"])
        mlflow.log_metrics(metrics, step=trainer.current_epoch)


class EpochControls(Callback):
    """Tells the training set which epoch starts, before Lightning creates that epoch's
    DataLoader iterator (and its workers' copies of the dataset)."""

    def __init__(self, dataset: BucketedBatches) -> None:
        self.dataset = dataset

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.dataset.set_epoch(trainer.current_epoch)


def build_trainer(cfg: Config, out_dir: Path, checkpoint_dir: Path, ema_start: int = 0) -> tuple[pl.Trainer, ModelCheckpoint]:
    """`ema_start`: the step the weight average starts at; it must not be later than the first
    validation, which otherwise would score the initial weights the average was created with
    (`train` sets it once the trainer knows the world size)."""
    g, t = cfg.generator, cfg.trainer
    checkpoint = ModelCheckpoint(dirpath=checkpoint_dir, filename="{epoch}", monitor="val_loss", save_top_k=1, save_last=True, every_n_epochs=1)
    strategy = t.strategy
    if strategy == "ddp" and t.accelerator == "cpu":
        from lightning.pytorch.strategies import DDPStrategy

        strategy = DDPStrategy(process_group_backend="gloo")
    callbacks: list[Callback] = [EarlyStopping("val_loss", patience=g.patience, check_on_train_epoch_end=False), checkpoint, MlflowEpochLogger()]
    if g.ema_decay > 0:
        # Validation, checkpoints and the final weights are the moving average (Lightning swaps it in).
        callbacks.insert(0, EMAWeightAveraging(decay=g.ema_decay, update_starting_at_step=ema_start))
    trainer = pl.Trainer(
        accelerator=t.accelerator, devices=t.devices, strategy=strategy, precision=t.precision, num_nodes=t.num_nodes,
        max_epochs=g.max_epochs, max_steps=g.max_steps, max_time=timedelta(minutes=g.max_minutes),
        callbacks=callbacks,
        gradient_clip_val=1.0, logger=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=out_dir, num_sanity_val_steps=0,
    )
    return trainer, checkpoint


def plot_tradeoff(table: pd.DataFrame, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter(table["distinct2"], table["bleu4"])
    for _, row in table.iterrows():
        ax.annotate(row["setting"], (row["distinct2"], row["bleu4"]), fontsize=7)
    ax.set_xlabel("distinct-2 (diversity)")
    ax.set_ylabel("BLEU-4 (quality)")
    ax.set_title("Generator decoding: quality vs diversity")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def evaluate_and_log(cfg: Config, out_dir: Path, splits, net: CopyTransformer, tokenizer, vocabulary, edges, run) -> dict:
    """Rank 0 after training: held-out metrics, trade-off, samples, ONNX export + parity, models."""
    import mlflow

    from components.serving.generator_onnx import export_onnx, parity, require_parity

    g = cfg.generator
    ad_law_path = Path(cfg.paths.ad_law_words)
    defaults = decoding_defaults(cfg)
    train = splits["train"]
    baseline = RetrievalGenerator(list(train["attributes"]), list(train["summary"]), edges)
    extra = {"profile": cfg.profile, "max_exemplar_len": g.max_exemplar_len}
    model_dir = save_model_dir(out_dir / "model", net, tokenizer, vocabulary, ad_law_path, baseline, defaults, extra, Path(cfg.paths.latin_words))
    # Evaluate the bundle exactly as it ships (and as `load_generator` serves it): the same
    # constraints, lexicons and decoding defaults for torch and, below, ONNX Runtime.
    generator = load_generator(model_dir)
    test = splits["test"].head(g.eval_samples).to_dict("records")
    if not test:
        raise ValueError("the held-out test split is empty: raise data.test_fraction or use a larger corpus")

    started = time.perf_counter()
    metrics, samples = evaluate_heldout(generator, baseline, test, cfg.seed, g.focus_samples)
    metrics["eval_seconds"] = time.perf_counter() - started
    reports = out_dir / "reports"
    reports.mkdir(parents=True, exist_ok=True)
    samples.to_csv(reports / "samples.csv", index=False)
    mlflow.log_table(samples.head(50), artifact_file="generator/samples.json")

    if g.tradeoff_samples > 0:
        table = tradeoff_table(generator, test[: g.tradeoff_samples], tradeoff_settings(defaults))
        table.to_csv(reports / "tradeoff.csv", index=False)
        (reports / "tradeoff.md").write_text(table.to_markdown(index=False, floatfmt=".3f") if _has_tabulate() else table.to_string(index=False), encoding="utf-8")
        mlflow.log_table(table, artifact_file="generator/tradeoff.json")
        plot_tradeoff(table, reports / "tradeoff.png")

    paths = export_onnx(net, model_dir / "onnx")
    onnx_generator = load_generator(model_dir, backend="onnx")
    parity_result = parity(generator, onnx_generator, parity_requests(generator, test[: g.parity_samples]))
    metrics.update(parity_result)
    require_parity(parity_result)  # the server decodes with ONNX Runtime: a broken export must not ship

    mlflow.log_metrics({k: float(v) for k, v in metrics.items() if v == v})
    mlflow.log_artifacts(str(reports), artifact_path="generator/reports")
    mlflow.log_artifacts(str(model_dir), artifact_path=BUNDLE_ARTIFACT)
    torch_info = mlflow.pytorch.log_model(
        net, name="generator_pytorch", pip_requirements=PIP_REQUIREMENTS, serialization_format="pickle"
    )
    import onnx

    mlflow.onnx.log_model(onnx.load(str(paths["encoder"])), name="generator_onnx_encoder", pip_requirements=["onnxruntime==1.32.0", "numpy"])
    mlflow.onnx.log_model(onnx.load(str(paths["decoder_step"])), name="generator_onnx_decoder_step", pip_requirements=["onnxruntime==1.32.0", "numpy"])
    return {
        "model": "generator",
        "run_id": run.info.run_id,
        "model_uri": torch_info.model_uri,
        "onnx_uri": f"runs:/{run.info.run_id}/{BUNDLE_ARTIFACT}",
        "model_dir": str(model_dir.resolve()),
        "metrics": {k: float(v) for k, v in metrics.items()},
    }


def parity_requests(generator, rows: list[dict]) -> list:
    """The parity inputs: held-out products with the controls a shop sends varied (a focus
    value on every other request, each tone and length bucket and `any`)."""
    tones, lengths = (ANY, *TONES), (ANY, *LENGTHS)
    requests = []
    for i, row in enumerate(rows):
        attributes = parse_attributes(row["attributes"]) if isinstance(row["attributes"], str) else row["attributes"]
        focus = focusable_values(attributes)[:1] if i % 2 else None
        requests.append(generator.request(row["attributes"], focus, tones[i % len(tones)], lengths[(i // 2) % len(lengths)]))
    return requests


class GeneratorDiverged(RuntimeError):
    """Training reached no finite validation loss or left non-finite weights: nothing to ship."""


def require_finite(done: dict, state: dict, ckpt_dir: Path) -> None:
    """Raise GeneratorDiverged (and remove the checkpoints, so no later run reuses them) when the
    best validation loss is not finite, where one was measured, or any weight is not finite."""
    loss = done.get("best_val_loss")
    loss_bad = loss is not None and not math.isnan(loss) and not math.isfinite(loss)  # NaN: no validation ran
    bad = [name for name, value in state.items() if torch.is_tensor(value) and value.is_floating_point() and not bool(torch.isfinite(value).all())]
    if loss_bad or bad:
        shutil.rmtree(ckpt_dir, ignore_errors=True)
        raise GeneratorDiverged(
            f"generator training diverged (best validation loss {loss}; {len(bad)} weight tensors not finite, e.g. {bad[:3]}); "
            "its checkpoints were removed. Lower generator.lr or raise generator.warmup_steps."
        )


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401

        return True
    except ImportError:
        return False


def train(cfg: Config, out_dir: Path, parent_run_id: str | None = None, callbacks: list[Callback] | None = None) -> dict | None:
    """Train (or resume, or reuse a finished run of) the generator on every rank; rank 0
    evaluates and returns the manifest (other ranks return None)."""
    from components.tracking import config_params, configure, log_datasets, split_datasets

    pl.seed_everything(cfg.seed, workers=True)
    g = cfg.generator
    if g.train_threads or g.torch_threads:
        torch.set_num_threads(g.train_threads or g.torch_threads)
    out_dir.mkdir(parents=True, exist_ok=True)
    splits = load_corpus_splits(cfg)
    if splits["train"].empty or splits["valid"].empty:
        raise ValueError(f"corpus {cfg.paths.corpus} gives {len(splits['train'])} train / {len(splits['valid'])} valid rows: too few")
    # Checkpoints outside out_dir (which DVC clears before a re-run): a stopped run resumes, a
    # finished one with the same fingerprint is reused (components/training/checkpoints.py).
    ckpt_dir = run_dir(checkpoint_root(cfg, STAGE), STAGE, fingerprint(cfg, splits))
    tokenizer, vocabulary, edges = prepare(cfg, out_dir / "prepared", splits, ckpt_dir / "tokenizer")
    exemplar_dropout = g.exemplar_dropout if g.max_exemplar_len > 0 else 1.0
    sampling = ControlSampling(g.focus_empty_prob, g.control_any_prob, g.max_focus, exemplar_dropout, g.max_exemplar_len, g.shuffle_attributes)
    train, valid = splits["train"], splits["valid"]
    train_exemplars, valid_exemplars = exemplar_texts(train, valid, edges, g.exemplar_candidates) if g.max_exemplar_len > 0 else (None, None)
    train_ds = BucketedBatches(build_examples(train["attributes"], train["summary"], tokenizer, edges, g.max_target_len, train_exemplars), tokenizer, g.batch_size, g.max_source_len, sampling, cfg.seed, resample=True)
    valid_ds = BucketedBatches(build_examples(valid["attributes"], valid["summary"], tokenizer, edges, g.max_target_len, valid_exemplars), tokenizer, g.batch_size, g.max_source_len, sampling, cfg.seed + 1, resample=False)
    workers = cfg.trainer.num_workers
    train_loader = DataLoader(train_ds, batch_size=None, shuffle=True, num_workers=workers)
    valid_loader = DataLoader(valid_ds, batch_size=None, shuffle=False, num_workers=workers)

    spec = ModelSpec(tokenizer.vocab_size, g.d_model, g.nhead, g.encoder_layers, g.decoder_layers, g.dim_feedforward, g.dropout, g.max_source_len, g.max_target_len, g.embed_dim)
    trainer, checkpoint = build_trainer(cfg, out_dir, ckpt_dir)
    # Lightning resolves devices "auto", -1 or a list of ids: each rank gets 1/world of the batches.
    world = trainer.num_devices * trainer.num_nodes
    steps_per_epoch = max(1, len(train_ds) // world)
    total = steps_per_epoch * g.max_epochs if g.max_steps < 0 else min(g.max_steps, steps_per_epoch * g.max_epochs)
    module = GeneratorModule(spec.to_dict(), g.lr, min(g.warmup_steps, max(1, total // 10)), total, g.max_minutes * 60, g.label_smoothing, g.weight_decay, g.max_cpu_minutes * 60)
    # The average starts after warm-up (early weights would linger in it) or at the first epoch's
    # end if that comes sooner (an average never updated would be validated as the initial weights).
    for callback in trainer.callbacks:
        if isinstance(callback, EMAWeightAveraging):
            callback.update_starting_at_step = min(g.warmup_steps, steps_per_epoch - 1)
    trainer.callbacks.extend([EpochControls(train_ds), *(callbacks or [])])

    done = read_done(ckpt_dir)
    reuse = done is not None and Path(done["best_checkpoint"]).exists()
    last = ckpt_dir / LAST
    resume = None if reuse or not last.exists() else last
    run = None
    if is_launcher_rank():
        import mlflow

        configure(cfg)
        run = mlflow.start_run(run_name=f"generator-{cfg.profile}", parent_run_id=parent_run_id, nested=parent_run_id is not None)
        mlflow.set_tags({"model": "generator", "profile": cfg.profile, "checkpoints": str(ckpt_dir),
                         "training": "reused a finished run" if reuse else f"resumed from {resume}" if resume else "from scratch"})
        if reuse and done.get("run_id"):  # a reused run has no loss curves: the run that trained the weights has them
            mlflow.set_tag("training.run_id", done["run_id"])
        mlflow.log_params(config_params(cfg) | {"n_params": sum(p.numel() for p in module.parameters()), "vocab_size": tokenizer.vocab_size, "train_rows": len(splits["train"]), "valid_rows": len(splits["valid"]), "test_rows": len(splits["test"]), "factual_keys": ",".join(vocabulary.factual_keys), "value_aliases": ",".join(vocabulary.aliases or {})})
        log_datasets(split_datasets(splits, name=f"generator-{cfg.profile}", source=cfg.paths.corpus))
    started = time.perf_counter()
    try:
        if reuse:  # no fit: under DDP no other rank is started
            log.info("generator training %s finished before: reusing its best checkpoint", ckpt_dir)
        else:
            trainer.fit(module, train_loader, valid_loader, ckpt_path=resume)  # Ctrl-C: Lightning exits 1
            if not checkpoint.best_model_path:  # no validation ran (a step cap inside the first epoch)
                trainer.save_checkpoint(last)  # on every rank: a collective under DDP
            if not trainer.is_global_zero:
                return None
            done = {"best_checkpoint": checkpoint.best_model_path or str(last), "epochs_run": trainer.current_epoch,
                    "steps_run": trainer.global_step, "best_val_loss": float(checkpoint.best_model_score or float("nan")),
                    "train_seconds": time.perf_counter() - started, "resumed_from": str(resume) if resume else None,
                    "run_id": run.info.run_id if run is not None else None}
            write_done(ckpt_dir, done)
            prune(ckpt_dir)
        if g.torch_threads:  # decoding runs many tiny steps (and DDP's launcher reset the count)
            torch.set_num_threads(g.torch_threads)
        import mlflow

        train_seconds = time.perf_counter() - started
        net = module.net
        # The best epoch's weights (early stopping trains past it; with EMA, the average).
        state = torch.load(done["best_checkpoint"], map_location="cpu", weights_only=False)["state_dict"]
        require_finite(done, state, ckpt_dir)  # before any evaluation or export, reused runs too
        net.load_state_dict({k.removeprefix("net."): v for k, v in state.items()})
        net = net.cpu().eval()
        mlflow.log_metrics({"train_seconds": train_seconds, "epochs_run": float(done["epochs_run"]), "steps_run": float(done["steps_run"]),
                            "best_val_loss": done["best_val_loss"], "training_reused": float(reuse)})
        manifest = evaluate_and_log(cfg, out_dir, splits, net, tokenizer, vocabulary, edges, run)
        manifest["metrics"].update({"train_seconds": train_seconds, "best_val_loss": done["best_val_loss"]})
        write_manifest(out_dir, manifest)
        return manifest
    except BaseException as exc:
        if run is not None:  # the run must not read FINISHED in the UI
            import mlflow

            mlflow.end_run(status="KILLED" if isinstance(exc, (KeyboardInterrupt, SystemExit)) else "FAILED")
            run = None
        raise
    finally:
        if run is not None:
            import mlflow

            mlflow.end_run()


def reevaluate(cfg: Config, model_dir: Path, out_dir: Path, parent_run_id: str | None = None) -> dict:
    """Evaluate, export and log an already trained model directory under the current decoding
    settings (a new MLflow run; no training). Writes and returns the manifest."""
    import mlflow

    from components.models.generator.api import CONFIG_FILE, VALUES_FILE, load_torch_net
    from components.tracking import config_params, configure

    if cfg.generator.torch_threads:
        torch.set_num_threads(cfg.generator.torch_threads)
    model_dir = Path(model_dir)
    net = load_torch_net(model_dir)
    tokenizer = CopyTokenizer.load(model_dir)
    vocabulary = ValueVocabulary.from_dict(json.loads((model_dir / VALUES_FILE).read_text(encoding="utf-8")))
    edges = json.loads((model_dir / CONFIG_FILE).read_text(encoding="utf-8"))["length_edges"]
    configure(cfg)
    with mlflow.start_run(run_name=f"generator-{cfg.profile}-eval", parent_run_id=parent_run_id, nested=parent_run_id is not None) as run:
        mlflow.set_tags({"model": "generator", "profile": cfg.profile, "evaluated_from": str(model_dir)})
        mlflow.log_params(config_params(cfg))  # the decoding and evaluation knobs it was evaluated under
        manifest = evaluate_and_log(cfg, Path(out_dir), load_corpus_splits(cfg), net, tokenizer, vocabulary, edges, run)
    write_manifest(Path(out_dir), manifest)
    return manifest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", required=True)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--parent-run-id", default=None)
    parser.add_argument("--evaluate-only", type=Path, default=None, metavar="MODEL_DIR", help="skip training: evaluate, export and log this model directory")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    log.setLevel(logging.INFO)
    cfg = load_config(args.params, args.profile)
    try:
        # The word lists go into the bundle after training: a missing or empty one fails now, not
        # 25 minutes later (the corpus is the first thing `train` reads).
        load_ad_law_words(cfg.paths.ad_law_words)
        load_latin_words(cfg.paths.latin_words)
        if args.evaluate_only is not None:
            reevaluate(cfg, args.evaluate_only, args.out, args.parent_run_id)
        else:
            exit_code_on_sigterm(train, cfg, args.out, args.parent_run_id)
    except (FileNotFoundError, CorpusError) as exc:  # a missing or malformed input file: what to fix, not a traceback
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from exc


if __name__ == "__main__":
    from components.lifecycle import die_with_parent

    die_with_parent()  # rank 0 ends with the stage that launched it, a DDP rank with rank 0
    main()
