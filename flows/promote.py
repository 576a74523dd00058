"""Prefect flows `promote` and `rollback`: one click in the Prefect UI moves the champion; and
`prune`, the nightly retention of the store (after the nightly retrain).

Deployed from prefect.yaml (`prefect deploy --all`, run by `copyflow worker` on the local process
pool). Their parameters (release version, note) render as a form on the deployment's "Run" page.
Thin wiring: all logic (gate evidence re-check, lock, alias moves, who/when/why tags) lives in
components/registry, which the CLI calls too.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow
from prefect.runtime import flow_run


def _actor() -> str:
    """Who asked: Prefect's `created_by` when the server knows it (Cloud, automations), else the run."""
    from prefect.client.orchestration import get_client

    name = f"prefect flow run {flow_run.get_name() or '?'}"
    run_id = flow_run.get_id()
    if run_id is None:
        return name
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(run_id)
    if run.created_by is not None and run.created_by.display_value:
        return f"{run.created_by.display_value} ({name})"
    return name


def _print_notes(result: dict) -> None:
    """What the CLI shows as warnings (a release set aside as unreadable), in the flow run's log."""
    for line in result.get("notes", []):
        print(f"warning: {line}")


def _config(profile: str, params_path: str):
    from components.config import load_config

    return load_config(Path(params_path), profile)


@flow(name="promote", log_prints=True)
def promote(
    release: int | None = None,
    note: str | None = None,
    dry_run: bool = False,
    profile: str = "quick",
    params_path: str = "params.yaml",
) -> dict:
    """Make a release champion (default: the current challenger) after re-checking its gate evidence.

    Args:
        release: copyflow-release version to promote; empty = the challenger.
        note: why (recorded on the release as `promotion.note`).
        dry_run: only show what would move.
        profile: params.yaml profile whose tracking store holds the registry.
        params_path: params file, relative to the project directory.
    """
    from components.registry import promotion, status

    cfg = _config(profile, params_path)
    result = promotion.promote(cfg, release=release, dry_run=dry_run, note=note, actor=_actor())
    _print_notes(result)
    if result.get("recheck_report"):
        print(result["recheck_report"])
    if result.get("message"):  # already champion: says which aliases were repaired, or are still wrong
        print(result["message"])
    else:
        print(f"{'would promote' if dry_run else 'promoted'} release {result['release']} (champion before: {result['replaces']})")
    print(status.render_status(status.status(cfg)))
    return result


@flow(name="rollback", log_prints=True)
def rollback(note: str | None = None, profile: str = "quick", params_path: str = "params.yaml") -> dict:
    """Put the previous champion release back in one step (champion <- previous)."""
    from components.registry import promotion, status

    cfg = _config(profile, params_path)
    result = promotion.rollback(cfg, note=note, actor=_actor())
    _print_notes(result)
    print(f"rolled back release {result['rolled_back']}; champion is release {result['release']} again")
    print(status.render_status(status.status(cfg)))
    return result


@flow(name="prune", log_prints=True)
def prune(
    keep_releases: int | None = None,
    dry_run: bool = False,
    profile: str = "quick",
    params_path: str = "params.yaml",
) -> dict:
    """Remove old releases, the model versions and runs only they kept, and their files
    (`copyflow prune`; docs/registry.md, "Retention"). Refused while a retrain of a profile of the
    store runs: the next scheduled prune catches up.

    Args:
        keep_releases: newest releases (and rollback steps) kept; empty = registry.keep_releases.
        dry_run: only show what would go.
        profile: params.yaml profile whose tracking store is pruned.
        params_path: params file, relative to the project directory.
    """
    from components.registry.retention import prune as do_prune
    from components.registry.retention import render_prune, store_profiles

    cfg = _config(profile, params_path)
    result = do_prune(cfg, keep_releases=keep_releases, dry_run=dry_run, sharing=store_profiles(Path(params_path), cfg))
    print(render_prune(result))
    plan = result.plan
    return {"releases": plan.releases, "model_versions": [f"{name}/{version}" for name, version in plan.model_versions],
            "runs": plan.runs, "logged_models": plan.logged_models, "bytes": plan.bytes, "freed_bytes": result.freed_bytes,
            "dry_run": dry_run, "notes": result.notes}
