"""Launch a training entry point as its own process and read back its manifest.

Why a subprocess: Lightning's DDP launcher re-executes the current command line for every
extra rank. Run in-process from a Prefect flow or pytest, that would re-run the flow or the
test session. A dedicated `python -m components.training.<entry>` command is safe to re-run:
each rank trains, only rank 0 logs to MLflow and writes `manifest.json`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


class TrainingFailed(RuntimeError):
    pass


SIGTERM_EXIT = 143  # 128 + SIGTERM, what a shell, a scheduler or Kubernetes expects


def exit_code_on_sigterm(run, *args, **kwargs):
    """Call `run(*args, **kwargs)` in an entry point; a SIGTERM during fit ends the process with 143.

    Lightning turns SIGTERM into `SIGTERMException`, a SystemExit with no code, which would
    end the process with 0: a scheduler or CI would count a killed training as a success."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    try:
        return run(*args, **kwargs)
    except SIGTERMException as exc:
        print(f"training stopped by SIGTERM (exit {SIGTERM_EXIT})", file=sys.stderr)
        raise SystemExit(SIGTERM_EXIT) from exc


def launch(
    entry_module: str,
    *,
    profile: str,
    out_dir: Path,
    params_path: Path = Path("params.yaml"),
    parent_run_id: str | None = None,
    extra_args: list[str] | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout_s: float | None = None,
) -> dict:
    """Run `python -m entry_module` and return the manifest rank 0 wrote to out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = out_dir / "manifest.json"
    manifest_path.unlink(missing_ok=True)
    cmd = [
        sys.executable,
        "-m",
        entry_module,
        "--profile",
        profile,
        "--params",
        str(params_path),
        "--out",
        str(out_dir),
    ]
    if parent_run_id:
        cmd += ["--parent-run-id", parent_run_id]
    cmd += list(extra_args or [])
    process_env = {**os.environ, **(env or {})}
    result = subprocess.run(cmd, env=process_env, cwd=cwd, timeout=timeout_s)
    if result.returncode != 0:
        raise TrainingFailed(f"{' '.join(cmd)} exited with {result.returncode}")
    if not manifest_path.exists():
        raise TrainingFailed(f"{entry_module} finished but wrote no manifest at {manifest_path}")
    return json.loads(manifest_path.read_text(encoding="utf-8"))


def write_manifest(out_dir: Path, manifest: dict) -> Path:
    """Called by rank 0 only, after logging to MLflow."""
    path = Path(out_dir) / "manifest.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, ensure_ascii=False, default=str), encoding="utf-8")
    tmp.replace(path)
    return path
