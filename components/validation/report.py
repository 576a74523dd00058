"""The data gate's verdict as a person reads it: terminal text, Markdown (logged to MLflow) and JSON.

Every check is one `CheckResult` (passed, failed or skipped with a reason). Reader problems (a
missing, empty, non-UTF-8 or unparseable file) are failed checks too, so one list tells the story.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import unicodedata
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from components.validation.suites import FIRST_BATCH_REASON

MAX_EXAMPLES = 5
PASSED, FAILED, SKIPPED = "passed", "failed", "skipped"


@dataclass
class CheckResult:
    table: str
    expectation: str  # GE expectation type, or the reader check (table_file_exists, utf8_encoding, ...)
    column: str | None
    check: str  # schema | nulls | uniqueness | range | set | referential | timestamp | drift | file
    status: str  # passed | failed | skipped
    description: str = ""
    expected: str = ""  # the rule with its run-time values
    observed: str = ""
    reason: str = ""  # why it was skipped
    unexpected_count: int | None = None
    element_count: int | None = None
    unexpected_percent: float | None = None
    examples: list[dict[str, Any]] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def where(self) -> str:
        return f"{self.table}.{self.column}" if self.column else self.table


@dataclass
class TableSummary:
    table: str
    file: str | None
    format: str | None
    rows: int | None


@dataclass
class ValidationReport:
    success: bool
    data_dir: str
    started_at: str
    duration_s: float
    tables: dict[str, TableSummary]
    checks: list[CheckResult] = field(repr=False)
    notes: list[str] = field(default_factory=list)
    reference: dict[str, Any] | None = None
    parameters: dict[str, Any] = field(default_factory=dict, repr=False)
    batch_stats: dict[str, Any] = field(default_factory=dict, repr=False)

    # ----------------------------------------------------------------------------- counts

    @property
    def failures(self) -> list[CheckResult]:
        return [c for c in self.checks if c.status == FAILED]

    @property
    def skipped(self) -> list[CheckResult]:
        return [c for c in self.checks if c.status == SKIPPED]

    @property
    def evaluated(self) -> int:
        return sum(c.status != SKIPPED for c in self.checks)

    def table_counts(self, table: str) -> dict[str, int]:
        checks = [c for c in self.checks if c.table == table]
        return {
            "evaluated": sum(c.status != SKIPPED for c in checks),
            "failed": sum(c.status == FAILED for c in checks),
            "skipped": sum(c.status == SKIPPED for c in checks),
        }

    def summary(self) -> dict[str, Any]:
        """The short verdict (summary.json / the stage's return value)."""
        return {
            "success": self.success,
            "data_dir": self.data_dir,
            "evaluated_expectations": self.evaluated,
            "failed_expectations": len(self.failures),
            "skipped_expectations": len(self.skipped),
            "drift_checked": self.reference is not None,
            "rows": {t: s.rows for t, s in self.tables.items()},
            "failed": [f"{c.where}: {c.expectation}" for c in self.failures],
            "duration_s": round(self.duration_s, 3),
        }

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(
            {
                **self.summary(),
                "started_at": self.started_at,
                "notes": self.notes,
                "reference": self.reference,
                "parameters": self.parameters,
                "tables": {t: {**asdict(s), **self.table_counts(t)} for t, s in self.tables.items()},
                "failures": [asdict(c) for c in self.failures],
                "skipped": [asdict(c) for c in self.skipped],
                "checks": [
                    {k: v for k, v in asdict(c).items() if k in ("table", "expectation", "column", "check", "status", "observed")}
                    for c in self.checks
                ],
                "batch_stats": self.batch_stats,
            }
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False)

    # ------------------------------------------------------------------------------ text

    def headline(self) -> str:
        verdict = "PASSED" if self.success else "FAILED"
        counts = f"{len(self.failures)} of {self.evaluated} checks failed" if self.failures else f"all {self.evaluated} checks passed"
        skipped = f", {len(self.skipped)} skipped" if self.skipped else ""
        return f"Data validation {verdict}: {counts}{skipped}"

    def to_text(self) -> str:
        """For a person at a terminal: verdict, per-table counts, then each failure with bad rows."""
        lines = [
            "=" * 100,
            f"{self.headline()}   ({self.data_dir}, {self.duration_s:.1f} s)",
            "=" * 100,
            "",
            _text_table(
                ["table", "file", "rows", "checks", "failed", "skipped"],
                [
                    [t, s.file and s.file.rsplit("/", 1)[-1] or "-", _count(s.rows), *map(str, self.table_counts(t).values())]
                    for t, s in self.tables.items()
                ],
                right={2, 3, 4, 5},
            ),
        ]
        for number, failure in enumerate(self.failures, start=1):
            lines += ["", f"[FAIL {number}/{len(self.failures)}] {failure.where}  --  {failure.expectation}"]
            if failure.description:
                lines.append(f"    rule:      {failure.description}")
            if failure.expected:
                lines.append(f"    expected:  {failure.expected}")
            lines.append(f"    observed:  {failure.observed}")
            for key, value in failure.details.items():
                lines.append(f"    {key + ':':<10} {_short(value, 200)}")
            if failure.examples:
                noun = "bad lines" if "line" in failure.examples[0] else "bad rows"
                header = f"    {noun} (first {len(failure.examples)}"
                header += f" of {failure.unexpected_count:,}):" if failure.unexpected_count else "):"
                lines.append(header)
                lines += ["      " + row for row in _example_lines(failure.examples)]
        # drift checks skipped for the first batch are summed up by a note, not listed
        listed = [c for c in self.skipped if c.reason != FIRST_BATCH_REASON]
        if listed:
            lines += ["", "Skipped checks:"]
            for reason, checks in _group_by_reason(listed).items():
                names = ", ".join(sorted({f"{c.where} ({_short_type(c.expectation)})" for c in checks}))
                lines.append(f"  - {len(checks)} skipped: {reason}")
                lines.append(f"      {_short(names, 300)}")
        if self.notes:
            lines += ["", *[f"Note: {note}" for note in self.notes]]
        lines += ["", self.headline() + ("" if self.success else "  -> the batch is rejected; fix the data and re-run.")]
        return "\n".join(lines)

    def to_markdown(self) -> str:
        """A complete, person-readable report (logged to MLflow by the flow)."""
        icon = "PASSED" if self.success else "FAILED"
        out = [
            f"# Data validation report: {icon}",
            "",
            f"- **Verdict:** {self.headline()}",
            f"- **Data:** `{self.data_dir}`",
            f"- **Validated at:** {self.started_at} ({self.duration_s:.1f} s)",
            "- **Drift reference:** "
            + (
                f"last accepted batch `{self.reference.get('path')}` (accepted {self.reference.get('accepted_at', '?')})"
                if self.reference
                else "none (first batch; drift checks skipped)"
            ),
            "",
            "## Tables",
            "",
            "| table | file | rows | checks | failed | skipped |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for t, s in self.tables.items():
            c = self.table_counts(t)
            out.append(f"| {t} | `{s.file or '-'}` | {_count(s.rows)} | {c['evaluated']} | {c['failed']} | {c['skipped']} |")
        if self.failures:
            out += ["", "## Failures", ""]
            for number, f in enumerate(self.failures, start=1):
                out += [
                    f"### {number}. `{f.where}` — `{f.expectation}`",
                    "",
                    f"- **Rule:** {f.description or '-'}",
                    f"- **Expected:** {_md(f.expected) or '-'}",
                    f"- **Observed:** {_md(f.observed)}",
                ]
                out += [f"- **{k}:** {_md(_short(v, 500))}" for k, v in f.details.items()]
                if f.examples:
                    out += ["", f"Example bad rows ({len(f.examples)}" + (f" of {f.unexpected_count:,}" if f.unexpected_count else "") + "):", ""]
                    out += _markdown_rows(f.examples)
                out.append("")
        if self.skipped:
            out += ["## Skipped checks", ""]
            for reason, checks in _group_by_reason(self.skipped).items():
                out.append(f"- **{reason}** ({len(checks)}): " + ", ".join(f"`{c.where}` {_short_type(c.expectation)}" for c in checks))
            out.append("")
        if self.notes:
            out += ["## Notes", "", *[f"- {n}" for n in self.notes], ""]
        out += ["## All checks", "", "| table | column | expectation | check | result | observed |", "|---|---|---|---|---|---|"]
        for c in self.checks:
            out.append(
                f"| {c.table} | {c.column or ''} | {_short_type(c.expectation)} | {c.check} | {c.status.upper()} | "
                f"{_md(_short(c.observed or c.reason, 120))} |"
            )
        return "\n".join(out) + "\n"


def list_failed(failed: list[str], limit: int = 8) -> str:
    """`table.column: expectation` names of failed checks on one line, the first `limit` of them."""
    return "; ".join(failed[:limit]) + (f"; and {len(failed) - limit} more" if len(failed) > limit else "")


def failures_section(markdown: str) -> str:
    """The "## Failures" section of a report.md (what a person needs to act), '' if it has none."""
    lines = markdown.splitlines()
    if "## Failures" not in lines:
        return ""
    start = lines.index("## Failures")
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    return "\n".join(lines[start:end]).strip() + "\n"


# ----------------------------------------------------------------------------------- helpers


def _count(n: int | None) -> str:
    return "-" if n is None else f"{n:,}"


def _short_type(expectation: str) -> str:
    return expectation.removeprefix("expect_")


def _short(value: Any, limit: int) -> str:
    text = value if isinstance(value, str) else json.dumps(_jsonable(value), ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _group_by_reason(checks: list[CheckResult]) -> dict[str, list[CheckResult]]:
    groups: dict[str, list[CheckResult]] = {}
    for c in checks:
        groups.setdefault(c.reason, []).append(c)
    return groups


def _width(text: str) -> int:
    """Terminal columns: CJK characters take two."""
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def _fit(text: str, width: int) -> str:
    """Cut to `width` terminal columns (with an ellipsis) and pad to exactly that width."""
    if _width(text) > width:
        cut = ""
        for ch in text:
            if _width(cut + ch) > width - 1:
                break
            cut += ch
        text = cut + "…"
    return text + " " * (width - _width(text))


def _cell(value: Any) -> str:
    if value is None:
        return "<null>"
    if isinstance(value, float) and math.isnan(value):
        return "<NaN>"
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _text_table(header: list[str], rows: list[list[str]], right: set[int] = frozenset(), max_width: int = 28) -> str:
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [min(max_width, max([_width(h)] + [_width(r[i]) for r in cells])) for i, h in enumerate(header)]

    def line(values: list[str]) -> str:
        parts = []
        for i, v in enumerate(values):
            fitted = _fit(v, widths[i])
            parts.append(fitted.rstrip().rjust(widths[i]) if i in right and _width(v) <= widths[i] else fitted)
        return "  ".join(parts).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *[line(r) for r in cells]])


def _example_lines(examples: list[dict[str, Any]], keep: int = 3, budget: int = 110) -> list[str]:
    """Bad rows as a small aligned table; the first `keep` columns (row, id, failing column) always
    show, the others while they fit the terminal width."""
    chosen, used = [], 0
    for position, key in enumerate(examples[0].keys()):
        width = min(28, max(_width(key), *(_width(_cell(e.get(key))) for e in examples)))
        if position >= keep and used + width + 2 > budget:
            continue
        chosen.append(key)
        used += width + 2
    return _text_table(chosen, [[e.get(k) for k in chosen] for e in examples]).splitlines()


def _markdown_rows(examples: list[dict[str, Any]]) -> list[str]:
    keys = list(examples[0].keys())
    rows = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for e in examples:
        rows.append("| " + " | ".join(_md(_short(_cell(e.get(k)), 80)) for k in keys) + " |")
    return rows


def _jsonable(value: Any) -> Any:
    """Plain JSON types (NaN -> None, timestamps -> ISO text, numpy -> Python)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (pd.Timestamp, dt.datetime, dt.date)):
        return value.isoformat()
    if value is pd.NaT or value is pd.NA:
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def example_rows(frame: pd.DataFrame, indices: list[Any], leading: tuple[str | None, ...] = (), limit: int = MAX_EXAMPLES,
                 only_leading: bool = False) -> list[dict[str, Any]]:
    """Rows of `frame` at the given index labels, JSON-safe and long text cut; the `leading`
    columns (the row's id, the failing column) come first, then the rest unless `only_leading`."""
    first = [c for c in dict.fromkeys(leading) if c is not None and c in frame.columns]
    columns = first + ([] if only_leading else [c for c in frame.columns if c not in first])
    rows = []
    for index in [i for i in indices if i in frame.index][:limit]:
        record: dict[str, Any] = {"row": int(index) if isinstance(index, (int, np.integer)) else str(index)}
        for key in columns:
            value = _jsonable(frame.at[index, key])
            record[str(key)] = value[:200] + "…" if isinstance(value, str) and len(value) > 200 else value
        rows.append(record)
    return rows
