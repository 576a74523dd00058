import json

import pytest

from components.data.corpus import CorpusError, load_corpus_splits, read_corpus, split_corpus, split_of


def test_split_is_a_stable_function_of_content(cfg):
    splits = load_corpus_splits(cfg)
    total = sum(len(s) for s in splits.values())
    assert total == 5000
    assert 0.07 < len(splits["test"]) / total < 0.13 and 0.07 < len(splits["valid"]) / total < 0.13
    # no attribute string is in two splits
    contents = [set(s["content"]) for s in splits.values()]
    assert not (contents[0] & contents[1]) and not (contents[0] & contents[2]) and not (contents[1] & contents[2])
    # adding rows never moves existing ones
    corpus = read_corpus(cfg.paths.corpus)
    half = split_corpus(corpus.head(2500), 0.1, 0.1)
    assert set(half["test"]["content"]) <= set(splits["test"]["content"])
    assert split_of("类型#裙*颜色#白色", 0.1, 0.1) == split_of("类型#裙*颜色#白色", 0.1, 0.1)


def test_bad_rows_name_their_line(tmp_path):
    path = tmp_path / "c.jsonl"
    good = json.dumps({"content": "类型#裙*颜色#白色", "summary": "白色的裙子"}, ensure_ascii=False)
    path.write_text(good + "\n" + '{"content": "类型#裙", "summary": ""}\n', encoding="utf-8")
    with pytest.raises(CorpusError, match=r"c.jsonl:2: missing or empty 'summary'"):
        read_corpus(path)
    path.write_text(good + "\n" + good + "\n{oops\n", encoding="utf-8")
    with pytest.raises(CorpusError, match=r"c.jsonl:3: not valid JSON"):
        read_corpus(path)
    path.write_text(json.dumps({"content": "类型裙", "summary": "x"}, ensure_ascii=False) + "\n", encoding="utf-8")
    with pytest.raises(CorpusError, match=r"c.jsonl:1: bad 'content'"):
        read_corpus(path)
    path.write_text(json.dumps({"content": "类型#裙*颜色#白色"}, ensure_ascii=False) + "\n", encoding="utf-8")
    rows = read_corpus(path, require_summary=False)
    assert rows.loc[0, "attributes"] == {"类型": ["裙"], "颜色": ["白色"]}


def test_both_brand_masks_become_the_one_masked_token(cfg):
    corpus = read_corpus(cfg.paths.corpus)
    assert not corpus["summary"].str.contains("BRAND").any()
    assert corpus["summary"].str.contains("<UNK>", regex=False).sum() > 1553  # 1,553 used <UNK> already
