"""Point-in-time primitives: aggregates of events STRICTLY before each query's timestamp.

Every feature of copyflow is built from two operations on a stream of (group, time) events:
the sum of event weights, and the time of the latest event, over events of the same group with
`event_time < query_time`. Both are computed in one stable sort of queries and events together,
where a query sorts BEFORE any event of the same group and the same timestamp, so an event at
exactly the query's time (its own click, a same-second duplicate) is never counted.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

NO_EVENT = np.iinfo(np.int64).min
_EPOCH = pd.Timestamp(0, tz="UTC")


def to_epoch_us(timestamps: pd.Series) -> np.ndarray:
    """UTC timestamps -> int64 microseconds since the epoch (exact, whatever the unit)."""
    if not isinstance(timestamps.dtype, pd.DatetimeTZDtype):
        raise TypeError(f"{timestamps.name!r}: expected tz-aware UTC timestamps, got {timestamps.dtype}")
    if timestamps.isna().any():
        raise ValueError(f"{timestamps.name!r}: {int(timestamps.isna().sum())} missing timestamps")
    return ((timestamps - _EPOCH) // pd.Timedelta(1, "us")).to_numpy(dtype=np.int64)


def is_member(values: pd.Series, reference: pd.Series) -> np.ndarray:
    """values.isin(reference) by hashing (pandas' Arrow-string isin is ~10x slower at 1e5 rows)."""
    return pd.Index(reference.dropna().unique()).get_indexer(values) >= 0


def _sorted_stream(
    query_group: np.ndarray, query_time: np.ndarray, event_group: np.ndarray, event_time: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Order of the merged stream (group, time, queries first at ties) and where groups start."""
    group = np.concatenate([query_group, event_group]).astype(np.int64, copy=False)
    time = np.concatenate([query_time, event_time]).astype(np.int64, copy=False)
    is_event = np.concatenate([np.zeros(len(query_group), np.int8), np.ones(len(event_group), np.int8)])
    order = np.lexsort((is_event, time, group))
    sorted_group = group[order]
    group_start = np.ones(len(order), dtype=bool)
    group_start[1:] = sorted_group[1:] != sorted_group[:-1]
    return order, group_start, is_event[order].astype(bool)


def prior_sum(
    query_group: np.ndarray,
    query_time: np.ndarray,
    event_group: np.ndarray,
    event_time: np.ndarray,
    event_weight: np.ndarray | None = None,
) -> np.ndarray:
    """For each query: sum of weights of events with the same group and event_time < query_time.

    Integer weights (the default: 1 per event, i.e. a count) give exact integer sums.
    """
    n_query = len(query_group)
    if event_weight is None:
        event_weight = np.ones(len(event_group), dtype=np.int64)
    event_weight = np.asarray(event_weight)
    if len(event_weight) != len(event_group):
        raise ValueError("event_weight must have one value per event")
    if event_weight.dtype.kind == "f" and not np.isfinite(event_weight).all():
        raise ValueError(f"event_weight has {int((~np.isfinite(event_weight)).sum())} non-finite value(s)")
    order, group_start, _ = _sorted_stream(query_group, query_time, event_group, event_time)
    weight = np.concatenate([np.zeros(n_query, dtype=event_weight.dtype), event_weight])[order]
    # Running totals restart in each group. (One running total over all groups, minus the total
    # where each group began, lets one shopper's huge purchase wipe out every later shopper's
    # sum: 1e308 + 129 - 1e308 is 0, and 1e308 + 1e308 overflows to inf, then inf - inf is NaN.)
    group_index = np.cumsum(group_start) - 1
    within_group = pd.Series(weight).groupby(group_index).cumsum().to_numpy() - weight
    result = np.empty(n_query, dtype=within_group.dtype)
    is_query = order < n_query
    result[order[is_query]] = within_group[is_query]
    return result


def prior_last_time(
    query_group: np.ndarray, query_time: np.ndarray, event_group: np.ndarray, event_time: np.ndarray
) -> np.ndarray:
    """For each query: latest event_time of the same group with event_time < query_time, or NO_EVENT."""
    n_query = len(query_group)
    order, group_start, is_event = _sorted_stream(query_group, query_time, event_group, event_time)
    time = np.concatenate([query_time, event_time]).astype(np.int64, copy=False)[order]
    positions = np.arange(len(order))
    last_event_row = np.maximum.accumulate(np.where(is_event, positions, -1))
    start_row = np.maximum.accumulate(np.where(group_start, positions, 0))
    found = last_event_row >= start_row
    latest = np.where(found, time[np.maximum(last_event_row, 0)], NO_EVENT)
    result = np.empty(n_query, dtype=np.int64)
    is_query = order < n_query
    result[order[is_query]] = latest[is_query]
    return result
