"""Integer index over (attribute key, value) pairs, and fast row -> pairs explosion.

Products (and copies, through the values their text mentions) map to a set of pair ids. Storing
that as CSR arrays lets us explode 10^5..10^6 events into (event, pair) rows with np.repeat
instead of a pandas merge, which keeps the feature stage in seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from components.data.attributes import CATEGORY_KEY


def explode_product_attributes(products: pd.DataFrame) -> pd.DataFrame:
    """products -> one row per (product_id, attr_key, attr_value).

    A product whose attributes lack the category key gets (类型, category) so every catalog
    (OBD included) has category-level pairs.
    """
    missing = [c for c in ("product_id", "category", "attributes") if c not in products.columns]
    if missing:
        raise ValueError(f"products: missing columns {missing}")
    rows: list[tuple[str, str, str]] = []
    for product_id, category, attributes in zip(
        products["product_id"], products["category"], products["attributes"], strict=True
    ):
        attributes = attributes or {}
        for key, values in attributes.items():
            rows.extend((product_id, key, value) for value in values)
        if CATEGORY_KEY not in attributes and isinstance(category, str) and category:
            rows.append((product_id, CATEGORY_KEY, category))
    exploded = pd.DataFrame(rows, columns=["product_id", "attr_key", "attr_value"])
    return exploded.drop_duplicates(ignore_index=True)


@dataclass(frozen=True)
class Csr:
    """Row code -> list of pair ids: pairs[offsets[r]:offsets[r + 1]]."""

    offsets: np.ndarray
    pairs: np.ndarray

    @classmethod
    def from_codes(cls, row_codes: np.ndarray, pair_ids: np.ndarray, n_rows: int) -> Csr:
        order = np.argsort(row_codes, kind="stable")
        counts = np.bincount(row_codes, minlength=n_rows)
        offsets = np.zeros(n_rows + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        return cls(offsets=offsets, pairs=pair_ids[order].astype(np.int64))

    def explode(self, row_codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For rows with these codes: (index of the input row, pair id), one per pair."""
        starts = self.offsets[row_codes]
        lengths = self.offsets[row_codes + 1] - starts
        input_row = np.repeat(np.arange(len(row_codes)), lengths)
        # Position inside each row's slice: a global arange minus each slice's output start.
        slice_start = np.repeat(np.cumsum(lengths) - lengths, lengths)
        within = np.arange(int(lengths.sum())) - slice_start
        return input_row, self.pairs[np.repeat(starts, lengths) + within]


@dataclass(frozen=True)
class AttributeIndex:
    pairs: pd.DataFrame  # pair_id (= row position), attr_key, attr_value, key_id
    product_ids: pd.Index  # product code = position
    by_product: Csr
    values_per_key: np.ndarray  # indexed by key_id: distinct values of that key in the catalog

    @property
    def n_pairs(self) -> int:
        return len(self.pairs)

    @property
    def n_keys(self) -> int:
        return len(self.values_per_key)

    @property
    def key_of_pair(self) -> np.ndarray:
        return self.pairs["key_id"].to_numpy()

    @classmethod
    def build(cls, product_attributes: pd.DataFrame, product_ids: pd.Index) -> AttributeIndex:
        pair_codes, pair_uniques = pd.MultiIndex.from_frame(product_attributes[["attr_key", "attr_value"]]).factorize()
        pairs = pair_uniques.to_frame(index=False, name=["attr_key", "attr_value"])
        key_ids, _ = pd.factorize(pairs["attr_key"])
        pairs["key_id"] = key_ids.astype(np.int64)
        product_codes = product_ids.get_indexer(product_attributes["product_id"])
        if (product_codes < 0).any():
            raise ValueError("product_attributes names products missing from the product index")
        by_product = Csr.from_codes(product_codes, np.asarray(pair_codes, dtype=np.int64), len(product_ids))
        values_per_key = np.bincount(pairs["key_id"].to_numpy(), minlength=int(key_ids.max(initial=-1)) + 1)
        return cls(pairs=pairs, product_ids=product_ids, by_product=by_product, values_per_key=values_per_key)
