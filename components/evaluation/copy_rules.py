"""The release gate's own rules for generated copy: ad-law words and contradicting values.

A generator bundle carries the word list and the value vocabulary it decodes with, and the
evaluation it logs counts with them. The gate must not: a bundle built with a shorter list (an
edited profile, a tampered `values.json`) would then both write and grade under the weaker
rules. So the gate re-counts every candidate's and champion's copies with rules it owns:

- ad-law words: the statutory list shipped in the repository (components/resources) together
  with the profile's `paths.ad_law_words`; a profile can add words, never remove one;
- contradicting values: a value vocabulary built from the corpus's training split with the
  profile's `generator.faithful_*` knobs, as training builds it, not read from the bundle;
- unlisted values: by the same vocabulary, a factual value the product does not list at all
  (雪纺 for trousers with no 材质). Whether the decoder forbids them (`forbid_unlisted`) travels
  in the bundle's decoding defaults, so the gate counts them itself too.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from components.config import Config

STATUTORY_AD_LAW_WORDS = Path(__file__).resolve().parents[1] / "resources" / "ad_law_words.txt"


def gate_ad_law_words(cfg: Config) -> list[str]:
    """The statutory list and the profile's own, without duplicates. Serving bans and judges
    them too, beside the bundle's own list (copywriter.load_served_generator)."""
    from components.models.generator.constraints import load_ad_law_words

    words = load_ad_law_words(STATUTORY_AD_LAW_WORDS) + load_ad_law_words(cfg.paths.ad_law_words)
    return list(dict.fromkeys(words))


def gate_vocabulary(cfg: Config):
    """The value vocabulary training would build from the configured corpus (ValueVocabulary);
    kept per corpus file and knobs, as a promotion re-check judges several releases."""
    g = cfg.generator
    corpus = Path(cfg.paths.corpus).resolve()
    key = (str(corpus), corpus.stat().st_mtime_ns, cfg.data.valid_fraction, cfg.data.test_fraction,
           g.faithful_key_max_rate, g.faithful_alias_max_rate, g.faithful_alias_min_uses)
    if key not in _VOCABULARIES:
        from components.data.corpus import load_corpus_splits
        from components.models.generator.constraints import corpus_value_vocabulary

        _VOCABULARIES.clear()  # one corpus at a time is what a process judges
        _VOCABULARIES[key] = corpus_value_vocabulary(load_corpus_splits(cfg)["train"], g)
    return _VOCABULARIES[key]


_VOCABULARIES: dict[tuple, object] = {}


def judge_generator_frames(cfg: Config, family: str, candidate: pd.DataFrame, champion: pd.DataFrame | None,
                           rows: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """For the generator family, the candidate's and champion's frames judged by the gate's rules
    (`judge_copies`); the frames of other families as they are."""
    if family != "generator":
        return candidate, champion
    return judge_copies(cfg, candidate, rows), (judge_copies(cfg, champion, rows) if champion is not None else None)


def judge_copies(cfg: Config, frame: pd.DataFrame, rows: pd.DataFrame) -> pd.DataFrame:
    """`frame` (per-example generator scores with each `copy`) with `ad_law_violations`,
    `hallucinated` and `contradictions`, `unlisted` and `unlisted_values` counted by the gate's
    rules. `rows`: the snapshot rows (example_id, attributes)."""
    from components.evaluation.text_metrics import banned_occurrences

    if "copy" not in frame.columns:
        raise ValueError("generator scores have no 'copy' column: the gate cannot check the copies themselves")
    words, vocabulary = gate_ad_law_words(cfg), gate_vocabulary(cfg)
    attributes = rows.set_index("example_id")["attributes"]
    judged = frame.copy()
    copies = judged["copy"].fillna("").astype(str)
    own = judged["example_id"].map(attributes)
    contradictions = [vocabulary.contradictions(text, attrs) for text, attrs in zip(copies, own)]
    judged["ad_law_violations"] = [len(banned_occurrences(text, words)) for text in copies]
    judged["contradictions"] = ["、".join(found) for found in contradictions]
    judged["hallucinated"] = [bool(found) for found in contradictions]
    unlisted = [vocabulary.unlisted(text, attrs) for text, attrs in zip(copies, own)]
    judged["unlisted_values"] = ["、".join(found) for found in unlisted]
    judged["unlisted"] = [bool(found) for found in unlisted]
    return judged
