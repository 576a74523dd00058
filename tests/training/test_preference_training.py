"""The preference training entry point, launched like the flow does it: a DDP subprocess."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml

from components.config import deep_merge, load_config
from components.models.preference.api import load_preference
from components.tracking import configure
from components.training.launcher import launch
from tests.conftest import PARAMS, ROOT, TINY


def _params_file(tmp_path: Path, profile: str, overrides: dict) -> Path:
    """The repo's params.yaml with test overrides on top of `profile`, for the subprocess to read."""
    raw = yaml.safe_load(PARAMS.read_text(encoding="utf-8"))
    raw["profiles"][profile] = deep_merge(raw["profiles"].get(profile) or {}, overrides)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    return path


def _build_simulated_features(cfg) -> None:
    """The real chain on tiny simulated data: source -> ingest -> clean -> features."""
    from components.data.cleaning import run_clean
    from components.data.ingest import run_ingest
    from components.data.source import run_source
    from components.features.build import run_features

    for stage in (run_source, run_ingest, run_clean, run_features):
        stage(cfg)


@pytest.mark.slow
def test_ddp_subprocess_learns_and_logs_exactly_one_run_per_model(tmp_path, monkeypatch):
    monkeypatch.setenv("COPYFLOW_PSEUDONYM_KEY", "test-key-not-secret-" + "0" * 32)
    overrides = deep_merge(TINY, {
        "paths": {"artifacts": str(tmp_path / "artifacts"), "state": str(tmp_path / "state"),
                  "pseudonym_key_file": str(tmp_path / "pseudonym.key"),
                  "corpus": str(ROOT / "data/advertisegen/train.jsonl"),
                  "ad_law_words": str(ROOT / "components/resources/ad_law_words.txt")},
        "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "pref-test"},
        "trainer": {"accelerator": "cpu", "devices": 2, "strategy": "ddp"},
        "preference": {"models": ["logreg", "deep"], "max_epochs": 2, "batch_size": 256, "bootstrap": 50},
    })
    params = _params_file(tmp_path, "quick", overrides)
    cfg = load_config(params, "quick")
    _build_simulated_features(cfg)

    configure(cfg)
    with mlflow.start_run(run_name="train_preference-stage") as parent:
        parent_id = parent.info.run_id
    out = tmp_path / "out"
    manifest = launch("components.training.preference", profile="quick", out_dir=out, params_path=params,
                      parent_run_id=parent_id, cwd=ROOT, timeout_s=900)

    # It learns: its interval clear of chance on the simulated shoppers (2 epochs, ~2,400 test rows:
    # the figures move by a few hundredths when the pseudonym key, and so every shopper id, changes),
    # and below the ground-truth ceiling.
    metrics = manifest["metrics"]
    assert metrics["auc_ci_low"] > 0.55 and metrics["auc"] > 0.6 and metrics["baseline_auc"] > 0.55, metrics
    assert metrics["auc"] <= metrics["ceiling_auc"] + 0.02
    assert manifest["champion_kind"] in ("logreg", "deep")
    for key in ("auc_diff_ci_low", "auc_diff_ci_high", "logloss", "pr_auc", "ece", "f1", "onnx_max_abs_diff"):
        assert np.isfinite(metrics[key]), key
    assert metrics["onnx_max_abs_diff"] <= 1e-4
    # Copy choice on the test impressions whose product has several copies: in the simulator's
    # truth, the champion's pick earns more clicks than the uniform draw that was logged.
    assert metrics["copy_choice_impressions"] > 100, metrics
    assert metrics["copy_choice_true_model_ctr"] > metrics["copy_choice_true_uniform_ctr"], metrics
    assert "## Copy choice" in (out / "report.md").read_text(encoding="utf-8")

    # Exactly one MLflow run per model kind, nested under the stage's run; rank 1 logged nothing.
    experiment = mlflow.get_experiment_by_name("pref-test")
    runs = mlflow.search_runs([experiment.experiment_id], output_format="list")
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent_id]
    assert len(runs) == 3 and sorted(r.data.tags["model_kind"] for r in children) == ["deep", "logreg"]
    assert {r.info.run_id for r in children} == {k["run_id"] for k in manifest["kinds"].values()}
    champion_run = next(r for r in children if r.info.run_id == manifest["run_id"])
    assert champion_run.data.metrics["auc"] == pytest.approx(metrics["auc"])
    assert {"val_loss", "val_auc", "train_loss", "copy_choice_true_captured"} <= set(champion_run.data.metrics)
    # Each run names the feature splits it trained and was scored on (MLflow dataset inputs).
    assert sorted(d.dataset.name for d in champion_run.inputs.dataset_inputs) == [
        "preference-quick-test", "preference-quick-train", "preference-quick-valid"]
    history = mlflow.MlflowClient().get_metric_history(manifest["run_id"], "val_loss")
    assert sorted(m.step for m in history) == [0, 1]
    # One validation AUC series: the two epochs', then the evaluated model's one step later
    # (a final `valid_auc` beside the per-epoch `val_auc` charted two series).
    assert "valid_auc" not in champion_run.data.metrics and "valid_auc" not in metrics
    val_auc = mlflow.MlflowClient().get_metric_history(manifest["run_id"], "val_auc")
    assert sorted(m.step for m in val_auc) == [0, 1, 2]
    assert champion_run.data.metrics["val_auc"] == pytest.approx(metrics["val_auc"])
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(manifest["run_id"], "plots")}
    assert artifacts == {"plots/roc.png", "plots/pr.png", "plots/reliability.png"}
    # The metric table with its intervals, readable on the run's page (it stayed in artifacts/ only).
    report = mlflow.artifacts.download_artifacts(run_id=manifest["run_id"], artifact_path="report.md", dst_path=str(tmp_path / "dl"))
    assert Path(report).read_text(encoding="utf-8") == (out / "report.md").read_text(encoding="utf-8")

    # Checkpoints were written by rank 0, and the model is usable from MLflow and from disk.
    from components.training.checkpoints import checkpoint_root

    assert list(checkpoint_root(cfg, "preference").glob(f"{manifest['champion_kind']}-*/last.ckpt"))
    samples = __import__("pandas").read_parquet(cfg.stage_dir("features") / "samples.parquet").tail(50)
    from_uri, from_dir = load_preference(manifest["model_uri"]), load_preference(manifest["model_dir"])
    np.testing.assert_allclose(from_uri.predict(samples), from_dir.predict(samples), atol=1e-6)
    packed = from_dir.encode(samples)
    onnx_scores = mlflow.pyfunc.load_model(manifest["onnx_uri"]).predict({"x": packed})["probability"][:, 0]
    np.testing.assert_allclose(onnx_scores, from_dir.predict_packed(packed), atol=1e-4)
    torch_scores = mlflow.pyfunc.load_model(manifest["model_uri"]).predict(packed)[:, 0]
    np.testing.assert_allclose(torch_scores, from_dir.predict_packed(packed), atol=1e-5)
    assert json.loads((out / "manifest.json").read_text())["model_dir"] == manifest["model_dir"]


def test_each_model_run_logs_every_knob_of_params_yaml(make_cfg):
    """The features (history length, split days) decide what the model sees and which rows it is
    scored on, but the runs logged only the preference and trainer sections and the seed."""
    from components.tracking import config_params
    from components.training.preference import _flat_params

    cfg = make_cfg(features={"history_length": 7})
    params = _flat_params(cfg, "deep")
    assert params["features.history_length"] == "7" and params["data.n_products"] == "300"
    assert params["kind"] == "deep" and params["seed"] == str(cfg.seed) and params["profile"] == "quick"
    assert params == {**config_params(cfg), "kind": "deep"}
    assert not any(key.startswith("tracking.") for key in params)  # a server URI may hold a password
