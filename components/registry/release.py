"""Releases: the set of model versions evaluated together, as versions of `copyflow-release`.

A release version's artifact is `release/manifest.json`:
    {"schema": 1, "profile", "created_at", "baseline_release" (the champion release its gates
     compared against, or null), "gate_verdict", "gate_report" (markdown),
     "members": {family: {"registered_model", "version", "model_uri" (models:/name/version),
                          "source_uri", "onnx_uri", "run_id", "metrics", "gate" (GateResult dict),
                          "snapshot" (fingerprint), "evidence_uri" (per-example scores),
                          "inherited" (carried over unchanged from the champion)}},
     "lineage": {...}}
Serving and `generate` resolve a release alias (never "latest") with `resolve_release`.
"""

from __future__ import annotations

import json
import tempfile
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion

from components.config import Config
from components.registry.names import CHAMPION, RELEASE_MODEL, RELEASE_MANIFEST_PATH
from components.registry.store import ensure_registered_model, model_aliases, registry_client

MANIFEST_SCHEMA = 1


class NoRelease(LookupError):
    """No release carries the requested alias (or the version does not exist)."""


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@lru_cache(maxsize=256)
def _manifest_cached(tracking_uri: str, source: str) -> str:
    import mlflow

    local = mlflow.artifacts.download_artifacts(artifact_uri=f"{source}/manifest.json", tracking_uri=tracking_uri)
    return Path(local).read_text(encoding="utf-8")


def load_manifest(client: MlflowClient, version: str | int) -> dict:
    """The manifest of release `version` (immutable once written, so cached per process)."""
    from mlflow.exceptions import MlflowException

    try:
        model_version = client.get_model_version(RELEASE_MODEL, str(version))
    except MlflowException as exc:
        raise NoRelease(f"{RELEASE_MODEL} version {version} does not exist") from exc
    try:
        manifest = json.loads(_manifest_cached(client.tracking_uri, model_version.source))
    except (MlflowException, OSError, ValueError) as exc:
        raise NoRelease(
            f"the manifest of {RELEASE_MODEL} version {version} cannot be read from {model_version.source}: {exc}"
        ) from exc
    manifest["release"] = str(model_version.version)
    return manifest


def release_with_alias(client: MlflowClient, alias: str) -> tuple[str, dict] | None:
    """(version, manifest) of the release holding `alias`, or None."""
    version = model_aliases(client, RELEASE_MODEL).get(alias)
    if version is None:
        return None
    return str(version), load_manifest(client, version)


def resolve_release(alias: str = CHAMPION, cfg: Config | None = None) -> dict:
    """What serving loads: {"release", "alias", "profile", "created_at", "members": {family: {
    "model_uri", "version", "registered_model", "onnx_uri", "source_uri", "run_id", "metrics"}}}.

    Pass `cfg` to point MLflow at the configured store first.
    """
    client = registry_client(cfg) if cfg is not None else MlflowClient()
    found = release_with_alias(client, alias)
    if found is None:
        raise NoRelease(
            f"no {RELEASE_MODEL} version has the alias {alias!r} yet "
            "(run `copyflow retrain`, then `copyflow promote`)"
        )
    version, manifest = found
    keep = ("model_uri", "version", "registered_model", "onnx_uri", "source_uri", "run_id", "metrics")
    return {
        "release": version,
        "alias": alias,
        "profile": manifest.get("profile"),
        "created_at": manifest.get("created_at"),
        "members": {family: {k: m.get(k) for k in keep} for family, m in manifest["members"].items()},
    }


def create_release(
    client: MlflowClient,
    *,
    experiment_id: str,
    manifest: dict,
    tags: dict[str, str],
    parent_run_id: str | None = None,
) -> ModelVersion:
    """Log the manifest in a (nested) MLflow run and register it as a new release version."""
    ensure_registered_model(
        client,
        RELEASE_MODEL,
        "A copyflow release: the member model versions evaluated together, with their gate reports. "
        "Aliases champion / challenger / previous move together with the members'.",
    )
    manifest = {"schema": MANIFEST_SCHEMA, **manifest}
    # Serialized before the run exists: a manifest no strict reader can read (NaN) leaves nothing.
    text = json.dumps(manifest, indent=2, ensure_ascii=False, allow_nan=False)
    run_tags = {"mlflow.runName": "release", "kind": "release"}
    if "profile" in tags:  # as every other run of a retrain: a tags.profile search finds it
        run_tags["profile"] = tags["profile"]
    if parent_run_id:
        run_tags["mlflow.parentRunId"] = parent_run_id
    run = client.create_run(experiment_id, tags=run_tags)
    run_id = run.info.run_id
    try:
        with tempfile.TemporaryDirectory() as tmp:
            directory = Path(tmp) / "release"
            directory.mkdir()
            (directory / "manifest.json").write_text(text, encoding="utf-8")
            (directory / "gate_report.md").write_text(manifest.get("gate_report", ""), encoding="utf-8")
            client.log_artifacts(run_id, str(directory), "release")
    except BaseException:  # an artifact store that fails mid-way: the run says so, not RUNNING forever
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id)
    source = f"{run.info.artifact_uri}/{Path(RELEASE_MANIFEST_PATH).parent}"
    members = {f"member.{family}": str(m["version"]) for family, m in manifest["members"].items()}
    return client.create_model_version(
        RELEASE_MODEL,
        source=source,
        run_id=run_id,
        tags={**tags, **members},
        description="members: " + ", ".join(f"{family} v{m['version']}" for family, m in manifest["members"].items()),
    )
