"""A throwaway copy of the project (git + DVC + tiny params) for flow tests."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.models.generator_fixtures import TINY_GENERATOR

ROOT = Path(__file__).resolve().parents[2]
TINY_QUICK = {
    "data": {"n_products": 300},
    "simulator": {"n_users": 120, "days": 14},
}
# Overrides for a project that trains both models in seconds (pass to make_project).
TINY_TRAINING = {
    "generator": {**TINY_GENERATOR, "max_steps": 30, "eval_samples": 8},
    "preference": {"max_epochs": 2, "batch_size": 256, "bootstrap": 50},
    # A model trained for seconds cannot reach production floors; these tests are about the
    # wiring (the gates' own tests check that floors reject bad models). Its calibration in the
    # large varies from run to run (0.33 once against the production 0.25, under load).
    "gates": {"preference_auc_min": 0.5, "generator_bleu4_min": 0.0, "max_ece": 0.5,
              "max_calibration_ratio_error": 5.0, "max_hallucination_rate": 1.0},
}


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def make_project(tmp_path: Path, quick_overrides: dict | None = None) -> Path:
    project = tmp_path / "project"
    project.mkdir()
    for name in ("dvc.yaml", ".dvcignore", "pyproject.toml"):
        shutil.copy(ROOT / name, project / name)
    for name in ("components", "expectations", ".dvc", "data/advertisegen", "data/shop_example", "data/feedback/shop"):
        shutil.copytree(ROOT / name, project / name, ignore=shutil.ignore_patterns("__pycache__", "tmp", "cache"))
    params = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    quick = params["profiles"]["quick"]
    for section, values in {**TINY_QUICK, **(quick_overrides or {})}.items():
        quick[section] = {**(quick.get(section) or {}), **values}
    (project / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True, sort_keys=False), encoding="utf-8")
    (project / ".gitignore").write_text("/artifacts/\n/state/\n/mlflow/\n/.copyflow/\n", encoding="utf-8")
    _git(project, "init", "-q")
    _git(project, "add", "-A")
    _git(project, "-c", "user.email=t@example.com", "-c", "user.name=t", "commit", "-qm", "init")
    return project


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def prefect_artifact(key: str) -> str:
    """The latest markdown the flow published under `key` (what the Prefect UI shows)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
    assert found, f"no Prefect artifact {key!r}"
    return max(found, key=lambda a: a.created).data
