"""Rendering the gate's verdict for a terminal, for Markdown (MLflow) and as JSON."""

from __future__ import annotations

import json
import math

import pandas as pd

from components.validation.report import (
    FAILED,
    PASSED,
    SKIPPED,
    CheckResult,
    TableSummary,
    ValidationReport,
    example_rows,
    failures_section,
)
from components.validation.suites import FIRST_BATCH_REASON


FRAME = pd.DataFrame(
    {"product_id": ["p1", "p2"], "category": ["连衣裙", "上衣"], "price": [-3.5, math.nan], "attributes": [{"颜色": ["白色"]}, None]}
)


def make_report() -> ValidationReport:
    failure = CheckResult(
        table="products",
        expectation="expect_column_values_to_be_between",
        column="price",
        check="range",
        status=FAILED,
        description="products.price is never negative",
        expected="0 <= value for every row",
        observed="1 of 2 rows (50.00% of non-null values) break the rule; e.g. -3.5",
        unexpected_count=1,
        element_count=2,
        examples=example_rows(FRAME, [0], leading=("product_id", "price")),
    )
    return ValidationReport(
        success=False,
        data_dir="artifacts/quick/ingested",
        started_at="2026-01-01T00:00:00+00:00",
        duration_s=1.25,
        tables={"products": TableSummary("products", "artifacts/quick/ingested/products.parquet", "parquet", 2)},
        checks=[
            failure,
            CheckResult("products", "expect_column_to_exist", "price", "schema", PASSED, observed="present"),
            CheckResult("products", "expect_column_mean_to_be_between", "price", "drift", SKIPPED, reason=FIRST_BATCH_REASON),
            CheckResult("products", "expect_column_values_to_be_in_set", "source", "set", SKIPPED, reason="products.source failed its schema checks"),
        ],
        notes=["Drift not checked: first batch."],
    )


def test_example_rows_put_id_and_failing_column_first_and_are_json_safe():
    rows = example_rows(FRAME, [0, 1, 99], leading=("product_id", "price"))
    assert [r["row"] for r in rows] == [0, 1]
    assert list(rows[0])[:3] == ["row", "product_id", "price"]
    assert rows[1]["price"] is None and rows[1]["attributes"] is None
    json.dumps(rows, ensure_ascii=False)


def test_text_report_names_the_failure_rule_observation_and_bad_rows():
    text = make_report().to_text()

    assert "Data validation FAILED: 1 of 2 checks failed, 2 skipped" in text
    assert "[FAIL 1/1] products.price  --  expect_column_values_to_be_between" in text
    assert "never negative" in text and "e.g. -3.5" in text
    assert "bad rows (first 1 of 1):" in text
    assert "连衣裙" in text and "p1" in text
    # first-batch drift skips are summed up by the note; other skips are listed with their reason
    assert "products.source failed its schema checks" in text
    assert FIRST_BATCH_REASON not in text
    assert text.rstrip().endswith("fix the data and re-run.")


def test_markdown_and_json_reports():
    report = make_report()
    markdown = report.to_markdown()
    assert markdown.startswith("# Data validation report: FAILED")
    assert "| products | `artifacts/quick/ingested/products.parquet` | 2 | 2 | 1 | 2 |" in markdown
    assert "### 1. `products.price` — `expect_column_values_to_be_between`" in markdown
    assert "| row | product_id | price | category | attributes |" in markdown

    data = json.loads(report.to_json())
    assert data["success"] is False and data["failed_expectations"] == 1 and data["skipped_expectations"] == 2
    assert data["failures"][0]["examples"][0]["price"] == -3.5
    assert data["failed"] == ["products.price: expect_column_values_to_be_between"]
    assert report.summary()["drift_checked"] is False


def test_failures_section_is_what_a_person_acts_on():
    markdown = make_report().to_markdown()

    section = failures_section(markdown)

    assert section.startswith("## Failures") and "products.price is never negative" in section
    assert "| 0 | p1 | -3.5 |" in section  # the bad rows come with it
    assert "## Skipped checks" not in section and "## All checks" not in section
    assert failures_section(make_passing_markdown()) == ""


def make_passing_markdown() -> str:
    report = make_report()
    report.success, report.checks = True, [c for c in report.checks if c.status != FAILED]
    return report.to_markdown()
