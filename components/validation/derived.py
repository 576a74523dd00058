"""Columns the gate derives from a batch so that checks spanning rows can be Great Expectations
column checks.

GE checks one row (or one pair of columns in a row) at a time. Whether a click came after the
impression it answers lives in another row, so the first impression's time is joined onto each
event as a column first, and the suite compares two columns of the same row. Derived columns are
seen only by the checks: they are not part of the canonical tables, the batch statistics or the
drift reference.
"""

from __future__ import annotations

import pandas as pd

FIRST_IMPRESSION = "first_impression_at"
# An event answers the first impression of the same shopper, product and copy (without a copy_id,
# of the same shopper and product).
IMPRESSION_KEY = ("user_id", "product_id", "copy_id")
COPY_KEY = "_copy_key"
NEEDS = {FIRST_IMPRESSION: (*IMPRESSION_KEY, "event_type", "timestamp")}


def derived_columns(table: str) -> set[str]:
    return set(NEEDS) if table == "events" else set()


def with_derived_columns(table: str, frame: pd.DataFrame, usable: set[str]) -> pd.DataFrame:
    """`frame` plus the table's derived columns that its usable columns allow (a copy; the index is kept,
    so failing rows are reported with their own row numbers)."""
    if table != "events" or not set(NEEDS[FIRST_IMPRESSION]) <= usable:
        return frame
    # An event without a copy_id (every event of a source without copies, OBD; a click that does
    # not say which copy it answers) answers the shopper's first impression of the product.
    keyed = frame.assign(**{COPY_KEY: frame["copy_id"].fillna("")})
    by_copy = [*IMPRESSION_KEY[:-1], COPY_KEY]
    by_product = list(IMPRESSION_KEY[:-1])
    impressions = keyed[keyed["event_type"] == "impression"]
    first = keyed.join(impressions.groupby(by_copy, dropna=True)["timestamp"].min().rename(FIRST_IMPRESSION), on=by_copy)
    no_copy = (frame["copy_id"].isna() & (frame["event_type"] != "impression")).to_numpy()
    if no_copy.any():
        any_copy = impressions.groupby(by_product, dropna=True)["timestamp"].min().rename(FIRST_IMPRESSION)
        first.loc[no_copy, FIRST_IMPRESSION] = keyed.loc[no_copy, by_product].join(any_copy, on=by_product)[FIRST_IMPRESSION]
    return first.drop(columns=COPY_KEY)


def unavailable_reason(table: str, column: str, usable: set[str]) -> str:
    """Why a derived column could not be computed ('' when it could)."""
    missing = [c for c in NEEDS.get(column, ()) if c not in usable]
    return f"{table}.{column} needs {', '.join(f'{table}.{c}' for c in missing)}, which failed the schema checks" if missing else ""
