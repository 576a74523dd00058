"""One competing promotion in its own process, for the concurrency test.

Started through a multiprocessing "forkserver" that has already imported the registry code:
each competitor is a real separate process (own interpreter state, own database connections,
own file-lock descriptor) without paying a full Python + MLflow start-up each on CI's two cores.
It connects first, signals READY, waits for the shared GO file, then promotes, so every
promotion starts at the same moment.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

PRELOAD = ["components.registry.promotion", "components.config", "tests.registry.promote_child"]


def promote_when_told(params: str, release: str, ready: Path, go: Path, out: Path) -> None:
    from components.config import load_config
    from components.registry.promotion import promote
    from components.registry.store import registry_client

    cfg = load_config(params, "quick")
    registry_client(cfg).search_registered_models(max_results=1)  # connection opened up front
    ready.touch()
    deadline = time.monotonic() + 300
    while not go.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no start signal at {go}")
        time.sleep(0.005)
    try:
        result = promote(cfg, release=release, actor=f"process-{os.getpid()}")
    except Exception as exc:  # reported to the test, which fails on it
        result = {"error": f"{type(exc).__name__}: {exc}"}
    out.write_text(json.dumps(result, default=str), encoding="utf-8")
