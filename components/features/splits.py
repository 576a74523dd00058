"""Time-based split: the last `test_days` calendar days are test, the `valid_days` before valid."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class SplitBoundaries:
    valid_start: pd.Timestamp
    test_start: pd.Timestamp
    end: pd.Timestamp

    def as_dict(self) -> dict[str, str]:
        return {k: v.isoformat() for k, v in vars(self).items()}


def split_boundaries(last_timestamp: pd.Timestamp, valid_days: int, test_days: int) -> SplitBoundaries:
    """Whole UTC days ending at midnight after the last event, so splits are calendar days."""
    end = last_timestamp.tz_convert("UTC").normalize() + pd.Timedelta(days=1)
    test_start = end - pd.Timedelta(days=test_days)
    return SplitBoundaries(valid_start=test_start - pd.Timedelta(days=valid_days), test_start=test_start, end=end)


def assign_split(timestamps: pd.Series, boundaries: SplitBoundaries) -> pd.Series:
    split = np.where(
        timestamps >= boundaries.test_start,
        "test",
        np.where(timestamps >= boundaries.valid_start, "valid", "train"),
    )
    result = pd.Series(split, index=timestamps.index, name="split")
    empty = [name for name in SPLITS if not (result == name).any()]
    if empty:
        first, last = timestamps.min(), timestamps.max()
        ordered = timestamps.sort_values()
        gaps = ordered.diff()
        hint = "features.valid_days / features.test_days too large for this data?"
        if gaps.notna().any() and gaps.max() > boundaries.end - boundaries.valid_start:
            widest = gaps.idxmax()
            hint = (f"no impressions from {ordered.shift().loc[widest]} to {ordered.loc[widest]} ({gaps.loc[widest].days} days): "
                    "new events after an old batch, such as a stale export with fresh feedback from `copyflow serve`?")
        raise ValueError(
            f"time split leaves {empty} empty: impressions span {first} .. {last}, but the split needs "
            f"valid from {boundaries.valid_start} and test from {boundaries.test_start} ({hint})"
        )
    return result
