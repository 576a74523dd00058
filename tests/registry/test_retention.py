"""`copyflow prune` on a real registry: five releases with aliases moved by promote and rollback,
an old and a young failed retrain; what goes, what stays, and that the registry still works."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import pytest
from mlflow.entities import ViewType

from components.registry.names import RELEASE_MODEL
from components.registry.promotion import PromotionRefused, check_consistency, promote, rollback
from components.registry.release import resolve_release
from components.registry.retention import logged_model_of, prune, store_profiles
from components.registry.status import compare, render_status, status
from components.registry.store import model_aliases, registry_client
from components.retrain_lock import RetrainBusy
from tests.conftest import ROOT
from tests.registry import helpers
from tests.registry.world import World, build_world, clone_world, registry_cfg

PRUNE_NOW = {"registry": {"prune_min_age_days": 0}}  # every test object is seconds old


@dataclass
class Pruned:
    world: World
    before: dict = field(default_factory=dict)  # counts before anything
    after_dry_run: dict = field(default_factory=dict)
    after: dict = field(default_factory=dict)
    dry_run: object = None
    result: object = None
    runs: dict = field(default_factory=dict)  # name -> run id
    folders: dict = field(default_factory=dict)  # run id -> its artifact folder on disk
    versions: dict = field(default_factory=dict)  # "registered model/version" -> ModelVersion
    files_after_dry_run: bool = False


def counts(cfg) -> dict:
    """What is in the store: release versions, model versions, active and deleted runs, logged models."""
    client = registry_client(cfg)
    experiment = client.get_experiment_by_name(cfg.tracking.experiment).experiment_id
    versions = {name: sorted(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))
                for name in (RELEASE_MODEL, "copyflow-preference", "copyflow-generator")}
    db = sqlite3.connect(cfg.tracking.uri.removeprefix("sqlite:///"))
    try:
        rows = dict(db.execute("select lifecycle_stage, count(*) from runs group by lifecycle_stage").fetchall())
        models = db.execute("select count(*) from logged_models").fetchone()[0]
    finally:
        db.close()
    return {"versions": versions, "active_runs": len(client.search_runs([experiment], run_view_type=ViewType.ACTIVE_ONLY, max_results=5000)),
            "runs_by_stage": rows, "logged_models": models}


def failed_retrain(cfg, name: str) -> tuple[str, str]:
    """A retrain the data gate stopped: a FAILED parent run (kind=retrain) with a nested stage run
    that logged its report. Returns (parent run id, stage run id)."""
    with mlflow.start_run(run_name=f"retrain-{name}", tags={"kind": "retrain", "profile": cfg.profile}) as parent:
        with mlflow.start_run(run_name="validate", nested=True, tags={"stage": "validate"}) as stage:
            mlflow.log_text("the data gate failed", "validation/report.md")
    registry_client(cfg).set_terminated(parent.info.run_id, "FAILED")
    return parent.info.run_id, stage.info.run_id


def release(cfg, base: Path) -> str:
    """A retrain of the preference model alone (the champion's generator is inherited)."""
    from components.registry.candidates import release_candidates

    manifest = helpers.train_preference(cfg, base)
    outcome = release_candidates(cfg, [manifest], project_dir=ROOT, scorers=helpers.SCORERS)
    return outcome.release


def artifact_folder(cfg, run_id: str) -> Path:
    uri = registry_client(cfg).get_run(run_id).info.artifact_uri
    return Path(uri.removeprefix("file://"))


@pytest.fixture(scope="module")
def pruned(tmp_path_factory) -> Pruned:
    """Releases 1..5: 1 auto-promoted; 2 promoted over 1; 3 over 2; 4 over 3, rolled back to 3;
    5 the challenger. So champion 3, previous 2, challenger 5, and 3 -> 2 -> 1 the rollback
    history. Then a prune with --keep-releases 1 after a dry run."""
    base = tmp_path_factory.mktemp("retention")
    world = build_world(base)  # release 1 champion, the degraded preference rejected, release 2 challenger
    cfg = registry_cfg(base, **PRUNE_NOW)
    world.cfg = cfg
    state = Pruned(world)
    client = registry_client(cfg)
    state.runs["old_failed"], state.runs["old_failed_stage"] = failed_retrain(cfg, "old")
    promote(cfg, release=2)
    assert release(cfg, base) == "3"
    promote(cfg, release=3)
    assert release(cfg, base) == "4"
    promote(cfg, release=4)
    rollback(cfg)
    assert release(cfg, base) == "5"
    assert model_aliases(client, RELEASE_MODEL) == {"champion": "3", "previous": "2", "challenger": "5"}
    state.runs["young_failed"], state.runs["young_failed_stage"] = failed_retrain(cfg, "young")
    with mlflow.start_run(run_name="retrain-in-flight", tags={"kind": "retrain", "profile": cfg.profile}) as running:
        pass
    client.update_run(running.info.run_id, "RUNNING")
    state.runs["in_flight"] = running.info.run_id
    for number in range(1, 6):
        state.runs[f"release{number}"] = client.get_model_version(RELEASE_MODEL, str(number)).run_id
    for name in ("copyflow-preference", "copyflow-generator"):
        for version in client.search_model_versions(f"name = '{name}'"):
            state.versions[f"{name}/{version.version}"] = version
            state.runs[f"{name}/{version.version}"] = version.run_id
    # runs that logged files (a retrain's parent run, say, logs none)
    state.folders = {run_id: artifact_folder(cfg, run_id) for run_id in state.runs.values() if artifact_folder(cfg, run_id).is_dir()}
    assert {state.runs[k] for k in ("old_failed_stage", "young_failed_stage", "release1", "copyflow-preference/2")} <= set(state.folders)
    state.before = counts(cfg)
    state.dry_run = prune(cfg, keep_releases=1, dry_run=True)
    state.after_dry_run = counts(cfg)
    state.files_after_dry_run = all(folder.is_dir() for folder in state.folders.values())
    state.result = prune(cfg, keep_releases=1)
    state.after = counts(cfg)
    return state


def test_a_dry_run_changes_nothing_and_plans_what_the_prune_then_removes(pruned):
    assert pruned.after_dry_run == pruned.before
    assert pruned.files_after_dry_run
    planned, done = pruned.dry_run.plan, pruned.result.plan
    assert (planned.releases, planned.model_versions, planned.runs, planned.logged_models) == (
        done.releases, done.model_versions, done.runs, done.logged_models)
    assert planned.bytes > 0 and planned.bytes == done.bytes


def test_prune_keeps_the_aliased_the_newest_and_the_rollback_history_and_removes_the_rest(pruned):
    plan = pruned.result.plan
    # keep 1: the newest (5); aliased: champion 3, previous 2, challenger 5; one rollback step: 2
    assert plan.kept_releases == ["2", "3", "5"] and plan.releases == ["1", "4"]
    versions = pruned.after["versions"]
    assert versions[RELEASE_MODEL] == [2, 3, 5]
    # preference: v1 (release 1), v2 (rejected), v5 (release 4) go; v3, v4, v6 stay (releases 2, 3, 5).
    # generator: v1 was release 1's only; v2 is inherited by releases 3 and 5.
    assert versions["copyflow-preference"] == [3, 4, 6] and versions["copyflow-generator"] == [2]
    assert sorted(plan.model_versions) == [("copyflow-generator", "1"), ("copyflow-preference", "1"),
                                           ("copyflow-preference", "2"), ("copyflow-preference", "5")]
    gone = {pruned.runs[k] for k in ("release1", "release4", "copyflow-preference/1", "copyflow-preference/2",
                                      "copyflow-preference/5", "copyflow-generator/1", "old_failed", "old_failed_stage")}
    assert set(plan.runs) == gone
    assert pruned.after["active_runs"] == pruned.before["active_runs"] - len(gone)
    assert pruned.after["runs_by_stage"].get("deleted", 0) == 0  # permanently deleted by mlflow gc, not only marked
    assert pruned.after["logged_models"] == pruned.before["logged_models"] - len(plan.logged_models) and plan.logged_models
    assert pruned.result.gc_ran and pruned.result.notes == []


def test_the_files_of_pruned_runs_are_gone_and_the_kept_ones_untouched(pruned):
    plan = pruned.result.plan
    for run_id, folder in pruned.folders.items():
        assert folder.exists() == (run_id not in plan.runs), (run_id, folder)
    assert all(not f.exists() for f in plan.files) and plan.files
    assert pruned.result.freed_bytes == plan.bytes > 0
    for name in ("copyflow-preference/1", "copyflow-generator/1"):  # the logged models' own folders too
        model_id = logged_model_of(pruned.versions[name])
        assert model_id and not list(Path(pruned.world.base / "artifacts").rglob(model_id))
    kept = logged_model_of(pruned.versions["copyflow-generator/2"])
    assert kept and list(Path(pruned.world.base / "artifacts").rglob(kept))


def test_young_failed_retrains_and_retrains_in_flight_are_kept(pruned):
    client = registry_client(pruned.world.cfg)
    for name in ("young_failed", "young_failed_stage", "in_flight", "release2", "release3", "release5"):
        assert client.get_run(pruned.runs[name]).info.lifecycle_stage == "active", name
    parent = pruned.world.parent_run_id  # the retrain run that made release 2 is kept with it
    assert client.get_run(parent).info.lifecycle_stage == "active"


def test_after_a_prune_status_compare_resolve_promote_and_rollback_work(pruned, tmp_path):
    cfg = pruned.world.cfg
    client = registry_client(cfg)
    assert check_consistency(client) == []
    data = status(cfg)
    assert data["problems"] == [] and data["release"]["champion"]["version"] == "3"
    assert "INCONSISTENT" not in render_status(data) and "UNREADABLE" not in render_status(data)
    assert "| auc |" in compare(cfg)  # the challenger (5) against the champion (3)
    champion = resolve_release("champion", cfg)
    assert champion["release"] == "3"
    assert mlflow.pyfunc.load_model(champion["members"]["generator"]["model_uri"]) is not None

    clone = clone_world(pruned.world, tmp_path / "clone", **PRUNE_NOW)  # alias moves only: the files are shared, read
    assert promote(clone.cfg)["release"] == "5"  # the challenger, gated against champion 3
    assert rollback(clone.cfg)["release"] == "3"
    assert rollback(clone.cfg)["release"] == "2"  # the kept rollback history
    with pytest.raises(PromotionRefused, match="nothing to roll back to"):
        rollback(clone.cfg)  # release 1, which 2 replaced, was pruned: the history ends here
    assert check_consistency(registry_client(clone.cfg)) == []


def test_a_second_prune_finds_nothing_more(pruned, tmp_path):
    clone = clone_world(pruned.world, tmp_path / "clone", **PRUNE_NOW)
    again = prune(clone.cfg, keep_releases=1, dry_run=True).plan
    assert (again.releases, again.model_versions, again.runs) == ([], [], [])


def test_nothing_younger_than_prune_min_age_days_is_planned(world, tmp_path):
    clone = clone_world(world, tmp_path / "clone")  # the default: 7 days
    plan = prune(clone.cfg, keep_releases=1, dry_run=True).plan
    assert (plan.releases, plan.model_versions, plan.runs) == ([], [], [])
    # With no age limit only the rejected preference version (and its run) goes: releases 1 and 2 hold aliases.
    plan = prune(clone_world(world, tmp_path / "now", **PRUNE_NOW).cfg, keep_releases=1, dry_run=True).plan
    assert plan.releases == [] and plan.model_versions == [("copyflow-preference", "2")]
    assert plan.runs == [world.manifests["degraded"]["run_id"]]


def test_the_training_runs_the_profile_s_outputs_name_are_kept_with_their_versions(world, tmp_path):
    """A retrain that DVC skips reuses the last training run (artifacts/<profile>/models/<family>/manifest.json)
    and the verdict of its version: neither may go, even when it was rejected."""
    import json

    from components.pipeline import stage_output_dir

    clone = clone_world(world, tmp_path / "clone", **PRUNE_NOW)
    output = stage_output_dir(clone.cfg, "train_preference")
    output.mkdir(parents=True, exist_ok=True)
    (output / "manifest.json").write_text(json.dumps(world.manifests["degraded"]), encoding="utf-8")
    plan = prune(clone.cfg, keep_releases=1, dry_run=True).plan
    assert (plan.releases, plan.model_versions, plan.runs) == ([], [], [])


def test_a_prune_while_a_retrain_of_the_profile_runs_is_refused(world, tmp_path):
    from filelock import FileLock

    clone = clone_world(world, tmp_path / "clone", **PRUNE_NOW)
    clone.cfg.state_dir().mkdir(parents=True, exist_ok=True)
    before = counts(clone.cfg)
    with FileLock(str(clone.cfg.state_dir() / "retrain.lock")):
        with pytest.raises(RetrainBusy, match="a retrain or a prune of profile 'quick' is running"):
            prune(clone.cfg, keep_releases=1)
    assert counts(clone.cfg) == before


def test_keep_releases_below_one_is_refused(world, tmp_path):
    with pytest.raises(ValueError, match="at least 1"):
        prune(clone_world(world, tmp_path / "clone").cfg, keep_releases=0, dry_run=True)


def test_gc_is_not_run_where_it_would_purge_an_experiment_deleted_by_hand(tmp_path):
    """`mlflow gc` purges every deleted experiment unless told which: the prune then only marks
    its runs deleted, says how to finish, and leaves the other experiment and every file alone."""
    world = build_world(tmp_path / "world", generator=False)
    cfg = registry_cfg(world.base, **PRUNE_NOW)
    client = registry_client(cfg)
    other = client.create_experiment("someone-elses")
    client.delete_experiment(other)
    degraded = world.manifests["degraded"]["run_id"]
    folder = artifact_folder(cfg, degraded)
    result = prune(cfg, keep_releases=1)
    assert result.plan.runs == [degraded] and not result.gc_ran
    assert "`mlflow gc` was not run: it would also purge the experiment(s) deleted by hand (someone-elses)" in result.notes[0]
    assert client.get_run(degraded).info.lifecycle_stage == "deleted" and folder.is_dir()
    assert client.get_experiment(other).lifecycle_stage == "deleted"
    assert client.get_run(degraded).data.tags["copyflow.pruned_at"]


def test_the_profiles_sharing_the_store_are_locked_and_their_training_runs_kept(world, tmp_path):
    """`full` logs to the same store as `quick` (here every profile does: the world names one
    tracking.uri): a prune of `quick` keeps the run full's last training names, and waits for no
    retrain of `full`: it is refused while one runs."""
    import json

    from filelock import FileLock

    from components.pipeline import stage_output_dir

    clone = clone_world(world, tmp_path / "clone", **PRUNE_NOW)
    sharing = store_profiles(clone.base / "params.yaml", clone.cfg)
    full = next(p for p in sharing if p.profile == "full")
    output = stage_output_dir(full, "train_preference")
    output.mkdir(parents=True, exist_ok=True)
    (output / "manifest.json").write_text(json.dumps(world.manifests["degraded"]), encoding="utf-8")
    assert prune(clone.cfg, keep_releases=1, dry_run=True).plan.runs == [world.manifests["degraded"]["run_id"]]
    plan = prune(clone.cfg, keep_releases=1, dry_run=True, sharing=sharing).plan
    assert (plan.releases, plan.model_versions, plan.runs) == ([], [], [])
    full.state_dir().mkdir(parents=True, exist_ok=True)
    with FileLock(str(full.state_dir() / "retrain.lock")):
        with pytest.raises(RetrainBusy, match="a retrain or a prune of profile 'full' is running"):
            prune(clone.cfg, keep_releases=1, sharing=sharing)


def test_gc_purges_only_what_the_prune_deleted_even_when_its_runs_logged_no_model(tmp_path):
    """Given no --logged-model-ids, `mlflow gc` purges every deleted logged model: a prune of a
    model-less failed retrain names a placeholder instead. A run and a logged model deleted by
    hand stay in the deleted stage, with their files."""
    world = build_world(tmp_path / "world", generator=False, with_failure=False)
    cfg = registry_cfg(world.base, **PRUNE_NOW)
    client = registry_client(cfg)
    failed, failed_stage = failed_retrain(cfg, "old")
    by_hand, by_hand_stage = failed_retrain(cfg, "deleted-by-hand")
    client.delete_run(by_hand)
    experiment = client.get_experiment_by_name(cfg.tracking.experiment).experiment_id
    model = client.create_logged_model(experiment, name="deleted-by-hand")
    client.delete_logged_model(model.model_id)
    assert release(cfg, world.base) == "3"  # the failed retrain is now older than the newest release
    stage_folder = artifact_folder(cfg, failed_stage)
    hand_folder = artifact_folder(cfg, by_hand_stage)  # its nested run, not a retrain of its own: left alone

    result = prune(cfg, keep_releases=2)
    assert sorted(result.plan.runs) == sorted([failed, failed_stage]) and result.plan.logged_models == []
    assert result.gc_ran and not stage_folder.exists() and result.freed_bytes > 0
    assert client.get_run(by_hand).info.lifecycle_stage == "deleted" and hand_folder.is_dir()
    db = sqlite3.connect(cfg.tracking.uri.removeprefix("sqlite:///"))
    try:
        left = [row[0] for row in db.execute("select name from logged_models where lifecycle_stage = 'deleted'")]
    finally:
        db.close()
    assert left == ["deleted-by-hand"]  # the placeholder went with the prune's runs


def test_a_prune_held_back_by_prune_min_age_days_says_so(world, tmp_path):
    """With the default 7 days a fresh store plans nothing: the output names what the age limit
    alone holds back, and the knob, instead of a bare "0 ... removed"."""
    from components.registry.retention import render_prune

    result = prune(clone_world(world, tmp_path / "clone").cfg, keep_releases=1, dry_run=True)
    assert result.plan.too_young == {"release version(s)": 0, "model version(s)": 1, "run(s)": 1}
    assert ("too young to go yet: 1 model version(s), 1 run(s), created less than 7 day(s) ago "
            "(registry.prune_min_age_days in params.yaml)") in render_prune(result)
    no_limit = prune(clone_world(world, tmp_path / "now", **PRUNE_NOW).cfg, keep_releases=1, dry_run=True)
    assert no_limit.plan.too_young == {} and "too young" not in render_prune(no_limit)
