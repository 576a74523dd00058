"""Shopper affinities to attribute values and categories, point-in-time and end-of-data.

A shopper's affinity to a value v of key k is their smoothed click share on it:
    (clicks on products with v + s / V_k) / (clicks on products having key k + s)
with V_k the number of distinct values of k in the catalog and s the prior strength, so a
shopper with no clicks sits at the uniform share 1 / V_k. Features use clicks strictly before
the impression; `user_affinity_table` uses all clicks (for generation and cold-start fallbacks).

A shopper's *top* value of a key is the value with most clicks (ties: the one that got there
first); copies that mention top values are what the simulator's shoppers respond to.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from components.features.attribute_index import AttributeIndex, Csr
from components.features.pit import prior_sum


@dataclass(frozen=True)
class EventCodes:
    """Integer-coded events: shopper, product, time (us) — rows already in a fixed order."""

    user: np.ndarray
    product: np.ndarray
    time: np.ndarray

    def __len__(self) -> int:
        return len(self.user)


@dataclass(frozen=True)
class ClickPairs:
    """Clicks exploded to one row per attribute pair of the clicked product."""

    click_row: np.ndarray
    user: np.ndarray
    pair: np.ndarray
    key: np.ndarray
    time: np.ndarray

    @classmethod
    def from_clicks(cls, clicks: EventCodes, index: AttributeIndex) -> ClickPairs:
        rows, pairs = index.by_product.explode(clicks.product)
        return cls(
            click_row=rows,
            user=clicks.user[rows],
            pair=pairs,
            key=index.key_of_pair[pairs],
            time=clicks.time[rows],
        )

    def where(self, keep: np.ndarray) -> ClickPairs:
        """The rows where `keep` is true (e.g. the clicks before a time, or one shopper's)."""
        return ClickPairs(self.click_row[keep], self.user[keep], self.pair[keep], self.key[keep], self.time[keep])

    def distinct_click_keys(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(user, key, time) once per (click, key): the denominator stream of key shares."""
        n_keys = int(self.key.max(initial=0)) + 1
        _, first = np.unique(self.click_row * n_keys + self.key, return_index=True)
        return self.user[first], self.key[first], self.time[first]


def smoothed_share(count: np.ndarray, total: np.ndarray, n_values: np.ndarray, strength: float) -> np.ndarray:
    return (count + strength / n_values) / (total + strength)


def attribute_affinity_features(
    impressions: EventCodes, clicks: ClickPairs, index: AttributeIndex, strength: float
) -> pd.DataFrame:
    """ua_attr_affinity (mean over the product's pairs) and ua_attr_affinity_max per impression."""
    rows, pairs = index.by_product.explode(impressions.product)
    user, time, key = impressions.user[rows], impressions.time[rows], index.key_of_pair[pairs]
    n_value = prior_sum(user * index.n_pairs + pairs, time, clicks.user * index.n_pairs + clicks.pair, clicks.time)
    key_user, key_id, key_time = clicks.distinct_click_keys()
    n_key = prior_sum(user * index.n_keys + key, time, key_user * index.n_keys + key_id, key_time)
    share = smoothed_share(n_value, n_key, index.values_per_key[key], strength)
    n = len(impressions)
    n_pairs_per_row = np.bincount(rows, minlength=n)
    total = np.bincount(rows, weights=share, minlength=n)
    best = np.zeros(n)
    np.maximum.at(best, rows, share)
    mean = np.divide(total, n_pairs_per_row, out=np.zeros(n), where=n_pairs_per_row > 0)
    return pd.DataFrame({"ua_attr_affinity": mean, "ua_attr_affinity_max": best})


def category_affinity_feature(
    impressions: EventCodes,
    clicks: EventCodes,
    category_of_product: np.ndarray,
    prior_clicks: np.ndarray,
    strength: float,
) -> np.ndarray:
    """Smoothed share of the shopper's earlier clicks that went to this product's category."""
    n_categories = int(category_of_product.max(initial=0)) + 1
    n_in_category = prior_sum(
        impressions.user * n_categories + category_of_product[impressions.product],
        impressions.time,
        clicks.user * n_categories + category_of_product[clicks.product],
        clicks.time,
    )
    return smoothed_share(n_in_category, prior_clicks, np.full(len(impressions), n_categories), strength)


def top_value_changes(clicks: ClickPairs) -> pd.DataFrame:
    """When each shopper's top value of each key changes: rows (user, pair, time, delta ±1).

    Summing `delta` over a (user, pair) up to a time gives 1 iff the pair is the shopper's
    top value of its key at that time, else 0.
    """
    if len(clicks.pair) == 0:
        return pd.DataFrame({"user": [], "pair": [], "time": [], "delta": []}, dtype=np.int64)
    stream = pd.DataFrame(
        {"user": clicks.user, "key": clicks.key, "pair": clicks.pair, "time": clicks.time, "row": clicks.click_row}
    ).sort_values(["user", "key", "time", "row"], kind="stable")
    stream["count"] = stream.groupby(["user", "pair"], sort=False).cumcount() + 1
    by_key = stream.groupby(["user", "key"], sort=False)
    best_before = by_key["count"].cummax().groupby([stream["user"], stream["key"]], sort=False).shift(1)
    leaders = stream[stream["count"] > best_before.fillna(0)].copy()
    leaders["previous_top"] = leaders.groupby(["user", "key"], sort=False)["pair"].shift(1)
    changes = leaders[leaders["pair"] != leaders["previous_top"]]
    gained = changes[["user", "pair", "time"]].assign(delta=1)
    lost = changes.dropna(subset=["previous_top"])
    lost = pd.DataFrame(
        {"user": lost["user"], "pair": lost["previous_top"].astype(np.int64), "time": lost["time"], "delta": -1}
    )
    return pd.concat([gained, lost], ignore_index=True)


def copy_preference_mentions(
    impressions: EventCodes,
    impression_copy: np.ndarray,
    mentions: Csr,
    changes: pd.DataFrame,
    n_pairs: int,
) -> np.ndarray:
    """How many of the shopper's top values (before the impression) the shown copy mentions."""
    n = len(impressions)
    shown = np.flatnonzero(impression_copy >= 0)
    if len(shown) == 0 or changes.empty:
        return np.zeros(n, dtype=np.int64)
    rows, pairs = mentions.explode(impression_copy[shown])
    target = shown[rows]
    is_top = prior_sum(
        impressions.user[target] * n_pairs + pairs,
        impressions.time[target],
        changes["user"].to_numpy() * n_pairs + changes["pair"].to_numpy(),
        changes["time"].to_numpy(),
        changes["delta"].to_numpy(dtype=np.int64),
    )
    return np.bincount(target, weights=is_top, minlength=n).astype(np.int64)


def user_affinity_table(
    clicks: ClickPairs, index: AttributeIndex, user_ids: pd.Index, strength: float
) -> pd.DataFrame:
    """End-of-data affinities: one row per (shopper, clicked pair), with `is_top` per key."""
    counts = (
        pd.DataFrame({"user": clicks.user, "pair": clicks.pair})
        .value_counts()
        .rename("clicks")
        .reset_index()
    )
    key_user, key_id, _ = clicks.distinct_click_keys()
    key_counts = pd.DataFrame({"user": key_user, "key": key_id}).value_counts().rename("key_clicks").reset_index()
    counts["key"] = index.key_of_pair[counts["pair"].to_numpy()]
    table = counts.merge(key_counts, on=["user", "key"], how="left", validate="many_to_one")
    table["affinity"] = smoothed_share(
        table["clicks"].to_numpy(),
        table["key_clicks"].to_numpy(),
        index.values_per_key[table["key"].to_numpy()],
        strength,
    )
    changes = top_value_changes(clicks)
    top_now = changes.groupby(["user", "pair"])["delta"].sum()
    top_now = top_now[top_now > 0].index
    table["is_top"] = pd.MultiIndex.from_frame(table[["user", "pair"]]).isin(top_now)
    pairs = index.pairs.iloc[table["pair"].to_numpy()]
    out = pd.DataFrame(
        {
            "user_id": user_ids[table["user"].to_numpy()].to_numpy(),
            "attr_key": pairs["attr_key"].to_numpy(),
            "attr_value": pairs["attr_value"].to_numpy(),
            "clicks": table["clicks"].to_numpy(dtype=np.int64),
            "key_clicks": table["key_clicks"].to_numpy(dtype=np.int64),
            "affinity": table["affinity"].to_numpy(dtype=np.float64),
            "is_top": table["is_top"].to_numpy(dtype=bool),
        }
    )
    return out.sort_values(["user_id", "attr_key", "affinity"], ascending=[True, True, False], ignore_index=True)


def population_affinity_table(clicks: ClickPairs, index: AttributeIndex, strength: float) -> pd.DataFrame:
    """Everyone's click share per pair: the fallback for a shopper with no clicks yet."""
    counts = np.bincount(clicks.pair, minlength=index.n_pairs)
    key_user, key_id, _ = clicks.distinct_click_keys()
    key_totals = np.bincount(key_id, minlength=index.n_keys)[index.key_of_pair]
    table = index.pairs[["attr_key", "attr_value"]].copy()
    table["clicks"] = counts
    table["affinity"] = smoothed_share(counts, key_totals, index.values_per_key[index.key_of_pair], strength)
    return table.sort_values(["attr_key", "affinity"], ascending=[True, False], ignore_index=True)
