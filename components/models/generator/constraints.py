"""Hard constraints on generated copy: faithfulness to the product and the advertising law.

- Faithfulness: a copy must not state another value of an attribute key the product has
  (黑色 for a 颜色#白色 product: a *contradiction*). The value vocabulary per key comes from the
  training corpus. Only *factual* keys count: a key whose human copies often mention other
  values of it (风格: a 简约 dress copy may well say 休闲) describes mood, not a checkable fact.
  Single-character values (衫, 棉, 潮) are too ambiguous to test by substring and are left out,
  and so are the values a mood key has too (复古: 图案 and 风格; copies say 复古风).
  A value inside one of the product's own values states nothing (红色 in 粉红色), nor does one
  inside an own value written with one character inserted after it (木耳 in 木耳花边 for
  木耳边). The decoder keeps such a value to the own value as listed, which is stricter.
  Stricter, and the decoding default: no *unlisted* value either, a factual value the product
  does not list at all (雪纺 for a dress with no 材质, 撞色 for trousers with no 图案). The
  catalog does not say it, so the copy would be guessing a fact.
  The product's type counts too: `GARMENT_WORDS` are the nouns no catalog lists that name a
  garment of one `类型` (牛仔裤, 裤子, 裙子). A copy of a product of another type may not state
  them: `这款牛仔裤` for a denim skirt names the wrong product.
- Advertising law: words from the maintained list (cfg.paths.ad_law_words) are never emitted.

Beside them, a softer rule on Latin letters: `LatinLexicon` lets a run of letters grow only
along a known word: a generic one (components/resources/latin_words.txt: feel, look, hold) that
the training copies use, or one of the product's own values (polo, ol). Without it the decoder
wandered into `olgissihieteeilelian` (bigram blocking pushes it from letter to letter); with
every word of the training copies allowed, it copied their brand names (`来自pawinpaw的`) and
pinyin (`zui` for 最).

`TokenBlocker` turns both into per-step token bans for the decoder, including words that
straddle several tokens, and words banned only outside the product's own values: 对称 for a
不对称 product is allowed right after 不 and banned anywhere else; 西装 for a product with
西装领 may be written, but must then go on as 西装领 (the next token has to start with 领).
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from components.data.attributes import UNK


TYPE_KEY = "类型"
# Nouns naming a garment of each `类型` value of the corpus, or a part only it has, beyond the
# catalog values that do (阔腿裤, 半身裙, 长裤, 衬衫 are values of other keys, so the vocabulary
# covers them). Human copies of products of another type use each in at most 1.1% of copies
# (mostly pairing advice: 搭配牛仔裤); the `full` model wrote 牛仔裤 in 3% of its copies of skirts,
# most as the subject (这款牛仔裤采用…), and 裤脚 in 3% of its copies of tops. 裙摆 is left out:
# tops with a flared hem (荷叶边) call it that in 1.6% of their human copies.
GARMENT_WORDS: dict[str, tuple[str, ...]] = {
    "裤": ("裤子", "牛仔裤", "休闲裤", "西裤", "运动裤", "打底裤", "裤装", "裤脚", "裤腿", "裤身", "裤管", "裤腰", "裤头"),
    "裙": ("裙子", "裙装", "裙身", "裙边", "裙腰"),
    "上衣": (),
}


def load_word_list(path: Path | str, what: str = "word list") -> list[str]:
    """One word a line, '#' starts a comment; an empty list is an error (a broken file)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path}")
    words = []
    for line in path.read_text(encoding="utf-8").splitlines():
        word = line.split("#", 1)[0].strip() if not line.lstrip().startswith("#") else ""
        if word and word not in words:
            words.append(word)
    if not words:
        raise ValueError(f"{what} {path} has no words")
    return words


def load_ad_law_words(path: Path | str) -> list[str]:
    return load_word_list(path, "ad-law word list")


def load_latin_words(path: Path | str) -> set[str]:
    """The generic Latin-letter words a copy may use (components/resources/latin_words.txt)."""
    return {w.lower() for w in load_word_list(path, "Latin word list")}


def _spans(text: str, word: str) -> list[tuple[int, int]]:
    spans, start = [], text.find(word)
    while start >= 0:
        spans.append((start, start + len(word)))
        start = text.find(word, start + 1)
    return spans


def _uncovered(text: str, word: str, allowed: Iterable[str]) -> bool:
    """Does `word` occur in `text` outside every occurrence of an allowed value, as written or
    with one character inserted after the word (`_spread_spans`)? (红色 inside 粉红色 is not a
    claim that the product is 红色, nor 木耳 inside 木耳花边 that a 木耳边 product is 木耳.)"""
    occurrences = _spans(text, word)
    if not occurrences:
        return False
    allowed = [a for a in allowed if word in a]
    allowed_spans = [s for a in allowed for s in _spans(text, a)] + [s for a in allowed for s in _spread_spans(text, a, word)]
    for start, end in occurrences:
        if not any(a_start <= start and end <= a_end for a_start, a_end in allowed_spans):
            return True
    return False


_CHINESE = "[\u4e00-\u9fff]"


def _spread_spans(text: str, value: str, word: str) -> list[tuple[int, int]]:
    """Spans of the opening of `value` that holds `word`, where `text` writes `value` with one
    Chinese character inserted after that opening (木耳花边 for 木耳边: the span of 木耳).
    Only after it: one inserted before the word can cut the word off its modifier (粉和红色
    does claim 红色 for a 粉红色 product)."""
    spans = []
    for cut in range(value.find(word) + len(word), len(value)):
        pattern = re.escape(value[:cut]) + _CHINESE + re.escape(value[cut:])
        spans += [(m.start(), m.start() + cut) for m in re.finditer(f"(?={pattern})", text)]
    return spans


# value_aliases' defaults (params.yaml generator.faithful_alias_*), also for bundles saved before aliases
ALIAS_MAX_HUMAN_RATE = 0.001
ALIAS_MIN_USES = 5


@dataclass
class ValueVocabulary:
    """Values seen per attribute key in the training corpus, and the keys that are factual."""

    values_by_key: dict[str, list[str]]
    factual_keys: list[str]
    human_contradiction_rate: dict[str, float] = field(default_factory=dict)
    # alias -> the factual keys of the values it shortens; None: saved before aliases existed
    # (load_generator derives them from the bundle's training copies)
    aliases: dict[str, list[str]] | None = None

    def to_dict(self) -> dict:
        return {
            "values_by_key": self.values_by_key,
            "factual_keys": self.factual_keys,
            "human_contradiction_rate": self.human_contradiction_rate,
            **({"aliases": self.aliases} if self.aliases is not None else {}),
        }

    @classmethod
    def from_dict(cls, data: dict) -> ValueVocabulary:
        return cls(data["values_by_key"], data["factual_keys"], data.get("human_contradiction_rate", {}), data.get("aliases"))

    def contradicting_values(self, attributes: dict[str, list[str]]) -> list[str]:
        """Values of the product's factual keys that the product does not have, the aliases of
        such values that none of its own values contains (牛仔 for 材质#亚麻), and the garment
        nouns of the other types (牛仔裤 for a 类型#裙 product)."""
        keys = [k for k in attributes if k in self.factual_keys]
        values = self._values_not_listed(attributes, keys)
        values += [a for a in self._aliases_not_listed(attributes, set(keys)) if a not in values]
        return values + [w for w in other_garment_words(attributes) if w not in values]

    def unlisted_values(self, attributes: dict[str, list[str]]) -> list[str]:
        """Values of every factual key that the product does not list: the contradicting ones
        first, then those of keys the product lacks (雪纺 for a dress with no 材质), and the
        aliases none of its own values contains."""
        own_keys = [k for k in attributes if k in self.factual_keys]
        values = self._values_not_listed(attributes, own_keys + [k for k in self.factual_keys if k not in attributes])
        values += [a for a in self._aliases_not_listed(attributes, None) if a not in values]
        return values + [w for w in other_garment_words(attributes) if w not in values]

    def _aliases_not_listed(self, attributes: dict[str, list[str]], keys: set[str] | None) -> list[str]:
        """Aliases (of values of `keys`; None: any key) that no own value contains."""
        own = [v.lower() for values in attributes.values() for v in values]
        return [
            alias
            for alias, alias_keys in (self.aliases or {}).items()
            if (keys is None or keys & set(alias_keys)) and not any(alias in o for o in own)
        ]

    def _values_not_listed(self, attributes: dict[str, list[str]], keys: Iterable[str]) -> list[str]:
        """The values of `keys` the product does not list, but for those a non-factual key has
        too: 图案#复古 is also 风格#复古, and a copy saying 复古 (复古风) names the mood."""
        own = {v.lower() for values in attributes.values() for v in values}
        moods = {v.lower() for key in self.values_by_key.keys() - set(self.factual_keys) for v in self.values_by_key[key]}
        out: list[str] = []
        seen: set[str] = set()
        for key in keys:
            for value in self.values_by_key.get(key, []):
                if value.lower() not in own and value.lower() not in moods and value not in seen:
                    seen.add(value)
                    out.append(value)
        return out

    def contradictions(self, text: str, attributes: dict[str, list[str]]) -> list[str]:
        """Contradicting values the text states (outside any of the product's own values)."""
        return _stated(text, self.contradicting_values(attributes), attributes)

    def unlisted(self, text: str, attributes: dict[str, list[str]]) -> list[str]:
        """Unlisted values the text states (contradictions included)."""
        return _stated(text, self.unlisted_values(attributes), attributes)


def other_garment_words(attributes: dict[str, list[str]]) -> list[str]:
    """The `GARMENT_WORDS` of the types the product is not; none when its type is not one of
    theirs (a shoe may be paired with 裤子) or it lists no type."""
    types = [t for t in attributes.get(TYPE_KEY, []) if t in GARMENT_WORDS]
    if not types:
        return []
    own = {w for t in types for w in GARMENT_WORDS[t]} | {v.lower() for vs in attributes.values() for v in vs}
    return [w for t, words in GARMENT_WORDS.items() if t not in types for w in words if w not in own]


def _stated(text: str, values: Iterable[str], attributes: dict[str, list[str]]) -> list[str]:
    """The values that `text` mentions outside any of the product's own values."""
    lowered = text.lower()
    own = [v.lower() for vs in attributes.values() for v in vs]
    return [v for v in values if _uncovered(lowered, v.lower(), own)]


def value_aliases(
    attributes: Sequence[dict[str, list[str]]],
    texts: Sequence[str],
    vocabulary: ValueVocabulary,
    max_human_rate: float,
    min_uses: int,
) -> dict[str, list[str]]:
    """Short forms the human copies use as a factual value: {alias: its values' keys}.

    A candidate is the first two characters of a factual value of three or more Chinese
    characters (牛仔 of 牛仔布) that is no value itself. It is an alias when at least `min_uses`
    human copies of products listing a value that contains it say it, and at most
    `max_human_rate` of the copies of the other products do, among at least 1 / max_human_rate
    of them (a smaller corpus cannot show so low a rate, and yields none). In the whole corpus,
    牛仔 (said by all 553 copies of denim products and 3 of the 4,447 others) is one; 直筒 (2.1%
    of the others: `直筒版型` describes many a dress) and 立体 (10%) are not."""
    every_value = {v for values in vocabulary.values_by_key.values() for v in values}
    keys_of: dict[str, set[str]] = defaultdict(set)
    for key in vocabulary.factual_keys:
        for value in vocabulary.values_by_key.get(key, []):
            stem = value[:2]
            if len(value) >= 3 and re.fullmatch(r"[\u4e00-\u9fff]{2}", stem) and stem not in every_value:
                keys_of[stem].add(key)
    said_listed: dict[str, int] = defaultdict(int)
    said_other: dict[str, int] = defaultdict(int)
    others: dict[str, int] = defaultdict(int)
    for attrs, text in zip(attributes, texts):
        own = "|".join(v for values in attrs.values() for v in values)
        for stem in keys_of:
            if stem in own:
                said_listed[stem] += stem in text
            else:
                others[stem] += 1
                said_other[stem] += stem in text
    return {
        stem: sorted(keys)
        for stem, keys in sorted(keys_of.items())
        # fewer than 1 / max_human_rate other copies cannot show a rate that low (a zero in 200
        # copies is no evidence of under 0.1%): a small corpus yields no alias, not every candidate
        if said_listed[stem] >= min_uses and others[stem] * max_human_rate >= 1 and said_other[stem] <= max_human_rate * others[stem]
    }


def build_value_vocabulary(
    attributes: Sequence[dict[str, list[str]]],
    texts: Sequence[str],
    max_human_rate: float,
    alias_max_human_rate: float = ALIAS_MAX_HUMAN_RATE,
    alias_min_uses: int = ALIAS_MIN_USES,
) -> ValueVocabulary:
    """Per-key value lists from the corpus; a key is factual when at most `max_human_rate` of
    the human copies of products with that key mention another of its values. Aliases:
    `value_aliases`."""
    values_by_key: dict[str, list[str]] = defaultdict(list)
    for attrs in attributes:
        for key, values in attrs.items():
            for value in values:
                if value != UNK and len(value) >= 2 and value not in values_by_key[key]:
                    values_by_key[key].append(value)
    everything = ValueVocabulary(dict(values_by_key), list(values_by_key))
    with_key: dict[str, int] = defaultdict(int)
    contradicted: dict[str, int] = defaultdict(int)
    for attrs, text in zip(attributes, texts):
        lowered = text.lower()
        own = [v.lower() for values in attrs.values() for v in values]
        for key in attrs:
            with_key[key] += 1
            # This key's own values only: the garment nouns would count against every key.
            if any(_uncovered(lowered, v.lower(), own) for v in everything._values_not_listed(attrs, [key])):
                contradicted[key] += 1
    rates = {key: contradicted[key] / with_key[key] for key in with_key}
    factual = sorted(k for k, rate in rates.items() if rate <= max_human_rate and k in values_by_key)
    vocabulary = ValueVocabulary(dict(values_by_key), factual, rates)
    vocabulary.aliases = value_aliases(attributes, texts, vocabulary, alias_max_human_rate, alias_min_uses)
    return vocabulary


def corpus_value_vocabulary(train, generator_cfg) -> ValueVocabulary:
    """The vocabulary of a corpus split (DataFrame with `attributes`, `summary`) under the
    generator's `faithful_*` knobs: what training ships and what the release gate judges with."""
    g = generator_cfg
    return build_value_vocabulary(list(train["attributes"]), list(train["summary"]), g.faithful_key_max_rate,
                                  g.faithful_alias_max_rate, g.faithful_alias_min_uses)


_LETTERS = re.compile(r"[a-z]+")


def latin_words(texts: Iterable[str]) -> set[str]:
    """The lower-cased runs of Latin letters in `texts` (the masked token <UNK> is no word)."""
    return {w for text in texts for w in _LETTERS.findall(text.lower().replace(UNK.lower(), " "))}


class LatinLexicon:
    """Which tokens may come next after a run of Latin letters: the run may grow only into a
    prefix of a known word, and may end only as a whole word."""

    def __init__(self, words: Iterable[str], piece_texts: Sequence[str]):
        self.words = {w.lower() for w in words if w}
        self.prefixes = {w[:i] for w in self.words for i in range(1, len(w) + 1)}
        lowered = [p.lower() for p in piece_texts]
        # (id, its leading letters, is it letters only) for tokens that start with a letter
        self._lettered = [(i, m.group(0), len(m.group(0)) == len(p)) for i, p in enumerate(lowered) if (m := _LETTERS.match(p))]
        self._others = np.array([i for i, p in enumerate(lowered) if p and not _LETTERS.match(p)], dtype=np.int64)
        self._cache: dict[str, np.ndarray] = {}

    def banned(self, text: str) -> np.ndarray:
        """Token ids banned after `text`, given the run of letters it ends with (maybe none)."""
        run = _trailing_letters(text)
        if run not in self._cache:
            ids = [i for i, letters, whole in self._lettered if (run + letters) not in (self.prefixes if whole else self.words)]
            banned = np.array(ids, dtype=np.int64)
            if run and run not in self.words:  # half a word: it must go on
                banned = np.concatenate([banned, self._others])
            self._cache[run] = banned
        return self._cache[run]

    def unfinished(self, text: str) -> bool:
        """Does `text` end part-way through a word (a run of letters no known word equals)?"""
        run = _trailing_letters(text)
        return bool(run) and run not in self.words


def _trailing_letters(text: str) -> str:
    end = len(text)
    start = end
    while start > 0 and "a" <= text[start - 1].lower() <= "z":
        start -= 1
    return text[start:end].lower()


class _PrefixIndex:
    """Token ids sorted by a text key, so the tokens whose key starts with a string are one slice."""

    def __init__(self, keyed: Iterable[tuple[str, int]]):
        pairs = sorted(keyed)
        self.keys = [key for key, _ in pairs]
        self.ids = np.array([i for _, i in pairs], dtype=np.int64)
        self.prefixes = {key[:n] for key in self.keys for n in range(len(key) + 1)}

    def starting_with(self, prefix: str) -> np.ndarray:
        if prefix not in self.prefixes:  # the common case, without a search
            return self.ids[:0]
        return self.ids[bisect_left(self.keys, prefix) : bisect_left(self.keys, prefix + "\U0010ffff")]


class TokenBlocker:
    """Bans, at each decoding step, every token that would complete a banned string.

    A banned word can be inside one token (banned statically) or straddle tokens: if the text
    so far ends with the word's first i characters, tokens starting with the rest are banned.
    (A token shorter than the rest is allowed; the next step then bans the completion.)
    """

    def __init__(self, piece_texts: Sequence[str], always_banned_ids: Iterable[int] = ()):
        self.piece_texts = [p.lower() for p in piece_texts]
        self.always_banned = np.zeros(len(piece_texts), dtype=bool)
        self.always_banned[list(always_banned_ids)] = True
        self._containing: dict[str, np.ndarray] = {}
        self._starting_any: dict[str, np.ndarray] = {}
        self._continuing: dict[str, np.ndarray] = {}
        # Queried with every new text tail at every step (doubling rule): sorted, not cached.
        self._by_text = _PrefixIndex((p, i) for i, p in enumerate(self.piece_texts) if p)
        self._by_text_after_one = _PrefixIndex((p[1:], i) for i, p in enumerate(self.piece_texts) if len(p) > 1 and "\u4e00" <= p[0] <= "\u9fff")

    def containing(self, word: str) -> np.ndarray:
        if word not in self._containing:
            self._containing[word] = np.array(
                [i for i, p in enumerate(self.piece_texts) if word in p], dtype=np.int64
            )
        return self._containing[word]

    def starting_with(self, rest: str) -> np.ndarray:
        """Tokens that begin with `rest`, or are a longer string that `rest` starts with."""
        return self._by_text.starting_with(rest)

    def starting_after_one(self, rest: str) -> np.ndarray:
        """Tokens of one Chinese character and then `rest` (又显瘦 for 显瘦), or longer."""
        return self._by_text_after_one.starting_with(rest) if rest else self._by_text_after_one.ids[:0]

    def starting_with_any(self, characters: str) -> np.ndarray:
        """Tokens whose text begins with any of `characters`."""
        if characters not in self._starting_any:
            self._starting_any[characters] = np.concatenate([self.starting_with(c) for c in set(characters)])
        return self._starting_any[characters]

    def continuing(self, rest: str) -> np.ndarray:
        """Tokens that keep the text on course to spell `rest`: they start with it, or are a
        non-empty beginning of it."""
        if rest not in self._continuing:
            beginnings = {rest[:j] for j in range(1, len(rest) + 1)}
            ids = [i for i, p in enumerate(self.piece_texts) if p and (p.startswith(rest) or p in beginnings)]
            self._continuing[rest] = np.array(ids, dtype=np.int64)
        return self._continuing[rest]

    def plan(self, words: Iterable[str], inside: Mapping[str, Sequence[str]] | None = None, latin: LatinLexicon | None = None, doubles: frozenset[str] | None = None) -> BanPlan:
        """Precompute the static mask and the boundary rules for one set of banned words.
        `inside`: words banned except as part of one of the given longer strings (the
        product's own values that contain them)."""
        static = self.always_banned.copy()
        by_last_char: dict[str, list[tuple[str, str]]] = defaultdict(list)
        for word in {w.lower() for w in words if w}:
            static[self.containing(word)] = True
            for i in range(1, len(word)):
                by_last_char[word[i - 1]].append((word[:i], word[i:]))
        contextual = []
        for word, hosts in (inside or {}).items():
            word = word.lower()
            contexts = {(host[:at], host[at + len(word) :]) for host in map(str.lower, hosts) for at, _ in _spans(host, word)} if word else set()
            contexts.discard(("", ""))  # the word itself is no context
            if contexts:
                contextual.append((word, tuple(sorted(contexts))))
        return BanPlan(self, static, dict(by_last_char), tuple(contextual), latin, doubles)


@dataclass
class BanPlan:
    blocker: TokenBlocker
    static: np.ndarray
    by_last_char: dict[str, list[tuple[str, str]]]
    # (word, ((before, after), ...)): the word may appear only between one of these pairs
    contextual: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = ()
    # the soft rule for runs of Latin letters (decoding applies it; None: no rule)
    latin: LatinLexicon | None = None
    # the soft rule for a character written twice: those that may be (None: no rule)
    doubles: frozenset[str] | None = None

    def banned(self, text: str) -> np.ndarray:
        """Boolean mask over the vocabulary for the next token after `text`."""
        lowered = text.lower()
        mask = self.static
        if lowered and lowered[-1] in self.by_last_char:
            for prefix, rest in self.by_last_char[lowered[-1]]:
                if lowered.endswith(prefix):
                    ids = self.blocker.starting_with(rest)
                    if len(ids):
                        if mask is self.static:
                            mask = mask.copy()
                        mask[ids] = True
        for word, contexts in self.contextual:
            for rests in self._obligations(lowered, word, contexts):
                allowed = np.zeros(len(mask), dtype=bool)
                for rest in rests:
                    allowed[self.blocker.continuing(rest)] = True
                if allowed.any():  # (if no token can go on, the re-ranking is the guard)
                    if mask is self.static:
                        mask = mask.copy()
                    mask |= ~allowed
            ids = [i for i in self._completing(lowered, word) if not self._inside(lowered + self.blocker.piece_texts[i], len(lowered), word, contexts)]
            if ids:
                if mask is self.static:
                    mask = mask.copy()
                mask[ids] = True
        return mask

    def unfinished(self, text: str) -> bool:
        """Does `text` end part-way through an allowed context (西装 of 西装领)? A copy cut
        off by the length limit there would state the contradicting value."""
        lowered = text.lower()
        return any(self._obligations(lowered, word, contexts) for word, contexts in self.contextual)

    def _completing(self, text: str, word: str) -> set[int]:
        """Tokens that would complete an occurrence of `word` after `text`."""
        ids = set(self.blocker.containing(word).tolist())
        for i in range(1, len(word)):
            if text.endswith(word[:i]):
                ids.update(self.blocker.starting_with(word[i:]).tolist())
        return ids

    @staticmethod
    def _inside(new: str, old_length: int, word: str, contexts: tuple[tuple[str, str], ...]) -> bool:
        """Is every occurrence of `word` that ends in new[old_length:] inside one of its
        contexts (the part after it may still be on its way)?"""
        start = new.find(word, max(0, old_length - len(word) + 1))
        while start >= 0:
            end, ok = start + len(word), False
            for before, after in contexts:
                tail = new[end : end + len(after)]
                if new.endswith(before, 0, start) and after.startswith(tail):
                    ok = True
                    break
            if not ok:
                return False
            start = new.find(word, start + 1)
        return True

    @staticmethod
    def _obligations(text: str, word: str, contexts: tuple[tuple[str, str], ...]) -> list[list[str]]:
        """For each occurrence of `word` near the end of `text` that is not yet inside a
        finished context: the strings the text may go on with (one of them must follow)."""
        longest = max(len(after) for _, after in contexts)
        out = []
        start = text.find(word, max(0, len(text) - len(word) - longest + 1))
        while start >= 0:
            end = start + len(word)
            tail = text[end:]
            fitting = [after for before, after in contexts if text.endswith(before, 0, start) and after.startswith(tail[: len(after)])]
            if fitting and not any(len(tail) >= len(after) for after in fitting):
                out.append([after[len(tail) :] for after in fitting])
            start = text.find(word, start + 1)
        return out
