"""`copyflow forget`: erase shoppers from the feedback log and every later batch, and say what is left."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from components.data.erasure import forgotten_path
from components.data.feedback import FeedbackLog
from components.data.privacy import load_key, profile_key, pseudonym, recorded_key_id
from components.data.raw import read_raw_table, write_raw_table
from flows.cli import app
from tests.conftest import params_file


@pytest.fixture
def shop(make_cfg, tmp_path, monkeypatch):
    """A `shop` profile with a small export and a feedback log, both naming shopper1 and shopper2."""
    monkeypatch.delenv("COPYFLOW_PSEUDONYM_KEY", raising=False)
    export = tmp_path / "export"
    write_raw_table(pd.DataFrame({"user_id": ["shopper2", "shopper1"], "age_band": ["18-24"] * 2,
                                  "city_tier": ["tier1"] * 2, "signup_date": ["2025-12-01"] * 2}), export, "users")
    write_raw_table(pd.DataFrame({"event_id": ["e1", "e2", "e3"], "user_id": ["shopper1", "shopper2", "shopper1"],
                                  "product_id": "p1", "copy_id": "c1", "event_type": "impression",
                                  "timestamp": "2026-01-05T10:00:00Z", "position": 1, "propensity": 0.5, "value": 0.0}),
                    export, "events")
    cfg = make_cfg("shop", paths={"source_folder": str(export)})
    profile_key(cfg)  # the profile's key of record, as its first ingest leaves it
    log = FeedbackLog(cfg.feedback_dir())
    for user in ("shopper1", "shopper2"):
        log.record_event(log.record_serving(user, "p1", "文案", "m", candidates=2).serve_id, "click")
    return cfg, params_file(cfg, tmp_path), export


def forget(params, *args, env=None):
    return CliRunner().invoke(app, ["forget", "--profile", "shop", "--params", str(params), *args], env=env)


def test_forget_erases_the_log_records_the_pseudonym_and_names_what_is_left(shop, tmp_path):
    cfg, params, export = shop
    exported = {name: (export / name).read_bytes() for name in ("users.csv", "events.csv")}

    result = forget(params, "--user", "shopper1")

    assert result.exit_code == 0, result.output
    assert "'shopper1': recorded as forgotten; feedback log lines removed: 2 from events.csv, 1 from served.jsonl" in result.output
    assert f"still in the shop's export {export / 'users.csv'}: 1 line(s) (3)" in result.output
    assert f"still in the shop's export {export / 'events.csv'}: 2 line(s) (2, 4)" in result.output
    assert "artifacts/shop" in result.output
    # a rollback restores an older release, whose models were trained with the shopper too
    assert "older releases still registered (`copyflow rollback` can restore them)" in result.output
    assert "until the next promoted release" not in result.output
    assert {name: (export / name).read_bytes() for name in exported} == exported  # the shop's export is not edited
    assert set(read_raw_table(cfg.feedback_dir(), "events")["user_id"]) == {"shopper2"}
    assert FeedbackLog(cfg.feedback_dir()).counts() == {"copies": 1, "served": 1, "events": 2}
    record = forgotten_path(cfg).read_text(encoding="utf-8")
    assert "shopper1" not in record and load_key(cfg).secret.decode() not in result.output
    assert [r["pseudonym"] for r in json.loads(record)["shoppers"]] == [pseudonym("shopper1", load_key(cfg))]

    ids = tmp_path / "ids.txt"
    ids.write_text("shopper1\n\nshopper2\n", encoding="utf-8")
    again = forget(params, "--users-file", str(ids))
    assert again.exit_code == 0, again.output
    assert "'shopper1': already recorded as forgotten; feedback log lines removed: 0 from events.csv, 0 from served.jsonl" in again.output
    assert "'shopper2': recorded as forgotten; feedback log lines removed: 2 from events.csv, 1 from served.jsonl" in again.output
    assert len(json.loads(forgotten_path(cfg).read_text(encoding="utf-8"))["shoppers"]) == 2


def test_a_users_file_starting_with_a_byte_order_mark_is_read_without_it(shop, tmp_path):
    """Windows editors and spreadsheets save UTF-8 with a leading U+FEFF: it belongs to the file,
    not to the first id (it was refused as an invisible character in 'shopper1')."""
    cfg, params, _ = shop
    ids = tmp_path / "ids.txt"
    ids.write_text("shopper1\r\nshopper2\r\n", encoding="utf-8-sig")
    result = forget(params, "--users-file", str(ids))
    assert result.exit_code == 0, result.output
    assert "'shopper1': recorded as forgotten; feedback log lines removed: 2 from events.csv" in result.output
    assert [r["pseudonym"] for r in json.loads(forgotten_path(cfg).read_text(encoding="utf-8"))["shoppers"]] == [
        pseudonym("shopper1", load_key(cfg)), pseudonym("shopper2", load_key(cfg))]


def test_forget_names_the_raw_layer_and_the_artifacts_where_paths_artifacts_puts_them(shop):
    """The raw layer is cfg.stage_dir("source"), wherever paths.artifacts points (here a temporary
    folder): the output named a relative artifacts/<profile>/ that held nothing."""
    cfg, params, export = shop
    raw_layer = cfg.stage_dir("source")
    for name in ("users.csv", "events.csv"):
        raw_layer.mkdir(parents=True, exist_ok=True)
        (raw_layer / name).write_bytes((export / name).read_bytes())
    result = forget(params, "--user", "shopper1")
    assert result.exit_code == 0, result.output
    assert f"still in the raw layer {raw_layer / 'events.csv'}: 2 line(s)" in result.output
    assert f"still in the raw layer {raw_layer / 'users.csv'}: 1 line(s)" in result.output
    assert f"Left until the next retrain: {raw_layer.parent} (ingested data" in result.output


@pytest.mark.parametrize("args, says", [
    ((), "no shopper id given"),
    (("--user", ""), "must be non-empty"),
    (("--user", "shopper1 "), "whitespace at its start or end"),
    (("--user", "shopper2", "--user", "a\nb"), "on one line"),
])
def test_forget_refuses_a_bad_id_and_erases_nothing(shop, args, says):
    cfg, params, _ = shop
    before = (cfg.feedback_dir() / "events.csv").read_bytes()
    result = forget(params, *args)
    assert result.exit_code == 2 and says in result.output
    assert (cfg.feedback_dir() / "events.csv").read_bytes() == before and not forgotten_path(cfg).exists()


def test_forget_refuses_another_key_and_never_prints_it(shop):
    cfg, params, _ = shop
    other = "o" * 64
    result = forget(params, "--user", "shopper1", env={cfg.privacy.key_env: other})
    assert result.exit_code == 2 and "rotate-key" in result.output and recorded_key_id(cfg) in result.output
    assert other not in result.output and not forgotten_path(cfg).exists()
    assert "shopper1" in set(read_raw_table(cfg.feedback_dir(), "events")["user_id"])


def test_rotating_the_key_says_that_erasures_under_the_old_one_need_forgetting_again(shop):
    cfg, params, _ = shop
    assert forget(params, "--user", "shopper1").exit_code == 0
    rotated = CliRunner().invoke(app, ["rotate-key", "--profile", "shop", "--params", str(params)],
                                 env={cfg.privacy.key_env: "r" * 64})
    assert rotated.exit_code == 0, rotated.output
    assert "1 shopper(s) erased with `copyflow forget` were recorded under another key" in rotated.output
    again = forget(params, "--user", "shopper1", env={cfg.privacy.key_env: "r" * 64})
    assert again.exit_code == 0 and "'shopper1': recorded as forgotten" in again.output  # under the new key's pseudonym


def test_a_damaged_record_of_erasures_stops_forget_and_ingest_instead_of_reading_as_none(shop):
    # Read as "nobody was erased", a damaged record would bring every erased shopper back at the
    # next ingest; it was a bare JSONDecodeError (forget: a traceback).
    from components.data.erasure import ErasureRecordError, forgotten_pseudonyms

    cfg, params, _ = shop
    assert forget(params, "--user", "shopper1").exit_code == 0
    path = forgotten_path(cfg)
    path.write_text(path.read_text(encoding="utf-8")[:-20], encoding="utf-8")  # cut off, as by a full disk and a hand copy
    served = (cfg.feedback_dir() / "served.jsonl").read_bytes()

    result = forget(params, "--user", "shopper2")

    assert result.exit_code == 2, result.output
    assert f"{path} cannot be read" in result.output and "restore it from a backup" in result.output
    assert "Traceback" not in result.output
    assert (cfg.feedback_dir() / "served.jsonl").read_bytes() == served  # shopper2's lines were not touched either
    with pytest.raises(ErasureRecordError, match="nothing that depends on it runs"):
        forgotten_pseudonyms(cfg)  # what ingest and the frozen set read
    path.write_text(json.dumps({"shoppers": [{"key_id": "x"}]}), encoding="utf-8")
    with pytest.raises(ErasureRecordError, match="a record without a pseudonym"):
        forgotten_pseudonyms(cfg)


def test_a_broken_line_in_the_export_does_not_hide_the_shoppers_other_lines(shop):
    cfg, params, export = shop
    with open(export / "users.csv", "a", encoding="utf-8") as handle:
        handle.write("shopper9,18-24\n")  # cut off: line 4

    result = forget(params, "--user", "shopper1")

    assert result.exit_code == 0, result.output
    assert f"still in the shop's export {export / 'users.csv'}: 1 line(s) (3)" in result.output  # was: not searched at all
    assert f"could not search {export / 'users.csv'} for the shopper(s): 1 line(s) cannot be read (first: line 4)" in result.output


@pytest.mark.parametrize("profile, until", [
    ("quick", "for good: the simulated source writes this shopper again on every run, under the same raw id; ingest drops them each time"),
    ("shop", "until a retrain's source stage copies an export that no longer lists them"),
])
def test_forget_says_how_long_the_raw_layer_keeps_the_raw_id(make_cfg, tmp_path, monkeypatch, profile, until):
    """The raw layer is rewritten from its source: a simulated one lists the shopper again every
    run (the next retrain even skips the unchanged source stage), an export until the shop removes them."""
    monkeypatch.delenv("COPYFLOW_PSEUDONYM_KEY", raising=False)
    cfg = make_cfg(profile, paths={"source_folder": str(tmp_path / "export")})
    profile_key(cfg)
    users = pd.DataFrame({"user_id": ["shopper1"], "age_band": ["18-24"], "city_tier": ["tier1"], "signup_date": ["2025-12-01"]})
    write_raw_table(users, cfg.stage_dir("source"), "users")

    result = CliRunner().invoke(app, ["forget", "--profile", profile, "--params", str(params_file(cfg, tmp_path)),
                                      "--user", "shopper1"])

    assert result.exit_code == 0, result.output
    assert f"still in the raw layer {cfg.stage_dir('source') / 'users.csv'}: 1 line(s), {until}" in result.output
    assert "until the next retrain's source stage rewrites it" not in result.output


def test_forget_says_when_an_id_names_no_shopper_anywhere(shop):
    """A mistyped id is recorded like any other: the output must not read as a done erasure."""
    _, params, _ = shop
    result = forget(params, "--user", "shoper1", "--user", "shopper1")
    assert result.exit_code == 0, result.output
    assert ("  found nowhere: no line of the feedback log, the shop's export or the raw layer names 'shoper1'; "
            "check the id (it is recorded all the same)") in result.output
    assert result.output.count("found nowhere") == 1  # shopper1 is in the log and the export
