"""Which of a request's candidate copies the server shows.

`uniform`: every distinct candidate with probability 1/n.

`preference`: the release's preference model scores each candidate for this shopper and product,
reading the copy as it does in training: which of the product's values the text mentions, and
how many of the shopper's top values (end-of-data features) it mentions. Epsilon-greedy: each
candidate gets exploration/n, and the best one the rest, 1 - exploration, split evenly among
candidates with equal best scores (candidates that mention the same values score the same, and
the generator's first candidate must not take their share). Training measures what such a
choice earns on the catalog's own copies (components/evaluation/copy_choice.py, the report's
"Copy choice"). Every candidate keeps a probability above zero, and the log keeps the
candidates, their scores and the chosen one's probability, so another strategy can be scored
off-policy on it.

A shopper the features stage has no impression of gets the uniform draw. (Building their row
once ran the whole features computation per request; since 2026-11-25 every shopper's row is
computed when the features load, as `copyflow explain` scores it, but scoring such shoppers'
candidates has not been evaluated, so the draw stays uniform.)
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import pandas as pd

from components.features.copy_mentions import values_mentioned

UNIFORM, PREFERENCE = "uniform", "preference"
# Scores this close to the best (relative) are equal best scores. The net computes in float32, and
# identical inputs do not always give identical outputs: torch's matmul gives a row a different
# last bit depending on its place in the batch (measured: 1-4 float32 ulps, ~5e-7 relative), so
# exact equality would let batch position, not the model, pick among candidates that read the same.
TIE_RTOL = 1e-5


@dataclass(frozen=True)
class Choice:
    index: int           # into the distinct candidates
    propensity: float    # the probability the strategy gave it
    strategy: str        # what decided: "preference", or "uniform" (configured, or no scores)
    scores: list[float] | None = None


def top_value_mentions(texts: list[str], top_values: set[tuple[str, str]]) -> list[int]:
    """Per text, how many of the shopper's top values it mentions: the features stage's
    `uc_copy_pref_mentions`, by its rule (`values_mentioned`)."""
    return [len(values_mentioned(text, top_values)) for text in texts]


def candidate_frame(row: pd.DataFrame, texts: list[str], top_values: set[tuple[str, str]]) -> pd.DataFrame:
    """The pair's feature row once per candidate, with each candidate's copy features."""
    frame = pd.concat([row.iloc[[0]]] * len(texts), ignore_index=True)
    frame["copy_id"] = None  # not a copy of the training table: the model reads the text's mentions
    frame["uc_copy_pref_mentions"] = top_value_mentions(texts, top_values)
    return frame


def is_best(scores: np.ndarray, best: np.ndarray | float) -> np.ndarray:
    """Which scores tie with `best` (the maximum of their group), within TIE_RTOL."""
    scores, best = np.asarray(scores, dtype=np.float64), np.asarray(best, dtype=np.float64)
    return scores >= best - TIE_RTOL * np.abs(best)


def choice_probabilities(scores: np.ndarray, exploration: float) -> np.ndarray:
    """Epsilon-greedy: exploration/n each, plus 1 - exploration shared by the best-scored ones."""
    scores = np.asarray(scores, dtype=np.float64)
    n = len(scores)
    best = is_best(scores, scores.max())
    return np.full(n, exploration / n) + best * (1.0 - exploration) / best.sum()


def choose(n: int, scores: np.ndarray | None, exploration: float, rng: random.Random) -> Choice:
    """Epsilon-greedy over the scores, uniform without them."""
    if n < 1:
        raise ValueError("no candidate to choose from")
    if scores is None or n == 1:
        return Choice(rng.randrange(n), 1.0 / n, UNIFORM)
    scores = np.asarray(scores, dtype=np.float64)
    if len(scores) != n or not np.isfinite(scores).all():
        raise ValueError(f"need {n} finite scores, got {scores.tolist()}")
    probabilities = choice_probabilities(scores, exploration)
    drawn = rng.random()
    index = min(int(np.searchsorted(np.cumsum(probabilities), drawn, side="right")), n - 1)
    return Choice(index, float(probabilities[index]), PREFERENCE, [float(s) for s in scores])


def preference_scores(model, cfg, data, user_id: str, product_id: str, texts: list[str]) -> np.ndarray | None:
    """P(click) of each candidate for this shopper (pseudonymized id) and product, by the
    preference model `model`; None when there is nothing to score with (no features in `data`,
    or no impression of this shopper in them)."""
    from components.models.preference.explain import pair_feature_row

    files = data.features
    if files is None or not files.has_impressions(user_id):
        return None
    row = pair_feature_row(cfg, user_id, product_id, files)
    return candidate_scores(model, files, row, texts, data.top_values(user_id))


def candidate_scores(model, files, row: pd.DataFrame, texts: list[str], top_values: set[tuple[str, str]]) -> np.ndarray:
    """P(click) of each candidate on the pair's feature row `row` (one row, its product's) with
    the shopper's top values `top_values`: the server passes them as of the end of the data, an
    offline evaluation as of the impression it replays (components/evaluation/served_choice.py)."""
    frame = candidate_frame(row, texts, top_values)
    # The product's values as training read them (features stage: a catalog without a 类型 key
    # gets its category as one), not the clean catalog's own list.
    return model.predict_copies(frame, texts, files.attribute_dict(str(row["product_id"].iloc[0])))
