"""`copyflow ui`: the MLflow UI on the profile's store."""

from __future__ import annotations

import socket

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
