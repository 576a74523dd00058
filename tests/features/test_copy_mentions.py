import pandas as pd
import pytest

from components.features.attribute_index import AttributeIndex
from components.features.copy_mentions import copy_mention_index, values_mentioned
from components.models.preference.data import copy_mentions
from components.serving.choice import top_value_mentions

# The copy-mention rule's edge cases: (text, the (key, value) pairs, the pairs it mentions).
EDGE_CASES = [
    # the masked brand is no wording a shopper can prefer, even where the text has the token
    ("<UNK>的白色连衣裙", [("品牌", "<UNK>"), ("颜色", "白色")], [("颜色", "白色")]),
    # plain substring: letters of the masked token are text like any other (no catalog value
    # is such a string; skipping matches inside <UNK> would be a deliberate change of the rule)
    ("<UNK>的裙", [("品牌", "UNK"), ("类型", "裙")], [("品牌", "UNK"), ("类型", "裙")]),
    # a value inside a longer value: the longer one's occurrence mentions both
    ("白色连衣裙", [("颜色", "白"), ("颜色", "白色"), ("类型", "连衣裙"), ("类型", "裙")],
     [("颜色", "白"), ("颜色", "白色"), ("类型", "连衣裙"), ("类型", "裙")]),
    # ... and the shorter one alone does not mention the longer
    ("白裙", [("颜色", "白"), ("颜色", "白色")], [("颜色", "白")]),
    # an empty text mentions nothing; an empty value would occur in every text, so it never counts
    ("", [("颜色", "白色"), ("品牌", "<UNK>")], []),
    ("白色", [("颜色", ""), ("颜色", "白色")], [("颜色", "白色")]),
    # one value under two keys: one mention per key (each is a distinct preference)
    ("简约风", [("风格", "简约"), ("图案", "简约")], [("风格", "简约"), ("图案", "简约")]),
]


@pytest.mark.parametrize(("text", "pairs", "mentioned"), EDGE_CASES)
def test_the_copy_mention_rule_at_its_edges(text, pairs, mentioned):
    assert values_mentioned(text, pairs) == mentioned


@pytest.mark.parametrize(("text", "pairs", "mentioned"), EDGE_CASES)
def test_features_training_and_serving_read_a_copy_by_the_one_rule(text, pairs, mentioned):
    # The features stage (copy -> pair ids), the preference model's encoder (copy -> key#value)
    # and the server (candidate -> how many of the shopper's top values) once each wrote the rule.
    exploded = pd.DataFrame([("p", k, v) for k, v in pairs], columns=["product_id", "attr_key", "attr_value"])
    index = AttributeIndex.build(exploded, pd.Index(["p"]))
    copy_ids, by_copy = copy_mention_index(pd.DataFrame({"copy_id": ["c"], "text": [text]}), index)
    _, pair_ids = by_copy.explode(copy_ids.get_indexer(["c"]))
    features = sorted(index.pairs.iloc[pair_ids][["attr_key", "attr_value"]].itertuples(index=False, name=None))
    assert features == sorted(mentioned)
    training = copy_mentions(pd.DataFrame({"copy_id": ["c"], "product_id": ["p"], "text": [text]}), exploded)["c"]
    assert training == sorted(f"{k}#{v}" for k, v in mentioned)
    assert top_value_mentions([text], set(pairs)) == [len(mentioned)]


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
