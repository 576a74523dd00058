import pandas as pd
import pytest

from components.features.splits import assign_split, split_boundaries


def test_boundaries_are_whole_days_before_the_end_of_the_last_day():
    b = split_boundaries(pd.Timestamp("2026-01-25 13:45", tz="UTC"), valid_days=3, test_days=5)
    assert b.end == pd.Timestamp("2026-01-26", tz="UTC")
    assert b.test_start == pd.Timestamp("2026-01-21", tz="UTC")
    assert b.valid_start == pd.Timestamp("2026-01-18", tz="UTC")


def test_assign_split_by_time_and_reject_an_empty_split():
    stamps = pd.Series(pd.to_datetime(["2026-01-01", "2026-01-17 23:59", "2026-01-18", "2026-01-21", "2026-01-25 13:45"], utc=True, format="ISO8601"))
    b = split_boundaries(stamps.max(), valid_days=3, test_days=5)
    assert assign_split(stamps, b).tolist() == ["train", "train", "valid", "test", "test"]
    with pytest.raises(ValueError, match=r"\['train'\] empty"):
        assign_split(stamps[2:], b)


def test_an_empty_split_behind_a_long_gap_names_the_gap():
    """A stale export with fresh feedback appended: the error says where the hole is."""
    stamps = pd.Series(pd.to_datetime(["2026-02-02", "2026-02-10", "2026-02-15", "2026-11-24 10:00"], utc=True, format="ISO8601"))
    b = split_boundaries(stamps.max(), valid_days=3, test_days=5)
    with pytest.raises(ValueError, match=r"\['valid'\] empty.*no impressions from 2026-02-15 00:00:00\+00:00 to 2026-11-24 10:00:00\+00:00 \(282 days\)"):
        assign_split(stamps, b)
