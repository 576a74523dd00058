"""One competing promotion in its own process: `python -m tests.registry.promote_child PARAMS RELEASE READY GO`.

Imports and connects first, signals READY, waits for the shared GO file, then promotes, so the
concurrency test starts every promotion at the same moment. Kept light (no model code imported).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path


def promote_when_told(params: str, release: str, ready: Path, go: Path, actor: str) -> dict:
    from components.config import load_config
    from components.registry.promotion import promote
    from components.registry.store import registry_client

    cfg = load_config(params, "quick")
    registry_client(cfg).search_registered_models(max_results=1)  # imports + connection done up front
    ready.touch()
    deadline = time.monotonic() + 300
    while not go.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no start signal at {go}")
        time.sleep(0.005)
    return promote(cfg, release=release, actor=actor)


if __name__ == "__main__":
    params, release, ready, go = sys.argv[1:5]
    result = promote_when_told(params, release, Path(ready), Path(go), f"process-{os.getpid()}")
    print("RESULT " + json.dumps(result, default=str))
