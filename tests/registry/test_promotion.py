"""promote / rollback on a real sqlite registry: alias moves, evidence re-check, concurrency."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from components.registry.names import REGISTERED_MODELS, RELEASE_MODEL
from components.registry.promotion import PromotionRefused, check_consistency, promote, rollback
from components.registry.store import model_aliases, registry_client, set_alias
from tests.conftest import ROOT
from tests.registry.world import clone_world

MEMBERS = [REGISTERED_MODELS["preference"], REGISTERED_MODELS["generator"]]
# Ten promotions at once: 5 separate processes and 5 threads; the lock must serialize both kinds.
N_PROCESSES = 5


def champion_state(cfg) -> dict[str, dict[str, str | None]]:
    """champion and previous of the release and of every member: what a rollback must restore."""
    client = registry_client(cfg)
    return {
        name: {alias: model_aliases(client, name).get(alias) for alias in ("champion", "previous")}
        for name in [RELEASE_MODEL, *MEMBERS]
    }


def test_promote_then_rollback_returns_exactly_the_previous_champion(fresh_world):
    cfg, second = fresh_world.cfg, fresh_world.second
    before = champion_state(cfg)
    assert before[RELEASE_MODEL] == {"champion": "1", "previous": None}

    result = promote(cfg, note="better AUC on the frozen snapshot", actor="alice")
    assert result["changed"] and result["release"] == "2" and result["replaces"] == "1"
    after = champion_state(cfg)
    assert after[RELEASE_MODEL] == {"champion": "2", "previous": "1"}
    for family, name in REGISTERED_MODELS.items():
        if name in MEMBERS:
            assert after[name] == {"champion": second.versions[family], "previous": fresh_world.first.versions[family]}
    client = registry_client(cfg)
    assert "challenger" not in model_aliases(client, RELEASE_MODEL)  # the challenger is champion now
    tags = client.get_model_version(RELEASE_MODEL, "2").tags
    assert tags["promoted_by"] == "alice" and tags["promotion.note"] == "better AUC on the frozen snapshot"
    assert tags["replaced_release"] == "1" and tags["promoted_at"]
    member = client.get_model_version("copyflow-preference", second.versions["preference"])
    assert member.tags["release"] == "2" and member.tags["promoted_by"] == "alice"

    undone = rollback(cfg, note="complaints", actor="bob")
    assert undone["release"] == "1" and undone["rolled_back"] == "2" and undone["previous"] is None
    assert champion_state(cfg) == before
    assert client.get_model_version(RELEASE_MODEL, "2").tags["rolled_back_by"] == "bob"
    assert check_consistency(client) == []
    with pytest.raises(PromotionRefused, match="nothing to roll back to"):
        rollback(cfg)


def test_dry_run_and_repeated_promotion_move_nothing(fresh_world):
    cfg = fresh_world.cfg
    before = {name: model_aliases(registry_client(cfg), name) for name in [RELEASE_MODEL, *MEMBERS]}
    plan = promote(cfg, dry_run=True)
    assert plan["dry_run"] and not plan["changed"] and plan["release"] == "2"
    assert plan["members"]["preference"] == {
        "registered_model": "copyflow-preference",
        "champion": fresh_world.second.versions["preference"],
        "previous": fresh_world.first.versions["preference"],
    }
    assert {name: model_aliases(registry_client(cfg), name) for name in [RELEASE_MODEL, *MEMBERS]} == before
    again = promote(cfg, release=1)
    assert not again["changed"] and "already the champion" in again["message"]


def test_promotion_refuses_without_passing_evidence(fresh_world):
    cfg = fresh_world.cfg
    client = registry_client(cfg)
    with pytest.raises(PromotionRefused, match="version 9 does not exist"):
        promote(cfg, release=9)
    member = fresh_world.second.versions["preference"]
    client.set_model_version_tag("copyflow-preference", member, "gate.verdict", "fail")
    with pytest.raises(PromotionRefused, match=f"copyflow-preference v{member} is tagged gate.verdict='fail'"):
        promote(cfg, release=2)
    assert model_aliases(client, RELEASE_MODEL)["champion"] == "1"
    client.set_model_version_tag("copyflow-preference", member, "gate.verdict", "pass")
    client.set_model_version_tag(RELEASE_MODEL, "2", "gate.verdict", "fail")  # the release's own tag, whatever its manifest says
    with pytest.raises(PromotionRefused, match="release 2 has no passing gate evidence \\(gate.verdict='fail'\\)"):
        promote(cfg, release=2)
    assert model_aliases(client, RELEASE_MODEL)["champion"] == "1"


def test_an_auto_promotion_that_finds_a_champion_leaves_it_alone(fresh_world):
    """Retrain auto-promotes a first release; a champion promoted meanwhile (another process) wins."""
    cfg = fresh_world.cfg
    before = champion_state(cfg)
    skipped = promote(cfg, release=2, only_if_no_champion=True)
    assert not skipped["changed"] and "auto-promotion skipped" in skipped["message"]
    assert champion_state(cfg) == before


def test_a_rollback_does_not_make_the_release_it_rolls_back_the_previous_one(fresh_world):
    """Release 1 once replaced release 2 (its replaced_release tag says 2): rolling 2 back to 1 ends
    the history there instead of pointing previous at 2, which would make rollbacks flip-flop."""
    cfg = fresh_world.cfg
    client = registry_client(cfg)
    promote(cfg, release=2)
    client.set_model_version_tag(RELEASE_MODEL, "1", "replaced_release", "2")
    undone = rollback(cfg)
    assert undone["release"] == "1" and undone["previous"] is None
    assert champion_state(cfg)[RELEASE_MODEL] == {"champion": "1", "previous": None}
    with pytest.raises(PromotionRefused, match="nothing to roll back to"):
        rollback(cfg)


def test_a_replaced_champion_that_cannot_be_served_is_not_made_previous(fresh_world):
    """Release 1's generator run was deleted: promoting 2 over it leaves previous unset, not
    pointing at a release a rollback could not restore."""
    cfg = fresh_world.cfg
    client = registry_client(cfg)
    version = fresh_world.first.versions["generator"]
    client.delete_run(client.get_model_version("copyflow-generator", version).run_id)
    result = promote(cfg, release=2)
    assert result["changed"] and result["replaces"] == "1"
    assert champion_state(cfg)[RELEASE_MODEL] == {"champion": "2", "previous": None}
    with pytest.raises(PromotionRefused, match="nothing to roll back to"):
        rollback(cfg)


def test_promoting_an_older_release_over_a_better_champion_is_rechecked_and_refused(fresh_world):
    """Release 1 was gated against nothing; after release 2 is champion, promoting 1 again re-runs
    the paired gate against 2 from stored evidence and refuses: 1 is clearly worse. Rollback,
    the explicit emergency path, still works."""
    cfg = fresh_world.cfg
    promote(cfg, release=2)
    with pytest.raises(PromotionRefused, match="fails against the current champion release 2") as refused:
        promote(cfg, release=1)
    assert "| auc |" in str(refused.value) and "**FAIL**" in str(refused.value)
    assert model_aliases(registry_client(cfg), RELEASE_MODEL)["champion"] == "2"
    assert rollback(cfg)["release"] == "1"


def test_the_promotion_recheck_resamples_shoppers_as_the_retrain_gate_did(fresh_world):
    """Re-run from stored evidence, release 2's gate against release 1 gives the interval the
    retrain gave it: the same shoppers resampled, not single impressions."""
    from components.registry.evidence import regate
    from components.registry.release import load_manifest

    cfg = fresh_world.cfg
    client = registry_client(cfg)
    target, champion = load_manifest(client, "2"), load_manifest(client, "1")
    [again] = [g for g in regate(cfg, target, champion) if g.family == "preference"]
    stored = {r["metric"]: r for r in target["members"]["preference"]["gate"]["rules"] if r["kind"] == "non_inferiority"}
    rechecked = {r.metric: r for r in again.rules if r.kind == "non_inferiority"}
    assert (rechecked["auc"].ci_low, rechecked["auc"].ci_high) == pytest.approx((stored["auc"]["ci_low"], stored["auc"]["ci_high"]))


def test_an_interrupted_promotion_is_reported_and_repaired_by_the_next_one(fresh_world):
    cfg = fresh_world.cfg
    client = registry_client(cfg)
    # a crash after the first member write: preference already moved, the release did not
    set_alias(client, "copyflow-preference", "champion", fresh_world.second.versions["preference"])
    problems = check_consistency(client)
    assert len(problems) == 1 and "copyflow-preference@champion" in problems[0]
    promote(cfg, release=2)
    assert check_consistency(client) == []


def _run_threads(cfg, targets: list[str], go: threading.Event) -> tuple[list, list[threading.Thread]]:
    results: list[dict | BaseException] = []

    def one(release: str) -> None:
        go.wait()
        try:
            results.append(promote(cfg, release=release, actor=f"thread-{release}"))
        except BaseException as exc:  # collected and asserted on below
            results.append(exc)

    threads = [threading.Thread(target=one, args=(t,)) for t in targets]
    for thread in threads:
        thread.start()
    return results, threads


def test_ten_concurrent_promotions_threads_and_processes_leave_one_consistent_champion(world, tmp_path):
    """Releases 1 and 2 are promoted alternately by 10 competitors started at the same moment:
    5 separate processes and 5 threads of this one."""
    import multiprocessing

    from tests.registry import promote_child

    # A wide margin so releases 1 and 2 may replace each other: every promotion is legitimate,
    # and the only way to end inconsistent would be interleaved alias writes.
    clone = clone_world(world, tmp_path / "clone", gates={"non_inferiority_margin": 0.2, "generator_bleu4_margin": 5.0})
    cfg = clone.cfg
    params = str(clone.base / "params.yaml")
    go = tmp_path / "go"
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(promote_child.PRELOAD)
    processes = []
    for i in range(N_PROCESSES):
        args = (params, "2" if i % 2 == 0 else "1", tmp_path / f"ready{i}", go, tmp_path / f"result{i}.json")
        processes.append(context.Process(target=promote_child.promote_when_told, args=args))
        processes[-1].start()
    start = threading.Event()
    thread_results, threads = _run_threads(cfg, ["1" if i % 2 == 0 else "2" for i in range(10 - N_PROCESSES)], start)
    try:
        deadline = time.monotonic() + 240
        while not all((tmp_path / f"ready{i}").exists() for i in range(N_PROCESSES)):
            assert all(p.is_alive() for p in processes), "a competing process died before the start"
            assert time.monotonic() < deadline, "competing processes did not start"
            time.sleep(0.05)
        go.touch()  # all ten start now
        start.set()
        for thread in threads:
            thread.join(timeout=240)
        for process in processes:
            process.join(timeout=240)
    finally:
        start.set()
        go.touch()
        for process in processes:
            if process.is_alive():
                process.kill()
    assert [p.exitcode for p in processes] == [0] * N_PROCESSES
    process_results = [json.loads((tmp_path / f"result{i}.json").read_text()) for i in range(N_PROCESSES)]
    errors = [r for r in thread_results if isinstance(r, BaseException)] + [r for r in process_results if "error" in r]
    assert not errors, errors
    results = thread_results + process_results
    assert len(results) == 10
    assert {r["promoted_by"] for r in process_results if r["changed"]} <= {f"process-{p.pid}" for p in processes}

    client = registry_client(cfg)
    assert check_consistency(client) == []
    aliases = model_aliases(client, RELEASE_MODEL)
    assert aliases["champion"] in {"1", "2"}
    changed = [r for r in results if r["changed"]]
    # serialized: each effective promotion replaced the other release, never its own
    assert changed and all(r["replaces"] == ("1" if r["release"] == "2" else "2") for r in changed)
    assert aliases["previous"] == ("1" if aliases["champion"] == "2" else "2")
    tags = client.get_model_version(RELEASE_MODEL, aliases["champion"]).tags
    assert tags["replaced_release"] == aliases["previous"]
    for family in ("preference", "generator"):
        expected = (clone.second if aliases["champion"] == "2" else clone.first).versions[family]
        assert model_aliases(client, REGISTERED_MODELS[family])["champion"] == expected


def test_a_partial_retrain_inherits_the_champion_member_and_promotes_cleanly(fresh_world):
    """Only the preference model was retrained: the release carries the champion's generator."""
    from components.registry.candidates import release_candidates
    from components.registry.release import load_manifest
    from tests.registry import helpers

    cfg = fresh_world.cfg
    manifest = helpers.train_preference(cfg, fresh_world.base)  # the full model again, a new run
    outcome = release_candidates(cfg, [manifest], project_dir=ROOT, scorers=helpers.SCORERS)
    assert outcome.passed and outcome.release == "3"
    client = registry_client(cfg)
    members = load_manifest(client, 3)["members"]
    assert members["generator"]["inherited"] and members["generator"]["version"] == fresh_world.first.versions["generator"]
    assert not members["preference"]["inherited"]
    promote(cfg, release=3)
    assert model_aliases(client, "copyflow-generator")["champion"] == fresh_world.first.versions["generator"]
    assert model_aliases(client, "copyflow-preference")["champion"] == outcome.versions["preference"]
    assert check_consistency(client) == []


def test_a_challenger_sharing_a_member_with_the_champion_keeps_its_aliases_through_promote_and_rollback(fresh_world):
    """Release 3 retrains only the preference model and inherits release 1's generator. Making
    release 2 champion and rolling back to 1 must leave release 3 a whole challenger: its
    generator alias stays although that version is also the champion's."""
    from components.registry.candidates import release_candidates
    from tests.registry import helpers

    cfg = fresh_world.cfg
    client = registry_client(cfg)
    manifest = helpers.train_preference(cfg, fresh_world.base)
    assert release_candidates(cfg, [manifest], project_dir=ROOT, scorers=helpers.SCORERS).release == "3"
    inherited = fresh_world.first.versions["generator"]
    promote(cfg, release=2)
    assert check_consistency(client) == []
    rollback(cfg)
    assert model_aliases(client, RELEASE_MODEL) == {"champion": "1", "challenger": "3"}
    assert model_aliases(client, "copyflow-generator") == {"champion": inherited, "challenger": inherited}
    assert check_consistency(client) == []
    assert promote(cfg)["release"] == "3" and check_consistency(client) == []


def test_a_rollback_to_a_release_with_a_deleted_member_is_refused_and_moves_nothing(fresh_world):
    cfg = fresh_world.cfg
    client = registry_client(cfg)
    promote(cfg, release=2)
    client.delete_model_version("copyflow-preference", fresh_world.first.versions["preference"])
    before = champion_state(cfg)  # MLflow dropped the deleted version's `previous` alias with it
    with pytest.raises(PromotionRefused, match=r"release 1 cannot be served: copyflow-preference v\d+; nothing was changed"):
        rollback(cfg)
    assert champion_state(cfg) == before
    assert before["copyflow-generator"]["champion"] == fresh_world.second.versions["generator"]  # not moved


def test_a_challenger_with_a_deleted_member_blocks_neither_repair_nor_rollback(fresh_world):
    """Champion 2, previous 1, challenger 3 (a new preference model, release 2's generator
    carried over); release 3's preference version is deleted by hand. Promoting the challenger
    is refused in one line; repairing the champion and rolling back work, and leave the broken
    challenger's member aliases alone (status keeps reporting it)."""
    from components.registry.candidates import release_candidates
    from tests.registry import helpers

    cfg = fresh_world.cfg
    client = registry_client(cfg)
    promote(cfg, release=2)
    manifest = helpers.train_preference(cfg, fresh_world.base)
    assert release_candidates(cfg, [manifest], project_dir=ROOT, scorers=helpers.SCORERS).release == "3"
    deleted = model_aliases(client, "copyflow-preference")["challenger"]
    client.delete_model_version("copyflow-preference", deleted)
    before = champion_state(cfg)
    with pytest.raises(PromotionRefused, match=rf"release 3 cannot be served: copyflow-preference v{deleted}; nothing was changed"):
        promote(cfg)
    with pytest.raises(PromotionRefused, match="cannot be served"):
        promote(cfg, dry_run=True)
    assert champion_state(cfg) == before

    repaired = promote(cfg, release=2)  # the repair that status suggests
    assert not repaired["changed"] and "still inconsistent" in repaired["message"]
    assert champion_state(cfg) == before

    assert rollback(cfg)["release"] == "1"
    assert model_aliases(client, RELEASE_MODEL) == {"champion": "1", "challenger": "3"}
    assert model_aliases(client, "copyflow-generator")["champion"] == fresh_world.first.versions["generator"]
    assert model_aliases(client, "copyflow-generator")["challenger"] == fresh_world.second.versions["generator"]  # release 3's, left alone
    assert check_consistency(client) == [f"copyflow-preference@challenger is unset but {RELEASE_MODEL}@challenger (v3) says {deleted}"]


def test_a_release_whose_model_files_are_gone_is_refused(fresh_world):
    """A deleted run (an artifact clean-up) leaves the registry entries in place: serving would
    fail to load them, so promotion refuses, naming the member, and moves nothing."""
    cfg = fresh_world.cfg
    client = registry_client(cfg)
    version = fresh_world.second.versions["generator"]
    run_id = client.get_model_version("copyflow-generator", version).run_id
    client.delete_run(run_id)
    before = champion_state(cfg)
    with pytest.raises(PromotionRefused, match=rf"release 2 cannot be served: copyflow-generator v{version} \(its run {run_id} was deleted\)"):
        promote(cfg)
    assert champion_state(cfg) == before


def test_a_bundle_cut_short_since_it_was_gated_cannot_become_champion(fresh_world, tmp_path):
    """A server downloads the bundle: a file truncated or removed in the artifact store after the
    gate (a failed copy, a clean-up) would fail to load there, so promote and rollback refuse it."""
    from urllib.parse import unquote, urlparse

    from components.registry.promotion import _missing_artifacts
    from components.registry.release import load_manifest
    from components.registry.store import bundle_files

    cfg = fresh_world.cfg
    client = registry_client(cfg)
    manifest = load_manifest(client, "2")
    bundle = tmp_path / "generator_bundle"
    (bundle / "onnx").mkdir(parents=True)
    (bundle / "onnx" / "decoder.onnx").write_bytes(b"\x08" * 1000)
    (bundle / "weights.pt").write_bytes(b"\x01" * 500)
    run = client.create_run(client.get_run(manifest["members"]["generator"]["run_id"]).info.experiment_id)
    client.log_artifacts(run.info.run_id, str(bundle), "generator_bundle")
    member = manifest["members"]["generator"]
    member["onnx_uri"] = f"runs:/{run.info.run_id}/generator_bundle"
    member["bundle_files"] = bundle_files(client, member["onnx_uri"])
    assert member["bundle_files"] == {"generator_bundle/onnx/decoder.onnx": 1000, "generator_bundle/weights.pt": 500}
    assert _missing_artifacts(client, manifest) == []

    stored = Path(unquote(urlparse(client.get_run(run.info.run_id).info.artifact_uri).path)) / "generator_bundle"
    (stored / "onnx" / "decoder.onnx").write_bytes(b"\x08" * 10)
    (stored / "weights.pt").unlink()
    [problem] = _missing_artifacts(client, manifest)
    assert "its files changed since it was gated:" in problem
    assert "generator_bundle/onnx/decoder.onnx 10 bytes, was 1,000" in problem and "generator_bundle/weights.pt missing" in problem


def test_an_unreadable_champion_manifest_blocks_neither_rollback_nor_another_promotion(fresh_world):
    """Champion 2 (previous 1) with its manifest damaged on disk: rollback restores release 1,
    and promoting release 1 instead works too, each with a warning naming the set-aside release."""
    from pathlib import Path

    from components.registry.release import _manifest_cached

    cfg = fresh_world.cfg
    client = registry_client(cfg)
    promote(cfg, release=2)
    # The clone reads the original world's artifacts: damage them, and restore them after.
    source = Path(client.get_model_version(RELEASE_MODEL, "2").source.removeprefix("file://")) / "manifest.json"
    intact = source.read_bytes()

    def damage() -> None:
        source.write_text('{"schema": 1, "members": ', encoding="utf-8")
        _manifest_cached.cache_clear()

    try:
        damage()
        result = rollback(cfg)
        assert result["release"] == "1" and result["rolled_back"] == "2"
        assert any("set aside" in n and "cannot be read" in n for n in result["notes"])
        assert model_aliases(client, RELEASE_MODEL) == {"champion": "1"}
        assert check_consistency(client) == []

        # The same damage, promoting release 1 by hand instead of rolling back.
        source.write_bytes(intact)
        _manifest_cached.cache_clear()
        promote(cfg, release=2)
        damage()
        promoted = promote(cfg, release=1)
        assert promoted["changed"] and any("set aside" in n for n in promoted["notes"])
        assert model_aliases(client, RELEASE_MODEL)["champion"] == "1"
    finally:
        source.write_bytes(intact)
        _manifest_cached.cache_clear()


def test_promoting_the_champion_again_repairs_members_left_behind(fresh_world):
    """Two ways aliases drift: a crash midway through promoting release 2 (a member moved, the
    release did not), and a stale champion alias on a family the champion release lacks. Status
    reports both; `promote --release <champion>` rewrites them."""
    cfg = fresh_world.cfg
    client = registry_client(cfg)
    set_alias(client, "copyflow-preference", "champion", fresh_world.second.versions["preference"])
    client.create_registered_model("copyflow-effect")
    stray = client.create_model_version("copyflow-effect", source=str(fresh_world.base / "nowhere")).version
    set_alias(client, "copyflow-effect", "champion", stray)
    problems = check_consistency(client)
    assert len(problems) == 2 and any(p.startswith("copyflow-effect@champion is 1 but") for p in problems)

    plan = promote(cfg, release=1, dry_run=True)
    assert plan["message"] == "release 1 is already the champion" and plan["members"]["preference"]["previous"] is None
    result = promote(cfg, release=1)
    assert result["changed"] and "repaired" in result["message"] and "copyflow-effect@champion" in result["message"]
    assert check_consistency(client) == []
    assert model_aliases(client, "copyflow-preference")["champion"] == fresh_world.first.versions["preference"]
    assert "champion" not in model_aliases(client, "copyflow-effect")
    again = promote(cfg, release=1)
    assert not again["changed"] and again["message"] == "release 1 is already the champion"


def test_promoting_with_the_champion_release_deleted_keeps_the_previous_alias(fresh_world):
    """Champion 2 with previous 1; release 2 is deleted by hand. Rollback says what is missing,
    and promoting release 3 keeps 1 as previous, so a rollback still has somewhere to go."""
    from components.registry.candidates import release_candidates
    from tests.registry import helpers

    cfg = fresh_world.cfg
    client = registry_client(cfg)
    manifest = helpers.train_preference(cfg, fresh_world.base)
    assert release_candidates(cfg, [manifest], project_dir=ROOT, scorers=helpers.SCORERS).release == "3"
    promote(cfg, release=2)
    client.delete_model_version(RELEASE_MODEL, "2")
    with pytest.raises(PromotionRefused, match="no release has the alias 'champion'"):
        rollback(cfg)
    promote(cfg, release=3)
    assert model_aliases(client, RELEASE_MODEL) == {"champion": "3", "previous": "1"}
    assert check_consistency(client) == []
    assert rollback(cfg)["release"] == "1"
