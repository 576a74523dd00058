"""Retention: `copyflow prune` removes old releases, the model versions and runs only they kept,
and their files, so a store retrained nightly for months does not grow without bound.

Kept (everything else that is old enough goes):
- release versions: every one holding an alias; the newest `keep_releases`; the first
  `keep_releases` steps of the rollback history from the champion (previous, then each restored
  release's `replaced_release`), so `copyflow rollback` goes back as far as it did before; and
  every release created at or after the cutoff;
- model versions: the members of kept releases (manifest, else the release's `member.*` tags),
  every version holding an alias, every version of a run that the current training outputs of
  the store's profiles name (a retrain that DVC skips reuses the run and its version's verdict),
  every version created at or after the cutoff;
- runs: the runs of kept versions and releases, the runs their manifests point to (model,
  bundle, gate evidence), those training runs, every run started at or after the cutoff or still
  RUNNING; and with each of those the whole retrain it belongs to (its root run and every nested
  run);
- logged models of kept runs or kept versions.
The cutoff is the earlier of `now - prune_min_age_days` and the creation of the newest release:
a retrain in flight, or one whose release failed since, stays for a person to read.

Removed: what is not kept and is copyflow's own: release and model versions of copyflow's
registered models (never a registered model itself), the runs of removed versions, and retrain
runs (tag kind=retrain) with all their nested runs. Runs made by hand, outside a retrain, are
left alone. Versions go through `MlflowClient.delete_model_version`, logged models through
`delete_logged_model`, runs through `delete_run`, each tagged `copyflow.pruned_at` first; then
`mlflow gc` permanently deletes exactly those runs and logged models (rows and artifacts).

The whole prune holds the retrain lock of every profile logging to the store (`store_profiles`: a
retrain cannot start or be running) and the registry lock (no alias moves while it decides what
the aliases protect). The current training runs of each of those profiles are kept.
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import time
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

import click
from mlflow import MlflowClient
from mlflow.entities import ViewType
from mlflow.exceptions import MlflowException

from components import tracking
from components.config import Config, load_config, read_params
from components.dvc_runner import StageFailed, dvc_env
from components.pipeline import TRAINING_STAGES, stage_output_dir
from components.registry.names import CHAMPION, PREVIOUS, REGISTERED_MODELS, RELEASE_MODEL
from components.registry.promotion import check_consistency
from components.registry.release import load_manifest
from components.registry.store import model_aliases, registry_client, registry_lock
from components.retrain_lock import one_retrain_at_a_time

DAY_MS = 86_400_000
PARENT_TAG = "mlflow.parentRunId"
PRUNED_TAG = "copyflow.pruned_at"


@dataclass
class PrunePlan:
    """What a prune removes (and keeps), decided before anything is written."""

    tracking_uri: str
    keep_releases: int
    cutoff_ms: int
    releases: list[str] = field(default_factory=list)  # copyflow-release versions to delete
    kept_releases: list[str] = field(default_factory=list)
    model_versions: list[tuple[str, str]] = field(default_factory=list)  # (registered model, version)
    runs: list[str] = field(default_factory=list)
    logged_models: list[str] = field(default_factory=list)
    files: list[Path] | None = None  # the artifact files of removed runs and logged models (None: not a local store)
    folders: list[Path] = field(default_factory=list)  # their artifact folders (local store)
    bytes: int | None = None  # the size of `files` when planned (None: not a local store)
    min_age_days: float = 0.0  # registry.prune_min_age_days the cutoff was computed with
    too_young: dict[str, int] = field(default_factory=dict)  # what would go but for min_age_days: {"release version(s)": n, ...}


@dataclass
class PruneResult:
    plan: PrunePlan
    dry_run: bool
    freed_bytes: int | None = None  # None: not measured (not a local store, or gc did not run)
    gc_ran: bool = False
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- reading the store


def _pages(fetch: Callable[[str | None], list]) -> list:
    """Every page of an MLflow search (PagedList with .token)."""
    found, token = [], None
    while True:
        page = fetch(token)
        found.extend(page)
        token = getattr(page, "token", None)
        if not token:
            return found


def _versions(client: MlflowClient, name: str) -> list:
    return _pages(lambda token: client.search_model_versions(f"name = '{name}'", max_results=1000, page_token=token))


def _run_ids_in(uris: Iterable[str | None]) -> set[str]:
    """Run ids of `runs:/RUN/...` URIs (manifest model, bundle and evidence URIs)."""
    return {u.removeprefix("runs:/").split("/", 1)[0] for u in uris if isinstance(u, str) and u.startswith("runs:/")}


def _rollback_history(client: MlflowClient, aliases: dict[str, str], steps: int) -> list[str]:
    """The champion and the `steps` releases a repeated `copyflow rollback` would restore, in order:
    previous, then each one's `replaced_release` (as promotion.rollback walks it)."""
    chain = [aliases[CHAMPION]] if CHAMPION in aliases else []
    current = aliases.get(PREVIOUS)
    while current and current not in chain and len(chain) <= steps:
        chain.append(current)
        try:
            current = client.get_model_version(RELEASE_MODEL, current).tags.get("replaced_release") or None
        except MlflowException:
            break  # deleted by hand: the history ends here for rollback too
    return chain


def _release_members(client: MlflowClient, version) -> tuple[dict[str, str], set[str]]:
    """({registered model: version}, run ids) a release needs: from its manifest, else its
    `member.*` tags (a manifest that cannot be read still names its members there)."""
    members = {REGISTERED_MODELS[k.removeprefix("member.")]: str(v) for k, v in version.tags.items()
               if k.startswith("member.") and k.removeprefix("member.") in REGISTERED_MODELS}
    runs = {version.run_id} if version.run_id else set()
    try:
        manifest = load_manifest(client, version.version)
    except LookupError:
        return members, runs
    for member in manifest["members"].values():
        members[member["registered_model"]] = str(member["version"])
        runs |= _run_ids_in([member.get("source_uri"), member.get("onnx_uri"), member.get("evidence_uri")])
        if member.get("run_id"):
            runs.add(member["run_id"])
    return members, runs


def _training_runs_in_use(cfg: Config) -> set[str]:
    """Runs the profile's current training outputs name: a retrain that DVC skips reuses them."""
    runs = set()
    for stage in TRAINING_STAGES:
        path = stage_output_dir(cfg, stage) / "manifest.json"
        try:
            run_id = json.loads(path.read_text(encoding="utf-8")).get("run_id")
        except (OSError, ValueError, AttributeError):
            continue
        if run_id:
            runs.add(str(run_id))
    return runs


def logged_model_of(version) -> str | None:
    """The logged model (m-...) a registered version was made from: its `model_id`, which the sqlite
    store leaves empty, else its source `models:/m-...` (MLflow 3 registers the run's logged model)."""
    if getattr(version, "model_id", None):
        return version.model_id
    source = version.source or ""
    if source.startswith("models:/m-"):
        return source.removeprefix("models:/").split("/", 1)[0]
    return None


def _local_path(uri: str | None) -> Path | None:
    if not uri:
        return None
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme == "" and uri.startswith("/"):
        return Path(uri)
    return None


def _files_under(paths: Iterable[Path | None]) -> list[Path] | None:
    """Every file under the given local folders (None when one of them is not local)."""
    files: set[Path] = set()
    for path in paths:
        if path is None:
            return None
        if path.is_file():
            files.add(path)
        elif path.is_dir():
            files.update(f for f in path.rglob("*") if f.is_file())
    return sorted(files)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


# ---------------------------------------------------------------- the plan


def plan_prune(cfg: Config, client: MlflowClient, keep_releases: int, now_ms: int, in_use: set[str] | None = None,
               min_age_days: float | None = None) -> PrunePlan:
    """Decide what goes (see the module docstring); reads only. `in_use`: the training runs the
    current outputs of the store's profiles name (default: cfg's profile's); `min_age_days`:
    default registry.prune_min_age_days."""
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    releases = _versions(client, RELEASE_MODEL)
    aliases = model_aliases(client, RELEASE_MODEL)
    newest_release = max((int(r.creation_timestamp) for r in releases), default=None)
    min_age_days = cfg.registry.prune_min_age_days if min_age_days is None else min_age_days
    cutoff = now_ms - int(min_age_days * DAY_MS)
    if newest_release is not None:
        cutoff = min(cutoff, newest_release)
    plan = PrunePlan(tracking.tracking_uri(cfg), keep_releases, cutoff, min_age_days=min_age_days)

    by_number = sorted(releases, key=lambda r: int(r.version), reverse=True)
    kept = {str(r.version) for r in by_number[:keep_releases]}
    kept |= set(aliases.values()) | set(_rollback_history(client, aliases, keep_releases))
    kept |= {str(r.version) for r in releases if int(r.creation_timestamp) >= cutoff}
    kept_versions: dict[str, set[str]] = {name: set() for name in REGISTERED_MODELS.values()}
    in_use = _training_runs_in_use(cfg) if in_use is None else in_use
    keep_runs = set(in_use)
    doomed_runs: set[str] = set()
    for release in releases:
        if str(release.version) in kept:
            members, runs = _release_members(client, release)
            for name, version in members.items():
                kept_versions.setdefault(name, set()).add(version)
            keep_runs |= runs
        else:
            plan.releases.append(str(release.version))  # sorted below
            doomed_runs |= {release.run_id} if release.run_id else set()
    plan.kept_releases = sorted(kept, key=int)
    plan.releases.sort(key=int)

    kept_models: set[str] = set()  # logged models of kept versions
    for name in REGISTERED_MODELS.values():
        held = set(model_aliases(client, name).values())
        for version in _versions(client, name):
            number = str(version.version)
            if (number in kept_versions.get(name, set()) or number in held or version.run_id in in_use
                    or int(version.creation_timestamp) >= cutoff):
                keep_runs |= {version.run_id, version.tags.get("training_run_id")} - {None, "", "none"}
                kept_models |= {model_id} if (model_id := logged_model_of(version)) else set()
            else:
                plan.model_versions.append((name, number))
                doomed_runs |= {version.run_id} if version.run_id else set()

    runs = {} if experiment is None else {run.info.run_id: run for run in _pages(lambda token: client.search_runs(
        [experiment.experiment_id], "", run_view_type=ViewType.ACTIVE_ONLY, max_results=1000, page_token=token))}
    roots = _roots(runs)
    for run_id, run in runs.items():
        if run.info.start_time is None or run.info.start_time >= cutoff or run.info.status == "RUNNING":
            keep_runs.add(run_id)
        elif run.data.tags.get("kind") == "retrain" and roots[run_id] == run_id:
            doomed_runs.add(run_id)
    kept_trees = {roots.get(r, r) for r in keep_runs}
    doomed_trees = {roots[r] for r in doomed_runs if r in runs} - kept_trees
    plan.runs = sorted(r for r in runs if roots[r] in doomed_trees)

    if experiment is not None and plan.runs:
        gone = set(plan.runs)
        models = _pages(lambda token: client.search_logged_models([experiment.experiment_id], max_results=1000, page_token=token))
        doomed_models = [m for m in models if m.source_run_id in gone and m.model_id not in kept_models]
        plan.logged_models = sorted(m.model_id for m in doomed_models)
        folders = [_local_path(runs[r].info.artifact_uri) for r in plan.runs] + [_local_path(m.artifact_location) for m in doomed_models]
        plan.files = _files_under(folders)
        plan.folders = [f for f in folders if f is not None] if plan.files is not None else []
        plan.bytes = None if plan.files is None else sum(_size(f) for f in plan.files)
    elif tracking.artifact_root(plan.tracking_uri) is not None:
        plan.files, plan.bytes = [], 0
    return plan


def _too_young(plan: PrunePlan, ageless: PrunePlan) -> dict[str, int]:
    """What `ageless` (the same prune with no minimum age) removes and `plan` does not."""
    return {"release version(s)": len(set(ageless.releases) - set(plan.releases)),
            "model version(s)": len(set(ageless.model_versions) - set(plan.model_versions)),
            "run(s)": len(set(ageless.runs) - set(plan.runs))}


def _roots(runs: dict) -> dict[str, str]:
    """run id -> the id of the outermost run it is nested in (itself when it is not nested; a
    parent that is not among `runs`, deleted or elsewhere, ends the walk)."""
    roots: dict[str, str] = {}
    for run_id in runs:
        chain, current = [], run_id
        while True:
            if current in roots:
                root = roots[current]
                break
            chain.append(current)
            parent = runs[current].data.tags.get(PARENT_TAG)
            if not parent or parent not in runs or parent in chain:
                root = current
                break
            current = parent
        for member in chain:
            roots[member] = root
    return roots


# ---------------------------------------------------------------- the prune


def all_profiles(params_path: Path | str) -> list[Config]:
    """Every profile of the params file (each load checks them all, so none fails alone)."""
    return [load_config(params_path, name) for name in sorted(read_params(Path(params_path)).get("profiles") or {})]


def store_profiles(params_path: Path | str, cfg: Config) -> list[Config]:
    """The other profiles of the params file that log to cfg's store (`quick` and `full` share
    `paths.mlflow_dir`): their releases are the same registry, their runs the same experiment."""
    uri = tracking.tracking_uri(cfg)
    sharing = []
    for other in all_profiles(params_path):
        try:
            if other.profile != cfg.profile and tracking.tracking_uri(other) == uri:
                sharing.append(other)
        except (ValueError, FileNotFoundError):  # a store of its own the environment overrides: not this one
            continue
    return sharing


def prune(cfg: Config, keep_releases: int | None = None, dry_run: bool = False, now_ms: int | None = None,
          sharing: list[Config] | None = None) -> PruneResult:
    """Plan, then (unless dry_run) remove. `sharing`: the other profiles of the same store
    (`store_profiles`), whose retrain locks are held too and whose current training runs are kept.
    Raises RetrainBusy while a retrain of one of them runs, PromotionBusy while a promotion holds
    the registry lock."""
    keep = cfg.registry.keep_releases if keep_releases is None else keep_releases
    if keep < 1:
        raise ValueError(f"--keep-releases must be at least 1 (got {keep}): the newest release is always kept")
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    client = registry_client(cfg)
    profiles = [cfg, *(sharing or [])]
    with ExitStack() as locks:
        for each in profiles:
            locks.enter_context(one_retrain_at_a_time(each))
        locks.enter_context(registry_lock(cfg))
        in_use = set().union(*(_training_runs_in_use(each) for each in profiles))
        plan = plan_prune(cfg, client, keep, now_ms, in_use)
        if plan.min_age_days > 0:  # say what the age limit alone holds back, so "nothing to remove" is not a riddle
            plan.too_young = _too_young(plan, plan_prune(cfg, client, keep, now_ms, in_use, min_age_days=0))
        result = PruneResult(plan, dry_run)
        if dry_run:
            return result
        before = check_consistency(client)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now_ms / 1000))
        # Releases first (they name their members), then members, then runs: an interrupted prune
        # leaves only unreferenced things, which the next prune finds again.
        for version in plan.releases:
            client.delete_model_version(RELEASE_MODEL, version)
        for name, version in plan.model_versions:
            client.delete_model_version(name, version)
        for model_id in plan.logged_models:
            client.set_logged_model_tags(model_id, {PRUNED_TAG: stamp})
            client.delete_logged_model(model_id)
        for run_id in plan.runs:
            client.set_tag(run_id, PRUNED_TAG, stamp)
            client.delete_run(run_id)
        after = [p for p in check_consistency(client) if p not in before]
        if after:  # cannot happen by construction (aliased versions are kept): say so loudly
            result.notes.append("the registry reports new inconsistencies: " + "; ".join(after))
    _collect_garbage(cfg, client, result)
    return result


def _collect_garbage(cfg: Config, client: MlflowClient, result: PruneResult) -> None:
    """Permanently delete this prune's runs and logged models with `mlflow gc`, and only them.

    `mlflow gc` without --experiment-ids purges every deleted experiment, without --run-ids every
    deleted run, and without --logged-model-ids every deleted logged model. So it always gets
    both id lists (a deleted, empty placeholder model when the pruned runs logged none), and where
    an experiment was deleted by hand it is not run at all: the note says how to finish."""
    plan = result.plan
    if not plan.runs:
        result.freed_bytes = None if plan.files is None else 0
        return
    uri = plan.tracking_uri
    manual = f"`mlflow gc --backend-store-uri {uri} --run-ids ...` with the runs tagged {PRUNED_TAG}"
    if plan.files is None or not uri.startswith("sqlite:///"):
        result.notes.append(f"the pruned runs are deleted, but their files stay: {uri} is not the embedded store; "
                            f"run {manual} where its database is")
        return
    deleted_experiments = client.search_experiments(view_type=ViewType.DELETED_ONLY)
    if deleted_experiments:
        names = ", ".join(e.name for e in deleted_experiments[:3])
        result.notes.append(f"`mlflow gc` was not run: it would also purge the experiment(s) deleted by hand ({names}); "
                            f"the pruned runs are deleted, their files stay until you run {manual}")
        return
    models = plan.logged_models or [_placeholder_model(client, cfg, plan.runs[0])]
    sizes = {f: _size(f) for f in plan.files}
    args = ["--backend-store-uri", uri, "--tracking-uri", uri,
            "--run-ids", ",".join(plan.runs), "--logged-model-ids", ",".join(models)]
    try:
        _run_mlflow_gc(args)
    except (MlflowException, OSError, click.ClickException) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        result.notes.append(f"`mlflow gc` failed ({first}); the pruned runs are deleted, their files stay until you run {manual}")
        return
    result.gc_ran = True
    for folder in plan.folders:  # gc removes <run>/artifacts and <model>/artifacts, not the empty folder above
        try:
            folder.parent.rmdir()
        except OSError:
            pass  # not empty, or gone: left as it is
    result.freed_bytes = sum(size for f, size in sizes.items() if not f.exists())


def _placeholder_model(client: MlflowClient, cfg: Config, run_id: str) -> str:
    """A deleted, empty logged model to name to `mlflow gc` when the pruned runs logged none:
    given no --logged-model-ids, gc purges every deleted logged model, also those deleted by other
    means. Tagged like the prune's own, and purged with them."""
    experiment = client.get_run(run_id).info.experiment_id
    model = client.create_logged_model(experiment, name="copyflow-prune-placeholder", tags={PRUNED_TAG: "placeholder"})
    client.delete_logged_model(model.model_id)
    return model.model_id


def _run_mlflow_gc(args: list[str]) -> None:
    """`mlflow gc ARGS` through its Python entry point (the installed CLI's click command), in this
    process: ids are not limited by the command line's length; its per-run lines are not printed."""
    from mlflow.cli import gc  # here: mlflow.cli loads the tracking server's modules too, which only gc needs

    with contextlib.redirect_stdout(io.StringIO()):
        gc.main(args=args, prog_name="mlflow gc", standalone_mode=False)


def _human(size: int | None) -> str:
    if size is None:
        return "size unknown (not a local store)"
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:,.0f} {unit}" if unit == "B" else f"{size:,.1f} {unit}"
        size /= 1024
    return f"{size:,.1f} GB"


def render_prune(result: PruneResult) -> str:
    """What the CLI prints: what would go (or went), then what was freed."""
    plan = result.plan
    cutoff = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(plan.cutoff_ms / 1000))
    verb = "would remove" if result.dry_run else "removed"
    lines = [
        f"MLflow store: {plan.tracking_uri}",
        f"kept: {len(plan.kept_releases)} release(s) ({_span(plan.kept_releases)}): every aliased one, the newest "
        f"{plan.keep_releases} and {plan.keep_releases} rollback step(s); only what is older than {cutoff} may go",
        f"{verb}: {len(plan.releases)} release version(s){f' ({_span(plan.releases)})' if plan.releases else ''}, "
        f"{len(plan.model_versions)} model version(s), {len(plan.runs)} run(s), {len(plan.logged_models)} logged model(s); "
        f"artifacts on disk: {_human(plan.bytes)}",
    ]
    if any(plan.too_young.values()):
        held = ", ".join(f"{n} {what}" for what, n in plan.too_young.items() if n)
        lines.append(f"too young to go yet: {held}, created less than {plan.min_age_days:g} day(s) ago "
                     "(registry.prune_min_age_days in params.yaml)")
    if result.dry_run:
        lines.append("dry run: nothing was changed")
    elif result.gc_ran:
        lines.append(f"freed: {_human(result.freed_bytes)} (mlflow gc permanently deleted the {len(plan.runs)} run(s) "
                     f"and {len(plan.logged_models)} logged model(s))")
    elif not plan.runs:
        lines.append("freed: nothing to free")
    lines += [f"note: {n}" for n in result.notes]
    return "\n".join(lines)


def _span(versions: list[str]) -> str:
    numbers = sorted(int(v) for v in versions)
    if len(numbers) <= 6:
        return "v" + ", v".join(str(n) for n in numbers)
    return f"v{numbers[0]}–v{numbers[-1]}"


# ---------------------------------------------------------------- the DVC cache


@dataclass
class DvcGcResult:
    command: list[str]
    dry_run: bool
    before_bytes: int
    after_bytes: int
    output: str  # what dvc printed (the objects it would remove, on a dry run)


def _cache_bytes(project_dir: Path) -> int:
    cache = project_dir / ".dvc" / "cache"
    return sum(_size(f) for f in cache.rglob("*") if f.is_file()) if cache.is_dir() else 0


def dvc_gc_command(project_dir: Path, dry_run: bool) -> list[str]:
    """`dvc gc --workspace`: keep the data the current dvc.lock names, every profile's, and
    remove the older versions only earlier retrains produced. Where dvc.lock is tracked by git
    (a team that commits it per release), every commit's data is kept too (`--all-commits`)."""
    tracked = subprocess.run(["git", "ls-files", "--error-unmatch", "dvc.lock"], cwd=project_dir,
                             capture_output=True, text=True).returncode == 0
    return ["dvc", "gc", "--workspace", *(["--all-commits"] if tracked else []), "--force", *(["--dry"] if dry_run else [])]


def collect_dvc_cache(params_path: Path | str, dry_run: bool = False) -> DvcGcResult:
    """Run `dvc gc` on the project of `params_path` while holding the retrain lock of every
    profile (a retrain's `dvc repro` writes new cache objects that the workspace names only once
    it finishes; the cache is the project's, every profile's). Raises RetrainBusy while any
    retrain or prune runs; StageFailed if dvc fails."""
    project_dir = Path(params_path).resolve().parent
    command = dvc_gc_command(project_dir, dry_run)
    with ExitStack() as locks:
        for each in all_profiles(params_path):
            locks.enter_context(one_retrain_at_a_time(each))
        before = _cache_bytes(project_dir)
        done = subprocess.run(command, cwd=project_dir, env=dvc_env(), capture_output=True, text=True)
        if done.returncode != 0:
            raise StageFailed(" ".join(command), done.returncode, done.stdout + done.stderr)
    return DvcGcResult(command, dry_run, before, _cache_bytes(project_dir), (done.stdout + done.stderr).strip())


def render_dvc_gc(result: DvcGcResult) -> str:
    shown = " ".join(result.command)
    if result.dry_run:
        # dvc gc --dry lists each object ("Removing <path>") and then says "Removed N objects from
        # repo cache." as if it had: only the counts are shown, as what would go
        would = [line.strip().removeprefix("Removed ") for line in result.output.splitlines() if line.startswith("Removed ")]
        return f"DVC cache ({_human(result.before_bytes)}), dry run of `{shown}`: " + (
            f"would remove {'; '.join(would)}" if would else "nothing to remove")
    return (f"DVC cache: {_human(result.before_bytes)} -> {_human(result.after_bytes)} "
            f"(freed {_human(result.before_bytes - result.after_bytes)}; `{shown}`)")
