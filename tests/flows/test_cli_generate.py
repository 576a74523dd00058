"""`copyflow generate` and `copyflow fetch-obd` refuse what they cannot do in one line."""

from __future__ import annotations

from typer.testing import CliRunner

from flows.cli import MAX_COPIES_PER_REQUEST, app
from tests.conftest import params_file


def test_generate_refuses_more_copies_than_one_request_holds(make_cfg, tmp_path):
    # decoded as one batch: 20,000 copies ran out of memory with a 150-line traceback
    result = CliRunner().invoke(app, ["generate", "--user", "u", "--product", "p", "--n", str(MAX_COPIES_PER_REQUEST + 1),
                                      "--params", str(params_file(make_cfg(), tmp_path))])
    assert result.exit_code == 2 and "less than or equal to 50" in result.output


def test_fetch_obd_without_a_package_index_is_one_line(make_cfg, tmp_path, monkeypatch):
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # as on a machine without the network
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    result = CliRunner().invoke(app, ["fetch-obd", "--params", str(params_file(make_cfg(profile="obd"), tmp_path))])
    assert result.exit_code == 1 and "error:" in result.output and "obp==0.4.1" in result.output
    assert "Traceback" not in result.output
