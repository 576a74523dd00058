"""The canonical schema: four tables every source is mapped into, stored as parquet.

products  product_id, category, attributes (key -> list of values), price, source
copies    copy_id, product_id, text, source (human|generated), model_version
users     user_id (pseudonymized), age_band, city_tier, signup_date
events    event_id, user_id, product_id, copy_id, event_type, timestamp, position,
          propensity, value

`write_table` enforces the schema on the way out; `load_*` enforce it on the way in and give
a clear `SchemaError` (never a silently different frame) when a file does not match.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

EVENT_TYPES = ("impression", "click", "add_to_cart", "purchase")
TABLES = ("products", "copies", "users", "events")

ATTRIBUTES_TYPE = pa.map_(pa.string(), pa.list_(pa.string()))
TIMESTAMP_TYPE = pa.timestamp("us", tz="UTC")

SCHEMAS: dict[str, pa.Schema] = {
    "products": pa.schema(
        [
            pa.field("product_id", pa.string()),
            pa.field("category", pa.string()),
            pa.field("attributes", ATTRIBUTES_TYPE),
            pa.field("price", pa.float64()),
            pa.field("source", pa.string()),
        ]
    ),
    "copies": pa.schema(
        [
            pa.field("copy_id", pa.string()),
            pa.field("product_id", pa.string()),
            pa.field("text", pa.string()),
            pa.field("source", pa.string()),
            pa.field("model_version", pa.string()),
        ]
    ),
    "users": pa.schema(
        [
            pa.field("user_id", pa.string()),
            pa.field("age_band", pa.string()),
            pa.field("city_tier", pa.string()),
            pa.field("signup_date", TIMESTAMP_TYPE),
        ]
    ),
    "events": pa.schema(
        [
            pa.field("event_id", pa.string()),
            pa.field("user_id", pa.string()),
            pa.field("product_id", pa.string()),
            pa.field("copy_id", pa.string()),
            pa.field("event_type", pa.string()),
            pa.field("timestamp", TIMESTAMP_TYPE),
            pa.field("position", pa.int32()),
            pa.field("propensity", pa.float64()),
            pa.field("value", pa.float64()),
        ]
    ),
}

ID_COLUMNS = {"products": "product_id", "copies": "copy_id", "users": "user_id", "events": "event_id"}


class SchemaError(ValueError):
    """A table does not match the canonical schema."""


def table_path(data_dir: Path | str, table: str) -> Path:
    return Path(data_dir) / f"{table}.parquet"


def _attributes_to_arrow(values: pd.Series) -> pa.Array:
    """dict[str, list[str]] per row -> arrow map (pandas has no native map dtype)."""
    return pa.array(
        [None if v is None else [(k, list(vs)) for k, vs in v.items()] for v in values],
        type=ATTRIBUTES_TYPE,
    )


def to_arrow(df: pd.DataFrame, table: str) -> pa.Table:
    schema = SCHEMAS[table]
    missing = [f.name for f in schema if f.name not in df.columns]
    if missing:
        raise SchemaError(f"{table}: missing columns {missing}")
    arrays = []
    for field in schema:
        column = df[field.name]
        try:
            if field.type == ATTRIBUTES_TYPE:
                arrays.append(_attributes_to_arrow(column))
            else:
                arrays.append(pa.array(column, type=field.type, from_pandas=True))
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as exc:
            raise SchemaError(f"{table}.{field.name}: cannot convert to {field.type}: {exc}") from exc
    return pa.Table.from_arrays(arrays, schema=schema)


def write_table(df: pd.DataFrame, data_dir: Path | str, table: str) -> Path:
    path = table_path(data_dir, table)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(to_arrow(df, table), path)
    return path


def _from_arrow(arrow: pa.Table) -> pd.DataFrame:
    df = arrow.to_pandas()
    if "attributes" in df.columns:
        df["attributes"] = [
            None if v is None else {k: [str(x) for x in vs] for k, vs in v} for v in df["attributes"]
        ]
    return df


def load_table(data_dir: Path | str, table: str, *, strict: bool = True) -> pd.DataFrame:
    """Read one canonical table. With `strict`, the file's schema must match exactly."""
    if table not in SCHEMAS:
        raise SchemaError(f"unknown table {table!r}; expected one of {TABLES}")
    path = table_path(data_dir, table)
    if not path.exists():
        raise SchemaError(f"{table}: file not found: {path}")
    if path.stat().st_size == 0:
        raise SchemaError(f"{table}: file is empty: {path}")
    try:
        arrow = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise SchemaError(f"{table}: not a readable parquet file: {path} ({exc})") from exc
    if strict:
        expected = SCHEMAS[table]
        problems = []
        for field in expected:
            if field.name not in arrow.schema.names:
                problems.append(f"missing column {field.name!r}")
            elif not arrow.schema.field(field.name).type.equals(field.type):
                problems.append(
                    f"column {field.name!r} has type {arrow.schema.field(field.name).type}, expected {field.type}"
                )
        if problems:
            raise SchemaError(f"{table} ({path}): " + "; ".join(problems))
        arrow = arrow.select(expected.names)
    return _from_arrow(arrow)


def load_products(data_dir: Path | str) -> pd.DataFrame:
    return load_table(data_dir, "products")


def load_copies(data_dir: Path | str) -> pd.DataFrame:
    return load_table(data_dir, "copies")


def load_users(data_dir: Path | str) -> pd.DataFrame:
    return load_table(data_dir, "users")


def load_events(data_dir: Path | str) -> pd.DataFrame:
    return load_table(data_dir, "events")


def load_all(data_dir: Path | str) -> dict[str, pd.DataFrame]:
    return {table: load_table(data_dir, table) for table in TABLES}


def tables_sha256(data_dir: Path | str) -> str:
    """One digest of a batch's table files: names the exact batch a gate verdict was given on."""
    digest = hashlib.sha256()
    for table in TABLES:
        path = table_path(data_dir, table)
        digest.update(f"{table}\0".encode())
        digest.update(path.read_bytes() if path.exists() else b"(missing)")
    return digest.hexdigest()


def write_all(tables: dict[str, pd.DataFrame], data_dir: Path | str) -> None:
    for table in TABLES:
        write_table(tables[table], data_dir, table)
