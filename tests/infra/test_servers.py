"""`make up` / `make down` (infra/up.sh, infra/down.sh) on the failure paths a shared machine
has: a port another checkout already serves, a server leader killed with its workers alive."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _checkout(tmp_path: Path) -> Path:
    """The scripts in a scratch folder: they work in their parent folder (.run/, mlflow/)."""
    (tmp_path / "infra").mkdir()
    (tmp_path / "mlflow").mkdir()
    for script in ("up.sh", "down.sh"):
        shutil.copy2(ROOT / "infra" / script, tmp_path / "infra" / script)
    shutil.copy2(ROOT / "mlflow" / "server.env", tmp_path / "mlflow" / "server.env")
    return tmp_path


def test_up_refuses_a_port_another_server_holds(tmp_path):
    checkout = _checkout(tmp_path)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {**os.environ, "VENV": str(Path(sys.executable).parent.parent), "PREFECT_PORT": str(port), "MLFLOW_PORT": "1"}
        result = subprocess.run(["bash", "infra/up.sh"], cwd=checkout, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"port {port} on 127.0.0.1 is already in use by another process" in result.stderr
    assert not list((checkout / ".run").glob("*.pid"))  # nothing started, nothing to stop


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
