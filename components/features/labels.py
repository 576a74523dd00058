"""Labels: link each click/purchase to the impression it answers.

An outcome event (click, add_to_cart, purchase) carries the user, product and, for simulated
data, the copy of the impression that caused it, and comes seconds after it. We link it to the
most recent impression at or before it with the same user + product (+ copy, + slot, when the
outcome carries them), no more than `link_max_hours` earlier: a click two weeks after the last
impression of its product answers something the log does not show, and linked, it would label
an old impression (across a split boundary: training learning from the test period). With
`label_window_days > 0` the label instead means "the user clicked (bought) this product within
that many days after the impression", however the log links them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from components.features.pit import is_member

NO_COPY = ""


@dataclass(frozen=True)
class LinkReport:
    linked: int
    unlinked: int


def _asof_link(outcomes: pd.DataFrame, impressions: pd.DataFrame, by: list[str], max_gap: pd.Timedelta | None) -> pd.Series:
    """event_id of the latest impression at/before each outcome with equal `by` keys, at most
    `max_gap` earlier (NaN if none)."""
    if outcomes.empty:
        return pd.Series([], dtype=object, index=outcomes.index)
    left = outcomes[by + ["timestamp"]].assign(_row=np.arange(len(outcomes))).sort_values("timestamp")
    right = impressions[by + ["timestamp", "event_id"]].rename(columns={"event_id": "impression_id"})
    right = right.sort_values("timestamp")
    linked = pd.merge_asof(left, right, on="timestamp", by=by, direction="backward", allow_exact_matches=True, tolerance=max_gap)
    return pd.Series(linked.sort_values("_row")["impression_id"].to_numpy(), index=outcomes.index)


def _slots(events: pd.DataFrame) -> pd.Series:
    """The impression slot as an integer key (-1 where unknown)."""
    if "position" not in events.columns:
        return pd.Series(-1, index=events.index, dtype=np.int64)
    return pd.to_numeric(events["position"], errors="coerce").fillna(-1).astype(np.int64)


def link_outcomes(impressions: pd.DataFrame, outcomes: pd.DataFrame, link_max_hours: float | None = None) -> tuple[pd.Series, LinkReport]:
    """Impression event_id for every outcome row (NaN when no impression matches in the
    `link_max_hours` before it; None: however long before)."""
    max_gap = None if link_max_hours is None else pd.Timedelta(hours=link_max_hours)
    impressions = impressions.assign(_copy=impressions["copy_id"].fillna(NO_COPY), _slot=_slots(impressions))
    outcomes = outcomes.assign(_copy=outcomes["copy_id"].fillna(NO_COPY), _slot=_slots(outcomes))
    has_copy, has_slot = outcomes["copy_id"].notna(), outcomes["_slot"] >= 0
    # An outcome that names its copy must match the impression's copy, and one that names its
    # slot, the impression's slot (OBD shows one item in several slots at the same instant: on
    # user + product alone both clicks went to one impression); otherwise user + product.
    parts = []
    for copy_known in (True, False):
        for slot_known in (True, False):
            keys = ["user_id", "product_id"] + (["_copy"] if copy_known else []) + (["_slot"] if slot_known else [])
            parts.append(_asof_link(outcomes[(has_copy == copy_known) & (has_slot == slot_known)], impressions, keys, max_gap))
    impression_id = pd.concat(parts).reindex(outcomes.index)
    n_linked = int(impression_id.notna().sum())
    return impression_id, LinkReport(linked=n_linked, unlinked=len(outcomes) - n_linked)


def _windowed_label(impressions: pd.DataFrame, outcomes: pd.DataFrame, window_days: int) -> np.ndarray:
    """1 where the user has an outcome on the same product in [t, t + window]."""
    if outcomes.empty:
        return np.zeros(len(impressions), dtype=np.int64)
    left = impressions[["user_id", "product_id", "timestamp"]].assign(_row=np.arange(len(impressions)))
    right = outcomes[["user_id", "product_id", "timestamp"]].assign(_outcome_time=outcomes["timestamp"])
    matched = pd.merge_asof(
        left.sort_values("timestamp"),
        right.sort_values("timestamp"),
        on="timestamp",
        by=["user_id", "product_id"],
        direction="forward",
        allow_exact_matches=True,
        tolerance=pd.Timedelta(days=window_days),
    ).sort_values("_row")
    return matched["_outcome_time"].notna().to_numpy().astype(np.int64)


def impression_labels(
    impressions: pd.DataFrame, events: pd.DataFrame, label_window_days: int, link_max_hours: float | None = None
) -> tuple[pd.DataFrame, dict[str, int]]:
    """`label` (clicked) and `label_purchase` (bought) per impression, aligned to `impressions`.

    Returns the two columns (index of `impressions`) and link counts for the stage summary.
    """
    report: dict[str, int] = {}
    labels = pd.DataFrame(index=impressions.index)
    for event_type, column in (("click", "label"), ("purchase", "label_purchase")):
        outcomes = events[events["event_type"] == event_type]
        if label_window_days > 0:
            labels[column] = _windowed_label(impressions, outcomes, label_window_days)
            continue
        impression_id, link = link_outcomes(impressions, outcomes, link_max_hours)
        labels[column] = is_member(impressions["event_id"], impression_id).astype(np.int64)
        report[f"{event_type}_linked"] = link.linked
        report[f"{event_type}_unlinked"] = link.unlinked
    return labels, report
