"""`copyflow ui`: the MLflow UI on the profile's store."""

from __future__ import annotations

import socket

import pytest

from typer.testing import CliRunner

from flows.cli import app
from tests.conftest import params_file


def test_a_taken_port_is_a_one_line_refusal_not_a_success(make_cfg, tmp_path, monkeypatch):
    # `mlflow server` only logs uvicorn's "address already in use" and exits 0: the URL printed
    # would then show whatever holds the port (make up's server holds another store).
    monkeypatch.delenv("COPYFLOW_TRACKING_URI", raising=False)
    params = params_file(make_cfg(), tmp_path)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]

        result = CliRunner().invoke(app, ["ui", "--params", str(params), "--port", str(port)])

    assert result.exit_code == 2, result.output
    assert f"port {port} on 127.0.0.1 is already in use" in result.output and "nothing was started" in result.output
    assert "MLflow UI on" not in result.output


def test_a_port_out_of_range_or_a_host_the_machine_lacks_is_a_one_line_refusal(make_cfg, tmp_path, monkeypatch):
    # --port 99999 ended in a traceback (OverflowError from bind); a bad --host was told to "pick another --port".
    monkeypatch.delenv("COPYFLOW_TRACKING_URI", raising=False)
    params = ["--params", str(params_file(make_cfg(), tmp_path))]
    for command, says in ((["ui", "--port", "99999"], "less than or equal to 65535"), (["serve", "--port", "0"], "greater than or equal to 1")):
        result = CliRunner(env={"COLUMNS": "200"}).invoke(app, [*command, *params])
        assert result.exit_code == 2 and says in result.output, (command, result.output)
        assert result.exception is None or isinstance(result.exception, SystemExit)

    result = CliRunner().invoke(app, ["ui", "--host", "192.0.2.1", *params])  # TEST-NET-1: no machine has it
    assert result.exit_code == 2 and "on 192.0.2.1 cannot be listened on" in result.output
    assert "Pick another --host." in result.output and "MLflow UI on" not in result.output


def _descendants(pid: int) -> set[int]:
    """Every process under `pid`, from /proc (children of children included)."""
    import os
    from pathlib import Path

    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # ended while we looked
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return {p for p in found if os.path.exists(f"/proc/{p}")}


def _alive(pid: int) -> bool:
    from pathlib import Path

    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
def test_a_sigterm_to_the_ui_ends_the_mlflow_server_and_starts_no_job_workers(make_cfg, tmp_path):
    # Before, a SIGTERM to `copyflow ui` (a supervisor, `kill`) ended only the CLI: the mlflow
    # server and the seven job-execution workers it starts by default kept running, holding the port.
    import os
    import signal
    import subprocess
    import sys
    import time

    import httpx

    params = params_file(make_cfg(), tmp_path)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k not in ("COPYFLOW_TRACKING_URI", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION")}
    cli = subprocess.Popen([sys.executable, "-m", "flows.cli", "ui", "--params", str(params), "--port", str(port)],
                           env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    started: set[int] = set()
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert cli.poll() is None and time.monotonic() < deadline, "the UI did not come up"
            time.sleep(0.5)
        started = _descendants(cli.pid)
        assert 1 <= len(started) <= 3, f"{len(started)} processes under the UI (job workers started?)"

        cli.send_signal(signal.SIGTERM)
        cli.wait(timeout=30)
        deadline = time.monotonic() + 30
        while any(_alive(p) for p in started) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [p for p in started if _alive(p)], "processes of the UI outlived it"
    finally:
        for pid in started | _descendants(cli.pid) | {cli.pid}:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
