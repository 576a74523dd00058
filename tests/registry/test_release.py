"""Releases: the manifest and `resolve_release`, which serving uses to load models by alias."""

from __future__ import annotations

import mlflow
import pandas as pd
import pytest

from components.registry.names import RELEASE_MODEL
from components.registry.release import MANIFEST_SCHEMA, NoRelease, create_release, load_manifest, resolve_release
from components.registry.store import registry_client
from tests.registry.helpers import FEATURES


def test_resolve_release_gives_loadable_member_uris(world):
    resolved = resolve_release("champion", world.cfg)
    assert resolved["release"] == "1" and resolved["alias"] == "champion" and resolved["profile"] == "quick"
    pref = resolved["members"]["preference"]
    assert pref["model_uri"] == f"models:/copyflow-preference/{world.first.versions['preference']}"
    model = mlflow.pyfunc.load_model(pref["model_uri"])
    scores = model.predict(pd.DataFrame([[0.5, -0.2, 0.1, 0.0]], columns=FEATURES))
    assert 0 < float(scores[0]) < 1
    assert resolve_release("challenger", world.cfg)["members"]["generator"]["version"] == world.second.versions["generator"]


def test_release_manifest_records_members_gates_and_lineage(world):
    manifest = load_manifest(registry_client(world.cfg), 2)
    assert manifest["baseline_release"] == "1" and manifest["gate_verdict"] == "pass"
    assert set(manifest["members"]) == {"preference", "generator"}
    member = manifest["members"]["preference"]
    assert member["gate"]["verdict"] == "pass" and member["snapshot"] == world.second.gates[0].snapshot
    assert member["evidence_uri"].endswith("gate/preference_evidence.parquet")
    assert not member["inherited"]
    assert manifest["gate_report"] == world.second.report
    assert manifest["lineage"]["preference"]["gate.verdict"] == "pass"
    client = registry_client(world.cfg)
    run = client.get_run(client.get_model_version(RELEASE_MODEL, "2").run_id)
    assert run.data.tags["kind"] == "release" and run.data.tags["profile"] == "quick"  # found by a tags.profile search


def test_unknown_alias_or_version_is_a_clear_error(world):
    with pytest.raises(NoRelease, match="no copyflow-release version has the alias 'previous'"):
        resolve_release("previous", world.cfg)
    with pytest.raises(NoRelease, match="version 42 does not exist"):
        load_manifest(registry_client(world.cfg), 42)


def test_resolve_release_gives_serving_every_member_field_it_loads_from(world):
    manifest = load_manifest(registry_client(world.cfg), 1)
    assert manifest["schema"] == MANIFEST_SCHEMA
    for family, resolved in resolve_release("champion", world.cfg)["members"].items():
        member = manifest["members"][family]
        assert set(resolved) == {"model_uri", "version", "registered_model", "onnx_uri", "source_uri", "run_id", "metrics"}
        assert all(resolved[key] == member.get(key) for key in resolved)


def test_a_manifest_with_a_non_finite_value_is_refused_not_written_as_loose_json(tmp_path):
    """Strict JSON for any reader: NaN is no JSON number, so such a release is never registered."""
    from tests.registry.world import registry_cfg

    client = registry_client(registry_cfg(tmp_path))
    experiment_id = client.create_experiment("releases")
    members = {"preference": {"version": "1", "metrics": {"auc": float("nan")}}}
    with pytest.raises(ValueError, match="JSON"):
        create_release(client, experiment_id=experiment_id, manifest={"members": members}, tags={})
    assert not client.search_model_versions(f"name='{RELEASE_MODEL}'")
    assert not client.search_runs([experiment_id]), "a refused manifest left a release run behind"


def test_a_release_whose_artifacts_cannot_be_written_ends_its_run_failed(tmp_path):
    """An artifact store that refuses the manifest: no version, and the run says FAILED rather
    than RUNNING forever in the MLflow UI."""
    from tests.registry.world import registry_cfg

    client = registry_client(registry_cfg(tmp_path))
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the artifact folder should be")
    experiment_id = client.create_experiment("releases", artifact_location=(blocker / "artifacts").as_uri())
    members = {"preference": {"version": "1", "metrics": {"auc": 0.7}}}
    with pytest.raises(OSError):
        create_release(client, experiment_id=experiment_id, manifest={"members": members}, tags={})
    assert not client.search_model_versions(f"name='{RELEASE_MODEL}'")
    assert [run.info.status for run in client.search_runs([experiment_id])] == ["FAILED"]
