"""`copyflow retrain` refuses what it cannot run before Prefect starts: one paragraph, no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import params_file

ROOT = Path(__file__).resolve().parents[2]


def test_retrain_with_a_params_file_the_pipeline_does_not_read_is_one_paragraph(make_cfg, tmp_path):
    # The flow's refusal came after Prefect's ERROR log of the flow run with its traceback (23 lines).
    params = params_file(make_cfg(), tmp_path)  # valid, but not the params.yaml next to dvc.yaml

    result = subprocess.run([sys.executable, "-m", "flows.cli", "retrain", "--params", str(params)],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)

    assert result.returncode == 2, result.stdout + result.stderr
    assert f"error: retrain runs the DVC pipeline, whose stages read the params.yaml next to dvc.yaml; {params.resolve()} is not that file" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
