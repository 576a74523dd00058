"""The `promote` / `rollback` flows: in-process wiring, and the real thing end to end — a real
Prefect server, deployments created from prefect.yaml by `prefect deploy`, a process worker, a
flow run triggered through the API with parameters, and the champion alias moving in MLflow."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from components.registry.store import model_aliases, registry_client
from tests.conftest import free_port
from tests.registry.world import build_world

ROOT = Path(__file__).resolve().parents[2]
PREFECT = str(Path(sys.executable).parent / "prefect")


@pytest.fixture(scope="module")
def pref_world(tmp_path_factory):
    """Preference-only registry: release 1 champion, release 2 challenger."""
    return build_world(tmp_path_factory.mktemp("promote_world"), generator=False, with_failure=False)



def _stop(process: subprocess.Popen) -> None:
    """Terminate the whole process group we started (server workers, flow-run subprocesses)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


class PrefectServer:
    """A `prefect server start` process started in the background; `ready()` waits for health."""

    def __init__(self, base: Path, services: bool = False):
        port = free_port()
        self.log_path = base / "server.log"
        self.env = {
            **os.environ,
            "PREFECT_HOME": str(base / "prefect-home"),
            "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_UI_ENABLED": "false",
            "PREFECT_WORKER_QUERY_SECONDS": "1",
            "PREFECT_LOGGING_LEVEL": "WARNING",
            "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
            "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2",
        }
        self.env.pop("MLFLOW_TRACKING_URI", None)
        self._log = self.log_path.open("w")
        self.process = subprocess.Popen(
            [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port), *([] if services else ["--no-services"])],
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.health = f"http://127.0.0.1:{port}/api/health"

    def ready(self, timeout_s: float = 180) -> dict:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if httpx.get(self.health, timeout=2).status_code == 200:
                    return self.env
            except httpx.HTTPError:
                pass
            assert self.process.poll() is None, self.log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, "Prefect server did not become healthy"
            time.sleep(0.5)

    def stop(self) -> None:
        _stop(self.process)
        self._log.close()


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    """Started before the registry world is built, so both start-ups overlap; always stopped."""
    server = PrefectServer(tmp_path_factory.mktemp("prefect"))
    try:
        yield server
    finally:
        server.stop()


def _prefect(env: dict, *args: str) -> str:
    result = subprocess.run([PREFECT, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, f"prefect {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def test_promote_deployment_from_prefect_yaml_moves_the_champion(prefect_server, pref_world, tmp_path):
    from tests.registry.world import clone_world

    world = clone_world(pref_world, tmp_path / "clone")
    env = prefect_server.ready()
    client = registry_client(world.cfg)
    assert model_aliases(client, "copyflow-release")["champion"] == "1"

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.workers.process import ProcessWorker

    # = `prefect work-pool create copyflow-local --type process`, without another CLI start-up
    with temporary_settings(updates={PREFECT_API_URL: env["PREFECT_API_URL"]}), get_client(sync_client=True) as api:
        template = ProcessWorker.get_default_base_job_template()
        api.create_work_pool(WorkPoolCreate(name="copyflow-local", type="process", base_job_template=template))
    out = _prefect(env, "--no-prompt", "deploy", "--prefect-file", "prefect.yaml", "--name", "promote")
    assert "promote/promote" in out

    worker_log = (tmp_path / "worker.log").open("w")
    worker = subprocess.Popen(
        [PREFECT, "worker", "start", "--pool", "copyflow-local", "--type", "process"],
        env=env,
        cwd=ROOT,
        stdout=worker_log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        from prefect.client.schemas.objects import StateType
        from prefect.deployments import run_deployment

        parameters = {"release": 2, "note": "clicked in the UI", "params_path": str(world.base / "params.yaml")}
        with temporary_settings(updates={PREFECT_API_URL: env["PREFECT_API_URL"]}):
            flow_run = run_deployment("promote/promote", parameters=parameters, timeout=300, poll_interval=1)
        log_text = (tmp_path / "worker.log").read_text()
        assert flow_run.state is not None and flow_run.state.type == StateType.COMPLETED, log_text[-4000:]
        assert flow_run.parameters["release"] == 2
    finally:
        _stop(worker)
        worker_log.close()

    aliases = model_aliases(client, "copyflow-release")
    assert aliases["champion"] == "2" and aliases["previous"] == "1"
    assert model_aliases(client, "copyflow-preference")["champion"] == world.second.versions["preference"]
    tags = client.get_model_version("copyflow-release", "2").tags
    assert tags["promotion.note"] == "clicked in the UI"
    assert tags["promoted_by"].startswith("prefect flow run")


def _failed_retrain(cfg) -> str:
    """A retrain the data gate stopped (FAILED, kind=retrain) with a report in its own artifacts:
    what a prune removes from a clone without touching the files the clone shares."""
    import mlflow

    registry_client(cfg)  # points MLflow at the clone's store
    with mlflow.start_run(run_name="retrain-quick", tags={"kind": "retrain", "profile": cfg.profile}) as run:
        mlflow.log_text("the data gate failed", "validation/report.md")
    registry_client(cfg).set_terminated(run.info.run_id, "FAILED")
    return run.info.run_id


def test_prune_deployment_from_prefect_yaml_removes_an_old_failed_retrain(prefect_server, pref_world, tmp_path):
    from tests.registry.world import clone_world

    world = clone_world(pref_world, tmp_path / "clone", registry={"prune_min_age_days": 0})
    failed = _failed_retrain(world.cfg)
    from components.registry.candidates import release_candidates
    from tests.registry import helpers

    # a newer release: the failed retrain is then older than the newest release, so it may go
    assert release_candidates(world.cfg, [helpers.train_preference(world.cfg, world.base)], project_dir=ROOT,
                              scorers=helpers.SCORERS).release == "3"
    env = prefect_server.ready()
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.workers.process import ProcessWorker

    with temporary_settings(updates={PREFECT_API_URL: env["PREFECT_API_URL"]}), get_client(sync_client=True) as api:
        pools = [pool.name for pool in api.read_work_pools()]
        if "copyflow-local" not in pools:  # the promote deployment's test may have made it
            api.create_work_pool(WorkPoolCreate(name="copyflow-local", type="process",
                                                base_job_template=ProcessWorker.get_default_base_job_template()))
    out = _prefect(env, "--no-prompt", "deploy", "--prefect-file", "prefect.yaml", "--name", "prune")
    assert "prune/prune" in out
    worker_log = (tmp_path / "worker.log").open("w")
    worker = subprocess.Popen([PREFECT, "worker", "start", "--pool", "copyflow-local", "--type", "process"], env=env,
                              cwd=ROOT, stdout=worker_log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        from prefect.client.schemas.objects import StateType
        from prefect.deployments import run_deployment

        # keep 2: releases 2 and 3 stay (their files are the original world's, shared by the clone)
        parameters = {"keep_releases": 2, "params_path": str(world.base / "params.yaml")}
        folder = Path(registry_client(world.cfg).get_run(failed).info.artifact_uri.removeprefix("file://"))
        assert folder.is_dir()
        with temporary_settings(updates={PREFECT_API_URL: env["PREFECT_API_URL"]}):
            flow_run = run_deployment("prune/prune", parameters=parameters, timeout=300, poll_interval=1)
        log_text = (tmp_path / "worker.log").read_text()
        assert flow_run.state is not None and flow_run.state.type == StateType.COMPLETED, log_text[-4000:]
    finally:
        _stop(worker)
        worker_log.close()
    import mlflow.exceptions

    with pytest.raises(mlflow.exceptions.MlflowException):  # permanently deleted by mlflow gc
        registry_client(world.cfg).get_run(failed)
    assert not folder.exists()  # a run that logged no model: gc named a placeholder model, not none
    client = registry_client(world.cfg)
    assert model_aliases(client, "copyflow-release") == {"champion": "1", "challenger": "3"}
    assert sorted(int(v.version) for v in client.search_model_versions("name = 'copyflow-release'")) == [1, 2, 3]


def test_the_prune_flow_function_dry_run_changes_nothing(pref_world, tmp_path):
    from flows.promote import prune
    from tests.registry.world import clone_world

    world = clone_world(pref_world, tmp_path / "clone", registry={"prune_min_age_days": 0})
    failed = _failed_retrain(world.cfg)
    from components.registry.candidates import release_candidates
    from tests.registry import helpers

    release_candidates(world.cfg, [helpers.train_preference(world.cfg, world.base)], project_dir=ROOT, scorers=helpers.SCORERS)
    planned = prune.fn(keep_releases=2, dry_run=True, params_path=str(world.base / "params.yaml"))
    assert planned["runs"] == [failed] and planned["releases"] == [] and planned["dry_run"]
    assert planned["bytes"] > 0 and planned["freed_bytes"] is None
    assert registry_client(world.cfg).get_run(failed).info.lifecycle_stage == "active"


def test_flow_functions_promote_and_roll_back(pref_world, tmp_path):
    from flows.promote import promote, rollback
    from tests.registry.world import clone_world

    world = clone_world(pref_world, tmp_path / "clone")
    params = str(world.base / "params.yaml")
    result = promote.fn(release=None, note="from the flow", params_path=params)
    assert result["changed"] and result["release"] == "2"
    client = registry_client(world.cfg)
    tags = client.get_model_version("copyflow-release", "2").tags
    assert tags["promotion.note"] == "from the flow" and tags["promoted_by"].startswith("prefect flow run")
    assert rollback.fn(note="undo", params_path=params)["release"] == "1"
    assert model_aliases(client, "copyflow-release")["champion"] == "1"


def test_the_promote_flow_says_which_aliases_it_repaired(pref_world, tmp_path, capsys):
    # Re-promoting the champion (the documented repair) logged "promoted release 1 (champion
    # before: 1)" in the flow run: which alias was wrong, or is still wrong, was not shown.
    from flows.promote import promote
    from tests.registry.world import clone_world

    world = clone_world(pref_world, tmp_path / "clone")
    client = registry_client(world.cfg)
    client.set_registered_model_alias("copyflow-preference", "champion", "2")  # left behind by a crash mid-promotion

    promote.fn(release=1, params_path=str(world.base / "params.yaml"))

    out = capsys.readouterr().out
    assert "release 1 is already the champion; its aliases were repaired:" in out
    assert "copyflow-preference@champion is 2 but copyflow-release@champion (v1) says 1" in out
    assert "promoted release 1" not in out
    assert model_aliases(client, "copyflow-preference")["champion"] == "1"


def test_registry_commands_refuse_a_missing_store_and_report_refusals_in_one_line(pref_world, tmp_path):
    """A mistyped store is not created empty; a busy lock, an unknown release and an already
    champion release each get one line, not a traceback."""
    from filelock import FileLock
    from typer.testing import CliRunner

    from components.registry.store import lock_path
    from flows.cli import app
    from tests.registry.world import clone_world, write_params

    runner = CliRunner()
    (tmp_path / "elsewhere").mkdir()
    missing = write_params(tmp_path / "elsewhere")
    for command in (["status"], ["compare"], ["promote"], ["rollback"]):
        result = runner.invoke(app, [*command, "--params", str(missing)])
        assert result.exit_code == 2 and "no MLflow tracking store at" in result.output, (command, result.output)
    assert not (tmp_path / "elsewhere" / "mlflow.db").exists()

    world = clone_world(pref_world, tmp_path / "clone", gates={"lock_timeout_s": 0.2})
    params = ["--params", str(world.base / "params.yaml")]
    compared = runner.invoke(app, ["compare", "--release", "9", *params])
    assert compared.exit_code == 1 and "compare: copyflow-release version 9 does not exist" in compared.output
    kept = runner.invoke(app, ["promote", "--release", "1", *params])
    assert kept.exit_code == 0 and "release 1 is already the champion" in kept.output
    with FileLock(str(lock_path(world.cfg))):
        busy = runner.invoke(app, ["promote", *params])
    assert busy.exit_code == 1 and "promotion refused: another promotion held" in busy.output
    assert "Traceback" not in busy.output
    assert model_aliases(registry_client(world.cfg), "copyflow-release")["champion"] == "1"


@pytest.mark.slow
def test_the_nightly_retrain_schedule_creates_runs(tmp_path):
    """`make deploy` registers the cron; the server's scheduler must turn it into scheduled
    runs (SQLAlchemy 2.1 broke Prefect 3.8's scheduler insert: the cron was shown, never run)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName, FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.workers.process import ProcessWorker

    server = PrefectServer(tmp_path, services=True)
    try:
        env = server.ready()
        with temporary_settings(updates={PREFECT_API_URL: env["PREFECT_API_URL"]}), get_client(sync_client=True) as api:
            template = ProcessWorker.get_default_base_job_template()
            api.create_work_pool(WorkPoolCreate(name="copyflow-local", type="process", base_job_template=template))
            _prefect(env, "--no-prompt", "deploy", "--prefect-file", "prefect.yaml", "--name", "retrain")
            deadline, runs = time.monotonic() + 90, []
            while not runs and time.monotonic() < deadline:
                time.sleep(1)
                runs = api.read_flow_runs(
                    deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["retrain"])),
                    flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))),
                )
        log = server.log_path.read_text()
        assert runs, f"no scheduled retrain run after 90 s; server log:\n{log[-3000:]}"
        assert "bulk DML" not in log
        for run in runs:  # 02:00 in Shanghai is 18:00 UTC
            assert (run.expected_start_time.hour, run.expected_start_time.minute) == (18, 0)
    finally:
        server.stop()
