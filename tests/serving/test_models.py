"""Which model serving resolves: the champion release, else the local training output, never a
model whose release gate failed; and asking creates no tracking store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from components.serving.models import NoModel, resolve_model


def _local_generator(cfg, run_id: str) -> None:
    """What the train_generator stage leaves: its manifest, naming the training run."""
    model_dir = cfg.stage_dir("models") / "generator" / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    manifest = {"model": "generator", "run_id": run_id, "model_dir": str(model_dir), "model_uri": f"models:/m-{run_id}"}
    (model_dir.parent / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")


def test_local_fallback_before_any_release_but_never_a_gate_failure(make_cfg, monkeypatch):
    from components.registry.store import registry_client
    from components.tracking import tracking_uri

    monkeypatch.delenv("COPYFLOW_TRACKING_URI", raising=False)
    cfg = make_cfg()
    _local_generator(cfg, "run-1")
    store = Path(tracking_uri(cfg).removeprefix("sqlite:///"))

    resolved = resolve_model(cfg, "generator")  # no store yet: the local output
    assert "no release yet" in resolved.origin and resolved.ref.endswith("model")
    # /health shows the origin to anyone: a folder of this machine is not for them
    assert str(cfg.paths.artifacts) not in resolved.origin and f"{cfg.profile}/models/generator" in resolved.origin
    assert not store.exists()
    with pytest.raises(NoModel, match="no MLflow tracking store"):
        resolve_model(cfg, "generator", allow_local=False)

    client = registry_client(cfg)  # a retrain registered that run's model, and its gate failed
    client.create_registered_model("copyflow-generator")
    tags = {"training_run_id": "run-1", "gate.verdict": "fail"}
    client.create_model_version("copyflow-generator", source=str(cfg.stage_dir("models")), tags=tags)
    with pytest.raises(NoModel, match=r"failed its release gate \(copyflow-generator v1: gate.verdict=fail\)"):
        resolve_model(cfg, "generator")

    _local_generator(cfg, "run-2")  # retrained since, not gated yet
    assert "no release yet" in resolve_model(cfg, "generator").origin


def test_a_local_output_is_told_apart_by_its_training_run_not_its_folder(make_cfg, monkeypatch):
    """Before any release, the copy server serves the local output, whose folder stays the same
    across retrains: the model's version (what a server reloads on, and logs) must not."""
    monkeypatch.delenv("COPYFLOW_TRACKING_URI", raising=False)
    cfg = make_cfg()
    _local_generator(cfg, "run-1")
    first = resolve_model(cfg, "generator")
    _local_generator(cfg, "run-2")
    second = resolve_model(cfg, "generator")
    assert first.ref == second.ref and (first.version, second.version) == ("models:/m-run-1", "models:/m-run-2")


def test_no_local_fallback_once_a_release_exists(make_cfg, monkeypatch):
    # The champion release's version was deleted (its alias goes with it): releases exist, so
    # serving must not quietly fall back to whatever the last retrain left on disk.
    from components.registry.names import RELEASE_MODEL
    from components.registry.store import registry_client

    monkeypatch.delenv("COPYFLOW_TRACKING_URI", raising=False)
    cfg = make_cfg()
    _local_generator(cfg, "run-1")
    client = registry_client(cfg)
    client.create_registered_model(RELEASE_MODEL)
    client.create_model_version(RELEASE_MODEL, source=str(cfg.stage_dir("models")))
    with pytest.raises(NoModel, match=r"1 release version\(s\) exist, so serving does not fall back"):
        resolve_model(cfg, "generator")


def test_a_profile_without_copy_text_says_it_has_no_generator_rather_than_to_retrain(make_cfg, monkeypatch):
    # "run `copyflow retrain`" sent obd users round in a loop: its retrain never trains a generator.
    monkeypatch.delenv("COPYFLOW_TRACKING_URI", raising=False)
    cfg = make_cfg(profile="obd")
    with pytest.raises(NoModel, match="profile 'obd' has no generator model: its data \\(obd\\) has no copy text") as refused:
        resolve_model(cfg, "generator")
    assert "copyflow retrain" not in str(refused.value)
    with pytest.raises(NoModel, match="copyflow retrain"):  # the preference model it does train
        resolve_model(cfg, "preference")
