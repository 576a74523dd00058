"""`copyflow validate DATA_DIR` as a person runs it: exit 0 on a good batch, 1 with a readable
report on each kind of corruption (real Great Expectations through the real CLI)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from components.config import load_config
from components.validation.gate import accepted_batch_path
from components.validation.suites import batch_stats
from flows.cli import app
from tests.validation.factories import clean_tables, copy_tables, write_batch

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def clean() -> dict[str, pd.DataFrame]:
    return clean_tables()


@pytest.fixture
def params(tmp_path) -> Path:
    """The project's params and suites in tmp, so the accepted-batch state lives in tmp too."""
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    shutil.copytree(ROOT / "expectations", tmp_path / "expectations")
    return tmp_path / "params.yaml"


def _missing_column(t, batch):
    pq.write_table(pq.read_table(batch / "events.parquet").drop(["event_type"]), batch / "events.parquet")


def _wrong_type(t, batch):
    arrow = pq.read_table(batch / "products.parquet")
    index = arrow.schema.get_field_index("price")
    pq.write_table(arrow.set_column(index, "price", pa.array([str(v) for v in arrow["price"].to_pylist()])),
                   batch / "products.parquet")


def _empty_file(t, batch):
    (batch / "events.parquet").write_bytes(b"")


def _non_utf8(t, batch):
    (batch / "users.parquet").unlink()
    (batch / "users.csv").write_bytes(t["users"].assign(city_tier="一线城市").to_csv(index=False).encode("gbk"))


CORRUPTIONS = {
    "missing column": (_missing_column, "event_type"),
    "wrong type": (_wrong_type, "price"),
    "nulls in ids": (lambda t, b: None, "product_id"),
    "duplicate ids": (lambda t, b: None, "user_id"),
    "negative price": (lambda t, b: None, "price"),
    "future timestamps": (lambda t, b: None, "timestamp"),
    "dangling foreign keys": (lambda t, b: None, "product_id"),
    "empty file": (_empty_file, "events"),
    "non-UTF-8 file": (_non_utf8, "UTF-8"),
    "sharp drift": (lambda t, b: None, "event_type"),
}


def _corrupt_tables(kind: str, tables: dict[str, pd.DataFrame]) -> None:
    if kind == "nulls in ids":
        tables["products"].loc[[1, 2], "product_id"] = None
    elif kind == "duplicate ids":
        tables["users"].loc[1, "user_id"] = tables["users"].loc[0, "user_id"]
    elif kind == "negative price":
        tables["products"].loc[0, "price"] = -5.0
    elif kind == "future timestamps":
        tables["events"].loc[[3, 4], "timestamp"] = pd.Timestamp.now(tz="UTC") + pd.Timedelta(days=3)
    elif kind == "dangling foreign keys":
        tables["events"].loc[[2, 9], "product_id"] = "p-ghost"
    elif kind == "sharp drift":
        tables["events"]["event_type"] = tables["events"]["event_type"].replace(
            {"impression": "click", "click": "impression"})


def test_a_good_batch_passes(clean, params, tmp_path):
    result = CliRunner().invoke(app, ["validate", str(write_batch(clean, tmp_path / "batch")), "--params", str(params)])
    assert result.exit_code == 0, result.output
    assert "PASSED" in result.output


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_each_corruption_exits_1_with_a_readable_report(kind, clean, params, tmp_path):
    tables = copy_tables(clean)
    _corrupt_tables(kind, tables)
    batch = write_batch(tables, tmp_path / "batch")
    mutate, mentioned = CORRUPTIONS[kind]
    mutate(tables, batch)
    if kind == "sharp drift":  # drift is judged against the last accepted batch
        cfg = load_config(params, "quick")
        path = accepted_batch_path(cfg)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(batch_stats(clean), default=str), encoding="utf-8")

    result = CliRunner().invoke(app, ["validate", str(batch), "--params", str(params)])

    assert result.exit_code == 1, result.output
    assert "FAILED" in result.output
    assert mentioned in result.output
    assert "Traceback" not in result.output


def test_accept_batch_makes_a_drifted_batch_the_reference_and_nothing_else(clean, params):
    cfg = load_config(params, "quick")
    reference = accepted_batch_path(cfg)
    missing = CliRunner().invoke(app, ["accept-batch", "--params", str(params)])
    assert missing.exit_code == 1 and "run the source and ingest stages" in missing.output
    reference.parent.mkdir(parents=True, exist_ok=True)
    reference.write_text(json.dumps({**batch_stats(clean), "accepted_at": "2026-01-01T00:00:00+00:00"}, default=str), encoding="utf-8")
    drifted = copy_tables(clean)  # three times the shoppers: a real change, say a campaign
    drifted["users"] = pd.concat([drifted["users"]] * 3, ignore_index=True)
    drifted["users"]["user_id"] = [f"u{i:04d}" for i in range(len(drifted["users"]))]
    write_batch(drifted, cfg.stage_dir("ingested"))
    assert CliRunner().invoke(app, ["validate", str(cfg.stage_dir("ingested")), "--params", str(params)]).exit_code == 1
    assert CliRunner().invoke(app, ["validate", str(cfg.stage_dir("ingested")), "--params", str(params), "--no-reference"]).exit_code == 0

    accepted = CliRunner().invoke(app, ["accept-batch", "--params", str(params)])

    assert accepted.exit_code == 0, accepted.output
    assert "is now the drift reference" in accepted.output and "2026-01-01T00:00:00+00:00" in accepted.output
    assert CliRunner().invoke(app, ["validate", str(cfg.stage_dir("ingested")), "--params", str(params)]).exit_code == 0
    before = reference.read_bytes()
    _corrupt_tables("negative price", drifted)
    write_batch(drifted, cfg.stage_dir("ingested"))
    refused = CliRunner().invoke(app, ["accept-batch", "--params", str(params)])
    assert refused.exit_code == 1 and "cannot be accepted" in refused.output and "the drift reference is unchanged" in refused.output
    assert reference.read_bytes() == before


def test_no_reference_is_one_flag_without_a_double_negative():
    """`--no-reference` is a flag; typer's default pair would also offer `--no-no-reference`."""
    result = CliRunner().invoke(app, ["validate", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "--no-reference" in result.output
    assert "--no-no-reference" not in result.output
    assert CliRunner().invoke(app, ["validate", ".", "--no-no-reference"]).exit_code == 2  # unknown option
