import math
from pathlib import Path

import pytest

from components.evaluation import text_metrics as tm


def test_bleu4_identical_and_disjoint():
    ref = "这款连衣裙采用白色的面料，简约大方，穿着舒适。"
    assert tm.bleu4(ref, ref) == pytest.approx(100.0)
    assert tm.bleu4("甲乙丙丁戊己庚辛", ref) < 1.0
    assert tm.bleu4("", ref) == 0.0


def test_bleu4_matches_nltk_char_level_method3():
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    hyp, ref = "白色连衣裙很好看", "这条白色连衣裙真好看"
    expected = 100 * sentence_bleu([list(ref)], list(hyp), smoothing_function=SmoothingFunction().method3)
    assert tm.bleu4(hyp, ref) == pytest.approx(expected)
    assert 0 < tm.bleu4(hyp, ref) < 100


def test_bleu4_smooths_a_missing_4gram_match_with_method3():
    """No shared 4-gram: method3 (NIST) counts the missing precision as 1/(2*4), where method1
    would use epsilon and method2 add-one; the score is the hand-worked one."""
    ref, hyp = "这款连衣裙采用白色的面料，简约大方", "连衣裙白色面料"  # 17 and 7 characters
    # char precisions: 7/7 unigrams, 4/6 bigrams (连衣 衣裙 白色 面料), 1/5 trigrams (连衣裙), 0/4 4-grams
    precisions = [1.0, 4 / 6, 1 / 5, 1 / (2 * 4)]
    brevity = math.exp(1 - 17 / 7)
    assert tm.bleu4(hyp, ref) == pytest.approx(100 * brevity * math.prod(precisions) ** 0.25, rel=1e-9)


def test_rouge_f_scores_count_jieba_tokens_not_characters():
    # jieba: 宽松/的/阔/腿/裤/穿着/很/舒适 (8 tokens) and 舒适/的/阔/腿/裤 (5 tokens)
    scores = tm.rouge_scores("舒适的阔腿裤", "宽松的阔腿裤穿着很舒适")
    assert scores["rouge1"] == pytest.approx(100 * 2 * 5 / (5 + 8), rel=1e-6)  # F of P 5/5, R 5/8
    assert scores["rouge2"] == pytest.approx(100 * 2 * 3 / (4 + 7), rel=1e-6)  # 3 shared of 4 and 7 bigrams
    assert scores["rougeL"] == pytest.approx(100 * 2 * 4 / (5 + 8), rel=1e-6)  # LCS 的阔腿裤: 4 tokens


def test_rouge_on_jieba_tokens():
    ref = "宽松的阔腿裤穿着很舒适"
    same = tm.rouge_scores(ref, ref)
    assert same["rouge1"] == pytest.approx(100.0, abs=1e-3) and same["rougeL"] == pytest.approx(100.0, abs=1e-3)
    partial = tm.rouge_scores("宽松的阔腿裤", ref)
    assert 0 < partial["rouge1"] < 100
    assert tm.rouge_scores("", ref) == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}


def test_distinct_and_repetition_known_values():
    # "abab": bigrams ab, ba, ab -> 2 unique of 3
    assert tm.distinct_n(["abab"], 2) == pytest.approx(2 / 3)
    # two identical copies halve distinct-1
    assert tm.distinct_n(["abc", "abc"], 1) == pytest.approx(0.5)
    assert tm.distinct_n([], 2) == 0.0
    # "abcdabcd": 4-grams abcd bcda cdab dabc abcd -> one repeat of five
    assert tm.repetition_n("abcdabcd", 4) == pytest.approx(1 / 5)
    assert tm.repetition_n("abc", 4) == 0.0


def test_doubled_runs():
    assert tm.doubled_runs("这款休闲休闲裤，字母字母点缀") == ["休闲休闲", "字母字母"]
    assert tm.doubled_runs("满满的美美的") == []  # one character twice is ordinary Chinese
    assert tm.doubled_runs("blingbling的显瘦显高") == []  # only Chinese runs; 显瘦显高 is no doubling
    assert tm.doubled_runs("连衣裙连衣裙") == ["连衣裙连衣裙"]
    assert tm.doubled_runs("高腰阔腿高腰阔腿裤") == ["高腰阔腿高腰阔腿"]  # runs of up to four characters
    assert tm.doubled_runs("显瘦又显瘦，性感的性感") == ["显瘦又显瘦", "性感的性感"]
    assert tm.doubled_runs("显瘦，显瘦") == []  # a pause between is a new phrase


def test_coverage_and_banned_occurrences():
    text = "这款A字裙采用白色面料"
    assert tm.coverage(text, ["a字", "白色", "黑色"]) == pytest.approx(2 / 3)
    assert math.isnan(tm.coverage(text, []))
    assert tm.banned_occurrences("最好的最美的第一名", ["最", "第一"]) == ["最", "最", "第一"]


def test_lead_coverage_counts_only_values_in_the_opening_share():
    text = "白色连衣裙，袖口黑色纽扣，面料柔软又舒适"  # 20 characters: the opening 40% is 白色连衣裙，袖口
    assert tm.coverage(text, ["白色", "黑色"]) == 1.0
    assert tm.lead_coverage(text, ["白色", "黑色"]) == 0.5
    assert tm.lead_coverage(text, ["白色", "黑色"], share=0.5) == 1.0  # 黑色 is the 9th and 10th characters
    assert tm.lead_coverage(text, ["白色", "黑色"], share=1.0) == 1.0
    assert math.isnan(tm.lead_coverage(text, []))


def test_stuttered_counts_only_characters_the_human_copy_does_not_double():
    assert tm.stuttered("满满的少女心，更更加好看，性感感十足", {"满"}) == ["更更", "感感"]
    assert tm.stuttered("泡泡袖", {"泡"}) == [] and tm.stuttered("ab ab，。。", set()) == []
    assert tm.doubled_characters(["满满的", "满满当当", "更更加", "泡泡袖"], min_count=2) == {"满"}


def test_banned_words_are_found_in_any_width_case_or_spacing_and_counted_once_per_place():
    words = ["最", "第一", "全网第一", "100%", "NO.1", "No.1", "TOP1", "百分百", "第1"]
    assert tm.banned_occurrences("１００％纯棉", words) == ["100%"]  # full width
    assert tm.banned_occurrences("TOP 1 爆款", words) == ["TOP1"]  # a space
    assert tm.banned_occurrences("品质no.1", words) == ["NO.1"]  # one word, however the list spells it
    assert tm.banned_occurrences("全网第一", words) == ["全网第一"]  # the longest, once
    assert tm.banned_occurrences("全网销量第1，百分百纯棉", words) == ["第1", "百分百"]
    assert tm.banned_occurrences("最最好", words) == ["最", "最"]
    assert tm.banned_occurrences("简约大方的连衣裙", words) == []


def test_the_shipped_ad_law_list_has_the_common_absolute_terms():
    from components.models.generator.constraints import load_ad_law_words

    words = load_ad_law_words(Path(__file__).resolve().parents[2] / "components/resources/ad_law_words.txt")
    for copy in ("精选百分百纯棉", "独一无二的时尚感", "无与伦比的魅力", "全网销量第1", "品质NO1", "首家推出", "绝无仅有"):
        assert tm.banned_occurrences(copy, words), copy
