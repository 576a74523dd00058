"""`copyflow retrain` refuses what it cannot run before Prefect starts: one paragraph, no traceback.
An expected outcome inside the flow (a batch the data gate rejects, a release the release gate
rejects) reads as one too."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from mlflow import MlflowClient

from components.config import load_config
from components.tracking import tracking_uri
from tests.conftest import params_file
from tests.flows.conftest import TINY_TRAINING, make_project

ROOT = Path(__file__).resolve().parents[2]


def cli_retrain(project: Path, tmp_path: Path, timeout: int) -> subprocess.CompletedProcess:
    """`copyflow retrain` on `project`, as a user runs it: its own process, an ephemeral Prefect."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"} | {"PREFECT_HOME": str(tmp_path / "prefect")}
    return subprocess.run([sys.executable, "-m", "flows.cli", "retrain", "--params", str(project / "params.yaml")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


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
    with FileLock(str(cfg.state_dir() / "retrain.lock")):  # the first retrain, still running
        result = cli_retrain(project, tmp_path, timeout=300)

    assert result.returncode == 1, result.stdout + result.stderr
    assert "error: a retrain or a prune of profile 'quick' is running in this project" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (project / "artifacts").exists()


def test_retrain_of_a_batch_the_data_gate_rejects_prints_the_verdict_not_tracebacks(tmp_path):
    # The gate doing its job printed 120 lines with 3 Prefect tracebacks (the task engine's and the
    # flow engine's, chained) around the one-line verdict: it read like a crash.
    project = make_project(tmp_path, {"validation": {"mostly_unique_events": 1.0}})  # no duplicate event tolerated
    result = cli_retrain(project, tmp_path, timeout=600)
    output = result.stdout + result.stderr

    assert result.returncode == 1, output
    assert "Traceback" not in output, output
    # the gate's summary: which check failed, and where the report is
    assert "data gate failed; no later stage ran and no model was touched." in output
    assert "### 1. `events.event_id` — `expect_column_values_to_be_unique`" in output
    report = project / "artifacts/quick/validation/report.md"
    assert "retrain failed: Data validation failed for profile 'quick': 1 of " in result.stderr
    assert f"Report: {report} (also the Prefect artifact data-gate-quick" in result.stderr
    assert report.exists() and not (project / "artifacts/quick/clean").exists()


def test_retrain_whose_release_the_gate_rejects_prints_the_verdict_not_tracebacks(tmp_path):
    # The release gate doing its job printed 132 lines with 2 Prefect tracebacks (the release
    # task's and the flow's) around the verdict. Both models train in seconds; no AUC reaches 1.
    gates = {**TINY_TRAINING["gates"], "preference_auc_min": 1.0}
    project = make_project(tmp_path, {**TINY_TRAINING, "gates": gates})
    result = cli_retrain(project, tmp_path, timeout=900)
    output = result.stdout + result.stderr

    assert result.returncode == 1, output
    assert "Traceback" not in output, output
    # the gate's report once (by how much), the failed rule, where the report is
    assert "release gate failed; no alias was moved (the models are registered with their verdict):" in output
    assert "| auc | " in output and "| floor: >= 1 | **FAIL** |" in output
    verdict = "release gate failed; no alias was moved: preference auc "
    assert f"retrain failed: {verdict}" in result.stderr and " fails floor >= 1\n" in result.stderr
    assert "Report: the Prefect artifact release-gate-quick and gate/report.md of the MLflow run " in result.stderr
    # the release task run and the flow run end Failed with the verdict as their message
    assert f"Task run 'release@quick' - Finished in state Failed('{verdict}" in output
    assert re.search(rf"Flow run '[^']+' - Finished in state Failed\('{verdict}.* fails floor >= 1\\nReport: ", output), output

    cfg = load_config(project / "params.yaml", "quick")
    uri = tracking_uri(cfg)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    [parent] = client.search_runs([experiment.experiment_id], "tags.kind = 'retrain'")
    assert parent.info.status == "FAILED" and parent.info.run_id in result.stderr
    assert parent.data.tags["failed_stage"] == "release" and parent.data.tags["release.gate"] == "fail"
    assert parent.data.tags["error"].startswith(verdict) and parent.data.tags["error"].endswith(" fails floor >= 1")
    for name in ("copyflow-preference", "copyflow-generator"):  # registered with their verdict, no alias moved
        [version] = client.search_model_versions(f"name = '{name}'")
        assert version.tags["release.gate"] == "fail" and not version.aliases
    assert client.search_model_versions("name = 'copyflow-release'") == []
