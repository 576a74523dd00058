"""The suite files in expectations/ and the run-time parameters and reference statistics."""

from __future__ import annotations

import json
import math

import pytest

from components.data.schema import ID_COLUMNS, SCHEMAS, TABLES
from components.validation.suites import (
    FIRST_BATCH_REASON,
    SuiteError,
    batch_stats,
    build_suite,
    check_of,
    config_parameters,
    drift_parameters,
    load_suite_dict,
    parameter_names,
    suites_dir,
    validate_suite_files,
)
from tests.validation.factories import clean_tables


@pytest.fixture(scope="module")
def suites(cfg_module) -> dict[str, dict]:
    return {t: load_suite_dict(suites_dir(cfg_module), t) for t in TABLES}


@pytest.fixture(scope="module")
def cfg_module():
    from components.config import load_config
    from tests.conftest import PARAMS

    return load_config(PARAMS, "quick")


def test_every_suite_loads_through_great_expectations_without_losing_an_expectation(cfg_module, suites):
    counts = validate_suite_files(suites_dir(cfg_module))
    assert counts == {t: len(suites[t]["expectations"]) for t in TABLES}


def test_an_invalid_expectation_is_an_error_not_silently_dropped():
    bad = {"type": "expect_column_values_to_be_between", "kwargs": {"column": "price", "mostly": 7}}
    with pytest.raises(SuiteError, match="expectation #0 is invalid"):
        build_suite({}, "broken", [bad])


def test_suites_cover_schema_ids_and_references(suites):
    for table in TABLES:
        expectations = suites[table]["expectations"]
        schema = [e for e in expectations if check_of(e) == "schema"]
        for field in SCHEMAS[table]:
            kinds = {e["type"] for e in schema if e["kwargs"].get("column") == field.name}
            assert "expect_column_to_exist" in kinds, (table, field.name)
            assert kinds & {"expect_column_values_to_be_in_type_list", "expect_column_values_to_be_of_type"}, (table, field.name)
        id_checks = {e["type"]: e["kwargs"] for e in expectations if e["kwargs"].get("column") == ID_COLUMNS[table] and check_of(e) != "schema"}
        assert "mostly" not in id_checks["expect_column_values_to_not_be_null"]  # ids are never null
        assert "expect_column_values_to_be_unique" in id_checks
    references = {
        (t, e["kwargs"]["column"]): e["kwargs"]["value_set"]
        for t in TABLES
        for e in suites[t]["expectations"]
        if check_of(e) == "referential"
    }
    assert references == {
        ("events", "user_id"): {"$PARAMETER": "user_ids"},
        ("events", "product_id"): {"$PARAMETER": "product_ids"},
        ("events", "copy_id"): {"$PARAMETER": "copy_ids"},
        ("copies", "product_id"): {"$PARAMETER": "product_ids"},
    }


def test_config_fills_every_non_batch_parameter(cfg_module, suites):
    provided = set(config_parameters(cfg_module))
    batch_provided = {"product_ids", "user_ids", "copy_ids"}
    for table in TABLES:
        for expectation in suites[table]["expectations"]:
            if check_of(expectation) == "drift":
                continue
            missing = parameter_names(expectation["kwargs"]) - provided - batch_provided
            assert not missing, (table, expectation["type"], missing)


def test_batch_stats_and_drift_bounds(cfg_module, suites):
    tables = clean_tables(n_products=12, n_users=6, n_events=40)
    stats = batch_stats(tables, suites_dir(cfg_module))
    json.dumps(stats)

    events = stats["tables"]["events"]
    assert events["rows"] == 40
    # the purchase value's median is over purchases: every other event's value is 0
    assert set(events["means"]) == {"position"} and set(events["medians"]) == {'value where event_type == "purchase"'}
    assert set(stats["tables"]["products"]["medians"]) == {"price"}
    assert math.isclose(sum(events["distributions"]["event_type"]["weights"]), 1.0)
    assert set(stats["tables"]["products"]["distributions"]) == {"category"}

    first = drift_parameters("events", suites["events"]["expectations"], None, cfg_module)
    assert first.values == {} and set(first.unavailable.values()) == {FIRST_BATCH_REASON}

    drift = cfg_module.validation.drift
    bounds = drift_parameters("events", suites["events"]["expectations"], stats, cfg_module).values
    assert bounds["row_count_min"] == math.ceil(40 * drift.row_count_ratio_min)
    assert bounds["row_count_max"] == math.floor(40 * drift.row_count_ratio_max)
    mean = events["means"]["position"]
    assert math.isclose(bounds["position_mean_max"], mean * (1 + drift.mean_tolerance))
    median = events["medians"]['value where event_type == "purchase"']
    purchases = tables["events"].loc[tables["events"]["event_type"] == "purchase", "value"]
    assert median == purchases.median() > 0
    assert math.isclose(bounds["value_median_min"], median * (1 - drift.mean_tolerance))
    # a reference from before the row condition has only the all-events median: skipped, saying why
    old = {**stats, "tables": {**stats["tables"], "events": {**events, "medians": {"value": 0.0}}}}
    skipped = drift_parameters("events", suites["events"]["expectations"], old, cfg_module)
    assert "value_median_min" not in skipped.values
    assert skipped.unavailable["value_median_min"] == 'the accepted batch has no median for events.value where event_type == "purchase"'
    assert bounds["event_type_partition"] == events["distributions"]["event_type"]
