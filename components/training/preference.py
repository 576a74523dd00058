"""Training entry point of the preference models (run by components.training.launcher).

    python -m components.training.preference --profile P --params F --out DIR [--parent-run-id R]

Every rank encodes the features and trains each model kind of `preference.models` with
Lightning (DDP when params.yaml's trainer section says so). Rank 0 alone then evaluates on the
time-based test split, exports and checks ONNX, writes self-contained model folders, logs one
MLflow run per model kind (nested under R, or under a `train_preference` run it opens itself)
and writes DIR/manifest.json for the launcher. Other ranks exit without touching MLflow.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from components.config import Config, load_config
from components.training.checkpoints import checkpoint_root
from components.training.launcher import exit_code_on_sigterm

STAGE = "preference"


CHAMPION_DIR = "model"


def default_out_dir(cfg: Config) -> Path:
    """Where the pipeline stage writes: artifacts/<profile>/models/preference/ (champion model
    folder in model/, one folder per kind, plots/, report.md, manifest.json). Checkpoints are
    kept outside it (components.training.checkpoints), so a re-run resumes them."""
    return cfg.stage_dir("models") / STAGE


@dataclass
class KindReport:
    kind: str
    p_valid: np.ndarray
    p_test: np.ndarray
    metrics: dict[str, float]
    model_dir: Path
    history: list[dict] = field(default_factory=list)
    module: object = None


def copies_path(cfg: Config) -> Path:
    """The clean copies table: the deep model reads which attribute values each copy mentions."""
    return cfg.stage_dir("clean") / "copies.parquet"


def copy_options_path(cfg: Config) -> Path:
    """The features stage's copy options: every catalog copy each impression could have shown."""
    return cfg.stage_dir("features") / "copy_options.parquet"


def load_data(cfg: Config):
    from components.models.preference.data import encode_tables, load_feature_tables

    p = cfg.preference
    return encode_tables(
        load_feature_tables(cfg.stage_dir("features"), copies_path(cfg)), cfg.features.history_length,
        cold_holdout_fraction=p.cold_holdout_users, seed=cfg.seed, cold_min_events=p.cold_start_min_events,
    )


def _set_threads(cfg: Config) -> None:
    """Share the CPU between DDP ranks instead of oversubscribing it."""
    if cfg.trainer.accelerator == "cpu":
        import torch

        devices = cfg.trainer.devices if isinstance(cfg.trainer.devices, int) else 1
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, devices)))


def ground_truth_probabilities(cfg: Config, event_ids: pd.Series) -> np.ndarray | None:
    """True click probability of each test impression (simulated source only; evaluation only)."""
    path = cfg.stage_dir("source") / "ground_truth" / "impressions.parquet"
    if not path.exists():
        return None
    truth = pd.read_parquet(path, columns=["event_id", "click_probability"])
    matched = event_ids.astype(str).map(truth.set_index(truth["event_id"].astype(str))["click_probability"])
    if matched.isna().any():
        missing = event_ids[matched.isna()].head(3).tolist()
        raise ValueError(f"{path}: no ground truth for {int(matched.isna().sum())} test impressions, e.g. {missing}")
    return matched.to_numpy(dtype=np.float64)


MIN_SEGMENT_ROWS = 50
MIN_SEGMENT_POSITIVES = 5


def measurable(y: np.ndarray) -> bool:
    """Enough rows and clicks (and non-clicks) for an AUC with a meaningful interval."""
    positives = float(np.sum(y))
    return len(y) >= MIN_SEGMENT_ROWS and MIN_SEGMENT_POSITIVES <= positives <= len(y) - MIN_SEGMENT_POSITIVES


def segments(frame: pd.DataFrame, y: np.ndarray) -> dict[str, np.ndarray]:
    """new vs returning shoppers, and each category — those with enough rows and clicks."""
    masks: dict[str, np.ndarray] = {}
    cold = frame["is_cold"].fillna(True).to_numpy(dtype=bool)
    masks["new"], masks["returning"] = cold, ~cold
    category = frame["category"].fillna("unknown").astype(str).to_numpy()
    for value in np.unique(category):
        masks[f"category_{value}"] = category == value
    return {name: mask for name, mask in masks.items() if measurable(y[mask])}


def _evaluate_kind(cfg: Config, kind: str, fit, data, fallback, out_dir: Path) -> KindReport:
    from components.evaluation.preference import auc, choose_threshold, evaluate_model
    from components.models.preference.api import save_model_dir
    from components.models.preference.fallback import is_cold
    from components.serving.preference_onnx import ONNX_FILE, check_parity, export_onnx

    module = fit.module
    prob = module.probability_model()
    from components.serving.preference_onnx import torch_predict

    p_valid = torch_predict(prob, data.valid.x)
    p_test = torch_predict(prob, data.test.x)
    threshold = choose_threshold(data.valid.y, p_valid)
    clusters = data.test.frame["user_id"].astype(str).to_numpy()
    metrics = evaluate_model(
        data.test.y, p_test, threshold=threshold, n_boot=cfg.preference.bootstrap, seed=cfg.seed,
        clusters=clusters, segments=segments(data.test.frame, data.test.y),
    )
    # The per-epoch series' name (val_loss, val_auc): the UI charts one validation AUC, not two.
    metrics["val_auc"] = auc(data.valid.y, p_valid)

    # Cold start: shoppers with < k earlier events get the fallback, unless validation has
    # enough of them to show the model is better there. Both are reported on split "cold".
    k = cfg.preference.cold_start_min_events
    cold_valid = is_cold(data.valid.frame, k)
    cold_policy = "fallback"
    if measurable(data.valid.y[cold_valid]):
        fb_valid = auc(data.valid.y[cold_valid], fallback.predict(data.valid.x[cold_valid], data.encoder))
        if auc(data.valid.y[cold_valid], p_valid[cold_valid]) > fb_valid:
            cold_policy = "model"
    metrics["cold_policy_is_fallback"] = float(cold_policy == "fallback")

    model_dir = out_dir / kind
    if model_dir.exists():
        shutil.rmtree(model_dir)
    save_model_dir(
        model_dir, kind=kind, spec=module.spec, net=module.net, encoder=data.encoder, fallback=fallback,
        threshold=threshold, cold_policy=cold_policy, cold_min_events=k,
        extra={"label": data.spec.get("label", "label"), "profile": cfg.profile, "best_checkpoint": fit.best_checkpoint},
    )
    onnx_path = export_onnx(prob, data.valid.x, model_dir / ONNX_FILE)
    # Parity on held-out rows the export never saw (the test split), as part of training.
    parity = check_parity(onnx_path, prob, data.test.x[:4096])
    metrics["onnx_max_abs_diff"] = parity
    metrics["epochs_completed"] = float(fit.epochs_completed)
    return KindReport(kind, p_valid, p_test, metrics, model_dir, fit.history, module)


def _cold_metrics(cfg: Config, data, fallback, reports: dict[str, KindReport]) -> dict[str, dict[str, float]]:
    """Per kind: AUC on split "cold" (first events of never-trained-on shoppers, and cold-start
    test rows) for the fallback, the model, and what is served under the chosen policy."""
    from components.evaluation.preference import auc, bootstrap_metrics
    from components.serving.preference_onnx import torch_predict

    cold = data.cold
    out: dict[str, dict[str, float]] = {kind: {"cold_n": float(len(cold.y)), "cold_positives": float(cold.y.sum())} for kind in reports}
    if not measurable(cold.y):
        return out
    y = cold.y
    clusters = cold.frame["user_id"].astype(str).to_numpy()
    p_fallback = fallback.predict(cold.x, data.encoder)
    fb = bootstrap_metrics(y, p_fallback, {"auc": auc}, cfg.preference.bootstrap, cfg.seed, clusters)["auc"]
    for kind, report in reports.items():
        p_model = torch_predict(report.module.probability_model(), cold.x)
        model = bootstrap_metrics(y, p_model, {"auc": auc}, cfg.preference.bootstrap, cfg.seed, clusters)["auc"]
        served = fb if report.metrics["cold_policy_is_fallback"] else model
        out[kind].update(
            {
                **served.as_metrics("cold_auc"),
                **fb.as_metrics("cold_auc_fallback"),
                **model.as_metrics("cold_auc_model"),
            }
        )
    return out


def _copy_choice_metrics(cfg: Config, data, reports: dict[str, KindReport]) -> dict[str, dict[str, float]]:
    """Per kind: what showing each test shopper the copy the model scores highest would have
    earned (components/evaluation/copy_choice.py). Model scores, not the cold-start fallback:
    the fallback does not see the copy, so it cannot choose one. Nothing when the source has
    no product with two or more copies (OBD)."""
    from components.data.schema import load_table
    from components.data.source import read_ground_truth
    from components.evaluation.copy_choice import (
        choose,
        off_policy_metrics,
        option_frame,
        simulator_copy_weight,
        true_metrics,
        true_option_probabilities,
    )
    from components.serving.preference_onnx import torch_predict

    path = copy_options_path(cfg)
    if not path.exists():
        return {}
    rows = option_frame(data.test.frame, pd.read_parquet(path))
    if rows.empty:
        return {}
    x = data.encoder.transform(rows)
    truth = None
    truth_dir = cfg.stage_dir("source") / "ground_truth"
    if (truth_dir / "user_preferences.parquet").exists():
        clean = cfg.stage_dir("clean")
        truth = true_option_probabilities(
            rows, read_ground_truth(cfg, "impressions"), read_ground_truth(cfg, "user_preferences"),
            load_table(clean, "copies"), load_table(clean, "products"), simulator_copy_weight(truth_dir),
        )
    out = {}
    for kind, report in reports.items():
        choice = choose(rows, torch_predict(report.module.probability_model(), x))
        out[kind] = off_policy_metrics(choice, cfg.preference.bootstrap, cfg.seed)
        if truth is not None:
            out[kind] |= true_metrics(choice, truth)
    return out


def evaluate_all(cfg: Config, data, fits: dict, out_dir: Path) -> tuple[dict[str, KindReport], dict]:
    """Rank 0: evaluate every kind, compare them, and pick the champion (by validation AUC)."""
    from components.evaluation.preference import auc, bootstrap_metrics, paired_difference
    from components.models.preference.fallback import fit_fallback
    from components.models.preference.nets import fill_unseen_category

    fallback = fit_fallback(data.train.x, data.train.y, data.encoder, cfg.seed)
    for fit in fits.values():
        fill_unseen_category(fit.module.net, data.train.x)
    reports = {kind: _evaluate_kind(cfg, kind, fit, data, fallback, out_dir) for kind, fit in fits.items()}
    for kind, cold in _cold_metrics(cfg, data, fallback, reports).items():
        reports[kind].metrics.update(cold)
    for kind, choice in _copy_choice_metrics(cfg, data, reports).items():
        reports[kind].metrics.update(choice)

    comparison: dict = {}
    clusters = data.test.frame["user_id"].astype(str).to_numpy()
    truth = ground_truth_probabilities(cfg, data.test.frame["event_id"])
    if truth is not None:
        ceiling = bootstrap_metrics(data.test.y, truth, {"auc": auc}, cfg.preference.bootstrap, cfg.seed, clusters)["auc"]
        comparison.update(ceiling.as_metrics("ceiling_auc"))
    if "logreg" in reports:
        base = reports["logreg"].metrics
        comparison.update({"baseline_auc": base["auc"], "baseline_auc_ci_low": base["auc_ci_low"], "baseline_auc_ci_high": base["auc_ci_high"]})
    if "logreg" in reports and "deep" in reports:
        diff = paired_difference(data.test.y, reports["deep"].p_test, reports["logreg"].p_test, auc, cfg.preference.bootstrap, cfg.seed, clusters)
        comparison.update({"auc_diff": diff.value, "auc_diff_ci_low": diff.low, "auc_diff_ci_high": diff.high})
    champion = max(reports, key=lambda k: reports[k].metrics["val_auc"])
    comparison["champion_kind"] = champion
    return reports, comparison


# ---------------------------------------------------------------- MLflow (rank 0 only)


def _pip_requirements() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    reqs = []
    for package in ("torch", "mlflow", "numpy", "pandas", "onnx", "onnxruntime"):
        try:
            reqs.append(f"{package}=={version(package)}")
        except PackageNotFoundError:
            continue
    return reqs


PREDICTION_DEVICE_ENV = "MLFLOW_DEFAULT_PREDICTION_DEVICE"


@contextmanager
def cpu_prediction_device():
    """MLflow's pytorch pyfunc loader picks CUDA whenever a GPU is visible, but a pt2
    (torch.export) model cannot move across devices: exported on CPU, it fails to load on a GPU
    host. Inside this block MLflow predicts on CPU unless the user set a device explicitly."""
    previous = os.environ.get(PREDICTION_DEVICE_ENV)
    if previous is None:
        os.environ[PREDICTION_DEVICE_ENV] = "cpu"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(PREDICTION_DEVICE_ENV, None)


def log_pt2_model(model, **kwargs):
    """`mlflow.pytorch.log_model` in pt2 format (MLflow's safe default: no pickled code runs on
    load). Rank 0 evaluates and exports on CPU, also after GPU training, so the input example is
    validated on CPU; on a GPU host, load it with `model_config={"device": "cpu"}` (docs/gpu.md)."""
    import mlflow

    with cpu_prediction_device():
        return mlflow.pytorch.log_model(model, serialization_format="pt2", **kwargs)


def _log_models(report: KindReport, data, comparison_plots: list[Path]) -> dict[str, str]:
    """pytorch + onnx flavours with signatures and input examples, the model folder, plots."""
    import mlflow
    import onnx
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    from components.models.preference.api import MODEL_DIR_ARTIFACT, load_preference

    model = load_preference(report.model_dir)
    columns = data.encoder.column_names()
    example = np.ascontiguousarray(data.test.x[:5], dtype=np.float32)
    # Both flavours take the packed matrix (encoder.json in model_dir packs a feature frame);
    # the column names travel as metadata.
    output = Schema([TensorSpec(np.dtype(np.float32), (-1, 1), "probability")])
    # The torch pyfunc takes one unnamed array; the ONNX pyfunc feeds the graph input "x" by name.
    torch_signature = ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, len(columns)))]), outputs=output)
    onnx_signature = ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, len(columns)), "x")]), outputs=output)
    metadata = {"columns": columns, "kind": report.kind, "encoder": f"{MODEL_DIR_ARTIFACT}/encoder.json"}
    requirements = _pip_requirements()
    torch_info = log_pt2_model(
        model.probability_model, name="model", signature=torch_signature, input_example=example,
        pip_requirements=requirements, metadata=metadata,
    )
    onnx_info = mlflow.onnx.log_model(
        onnx.load(str(report.model_dir / "model.onnx")), name="onnx", signature=onnx_signature,
        input_example=example, pip_requirements=requirements, save_as_external_data=False, metadata=metadata,
    )
    mlflow.log_artifacts(str(report.model_dir), MODEL_DIR_ARTIFACT)
    for plot in comparison_plots:
        mlflow.log_artifact(str(plot), "plots")
    return {"model_uri": torch_info.model_uri, "onnx_uri": onnx_info.model_uri}


def _flat_params(cfg: Config, kind: str) -> dict[str, str]:
    """Every knob of params.yaml (the features and splits shape the result as much as the
    preference section) and the model kind."""
    from components.tracking import config_params

    return {**config_params(cfg), "kind": kind}


def _finite(metrics: dict) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and np.isfinite(v)}


def log_to_mlflow(cfg: Config, data, reports: dict[str, KindReport], comparison: dict, plots: list[Path],
                  parent_run_id: str | None, report_path: Path | None = None) -> dict[str, dict[str, str]]:
    """One run per model kind, nested under the given parent (or a train_preference run); each
    carries the report comparing every kind (report.md), as the generator's run carries its own."""
    import mlflow

    from components.tracking import configure, log_datasets, split_datasets

    configure(cfg)
    logged: dict[str, dict[str, str]] = {}
    splits = {"train": data.train.frame, "valid": data.valid.frame, "test": data.test.frame}
    datasets = split_datasets(splits, name=f"preference-{cfg.profile}", source=cfg.stage_dir("features"))

    def _log_all(parent_id: str) -> None:
        for kind, report in reports.items():
            with mlflow.start_run(run_name=f"preference-{kind}", parent_run_id=parent_id, nested=True,
                                  tags={"model": "preference", "model_kind": kind, "profile": cfg.profile}) as run:
                mlflow.log_params(_flat_params(cfg, kind))
                log_datasets(datasets)
                for row in report.history:
                    mlflow.log_metrics(_finite({k: v for k, v in row.items() if k != "epoch"}), step=int(row["epoch"]))
                final = _finite({**report.metrics, **{k: v for k, v in comparison.items() if k != "champion_kind"}})
                # A final figure with a per-epoch series (val_auc, the evaluated model's) goes one
                # step after the last epoch: the run's latest value is the shipped model's.
                per_epoch = {k for row in report.history for k in row if k != "epoch"}
                after_last_epoch = max((int(row["epoch"]) for row in report.history), default=-1) + 1
                mlflow.log_metrics({k: v for k, v in final.items() if k not in per_epoch})
                mlflow.log_metrics({k: v for k, v in final.items() if k in per_epoch}, step=after_last_epoch)
                mlflow.set_tag("champion_kind", comparison["champion_kind"])
                uris = _log_models(report, data, plots)
                if report_path is not None:
                    mlflow.log_artifact(str(report_path))
                logged[kind] = {"run_id": run.info.run_id, **uris}

    if parent_run_id:
        _log_all(parent_run_id)
    else:
        with mlflow.start_run(run_name="train_preference", tags={"stage": "train_preference", "profile": cfg.profile}) as parent:
            mlflow.log_metrics(_finite({k: v for k, v in comparison.items() if k != "champion_kind"}))
            for plot in plots:
                mlflow.log_artifact(str(plot), "plots")
            _log_all(parent.info.run_id)
    return logged


# ---------------------------------------------------------------- report


def report_markdown(cfg: Config, reports: dict[str, KindReport], comparison: dict) -> str:
    def ci(m: dict, key: str) -> str:
        return f"{m[key]:.4f} [{m.get(key + '_ci_low', float('nan')):.4f}, {m.get(key + '_ci_high', float('nan')):.4f}]"

    lines = [f"# Preference models ({cfg.profile})", "", "Test split (later days), 95% cluster-bootstrap intervals by shopper.", "",
             "| metric | " + " | ".join(reports) + " |", "|---|" + "---|" * len(reports)]
    first_metrics = next(iter(reports.values())).metrics
    categories = sorted(k for k in first_metrics if k.startswith("auc_category_") and not k.endswith(("_ci_low", "_ci_high")))
    for key in ("auc", "logloss", "pr_auc", "ece", "precision", "recall", "f1", "auc_new", "auc_returning", *categories,
                "cold_auc", "cold_auc_fallback", "cold_auc_model"):
        if all(key in r.metrics for r in reports.values()):
            lines.append(f"| {key} | " + " | ".join(ci(r.metrics, key) for r in reports.values()) + " |")
    first = next(iter(reports.values())).metrics
    lines += ["", f"- test rows: {int(first['n'])}, clicks: {int(first['positives'])}"]
    if "ceiling_auc" in comparison:
        lines.append(f"- ground-truth ceiling AUC: {ci(comparison, 'ceiling_auc')}")
    if "auc_diff" in comparison:
        lines.append(f"- deep - logreg AUC: {ci(comparison, 'auc_diff')} (paired bootstrap)")
    lines.append(f"- champion (by validation AUC): {comparison['champion_kind']}")
    lines += copy_choice_markdown(reports)
    return "\n".join(lines) + "\n"


def copy_choice_markdown(reports: dict[str, KindReport]) -> list[str]:
    """The copy-choice section of the report (empty without copy options)."""
    from components.evaluation.copy_choice import UNIFORM_LOGGING_MAX_Z

    with_lift = [r.metrics for r in reports.values() if "copy_choice_lift" in r.metrics]
    if not with_lift:
        return []
    first = with_lift[0]
    lines = [
        "", "## Copy choice", "",
        f"Showing each shopper the copy the model scores highest (equal best scores share the choice, as in "
        f"`copyflow serve`), on the {int(first['copy_choice_impressions'])} test "
        f"impressions whose product has two or more copies ({first['copy_choice_mean_options']:.2f} on average). "
        "Off-policy (self-normalized inverse propensity, the logged copy drawn uniformly); "
        "95% shopper-bootstrap interval.", "",
        "| | " + " | ".join(reports) + " |", "|---|" + "---|" * len(reports),
    ]
    rows = [("logged click rate (uniform copy)", "copy_choice_logged_ctr", "{:.4f}"),
            ("estimated click rate, model's copy", "copy_choice_model_ctr", "{:.4f}"),
            ("matched impressions (choice = shown; a tie counts its share)", "copy_choice_matched", "{:.0f}"),
            ("simulator truth: uniform copy", "copy_choice_true_uniform_ctr", "{:.4f}"),
            ("simulator truth: model's copy", "copy_choice_true_model_ctr", "{:.4f}"),
            ("simulator truth: best copy", "copy_choice_true_best_ctr", "{:.4f}"),
            ("share of the uniform-to-best gap closed", "copy_choice_true_captured", "{:.2f}")]
    lift = [f"{m['copy_choice_lift']:+.1%} [{m['copy_choice_lift_ci_low']:+.1%}, {m['copy_choice_lift_ci_high']:+.1%}]"
            if "copy_choice_lift" in m else "n/a (too few matched impressions)" for m in (r.metrics for r in reports.values())]
    lines.append("| click-rate lift | " + " | ".join(lift) + " |")
    lines.append("| matches with the shown copy, z vs uniform logging | " + " | ".join(
        f"{m['copy_choice_match_z']:+.1f}" for m in (r.metrics for r in reports.values())) + " |")
    for label, key, fmt in rows:
        if all(key in r.metrics for r in reports.values()):
            lines.append(f"| {label} | " + " | ".join(fmt.format(r.metrics[key]) for r in reports.values()) + " |")
    if any(abs(r.metrics["copy_choice_match_z"]) > UNIFORM_LOGGING_MAX_Z for r in reports.values()):
        lines += ["", f"**The logged copies do not look uniformly drawn** (|z| > {UNIFORM_LOGGING_MAX_Z:g}): the model's "
                  "choice matches the shown copy more or less often than 1 in n, so the off-policy figures are biased."]
    return lines


# ---------------------------------------------------------------- entry


def run_training(cfg: Config, out_dir: Path | None = None, parent_run_id: str | None = None) -> dict | None:
    """Train every configured kind (all ranks); on rank 0 evaluate, log and return the manifest."""
    from components.models.preference.train import train
    from components.training.launcher import write_manifest

    started = time.perf_counter()
    out_dir = Path(out_dir or default_out_dir(cfg))
    out_dir.mkdir(parents=True, exist_ok=True)
    _set_threads(cfg)
    timings: dict[str, float] = {}
    tick = time.perf_counter()
    data = load_data(cfg)
    timings["encode_s"] = time.perf_counter() - tick
    fits = {}
    for kind in cfg.preference.models:
        tick = time.perf_counter()
        fits[kind] = train(cfg, kind, data, checkpoint_root(cfg, STAGE))
        timings[f"train_{kind}_s"] = time.perf_counter() - tick
    if not all(fit.is_global_zero for fit in fits.values()):
        return None

    tick = time.perf_counter()
    reports, comparison = evaluate_all(cfg, data, fits, out_dir)
    timings["evaluate_export_s"] = time.perf_counter() - tick
    from components.evaluation.preference import plot_curves

    curves = {kind: (data.test.y, r.p_test) for kind, r in reports.items()}
    truth = ground_truth_probabilities(cfg, data.test.frame["event_id"])
    if truth is not None:
        curves["ground truth"] = (data.test.y, truth)
    plots = plot_curves(curves, out_dir / "plots", title=f"preference ({cfg.profile}, test)")
    (out_dir / "report.md").write_text(report_markdown(cfg, reports, comparison), encoding="utf-8")

    champion = comparison["champion_kind"]
    champion_dir = out_dir / CHAMPION_DIR
    if champion_dir.exists():
        shutil.rmtree(champion_dir)
    shutil.copytree(reports[champion].model_dir, champion_dir)
    tick = time.perf_counter()
    logged = log_to_mlflow(cfg, data, reports, comparison, plots, parent_run_id, out_dir / "report.md")
    timings["mlflow_s"] = time.perf_counter() - tick
    metrics = {**reports[champion].metrics, **{k: v for k, v in comparison.items() if k != "champion_kind"}}
    manifest = {
        "model": "preference",
        "champion_kind": champion,
        "run_id": logged.get(champion, {}).get("run_id"),
        "model_uri": logged.get(champion, {}).get("model_uri"),
        "onnx_uri": logged.get(champion, {}).get("onnx_uri"),
        "model_dir": str(champion_dir.resolve()),
        "metrics": {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))},
        "kinds": {
            kind: {"run_id": logged.get(kind, {}).get("run_id"), "model_uri": logged.get(kind, {}).get("model_uri"),
                   "model_dir": str(r.model_dir.resolve()), "auc": r.metrics["auc"], "auc_ci_low": r.metrics["auc_ci_low"],
                   "auc_ci_high": r.metrics["auc_ci_high"], "history": r.history}
            for kind, r in reports.items()
        },
        "seconds": round(time.perf_counter() - started, 1),
        "timings": {k: round(v, 1) for k, v in timings.items()},
    }
    write_manifest(out_dir, manifest)
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", required=True)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--parent-run-id", default=None)
    args = parser.parse_args(argv)
    from components.models.preference.data import FeatureDataError
    from components.tracking import disable_telemetry

    disable_telemetry()
    cfg = load_config(args.params, args.profile)
    try:
        manifest = exit_code_on_sigterm(run_training, cfg, args.out, args.parent_run_id)
    except (FileNotFoundError, FeatureDataError) as exc:  # a missing or malformed feature table: what to fix, not a traceback
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if manifest is not None:
        print(json.dumps({k: manifest[k] for k in ("champion_kind", "run_id", "model_dir")}, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    from components.lifecycle import die_with_parent

    die_with_parent()  # rank 0 ends with the stage that launched it, a DDP rank with rank 0
    sys.exit(main())
