"""The copies each impression could have shown, with the copy feature each would have had.

A shop's catalog holds several copies per product (`source == "human"`: written or approved by
people), and the logging policy shows one of them per impression. To score a policy that would
have picked another copy (components/evaluation/copy_choice.py), every option needs the
features that depend on the copy, computed point-in-time exactly as for the shown one:
`uc_copy_pref_mentions`, how many of the shopper's top values (before the impression) the
copy mentions. Every other feature of the impression is the same for all of its options.

Only impressions whose shown copy is one of its product's catalog copies, and whose product
has two or more, get options. A copy the server generated for one request (`source ==
"generated"`) was never an option for any other impression.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from components.features.affinity import EventCodes, copy_preference_mentions
from components.features.attribute_index import AttributeIndex
from components.features.copy_mentions import copy_mention_index

CATALOG_SOURCE = "human"
COLUMNS = ("event_id", "copy_id", "n_options", "uc_copy_pref_mentions")


def empty_copy_options() -> pd.DataFrame:
    return pd.DataFrame({
        "event_id": pd.Series(dtype=object),
        "copy_id": pd.Series(dtype=object),
        "n_options": pd.Series(dtype=np.int64),
        "uc_copy_pref_mentions": pd.Series(dtype=np.int64),
    })


def copy_options(
    event_ids: pd.Series,
    shown_copy: pd.Series,
    impressions: EventCodes,
    copies: pd.DataFrame,
    index: AttributeIndex,
    changes: pd.DataFrame,
) -> pd.DataFrame:
    """One row per (impression, option copy): COLUMNS. `event_ids` and `shown_copy` are aligned
    with `impressions` (product codes are positions in `index.product_ids`)."""
    catalog = copies[copies["source"].astype(str) == CATALOG_SOURCE]
    catalog = catalog[catalog["product_id"].isin(index.product_ids)]
    if catalog.empty or len(impressions) == 0:
        return empty_copy_options()
    catalog = catalog.assign(_product=index.product_ids.get_indexer(catalog["product_id"]))
    catalog = catalog.sort_values(["_product", "copy_id"], kind="stable", ignore_index=True)
    copy_ids, mentions = copy_mention_index(catalog, index)
    n_per_product = np.bincount(catalog["_product"].to_numpy(), minlength=len(index.product_ids))
    first_of_product = np.r_[0, np.cumsum(n_per_product)[:-1]]

    shown_code = copy_ids.get_indexer(shown_copy.fillna(""))
    shown_product = catalog["_product"].to_numpy()[np.maximum(shown_code, 0)]
    eligible = (shown_code >= 0) & (shown_product == impressions.product) & (n_per_product[impressions.product] >= 2)
    rows = np.flatnonzero(eligible)
    counts = n_per_product[impressions.product[rows]]
    row = np.repeat(rows, counts)
    within = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
    option = first_of_product[impressions.product[row]] + within

    at_option = EventCodes(user=impressions.user[row], product=impressions.product[row], time=impressions.time[row])
    return pd.DataFrame({
        "event_id": event_ids.to_numpy()[row],
        "copy_id": copy_ids.to_numpy()[option],
        "n_options": counts.repeat(counts).astype(np.int64),
        "uc_copy_pref_mentions": copy_preference_mentions(at_option, option, mentions, changes, index.n_pairs),
    })
