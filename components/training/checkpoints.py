"""Where training checkpoints live, and how many are kept.

A training run writes its checkpoints to state/<profile>/checkpoints/<stage>/<name>-<fingerprint>/,
the fingerprint covering everything that shapes the weights. They are kept out of the stage's
output folder (artifacts/...) because DVC clears a stage's outputs before it re-runs one: there,
a training stopped part-way (a preempted machine, Ctrl-C, a stage the retrain flow retries)
started over. Here, the re-run resumes from the run's `last.ckpt`, and a re-run of a training that
already finished (`copyflow retrain --force`, or a change of decoding settings only) reuses it.

Only the KEEP most recently used runs of each name are kept: a generator run's checkpoints take
tens of megabytes, and every change of data or knobs starts a new run.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from components.config import Config

KEEP = 3
DONE_FILE = "done.json"
LAST = "last.ckpt"


def checkpoint_root(cfg: Config, stage: str) -> Path:
    return cfg.state_dir() / "checkpoints" / stage


def run_dir(root: Path, name: str, fingerprint: str) -> Path:
    """The run's folder, created and marked as just used (its mtime orders pruning)."""
    path = Path(root) / f"{name}-{fingerprint}"
    path.mkdir(parents=True, exist_ok=True)
    os.utime(path)
    return path


def prune(current: Path, keep: int = KEEP) -> list[Path]:
    """Remove all but the `keep` most recently used runs named like `current` (same name, other
    fingerprints); `current` always stays. Returns what was removed."""
    name = current.name.rsplit("-", 1)[0]
    siblings = [p for p in current.parent.glob(f"{name}-*") if p.is_dir() and p != current and p.name.rsplit("-", 1)[0] == name]
    siblings.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    removed = siblings[max(0, keep - 1):]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed


def read_done(directory: Path) -> dict | None:
    """The record a finished run left (None while it has not finished)."""
    path = Path(directory) / DONE_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def write_done(directory: Path, record: dict) -> None:
    path = Path(directory) / DONE_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, ensure_ascii=False), encoding="utf-8")
    tmp.replace(path)  # a run killed while writing it is not taken for finished
