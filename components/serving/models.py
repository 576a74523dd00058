"""Which model files serving uses: the champion release, never "latest".

Before the first release exists (a fresh checkout that has only trained), callers may opt in to
the newest local training output of a profile, and are told so; once any release exists, a
missing champion is an error, not a reason to serve an unpromoted model. Never one whose release gate
failed: that model is registered with gate.verdict=fail, and serving refuses it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from components.config import Config


class NoModel(LookupError):
    pass


@dataclass(frozen=True)
class ResolvedModel:
    family: str
    ref: str       # a local model dir or an MLflow URI, accepted by the family's loader
    origin: str    # "release 3 (champion)" or "local training output ..."
    version: str = ""  # which model this is, for logs: the registry URI, or the local output's training run
    release: str | None = None  # the release it belongs to (None: a local training output)

    def __post_init__(self) -> None:
        if not self.version:
            object.__setattr__(self, "version", self.ref)


def resolve_model(cfg: Config, family: str, alias: str = "champion", allow_local: bool = True) -> ResolvedModel:
    from components.registry import NoRelease, resolve_release
    from components.tracking import require_store

    try:
        require_store(cfg)  # a missing store means no release; do not create an empty one
        release = resolve_release(alias, cfg)
    except (NoRelease, FileNotFoundError) as exc:
        if not allow_local:
            raise NoModel(str(exc)) from exc
        released = _release_versions(cfg)
        if released:
            # Releases exist but none holds the alias (its version deleted, or its manifest
            # unreadable): the newest local output may be a candidate nobody promoted.
            raise NoModel(
                f"{exc}; {released} release version(s) exist, so serving does not fall back to the local "
                f"training output: `copyflow status` shows them, `copyflow promote --release N` makes one champion"
            ) from exc
        return _local(cfg, family, reason=str(exc))
    member = release["members"].get(family)
    if member is None:
        raise NoModel(f"release {release['release']} ({alias}) has no {family} model")
    return ResolvedModel(family, member.get("model_uri") or member["source_uri"], f"release {release['release']} ({alias})",
                         release=str(release["release"]))


def _release_versions(cfg: Config) -> int:
    """How many release versions the registry holds (0 without a store)."""
    from components.registry.names import RELEASE_MODEL
    from components.registry.store import registry_client
    from components.tracking import require_store

    try:
        require_store(cfg)
    except FileNotFoundError:
        return 0
    return len(registry_client(cfg).search_model_versions(f"name='{RELEASE_MODEL}'"))


def _local(cfg: Config, family: str, reason: str) -> ResolvedModel:
    from components.pipeline import stages_for

    manifest_path = cfg.stage_dir("models") / family / "manifest.json"
    if not manifest_path.exists() and f"train_{family}" not in stages_for(cfg):
        # `copyflow retrain` would not help: this profile never trains one (OBD logs have no copy text)
        raise NoModel(f"profile {cfg.profile!r} has no {family} model: its data ({cfg.data.source}) has no copy text to train one on. "
                      f"Use a profile with copies, or give --model")
    if not manifest_path.exists():
        raise NoModel(f"{reason}; and no local {family} model at {manifest_path} (run `copyflow retrain`)")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    failed = _failed_gate(cfg, family, manifest.get("run_id"))
    if failed:
        raise NoModel(f"{reason}; and the local {family} model at {manifest_path.parent} failed its release gate ({failed}), so it is not served")
    model_dir = manifest.get("model_dir")
    ref = model_dir if model_dir and Path(model_dir).exists() else manifest["model_uri"]
    # The local dir keeps its path across retrains: the training run tells one model from the next.
    version = manifest.get("model_uri") or f"run:{manifest.get('run_id')}"
    # Named under paths.artifacts, not by its absolute path: /health shows the origin without a token.
    where = manifest_path.parent.relative_to(cfg.paths.artifacts).as_posix()
    return ResolvedModel(family, str(ref), f"local training output {where} under paths.artifacts (no release yet)", version)


def _failed_gate(cfg: Config, family: str, run_id: str | None) -> str | None:
    """'copyflow-x vN: gate.verdict=fail' when the registry holds this training run's model
    with a failed gate; None when it passed, was never gated, or there is no store."""
    from components.registry.names import registered_model
    from components.registry.store import registry_client, versions_of_run
    from components.tracking import require_store

    if not run_id:
        return None
    try:
        require_store(cfg)
    except FileNotFoundError:
        return None
    name = registered_model(family)
    failed = [v for v in versions_of_run(registry_client(cfg), name, run_id) if (v.tags or {}).get("gate.verdict") == "fail"]
    return f"{name} v{failed[0].version}: gate.verdict=fail" if failed else None
