import numpy as np
import pandas as pd
import pytest

from components.features.pit import NO_EVENT, is_member, prior_last_time, prior_sum, to_epoch_us


def test_prior_sum_counts_only_strictly_earlier_events_of_the_same_group():
    query_group = np.array([0, 0, 0, 1, 1])
    query_time = np.array([5, 10, 11, 10, 0])
    event_group = np.array([0, 0, 0, 1, 2, 0])
    event_time = np.array([1, 10, 10, 9, 1, 4])  # two events exactly at t=10 in group 0
    counts = prior_sum(query_group, query_time, event_group, event_time)
    # group 0: events at 1,4 are < 5; at t=10 the two same-time events are excluded; at 11 all four count
    assert counts.tolist() == [2, 2, 4, 1, 0]
    assert counts.dtype == np.int64


def test_prior_sum_weights_and_empty_events():
    weights = np.array([2.5, 1.0, 4.0])
    sums = prior_sum(np.array([7, 7]), np.array([3, 100]), np.array([7, 7, 8]), np.array([1, 3, 0]), weights)
    assert sums.tolist() == [2.5, 3.5]
    empty = prior_sum(np.array([1, 2]), np.array([1, 2]), np.array([], np.int64), np.array([], np.int64))
    assert empty.tolist() == [0, 0]
    with pytest.raises(ValueError, match="one value per event"):
        prior_sum(np.array([1]), np.array([1]), np.array([1, 1]), np.array([0, 0]), np.array([1.0]))


def test_a_non_finite_weight_is_refused():
    for bad in (np.inf, np.nan):
        with pytest.raises(ValueError, match="1 non-finite value"):
            prior_sum(np.array([0, 1]), np.array([5, 5]), np.array([0, 1]), np.array([1, 1]), np.array([bad, 2.0]))


def test_one_groups_huge_sum_leaves_the_other_groups_exact():
    # A running total over all groups, minus each group's starting total, gave shopper 1 nan
    # (1e308 + 1e308 overflows) or 256 instead of 188 (1e18 swallows 129 + 59).
    for huge in (1e308, 1e18):
        sums = prior_sum(np.array([1, 2]), np.array([10, 10]), np.array([0, 0, 1, 1, 2]), np.array([1, 2, 3, 4, 5]),
                         np.array([huge, huge, 129.0, 59.0, 7.5]))
        assert sums.tolist() == [188.0, 7.5]


def test_prior_last_time_is_latest_earlier_event_or_no_event():
    last = prior_last_time(
        np.array([0, 0, 1, 2]),
        np.array([10, 3, 10, 10]),
        np.array([0, 0, 0, 1, 2]),
        np.array([2, 9, 10, 10, 1]),
    )
    # group 0 at 10: the event at exactly 10 is excluded -> 9; group 1 only has an event at 10 -> none
    assert last.tolist() == [9, 2, NO_EVENT, 1]


def test_to_epoch_us_is_exact_and_rejects_naive_or_missing_times():
    stamps = pd.Series(pd.to_datetime(["1970-01-01 00:00:01.000002"], utc=True))
    assert to_epoch_us(stamps).tolist() == [1_000_002]
    with pytest.raises(TypeError, match="tz-aware"):
        to_epoch_us(pd.Series(pd.to_datetime(["2026-01-01"])))
    with pytest.raises(ValueError, match="missing"):
        to_epoch_us(pd.Series([pd.Timestamp("2026-01-01", tz="UTC"), pd.NaT], dtype="datetime64[us, UTC]"))



def test_is_member_is_isin_for_every_position_of_the_reference():
    reference = pd.Series(["a", None, "b", "a"])
    values = pd.Series(["a", "b", "c", None])
    assert is_member(values, reference).tolist() == [True, True, False, False]  # a missing value is no member
    assert is_member(values, reference).tolist() == (values.isin(reference.dropna())).tolist()
