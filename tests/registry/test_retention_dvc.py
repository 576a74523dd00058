"""`copyflow prune --dvc-cache`: `dvc gc --workspace` on the project, under every profile's retrain lock."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from filelock import FileLock
from mlflow import MlflowClient
from typer.testing import CliRunner

from components.config import load_config
from components.registry.retention import _cache_bytes, collect_dvc_cache, dvc_gc_command, render_dvc_gc
from components.retrain_lock import RetrainBusy, retrain_lock_path
from flows.cli import app
from tests.registry.world import write_params

ENV = {**os.environ, "DVC_NO_ANALYTICS": "1"}
STAGE = "stages:\n  copy:\n    cmd: python -c \"open('out.txt', 'w').write(open('in.txt').read() * 1000)\"\n" \
        "    deps: [in.txt]\n    outs: [out.txt]\n"


def dvc(project: Path, *args: str) -> None:
    subprocess.run([sys.executable, "-m", "dvc", *args], cwd=project, check=True, env=ENV, capture_output=True)


def cached_objects(project: Path) -> set[str]:
    """The data objects of the cache (not its run cache, `.dvc/cache/runs`)."""
    return {p.name for p in (project / ".dvc" / "cache" / "files").rglob("*") if p.is_file()}


@pytest.fixture()
def project(tmp_path) -> Path:
    """A DVC project (no git) with one stage reproduced twice: its cache holds the output's old
    version, which the workspace no longer names, and its current one."""
    write_params(tmp_path)
    MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").search_experiments()  # an empty store: prune's MLflow part has nothing to do
    dvc(tmp_path, "init", "--no-scm", "-q")
    (tmp_path / "dvc.yaml").write_text(STAGE)
    (tmp_path / "in.txt").write_text("first version of the data\n")
    dvc(tmp_path, "repro", "-q")
    (tmp_path / "in.txt").write_text("second version\n")
    dvc(tmp_path, "repro", "-q")
    return tmp_path


def test_dvc_gc_keeps_the_workspace_data_and_removes_the_older_versions(project):
    before = cached_objects(project)
    assert len(before) == 2
    planned = collect_dvc_cache(project / "params.yaml", dry_run=True)
    assert cached_objects(project) == before and planned.before_bytes == planned.after_bytes > 0
    assert planned.command == ["dvc", "gc", "--workspace", "--force", "--dry"]  # no git: no commits to keep
    assert "would remove 1 objects from repo cache." in render_dvc_gc(planned)

    done = collect_dvc_cache(project / "params.yaml")

    assert len(cached_objects(project)) == 1 and done.after_bytes < done.before_bytes
    assert render_dvc_gc(collect_dvc_cache(project / "params.yaml", dry_run=True)).endswith("nothing to remove")
    status = subprocess.run([sys.executable, "-m", "dvc", "status", "-q"], cwd=project, env=ENV)
    assert status.returncode == 0  # the workspace's data is all still cached: nothing to reproduce
    assert (project / "out.txt").read_text().startswith("second version")


def test_a_running_retrain_of_any_profile_stops_it_before_anything_is_removed(project):
    before = cached_objects(project)
    shop = load_config(project / "params.yaml", "shop")  # another store than quick's: the cache is still shared
    retrain_lock_path(shop).parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(retrain_lock_path(shop))):
        with pytest.raises(RetrainBusy):
            collect_dvc_cache(project / "params.yaml")
        result = CliRunner().invoke(app, ["prune", "--dvc-cache", "--params", str(project / "params.yaml")])
    assert cached_objects(project) == before
    # (in this test world every profile logs to one store, so the MLflow part is refused first)
    assert result.exit_code == 1 and "profile 'shop' is running" in result.output and "nothing was removed" in result.output


def test_where_git_tracks_dvc_lock_every_commits_data_is_kept(project):
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    assert "--all-commits" not in dvc_gc_command(project, dry_run=False)
    subprocess.run(["git", "add", "dvc.lock"], cwd=project, check=True)
    assert dvc_gc_command(project, dry_run=False) == ["dvc", "gc", "--workspace", "--all-commits", "--force"]


def test_prune_with_dvc_cache_reports_what_the_cache_freed(project):
    result = CliRunner().invoke(app, ["prune", "--dvc-cache", "--params", str(project / "params.yaml")])
    assert result.exit_code == 0, result.output
    assert "DVC cache: " in result.output and "freed " in result.output and "dvc gc --workspace --force" in result.output
    assert _cache_bytes(project) > 0 and len(cached_objects(project)) == 1
