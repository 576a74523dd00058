"""Read a batch directory into pandas frames for validation, turning every unreadable file into a
`ReadIssue` (a readable report line) instead of a traceback.

Each table may arrive as `<table>.parquet` (canonical, see components/data/schema.py), `.csv` or
`.jsonl`. Parquet keeps the types written in the file, so a wrongly typed column reaches the Great
Expectations type checks as it is. CSV and JSON Lines carry no types, so their columns are coerced
to the canonical types value by value; a value that does not parse stays as the original text, so
the type expectation fails on exactly those rows and shows them as examples.
A CSV row with more or fewer fields than the header makes the file unreadable (its lines named),
as in ingestion: read as nulls, a cut-off row would pass the null checks' tolerance unseen.

The frames use representations Great Expectations checks reliably on pandas: text as Python `str`
objects, integers as nullable `Int32`/`Int64`, floats as float64, timestamps as tz-aware UTC, and
attributes as `dict[str, list[str]]`.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from components.data.raw import RawFormatError, require_header_width
from components.data.schema import ATTRIBUTES_TYPE, SCHEMAS, TABLES

# Preferred first: when a table exists in several formats, the canonical parquet wins.
FORMATS: tuple[str, ...] = ("parquet", "csv", "jsonl")


@dataclass(frozen=True)
class ReadIssue:
    """Why a table could not be read: `check` names the failed reader check."""

    table: str
    check: str  # table_file_exists | file_not_empty | utf8_encoding | file_parseable
    path: str | None
    message: str
    examples: list[dict[str, Any]] = field(default_factory=list)


class Batch(dict):
    """dict[table, DataFrame] of the tables that could be read, plus where each came from and
    the issues of those that could not."""

    def __init__(self) -> None:
        super().__init__()
        self.files: dict[str, Path] = {}
        self.issues: list[ReadIssue] = []
        self.extra_files: dict[str, list[Path]] = {}


def read_batch(data_dir: Path | str) -> Batch:
    """Read every canonical table found in `data_dir`; problems land in `batch.issues`."""
    data_dir = Path(data_dir)
    batch = Batch()
    if not data_dir.is_dir():
        for table in TABLES:
            batch.issues.append(
                ReadIssue(table, "table_file_exists", str(data_dir), f"data directory not found: {data_dir}")
            )
        return batch
    for table in TABLES:
        candidates = [data_dir / f"{table}.{fmt}" for fmt in FORMATS if (data_dir / f"{table}.{fmt}").exists()]
        if not candidates:
            expected = ", ".join(f"{table}.{fmt}" for fmt in FORMATS)
            batch.issues.append(
                ReadIssue(table, "table_file_exists", None, f"table {table!r} is missing: none of {expected} in {data_dir}")
            )
            continue
        path = candidates[0]
        batch.files[table] = path
        batch.extra_files[table] = candidates[1:]
        try:
            batch[table] = read_table_file(path, table)
        except TableReadError as exc:
            batch.issues.append(exc.issue)
    return batch


class TableReadError(Exception):
    def __init__(self, issue: ReadIssue) -> None:
        super().__init__(issue.message)
        self.issue = issue


def read_table_file(path: Path, table: str) -> pd.DataFrame:
    """One table file -> validation frame, or `TableReadError` saying what is wrong with the file."""
    if path.stat().st_size == 0:
        raise TableReadError(ReadIssue(table, "file_not_empty", str(path), f"file is empty (0 bytes): {path}"))
    suffix = path.suffix.lstrip(".")
    if suffix == "parquet":
        frame = _read_parquet(path, table)
    else:
        text = _decode_utf8(path, table)
        if not text.strip():
            raise TableReadError(
                ReadIssue(table, "file_not_empty", str(path), f"file holds only whitespace, no header or rows: {path}")
            )
        raw = _parse_csv(text, path, table) if suffix == "csv" else _parse_jsonl(text, path, table)
        frame = coerce_to_schema(raw, table)
    return frame.reset_index(drop=True)


# ----------------------------------------------------------------------------------------- parquet


def _read_parquet(path: Path, table: str) -> pd.DataFrame:
    try:
        arrow = pq.read_table(path)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise TableReadError(
            ReadIssue(table, "file_parseable", str(path), f"not a readable parquet file: {path} ({exc})")
        ) from exc
    return pd.DataFrame({name: _arrow_column(arrow.column(name)) for name in arrow.column_names})


def _arrow_column(column: pa.ChunkedArray) -> pd.Series:
    """Arrow column -> pandas with the file's own type kept (no coercion: a wrong type must show)."""
    arrow_type = column.type
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return pd.Series(column.to_pylist(), dtype=object)
    if pa.types.is_map(arrow_type):
        return pd.Series([None if v is None else {k: list(vs or []) for k, vs in v} for v in column.to_pylist()], dtype=object)
    if pa.types.is_integer(arrow_type):
        return pd.Series(pd.array(column.to_pylist(), dtype=f"{'U' if pa.types.is_unsigned_integer(arrow_type) else ''}Int{arrow_type.bit_width}"))
    if pa.types.is_timestamp(arrow_type):
        series = column.to_pandas()
        # tz-aware in any zone is the same instant in UTC; a naive column keeps failing the type check.
        return series.dt.tz_convert("UTC") if arrow_type.tz is not None else series
    series = column.to_pandas()
    if isinstance(series.dtype, pd.StringDtype):
        return series.astype(object).where(series.notna(), None)
    return series


# ------------------------------------------------------------------------------------ csv / jsonl


def _decode_utf8(path: Path, table: str) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line_no = raw[: exc.start].count(b"\n") + 1
        line_start = raw.rfind(b"\n", 0, exc.start) + 1
        line_end = raw.find(b"\n", exc.start)
        line = raw[line_start : line_end if line_end >= 0 else len(raw)]
        raise TableReadError(
            ReadIssue(
                table,
                "utf8_encoding",
                str(path),
                f"file is not UTF-8: byte 0x{raw[exc.start]:02x} at offset {exc.start} (line {line_no}) "
                f"is invalid ({exc.reason}; undecodable bytes are shown as \ufffd below); re-export the file as UTF-8: {path}",
                examples=[{"line": line_no, "text": line.decode("utf-8", "replace")[:200]}],
            )
        ) from exc


def _parse_csv(text: str, path: Path, table: str) -> pd.DataFrame:
    try:
        # pandas fills a short row (a cut-off upload) with nulls, which pass the null checks'
        # tolerance and are then dropped by cleaning: refuse it, naming the lines, as ingestion does.
        require_header_width(path, text)
    except RawFormatError as exc:
        raise TableReadError(ReadIssue(table, "file_parseable", str(path), f"not a readable CSV file: {exc}")) from exc
    try:
        # Every cell as text (None when empty): types are decided by `coerce_to_schema`.
        frame = pd.read_csv(io.StringIO(text), dtype=object, keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as exc:
        raise TableReadError(ReadIssue(table, "file_parseable", str(path), f"not a readable CSV file: {path} ({exc})")) from exc
    return frame.astype(object).where(frame.notna(), None)


def _parse_jsonl(text: str, path: Path, table: str) -> pd.DataFrame:
    records = []
    for line_no, line in enumerate(text.split("\n"), start=1):  # not splitlines: U+2028 may sit inside a JSON string
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TableReadError(
                ReadIssue(
                    table,
                    "file_parseable",
                    str(path),
                    f"line {line_no} is not valid JSON ({exc.msg} at column {exc.colno}): {path}",
                    examples=[{"line": line_no, "text": line[:200]}],
                )
            ) from exc
        if not isinstance(record, dict):
            raise TableReadError(
                ReadIssue(table, "file_parseable", str(path), f"line {line_no} is a JSON {type(record).__name__}, not an object: {path}",
                          examples=[{"line": line_no, "text": line[:200]}])
            )
        records.append(record)
    return pd.DataFrame.from_records(records).astype(object) if records else pd.DataFrame()


# -------------------------------------------------------------------------------------- coercion


def coerce_to_schema(frame: pd.DataFrame, table: str) -> pd.DataFrame:
    """Untyped text columns -> canonical types. A value that does not parse keeps its original
    form, so the column's type expectation fails on that row (columns not in the schema are kept)."""
    frame = frame.copy()
    for schema_field in SCHEMAS[table]:
        if schema_field.name in frame.columns:
            frame[schema_field.name] = coerce_column(frame[schema_field.name], schema_field.type)
    return frame


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _mixed(parsed: pd.Series, raw: pd.Series, bad: pd.Series) -> pd.Series:
    """Parsed values where parsing worked, the raw value where it did not, None where missing."""
    values = parsed.astype(object).where(parsed.notna(), None)
    values[bad] = raw[bad]
    return values


def coerce_column(raw: pd.Series, arrow_type: pa.DataType) -> pd.Series:
    raw = raw.astype(object).where(raw.notna(), None)
    present = raw.map(lambda v: not _is_missing(v))
    if pa.types.is_string(arrow_type):
        return raw  # text stays text; a number in a JSONL text column fails the type check
    if pa.types.is_floating(arrow_type):
        parsed = pd.to_numeric(raw.map(_numeric_or_nan), errors="coerce").astype("float64")
        bad = present & parsed.isna() & ~raw.map(_is_nan_text)
        return parsed if not bad.any() else _mixed(parsed.map(np.float64), raw, bad)
    if pa.types.is_integer(arrow_type):
        numbers = pd.to_numeric(raw.map(_numeric_or_nan), errors="coerce")
        integral = numbers.notna() & (numbers == np.floor(numbers)) & (numbers.abs() < 2 ** (arrow_type.bit_width - 1))
        bad = present & ~integral
        dtype = f"Int{arrow_type.bit_width}"
        if not bad.any():
            return pd.Series(pd.array([None if pd.isna(v) else int(v) for v in numbers], dtype=dtype), index=raw.index)
        parsed = pd.Series([int(v) if ok else None for v, ok in zip(numbers, integral)], index=raw.index, dtype=object)
        return _mixed(parsed, raw, bad)
    if pa.types.is_timestamp(arrow_type):
        text = raw.map(lambda v: v if isinstance(v, str) else None)
        parsed = pd.to_datetime(text, utc=True, errors="coerce", format="ISO8601")
        bad = present & parsed.isna()
        if not bad.any():
            return parsed.dt.as_unit(arrow_type.unit) if hasattr(parsed, "dt") else parsed
        return _mixed(parsed, raw, bad)
    if arrow_type == ATTRIBUTES_TYPE:
        parsed_values = raw.map(_attributes_or_none)
        bad = present & parsed_values.isna()
        return _mixed(parsed_values, raw, bad) if bad.any() else parsed_values.astype(object)
    return raw


def _numeric_or_nan(value: Any) -> Any:
    """Numbers and numeric text pass; booleans and anything else become NaN (then flagged bad)."""
    if isinstance(value, bool):
        return np.nan
    if isinstance(value, (int, float, np.number)):
        return value
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return np.nan
    return np.nan


def _is_nan_text(value: Any) -> bool:
    return isinstance(value, str) and value.strip().lower() == "nan"


def _attributes_or_none(value: Any) -> dict[str, list[str]] | None:
    """A JSON object of key -> list of strings (CSV carries it as JSON text)."""
    if _is_missing(value):
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return None
    if isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(vs, list) and all(isinstance(x, str) for x in vs) for k, vs in value.items()
    ):
        return value
    return None
