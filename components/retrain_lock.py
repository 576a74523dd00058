"""The per-profile retrain lock (state/<profile>/retrain.lock), outside the Prefect flow so that
library code (`components.registry.retention`) can take it too without importing Prefect."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from components.config import Config


class RetrainBusy(RuntimeError):
    """Another retrain, or a prune, of the same profile holds the project's retrain lock."""


def retrain_lock_path(cfg: Config) -> Path:
    return cfg.state_dir() / "retrain.lock"


@contextmanager
def one_retrain_at_a_time(cfg: Config) -> Iterator[Path]:
    """Two retrains of one profile would rebuild the same DVC outputs under each other (DVC's
    own stage locks last seconds, and a busy one fails the stage): the second is refused. A
    prune takes the same lock, so it never removes runs of a retrain in flight."""
    from filelock import FileLock, Timeout

    path = retrain_lock_path(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=0)
    except Timeout as exc:
        # the lock does not say which of the two holds it: name both, so neither message misleads
        raise RetrainBusy(f"a retrain or a prune of profile {cfg.profile!r} is running in this project (lock {path}); "
                          "wait for it to finish") from exc
    try:
        yield path
    finally:
        lock.release()
