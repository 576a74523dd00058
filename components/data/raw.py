"""The raw layer (artifacts/<profile>/source/): what a source delivered, in source-native text form.

    products.jsonl  one JSON object a line: product_id, category, content (attributes in the
                    AdvertiseGen notation `key#value*key#value`), price (number or null), source
    copies.jsonl    one JSON object a line: copy_id, product_id, text, source, model_version
    users.csv       user_id (RAW, not yet pseudonymized), age_band, city_tier, signup_date
    events.csv      event_id, user_id (RAW), product_id, copy_id, event_type, timestamp
                    (ISO 8601, UTC), position, propensity, value
    ground_truth/   the simulator's latent truth, for evaluation only (no feature/model reads it)

Raw user ids live only here; ingestion pseudonymizes them on the way to the canonical layer.
Readers are strict, because silently skipping records would lose data: a file that is not
UTF-8 or lacks a column raises a `RawFormatError` naming the file (and line). A line that is not
valid JSON, or a CSV row without the header's fields, is named by its line (`read_raw_lines`
returns them all, so ingestion can name every one in one error; `read_raw_table` raises).
"""

from __future__ import annotations

import csv
import io
import json
import math
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv

RAW_FILES: dict[str, str] = {
    "products": "products.jsonl",
    "copies": "copies.jsonl",
    "users": "users.csv",
    "events": "events.csv",
}
RAW_COLUMNS: dict[str, list[str]] = {
    "products": ["product_id", "category", "content", "price", "source"],
    "copies": ["copy_id", "product_id", "text", "source", "model_version"],
    "users": ["user_id", "age_band", "city_tier", "signup_date"],
    "events": [
        "event_id",
        "user_id",
        "product_id",
        "copy_id",
        "event_type",
        "timestamp",
        "position",
        "propensity",
        "value",
    ],
}
GROUND_TRUTH_DIR = "ground_truth"


class RawFormatError(ValueError):
    """A raw source file cannot be read as its documented format."""


def invisible_characters(value: str) -> list[str]:
    """The invisible format characters in `value` (Unicode category Cf: zero-width space and
    joiners, word joiner, a byte order mark inside text), each once. An id holding one looks like
    another id and is a different one: `shopper1` and `shopper1` + U+200B are two shoppers."""
    if value.isascii():  # most ids: no look at each character
        return []
    return list(dict.fromkeys(ch for ch in value if unicodedata.category(ch) == "Cf"))


def raw_path(source_dir: Path | str, table: str) -> Path:
    return Path(source_dir) / RAW_FILES[table]


def _json_value(value: Any) -> Any:
    """NaN/NaT/pd.NA -> null (json.dumps would write the invalid token NaN); numpy scalars -> python."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    if hasattr(value, "item"):
        value = value.item()
        if isinstance(value, float) and math.isnan(value):
            return None
    return value


def jsonl_lines(df: pd.DataFrame, columns: list[str]) -> list[str]:
    """One JSON object per row (without the newline), nulls for missing values."""
    return [
        json.dumps({c: _json_value(v) for c, v in zip(columns, row)}, ensure_ascii=False)
        for row in df[columns].itertuples(index=False, name=None)
    ]


def write_jsonl(df: pd.DataFrame, path: Path, columns: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in jsonl_lines(df, columns)), encoding="utf-8")
    return path


def write_raw_table(df: pd.DataFrame, source_dir: Path | str, table: str) -> Path:
    """Write one raw table in its native format (JSONL for catalog tables, CSV for logs)."""
    columns = RAW_COLUMNS[table]
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise RawFormatError(f"raw {table}: missing columns {missing}")
    path = raw_path(source_dir, table)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jsonl":
        return write_jsonl(df, path, columns)
    # pyarrow's CSV writer is ~10x faster than DataFrame.to_csv on timestamp columns.
    table = pa.Table.from_pandas(df[columns], preserve_index=False)
    pa_csv.write_csv(table, path, write_options=pa_csv.WriteOptions(quoting_style="needed"))
    return path


def write_raw_layer(tables: dict[str, pd.DataFrame], source_dir: Path | str) -> dict[str, Path]:
    return {table: write_raw_table(tables[table], source_dir, table) for table in RAW_FILES}


def read_utf8(path: Path) -> str:
    """Whole file as text, without a leading byte order mark; a non-UTF-8 byte raises an error
    naming the file, line and byte."""
    if not path.exists():
        raise RawFormatError(f"raw file not found: {path}")
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")  # a leading byte order mark (spreadsheet exports) is not data
    except UnicodeDecodeError as exc:
        data = exc.object  # the bytes after that mark, which exc.start counts in
        line = data[: exc.start].count(b"\n") + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise RawFormatError(
            f"{path}: line {line}, byte {column}: not valid UTF-8 "
            f"(byte {data[exc.start:exc.start + 1]!r}: {exc.reason}); raw files must be UTF-8"
        ) from exc


@dataclass
class RawLines:
    """A raw file read line by line: the rows that could be read (indexed by their line in the
    file) and every line that could not, with what is wrong with it. A broken line is not
    guessed at; it is left out, so the lines after it are still read (and checked)."""

    frame: pd.DataFrame
    bad: list[tuple[int, str]]  # (line, what is wrong), in file order


def read_jsonl(path: Path, fields: list[str]) -> RawLines:
    """JSON Lines with the given fields (all required; values may be null)."""
    records, linenos, bad = [], [], []
    # JSON Lines ends a line at "\n" only: str.splitlines would also split inside a JSON string
    # that holds U+2028 or U+0085 unescaped (valid JSON), and break the record in two.
    for lineno, line in enumerate(read_utf8(path).split("\n"), start=1):
        line = line.removesuffix("\r")
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            bad.append((lineno, f"not valid JSON ({exc.msg}): {line[:120]!r}"))
            continue
        if not isinstance(record, dict):
            bad.append((lineno, f"expected a JSON object, got {type(record).__name__}"))
            continue
        missing = [f for f in fields if f not in record]
        if missing:
            bad.append((lineno, f"missing fields {missing}"))
            continue
        records.append({f: record[f] for f in fields})
        linenos.append(lineno)
    # The index is the file line number, so later errors can point at the offending line.
    return RawLines(pd.DataFrame.from_records(records, columns=fields, index=pd.Index(linenos, name="line")), bad)


def read_csv_strings(path: Path, columns: list[str]) -> RawLines:
    """CSV with a header containing `columns`; every cell as a string, empty cells as missing.
    A row without exactly the header's fields is a bad line, left out of the frame."""
    text = read_utf8(path)
    if not text.strip():
        raise RawFormatError(f"{path}: file is empty (expected a header with columns {columns})")
    width, starts, bad = _csv_records(path, text)
    if bad:  # pandas would fill a short row with nulls, and take a long one's fields elsewhere
        dropped = {line for record in bad for line in range(record.first, record.last + 1)}
        starts = [line for line in starts if line not in dropped]
        # the lines as the csv reader counted them (split at "\n" only)
        text = "".join(line for n, line in enumerate(io.StringIO(text), start=1) if n not in dropped)
    try:
        # index_col=False: given rows one field longer than the header (a trailing comma on each),
        # pandas would otherwise make the first column the index and shift every value one left.
        df = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, na_values=[""], index_col=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise RawFormatError(f"{path}: malformed CSV: {exc}") from exc
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise RawFormatError(f"{path}: missing columns {missing}; header has {list(df.columns)}")
    # Each row's own line in the file (pandas skips blank lines, and a quoted value may span lines).
    df.index = pd.Index(starts, name="line") if len(starts) == len(df) else pd.RangeIndex(2, len(df) + 2, name="line")
    return RawLines(df[columns], [(record.first, _width_note(record.fields, width)) for record in bad])


@dataclass(frozen=True)
class _CsvRecord:
    first: int  # the line it starts on
    last: int  # the line it ends on (a quoted value may span lines)
    fields: int


def _csv_records(path: Path, text: str) -> tuple[int, list[int], list[_CsvRecord]]:
    """The header's width, the line each record after it starts on (blank lines have none), and
    the records without the header's width."""
    reader = csv.reader(io.StringIO(text))
    starts, bad = [], []
    try:
        width = len(next(record for record in reader if record))
        ended = reader.line_num  # the line the previous record ended on
        for record in reader:
            if record:
                starts.append(ended + 1)
                if len(record) != width:
                    bad.append(_CsvRecord(ended + 1, reader.line_num, len(record)))
            ended = reader.line_num
    except csv.Error as exc:
        raise RawFormatError(f"{path}: malformed CSV: line {reader.line_num}: {exc}") from exc
    return width, starts, bad


def _width_note(fields: int, width: int) -> str:
    if fields < width:
        return f"{fields} fields, fewer than the header's {width}: cut off or mis-quoted"
    return f"{fields} fields, more than the header's {width}: a trailing comma, or a comma in a value that is not quoted"


def require_header_width(path: Path, text: str) -> list[int]:
    """Every row has exactly the header's fields. pandas fills a short row with missing values: a
    row cut off (a truncated upload, a writer killed mid-line) would pass as a row of nulls. A long
    row it drops fields from or, if every row is long, shifts into the wrong columns.
    Returns the line each row starts on (blank lines have no row)."""
    width, starts, bad = _csv_records(path, text)
    short = [(record.first, record.fields) for record in bad if record.fields < width]
    long = [(record.first, record.fields) for record in bad if record.fields > width]
    if short:
        raise _width_error(path, short, f"fewer than the header's {width}", "cut off or mis-quoted")
    if long:
        raise _width_error(path, long, f"more than the header's {width}", "a trailing comma, or a comma in a value that is not quoted")
    return starts


def _width_error(path: Path, rows: list[tuple[int, int]], compared: str, cause: str) -> RawFormatError:
    """Names the first five offending lines and their widths, so the file can be fixed by hand."""
    where = ", ".join(f"line {line} has {n}" for line, n in rows[:5]) + (f", and {len(rows) - 5} more" if len(rows) > 5 else "")
    return RawFormatError(f"{path}: {len(rows)} row(s) with {compared} fields ({where}): {cause}")


def read_raw_lines(source_dir: Path | str, table: str) -> RawLines:
    """One raw table as untyped strings/JSON values, and its lines that cannot be read; a file
    that cannot be read at all (missing, not UTF-8, no such column) raises RawFormatError."""
    path = raw_path(source_dir, table)
    if path.suffix == ".jsonl":
        return read_jsonl(path, RAW_COLUMNS[table])
    return read_csv_strings(path, RAW_COLUMNS[table])


def read_raw_table(source_dir: Path | str, table: str) -> pd.DataFrame:
    """One raw table as untyped strings/JSON values; typing happens in ingestion. Strict: a
    line that cannot be read raises, naming the first five (ingestion collects them all)."""
    read = read_raw_lines(source_dir, table)
    if read.bad:
        path = raw_path(source_dir, table)
        listed = [f"{path}:{line}: {note}" for line, note in read.bad[:5]]
        more = [f"{path}: and {len(read.bad) - 5} more"] if len(read.bad) > 5 else []
        raise RawFormatError("\n".join([f"{path}: {len(read.bad)} line(s) cannot be read:", *listed, *more]))
    return read.frame
