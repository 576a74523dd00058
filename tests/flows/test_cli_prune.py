"""`copyflow prune` from the command line: what it prints, its exit codes, and its refusals."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from components.registry.store import registry_client
from flows.cli import app
from tests.registry.world import build_world, clone_world, registry_cfg, write_params

PRUNE_NOW = {"registry": {"prune_min_age_days": 0}}


@pytest.fixture(scope="module")
def pref_world(tmp_path_factory):
    """Release 1 champion, a rejected preference version (v2), release 2 challenger."""
    return build_world(tmp_path_factory.mktemp("prune_world"), generator=False)


def versions(cfg) -> list[int]:
    return sorted(int(v.version) for v in registry_client(cfg).search_model_versions("name = 'copyflow-preference'"))


def test_a_dry_run_prints_what_would_go_and_the_prune_then_removes_it(tmp_path):
    # a world of its own: the prune deletes files, which a clone would share with the original
    world = build_world(tmp_path / "world", generator=False)
    world.cfg = registry_cfg(world.base, **PRUNE_NOW)  # rewrites its params.yaml: no age limit
    params = ["--params", str(world.base / "params.yaml")]
    runner = CliRunner()
    planned = runner.invoke(app, ["prune", "--dry-run", *params])
    assert planned.exit_code == 0, planned.output
    assert "would remove: 0 release version(s), 1 model version(s), 1 run(s), 1 logged model(s)" in planned.output
    assert "dry run: nothing was changed" in planned.output and versions(world.cfg) == [1, 2, 3]
    done = runner.invoke(app, ["prune", *params])
    assert done.exit_code == 0, done.output
    assert "removed: 0 release version(s), 1 model version(s), 1 run(s)" in done.output
    assert "freed: " in done.output and "mlflow gc permanently deleted the 1 run(s)" in done.output
    assert versions(world.cfg) == [1, 3]
    status = runner.invoke(app, ["status", *params])
    assert status.exit_code == 0 and "INCONSISTENT" not in status.output


def test_prune_refuses_bad_usage_another_store_and_a_running_retrain(pref_world, tmp_path):
    from filelock import FileLock

    runner = CliRunner()
    (tmp_path / "elsewhere").mkdir()
    missing = write_params(tmp_path / "elsewhere")
    result = runner.invoke(app, ["prune", "--params", str(missing)])
    assert result.exit_code == 2 and "no MLflow tracking store at" in result.output
    assert not (tmp_path / "elsewhere" / "mlflow.db").exists()

    world = clone_world(pref_world, tmp_path / "clone", **PRUNE_NOW)
    params = ["--params", str(world.base / "params.yaml")]
    zero = runner.invoke(app, ["prune", "--keep-releases", "0", *params])
    assert zero.exit_code == 2 and "--keep-releases" in zero.output
    world.cfg.state_dir().mkdir(parents=True, exist_ok=True)
    with FileLock(str(world.cfg.state_dir() / "retrain.lock")):
        busy = runner.invoke(app, ["prune", *params])
    assert busy.exit_code == 1, busy.output
    assert busy.output.strip().startswith("prune refused: a retrain or a prune of profile 'quick' is running")
    assert len(busy.output.strip().splitlines()) == 1 and versions(world.cfg) == [1, 2, 3]
