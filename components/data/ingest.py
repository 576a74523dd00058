"""Pipeline stage `ingest`: raw layer (source/) -> canonical parquet (ingested/), ids pseudonymized.

Shoppers erased with `copyflow forget` (state/<profile>/forgotten_shoppers.json, by pseudonym)
are dropped here, users and events rows, even when the shop's export still lists them; the
summary counts them (`forgotten_shoppers_dropped`).

Ingestion types every column and pseudonymizes user ids; it does NOT clean: duplicates, missing
values, bad prices and bots pass through so the validation gate sees the batch as delivered and
cleaning (after the gate) can count what it removes. A file that cannot be read as its format
(not UTF-8, a missing column), a line that cannot be read (not valid JSON, a CSV row without the
header's fields) or a value that is not its column's type (a number that is not a number, a
malformed attribute pair, a time that is no time, an id with whitespace at either end or an
invisible format character in it) stops ingestion. Every file is read, every line and every
column typed first, so one error names every problem as `file:line: ...` (the first
MAX_LISTED_PER_FILE per file, the rest counted by column).
A `folder` source runs the same check on the shop's export in the `source` stage
(`check_raw_tables`), so there the error names the export the shop edits, not its copy.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import pandas as pd

from components.config import Config
from components.data.attributes import parse_attributes
from components.data.erasure import forgotten_pseudonyms
from components.data.privacy import profile_key, pseudonymize
from components.data.raw import RAW_FILES, RawFormatError, invisible_characters, raw_path, read_raw_lines
from components.data.schema import TABLES, write_table
from components.data.summary import write_summary

STAGE = "ingested"
SOURCE_STAGE = "source"
# Lines listed per file: enough to fix a few typos by hand; a column broken throughout (a date
# format the shop changed) is counted, with its first lines, instead of listed in the thousands.
MAX_LISTED_PER_FILE = 10
EXAMPLE_CHARS = 60


@dataclass
class _ColumnProblem:
    column: str | None  # None: the line itself cannot be read (not valid JSON, a CSV row's width)
    lines: list[int]  # every offending line of the file
    notes: list[str]  # what is wrong, for the first MAX_LISTED_PER_FILE of them


@dataclass
class RawProblems:
    """Everything in the raw files that ingestion cannot read, gathered so that one error names
    it all: the files that cannot be read at all, every line that cannot be read (its format),
    and every value that is not its column's type."""

    files: dict[Path, str | list[_ColumnProblem]] = field(default_factory=dict)  # unreadable: its error

    def add_unreadable(self, path: Path, error: RawFormatError) -> None:
        self.files[path] = str(error)

    def add_lines(self, path: Path, bad: list[tuple[int, str]]) -> None:
        """Lines of `path` that cannot be read as its format: (line, what is wrong)."""
        self.add(path, None, [line for line, _ in bad], [note for _, note in bad])

    def add(self, path: Path, column: str | None, lines: list[int], notes: list[str]) -> None:
        """`lines` of `column` in `path` cannot be typed; `notes` says why, for the first ones."""
        if lines:
            self.files.setdefault(path, []).append(_ColumnProblem(column, lines, notes[:MAX_LISTED_PER_FILE]))

    def add_values(self, df: pd.DataFrame, column: str, bad: pd.Series, path: Path, expected: str) -> None:
        """The masked rows of `column` (lines: the readers' index) are not `expected`."""
        mask = np.asarray(bad, dtype=bool)
        values = df.loc[mask, column].head(MAX_LISTED_PER_FILE)
        self.add(path, column, [int(i) for i in df.index[mask]], [f"{_example(v)} is not {expected}" for v in values])

    def take(self, other: "RawProblems", read_in: Path, named_in: Path) -> None:
        """Add `other`'s problems, found in files read in folder `read_in` (a snapshot), named
        as the files in `named_in` they were copied from: the folder an operator can open."""
        for path, found in other.files.items():
            moved = named_in / path.relative_to(read_in)
            self.files[moved] = found.replace(str(read_in), str(named_in)) if isinstance(found, str) else found

    def count(self) -> int:
        return sum(1 if isinstance(found, str) else sum(len(p.lines) for p in found) for found in self.files.values())

    def error(self) -> RawFormatError | None:
        if not self.files:
            return None
        lines = [f"cannot ingest: {self.count()} problem(s) in {len(self.files)} file(s); nothing was ingested:"]
        for path, found in self.files.items():
            lines += [found] if isinstance(found, str) else _file_lines(path, found)
        return RawFormatError("\n".join(lines))

    def raise_if_any(self) -> None:
        error = self.error()
        if error is not None:
            raise error


def _example(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= EXAMPLE_CHARS else text[:EXAMPLE_CHARS] + "…"


def _file_lines(path: Path, problems: list[_ColumnProblem]) -> list[str]:
    """`file:line: column ...: what` (or `file:line: what` for a line that cannot be read) for the
    first lines of one file, then the rest by column."""
    first = sorted(((line, p.column, note) for p in problems for line, note in zip(p.lines, p.notes)), key=lambda x: x[0])
    listed = first[:MAX_LISTED_PER_FILE]
    out = [f"{path}:{line}: {note}" if column is None else f"{path}:{line}: column {column!r}: {note}" for line, column, note in listed]
    shown = {(line, column) for line, column, _ in listed}
    rest: dict[str | None, list[int]] = {}
    for problem in problems:
        for line in problem.lines:
            if (line, problem.column) not in shown:
                rest.setdefault(problem.column, []).append(line)
    if rest:
        counts = ", ".join(
            f"{_counted_as(column)} {len(lines)} (lines {', '.join(map(str, sorted(lines)[:5]))}{', …' if len(lines) > 5 else ''})"
            for column, lines in rest.items()
        )
        out.append(f"{path}: {sum(map(len, rest.values()))} more not listed: {counts}")
    return out


def _counted_as(column: str | None) -> str:
    return "malformed lines" if column is None else f"column {column!r}"


def _raise_alone(problems: RawProblems | None, found: RawProblems) -> None:
    """Called without a collector (`problems` None), a converter raises its own problems at once."""
    if problems is None:
        found.raise_if_any()


def _booleans(values: pd.Series) -> pd.Series:
    """JSON true/false (a CSV column is text and holds none; only JSON values need the look)."""
    if pd.api.types.is_bool_dtype(values):
        return values.notna()
    if not pd.api.types.is_object_dtype(values):
        return pd.Series(False, index=values.index)
    return values.map(lambda v: isinstance(v, (bool, np.bool_))).astype(bool)


def to_float(df: pd.DataFrame, column: str, path: Path, problems: RawProblems | None = None) -> pd.Series:
    """Finite numbers; a value that is not one goes to `problems` (None: raised at once)."""
    found = problems if problems is not None else RawProblems()
    converted = pd.to_numeric(df[column], errors="coerce").astype("float64")
    # "inf" and "nan" parse as numbers, but no price, value or position is one: one inf purchase
    # would turn a running spend into inf (and inf - inf into NaN) downstream. A JSON true or
    # false parses as 1 or 0, a price inside the allowed range: a flag in the wrong field.
    bad = (converted.isna() & df[column].notna()) | np.isinf(converted.to_numpy()) | _booleans(df[column])
    found.add_values(df, column, bad, path, "a finite number")
    converted[bad.to_numpy()] = np.nan  # reported once: later checks of the column skip it
    _raise_alone(problems, found)
    return converted


INT32_MAX = 2**31 - 1


def to_int(df: pd.DataFrame, column: str, path: Path, limit: int = INT32_MAX, problems: RawProblems | None = None) -> pd.Series:
    """Whole numbers that fit the canonical column (int32 by default), named by line if not."""
    found = problems if problems is not None else RawProblems()
    converted = to_float(df, column, path, found)
    fraction = converted.notna() & (converted != converted.round())
    found.add_values(df, column, fraction, path, "an integer")
    too_large = ~fraction & (converted.abs() > limit)
    found.add_values(df, column, too_large, path, f"an integer within ±{limit:,}")
    _raise_alone(problems, found)
    return converted.where(~(fraction | too_large)).astype("Int64")


def to_utc_timestamp(
    df: pd.DataFrame, column: str, path: Path, require_offset: bool = False, problems: RawProblems | None = None
) -> pd.Series:
    """ISO 8601 text -> UTC. `require_offset`: a time of day must say its UTC offset (Z, +08:00);
    a shop's local time without one would otherwise be read as UTC, hours off, with no error."""
    found = problems if problems is not None else RawProblems()
    converted = pd.to_datetime(df[column], utc=True, format="ISO8601", errors="coerce")
    bad = converted.isna() & df[column].notna()
    found.add_values(df, column, bad, path, "an ISO 8601 timestamp")
    # The canonical column holds microseconds. Truncating a finer time would tie events logged
    # within one microsecond, losing their order (and cleaning drops an exact tie as a replay), so
    # it is refused like a bad value; nine digits ending in 000 lose nothing and pass.
    finer = converted.notna() & (converted.dt.nanosecond != 0)
    found.add_values(df, column, finer, path, "a timestamp in whole microseconds (at most 6 decimal places)")
    if require_offset:
        text = df[column].astype("string").str.strip()
        # a time of day, then its offset: a bare date's "-05" is its day, not an offset
        offset = r"\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?\s*(?:Z|[+-]\d{2}(?::?\d{2})?)$"
        naive = converted.notna() & ~finer & ~text.str.contains(offset, case=False, regex=True).fillna(False)
        found.add_values(df, column, naive, path, "a timestamp with a UTC offset (Z or +08:00)")
    _raise_alone(problems, found)
    return converted


def to_text(df: pd.DataFrame, column: str) -> pd.Series:
    """Text column with missing values kept missing (CSV columns are read as strings already)."""
    if pd.api.types.is_string_dtype(df[column]) and not pd.api.types.is_object_dtype(df[column]):
        return df[column]
    values = df[column].astype(object)
    return values.where(values.notna(), None).map(lambda v: v if v is None else str(v))


# Every column that joins tables or names a record is read with to_id. Ids are matched, and user
# ids pseudonymized, exactly as given: " u1" and "u1" would be two shoppers, and an event whose
# product_id is "p1 " would find no product (cleaning drops it). Trimming them here could merge
# ids the shop keeps apart without a word, so an id with whitespace at either end is refused; so
# is one holding an invisible format character (a zero-width space pasted in from a web page),
# which no one reading the export can see.
def to_id(df: pd.DataFrame, column: str, path: Path, problems: RawProblems | None = None) -> pd.Series:
    """An id column as text; an id with whitespace at either end (a space, tab, carriage return,
    no-break or ideographic space: what str.strip removes) or an invisible format character in it
    (Unicode category Cf: U+200B, U+200D, U+2060, U+FEFF, ...) goes to `problems` (None: raised at once)."""
    found = problems if problems is not None else RawProblems()
    ids = to_text(df, column)
    # one cheap look at each id (most are ASCII); the note is written for the first few only
    bad = ids.map(lambda v: isinstance(v, str) and (v != v.strip() or not v.isascii() and bool(invisible_characters(v))))
    bad = bad.astype(bool).to_numpy()
    notes = [_id_problem(v) for v in ids[bad].head(MAX_LISTED_PER_FILE)]
    found.add(path, column, [int(i) for i in df.index[bad]], notes)
    _raise_alone(problems, found)
    return ids


def _id_problem(value: str) -> str:
    """What makes `value` an id that looks like another (whitespace at an end, or hidden characters)."""
    if value != value.strip():
        return (f"{_example(value)} has whitespace at its start or end; trim it in the export "
                f"(ids match exactly: {_example(value)} and {_example(value.strip())} would be two ids)")
    hidden = invisible_characters(value)
    visible = "".join(ch for ch in value if ch not in hidden)
    return (f"{_example(value)} holds the invisible character(s) {', '.join(f'U+{ord(ch):04X}' for ch in hidden)}; "
            f"remove them in the export (ids match exactly: {_example(value)} and {_example(visible)} would be two ids)")


def parse_content(df: pd.DataFrame, path: Path, problems: RawProblems | None = None) -> pd.Series:
    """`key#value*key#value` -> attributes dict per product; a malformed string names its line."""
    found = problems if problems is not None else RawProblems()
    parsed, lines, notes = [], [], []
    for line, content in zip(df.index, df["content"]):
        if content is None:
            parsed.append(None)
            continue
        try:
            parsed.append(parse_attributes(str(content)))
        except ValueError as exc:
            parsed.append(None)
            lines.append(int(line))
            notes.append(str(exc))
    found.add(path, "content", lines, notes)
    _raise_alone(problems, found)
    return pd.Series(parsed, index=df.index, dtype=object)


def type_products(raw: pd.DataFrame, path: Path, problems: RawProblems | None = None) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "product_id": to_id(raw, "product_id", path, problems),
            "category": to_text(raw, "category"),
            "attributes": parse_content(raw, path, problems),
            "price": to_float(raw, "price", path, problems),
            "source": to_text(raw, "source"),
        }
    )


def type_copies(raw: pd.DataFrame, path: Path, problems: RawProblems | None = None) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "copy_id": to_id(raw, "copy_id", path, problems),
            "product_id": to_id(raw, "product_id", path, problems),
            "text": to_text(raw, "text"),
            "source": to_text(raw, "source"),
            "model_version": to_text(raw, "model_version"),
        }
    )


def type_users(raw: pd.DataFrame, path: Path, problems: RawProblems | None = None) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": to_id(raw, "user_id", path, problems),
            "age_band": to_text(raw, "age_band"),
            "city_tier": to_text(raw, "city_tier"),
            "signup_date": to_utc_timestamp(raw, "signup_date", path, problems=problems),
        }
    )


def type_events(raw: pd.DataFrame, path: Path, problems: RawProblems | None = None) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "event_id": to_id(raw, "event_id", path, problems),
            "user_id": to_id(raw, "user_id", path, problems),
            "product_id": to_id(raw, "product_id", path, problems),
            "copy_id": to_id(raw, "copy_id", path, problems),
            "event_type": to_text(raw, "event_type"),
            "timestamp": to_utc_timestamp(raw, "timestamp", path, require_offset=True, problems=problems),
            "position": to_int(raw, "position", path, problems=problems),
            "propensity": to_float(raw, "propensity", path, problems),
            "value": to_float(raw, "value", path, problems),
        }
    )


TYPERS: dict[str, Callable[[pd.DataFrame, Path, RawProblems | None], pd.DataFrame]] = {
    "products": type_products,
    "copies": type_copies,
    "users": type_users,
    "events": type_events,
}


def _read_and_type(
    source_dir: Path, tables: Iterable[str], problems: RawProblems | None = None
) -> tuple[dict[str, pd.DataFrame], dict[str, pd.DataFrame]]:
    """(raw, typed) frames of `tables`. Every file is read and every column typed before one
    RawFormatError names all that failed, so a shop fixes its files in one round, not one a run.
    Given `problems`, they go there instead (the frames: of the files that could be read)."""
    found = problems if problems is not None else RawProblems()
    raw: dict[str, pd.DataFrame] = {}
    typed: dict[str, pd.DataFrame] = {}
    for table in tables:
        path = raw_path(source_dir, table)
        try:
            read = read_raw_lines(source_dir, table)
        except RawFormatError as exc:
            found.add_unreadable(path, exc)
            continue
        found.add_lines(path, read.bad)  # its other lines are still typed: their problems too, in this round
        raw[table] = read.frame
        typed[table] = TYPERS[table](raw[table], path, found)
    _raise_alone(problems, found)
    return raw, typed


def check_raw_tables(
    source_dir: Path, tables: Iterable[str] = tuple(RAW_FILES), problems: RawProblems | None = None
) -> dict[str, pd.DataFrame]:
    """The raw (untyped) frames of `tables` in `source_dir`, once every file has read and every
    value typed as ingestion will (else one RawFormatError naming them all, in `source_dir`).
    Given `problems`, what fails goes there, to be raised with another folder's (the source
    stage checks a shop's export and the feedback log in one round)."""
    return _read_and_type(Path(source_dir), tables, problems)[0]


def read_source_tables(source_dir: Path) -> dict[str, pd.DataFrame]:
    """Every raw table, typed into the canonical columns (user ids still raw)."""
    if not source_dir.is_dir():
        raise FileNotFoundError(f"raw layer not found: {source_dir} (run the source stage first)")
    if not any(raw_path(source_dir, table).exists() for table in RAW_FILES):  # a source run that failed
        raise FileNotFoundError(f"raw layer {source_dir} is empty (run the source stage first: it failed, or never ran)")
    return _read_and_type(source_dir, RAW_FILES)[1]


def run_ingest(cfg: Config) -> dict[str, Any]:
    """source/ -> ingested/*.parquet with pseudonymized user ids; returns the stage summary."""
    tables = read_source_tables(cfg.stage_dir(SOURCE_STAGE))
    key = profile_key(cfg)  # the profile's recorded key, as the pseudonym_key stage checked
    tables["users"]["user_id"] = pseudonymize(tables["users"]["user_id"], key)
    tables["events"]["user_id"] = pseudonymize(tables["events"]["user_id"], key)
    dropped = drop_forgotten(tables, forgotten_pseudonyms(cfg))

    out_dir = cfg.stage_dir(STAGE)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    for table in TABLES:
        write_table(tables[table], out_dir, table)
    summary = {
        "stage": STAGE,
        "source": cfg.data.source,
        "rows": {table: int(len(tables[table])) for table in TABLES},
        "pseudonymized_user_ids": int(tables["users"]["user_id"].nunique()),
        "pseudonym_key_origin": key.origin,
        "pseudonym_key_id": key.key_id,
        "forgotten_shoppers_dropped": dropped,
    }
    return write_summary(out_dir, summary)


def drop_forgotten(tables: dict[str, pd.DataFrame], forgotten: frozenset[str]) -> dict[str, int]:
    """Drop the users and events rows of erased shoppers (`copyflow forget`), even where the
    shop's export still lists them: {"shoppers": how many were in this batch, "users": rows, "events": rows}."""
    found = set(tables["users"]["user_id"]) | set(tables["events"]["user_id"])
    dropped = {"shoppers": len(found & forgotten)}
    for table in ("users", "events"):
        erased = tables[table]["user_id"].isin(forgotten)
        dropped[table] = int(erased.sum())
        tables[table] = tables[table][~erased.to_numpy()]
    return dropped
