"""The gate judges copies with its own rules, not with the word list and vocabulary of the bundle it judges."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from components.evaluation.copy_rules import (
    STATUTORY_AD_LAW_WORDS,
    gate_ad_law_words,
    gate_vocabulary,
    judge_copies,
    judge_generator_frames,
)


def test_a_profile_can_add_ad_law_words_but_not_remove_any(make_cfg, tmp_path):
    statutory = [w for w in STATUTORY_AD_LAW_WORDS.read_text(encoding="utf-8").splitlines() if w and not w.startswith("#")]
    assert "最" in statutory
    shorter = tmp_path / "shop_words.txt"
    shorter.write_text("\n".join([w for w in statutory if w != "最"] + ["秒杀"]) + "\n", encoding="utf-8")
    words = gate_ad_law_words(make_cfg(paths={"ad_law_words": str(shorter)}))
    assert "最" in words and "秒杀" in words and len(words) == len(set(words))


def test_copies_are_recounted_whatever_the_bundle_reported(cfg):
    rows = pd.DataFrame({"example_id": ["a", "b", "c"],
                         "attributes": [{"类型": ["上衣"], "颜色": ["白色"]}, {"类型": ["上衣"], "颜色": ["白色"]}, {"类型": ["裙"]}]})
    # what a bundle with an emptied list and vocabulary would report about its own copies
    frame = pd.DataFrame({"example_id": ["a", "b", "c"], "bleu4": [9.0, 8.0, 7.0], "hallucinated": [False] * 3,
                          "ad_law_violations": [0] * 3,
                          "copy": ["这款黑色上衣，最时尚的选择。", "白色上衣，清爽简约。", "一条温柔的裙子。"]})
    judged = judge_copies(cfg, frame, rows)
    assert judged["ad_law_violations"].tolist() == [1, 0, 0]
    assert judged["hallucinated"].tolist() == [True, False, False] and judged["contradictions"].iloc[0] == "黑色"
    assert judged["bleu4"].tolist() == [9.0, 8.0, 7.0] and frame["ad_law_violations"].sum() == 0  # the input is left as it was


def test_a_value_the_product_does_not_list_is_counted_by_the_gate(cfg):
    """雪纺 for trousers that list no 材质 contradicts nothing, but the catalog does not say it:
    the gate counts it whatever the bundle's decoder was told (forbid_unlisted)."""
    rows = pd.DataFrame({"example_id": ["a", "b"], "attributes": [{"类型": ["裤"], "颜色": ["黑色"]}, {"类型": ["裤"], "颜色": ["黑色"]}]})
    frame = pd.DataFrame({"example_id": ["a", "b"], "bleu4": [9.0, 8.0], "hallucinated": [False] * 2, "unlisted": [False] * 2,
                          "ad_law_violations": [0] * 2, "copy": ["黑色裤子，采用雪纺面料，轻盈透气。", "黑色裤子，简约百搭。"]})
    judged = judge_copies(cfg, frame, rows)
    assert judged["unlisted"].tolist() == [True, False] and "雪纺" in judged["unlisted_values"].iloc[0]
    assert judged["hallucinated"].tolist() == [False, False]  # no contradiction: a guess, counted as unlisted


def test_only_the_generator_family_is_rejudged_and_its_own_counts_are_not_trusted(cfg):
    rows = pd.DataFrame({"example_id": ["a"], "attributes": [{"类型": ["上衣"], "颜色": ["白色"]}]})
    copies = pd.DataFrame({"example_id": ["a"], "bleu4": [9.0], "hallucinated": [False], "unlisted": [False],
                           "ad_law_violations": [0], "copy": ["最时尚的黑色上衣"]})
    candidate, champion = judge_generator_frames(cfg, "generator", copies, copies, rows)
    assert candidate["ad_law_violations"].tolist() == [1] and champion["hallucinated"].tolist() == [True]
    assert judge_generator_frames(cfg, "generator", copies, None, rows)[1] is None
    scores = pd.DataFrame({"example_id": ["a"], "label": [1], "score": [0.3]})
    judged, no_champion = judge_generator_frames(cfg, "preference", scores, None, rows)
    assert judged is scores and no_champion is None


def test_the_gate_vocabulary_follows_an_edited_corpus_file(make_cfg, tmp_path):
    """Kept per corpus file: a process that judges again after the corpus changed on disk (same
    path, same knobs) must not keep the vocabulary of the old file."""
    lines = Path(make_cfg().paths.corpus).read_text(encoding="utf-8").splitlines(keepends=True)
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(lines[:300]), encoding="utf-8")
    cfg = make_cfg(paths={"corpus": str(corpus)})
    small = gate_vocabulary(cfg).values_by_key
    corpus.write_text("".join(lines), encoding="utf-8")
    os.utime(corpus, ns=(corpus.stat().st_atime_ns, corpus.stat().st_mtime_ns + 10**9))  # a later write, whatever the clock's resolution
    assert gate_vocabulary(cfg).values_by_key != small
