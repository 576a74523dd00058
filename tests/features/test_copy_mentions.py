import pandas as pd

from components.features.attribute_index import AttributeIndex
from components.features.copy_mentions import copy_mention_index


def test_copies_mention_values_by_substring_and_never_unk():
    exploded = pd.DataFrame(
        [("p", "颜色", "白色"), ("p", "类型", "裙"), ("p", "品牌", "<UNK>"), ("q", "风格", "简约")],
        columns=["product_id", "attr_key", "attr_value"],
    )
    index = AttributeIndex.build(exploded, pd.Index(["p", "q"]))
    copies = pd.DataFrame({"copy_id": ["c1", "c2", "c3"], "text": ["<UNK>的白色连衣裙", "简约风", None]})
    copy_ids, mentions = copy_mention_index(copies, index)
    def mentioned(copy_id):
        rows, pairs = mentions.explode(copy_ids.get_indexer([copy_id]))
        return sorted(index.pairs.iloc[pairs]["attr_value"])
    assert mentioned("c1") == ["白色", "裙"]
    assert mentioned("c2") == ["简约"]
    assert mentioned("c3") == []


def test_duplicate_copy_ids_are_rejected():
    index = AttributeIndex.build(
        pd.DataFrame([("p", "k", "v")], columns=["product_id", "attr_key", "attr_value"]), pd.Index(["p"])
    )
    try:
        copy_mention_index(pd.DataFrame({"copy_id": ["c", "c"], "text": ["v", "v"]}), index)
    except ValueError as exc:
        assert "duplicate copy_id" in str(exc) and "'c'" in str(exc)
    else:
        raise AssertionError("duplicate copy ids were accepted")
