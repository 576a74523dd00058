"""After `make down`, the shell still holds `.run/env`'s COPYFLOW_TRACKING_URI: every command that
reads the store says in one line that its server does not answer (it spent minutes in MLflow's
retries, then printed a 470-line traceback for `copyflow status`)."""

from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

from flows.cli import app
from tests.conftest import free_port, params_file


@pytest.mark.parametrize("command", [["status"], ["promote"], ["generate", "--user", "u", "--product", "p"],
                                     ["explain", "--user", "u", "--product", "p"]])
def test_a_stopped_tracking_server_is_one_line_naming_it(make_cfg, tmp_path, monkeypatch, command):
    params = params_file(make_cfg(), tmp_path)
    raw = yaml.safe_load(params.read_text(encoding="utf-8"))
    raw["tracking"]["uri"] = None  # the store comes from the environment, as after `source .run/env`
    params.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    stopped = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("COPYFLOW_TRACKING_URI", stopped)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # so the old behaviour fails fast here

    result = CliRunner().invoke(app, [*command, "--params", str(params)])

    assert result.exit_code == 2, result.output
    assert f"error: the MLflow server at {stopped} does not answer" in result.output
    assert "unset COPYFLOW_TRACKING_URI" in result.output and "Traceback" not in result.output
