"""Control codes of the generator: focus values, tone and length bucket.

Training derives them from the reference copy (what it mentions, how it sounds, how long it
is); at inference the caller chooses them (focus = a shopper's top affinities). Each control
also has an "any" setting, used for a share of training rows, so the model can be run without it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from components.data.attributes import UNK

ANY = "any"
TONES = ("plain", "lively", "elegant")
LENGTHS = ("short", "medium", "long")

# Sentence-final particles and exclamations mark a chatty, lively copy.
LIVELY_MARKS = ("哦", "呢", "啦", "哒", "呀", "吧", "噢", "哟", "嘛", "！", "!", "~", "～")
# Register words of a refined, elegant copy.
ELEGANT_MARKS = ("优雅", "气质", "知性", "温婉", "韵味", "精致", "高级感", "淑女", "名媛", "格调", "典雅")


def focusable_values(attributes: dict[str, list[str]]) -> list[str]:
    """A product's values that a copy can mention (the masked brand <UNK> cannot)."""
    seen: list[str] = []
    for values in attributes.values():
        for value in values:
            if value != UNK and value not in seen:
                seen.append(value)
    return seen


def mentioned_values(text: str, attributes: dict[str, list[str]]) -> list[str]:
    """The product's values the text mentions, in the order the text first mentions them."""
    lowered = text.lower()
    found = [(lowered.find(v.lower()), v) for v in focusable_values(attributes) if v.lower() in lowered]
    return [v for _, v in sorted(found, key=lambda pair: pair[0])]


def tone_of(text: str) -> str:
    if any(mark in text for mark in LIVELY_MARKS):
        return "lively"
    if any(mark in text for mark in ELEGANT_MARKS):
        return "elegant"
    return "plain"


def length_bucket(n_chars: int, edges: Sequence[float]) -> str:
    """short / medium / long by the corpus' length tertiles `edges` (two numbers)."""
    if n_chars <= edges[0]:
        return "short"
    if n_chars <= edges[1]:
        return "medium"
    return "long"


def length_edges(lengths: Sequence[int]) -> list[float]:
    return [float(x) for x in np.quantile(np.asarray(lengths), [1 / 3, 2 / 3])]


def typical_lengths(lengths: Sequence[int], edges: Sequence[float]) -> dict[str, int]:
    """The median human copy's length in characters, per length bucket and over all (`any`):
    how long a copy asked for with that length control should be."""
    lengths = np.asarray(lengths)
    buckets = np.array([length_bucket(n, edges) for n in lengths])
    overall = float(np.median(lengths))
    bounds = {"short": (0, edges[0]), "medium": (edges[0] + 1, edges[1]), "long": (edges[1] + 1, np.inf)}
    typical = {ANY: int(overall)}
    for bucket in LENGTHS:
        members = lengths[buckets == bucket]
        # a bucket no copy falls in (a tiny corpus): the overall median, moved into the bucket
        typical[bucket] = int(np.median(members)) if len(members) else int(np.clip(overall, *bounds[bucket]))
    return typical


def normalize_focus(focus: Sequence[str] | None, attributes: dict[str, list[str]]) -> list[str]:
    """Focus values the product actually has ("key#value" or "value"); others are dropped
    because foregrounding a value the product lacks would be a false claim."""
    if not focus:
        return []
    available = focusable_values(attributes)
    chosen = []
    for item in focus:
        value = item.split("#", 1)[1] if "#" in item else item
        if value in available and value not in chosen:
            chosen.append(value)
    return chosen


def sample_training_focus(mentioned: Sequence[str], rng: np.random.Generator, p_empty: float, max_size: int) -> list[str]:
    """The first 1..max_size values the reference mentions (empty with probability p_empty).

    Focus means *foreground*: the values a copy opens with. Nearly every value of a product is
    mentioned somewhere in its copy, so "focus = mentioned" would teach the model nothing;
    "focus = mentioned first" teaches it to lead with whatever the shopper cares about."""
    if not mentioned or rng.random() < p_empty:
        return []
    size = int(rng.integers(1, min(max_size, len(mentioned)) + 1))
    return list(mentioned[:size])


def random_focus(attributes: dict[str, list[str]], rng: np.random.Generator, size: int = 2) -> list[str]:
    """A random focus set among the product's values (the personalization test)."""
    values = focusable_values(attributes)
    if not values:
        return []
    picked = rng.choice(len(values), size=min(size, len(values)), replace=False)
    return [values[i] for i in sorted(picked)]


def focus_from_affinities(affinities: dict[str, float], attributes: dict[str, list[str]], k: int = 2) -> list[str]:
    """The product's values the shopper likes most: up to k of them with positive affinity.
    `affinities` maps "key#value" or "value" to a score (e.g. the preference features'
    attribute affinities); values the product lacks are ignored."""
    scores: dict[str, float] = {}
    for item, score in affinities.items():
        value = item.split("#", 1)[1] if "#" in item else item
        scores[value] = max(score, scores.get(value, float("-inf")))
    ranked = sorted((v for v in focusable_values(attributes) if scores.get(v, 0.0) > 0), key=lambda v: -scores[v])
    return ranked[:k]
