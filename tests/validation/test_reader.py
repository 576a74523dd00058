"""Reading a batch: parquet as written, CSV/JSONL coerced value by value, bad files as issues."""

from __future__ import annotations

import json

import pandas as pd
import pyarrow as pa
import pytest

from components.validation.reader import coerce_column, read_batch
from tests.validation.factories import clean_tables, write_batch


@pytest.fixture(scope="module")
def clean() -> dict[str, pd.DataFrame]:
    return clean_tables(n_products=12, n_users=6, n_events=40)


def test_parquet_batch_reads_with_validation_friendly_types(clean, tmp_path):
    batch = read_batch(write_batch(clean, tmp_path))

    assert batch.issues == [] and set(batch) == {"products", "copies", "users", "events"}
    events = batch["events"]
    assert str(events["timestamp"].dtype) == "datetime64[us, UTC]"
    assert str(events["position"].dtype) == "Int32"
    assert events["event_id"].dtype == object and isinstance(events["event_id"][0], str)
    assert batch["products"]["attributes"][0] == clean["products"]["attributes"][0]
    assert batch["copies"]["model_version"][0] is None
    assert batch.files["events"].name == "events.parquet"


def test_csv_and_jsonl_are_coerced_to_the_canonical_types(clean, tmp_path):
    products = clean["products"].assign(attributes=clean["products"]["attributes"].map(lambda a: json.dumps(a, ensure_ascii=False)))
    products.to_csv(tmp_path / "products.csv", index=False)
    clean["users"].to_csv(tmp_path / "users.csv", index=False)
    clean["copies"].to_json(tmp_path / "copies.jsonl", orient="records", lines=True, force_ascii=False)
    events = clean["events"].assign(timestamp=clean["events"]["timestamp"].map(pd.Timestamp.isoformat))
    events.to_json(tmp_path / "events.jsonl", orient="records", lines=True, force_ascii=False)

    batch = read_batch(tmp_path)

    assert batch.issues == []
    assert batch["products"]["price"].dtype == "float64"
    assert batch["products"]["attributes"].tolist() == clean["products"]["attributes"].tolist()
    assert str(batch["users"]["signup_date"].dtype) == "datetime64[us, UTC]"
    assert batch["users"]["signup_date"].tolist() == clean["users"]["signup_date"].tolist()
    assert str(batch["events"]["position"].dtype) == "Int32"
    assert batch["copies"]["model_version"].isna().sum() == len(clean["copies"]) // 2


def test_values_that_do_not_parse_keep_their_text_so_the_type_check_shows_them():
    prices = coerce_column(pd.Series(["12.5", None, "abc", "7"]), pa.float64())
    assert prices.tolist()[0] == 12.5 and prices[1] is None and prices[2] == "abc"

    positions = coerce_column(pd.Series(["1", "2.5", "", "3"]).replace("", None), pa.int32())
    assert positions.tolist() == [1, "2.5", None, 3]

    stamps = coerce_column(pd.Series(["2026-01-05T10:00:00+00:00", "yesterday"]), pa.timestamp("us", tz="UTC"))
    assert isinstance(stamps[0], pd.Timestamp) and stamps[1] == "yesterday"

    clean_positions = coerce_column(pd.Series(["1", None, "3"]), pa.int32())
    assert str(clean_positions.dtype) == "Int32"


def test_unreadable_files_become_issues_and_the_other_tables_are_still_read(clean, tmp_path):
    write_batch(clean, tmp_path)
    (tmp_path / "products.parquet").write_bytes(b"")  # empty
    (tmp_path / "users.parquet").unlink()
    (tmp_path / "users.csv").write_bytes("user_id,city_tier\nu1,一线\n".encode("gbk"))  # not UTF-8
    (tmp_path / "copies.parquet").write_bytes(b"PAR1 this is not parquet")  # unparseable
    (tmp_path / "events.parquet").unlink()
    (tmp_path / "events.jsonl").write_text('{"event_id": "e1"}\n{"event_id": \n', encoding="utf-8")

    batch = read_batch(tmp_path)

    issues = {i.table: i for i in batch.issues}
    assert set(batch) == set()
    assert issues["products"].check == "file_not_empty"
    assert issues["users"].check == "utf8_encoding" and "line 2" in issues["users"].message
    assert issues["copies"].check == "file_parseable" and "parquet" in issues["copies"].message
    assert issues["events"].check == "file_parseable" and "line 2" in issues["events"].message


def test_missing_table_and_format_preference(clean, tmp_path):
    write_batch(clean, tmp_path)
    clean["users"].to_csv(tmp_path / "users.csv", index=False)
    (tmp_path / "copies.parquet").unlink()

    batch = read_batch(tmp_path)

    assert [i.check for i in batch.issues] == ["table_file_exists"]
    assert "copies" in batch.issues[0].message
    assert batch.files["users"].name == "users.parquet"  # canonical parquet wins
    assert [p.name for p in batch.extra_files["users"]] == ["users.csv"]


def test_a_csv_row_cut_short_is_an_issue_naming_its_line_not_a_row_of_nulls(clean, tmp_path):
    # pandas read the cut-off row as nulls: within the null checks' tolerance, the batch passed
    # and cleaning dropped the row without a word.
    write_batch(clean, tmp_path)
    (tmp_path / "events.parquet").unlink()
    clean["events"].to_csv(tmp_path / "events.csv", index=False)
    lines = (tmp_path / "events.csv").read_text(encoding="utf-8").split("\n")
    lines[9] = ",".join(lines[9].split(",")[:3])  # line 10: a writer killed mid-row
    (tmp_path / "events.csv").write_text("\n".join(lines), encoding="utf-8")

    batch = read_batch(tmp_path)

    assert "events" not in batch
    [issue] = batch.issues
    assert issue.table == "events" and issue.check == "file_parseable"
    assert "1 row(s) with fewer than the header's" in issue.message and "line 10 has 3" in issue.message
