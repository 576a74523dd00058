"""`copyflow retrain` refuses what it cannot run before Prefect starts: one paragraph, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from components.config import load_config
from tests.conftest import params_file
from tests.flows.conftest import make_project

ROOT = Path(__file__).resolve().parents[2]


def test_retrain_with_a_params_file_the_pipeline_does_not_read_is_one_paragraph(make_cfg, tmp_path):
    # The flow's refusal came after Prefect's ERROR log of the flow run with its traceback (23 lines).
    params = params_file(make_cfg(), tmp_path)  # valid, but not the params.yaml next to dvc.yaml

    result = subprocess.run([sys.executable, "-m", "flows.cli", "retrain", "--params", str(params)],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)

    assert result.returncode == 2, result.stdout + result.stderr
    assert f"error: retrain runs the DVC pipeline, whose stages read the params.yaml next to dvc.yaml; {params.resolve()} is not that file" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_retrain_while_another_retrain_of_the_profile_runs_is_one_line(tmp_path):
    # Refused inside the flow, it came after Prefect's ERROR log with a 30-line traceback.
    from filelock import FileLock

    project = make_project(tmp_path)
    cfg = load_config(project / "params.yaml", "quick")
    cfg.state_dir().mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"} | {"PREFECT_HOME": str(tmp_path / "prefect")}
    with FileLock(str(cfg.state_dir() / "retrain.lock")):  # the first retrain, still running
        result = subprocess.run([sys.executable, "-m", "flows.cli", "retrain", "--params", str(project / "params.yaml")],
                                cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)

    assert result.returncode == 1, result.stdout + result.stderr
    assert "error: another retrain of profile 'quick' is running in this project" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (project / "artifacts").exists()
