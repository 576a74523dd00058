"""One-click promotion and rollback: move `champion` / `previous` on the release and its members.

Invariants (checked after every write, see `check_consistency`):
- the release holding alias A (champion, previous, challenger) lists, for every member family,
  the version of that family's registered model that holds A;
- a member model holds A only if a release holds A.
Promotion: champion -> target release, previous -> the replaced champion (which is recorded on
the target as `replaced_release`). Rollback: champion -> previous, previous -> the release that
one had replaced, so repeated rollbacks walk back through the promotion history.
All writes happen under `registry_lock` and re-read the current champion inside it, so ten
promotions started at once serialize and leave one consistent champion.
A release is made champion only if it can be served (`_unservable`: members registered, their
runs and files present). A champion or previous whose manifest cannot be read, and a challenger
with a member deleted by hand, are set aside rather than blocking every way out.
"""

from __future__ import annotations

import getpass
import os

from mlflow import MlflowClient

from components.config import Config
from components.evaluation.gates import GateResult, render_report
from components.registry.evidence import EvidenceError, regate
from components.registry.names import ALIASES, CHALLENGER, CHAMPION, PREVIOUS, REGISTERED_MODELS, RELEASE_MODEL, registered_model
from components.registry.release import load_manifest, now_iso
from components.registry.store import bundle_files, model_aliases, registry_client, registry_lock, set_alias


NO_RELEASE: dict = {"release": None, "members": {}}  # a role (previous) that no release fills


class PromotionRefused(RuntimeError):
    """The release may not become champion (no evidence, failed gate, unknown version...)."""


class RegistryInconsistent(RuntimeError):
    """Aliases of the release and its members disagree (read back after a write, or found by status)."""


def default_actor() -> str:
    try:
        return os.environ.get("COPYFLOW_ACTOR") or getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


# ---------------------------------------------------------------- consistency


def _member_families(*manifests: dict | None) -> set[str]:
    return {family for m in manifests if m for family in m["members"]}


def check_consistency(client: MlflowClient) -> list[str]:
    """Human-readable problems; [] when every member alias matches its release's manifest.

    Every registered family is checked, not only those of the aliased releases: a member left
    champion by a release that no longer is one is a problem too (serving would not see it)."""
    problems: list[str] = []
    release_aliases = model_aliases(client, RELEASE_MODEL)
    manifests: dict[str, dict] = {}
    for alias, version in release_aliases.items():
        if alias not in ALIASES:
            continue
        try:
            manifests[alias] = load_manifest(client, version)
        except LookupError as exc:
            problems.append(f"{RELEASE_MODEL}@{alias} (v{version}): {exc}")
    unreadable = {alias for alias in ALIASES if alias in release_aliases and alias not in manifests}
    for family in sorted(REGISTERED_MODELS):
        name = registered_model(family)
        actual = model_aliases(client, name)
        for alias in ALIASES:
            if alias in unreadable:
                continue  # reported above; what its members should be is unknown
            member = (manifests.get(alias) or {}).get("members", {}).get(family)
            expected = str(member["version"]) if member else None
            got = actual.get(alias)
            got = None if got is None else str(got)
            if alias == CHALLENGER and expected is None and got is not None:
                continue  # a member challenger without a release challenger is never written, but harmless
            if got != expected:
                release = release_aliases.get(alias)
                problems.append(
                    f"{name}@{alias} is {got or 'unset'} but {RELEASE_MODEL}@{alias}"
                    f"{f' (v{release})' if release else ''} says {expected or 'unset'}"
                )
    return problems


def _verify(client: MlflowClient, expected_release: dict[str, str | None], known: list[str]) -> list[str]:
    """Verify-after-write: the release aliases are what we wrote, and the write added no
    inconsistency to those already `known` before it (an unreadable challenger manifest, say, is
    not this write's doing: `status` keeps reporting it). Returns the problems left."""
    actual = model_aliases(client, RELEASE_MODEL)
    problems = [
        f"{RELEASE_MODEL}@{alias} is {actual.get(alias) or 'unset'}, expected {version or 'unset'}"
        for alias, version in expected_release.items()
        if (None if actual.get(alias) is None else str(actual.get(alias))) != version
    ]
    left = check_consistency(client)
    problems += [p for p in left if p not in known]
    if problems:
        raise RegistryInconsistent("registry aliases disagree after the write:\n- " + "\n- ".join(problems))
    return left


def _missing_members(client: MlflowClient, manifest: dict) -> list[str]:
    """Member versions of a release that are gone from the registry (deleted by hand)."""
    from mlflow.exceptions import MlflowException

    missing = []
    for member in manifest["members"].values():
        try:
            client.get_model_version(member["registered_model"], str(member["version"]))
        except MlflowException:
            missing.append(f"{member['registered_model']} v{member['version']}")
    return missing


def _missing_artifacts(client: MlflowClient, manifest: dict) -> list[str]:
    """Member models whose files are gone (a deleted run, a cleaned-up artifact store): serving
    could not load them. Checks the logged model and the bundle the server downloads."""
    import mlflow
    from mlflow.exceptions import MlflowException

    missing = []
    for member in manifest["members"].values():
        label = f"{member['registered_model']} v{member['version']}"
        try:
            run = client.get_run(member["run_id"]) if member.get("run_id") else None
            if run is not None and run.info.lifecycle_stage == "deleted":
                missing.append(f"{label} (its run {member['run_id']} was deleted)")
                continue
            mlflow.models.get_model_info(member["model_uri"])
            bundle = member.get("onnx_uri") or ""
            if bundle.startswith("runs:/"):
                now = bundle_files(client, bundle)
                if not now:
                    missing.append(f"{label} (no files at {bundle})")
                elif changed := _changed_files(member.get("bundle_files"), now):
                    missing.append(f"{label} (its files changed since it was gated: {changed})")
        except (MlflowException, OSError) as exc:
            missing.append(f"{label} ({str(exc).strip().splitlines()[0][:200]})")
    return missing


def _changed_files(recorded: dict[str, int] | None, now: dict[str, int]) -> str:
    """Which recorded files are gone or of another size ('' when none; releases from before the
    sizes were recorded have none to compare)."""
    problems = [f"{path} missing" if path not in now else f"{path} {now[path]:,} bytes, was {size:,}"
                for path, size in (recorded or {}).items() if now.get(path) != size]
    return "; ".join(problems[:3]) + (f"; {len(problems) - 3} more" if len(problems) > 3 else "")


def _unservable(client: MlflowClient, manifest: dict) -> list[str]:
    """Why the release could not be served if it became champion: members deleted from the
    registry, or whose files are gone. [] when it could."""
    return _missing_members(client, manifest) or _missing_artifacts(client, manifest)


def _apply(client: MlflowClient, champion: str, previous: str | None) -> None:
    """Point champion at `champion` and previous at `previous`, on the release and every member.

    Everything is read and checked before the first write, so a champion-to-be with a member
    deleted by hand is refused with nothing moved (callers pass a `previous` that is intact).
    Members are written first, release last: the release alias is the commit point (a crash in
    between leaves members ahead of the release, which `status` reports and the next promote, of
    any release, rewrites). Every registered family is written, so a family the new champion
    lacks loses its champion alias; a challenger that stays challenger keeps its members'
    challenger aliases even where it shares a version with the champion (a release that
    inherited the champion's member)."""
    champ_manifest = load_manifest(client, champion)
    prev_manifest = load_manifest(client, previous) if previous else None
    challenger = model_aliases(client, RELEASE_MODEL).get(CHALLENGER)
    challenger = None if challenger is None or str(challenger) == str(champion) else str(challenger)
    set_aside = False  # a challenger whose members' aliases are left exactly as they are
    try:
        chall_manifest = load_manifest(client, challenger) if challenger else None
    except LookupError:
        chall_manifest, set_aside = None, True  # unreadable challenger: left to `status`
    if chall_manifest is not None and _missing_members(client, chall_manifest):
        chall_manifest, set_aside = None, True  # a member deleted by hand: likewise (its alias cannot be set)
    missing = _unservable(client, champ_manifest)
    if missing:
        raise PromotionRefused(
            f"release {champion} cannot be served: {'; '.join(missing)}; nothing was changed"
        )
    for family in sorted(REGISTERED_MODELS):
        name = registered_model(family)
        champ_member = champ_manifest["members"].get(family)
        prev_member = (prev_manifest or NO_RELEASE)["members"].get(family)
        chall_member = (chall_manifest or NO_RELEASE)["members"].get(family)
        set_alias(client, name, CHAMPION, champ_member["version"] if champ_member else None)
        set_alias(client, name, PREVIOUS, prev_member["version"] if prev_member else None)
        if chall_member:
            set_alias(client, name, CHALLENGER, chall_member["version"])
        elif not set_aside and champ_member and str(model_aliases(client, name).get(CHALLENGER)) == str(champ_member["version"]):
            set_alias(client, name, CHALLENGER, None)
    set_alias(client, RELEASE_MODEL, PREVIOUS, previous)
    set_alias(client, RELEASE_MODEL, CHAMPION, champion)
    if str(model_aliases(client, RELEASE_MODEL).get(CHALLENGER)) == str(champion):
        set_alias(client, RELEASE_MODEL, CHALLENGER, None)


def _tag_members(client: MlflowClient, manifest: dict, tags: dict[str, str]) -> None:
    for member in manifest["members"].values():
        for key, value in tags.items():
            client.set_model_version_tag(member["registered_model"], str(member["version"]), key, value)


# ---------------------------------------------------------------- evidence


def recheck_evidence(cfg: Config, client: MlflowClient, target: dict, champion: dict | None) -> list[GateResult]:
    """Refuse unless the release passed its gates; re-run them if the champion changed since.

    Returns the gate results that were re-computed ([] when the stored verdict applies as is).
    """
    version = target["release"]
    missing = _unservable(client, target)
    if missing:  # before reading the members' tags, which would fail on a deleted version
        raise PromotionRefused(f"release {version} cannot be served: {'; '.join(missing)}; nothing was changed")
    release_tags = client.get_model_version(RELEASE_MODEL, version).tags
    if release_tags.get("gate.verdict") != "pass" or target.get("gate_verdict") != "pass":
        raise PromotionRefused(f"release {version} has no passing gate evidence (gate.verdict={release_tags.get('gate.verdict')!r})")
    for family, member in target["members"].items():
        mv = client.get_model_version(member["registered_model"], str(member["version"]))
        if mv.tags.get("gate.verdict") != "pass":
            raise PromotionRefused(
                f"release {version}: {member['registered_model']} v{member['version']} is tagged "
                f"gate.verdict={mv.tags.get('gate.verdict')!r}, not 'pass'"
            )
    baseline = target.get("baseline_release")
    current = champion["release"] if champion else None
    if current is None or str(baseline) == str(current):
        return []
    try:
        results = regate(cfg, target, champion)
    except EvidenceError as exc:
        raise PromotionRefused(f"release {version} cannot be re-checked against champion release {current}: {exc}") from exc
    if not all(r.passed for r in results):
        raise PromotionRefused(
            f"release {version} was gated against {f'release {baseline}' if baseline else 'no champion'}, "
            f"and fails against the current champion "
            f"release {current}:\n\n" + render_report(results, f"Re-check of release {version} vs release {current}")
        )
    return results


# ---------------------------------------------------------------- promote / rollback


def _target_version(client: MlflowClient, release: int | str | None) -> str:
    if release is not None:
        return str(release)
    challenger = model_aliases(client, RELEASE_MODEL).get(CHALLENGER)
    if challenger is None:
        raise PromotionRefused(
            f"no {RELEASE_MODEL} version has the alias 'challenger' (run retrain, or pass --release N)"
        )
    return str(challenger)


def _plan(target: dict, champion: dict | None, previous: dict | None = None) -> dict:
    """The alias moves: target becomes champion, `previous` (default: the champion) previous."""
    previous = champion if previous is None else previous
    members = {}
    for family in sorted(_member_families(target, previous)):
        new = target["members"].get(family)
        old = (previous or {"members": {}})["members"].get(family)
        members[family] = {
            "registered_model": registered_model(family),
            "champion": new["version"] if new else None,
            "previous": old["version"] if old else None,
        }
    return {"release": target["release"], "replaces": champion["release"] if champion else None, "members": members}


def promote(
    cfg: Config,
    release: int | str | None = None,
    dry_run: bool = False,
    note: str | None = None,
    actor: str | None = None,
    *,
    only_if_no_champion: bool = False,
) -> dict:
    """Make `release` (default: the challenger) the champion of the release and of every member.

    `only_if_no_champion` (auto-promotion of a first release) leaves an existing champion alone.
    Returns {"release", "replaces", "members", "changed", "dry_run", "recheck_report", ...}.
    Promoting the champion again rewrites its aliases where they drifted (a repair).
    Raises PromotionRefused (bad evidence, a member version deleted by hand, an unreadable
    manifest) or RegistryInconsistent (the write left an inconsistency it did not find).
    """
    client = registry_client(cfg)
    version = _target_version(client, release)
    try:
        target = load_manifest(client, version)
    except LookupError as exc:
        raise PromotionRefused(str(exc)) from exc
    actor = actor or default_actor()
    notes: list[str] = []
    if dry_run:  # no lock: nothing is written
        champion = _readable(client, CHAMPION, notes)
        if not _differs(champion, version):
            kept = _usable_previous(client, _readable(client, PREVIOUS, notes), version)
            return {**_plan(target, champion, kept), "changed": False, "dry_run": True, "recheck_report": "",
                    "message": f"release {version} is already the champion", "notes": notes}
        rechecked = recheck_evidence(cfg, client, target, champion)
        replaced = _usable_previous(client, _replaced(client, champion, notes), version)
        return {**_plan(target, champion, replaced), "changed": False, "dry_run": True, "recheck_report": _report(rechecked), "notes": notes}
    with registry_lock(cfg):
        champion = _readable(client, CHAMPION, notes)  # re-read under the lock: another promotion may have won
        if only_if_no_champion and champion is not None:
            return {**_plan(target, champion), "changed": False, "dry_run": False, "recheck_report": "",
                    "message": f"release {champion['release']} is already champion; auto-promotion skipped"}
        if not _differs(champion, version):
            # Already champion: nothing to promote, but a crash midway through an earlier promote or
            # rollback may have left members behind; rewriting the same aliases repairs that.
            previous_manifest = _usable_previous(client, _readable(client, PREVIOUS, notes), version)
            previous = previous_manifest["release"]
            before = check_consistency(client)
            if before:
                _apply(client, version, previous)
            left = _verify(client, {CHAMPION: version, PREVIOUS: previous}, before)
            repaired = [p for p in before if p not in left]
            message = f"release {version} is already the champion"
            if repaired:
                message += "; its aliases were repaired:\n- " + "\n- ".join(repaired)
            if left:
                message += "\nstill inconsistent (not fixable by moving aliases):\n- " + "\n- ".join(left)
            return {**_plan(target, champion, previous_manifest), "changed": bool(repaired), "dry_run": False,
                    "recheck_report": "", "message": message, "notes": notes}
        rechecked = recheck_evidence(cfg, client, target, champion)
        previous_manifest = _usable_previous(client, _replaced(client, champion, notes), version)
        previous = previous_manifest["release"]
        before = check_consistency(client)
        _apply(client, version, previous)
        when = now_iso()
        tags = {"promoted_at": when, "promoted_by": actor, "promotion.note": note or "", "replaced_release": previous or ""}
        for key, value in tags.items():
            client.set_model_version_tag(RELEASE_MODEL, version, key, value)
        if rechecked:
            client.set_model_version_tag(RELEASE_MODEL, version, "promotion.rechecked_against", previous or "")
        _tag_members(client, target, {"promoted_at": when, "promoted_by": actor, "release": version})
        _verify(client, {CHAMPION: version, PREVIOUS: previous}, before)
    return {**_plan(target, champion, previous_manifest), "changed": True, "dry_run": False,
            "recheck_report": _report(rechecked), "promoted_at": when, "promoted_by": actor, "note": note or "", "notes": notes}


def rollback(cfg: Config, note: str | None = None, actor: str | None = None) -> dict:
    """Champion back to `previous` in one step; previous becomes the release that one replaced."""
    client = registry_client(cfg)
    actor = actor or default_actor()
    notes: list[str] = []
    with registry_lock(cfg):
        champion_version = model_aliases(client, RELEASE_MODEL).get(CHAMPION)
        # An unreadable champion is rolled back like any other (its members' aliases move with
        # the restored release's); an unreadable or unservable previous cannot be restored.
        current = _readable(client, CHAMPION, notes)
        if current is None and champion_version is not None:
            current = {"release": str(champion_version), "members": {}}
        previous = _current(client, PREVIOUS)
        if current is None:
            raise PromotionRefused("nothing to roll back: no release has the alias 'champion' (promote one with `copyflow promote --release N`)")
        if previous is None:
            raise PromotionRefused("nothing to roll back to: no release has the alias 'previous'")
        restored, rolled_back = previous["release"], current["release"]
        older = client.get_model_version(RELEASE_MODEL, restored).tags.get("replaced_release") or None
        if older in (restored, rolled_back) or (older and not _intact(client, older)):
            older = None  # the history ends here: a further rollback will refuse
        before = check_consistency(client)
        _apply(client, restored, older)
        when = now_iso()
        for key, value in {"rolled_back_at": when, "rolled_back_by": actor, "rollback.note": note or ""}.items():
            client.set_model_version_tag(RELEASE_MODEL, rolled_back, key, value)
        for key, value in {"restored_at": when, "restored_by": actor}.items():
            client.set_model_version_tag(RELEASE_MODEL, restored, key, value)
        _tag_members(client, previous, {"restored_at": when, "restored_by": actor, "release": restored})
        _verify(client, {CHAMPION: restored, PREVIOUS: older}, before)
    older_manifest = load_manifest(client, older) if older else NO_RELEASE
    return {**_plan(previous, current, older_manifest), "rolled_back": rolled_back, "previous": older,
            "changed": True, "at": when, "by": actor, "note": note or "", "notes": notes}


def _current(client: MlflowClient, alias: str) -> dict | None:
    version = model_aliases(client, RELEASE_MODEL).get(alias)
    return None if version is None else load_manifest(client, version)


def _readable(client: MlflowClient, alias: str, notes: list[str]) -> dict | None:
    """The release holding `alias`, or None when none does or its manifest cannot be read (noted
    in `notes`). An unreadable champion or previous counts as none, as a deleted one does: it
    could not be served or restored, and it must not block promoting or restoring another."""
    try:
        return _current(client, alias)
    except LookupError as exc:
        notes.append(f"the release holding '{alias}' was set aside: {exc}")
        return None


def _differs(champion: dict | None, version: str) -> bool:
    return champion is None or str(champion["release"]) != str(version)


def _usable_previous(client: MlflowClient, candidate: dict | None, target: str) -> dict:
    """`candidate` as the `previous` of `target`, or NO_RELEASE when it is none, is the target
    itself, or cannot be served (a member deleted by hand or its files gone: a rollback could
    not restore it)."""
    if candidate is None or str(candidate["release"]) == str(target) or _unservable(client, candidate):
        return NO_RELEASE
    return candidate


def _replaced(client: MlflowClient, champion: dict | None, notes: list[str]) -> dict | None:
    """Who becomes `previous` on a promotion: the champion it replaces; with no champion (its
    release deleted by hand, or unreadable), the release that already is previous, so the
    history is kept."""
    return champion if champion is not None else _readable(client, PREVIOUS, notes)


def _intact(client: MlflowClient, version: str) -> bool:
    """The release exists, its manifest reads and it can be served (`_unservable`)."""
    try:
        return not _unservable(client, load_manifest(client, version))
    except LookupError:
        return False


def _report(results: list[GateResult]) -> str:
    return render_report(results, "Re-check against the current champion") if results else ""
