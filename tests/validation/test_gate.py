"""The blocking data gate on a clean batch and on each kind of corruption (real Great Expectations)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from components.data.schema import to_arrow
from components.validation.gate import (
    BatchNotAcceptable,
    DataValidationError,
    accept_batch,
    accepted_batch_path,
    run_validate,
    validate_dir,
)
from components.validation.report import FAILED, SKIPPED, CheckResult, ValidationReport
from components.validation.suites import FIRST_BATCH_REASON, batch_stats
from tests.validation.factories import clean_tables, copy_tables, write_batch


@pytest.fixture(scope="module")
def clean() -> dict[str, pd.DataFrame]:
    return clean_tables()


PAIR = "expect_column_pair_values_a_to_be_greater_than_b"


def failure(report: ValidationReport, table: str, expectation: str, column: str | None = None) -> CheckResult:
    """The failed check on table(.column) of that expectation type; fails the test if absent."""
    for check in report.failures:
        if check.table == table and check.expectation == expectation and check.column == column:
            return check
    listed = [f"{c.where}: {c.expectation}" for c in report.failures]
    raise AssertionError(f"no failed {expectation} on {table}.{column}; failures were {listed}\n{report.to_text()}")


def assert_rejected(report: ValidationReport, table: str, expectation: str, column: str | None = None) -> CheckResult:
    assert not report.success
    check = failure(report, table, expectation, column)
    text = report.to_text()
    # the person at the terminal sees which expectation failed, where
    assert expectation in text and (f"{table}.{column}" if column else table) in text
    assert "FAILED" in text
    return check


def test_clean_batch_passes_and_first_batch_skips_drift(cfg, clean, tmp_path):
    report = validate_dir(write_batch(clean, tmp_path / "batch"), cfg)

    assert report.success, report.to_text()
    assert report.failures == []
    assert report.evaluated > 60
    assert report.skipped and all(c.check == "drift" and c.reason == FIRST_BATCH_REASON for c in report.skipped)
    assert "first batch" in report.to_text() and "PASSED" in report.to_text()
    assert {t: s.rows for t, s in report.tables.items()} == {t: len(f) for t, f in clean.items()}
    json.dumps(report.to_dict())  # the JSON report is plain JSON


def test_batch_checked_against_its_own_reference_passes_with_drift_evaluated(cfg, clean, tmp_path):
    report = validate_dir(write_batch(clean, tmp_path / "batch"), cfg, reference=batch_stats(clean))

    assert report.success, report.to_text()
    assert report.skipped == []
    assert sum(c.check == "drift" for c in report.checks) == 9


def test_tolerated_dirt_within_mostly_passes(cfg, clean, tmp_path):
    tables = copy_tables(clean)
    products, events = tables["products"], tables["events"]
    products.loc[4, "price"] = 999_999.0  # 1 of 60 above price_max (mostly 0.98)
    products.loc[9, "price"] = None  # 1 of 60 null (mostly 0.97)
    tables["copies"].loc[2, "text"] = None  # 1 of 120
    events.loc[[5, 50], ["position", "propensity"]] = None
    # 5 replayed events: 10 of 805 rows take part in a duplicate (mostly_unique_events 0.98)
    tables["events"] = pd.concat([events, events.iloc[[1, 2, 3, 4, 6]]], ignore_index=True)

    report = validate_dir(write_batch(tables, tmp_path / "batch"), cfg)

    assert report.success, report.to_text()


def test_extra_columns_pass_with_a_note_that_names_them(cfg, clean, tmp_path):
    batch = write_batch(clean, tmp_path / "batch")
    (batch / "users.parquet").unlink()
    clean["users"].assign(email="x@example.com", loyalty_tier=1).to_csv(batch / "users.csv", index=False)

    report = validate_dir(batch, cfg)

    assert report.success, report.to_text()
    assert "Note: users: columns not in the canonical schema, not validated and not kept" in report.to_text()
    assert "email, loyalty_tier" in report.to_text()
    assert not any("products: columns" in note for note in report.notes)


def test_missing_column(cfg, clean, tmp_path):
    batch = write_batch(clean, tmp_path / "batch")
    pq.write_table(pq.read_table(batch / "events.parquet").drop(["event_type"]), batch / "events.parquet")

    report = validate_dir(batch, cfg)

    check = assert_rejected(report, "events", "expect_column_to_exist", "event_type")
    assert "missing" in check.observed
    # the checks that need the column are skipped, not reported as noise
    assert {c.expectation for c in report.skipped if c.column == "event_type"} >= {
        "expect_column_values_to_be_in_set",
        "expect_column_values_to_be_in_type_list",
    }
    order = next(c for c in report.skipped if c.expectation == PAIR)
    assert order.reason == "events.first_impression_at needs events.event_type, which failed the schema checks"
    assert len(report.failures) == 1


def test_wrong_type_in_parquet(cfg, clean, tmp_path):
    batch = write_batch(clean, tmp_path / "batch")
    arrow = to_arrow(clean["products"], "products")
    as_text = pa.array([f"{p}元" for p in clean["products"]["price"]])
    pq.write_table(arrow.set_column(arrow.schema.get_field_index("price"), "price", as_text), batch / "products.parquet")

    report = validate_dir(batch, cfg)

    check = assert_rejected(report, "products", "expect_column_values_to_be_in_type_list", "price")
    assert check.unexpected_count == len(clean["products"])
    assert check.examples and str(check.examples[0]["price"]).endswith("元")
    assert check.examples[0]["product_id"] == "p0000"


def test_wrong_type_value_in_csv(cfg, clean, tmp_path):
    batch = write_batch(clean, tmp_path / "batch")
    (batch / "events.parquet").unlink()
    events = clean["events"].astype({"position": object})
    events.loc[3, "position"] = "first"
    events.to_csv(batch / "events.csv", index=False)

    report = validate_dir(batch, cfg)

    check = assert_rejected(report, "events", "expect_column_values_to_be_in_type_list", "position")
    assert check.unexpected_count == 1
    assert check.examples[0]["row"] == 3 and check.examples[0]["position"] == "first"


def test_nulls_in_ids(cfg, clean, tmp_path):
    tables = copy_tables(clean)
    tables["copies"].loc[[1, 7], "copy_id"] = None

    report = validate_dir(write_batch(tables, tmp_path / "batch"), cfg)

    check = assert_rejected(report, "copies", "expect_column_values_to_not_be_null", "copy_id")
    assert check.unexpected_count == 2
    assert [e["row"] for e in check.examples] == [1, 7]


def test_duplicate_ids(cfg, clean, tmp_path):
    tables = copy_tables(clean)
    tables["users"].loc[5, "user_id"] = tables["users"].loc[4, "user_id"]

    report = validate_dir(write_batch(tables, tmp_path / "batch"), cfg)

    check = assert_rejected(report, "users", "expect_column_values_to_be_unique", "user_id")
    assert {e["user_id"] for e in check.examples} == {"u0004"} and len(check.examples) == 2
    # the report is published: a shopper's quasi-identifiers are not in it, only the id and the failing column
    assert all(set(e) == {"row", "user_id"} for e in check.examples), check.examples


def test_negative_price_fails_even_once(cfg, clean, tmp_path):
    tables = copy_tables(clean)
    tables["products"].loc[12, "price"] = -0.01  # 1 of 60: within any `mostly`, still never OK

    report = validate_dir(write_batch(tables, tmp_path / "batch"), cfg)

    check = assert_rejected(report, "products", "expect_column_values_to_be_between", "price")
    assert "never negative" in check.description
    assert check.examples[0]["price"] == -0.01 and check.examples[0]["product_id"] == "p0012"


def test_prices_all_zero_fail_the_range_and_an_infinite_or_negative_value_fails_even_once(cfg, clean, tmp_path):
    """Cleaning would null every zero price (below cleaning.price_min), so a batch of them is
    rejected here, not quietly stripped of prices; one inf purchase value would poison the
    running spend features downstream, and so would an absurd finite one."""
    tables = copy_tables(clean)
    tables["products"]["price"] = 0.0
    events = tables["events"]
    buys = events.index[events["event_type"] == "purchase"]
    events.loc[buys[0], "value"] = float("inf")
    events.loc[buys[1], "value"] = -3.0
    events.loc[buys[2], "value"] = 1e308  # finite, but no purchase is worth it

    report = validate_dir(write_batch(tables, tmp_path / "batch"), cfg)

    check = assert_rejected(report, "products", "expect_column_values_to_be_between", "price")
    assert "price_min..price_max" in check.description and "1 <= value" in report.to_text()
    value = failure(report, "events", "expect_column_values_to_be_between", "value")
    assert "validation.max_event_value" in value.description
    assert {str(e["value"]) for e in value.examples} == {"-3.0", "inf", "1e+308"}


def test_future_timestamps(cfg, clean, tmp_path):
    tables = copy_tables(clean)
    future = pd.Timestamp.now(tz="UTC") + pd.Timedelta(hours=cfg.validation.max_timestamp_skew_hours + 24)
    tables["events"].loc[[20, 21], "timestamp"] = future
    tables["users"].loc[3, "signup_date"] = future

    report = validate_dir(write_batch(tables, tmp_path / "batch"), cfg)

    events_check = assert_rejected(report, "events", "expect_column_values_to_be_between", "timestamp")
    assert events_check.unexpected_count == 2 and [e["row"] for e in events_check.examples] == [20, 21]
    assert failure(report, "users", "expect_column_values_to_be_between", "signup_date").unexpected_count == 1


def clicks_answering_impressions(clean: dict[str, pd.DataFrame], n: int = 200) -> dict[str, pd.DataFrame]:
    """The clean batch plus a click five minutes after each of its first `n` impressions."""
    tables = copy_tables(clean)
    events = tables["events"]
    clicks = events[events["event_type"] == "impression"].head(n).copy()
    clicks["event_id"] = [f"k{i:06d}" for i in range(len(clicks))]
    clicks["event_type"] = "click"
    clicks["timestamp"] += pd.Timedelta(minutes=5)
    tables["events"] = pd.concat([events, clicks], ignore_index=True)
    return tables


def test_timestamps_in_the_wrong_time_zone_put_clicks_before_their_impressions(cfg, clean, tmp_path):
    tables = clicks_answering_impressions(clean)
    events = tables["events"]
    # Half of the rows were logged in Beijing wall-clock time but labelled UTC: eight hours late.
    shifted = events.sample(frac=0.5, random_state=3).index
    events.loc[shifted, "timestamp"] += pd.Timedelta(hours=8)

    report = validate_dir(write_batch(tables, tmp_path / "batch"), cfg)

    check = assert_rejected(report, "events", PAIR, "timestamp")
    assert check.unexpected_count > 20
    assert "have timestamp before first_impression_at" in check.observed
    example = check.examples[0]
    assert example["event_type"] != "impression" and example["timestamp"] < example["first_impression_at"]
    assert "first_impression_at" in report.to_text()
    # the derived column is for the checks only: it is not part of the drift reference
    assert "first_impression_at" not in json.dumps(report.batch_stats)


def test_a_few_events_logged_before_their_impression_are_tolerated(cfg, clean, tmp_path):
    tables = clicks_answering_impressions(clean)
    events = tables["events"]
    late = events.index[events["event_id"] == "k000000"]
    events.loc[late, "timestamp"] -= pd.Timedelta(hours=1)  # 1 of 200+ (mostly_after_impression 0.99)

    report = validate_dir(write_batch(tables, tmp_path / "batch"), cfg)

    assert report.success, report.to_text()
    check = next(c for c in report.checks if c.expectation == PAIR)
    assert check.unexpected_count == 1 and check.element_count > 200


def test_clicks_with_no_impression_at_all_are_a_click_bot_or_a_broken_join(cfg, clean, tmp_path):
    tables = copy_tables(clean)
    events = tables["events"]
    # 300 clicks on two products one second apart, from a shopper shown neither of them
    bot = pd.DataFrame({
        "event_id": [f"bot{i:05d}" for i in range(300)], "user_id": "u0001", "product_id": ["p0058", "p0059"] * 150,
        "copy_id": ["c0116", "c0118"] * 150, "event_type": "click",
        "timestamp": pd.Timestamp("2026-01-20", tz="UTC") + pd.to_timedelta(range(300), unit="s"),
        "position": pd.array([1] * 300, dtype="Int32"), "propensity": 0.5, "value": 0.0,
    })
    shown = events[(events["event_type"] == "impression") & (events["user_id"] == "u0001")]
    assert not shown["product_id"].isin(["p0058", "p0059"]).any()
    tables["events"] = pd.concat([events, bot], ignore_index=True)

    report = validate_dir(write_batch(tables, tmp_path / "batch"), cfg)

    check = assert_rejected(report, "events", "expect_column_values_to_not_be_null", "first_impression_at")
    assert check.unexpected_count == 300
    # the before-the-impression check cannot see them: it needs an impression to compare with
    assert PAIR not in {c.expectation for c in report.failures}


def test_an_impression_needs_its_slot_and_copy_an_outcome_does_not(cfg, clean, tmp_path):
    tables = copy_tables(clean)
    events = tables["events"]
    outcome = events["event_type"] != "impression"
    events.loc[outcome, ["position", "propensity", "copy_id"]] = None  # a purchase rarely knows its slot

    report = validate_dir(write_batch(tables, tmp_path / "outcomes"), cfg)

    assert report.success, report.to_text()
    impressions = events.index[~outcome]
    events.loc[impressions[: len(impressions) // 10], "copy_id"] = None  # 10% of impressions: which copy?
    report = validate_dir(write_batch(tables, tmp_path / "impressions"), cfg)
    check = assert_rejected(report, "events", "expect_column_values_to_not_be_null", "copy_id")
    assert check.unexpected_count == len(impressions) // 10 and "impression" in report.to_text()


def test_purchase_values_in_cents_are_drift(cfg, clean, tmp_path):
    """Every event but a purchase has value 0, so the median over all events was 0 and could
    never move; the check compares the median purchase value."""
    tables = copy_tables(clean)
    events = tables["events"]
    purchases = events["event_type"] == "purchase"
    events.loc[purchases, "value"] = (events.loc[purchases, "value"] * 100).clip(upper=cfg.validation.max_event_value)

    report = validate_dir(write_batch(tables, tmp_path / "batch"), cfg, reference=batch_stats(clean))

    check = assert_rejected(report, "events", "expect_column_median_to_be_between", "value")
    assert check.check == "drift" and len(report.failures) == 1


def test_timestamps_before_2000(cfg, clean, tmp_path):
    tables = copy_tables(clean)
    tables["events"].loc[0, "timestamp"] = pd.Timestamp("1970-01-01", tz="UTC")

    report = validate_dir(write_batch(tables, tmp_path / "batch"), cfg)

    assert assert_rejected(report, "events", "expect_column_values_to_be_between", "timestamp").unexpected_count == 1


def test_dangling_foreign_keys(cfg, clean, tmp_path):
    tables = copy_tables(clean)
    tables["events"].loc[[2, 9], "product_id"] = "p-ghost"
    tables["events"].loc[4, "user_id"] = "u-ghost"
    tables["events"].loc[6, "copy_id"] = "c-ghost"
    tables["copies"].loc[0, "product_id"] = "p-gone"

    report = validate_dir(write_batch(tables, tmp_path / "batch"), cfg)

    check = assert_rejected(report, "events", "expect_column_values_to_be_in_set", "product_id")
    assert check.unexpected_count == 2 and {e["product_id"] for e in check.examples} == {"p-ghost"}
    assert "products" in check.description
    assert failure(report, "events", "expect_column_values_to_be_in_set", "user_id").examples[0]["user_id"] == "u-ghost"
    assert failure(report, "events", "expect_column_values_to_be_in_set", "copy_id").unexpected_count == 1
    assert failure(report, "copies", "expect_column_values_to_be_in_set", "product_id").unexpected_count == 1


@pytest.mark.parametrize("kind", ["zero_bytes", "header_only_csv"])
def test_empty_file(cfg, clean, tmp_path, kind):
    batch = write_batch(clean, tmp_path / "batch")
    (batch / "events.parquet").unlink()
    if kind == "zero_bytes":
        (batch / "events.parquet").write_bytes(b"")
    else:
        clean["events"].head(0).to_csv(batch / "events.csv", index=False)

    report = validate_dir(batch, cfg)

    if kind == "zero_bytes":
        check = assert_rejected(report, "events", "file_not_empty")
        assert "empty" in check.observed and "events.parquet" in check.observed
    else:
        assert_rejected(report, "events", "expect_table_row_count_to_be_between")
        assert any(c.reason == "events has no rows" for c in report.skipped)
    # the other tables are still validated
    assert report.table_counts("products")["evaluated"] > 10 and report.table_counts("products")["failed"] == 0


def test_non_utf8_file(cfg, clean, tmp_path):
    batch = write_batch(clean, tmp_path / "batch")
    (batch / "users.parquet").unlink()
    users = clean["users"].assign(city_tier="一线城市")
    (batch / "users.csv").write_bytes(users.to_csv(index=False).encode("gbk"))

    report = validate_dir(batch, cfg)

    check = assert_rejected(report, "users", "utf8_encoding")
    assert "not UTF-8" in check.observed and "line 2" in check.observed and "users.csv" in check.observed
    assert check.examples[0]["line"] == 2
    # events.user_id cannot be checked against an unreadable users table: skipped, with the reason
    skipped = [c for c in report.skipped if c.where == "events.user_id"]
    assert skipped and "users could not be read" in skipped[0].reason
    assert report.table_counts("events")["evaluated"] > 20


@pytest.mark.parametrize("kind", ["event_type_mix_flipped", "row_count_x10"])
def test_sharp_drift_against_accepted_reference(cfg, clean, tmp_path, kind):
    tables = copy_tables(clean)
    events = tables["events"]
    if kind == "event_type_mix_flipped":
        events["event_type"] = events["event_type"].replace({"impression": "click", "click": "impression"})
    else:
        events = pd.concat([events] * 10, ignore_index=True)
        events["event_id"] = [f"e{i:07d}" for i in range(len(events))]
        tables["events"] = events

    report = validate_dir(write_batch(tables, tmp_path / "batch"), cfg, reference=batch_stats(clean))

    if kind == "event_type_mix_flipped":
        check = assert_rejected(report, "events", "expect_column_kl_divergence_to_be_less_than", "event_type")
        assert "impression" in next(iter(check.details.values()))
    else:
        check = assert_rejected(report, "events", "expect_table_row_count_to_be_between")
        assert check.observed == f"{10 * len(clean['events']):,} rows"
    assert check.check == "drift"
    # a flipped log also has its former impressions (now clicks) before the former clicks
    # and clicks of which no impression was logged at all
    also = {PAIR, "expect_column_values_to_not_be_null"} if kind == "event_type_mix_flipped" else set()
    assert sorted(c.expectation for c in report.failures) == sorted({check.expectation} | also)


def test_price_drift_against_accepted_reference(cfg, clean, tmp_path):
    tables = copy_tables(clean)
    tables["products"]["price"] = tables["products"]["price"] * 3  # same shape, prices tripled

    report = validate_dir(write_batch(tables, tmp_path / "batch"), cfg, reference=batch_stats(clean))

    assert assert_rejected(report, "products", "expect_column_median_to_be_between", "price").check == "drift"


def test_price_outliers_in_the_reference_do_not_set_the_drift_bounds(cfg, clean, tmp_path):
    """The reference is the raw accepted batch, outliers and all. A few 999999 prices (within
    `mostly`, removed by cleaning) moved its mean tenfold, so a cleaner next batch was rejected
    as drift; the median does not move."""
    dirty = copy_tables(clean)
    dirty["products"].loc[4, "price"] = 999_999.0
    assert batch_stats(dirty)["tables"]["products"]["means"] == {}  # the price check is on medians now

    report = validate_dir(write_batch(clean, tmp_path / "batch"), cfg, reference=batch_stats(dirty))

    assert report.success, report.to_text()
    median = [c for c in report.checks if c.expectation == "expect_column_median_to_be_between" and c.column == "price"]
    assert len(median) == 1 and median[0] not in report.skipped  # evaluated, and passed


def test_run_validate_gates_and_only_a_passing_batch_becomes_the_reference(make_cfg, clean):
    cfg = make_cfg()
    ingested, out = cfg.stage_dir("ingested"), cfg.stage_dir("validation")
    reference = accepted_batch_path(cfg)

    # 1. a bad first batch: rejected, report written anyway, no reference created
    bad = copy_tables(clean)
    bad["products"].loc[3, "price"] = -5.0
    write_batch(bad, ingested)
    with pytest.raises(DataValidationError) as rejected:
        run_validate(cfg)
    assert "products.price: expect_column_values_to_be_between" in str(rejected.value)
    assert rejected.value.report_path == out / "report.md" and not rejected.value.report.success
    assert {p.name for p in out.iterdir()} >= {"report.md", "report.json", "summary.json"}
    assert json.loads((out / "summary.json").read_text())["success"] is False
    assert "expect_column_values_to_be_between" in (out / "report.md").read_text()
    assert not reference.exists()

    # 2. a clean batch passes and becomes the reference
    write_batch(clean, ingested)
    summary = run_validate(cfg)
    assert summary["success"] is True and summary["failed_expectations"] == 0
    assert summary["evaluated_expectations"] > 60 and summary["drift_checked"] is False
    saved = json.loads(reference.read_text())
    assert saved["tables"]["events"]["rows"] == len(clean["events"])
    assert json.loads((out / "summary.json").read_text())["success"] is True

    # 3. a drifted batch is compared with that reference by default, rejected, reference untouched
    before = reference.read_bytes()
    drifted = copy_tables(clean)
    drifted["users"] = pd.concat([drifted["users"]] * 3, ignore_index=True)
    drifted["users"]["user_id"] = [f"u{i:04d}" for i in range(len(drifted["users"]))]
    write_batch(drifted, ingested)
    with pytest.raises(DataValidationError, match="users: expect_table_row_count_to_be_between"):
        run_validate(cfg)
    assert reference.read_bytes() == before
    assert json.loads((out / "report.json").read_text())["drift_checked"] is True

    # 4. a person judges that change real: the batch becomes the reference by hand, and passes
    accepted = accept_batch(cfg, actor="ops")
    saved = json.loads(reference.read_text())
    assert saved["tables"]["users"]["rows"] == 3 * len(clean["users"]) and saved["accepted_by"] == "ops"
    assert accepted["replaced_reference_of"] == json.loads(before)["accepted_at"]
    assert run_validate(cfg)["drift_checked"] is True

    # 5. drift can be accepted, nothing else: a broken batch leaves the reference alone
    before = reference.read_bytes()
    broken = copy_tables(drifted)
    broken["products"].loc[3, "price"] = -5.0
    write_batch(broken, ingested)
    with pytest.raises(BatchNotAcceptable, match="products.price: expect_column_values_to_be_between"):
        accept_batch(cfg, actor="ops")
    assert reference.read_bytes() == before


def test_corrupt_reference_file_is_a_readable_failure(cfg, clean, tmp_path):
    accepted_batch_path(cfg).parent.mkdir(parents=True, exist_ok=True)
    accepted_batch_path(cfg).write_text("{not json", encoding="utf-8")

    report = validate_dir(write_batch(clean, tmp_path / "batch"), cfg)

    check = assert_rejected(report, "(reference)", "accepted_batch_readable")
    assert "delete it" in check.observed
    assert all(c.status != FAILED for c in report.checks if c.table != "(reference)")
    assert any(c.status == SKIPPED for c in report.checks)


def test_missing_table_and_missing_directory(cfg, clean, tmp_path):
    batch = write_batch(clean, tmp_path / "batch")
    (batch / "copies.parquet").unlink()

    report = validate_dir(batch, cfg)

    assert "copies" in assert_rejected(report, "copies", "table_file_exists").observed
    assert any(c.where == "events.copy_id" and "copies could not be read" in c.reason for c in report.skipped)

    nowhere = validate_dir(tmp_path / "does-not-exist", cfg)
    assert not nowhere.success and len(nowhere.failures) == 4
    assert Path(nowhere.data_dir).name == "does-not-exist"


def test_clean_runs_only_on_the_batch_the_gate_accepted(make_cfg, clean):
    """`copyflow stage clean` by hand: refused on a never validated, rejected or since changed
    batch (DVC and the retrain flow stop at the gate by themselves)."""
    from components.pipeline import run_stage
    from components.validation.gate import BatchNotAccepted

    cfg = make_cfg()
    ingested = cfg.stage_dir("ingested")
    write_batch(clean, ingested)
    with pytest.raises(BatchNotAccepted, match="has not been validated"):
        run_stage("clean", cfg)
    bad = copy_tables(clean)
    bad["products"].loc[3, "price"] = -5.0
    write_batch(bad, ingested)
    with pytest.raises(DataValidationError):
        run_validate(cfg)
    with pytest.raises(BatchNotAccepted, match="the data gate rejected the batch"):
        run_stage("clean", cfg)
    assert not cfg.stage_dir("clean").exists()

    write_batch(clean, ingested)
    run_validate(cfg)
    write_batch(bad, ingested)  # re-ingested after the verdict
    with pytest.raises(BatchNotAccepted, match="changed since the data gate accepted it"):
        run_stage("clean", cfg)
    write_batch(clean, ingested)
    assert run_stage("clean", cfg)["rows_before"]["products"] == len(clean["products"])
