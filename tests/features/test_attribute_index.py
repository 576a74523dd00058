import numpy as np
import pandas as pd

from components.features.attribute_index import AttributeIndex, Csr, explode_product_attributes
from tests.features.factories import frame, product


def test_explode_keeps_repeated_values_unk_and_adds_missing_category():
    products = frame("products", [
        product("p1", {"类型": ["裙"], "图案": ["线条", "刺绣"], "品牌": ["<UNK>"]}),
        {**product("p2", {"颜色": ["白色"]}), "category": "外套"},
    ])
    exploded = explode_product_attributes(products)
    assert set(map(tuple, exploded.to_numpy())) == {
        ("p1", "类型", "裙"), ("p1", "图案", "线条"), ("p1", "图案", "刺绣"), ("p1", "品牌", "<UNK>"),
        ("p2", "颜色", "白色"), ("p2", "类型", "外套"),
    }


def test_index_counts_values_per_key_and_explodes_rows():
    exploded = pd.DataFrame(
        [("a", "k", "x"), ("a", "j", "y"), ("b", "k", "z"), ("b", "k", "x")],
        columns=["product_id", "attr_key", "attr_value"],
    )
    index = AttributeIndex.build(exploded, pd.Index(["a", "b", "c"]))
    assert index.n_pairs == 3 and index.n_keys == 2
    k = index.pairs.loc[index.pairs["attr_key"] == "k", "key_id"].iloc[0]
    assert index.values_per_key[k] == 2
    rows, pairs = index.by_product.explode(np.array([1, 2, 0, 1]))  # c has no attributes
    assert rows.tolist() == [0, 0, 2, 2, 3, 3]
    named = index.pairs.iloc[pairs][["attr_key", "attr_value"]].apply(tuple, axis=1).tolist()
    assert named == [("k", "z"), ("k", "x"), ("k", "x"), ("j", "y"), ("k", "z"), ("k", "x")]


def test_csr_with_no_entries_explodes_to_nothing():
    csr = Csr.from_codes(np.array([], np.int64), np.array([], np.int64), 2)
    rows, pairs = csr.explode(np.array([0, 1]))
    assert len(rows) == 0 and len(pairs) == 0
