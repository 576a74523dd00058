"""`make up` / `make down` (infra/up.sh, infra/down.sh) on the failure paths a shared machine
has: a port another checkout already serves, a server leader killed with its workers alive;
`make deploy` / `make worker` without a Prefect server to talk to."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]


def _checkout(tmp_path: Path) -> Path:
    """The scripts in a scratch folder: they work in their parent folder (.run/, mlflow/)."""
    (tmp_path / "infra").mkdir()
    (tmp_path / "mlflow").mkdir()
    for script in ("up.sh", "down.sh", "deploy.sh", "worker.sh", "prefect_api.sh"):
        shutil.copy2(ROOT / "infra" / script, tmp_path / "infra" / script)
    shutil.copy2(ROOT / "mlflow" / "server.env", tmp_path / "mlflow" / "server.env")
    return tmp_path


@pytest.mark.parametrize("taken", ["prefect-server", "mlflow-server"])
def test_up_starts_nothing_when_a_port_another_server_holds_is_taken(tmp_path, taken):
    # Both ports are checked before either server starts: a taken MLflow port used to leave the
    # Prefect server running.
    checkout = _checkout(tmp_path)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        ports = {"PREFECT_PORT": str(free_port()), "MLFLOW_PORT": str(free_port())}
        ports["PREFECT_PORT" if taken == "prefect-server" else "MLFLOW_PORT"] = str(port)
        env = {**os.environ, "VENV": str(Path(sys.executable).parent.parent), **ports}
        result = subprocess.run(["bash", "infra/up.sh"], cwd=checkout, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"{taken}: port {port} on 127.0.0.1 is already in use by another process; nothing was started" in result.stderr
    assert "started" not in result.stdout
    assert not list((checkout / ".run").glob("*.pid"))  # nothing started, nothing to stop


def test_up_with_a_misspelt_params_key_says_which_in_one_line_and_starts_nothing(tmp_path):
    # It stopped with pydantic's traceback (the profiles' own stores are worked out before any server starts).
    checkout = _checkout(tmp_path)
    params = (ROOT / "params.yaml").read_text(encoding="utf-8")
    (checkout / "params.yaml").write_text(params.replace("\n  patience:", "\n  patiense:", 1), encoding="utf-8")
    env = {**os.environ, "VENV": str(Path(sys.executable).parent.parent), "PREFECT_PORT": str(free_port()), "MLFLOW_PORT": str(free_port())}

    result = subprocess.run(["bash", "infra/up.sh"], cwd=checkout, env=env, capture_output=True, text=True, timeout=120)

    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert "unknown setting; did you mean 'patience'?" in result.stderr and "nothing was started" in result.stderr
    assert not list((checkout / ".run").glob("*.pid"))


@pytest.mark.parametrize("script", ["deploy.sh", "worker.sh"])
@pytest.mark.parametrize("api_url", ["", "stopped"])
def test_deploy_and_worker_without_an_answering_prefect_server_say_so_in_one_line(tmp_path, script, api_url):
    # The worker without PREFECT_API_URL, and either script after `make down` with the URL still
    # exported in the shell, ended in a 100-line traceback (the worker after starting a temporary server).
    checkout = _checkout(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["VENV"] = str(Path(sys.executable).parent.parent)
    if api_url:
        env["PREFECT_API_URL"] = f"http://127.0.0.1:{free_port()}/api"  # nothing listens there

    result = subprocess.run(["bash", f"infra/{script}"], cwd=checkout, env=env, capture_output=True, text=True, timeout=120)

    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    expected = "does not answer: start it with `make up`" if api_url else "PREFECT_API_URL is not set: run `make up` first"
    assert expected in result.stderr


def test_down_stops_the_workers_of_a_leader_that_died_alone(tmp_path):
    checkout = _checkout(tmp_path)
    # A leader and a worker in their own session, named like the MLflow server's processes.
    group = subprocess.Popen(
        ["bash", "-c", "(exec -a mlflow-worker sleep 300) & exec -a mlflow-leader sleep 300"],
        start_new_session=True,
    )
    (checkout / ".run").mkdir()
    (checkout / ".run" / "mlflow-server.pid").write_text(f"{group.pid}\n")
    time.sleep(0.5)
    os.kill(group.pid, signal.SIGKILL)
    group.wait(timeout=10)
    assert subprocess.run(["pgrep", "-g", str(group.pid)], capture_output=True).returncode == 0  # the worker lives on

    result = subprocess.run(["bash", "infra/down.sh"], cwd=checkout, capture_output=True, text=True, timeout=60)

    assert "leader" in result.stdout and "stopping the rest of its process group" in result.stdout, result.stdout
    assert subprocess.run(["pgrep", "-g", str(group.pid)], capture_output=True).returncode == 1
    assert not (checkout / ".run" / "mlflow-server.pid").exists()


@pytest.mark.slow
def test_up_serves_the_embedded_store_and_down_stops_everything(tmp_path):
    """Runs logged through `make up`'s MLflow server stay readable from the embedded store after
    `make down` (a proxied mlflow-artifacts:/ location could only be read over http)."""
    import mlflow

    checkout = _checkout(tmp_path)
    ports = {"PREFECT_PORT": str(free_port()), "MLFLOW_PORT": str(free_port())}
    env = {**os.environ, "VENV": str(Path(sys.executable).parent.parent), **ports}
    try:
        up = subprocess.run(["bash", "infra/up.sh"], cwd=checkout, env=env, capture_output=True, text=True, timeout=300)
        assert up.returncode == 0, up.stdout + up.stderr
        mlflow.set_tracking_uri(f"http://127.0.0.1:{ports['MLFLOW_PORT']}")
        experiment = mlflow.create_experiment("served")
        with mlflow.start_run(experiment_id=experiment) as run:
            mlflow.log_text("logged through the server", "notes/hello.txt")
        assert mlflow.get_experiment(experiment).artifact_location.startswith("file://")
        # `make up` again with another port while the servers run: they keep theirs, and so does .run/env
        moved = {**env, "PREFECT_PORT": str(free_port())}
        again = subprocess.run(["bash", "infra/up.sh"], cwd=checkout, env=moved, capture_output=True, text=True, timeout=120)
        assert again.returncode == 0, again.stdout + again.stderr
        assert f"prefect-server is already running on port {ports['PREFECT_PORT']}" in again.stderr
        assert f"PREFECT_API_URL=http://127.0.0.1:{ports['PREFECT_PORT']}/api" in (checkout / ".run" / "env").read_text()
    finally:
        down = subprocess.run(["bash", "infra/down.sh"], cwd=checkout, capture_output=True, text=True, timeout=120)
    assert "prefect-server stopped" in down.stdout and "mlflow-server stopped" in down.stdout, down.stdout
    assert not list((checkout / ".run").glob("*.port"))
    for port in ports.values():
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", int(port)))  # free again

    mlflow.set_tracking_uri(f"sqlite:///{checkout / 'mlflow' / 'mlflow.db'}")
    path = mlflow.artifacts.download_artifacts(f"runs:/{run.info.run_id}/notes/hello.txt", dst_path=str(tmp_path / "read"))
    assert Path(path).read_text() == "logged through the server"
