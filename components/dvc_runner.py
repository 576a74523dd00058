"""Run pipeline stages through DVC, so unchanged inputs are never recomputed.

We drive DVC through its command line, the interface its authors support, and read dvc.lock
(the record of every stage's input and output hashes) for lineage.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from components.lifecycle import stop_group


class StageFailed(RuntimeError):
    def __init__(self, target: str, returncode: int, output: str):
        self.target, self.returncode, self.output = target, returncode, output
        tail = "\n".join(output.strip().splitlines()[-25:])
        super().__init__(f"dvc repro {target} failed (exit {returncode}):\n{tail}")


class StageTimedOut(StageFailed):
    """The stage ran past flow.stage_timeout_minutes and was stopped (not worth a retry)."""


@dataclass(frozen=True)
class ReproResult:
    target: str
    skipped: bool  # True when DVC found the stage and its inputs unchanged
    output: str


def dvc_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The stage commands say `python`: make that the interpreter running copyflow."""
    env = {**os.environ, **(extra or {})}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("DVC_NO_ANALYTICS", "1")
    return env


def repro(
    stage: str,
    profile: str,
    cwd: Path | str = ".",
    force: bool = False,
    env: dict[str, str] | None = None,
    timeout_s: float | None = None,
) -> ReproResult:
    """`dvc repro --single-item STAGE@PROFILE`; raises StageFailed with DVC's output on failure.

    `env` adds variables for the stage command only (DVC does not hash them, so they never
    invalidate a cached stage). After `timeout_s` DVC, its stage and the stage's trainer are
    stopped together: StageTimedOut.
    """
    target = f"{stage}@{profile}"
    # Through components.lifecycle, as the leader of a new process group: DVC and everything
    # under it (the shell DVC starts, the stage, its trainer) end together, on a timeout here or
    # when the flow process is killed.
    cmd = [sys.executable, "-m", "components.lifecycle", "dvc", "repro", "--single-item", target]
    if force:
        cmd.append("--force")
    proc = subprocess.Popen(cmd, cwd=cwd, env=dvc_env(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        output = stop_group(proc)
        raise StageTimedOut(target, -9, f"{output}\nstopped after {timeout_s:.0f} s (flow.stage_timeout_minutes)") from None
    except BaseException:  # Ctrl-C or a cancelled flow: the stage must not run on unwatched
        stop_group(proc)
        raise
    if proc.returncode != 0:
        raise StageFailed(target, proc.returncode, output)
    skipped = "didn't change, skipping" in output
    return ReproResult(target=target, skipped=skipped, output=output)


def stage_lock(stage: str, profile: str, cwd: Path | str = ".") -> dict:
    """The dvc.lock entry of STAGE@PROFILE: {"deps": {path: md5}, "outs": {path: md5}}."""
    lock_path = Path(cwd) / "dvc.lock"
    if not lock_path.exists():
        return {"deps": {}, "outs": {}}
    lock = yaml.safe_load(lock_path.read_text(encoding="utf-8")) or {}
    entry = (lock.get("stages") or {}).get(f"{stage}@{profile}") or {}

    def hashes(items):
        return {item["path"]: item.get("md5", "") for item in items or []}

    return {"deps": hashes(entry.get("deps")), "outs": hashes(entry.get("outs"))}


def lock_digest(cwd: Path | str = ".") -> str:
    """sha256 of dvc.lock: one id for the exact data and code state of the pipeline."""
    lock_path = Path(cwd) / "dvc.lock"
    if not lock_path.exists():
        return ""
    return hashlib.sha256(lock_path.read_bytes()).hexdigest()
