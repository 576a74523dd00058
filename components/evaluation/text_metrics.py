"""Text-generation metrics, with the protocol of the published AdvertiseGen results.

- BLEU-4: character-level sentence BLEU (nltk, SmoothingFunction().method3), x100, averaged
  over examples (the ChatGLM / P-Tuning evaluation script).
- ROUGE-1/2/L: F-scores of rouge-chinese on jieba tokens, x100, averaged over examples.
- distinct-n: unique character n-grams / all character n-grams over the whole set of copies
  (corpus level: copies that all say the same thing score low even if each is varied inside).
- repetition-n: per copy, the share of its character n-grams that repeat an earlier one, averaged.
- doubling rate: share of copies with a run of 2-4 Chinese characters repeated right away or
  after one character (休闲休闲, 显瘦又显瘦).
- value coverage / contradictions / banned words: plain substring tests on lower-cased text.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Collection, Iterable, Sequence
from functools import lru_cache


@lru_cache(maxsize=1)
def _smoothing():
    from nltk.translate.bleu_score import SmoothingFunction

    return SmoothingFunction().method3


@lru_cache(maxsize=1)
def _rouge():
    import jieba
    from rouge_chinese import Rouge

    jieba.setLogLevel(logging.WARNING)
    return Rouge()


def bleu4(hypothesis: str, reference: str) -> float:
    """Character-level sentence BLEU-4 with smoothing method 3, x100."""
    from nltk.translate.bleu_score import sentence_bleu

    if not hypothesis:
        return 0.0
    return 100.0 * float(
        sentence_bleu([list(reference)], list(hypothesis), smoothing_function=_smoothing())
    )


def rouge_scores(hypothesis: str, reference: str) -> dict[str, float]:
    """{'rouge1','rouge2','rougeL'}: F-scores on jieba tokens, x100 (0 for an empty copy)."""
    import jieba

    hyp = " ".join(jieba.cut(hypothesis)).strip()
    ref = " ".join(jieba.cut(reference)).strip()
    if not hyp or not ref:
        return {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    scores = _rouge().get_scores(hyp, ref)[0]
    return {
        "rouge1": 100.0 * scores["rouge-1"]["f"],
        "rouge2": 100.0 * scores["rouge-2"]["f"],
        "rougeL": 100.0 * scores["rouge-l"]["f"],
    }


def char_ngrams(text: str, n: int) -> list[str]:
    return [text[i : i + n] for i in range(len(text) - n + 1)]


def distinct_n(texts: Iterable[str], n: int) -> float:
    """Corpus-level distinct-n over character n-grams (0 when there are none)."""
    total, unique = 0, set()
    for text in texts:
        grams = char_ngrams(text, n)
        total += len(grams)
        unique.update(grams)
    return len(unique) / total if total else 0.0


def repetition_n(text: str, n: int = 4) -> float:
    """Share of a copy's character n-grams that already occurred earlier in it."""
    grams = char_ngrams(text, n)
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


_DOUBLED = re.compile(r"([\u4e00-\u9fff]{2,4})[\u4e00-\u9fff]?\1")
_STUTTER = re.compile(r"([\u4e00-\u9fff])\1")


def doubled_runs(text: str) -> list[str]:
    """Runs of 2-4 Chinese characters repeated right away or after one character (休闲休闲,
    显瘦又显瘦): a glitch of small models' copy attention; about 1% of human copies have one
    (一颗一颗, 一层又一层)."""
    return [m.group(0) for m in _DOUBLED.finditer(text)]


def doubled_characters(texts: Iterable[str], min_count: int = 1) -> set[str]:
    """Chinese characters written twice in a row (满满, 泡泡袖) at least `min_count` times."""
    counts: dict[str, int] = {}
    for text in texts:
        for match in _STUTTER.finditer(text):
            counts[match.group(1)] = counts.get(match.group(1), 0) + 1
    return {c for c, n in counts.items() if n >= min_count}


def stuttered(text: str, allowed: Collection[str]) -> list[str]:
    """Chinese characters written twice in a row that are not in `allowed` (更更加, 性感感,
    where 满满 or 泡泡 are ordinary writing)."""
    return [m.group(0) for m in _STUTTER.finditer(text) if m.group(1) not in allowed]


def mentions(text: str, value: str) -> bool:
    return value.lower() in text.lower()


def coverage(text: str, values: Sequence[str]) -> float:
    """Share of `values` the text mentions (nan when there is nothing to cover)."""
    if not values:
        return float("nan")
    return sum(mentions(text, v) for v in values) / len(values)


def lead_coverage(text: str, values: Sequence[str], share: float = 0.4) -> float:
    """Share of `values` mentioned within the opening `share` of the text (foregrounded)."""
    if not values:
        return float("nan")
    head = text[: max(1, int(len(text) * share))].lower()
    return sum(v.lower() in head for v in values) / len(values)


def _ad_law_form(text: str) -> str:
    """What banned words are matched in: NFKC (full-width １００％ is 100%), lowercase, no
    whitespace (TOP 1 is TOP1)."""
    return re.sub(r"\s+", "", unicodedata.normalize("NFKC", text)).lower()


def banned_occurrences(text: str, words: Iterable[str]) -> list[str]:
    """Every occurrence of a banned word, one entry per place in the text, matched in
    `_ad_law_form`. Where banned words overlap (全网第一 holds 第一; NO.1 and No.1 are one word)
    the longest counts, once."""
    forms: dict[str, str] = {}
    for word in words:
        if form := _ad_law_form(word):
            forms.setdefault(form, word)
    normalized = _ad_law_form(text)
    taken: list[tuple[int, int, str]] = []
    for form, word in sorted(forms.items(), key=lambda item: -len(item[0])):
        start = normalized.find(form)
        while start >= 0:
            end = start + len(form)
            if not any(s < end and start < e for s, e, _ in taken):
                taken.append((start, end, word))
            start = normalized.find(form, start + 1)
    return [word for _, _, word in sorted(taken)]
