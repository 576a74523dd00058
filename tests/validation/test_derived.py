"""The columns the gate derives for checks that span rows."""

from __future__ import annotations

import pandas as pd

from components.validation.derived import FIRST_IMPRESSION, unavailable_reason, with_derived_columns

COLUMNS = {"event_id", "user_id", "product_id", "copy_id", "event_type", "timestamp"}


def events(rows: list[tuple]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["user_id", "product_id", "copy_id", "event_type", "timestamp"], index=[10 * (i + 1) for i in range(len(rows))])
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True)
    frame.insert(0, "event_id", [f"e{i}" for i in range(len(rows))])
    return frame


def test_each_event_gets_the_first_impression_of_its_shopper_product_and_copy():
    frame = events([
        ("u1", "p1", "c1", "impression", "2026-01-05T10:00Z"),
        ("u1", "p1", "c1", "impression", "2026-01-05T09:00Z"),
        ("u1", "p1", "c1", "click", "2026-01-05T10:01Z"),
        ("u1", "p1", "c2", "click", "2026-01-05T10:02Z"),  # another copy: no impression of it
        ("u2", "p1", "c1", "click", "2026-01-05T08:00Z"),  # another shopper: no impression
    ])

    derived = with_derived_columns("events", frame, COLUMNS)

    first = derived[FIRST_IMPRESSION]
    assert list(derived.index) == [10, 20, 30, 40, 50]  # failing rows keep their row numbers
    assert (first.loc[[10, 20, 30]] == pd.Timestamp("2026-01-05T09:00Z")).all()
    assert first.loc[[40, 50]].isna().all()
    assert list(frame.columns) == ["event_id", "user_id", "product_id", "copy_id", "event_type", "timestamp"]  # input untouched


def test_without_copy_ids_an_event_answers_the_shoppers_impression_of_the_product():
    frame = events([
        ("u1", "p1", None, "impression", "2026-01-05T09:00Z"),
        ("u1", "p1", None, "click", "2026-01-05T09:00Z"),
        (None, "p1", None, "click", "2026-01-05T09:00Z"),  # no shopper: nothing to compare with
    ])

    first = with_derived_columns("events", frame, COLUMNS)[FIRST_IMPRESSION]

    assert first.loc[20] == pd.Timestamp("2026-01-05T09:00Z") and pd.isna(first.loc[30])


def test_nothing_is_derived_from_columns_that_failed_their_schema_checks():
    frame = events([("u1", "p1", "c1", "impression", "2026-01-05T09:00Z")])
    usable = COLUMNS - {"timestamp"}

    assert with_derived_columns("events", frame, usable) is frame
    assert unavailable_reason("events", FIRST_IMPRESSION, usable) == "events.first_impression_at needs events.timestamp, which failed the schema checks"
    assert unavailable_reason("events", FIRST_IMPRESSION, COLUMNS) == ""
    assert with_derived_columns("users", frame, COLUMNS) is frame
