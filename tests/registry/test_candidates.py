"""release_candidates: gate -> register (with lineage) -> challenger / auto-promotion, on a real store."""

from __future__ import annotations

import pandas as pd
import pytest

from components.evaluation.gates import GateFailed
from components.registry.candidates import ManifestError, release_candidates
from components.registry.names import LINEAGE_TAGS, METRIC_TAG_PREFIX, REGISTERED_MODELS, RELEASE_MODEL
from components.registry.store import model_aliases, registry_client
from tests.conftest import ROOT


def test_first_release_passes_on_floors_alone_and_is_auto_promoted(world):
    first = world.first
    assert first.passed and first.release == "1" and first.promoted
    for gate in first.gates:
        relative = [r for r in gate.rules if r.kind == "non_inferiority"]
        assert relative and all(r.note == "first release" and r.champion is None for r in relative)
        assert gate.champion_label is None
    client = registry_client(world.cfg)
    assert model_aliases(client, RELEASE_MODEL)["champion"] == "1"
    for family, version in first.versions.items():
        assert model_aliases(client, REGISTERED_MODELS[family])["champion"] == version
    tags = client.get_model_version(RELEASE_MODEL, "1").tags
    assert tags["promoted_by"] == "copyflow auto-promote" and "first release" in tags["promotion.note"]


def test_degraded_candidate_is_rejected_with_a_clear_report_and_no_alias_moves(world):
    failure = world.failure
    assert failure is not None, "a model trained on shuffled labels must not pass the gate"
    assert world.aliases_after_failure == world.aliases_before_failure
    report = failure.report
    assert "Gate `preference`: **FAIL**" in report
    assert "| auc |" in report and "floor: >= 0.6 | **FAIL**" in report
    assert "non_inferiority: CI low of delta > -0.01 | **FAIL**" in report
    assert "vs release 1 (copyflow-preference v1)" in report
    [gate] = failure.results
    auc_rule = next(r for r in gate.rules if r.kind == "non_inferiority")
    assert auc_rule.ci_high < 0  # clearly worse than the champion, not just noisy
    # the rejected version is registered for the record, tagged as failed, and holds no alias
    client = registry_client(world.cfg)
    rejected = [
        v for v in client.search_model_versions("name='copyflow-preference'") if v.tags.get("gate.verdict") == "fail"
    ]
    assert len(rejected) == 1
    assert rejected[0].tags["gate.failed_rules"] == "floor:auc, non_inferiority:auc"
    assert rejected[0].version not in model_aliases(client, "copyflow-preference").values()


def test_better_candidate_becomes_challenger_and_champion_stays(world):
    second = world.second
    assert second.passed and second.release == "2" and not second.promoted
    pref = next(g for g in second.gates if g.family == "preference")
    rule = next(r for r in pref.rules if r.kind == "non_inferiority")
    assert rule.delta > 0 and rule.ci_low > -world.cfg.gates.non_inferiority_margin
    client = registry_client(world.cfg)
    release_aliases = model_aliases(client, RELEASE_MODEL)
    assert release_aliases["challenger"] == "2" and release_aliases["champion"] == "1"
    for family, version in second.versions.items():
        aliases = model_aliases(client, REGISTERED_MODELS[family])
        assert aliases["challenger"] == version
        assert aliases["champion"] == world.first.versions[family]


def test_every_registered_version_has_all_lineage_tags(world):
    client = registry_client(world.cfg)
    versions = [v for name in ("copyflow-preference", "copyflow-generator") for v in client.search_model_versions(f"name='{name}'")]
    assert len(versions) == 5  # weak, degraded, better preference + two generators
    for version in versions:
        missing = [tag for tag in LINEAGE_TAGS if not version.tags.get(tag)]
        assert not missing, f"{version.name} v{version.version} lacks {missing}"
        assert any(key.startswith(METRIC_TAG_PREFIX) for key in version.tags)
        assert len(version.tags["git_commit"].removesuffix("-dirty")) == 40
        assert version.tags["training_run_id"] == version.run_id
        assert version.tags["profile"] == "quick"
    release = client.get_model_version(RELEASE_MODEL, "2")
    assert release.tags["member.preference"] == world.second.versions["preference"]
    assert release.tags["gate.verdict"] == "pass" and release.tags["baseline_release"] == "1"


def test_gate_report_and_evidence_are_logged_to_mlflow(world):
    client = registry_client(world.cfg)
    run_id = world.manifests["better"]["run_id"]
    gate_files = {a.path for a in client.list_artifacts(run_id, "gate")}
    assert gate_files == {"gate/preference_evidence.parquet", "gate/preference_report.md"}
    run = client.get_run(run_id)
    assert run.data.metrics["gate.passed"] == 1.0
    assert run.data.tags["gate.verdict"] == "pass"
    assert "gate.non_inferiority.auc.ci_low" in run.data.metrics
    failed = client.get_run(world.manifests["degraded"]["run_id"])
    assert failed.data.metrics["gate.passed"] == 0.0


def test_frozen_snapshot_is_reused_when_new_data_arrives(world):
    first = next(g for g in world.first.gates if g.family == "preference")
    second = next(g for g in world.second.gates if g.family == "preference")
    assert first.snapshot == second.snapshot and first.n_examples == second.n_examples
    frozen = pd.read_parquet(world.cfg.state_dir() / "frozen_eval" / "preference.parquet")
    assert frozen["example_id"].str.startswith("e0-").all()  # the first batch, not the new one


def test_malformed_manifests_are_refused_before_anything_is_written(world):
    with pytest.raises(ManifestError, match="lacks \\['run_id', 'model_uri'\\]"):
        release_candidates(world.cfg, [{"model": "preference", "metrics": {}}], project_dir=ROOT)
    with pytest.raises(ValueError, match="unknown model family 'ranker'"):
        release_candidates(world.cfg, [{"model": "ranker", "run_id": "r", "model_uri": "u", "metrics": {}}])
    with pytest.raises(ManifestError, match="one manifest per model family"):
        release_candidates(world.cfg, [world.manifests["better"], world.manifests["better"]])


def test_rerun_with_unchanged_training_runs_registers_nothing_new(fresh_world):
    """DVC skipped training: the same manifests come back; same verdict, no new versions. The
    retrain run still shows that verdict, tagged as reused (it had no gate.verdict at all)."""
    import mlflow

    from components.tracking import configure

    world = fresh_world
    client = registry_client(world.cfg)
    count = len(client.search_model_versions("name='copyflow-preference'"))
    configure(world.cfg)
    with mlflow.start_run(run_name="retrain-quick") as parent:
        again = release_candidates(world.cfg, [world.manifests["better"], world.manifests["gen2"]], project_dir=ROOT,
                                   parent_run_id=parent.info.run_id)
    assert again.reused and again.release == "2" and again.versions == world.second.versions
    assert again.report == world.second.report
    tags = client.get_run(parent.info.run_id).data.tags
    assert (tags["gate.verdict"], tags["release.gate"], tags["gate.reused"]) == ("pass", "pass", "true")
    assert "gate/report.md" in {a.path for a in client.list_artifacts(parent.info.run_id, "gate")}
    with mlflow.start_run(run_name="retrain-quick") as rejected:
        with pytest.raises(GateFailed, match="already evaluated and rejected") as failed:
            release_candidates(world.cfg, [world.manifests["degraded"]], project_dir=ROOT, parent_run_id=rejected.info.run_id)
    assert "floor: >= 0.6 | **FAIL**" in failed.value.report
    tags = client.get_run(rejected.info.run_id).data.tags
    assert (tags["gate.verdict"], tags["release.gate"], tags["gate.reused"]) == ("fail", "fail", "true")
    assert len(client.search_model_versions("name='copyflow-preference'")) == count


def test_a_member_that_passed_in_a_rejected_release_carries_the_release_outcome(fresh_world):
    """A generator version that passed its own gate in a release whose preference model failed
    showed gate.verdict=pass and nothing else: it read as if it shipped."""
    import mlflow

    from tests.registry import helpers

    world = fresh_world
    client = registry_client(world.cfg)
    degraded = helpers.train_preference(world.cfg, world.base, shuffled=True, seed=5)
    generator = helpers.train_generator(world.cfg, world.base, suffix="面料柔软亲肤，穿着舒适又好看。")
    with mlflow.start_run(run_name="retrain-quick") as parent:
        with pytest.raises(GateFailed):
            release_candidates(world.cfg, [degraded, generator], project_dir=ROOT, scorers=helpers.SCORERS,
                               parent_run_id=parent.info.run_id)
    for family, manifest, own in (("preference", degraded, "fail"), ("generator", generator, "pass")):
        [version] = client.search_model_versions(f"name='{REGISTERED_MODELS[family]}' and run_id='{manifest['run_id']}'")
        assert (version.tags["gate.verdict"], version.tags["release.gate"]) == (own, "fail"), family
        assert client.get_run(manifest["run_id"]).data.tags["release.gate"] == "fail"
    parent_tags = client.get_run(parent.info.run_id).data.tags
    assert (parent_tags["gate.verdict"], parent_tags["release.gate"]) == ("fail", "fail")
    # the members of a release that shipped say so too
    for family, version in world.second.versions.items():
        assert client.get_model_version(REGISTERED_MODELS[family], version).tags["release.gate"] == "pass"
    # and keep saying so when gated again, unchanged, beside a new model in a rejected release
    degraded_again = helpers.train_preference(world.cfg, world.base, shuffled=True, seed=6)
    with pytest.raises(GateFailed, match="preference auc"):
        release_candidates(world.cfg, [degraded_again, world.manifests["gen2"]], project_dir=ROOT, scorers=helpers.SCORERS)
    shipped = client.get_model_version("copyflow-generator", world.second.versions["generator"])
    assert shipped.tags["release.gate"] == "pass"
    assert client.get_run(world.manifests["gen2"]["run_id"]).data.tags["release.gate"] == "pass"


def test_a_member_released_before_release_gate_was_tagged_keeps_reading_as_shipped(fresh_world):
    """A registry from before release.gate was tagged on versions: a champion's member has no
    such tag, and gated again, unchanged, in a rejected release it read release.gate=fail."""
    from tests.registry import helpers

    world = fresh_world
    client = registry_client(world.cfg)
    shipped = world.second.versions["generator"]
    client.delete_model_version_tag("copyflow-generator", shipped, "release.gate")  # as registered then
    degraded = helpers.train_preference(world.cfg, world.base, shuffled=True, seed=6)
    with pytest.raises(GateFailed, match="preference auc"):
        release_candidates(world.cfg, [degraded, world.manifests["gen2"]], project_dir=ROOT, scorers=helpers.SCORERS)
    assert client.get_model_version("copyflow-generator", shipped).tags["release.gate"] == "pass"


def test_a_family_whose_training_was_skipped_keeps_its_version(world, tmp_path):
    """Only the preference stage re-ran (say, a preference knob changed): the generator's run
    is registered already, so the new release points at its version instead of a copy."""
    from tests.registry import helpers
    from tests.registry.world import clone_world

    clone = clone_world(world, tmp_path / "clone")
    client = registry_client(clone.cfg)
    generators_before = len(client.search_model_versions("name='copyflow-generator'"))
    retrained = helpers.train_preference(clone.cfg, clone.base, seed=3)
    outcome = release_candidates(clone.cfg, [retrained, world.manifests["gen2"]], project_dir=ROOT, scorers=helpers.SCORERS)
    assert outcome.passed and outcome.release == "3"
    assert outcome.versions["generator"] == world.second.versions["generator"]
    assert outcome.versions["preference"] not in (world.first.versions["preference"], world.second.versions["preference"])
    assert len(client.search_model_versions("name='copyflow-generator'")) == generators_before
    release = client.get_model_version(RELEASE_MODEL, "3").tags
    assert release["member.generator"] == world.second.versions["generator"]
    assert release["prefect_flow_run_id"] == client.get_model_version("copyflow-preference", outcome.versions["preference"]).tags["prefect_flow_run_id"]


def test_release_inside_a_retrain_run_records_its_lineage_and_report(world):
    client = registry_client(world.cfg)
    parent = client.get_run(world.parent_run_id)
    assert parent.data.tags["gate.verdict"] == "pass" and parent.data.tags["release"] == "2"
    assert "gate/report.md" in {a.path for a in client.list_artifacts(world.parent_run_id, "gate")}
    release = client.get_model_version(RELEASE_MODEL, "2")
    assert client.get_run(release.run_id).data.tags["mlflow.parentRunId"] == world.parent_run_id
    for family, version in world.second.versions.items():
        tags = client.get_model_version(REGISTERED_MODELS[family], version).tags
        assert tags["ge.verdict"] == "pass" and tags["prefect_flow_run_id"] == "flow-run-2"
    first = client.get_model_version("copyflow-preference", world.first.versions["preference"]).tags
    assert first["prefect_flow_run_id"] == "none"  # released outside Prefect: recorded as such, not missing


def test_a_copy_choice_rule_that_cannot_be_measured_still_releases(tmp_path):
    """Too few clicks on chosen copies: the rule reads `not measured` and passes, and nothing
    non-finite reaches the release manifest (strict JSON) or the run's metrics."""
    import json

    import numpy as np

    from components.registry.release import release_with_alias
    from tests.registry import helpers
    from tests.registry.world import registry_cfg

    cfg = registry_cfg(tmp_path)
    helpers.write_samples(cfg)
    manifest = helpers.train_preference(cfg, tmp_path)

    def few_choices(ref, rows):
        frame = helpers.score_preference(ref, rows)
        weight = np.full(len(frame), np.nan)
        weight[:30], weight[30:35] = 0.0, 2.0
        return frame.assign(choice_weight=weight)

    outcome = release_candidates(cfg, [manifest], project_dir=ROOT, scorers={"preference": few_choices})
    assert outcome.passed and outcome.release == "1"
    [rule] = [r for r in outcome.gates[0].rules if r.metric == "copy_choice_lift"]
    assert rule.candidate is None and rule.note.startswith("not measured")
    _, release_manifest = release_with_alias(registry_client(cfg), "champion")
    assert json.loads(json.dumps(release_manifest, allow_nan=False))
