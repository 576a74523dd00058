import json

import numpy as np
import pandas as pd

from components.data.advertisegen import (
    clause_subset,
    copy_variants,
    corpus_catalog,
    mentioned_values,
    read_corpus_head,
    split_clauses,
    stable_id,
)
from components.data.attributes import UNK, parse_attributes


def write_corpus(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_repeated_content_is_one_product_with_several_human_copies(tmp_path):
    rows = [
        {"content": "类型#裙*品牌#<UNK>*颜色#白色", "summary": "<UNK>的白色裙子，简约大方。"},
        {"content": "类型#裤*颜色#黑色", "summary": "黑色裤子，显瘦。"},
        {"content": "类型#裙*品牌#<UNK>*颜色#白色", "summary": "白色连衣裙，清新甜美。"},
    ]
    products, copies = corpus_catalog(read_corpus_head(write_corpus(tmp_path / "c.jsonl", rows)))
    assert len(products) == 2 and len(copies) == 3
    dress = products.iloc[0]
    assert dress["product_id"] == stable_id("p", rows[0]["content"])
    assert dress["category"] == "裙"
    assert dress["attributes"]["品牌"] == [UNK]  # masked token kept visible, never dropped
    assert copies.groupby("product_id").size()[dress["product_id"]] == 2
    assert set(copies["source"]) == {"human"}
    assert read_corpus_head(tmp_path / "c.jsonl", limit=1).shape[0] == 1


def test_parse_attributes_keeps_unk_and_repeated_keys():
    attrs = parse_attributes("类型#上衣*图案#<UNK>*图案#条纹*风格#简约")
    assert attrs == {"类型": ["上衣"], "图案": [UNK, "条纹"], "风格": ["简约"]}


def test_clause_variants_are_ordered_subsets_that_end_cleanly():
    text = "宽松的阔腿裤，明星的心头爱。好穿时尚，遮肉小能手！系带设计；性感撩人。"
    clauses = split_clauses(text)
    assert "".join(clauses) == text and len(clauses) == 6
    assert clause_subset(clauses, np.array([1, 0, 1, 0, 0, 0], dtype=bool)) == "宽松的阔腿裤，好穿时尚。"

    human = pd.DataFrame({"copy_id": ["c1"], "product_id": ["p1"], "text": [text], "source": "human", "model_version": None})
    variants = copy_variants(human, 4, np.random.default_rng(0))
    assert 1 <= len(variants) <= 4 and variants["copy_id"].is_unique
    for variant in variants["text"]:
        kept = split_clauses(variant)
        assert len(kept) >= 2 and all(c.rstrip("，。！；") in text for c in kept)
    attrs = {"裤型": ["阔腿裤"], "风格": ["性感"], "颜色": ["白色"]}
    assert mentioned_values(text, attrs) == [("裤型", "阔腿裤"), ("风格", "性感")]
