"""Thin helpers over the MLflow registry client, and the lock that serializes alias moves.

Why a lock: MLflow moves one alias per call and has no multi-alias transaction, while a
promotion moves `champion`/`previous` on the release *and* on every member model. Two promotions
interleaving those calls could leave the release pointing at one set of versions and the members
at another. All alias writes therefore happen under one exclusive lock, and are read back after
writing (verify-after-write). With the embedded sqlite store the lock file sits next to the
database, so every process on the machine (CLI, Prefect worker, tests) shares it. For a remote
MLflow server used from several hosts see infra/README.md (the Prefect `promote` deployment
with concurrency_limit 1, or a shared COPYFLOW_PROMOTION_LOCK path).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from components import tracking
from components.config import Config

LOCK_ENV = "COPYFLOW_PROMOTION_LOCK"


class PromotionBusy(RuntimeError):
    """Another promotion held the registry lock for longer than gates.lock_timeout_s."""


def registry_client(cfg: Config) -> MlflowClient:
    """A client on the configured tracking store (the registry lives in the same store)."""
    tracking.configure(cfg)
    return MlflowClient()


def _not_found(exc: MlflowException) -> bool:
    return exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "INVALID_PARAMETER_VALUE")


def ensure_registered_model(client: MlflowClient, name: str, description: str = "") -> None:
    try:
        client.get_registered_model(name)
    except MlflowException as exc:
        if not _not_found(exc):
            raise
        try:
            client.create_registered_model(name, description=description or None)
        except MlflowException as race:  # created concurrently by another process
            if race.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
                raise


def model_aliases(client: MlflowClient, name: str) -> dict[str, str]:
    """alias -> version of a registered model ({} when the model does not exist yet)."""
    try:
        return {alias: str(version) for alias, version in (client.get_registered_model(name).aliases or {}).items()}
    except MlflowException as exc:
        if _not_found(exc):
            return {}
        raise


def versions_of_run(client: MlflowClient, name: str, run_id: str) -> list[ModelVersion]:
    """Versions of registered model `name` made from one training run (tag training_run_id)."""
    return client.search_model_versions(f"name = '{name}' and tag.training_run_id = '{run_id}'")


def set_alias(client: MlflowClient, name: str, alias: str, version: str | None) -> None:
    """Point `alias` at `version`, or remove it when version is None (idempotent)."""
    current = model_aliases(client, name).get(alias)
    if version is None:
        if current is not None:
            client.delete_registered_model_alias(name, alias)
    elif str(current) != str(version):
        client.set_registered_model_alias(name, alias, str(version))


def lock_path(cfg: Config) -> Path:
    """Next to the sqlite database (shared by all local processes). With a server URI: next to
    the embedded database too (paths.mlflow_dir), which is what `make up`'s server serves, so a
    CLI on the sqlite route and a worker on the http route of one store exclude each other."""
    if os.environ.get(LOCK_ENV):
        return Path(os.environ[LOCK_ENV])
    uri = tracking.tracking_uri(cfg)
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///")).with_suffix(".promotion.lock")
    return Path(cfg.paths.mlflow_dir) / "mlflow.promotion.lock"


@contextmanager
def registry_lock(cfg: Config) -> Iterator[Path]:
    """Exclusive, cross-thread and cross-process lock around every alias write."""
    from filelock import FileLock, Timeout

    path = lock_path(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A fresh FileLock per call: each holds its own descriptor, so threads exclude each other too.
    lock = FileLock(str(path), timeout=cfg.gates.lock_timeout_s)
    try:
        lock.acquire()
    except Timeout as exc:
        raise PromotionBusy(
            f"another promotion held {path} for more than {cfg.gates.lock_timeout_s:g}s; try again later"
        ) from exc
    try:
        yield path
    finally:
        lock.release()


def bundle_files(client: MlflowClient, uri: str | None) -> dict[str, int] | None:
    """{artifact path: size in bytes} of every file under a `runs:/RUN/PATH` bundle (what a server
    downloads), or None for another kind of URI. Recorded in a release's manifest, so promote and
    rollback can tell a bundle that was cut short or replaced since it was gated."""
    if not uri or not uri.startswith("runs:/"):
        return None
    run_id, _, path = uri.removeprefix("runs:/").partition("/")
    sizes: dict[str, int] = {}
    folders = [path]
    while folders:
        for info in client.list_artifacts(run_id, folders.pop()):
            if info.is_dir:
                folders.append(info.path)
            else:
                sizes[info.path] = int(info.file_size or 0)
    return sizes
