"""The generator entry point under DDP (2 CPU processes, gloo) in a clean subprocess."""

import mlflow
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from components.models.generator import api
from components.training.generator import METRIC_KEYS
from components.training.launcher import launch
from tests.models.generator_fixtures import ROOT, write_params


@pytest.mark.slow
def test_ddp_training_logs_one_run_and_writes_manifest(tmp_path):
    # With weight averaging on: it must work under DDP too.
    params = write_params(tmp_path, trainer={"accelerator": "cpu", "devices": 2, "strategy": "ddp"}, generator={"ema_decay": 0.9, "max_epochs": 50, "max_cpu_minutes": 0.1})  # the CPU budget ends it, on both ranks together
    out = tmp_path / "out"
    parent_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(parent_uri)
    experiment = mlflow.create_experiment("copyflow")
    parent = mlflow.start_run(experiment_id=experiment, run_name="retrain")
    mlflow.end_run()

    manifest = launch("components.training.generator", profile="quick", out_dir=out, params_path=params, parent_run_id=parent.info.run_id, cwd=ROOT, timeout_s=600)

    assert manifest["model"] == "generator"
    for key in METRIC_KEYS:
        assert isinstance(manifest["metrics"][key], float), key
        assert isinstance(manifest["metrics"][f"baseline_{key}"], float), key
    assert manifest["metrics"]["ad_law_violations"] == 0.0
    for key in ("shuffled_order_bleu4", "shuffled_order_attr_coverage", "order_shift_bleu4", "order_shift_attr_coverage"):
        assert isinstance(manifest["metrics"][key], float), key
    metrics = manifest["metrics"]
    assert metrics["distinct2_vs_human"] == pytest.approx(metrics["distinct2"] / metrics["human_distinct2"])
    assert manifest["metrics"]["onnx_parity_exact"] == 1.0
    runs = mlflow.search_runs(experiment_ids=[experiment], output_format="list")
    children = [r for r in runs if r.info.run_id != parent.info.run_id]
    assert len(children) == 1  # rank 1 trained too but logged nothing
    child = children[0]
    assert child.info.run_id == manifest["run_id"]
    assert child.data.tags.get("mlflow.parentRunId") == parent.info.run_id
    assert child.data.params["trainer.devices"] == "2"
    assert "val_loss" in child.data.metrics or child.data.metrics["steps_run"] > 0
    assert 0 < child.data.metrics["epochs_run"] < 50  # stopped by the CPU budget, no rank left waiting

    from components.config import load_config
    from components.training.checkpoints import checkpoint_root

    (last,) = checkpoint_root(load_config(params, "quick"), "generator").glob("generator-*/last.ckpt")
    checkpoint = torch.load(last, map_location="cpu", weights_only=False)
    averaged, current = checkpoint["state_dict"], checkpoint["current_model_state"]  # the average is what gets kept
    assert averaged.keys() == current.keys() and any(not averaged[k].equal(current[k]) for k in averaged)

    generator = api.load_generator(manifest["model_dir"])
    assert generator.generate({"类型": ["裙"], "颜色": ["白色"]}, decoding="greedy")
    onnx_generator = api.load_generator(manifest["onnx_uri"], backend="onnx")  # from MLflow artifacts
    request = [generator.request({"类型": ["裤"]}, None, "any", "any")]
    assert onnx_generator.generate_many(request, "greedy") == generator.generate_many(request, "greedy")
    assert mlflow.pytorch.load_model(manifest["model_uri"]) is not None
    from_registry_uri = api.load_generator(manifest["model_uri"])  # pytorch-flavour URI -> its run's bundle
    assert from_registry_uri.generate_many(request, "greedy") == generator.generate_many(request, "greedy")


def test_a_run_that_fails_after_training_is_marked_failed_in_mlflow(tmp_path, monkeypatch):
    """The UI must not show FINISHED for a run whose evaluation or export broke."""
    from components.config import load_config
    from components.training import generator as entry

    cfg = load_config(write_params(tmp_path, generator={"max_epochs": 1}), "quick")

    def broken_export(*args, **kwargs):
        raise OSError("disk full while exporting")

    monkeypatch.setattr(entry, "evaluate_and_log", broken_export)
    with pytest.raises(OSError, match="disk full"):
        entry.train(cfg, tmp_path / "out")
    mlflow.set_tracking_uri(cfg.tracking.uri)
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert [r.info.status for r in runs] == ["FAILED"]
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_the_run_logs_every_knob_of_params_yaml_not_only_the_generator_section(tmp_path, monkeypatch):
    """The seed and the corpus split fractions shape the weights and the held-out metrics, but
    the run logged only generator.* and trainer.*: two runs differing in them compared equal."""
    from components.config import load_config
    from components.tracking import config_params
    from components.training import generator as entry

    cfg = load_config(write_params(tmp_path, generator={"max_epochs": 1}), "quick")
    monkeypatch.setattr(entry, "evaluate_and_log", lambda *args, **kwargs: {"metrics": {}})
    entry.train(cfg, tmp_path / "out")
    mlflow.set_tracking_uri(cfg.tracking.uri)
    (run,) = mlflow.search_runs(search_all_experiments=True, output_format="list")
    params = run.data.params
    assert params["seed"] == str(cfg.seed) and params["data.valid_fraction"] == "0.15"
    assert config_params(cfg).items() <= params.items()
    assert params["generator.max_epochs"] == "1" and int(params["n_params"]) > 0



def test_the_run_names_its_corpus_splits_as_mlflow_datasets(tmp_path, monkeypatch):
    """The runs table's Dataset column was empty: nothing told two runs' training rows apart."""
    from components.config import load_config
    from components.data.corpus import load_corpus_splits
    from components.training import generator as entry

    cfg = load_config(write_params(tmp_path, generator={"max_epochs": 1}), "quick")
    monkeypatch.setattr(entry, "evaluate_and_log", lambda *args, **kwargs: {"metrics": {}})
    entry.train(cfg, tmp_path / "out")
    mlflow.set_tracking_uri(cfg.tracking.uri)
    (run,) = mlflow.search_runs(search_all_experiments=True, output_format="list")
    inputs = {d.dataset.name: d for d in run.inputs.dataset_inputs}
    assert sorted(inputs) == ["generator-quick-test", "generator-quick-train", "generator-quick-valid"]
    contexts = {name: {t.key: t.value for t in d.tags}["mlflow.data.context"] for name, d in inputs.items()}
    assert contexts["generator-quick-train"] == "training" and contexts["generator-quick-test"] == "testing"
    splits = load_corpus_splits(cfg)
    assert '"num_rows": %d' % len(splits["train"]) in inputs["generator-quick-train"].dataset.profile
    assert inputs["generator-quick-train"].dataset.source == '{"uri": "%s"}' % cfg.paths.corpus


def test_a_diverged_training_is_refused_and_its_checkpoints_removed(tmp_path):
    """A NaN loss reached ModelCheckpoint as inf: the run was evaluated (crashing in top-p
    sampling), and a re-run reused the poisoned checkpoint. Now it stops before evaluation."""
    from components.config import load_config
    from components.training import generator as entry
    from components.training.checkpoints import checkpoint_root

    cfg = load_config(write_params(tmp_path, generator={"max_epochs": 1, "lr": 1e12, "warmup_steps": 1}), "quick")
    with pytest.raises(entry.GeneratorDiverged, match="diverged .* checkpoints were removed"):
        entry.train(cfg, tmp_path / "out")
    assert not list(checkpoint_root(cfg, "generator").glob("generator-*/*"))  # nothing left to reuse
    mlflow.set_tracking_uri(cfg.tracking.uri)
    assert [r.info.status for r in mlflow.search_runs(search_all_experiments=True, output_format="list")] == ["FAILED"]


def test_sigterm_during_training_exits_143_not_0(monkeypatch):
    """Lightning turns SIGTERM into a SystemExit with no code (exit status 0)."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from components.training import generator, preference

    def terminated(*args, **kwargs):
        raise SIGTERMException()

    monkeypatch.setattr(generator, "train", terminated)
    monkeypatch.setattr(preference, "run_training", terminated)
    params = str(ROOT / "params.yaml")
    for main in (lambda: generator.main(["--profile", "quick", "--params", params, "--out", "unused"]),
                 lambda: preference.main(["--profile", "quick", "--params", params, "--out", "unused"])):
        with pytest.raises(SystemExit) as stopped:
            main()
        assert stopped.value.code == 143


def test_a_missing_word_list_fails_before_training(tmp_path, capsys):
    """The word lists are read into the bundle after training: checked first instead, in one line."""
    from components.training import generator

    params = write_params(tmp_path, paths={"ad_law_words": str(tmp_path / "nowhere.txt")})
    with pytest.raises(SystemExit) as stopped:
        generator.main(["--profile", "quick", "--params", str(params), "--out", str(tmp_path / "out")])
    assert stopped.value.code == 1 and "error: ad-law word list not found" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing trained


class _LostMachine(RuntimeError):
    pass


class _StopAtEpoch(Callback):
    """The machine goes away as the given epoch starts."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            raise _LostMachine("preempted")


def _evaluated_weights(monkeypatch) -> list[dict]:
    """Stand in for evaluation (minutes of decoding): keep the weights it was handed."""
    from components.training import generator as entry

    seen: list[dict] = []

    def keep(cfg, out_dir, splits, net, *args):
        seen.append({k: v.clone() for k, v in net.state_dict().items()})
        return {"model": "generator", "run_id": args[-1].info.run_id, "metrics": {}}

    monkeypatch.setattr(entry, "evaluate_and_log", keep)
    return seen


def test_a_stopped_training_resumes_and_a_finished_one_is_reused(tmp_path, monkeypatch):
    """Checkpoints live outside the stage's output folder (which DVC clears before a re-run):
    a stopped run goes on from its last epoch, with the time budget it had left; a finished run
    whose training knobs and data did not change is evaluated again, not trained again."""
    from components.config import load_config
    from components.training import generator as entry
    from components.training.checkpoints import checkpoint_root, read_done

    seen = _evaluated_weights(monkeypatch)
    params = write_params(tmp_path, generator={"max_epochs": 3, "max_steps": -1, "patience": 10})
    cfg = load_config(params, "quick")
    out = tmp_path / "out"

    with pytest.raises(_LostMachine):
        entry.train(cfg, out, callbacks=[_StopAtEpoch(2)])
    (run_dir,) = checkpoint_root(cfg, "generator").glob("generator-*")
    assert read_done(run_dir) is None and not seen  # an interrupted run is neither done nor evaluated
    stopped = torch.load(run_dir / "last.ckpt", map_location="cpu", weights_only=False)
    assert stopped["epoch"] == 1 and stopped["budget_used"] > 0
    assert (out / "prepared").exists()
    import shutil

    shutil.rmtree(out)  # what DVC does before it re-runs the stage

    entry.train(cfg, out)
    done = read_done(run_dir)
    assert done["resumed_from"] == str(run_dir / "last.ckpt") and done["epochs_run"] == 3
    assert done["steps_run"] == stopped["global_step"] * 3 // 2  # went on, not over: 2 epochs, then 1 more
    resumed = torch.load(run_dir / "last.ckpt", map_location="cpu", weights_only=False)
    assert resumed["budget_used"] > stopped["budget_used"]
    assert len(seen) == 1

    mlflow.set_tracking_uri(cfg.tracking.uri)
    tags = [r.data.tags["training"] for r in mlflow.search_runs(search_all_experiments=True, output_format="list", order_by=["attributes.start_time ASC"])]
    assert tags[0] == "from scratch" and tags[1].startswith("resumed from")

    # Decoding settings do not shape the weights: the finished training is reused as it is.
    decoding_only = load_config(write_params(tmp_path, generator={"max_epochs": 3, "max_steps": -1, "patience": 10, "temperature": 0.5}), "quick")
    entry.train(decoding_only, out)
    assert len(seen) == 2 and all(seen[0][k].equal(seen[1][k]) for k in seen[0])
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list", order_by=["attributes.start_time DESC"])
    assert runs[0].data.tags["training"] == "reused a finished run" and runs[0].data.metrics["training_reused"] == 1.0
    # ... and names the run that trained the weights (with their loss curves), which it has not.
    assert runs[0].data.tags["training.run_id"] == runs[1].info.run_id == done["run_id"]
    assert "val_loss" in runs[1].data.metrics and "val_loss" not in runs[0].data.metrics
    assert read_done(run_dir) == done

    # A training knob does: a new run, in its own folder.
    other = load_config(write_params(tmp_path, generator={"max_epochs": 1, "max_steps": -1, "patience": 10}), "quick")
    entry.train(other, out)
    assert len(list(checkpoint_root(cfg, "generator").glob("generator-*"))) == 2
