"""The shopper's last N clicked products strictly before each impression (most recent last)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from components.features.pit import prior_sum


def recent_clicked_products(
    query_user: np.ndarray,
    query_time: np.ndarray,
    click_user: np.ndarray,
    click_time: np.ndarray,
    click_tiebreak: np.ndarray,
    click_product: pd.Series,
    length: int,
) -> pa.ListArray:
    """list<string> per query: the products of the user's last `length` clicks with time < query time.

    Clicks are ordered by (user, time, tiebreak); a user's first k of them are exactly those
    before the query when k is their count before it, so each history is one slice.
    """
    order = np.lexsort((click_tiebreak, click_time, click_user))
    sorted_user = click_user[order]
    products = pa.array(click_product.to_numpy(dtype=object)[order], type=pa.string())
    n_users = int(max(query_user.max(initial=-1), click_user.max(initial=-1))) + 1
    user_start = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(sorted_user, minlength=n_users), out=user_start[1:])

    n_before = prior_sum(query_user, query_time, click_user, click_time)
    stop = user_start[query_user] + n_before
    start = np.maximum(stop - length, user_start[query_user])
    lengths = stop - start
    offsets = np.zeros(len(query_user) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    slice_start = np.repeat(offsets[:-1], lengths)
    take = np.repeat(start, lengths) + (np.arange(int(offsets[-1])) - slice_start)
    return pa.ListArray.from_arrays(pa.array(offsets, type=pa.int32()), products.take(pa.array(take)))
