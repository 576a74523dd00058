"""The blocking data gate: run the Great Expectations suites in expectations/ over a batch.

`validate_dir(data_dir, cfg)` -> `ValidationReport` (never raises for bad data: every problem is
a failed check in the report). `run_validate(cfg)` is the pipeline stage: it validates the
ingested batch, always writes the report, and raises `DataValidationError` when the batch fails,
so nothing downstream runs on it. Only a batch that passes becomes the drift reference
(state/<profile>/accepted_batch.json) for the next one.

Per table, validation runs in two passes of the same suite file: first the schema checks (columns
present, value types, not empty); then every other check, leaving out the ones whose column
failed the schema pass (they would only repeat the same problem as noise) and the ones whose
run-time parameters are unavailable (for example drift checks on the very first batch).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components.config import Config
from components.data.schema import ID_COLUMNS, SCHEMAS, TABLES, tables_sha256
from components.validation.derived import derived_columns, unavailable_reason, with_derived_columns
from components.validation.reader import Batch, ReadIssue, read_batch
from components.validation.report import (
    FAILED,
    MAX_EXAMPLES,
    PASSED,
    SKIPPED,
    CheckResult,
    TableSummary,
    ValidationReport,
    example_rows,
    list_failed,
)
from components.validation.suites import (
    FIRST_BATCH_REASON,
    SCHEMA_CHECK,
    batch_stats,
    build_suite,
    check_of,
    config_parameters,
    config_unavailable,
    drift_parameters,
    id_set_parameters,
    load_suite_dict,
    parameter_names,
    row_filter,
    suites_dir,
)

ACCEPTED_BATCH_FILE = "accepted_batch.json"
# Row indices of up to MAX_EXAMPLES bad rows come back with each failed row-level expectation.
RESULT_FORMAT = {"result_format": "SUMMARY", "partial_unexpected_count": MAX_EXAMPLES}


class DataValidationError(RuntimeError):
    """The batch failed the data gate; carries the report and where it was written."""

    def __init__(self, report: ValidationReport, report_path: Path) -> None:
        self.report = report
        self.report_path = report_path
        failed = report.summary()["failed"]
        super().__init__(
            f"data validation failed for {report.data_dir}: {len(failed)} of {report.evaluated} checks failed "
            f"({list_failed(failed)}). Full report: {report_path}"
        )


class BatchNotAccepted(RuntimeError):
    """A stage after the gate was asked to run on a batch the gate did not accept."""


def require_accepted_batch(cfg: Config) -> dict[str, Any]:
    """The gate's summary, if it accepted exactly the ingested batch now on disk; else raise.

    DVC and the retrain flow stop at a failed gate by themselves; this stops a stage run by hand
    (`copyflow stage clean`) on a rejected, never validated or since re-ingested batch."""
    ingested = cfg.stage_dir("ingested")
    summary_path = cfg.stage_dir("validation") / "summary.json"
    if not summary_path.exists():
        raise BatchNotAccepted(f"{ingested} has not been validated: run `copyflow stage validate` first")
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    if not summary.get("success"):
        raise BatchNotAccepted(f"the data gate rejected the batch in {ingested}; nothing downstream runs. Report: {summary.get('report')}")
    if summary.get("data_sha256") != tables_sha256(ingested):
        raise BatchNotAccepted(f"{ingested} changed since the data gate accepted it: run `copyflow stage validate` again")
    return summary


def accepted_batch_path(cfg: Config) -> Path:
    return cfg.state_dir() / ACCEPTED_BATCH_FILE


# ------------------------------------------------------------------------------- the stage


def run_validate(cfg: Config) -> dict[str, Any]:
    """Pipeline stage: validate artifacts/<p>/ingested, write artifacts/<p>/validation/, gate."""
    report = validate_dir(cfg.stage_dir("ingested"), cfg)
    out_dir = cfg.stage_dir("validation")
    reference_path = accepted_batch_path(cfg)
    summary = {
        **report.summary(),
        "data_sha256": tables_sha256(cfg.stage_dir("ingested")),
        "report": str(out_dir / "report.md"),
        "accepted_batch": str(reference_path) if report.success else None,
    }
    paths = write_report(report, out_dir, summary)
    if not report.success:
        raise DataValidationError(report, paths["report.md"])
    save_reference(cfg, report)
    return summary


def save_reference(cfg: Config, report: ValidationReport, **note: Any) -> Path:
    """Make this passing batch the drift reference of the next one (`note`: how it was accepted)."""
    path = accepted_batch_path(cfg)
    accepted = {**report.batch_stats, "accepted_at": report.started_at, "data_dir": report.data_dir, **note}
    atomic_write_text(path, json.dumps(accepted, indent=2, ensure_ascii=False))
    return path


ACCEPT_REASON = "not checked: this batch is being accepted as the new drift reference (copyflow accept-batch)"


class BatchNotAcceptable(RuntimeError):
    """Checks other than drift fail: accepting the batch by hand would not make it valid."""

    def __init__(self, report: ValidationReport) -> None:
        self.report = report
        failed = report.summary()["failed"]
        super().__init__(f"{len(failed)} check(s) other than drift fail, so the batch cannot be accepted: {list_failed(failed)}")


def accept_batch(cfg: Config, actor: str) -> dict[str, Any]:
    """Make the ingested batch the drift reference after a person has judged its drift real (a
    new season, a bigger catalog, a feedback log that grew): without this, a batch that changed
    for good fails the drift checks on every retrain. Every other check must still pass; drift
    is not checked against the old reference. The next `validate` (retrain) then runs as usual,
    against this batch. Returns what was accepted; raises BatchNotAcceptable."""
    ingested = cfg.stage_dir("ingested")
    if not ingested.is_dir():
        raise FileNotFoundError(f"{ingested} does not exist: run the source and ingest stages (or a retrain) first")
    report = validate_dir(ingested, cfg, drift_skipped=ACCEPT_REASON)
    if not report.success:
        raise BatchNotAcceptable(report)
    path = accepted_batch_path(cfg)
    replaced = None
    if path.exists():
        try:
            replaced = json.loads(path.read_text(encoding="utf-8")).get("accepted_at")
        except (ValueError, UnicodeDecodeError):
            replaced = "an unreadable reference"
    save_reference(cfg, report, accepted_by=actor, drift_accepted=True, replaced_reference_of=replaced)
    return {"reference": str(path), "accepted_at": report.started_at, "replaced_reference_of": replaced,
            "evaluated_expectations": report.evaluated}


def write_report(report: ValidationReport, out_dir: Path, summary: dict[str, Any] | None = None) -> dict[str, Path]:
    """report.md, report.json and summary.json (written whatever the verdict)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    contents = {
        "report.md": report.to_markdown(),
        "report.json": report.to_json(),
        "summary.json": json.dumps(summary or report.summary(), indent=2, ensure_ascii=False),
    }
    paths = {}
    for name, text in contents.items():
        paths[name] = out_dir / name
        atomic_write_text(paths[name], text)
    return paths


def atomic_write_text(path: Path, text: str) -> None:
    """Write a sibling temp file, then rename it over `path`: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# --------------------------------------------------------------------------------- validate


def load_reference(cfg: Config) -> tuple[dict[str, Any] | None, CheckResult | None]:
    """The last accepted batch's statistics, or None for the first batch; a corrupt file is a failure."""
    path = accepted_batch_path(cfg)
    if not path.exists():
        return None, None
    try:
        reference = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(reference, dict) or not isinstance(reference.get("tables"), dict):
            raise ValueError("no 'tables' mapping")
    except (ValueError, UnicodeDecodeError) as exc:
        return None, CheckResult(
            table="(reference)",
            expectation="accepted_batch_readable",
            column=None,
            check="drift",
            status=FAILED,
            description="the last accepted batch's statistics can be read",
            observed=f"{path} is corrupt ({exc}); delete it to accept the next valid batch as the new reference",
        )
    reference.setdefault("path", str(path))
    return reference, None


def validate_dir(data_dir: Path | str, cfg: Config, reference: dict[str, Any] | None = None, *, now: dt.datetime | None = None,
                 drift_skipped: str = "") -> ValidationReport:
    """Validate a batch directory against the suites. Bad data never raises: every problem is a
    failed check in the report (a broken suite file raises `SuiteError`, a configuration bug).

    `reference` = statistics of the last accepted batch (`batch_stats`); by default they are read
    from state/<profile>/accepted_batch.json when it exists, else drift is not checked.
    `drift_skipped`: skip the drift checks, with this reason."""
    started = time.perf_counter()
    started_at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    directory = suites_dir(cfg)
    suites = {table: load_suite_dict(directory, table) for table in TABLES}
    checks: list[CheckResult] = []
    if reference is None and not drift_skipped:
        reference, problem = load_reference(cfg)
        checks += [problem] if problem else []
    batch = read_batch(data_dir)
    checks += [_reader_failure(issue) for issue in batch.issues]
    notes = [
        f"{table}: validated {batch.files[table].name}; ignored {', '.join(p.name for p in extras)}"
        for table, extras in batch.extra_files.items()
        if extras
    ]
    for table in batch:
        known = {f.name for f in SCHEMAS[table]}
        unknown = [str(c) for c in batch[table].columns if c not in known]
        if unknown:
            notes.append(f"{table}: columns not in the canonical schema, not validated and not kept (canonical tables hold only the schema's columns): {', '.join(unknown)}")

    runner = _SuiteRunner(batch)
    parameters = config_parameters(cfg, now)
    usable: dict[str, set[str]] = {}
    empty: set[str] = set()
    for table in batch:
        schema_checks, usable[table], is_empty = _schema_pass(runner, table, suites[table], parameters)
        checks += schema_checks
        empty |= {table} if is_empty else set()
    id_sets = id_set_parameters(batch, usable)
    for table in batch:
        runner.use_frame(table, with_derived_columns(table, batch[table], usable[table]))
        drift = drift_parameters(table, suites[table]["expectations"], reference, cfg, skipped=drift_skipped)
        checks += _checks_pass(
            runner,
            table,
            suites[table],
            values={**parameters, **id_sets.values, **drift.values},
            unavailable={**config_unavailable(cfg), **id_sets.unavailable, **drift.unavailable},
            usable=usable[table],
            skip_all=f"{table} has no rows" if table in empty else "",
        )

    first_batch = sum(c.status == SKIPPED and c.reason == FIRST_BATCH_REASON for c in checks)
    if first_batch:
        notes.append(
            f"Drift not checked: no accepted batch yet (first batch), so {first_batch} drift checks were skipped. "
            "If this batch passes, it becomes the reference for the next one."
        )
    return ValidationReport(
        success=not any(c.status == FAILED for c in checks),
        data_dir=str(data_dir),
        started_at=started_at,
        duration_s=time.perf_counter() - started,
        tables={t: _table_summary(batch, t) for t in TABLES},
        checks=_ordered(checks),
        notes=notes,
        reference=_reference_info(reference),
        parameters={**parameters, **{k: f"{len(v):,} ids" for k, v in id_sets.values.items()}},
        batch_stats=batch_stats(dict(batch), directory),
    )


def _schema_pass(runner: _SuiteRunner, table: str, suite: dict[str, Any], parameters: dict[str, Any]) -> tuple[list[CheckResult], set[str], bool]:
    """Columns present, value types, not empty. Returns the checks, the columns fit for the
    remaining checks, and whether the table is empty."""
    expectations = [e for e in suite["expectations"] if check_of(e) == SCHEMA_CHECK]
    checks = _without_missing_column_noise(runner.run(table, "schema", suite, expectations, parameters))
    bad = {c.column for c in checks if c.status == FAILED and c.column}
    usable = {f.name for f in SCHEMAS[table]} - bad
    is_empty = any(c.status == FAILED and c.expectation == "expect_table_row_count_to_be_between" for c in checks)
    return checks, usable, is_empty


def _checks_pass(runner: _SuiteRunner, table: str, suite: dict[str, Any], *, values: dict[str, Any], unavailable: dict[str, str],
                 usable: set[str], skip_all: str) -> list[CheckResult]:
    """Every non-schema check that can run; the others are reported as skipped, with the reason."""
    checks, runnable = [], []
    for expectation in suite["expectations"]:
        if check_of(expectation) == SCHEMA_CHECK:
            continue
        reason = skip_all or _skip_reason(table, expectation, usable, unavailable)
        if reason:
            checks.append(_skipped(table, expectation, reason))
        else:
            runnable.append(expectation)
    return checks + runner.run(table, "checks", suite, runnable, values)


def _reader_failure(issue: ReadIssue) -> CheckResult:
    rules = {
        "table_file_exists": f"a {issue.table} table file is present",
        "file_not_empty": "the table file is not empty",
        "utf8_encoding": "text files are UTF-8",
        "file_parseable": "the table file can be parsed",
    }
    return CheckResult(
        table=issue.table,
        expectation=issue.check,
        column=None,
        check="file",
        status=FAILED,
        description=rules.get(issue.check, ""),
        observed=issue.message,
        examples=issue.examples,
    )


def _table_summary(batch: Batch, table: str) -> TableSummary:
    path = batch.files.get(table)
    return TableSummary(
        table=table,
        file=str(path) if path else None,
        format=path.suffix.lstrip(".") if path else None,
        rows=int(len(batch[table])) if table in batch else None,
    )


def _reference_info(reference: dict[str, Any] | None) -> dict[str, Any] | None:
    if reference is None:
        return None
    info = {k: reference.get(k) for k in ("path", "accepted_at", "data_dir")}
    info["rows"] = {t: v.get("rows") for t, v in (reference.get("tables") or {}).items()}
    return info


def _without_missing_column_noise(checks: list[CheckResult]) -> list[CheckResult]:
    """A missing column fails `expect_column_to_exist`; its type check cannot run, so it is skipped."""
    missing = {c.column for c in checks if c.expectation == "expect_column_to_exist" and c.status == FAILED}
    for c in checks:
        if c.column in missing and c.expectation != "expect_column_to_exist":
            c.status, c.reason, c.observed, c.examples = SKIPPED, f"column {c.table}.{c.column} is missing", "", []
    return checks


def _skip_reason(table: str, expectation: dict[str, Any], usable: set[str], unavailable: dict[str, str]) -> str:
    kwargs = expectation.get("kwargs", {})
    for column in (kwargs.get(k) for k in ("column", "column_A", "column_B")):
        if column and column in {f.name for f in SCHEMAS[table]} and column not in usable:
            return f"{table}.{column} failed its schema checks (see above)"
        if column in derived_columns(table) and (reason := unavailable_reason(table, column, usable)):
            return reason
    condition = row_filter(kwargs)
    for column in sorted({f.name for f in SCHEMAS[table]} - usable):
        if condition and re.search(rf"\b{re.escape(column)}\b", condition):
            return f"{table}.{column}, which selects the rows this checks ({condition}), failed its schema checks (see above)"
    missing = sorted(parameter_names(expectation.get("kwargs", {})) & set(unavailable))
    return unavailable[missing[0]] if missing else ""


def _skipped(table: str, expectation: dict[str, Any], reason: str) -> CheckResult:
    return CheckResult(
        table=table,
        expectation=expectation["type"],
        column=expectation.get("kwargs", {}).get("column"),
        check=check_of(expectation),
        status=SKIPPED,
        description=expectation.get("description") or "",
        reason=reason,
    )


_CHECK_ORDER = {k: i for i, k in enumerate(["file", "schema", "nulls", "uniqueness", "range", "set", "timestamp", "referential", "drift"])}


def _ordered(checks: list[CheckResult]) -> list[CheckResult]:
    """Failures first, then by table order and kind of check (GE returns results grouped by column)."""
    table_order = {t: i for i, t in enumerate(TABLES)}
    status_order = {FAILED: 0, PASSED: 1, SKIPPED: 2}
    return sorted(
        checks,
        key=lambda c: (status_order[c.status], table_order.get(c.table, -1), _CHECK_ORDER.get(c.check, 99)),
    )


# ------------------------------------------------------------------------- Great Expectations


class _SuiteRunner:
    """One in-memory GE context per validation run (no files, no progress bars, no analytics),
    with one whole-dataframe batch per table, reused by both passes."""

    def __init__(self, frames: dict[str, pd.DataFrame]) -> None:
        import great_expectations as gx
        from great_expectations.data_context.types.base import (
            DataContextConfig,
            InMemoryStoreBackendDefaults,
            ProgressBarsConfig,
        )

        config = DataContextConfig(
            store_backend_defaults=InMemoryStoreBackendDefaults(),
            progress_bars=ProgressBarsConfig(globally=False),
            analytics_enabled=False,
        )
        self._datasource = gx.get_context(mode="ephemeral", project_config=config).data_sources.add_pandas("copyflow_batch")
        self._frames = dict(frames)
        self._batches: dict[str, Any] = {}

    def use_frame(self, table: str, frame: pd.DataFrame) -> None:
        """Check `frame` for this table from now on (the schema pass saw the batch as read; the
        other checks also see the derived columns)."""
        if frame is not self._frames[table]:
            self._frames[table] = frame
            self._batches.pop(table, None)

    def _batch(self, table: str):
        if table not in self._batches:
            asset = self._datasource.add_dataframe_asset(f"{table}_frame_{len(self._datasource.assets)}")
            definition = asset.add_batch_definition_whole_dataframe(f"{table}_whole")
            self._batches[table] = definition.get_batch(batch_parameters={"dataframe": self._frames[table]})
        return self._batches[table]

    def run(self, table: str, phase: str, suite_data: dict[str, Any], expectations: list[dict[str, Any]],
            parameters: dict[str, Any]) -> list[CheckResult]:
        """Run these expectations of the table's suite (a GE ExpectationSuite) on its frame."""
        if not expectations:
            return []
        suite = build_suite(suite_data, f"{table}.{phase}", expectations)
        needed = set().union(*(parameter_names(e.get("kwargs", {})) for e in expectations))
        result = self._batch(table).validate(
            suite,
            expectation_parameters={k: v for k, v in parameters.items() if k in needed},
            result_format=RESULT_FORMAT,
        )
        return [_check_from_result(table, r, self._frames[table]) for r in result.results]


def _check_from_result(table: str, result, frame: pd.DataFrame) -> CheckResult:
    config = result.expectation_config
    kind = config.type
    kwargs = dict(config.kwargs)
    meta = dict(config.meta or {})
    column = kwargs.get("column") or kwargs.get("column_A")
    outcome = dict(result.result or {})
    exception = _exception_message(result.exception_info)
    check = CheckResult(
        table=table,
        expectation=kind,
        column=column,
        check=str(meta.get("check", "")),
        status=PASSED if result.success else FAILED,
        description=config.description or "",
        expected=_expected_text(kind, kwargs, meta),
        unexpected_count=outcome.get("unexpected_count"),
        element_count=outcome.get("element_count"),
        unexpected_percent=outcome.get("unexpected_percent"),
    )
    if exception:
        check.status = FAILED
        check.observed = f"could not be evaluated: {exception}"
    elif kind == "expect_column_to_exist" and not result.success:
        check.observed = f"column {column!r} is missing; the table has columns {list(frame.columns)}"
    else:
        check.observed = _observed_text(kind, kwargs, outcome)
    if check.status == FAILED:
        indices = outcome.get("partial_unexpected_index_list") or []
        # A shopper's row is their quasi-identifiers (age band, city tier, signup date): a report that
        # is published (MLflow, Prefect) shows only the id and the failing column.
        check.examples = example_rows(frame, indices, leading=(ID_COLUMNS.get(table), column, kwargs.get("column_B")),
                                      only_leading=table == "users")
        if kind == "expect_column_kl_divergence_to_be_less_than":
            check.details = _kl_shifts(outcome)
    return check


def _exception_message(info: Any) -> str:
    """GE reports exceptions either flat or keyed by metric; find the first message."""
    if not isinstance(info, dict):
        return ""
    if info.get("raised_exception") and info.get("exception_message"):
        return str(info["exception_message"])
    for value in info.values():
        if isinstance(value, dict) and value.get("exception_message"):
            return str(value["exception_message"])
    return ""


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.6g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def _mostly(kwargs: dict[str, Any], of: str = "non-null rows") -> str:
    mostly = kwargs.get("mostly")
    return f" for at least {mostly:.1%} of {of}" if isinstance(mostly, (int, float)) and mostly < 1 else " for every row"


def _where(kwargs: dict[str, Any]) -> str:
    condition = row_filter(kwargs)
    return f" among rows where {condition}" if condition else ""


def _expected_text(kind: str, kwargs: dict[str, Any], meta: dict[str, Any]) -> str:
    low, high = kwargs.get("min_value"), kwargs.get("max_value")
    if kind == "expect_column_to_exist":
        return "column present"
    if kind in ("expect_column_values_to_be_in_type_list", "expect_column_values_to_be_of_type"):
        types = kwargs.get("type_list") or [kwargs.get("type_")]
        return f"value type in {types}"
    if kind == "expect_column_values_to_not_be_null":
        return "not null" + _mostly(kwargs, of="rows") + _where(kwargs)
    if kind == "expect_column_pair_values_a_to_be_greater_than_b":
        relation = ">=" if kwargs.get("or_equal") else ">"
        where = _where(kwargs).replace(" among rows where ", " of the rows where ")
        pair = f"{kwargs.get('column_A')} {relation} {kwargs.get('column_B')}"
        mostly = kwargs.get("mostly")
        if isinstance(mostly, (int, float)) and mostly < 1:
            return f"{pair} for at least {mostly:.1%}{where or ' of the rows'} that have both"
        return f"{pair} in every row{where.replace(' of the rows', '')} that has both"
    if kind == "expect_column_values_to_be_unique":
        return "unique" + _mostly(kwargs)
    if kind in ("expect_column_values_to_be_between", "expect_column_value_lengths_to_be_between"):
        subject = "length" if "lengths" in kind else "value"
        parts = []
        if low is not None:
            parts.append(f"{_fmt(low)} {'<' if kwargs.get('strict_min') else '<='} {subject}")
        if high is not None:
            parts.append(f"{subject} {'<' if kwargs.get('strict_max') else '<='} {_fmt(high)}")
        return " and ".join(parts) + _mostly(kwargs)
    if kind == "expect_column_values_to_be_in_set":
        values = kwargs.get("value_set") or []
        if len(values) <= 10:
            return f"one of {list(values)}" + _mostly(kwargs)
        return f"one of the {len(values):,} values of {meta.get('references', 'the referenced table')}" + _mostly(kwargs)
    if kind == "expect_table_row_count_to_be_between":
        if high is None:
            return f"at least {_fmt(low)} row(s)"
        return f"between {_fmt(low)} and {_fmt(high)} rows (last accepted batch x configured ratio)"
    if kind == "expect_column_mean_to_be_between":
        reference = (low + high) / 2 if isinstance(low, (int, float)) and isinstance(high, (int, float)) else None
        around = f" (last accepted mean {_fmt(reference)} +/- tolerance)" if reference is not None else ""
        return f"mean between {_fmt(low)} and {_fmt(high)}{around}"
    if kind == "expect_column_kl_divergence_to_be_less_than":
        return f"KL divergence from the last accepted batch <= {_fmt(kwargs.get('threshold'))}"
    return json.dumps({k: v for k, v in kwargs.items() if k != "batch_id"}, default=str)[:300]


def _observed_text(kind: str, kwargs: dict[str, Any], outcome: dict[str, Any]) -> str:
    if kind == "expect_column_pair_values_a_to_be_greater_than_b" and "unexpected_count" in outcome:
        return _pair_observed_text(kwargs, outcome)
    if "unexpected_count" in outcome:
        count, total = outcome.get("unexpected_count") or 0, outcome.get("element_count") or 0
        if count == 0:
            return f"all {total:,} rows conform"
        percent = outcome.get("unexpected_percent") or 0.0
        samples = ", ".join(_sample(v) for v in (outcome.get("partial_unexpected_list") or [])[:MAX_EXAMPLES])
        extra = " (every copy of a duplicated value counts)" if kind == "expect_column_values_to_be_unique" else ""
        share = "of rows" if kind == "expect_column_values_to_not_be_null" else "of non-null values"
        return f"{count:,} of {total:,} rows ({percent:.2f}% {share}) break the rule{extra}; e.g. {samples}"
    observed = outcome.get("observed_value")
    if kind == "expect_column_kl_divergence_to_be_less_than":
        return "KL divergence is infinite (values the reference never had)" if observed is None else f"KL divergence {observed:.4f}"
    if kind == "expect_table_row_count_to_be_between":
        return f"{_fmt(observed)} rows"
    if kind == "expect_column_mean_to_be_between":
        return f"mean {_fmt(observed)}"
    if kind in ("expect_column_values_to_be_in_type_list", "expect_column_values_to_be_of_type"):
        return f"column type {observed}"
    if kind == "expect_column_to_exist":
        return "present"
    return _fmt(observed) if observed is not None else ""


def _pair_observed_text(kwargs: dict[str, Any], outcome: dict[str, Any]) -> str:
    """Counted over the rows that have both values (GE leaves the others out)."""
    count = outcome.get("unexpected_count") or 0
    compared = (outcome.get("element_count") or 0) - (outcome.get("missing_count") or 0)
    a, b = kwargs.get("column_A"), kwargs.get("column_B")
    if count == 0:
        return f"all {compared:,} rows with both {a} and {b} conform"
    percent = outcome.get("unexpected_percent_nonmissing", outcome.get("unexpected_percent")) or 0.0
    pairs = [p for p in (outcome.get("partial_unexpected_list") or []) if isinstance(p, (tuple, list)) and len(p) == 2]
    samples = ", ".join(f"{_sample(x)} vs {_sample(y)}" for x, y in pairs[:MAX_EXAMPLES])
    relation = "before" if kwargs.get("or_equal") else "at or before"
    return f"{count:,} of {compared:,} rows with both ({percent:.2f}%) have {a} {relation} {b}" + (f"; e.g. {samples}" if samples else "")


def _sample(value: Any) -> str:
    if isinstance(value, (np.datetime64, pd.Timestamp, dt.datetime)):
        return pd.Timestamp(value).isoformat(timespec="seconds")
    if value is None:
        return "<null>"
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 40 else text[:39] + "…"


def _kl_shifts(outcome: dict[str, Any]) -> dict[str, Any]:
    """The values whose share moved most between the accepted batch and this one."""
    details = outcome.get("details") or {}
    now, before = details.get("observed_partition") or {}, details.get("expected_partition") or {}
    observed = dict(zip(now.get("values", []), now.get("weights", [])))
    expected = dict(zip(before.get("values", []), before.get("weights", [])))
    keys = sorted(set(observed) | set(expected), key=lambda k: -abs(observed.get(k, 0) - expected.get(k, 0)))
    shifts = [f"{k}: {expected.get(k, 0):.1%} -> {observed.get(k, 0):.1%}" for k in keys[:6]]
    return {"share shifts (accepted -> now)": ", ".join(shifts)} if shifts else {}
