"""A params.yaml with a misspelt key or a wrong type: every command names the setting in one
line each, with the closest real name, not pydantic's dump of the whole section."""

from __future__ import annotations

from pathlib import Path

import yaml
from typer.testing import CliRunner

from flows.cli import app

ROOT = Path(__file__).resolve().parents[2]


def test_a_misspelt_or_mistyped_setting_is_named_with_its_closest_real_name(tmp_path):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    raw["preference"]["batch_sise"] = raw["preference"].pop("batch_size")
    raw["profiles"]["quick"]["generator"]["lr"] = "fast"
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")

    result = CliRunner().invoke(app, ["status", "--params", str(params)])

    assert result.exit_code == 2
    assert f"error: {params} (profile 'quick') has 3 invalid settings:" in result.output
    assert "  preference.batch_sise: unknown setting; did you mean 'batch_size'?" in result.output
    assert "  preference.batch_size: required, and not set" in result.output
    assert "  generator.lr: Input should be a valid number (got 'fast')" in result.output
    assert "errors.pydantic.dev" not in result.output and "input_value" not in result.output


def test_a_mistake_in_another_profile_stops_every_command_in_one_line(tmp_path):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    raw["profiles"]["full"]["generator"]["max_epochs"] = True  # quick would have run; full's nightly job would not
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")

    result = CliRunner().invoke(app, ["status", "--params", str(params)])

    assert result.exit_code == 2, result.output
    assert f"error: {params}: profile 'quick' is valid, but 1 invalid setting of the base or other profiles" in result.output
    assert "  profiles.full.generator.max_epochs: Input should be a valid integer (got True)" in result.output
    assert "Traceback" not in result.output
