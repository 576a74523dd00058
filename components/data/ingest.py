"""Pipeline stage `ingest`: raw layer (source/) -> canonical parquet (ingested/), ids pseudonymized.

Ingestion types every column and pseudonymizes user ids; it does NOT clean: duplicates, missing
values, bad prices and bots pass through so the validation gate sees the batch as delivered and
cleaning (after the gate) can count what it removes. A file that cannot be read as its format
(not UTF-8, broken JSON/CSV, a missing column, a number that is not a number) stops ingestion
with an error naming the file, column and line(s).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components.config import Config
from components.data.attributes import parse_attributes
from components.data.privacy import profile_key, pseudonymize
from components.data.raw import RAW_FILES, RawFormatError, line_numbers, raw_path, read_raw_table
from components.data.schema import TABLES, write_table
from components.data.summary import write_summary

STAGE = "ingested"
SOURCE_STAGE = "source"


def _bad_values(df: pd.DataFrame, column: str, bad: pd.Series, path: Path, expected: str) -> RawFormatError:
    lines = line_numbers(df, bad)
    examples = df.loc[bad, column].head(3).tolist()
    return RawFormatError(
        f"{path}: column {column!r}: {int(bad.sum())} value(s) are not {expected}; "
        f"lines {lines}, e.g. {examples}"
    )


def _booleans(values: pd.Series) -> pd.Series:
    """JSON true/false (a CSV column is text and holds none; only JSON values need the look)."""
    if pd.api.types.is_bool_dtype(values):
        return values.notna()
    if not pd.api.types.is_object_dtype(values):
        return pd.Series(False, index=values.index)
    return values.map(lambda v: isinstance(v, (bool, np.bool_))).astype(bool)


def to_float(df: pd.DataFrame, column: str, path: Path) -> pd.Series:
    converted = pd.to_numeric(df[column], errors="coerce").astype("float64")
    # "inf" and "nan" parse as numbers, but no price, value or position is one: one inf purchase
    # would turn a running spend into inf (and inf - inf into NaN) downstream. A JSON true or
    # false parses as 1 or 0, a price inside the allowed range: a flag in the wrong field.
    bad = (converted.isna() & df[column].notna()) | np.isinf(converted.to_numpy()) | _booleans(df[column])
    if bad.any():
        raise _bad_values(df, column, bad, path, "finite numbers")
    return converted


INT32_MAX = 2**31 - 1


def to_int(df: pd.DataFrame, column: str, path: Path, limit: int = INT32_MAX) -> pd.Series:
    """Whole numbers that fit the canonical column (int32 by default), named by line if not."""
    converted = to_float(df, column, path)
    bad = converted.notna() & (converted != converted.round())
    if bad.any():
        raise _bad_values(df, column, bad, path, "integers")
    bad = converted.abs() > limit
    if bad.any():
        raise _bad_values(df, column, bad, path, f"integers within ±{limit:,}")
    return converted.astype("Int64")


def to_utc_timestamp(df: pd.DataFrame, column: str, path: Path, require_offset: bool = False) -> pd.Series:
    """ISO 8601 text -> UTC. `require_offset`: a time of day must say its UTC offset (Z, +08:00);
    a shop's local time without one would otherwise be read as UTC, hours off, with no error."""
    converted = pd.to_datetime(df[column], utc=True, format="ISO8601", errors="coerce")
    bad = converted.isna() & df[column].notna()
    if bad.any():
        raise _bad_values(df, column, bad, path, "ISO 8601 timestamps")
    # The canonical column holds microseconds. Truncating a finer time would tie events logged
    # within one microsecond, losing their order (and cleaning drops an exact tie as a replay), so
    # it is refused like a bad value; nine digits ending in 000 lose nothing and pass.
    finer = converted.notna() & (converted.dt.nanosecond != 0)
    if finer.any():
        raise _bad_values(df, column, finer, path, "timestamps in whole microseconds (at most 6 decimal places)")
    if require_offset:
        text = df[column].astype("string").str.strip()
        # a time of day, then its offset: a bare date's "-05" is its day, not an offset
        offset = r"\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?\s*(?:Z|[+-]\d{2}(?::?\d{2})?)$"
        naive = df[column].notna() & ~text.str.contains(offset, case=False, regex=True).fillna(False)
        if naive.any():
            raise _bad_values(df, column, naive, path, "timestamps with a UTC offset (Z or +08:00)")
    return converted


def to_text(df: pd.DataFrame, column: str) -> pd.Series:
    """Text column with missing values kept missing (CSV columns are read as strings already)."""
    if pd.api.types.is_string_dtype(df[column]) and not pd.api.types.is_object_dtype(df[column]):
        return df[column]
    values = df[column].astype(object)
    return values.where(values.notna(), None).map(lambda v: v if v is None else str(v))


def parse_content(df: pd.DataFrame, path: Path) -> pd.Series:
    """`key#value*key#value` -> attributes dict per product; a malformed string names its line."""
    parsed = []
    for line, content in zip(df.index, df["content"]):
        if content is None:
            parsed.append(None)
            continue
        try:
            parsed.append(parse_attributes(str(content)))
        except ValueError as exc:
            raise RawFormatError(f"{path}: line {line}: column 'content': {exc}") from exc
    return pd.Series(parsed, index=df.index, dtype=object)


def type_products(raw: pd.DataFrame, path: Path) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "product_id": to_text(raw, "product_id"),
            "category": to_text(raw, "category"),
            "attributes": parse_content(raw, path),
            "price": to_float(raw, "price", path),
            "source": to_text(raw, "source"),
        }
    )


def type_copies(raw: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({c: to_text(raw, c) for c in ["copy_id", "product_id", "text", "source", "model_version"]})


def type_users(raw: pd.DataFrame, path: Path) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": to_text(raw, "user_id"),
            "age_band": to_text(raw, "age_band"),
            "city_tier": to_text(raw, "city_tier"),
            "signup_date": to_utc_timestamp(raw, "signup_date", path),
        }
    )


def type_events(raw: pd.DataFrame, path: Path) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "event_id": to_text(raw, "event_id"),
            "user_id": to_text(raw, "user_id"),
            "product_id": to_text(raw, "product_id"),
            "copy_id": to_text(raw, "copy_id"),
            "event_type": to_text(raw, "event_type"),
            "timestamp": to_utc_timestamp(raw, "timestamp", path, require_offset=True),
            "position": to_int(raw, "position", path),
            "propensity": to_float(raw, "propensity", path),
            "value": to_float(raw, "value", path),
        }
    )


def read_source_tables(source_dir: Path) -> dict[str, pd.DataFrame]:
    """Every raw table, typed into the canonical columns (user ids still raw)."""
    if not source_dir.is_dir():
        raise FileNotFoundError(f"raw layer not found: {source_dir} (run the source stage first)")
    raw = {table: read_raw_table(source_dir, table) for table in RAW_FILES}
    return {
        "products": type_products(raw["products"], raw_path(source_dir, "products")),
        "copies": type_copies(raw["copies"]),
        "users": type_users(raw["users"], raw_path(source_dir, "users")),
        "events": type_events(raw["events"], raw_path(source_dir, "events")),
    }


def run_ingest(cfg: Config) -> dict[str, Any]:
    """source/ -> ingested/*.parquet with pseudonymized user ids; returns the stage summary."""
    tables = read_source_tables(cfg.stage_dir(SOURCE_STAGE))
    key = profile_key(cfg)  # the profile's recorded key, as the pseudonym_key stage checked
    tables["users"]["user_id"] = pseudonymize(tables["users"]["user_id"], key)
    tables["events"]["user_id"] = pseudonymize(tables["events"]["user_id"], key)

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
    }
    return write_summary(out_dir, summary)
