"""The expectation suites (expectations/<table>.json) and the run-time values they refer to.

A suite value written as {"$PARAMETER": name} is filled when validation runs:
  - from params.yaml: mostly_* shares, price_min / price_max, timestamp_min / timestamp_max;
  - from the other tables of the same batch: product_ids, user_ids, copy_ids (referential integrity);
  - from the last accepted batch (expectations with meta.check == "drift"): row_count_min/max,
    <column>_mean_min/max, <column>_partition, kl_threshold. A centre is taken over the rows the
    expectation's row_condition selects, in the reference as in the batch checked.
A parameter that cannot be filled (no accepted batch yet, an unreadable referenced table) skips
the expectations that need it, and the report says why.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from components.config import Config
from components.data.schema import TABLES

if TYPE_CHECKING:
    from great_expectations.core import ExpectationSuite

PROJECT_ROOT = Path(__file__).resolve().parents[2]
STATS_VERSION = 3  # 2: medians; 3: centres over a check's row_condition (an older reference lacks them: skipped, saying why)
# Drift checks on a column's centre: expectation type -> the reference statistic it compares with.
CENTRE_STATS = {"expect_column_mean_to_be_between": "means", "expect_column_median_to_be_between": "medians"}

# Which batch table/column fills each referential-integrity parameter.
ID_SETS: dict[str, tuple[str, str]] = {
    "product_ids": ("products", "product_id"),
    "user_ids": ("users", "user_id"),
    "copy_ids": ("copies", "copy_id"),
}
FIRST_BATCH_REASON = "no accepted batch yet (first batch): nothing to compare against"
SCHEMA_CHECK = "schema"
DRIFT_CHECK = "drift"


class SuiteError(ValueError):
    """A suite file is missing or is not a valid Great Expectations suite."""


def suites_dir(cfg: Config) -> Path:
    """validation.suites_dir; a relative path is relative to the project root (suites ship with the code)."""
    path = Path(cfg.validation.suites_dir)
    return path if path.is_absolute() else PROJECT_ROOT / path


def load_suite_dict(directory: Path, table: str) -> dict[str, Any]:
    path = directory / f"{table}.json"
    if not path.exists():
        raise SuiteError(f"expectation suite for {table!r} not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SuiteError(f"expectation suite {path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("expectations"), list):
        raise SuiteError(f"expectation suite {path} has no 'expectations' list")
    return data


def build_suite(data: dict[str, Any], name: str, expectations: list[dict[str, Any]]) -> ExpectationSuite:
    """A Great Expectations suite from (a subset of) a suite file's expectation configurations."""
    import great_expectations as gx

    fields = {k: v for k, v in data.items() if k in ("meta", "notes", "suite_parameters")}
    for position, expectation in enumerate(expectations):
        # GE either raises or logs-and-drops an invalid configuration; a dropped check must never
        # pass silently, so each one is checked on its own first and named when it is wrong.
        try:
            accepted = gx.ExpectationSuite(name=name, expectations=[expectation]).expectations
        except Exception as exc:  # pydantic / GE configuration errors alike
            raise SuiteError(f"suite {name!r}: expectation #{position} is invalid ({exc}): {expectation}") from exc
        if len(accepted) != 1:
            raise SuiteError(f"suite {name!r}: Great Expectations rejected expectation #{position}: {expectation}")
    return gx.ExpectationSuite(name=name, expectations=expectations, **fields)


def validate_suite_files(directory: Path) -> dict[str, int]:
    """Load every suite through Great Expectations; returns expectation counts (raises SuiteError)."""
    counts = {}
    for table in TABLES:
        data = load_suite_dict(directory, table)
        counts[table] = len(build_suite(data, table, data["expectations"]).expectations)
    return counts


# ------------------------------------------------------------------------------------ parameters


def parameter_names(value: Any) -> set[str]:
    """Every {"$PARAMETER": name} referenced anywhere inside an expectation's kwargs."""
    if isinstance(value, dict):
        if set(value) == {"$PARAMETER"}:
            return {str(value["$PARAMETER"])}
        return set().union(*(parameter_names(v) for v in value.values())) if value else set()
    if isinstance(value, list):
        return set().union(*(parameter_names(v) for v in value)) if value else set()
    return set()


def check_of(expectation: dict[str, Any]) -> str:
    return str((expectation.get("meta") or {}).get("check", ""))


@dataclass
class Parameters:
    """Values for the suites' $PARAMETERs, plus why each unavailable one is missing."""

    values: dict[str, Any]
    unavailable: dict[str, str]


def config_parameters(cfg: Config, now: dt.datetime | None = None) -> dict[str, Any]:
    now = now or dt.datetime.now(dt.timezone.utc)
    latest = now + dt.timedelta(hours=cfg.validation.max_timestamp_skew_hours)
    earliest = pd.Timestamp(cfg.validation.min_timestamp)
    earliest = earliest.tz_localize("UTC") if earliest.tzinfo is None else earliest.tz_convert("UTC")
    return {
        "mostly_not_null": cfg.validation.mostly_not_null,
        "mostly_unique_events": cfg.validation.mostly_unique_events,
        "mostly_price_in_range": cfg.validation.mostly_price_in_range,
        "mostly_price_present": cfg.validation.mostly_price_present,
        "mostly_after_impression": cfg.validation.mostly_after_impression,
        "mostly_outcome_with_impression": cfg.validation.mostly_outcome_with_impression,
        "event_value_max": cfg.validation.max_event_value,
        "copies_min_rows": cfg.validation.min_copies,
        "price_min": cfg.cleaning.price_min,
        "price_max": cfg.cleaning.price_max,
        "timestamp_min": earliest.isoformat(timespec="seconds"),
        "timestamp_max": latest.isoformat(timespec="seconds"),
        "kl_threshold": cfg.validation.drift.kl_threshold,
        **({"mostly_copy_shown": cfg.validation.mostly_not_null} if cfg.validation.min_copies > 0 else {}),
    }


def config_unavailable(cfg: Config) -> dict[str, str]:
    """Parameters params.yaml leaves unset on purpose, with the reason their checks are skipped."""
    if cfg.validation.min_copies == 0:
        return {"mostly_copy_shown": "the source has no copies (validation.min_copies: 0), so impressions name none"}
    return {}


def id_set_parameters(tables: dict[str, pd.DataFrame], usable: dict[str, set[str]]) -> Parameters:
    """Id sets of the referenced tables; `usable[table]` = columns that passed their schema checks."""
    values, unavailable = {}, {}
    for name, (table, column) in ID_SETS.items():
        if table not in tables:
            unavailable[name] = f"{table} could not be read, so {table}.{column} is unknown"
        elif column not in usable.get(table, set()):
            unavailable[name] = f"{table}.{column} failed its schema checks"
        else:
            ids = tables[table][column]
            values[name] = sorted({v for v in ids if isinstance(v, str)})
    return Parameters(values, unavailable)


def drift_parameters(table: str, expectations: list[dict[str, Any]], reference: dict[str, Any] | None, cfg: Config,
                     skipped: str = "") -> Parameters:
    """Row-count, mean and distribution bounds for one table from the last accepted batch's stats
    (none, with the reason `skipped`, when drift is not to be checked)."""
    drift = cfg.validation.drift
    values: dict[str, Any] = {}
    unavailable: dict[str, str] = {}
    ref_table = ((reference or {}).get("tables") or {}).get(table)
    for expectation in expectations:
        if check_of(expectation) != DRIFT_CHECK:
            continue
        kwargs = expectation.get("kwargs", {})
        names = parameter_names(kwargs) - {"kl_threshold"}
        if skipped:
            unavailable.update({n: skipped for n in names})
            continue
        if reference is None:
            unavailable.update({n: FIRST_BATCH_REASON for n in names})
            continue
        if ref_table is None:
            unavailable.update({n: f"the accepted batch has no statistics for {table}" for n in names})
            continue
        kind = expectation["type"]
        column = kwargs.get("column")
        if kind == "expect_table_row_count_to_be_between":
            rows = int(ref_table["rows"])
            values[_param(kwargs["min_value"])] = math.ceil(rows * drift.row_count_ratio_min)
            values[_param(kwargs["max_value"])] = math.floor(rows * drift.row_count_ratio_max)
        elif kind in CENTRE_STATS:
            stat = CENTRE_STATS[kind]
            key = stat_key(column, row_filter(kwargs))
            centre = (ref_table.get(stat) or {}).get(key)
            if centre is None:
                unavailable.update({n: f"the accepted batch has no {stat[:-1]} for {table}.{key}" for n in names})
                continue
            half_width = drift.mean_tolerance * abs(centre)
            values[_param(kwargs["min_value"])] = centre - half_width
            values[_param(kwargs["max_value"])] = centre + half_width
        elif kind == "expect_column_kl_divergence_to_be_less_than":
            partition = (ref_table.get("distributions") or {}).get(column)
            if not partition or not partition.get("values"):
                unavailable.update({n: f"the accepted batch has no distribution for {table}.{column}" for n in names})
                continue
            values[_param(kwargs["partition_object"])] = partition
        else:
            unavailable.update({n: f"drift expectation type {kind} has no reference statistic" for n in names})
    return Parameters(values, unavailable)


def _param(value: Any) -> str:
    if not (isinstance(value, dict) and "$PARAMETER" in value):
        raise SuiteError(f"drift expectation value {value!r} must be a {{'$PARAMETER': name}}")
    return str(value["$PARAMETER"])


# ------------------------------------------------------------------------------ reference stats


def row_filter(kwargs: dict[str, Any]) -> str:
    """The pandas query an expectation's row_condition restricts it to ('' for every row)."""
    condition = kwargs.get("row_condition")
    if isinstance(condition, dict):
        condition = condition.get("pass_through_filter")
    condition = getattr(condition, "pass_through_filter", condition)  # GE's own condition object
    return str(condition or "")


def stat_key(column: str, condition: str) -> str:
    """How a centre is keyed in the batch statistics: a median over purchases only is not the
    median over every event, and an older reference without the condition must not stand in."""
    return f"{column} where {condition}" if condition else column


def stats_columns(directory: Path) -> dict[str, dict[str, list[tuple[str, str]]]]:
    """Which means, medians and distributions (column, row filter) the suites' drift
    expectations compare, per table."""
    wanted: dict[str, dict[str, list[tuple[str, str]]]] = {}
    for table in TABLES:
        data = load_suite_dict(directory, table)
        entry = wanted.setdefault(table, {"means": [], "medians": [], "distributions": []})
        for expectation in data["expectations"]:
            if check_of(expectation) != DRIFT_CHECK:
                continue
            kwargs = expectation.get("kwargs", {})
            column = kwargs.get("column")
            if expectation["type"] in CENTRE_STATS:
                entry[CENTRE_STATS[expectation["type"]]].append((column, row_filter(kwargs)))
            elif expectation["type"] == "expect_column_kl_divergence_to_be_less_than":
                entry["distributions"].append((column, ""))
    return wanted


def batch_stats(tables: dict[str, pd.DataFrame], directory: Path | None = None) -> dict[str, Any]:
    """Reference statistics of a batch (row counts, the drift columns' means, medians and value
    shares), each over the rows its expectation checks."""
    wanted = stats_columns(directory or PROJECT_ROOT / "expectations")
    stats: dict[str, Any] = {"version": STATS_VERSION, "tables": {}}
    for table, frame in tables.items():
        entry: dict[str, Any] = {"rows": int(len(frame)), "means": {}, "medians": {}, "distributions": {}}
        for stat in ("means", "medians"):
            for column, condition in wanted.get(table, {}).get(stat, []):
                if column not in frame.columns:
                    continue
                rows = _rows_where(frame, condition)
                numbers = pd.to_numeric(rows[column], errors="coerce") if rows is not None else pd.Series(dtype=float)
                centre = numbers.mean() if stat == "means" else numbers.median()
                entry[stat][stat_key(column, condition)] = None if pd.isna(centre) else float(centre)
        for column, _ in wanted.get(table, {}).get("distributions", []):
            if column in frame.columns:
                shares = frame[column].dropna().astype(str).value_counts(normalize=True).sort_index()
                entry["distributions"][column] = {
                    "values": shares.index.tolist(),
                    "weights": _normalized([float(w) for w in shares.to_numpy()]),
                }
        stats["tables"][table] = entry
    return stats


def _rows_where(frame: pd.DataFrame, condition: str) -> pd.DataFrame | None:
    """The rows a row_condition selects (None where the batch cannot be filtered, e.g. a column
    the condition names failed its schema checks: no centre, so the next batch skips the check)."""
    if not condition:
        return frame
    try:
        return frame.query(condition, engine="python")
    except Exception:  # noqa: BLE001 - pandas raises many types for a bad column; the check reports it
        return None


def _normalized(weights: list[float]) -> list[float]:
    """Shares that sum to 1 exactly enough for GE's partition check (it uses np.allclose)."""
    total = sum(weights)
    return [w / total for w in weights] if total else weights
