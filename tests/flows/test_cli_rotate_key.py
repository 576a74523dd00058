"""`copyflow rotate-key`: the one way to give a profile another pseudonym key."""

from __future__ import annotations

from typer.testing import CliRunner

from components.data.privacy import profile_key, recorded_key_id
from flows.cli import app
from tests.conftest import params_file


def test_rotate_key_records_the_current_key_and_refuses_a_weak_one(cfg, tmp_path, monkeypatch):
    monkeypatch.delenv(cfg.privacy.key_env, raising=False)
    params = params_file(cfg, tmp_path)
    old = profile_key(cfg).key_id  # what the profile's first ingest records
    runner = CliRunner()

    same = runner.invoke(app, ["rotate-key", "--params", str(params)])
    assert same.exit_code == 0 and f"key {old} is already the pseudonym key of profile 'quick'" in same.output

    weak = runner.invoke(app, ["rotate-key", "--params", str(params)], env={cfg.privacy.key_env: "abc"})
    assert weak.exit_code == 2 and "is 3 bytes; use at least 32" in weak.output and recorded_key_id(cfg) == old

    rotated = runner.invoke(app, ["rotate-key", "--params", str(params)], env={cfg.privacy.key_env: "r" * 64})
    assert rotated.exit_code == 0, rotated.output
    assert f"(was {old})" in rotated.output and "re-freezes the preference evaluation set" in rotated.output
    assert recorded_key_id(cfg) not in (None, old)


def test_rotating_a_profile_with_no_key_of_record_says_so_not_none(cfg, tmp_path, monkeypatch):
    # It printed "(was None)".
    monkeypatch.delenv(cfg.privacy.key_env, raising=False)
    result = CliRunner().invoke(app, ["rotate-key", "--params", str(params_file(cfg, tmp_path))])
    assert result.exit_code == 0, result.output
    assert "(no key was recorded before)" in result.output and "None" not in result.output
