"""Which attribute values a copy's text mentions (plain substring match).

`values_mentioned` is the one statement of the rule; the preference model's encoder
(components/models/preference/data.py) and the server's candidate scoring
(components/serving/choice.py) call it, so training and serving read a copy alike.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

import numpy as np
import pandas as pd

from components.data.attributes import UNK
from components.features.attribute_index import AttributeIndex, Csr

Tag = TypeVar("Tag")


def values_mentioned(text: str, pairs: Iterable[tuple[Tag, str]]) -> list[tuple[Tag, str]]:
    """The (tag, value) pairs, in their order, whose value `text` mentions: the value occurs in
    the text verbatim. `<UNK>` is a masked brand, not a wording a shopper can prefer, so it never
    counts, nor does an empty value (it would occur in every text). The tag rides along
    untouched: an attribute key, or a caller's code for the value."""
    # Pairs, not bare values: callers keep the key without a second pass (this runs per request).
    # The substring test first: most values miss, and then it is the only test run.
    return [(tag, value) for tag, value in pairs if value in text and value and value != UNK]


def mentioned_pairs(texts: pd.Series, index: AttributeIndex) -> tuple[np.ndarray, np.ndarray]:
    """(text row, pair id) for every attribute pair whose value the text mentions
    (`values_mentioned`). A value shared by several keys yields one row per key (each is a
    distinct preference)."""
    # Python's substring search beats per-value Arrow kernels ~10x at this size (1e4 texts, 1e2-1e3 values).
    all_texts = texts.fillna("").astype(str).tolist()
    value_codes, values = pd.factorize(index.pairs["attr_value"], sort=True)
    valued = value_codes >= 0  # a missing value (code -1) is no wording
    # value code -> the ids of its pairs (pairs' row position == pair id)
    pairs_of_value = Csr.from_codes(value_codes[valued].astype(np.int64), np.flatnonzero(valued), len(values))
    coded_values = list(enumerate(values.tolist()))  # each distinct value searched once per text
    hit_rows: list[int] = []
    hit_codes: list[int] = []
    for row, text in enumerate(all_texts):
        for code, _ in values_mentioned(text, coded_values):
            hit_rows.append(row)
            hit_codes.append(code)
    hit, pair_ids = pairs_of_value.explode(np.array(hit_codes, dtype=np.int64))
    return np.array(hit_rows, dtype=np.int64)[hit], pair_ids


def copy_mention_index(copies: pd.DataFrame, index: AttributeIndex) -> tuple[pd.Index, Csr]:
    """copy_id index (code = position) and CSR copy code -> mentioned pair ids."""
    copy_ids = pd.Index(copies["copy_id"])
    if copy_ids.has_duplicates:
        dupes = copy_ids[copy_ids.duplicated()].unique()[:5].tolist()
        raise ValueError(f"copies: duplicate copy_id values, e.g. {dupes}")
    rows, pairs = mentioned_pairs(copies["text"].reset_index(drop=True), index)
    return copy_ids, Csr.from_codes(rows, pairs, len(copy_ids))
