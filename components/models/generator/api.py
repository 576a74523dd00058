"""What the rest of the platform calls: load a trained generator, write copy, score copy.

    gen = load_generator("artifacts/quick/models/generator/model")     # or an MLflow artifact URI
    gen.generate({"类型": ["裙"], "颜色": ["白色"]}, focus=["白色"], n=3)
    generate_batch("in.jsonl", "out.jsonl", model_dir)                # {"content"} -> {"content","copy"}
    evaluate_examples(gen, rows)                                       # per-example metrics frame

A model directory holds everything serving needs without MLflow: config.json, the tokenizer,
weights.pt, the value vocabulary (faithfulness), the ad-law word list, the retrieval baseline's
index and, once exported, onnx/encoder.onnx + onnx/decoder_step.onnx.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from components.data.attributes import parse_attributes
from components.evaluation import text_metrics as tm
from components.models.generator.constraints import ALIAS_MAX_HUMAN_RATE, ALIAS_MIN_USES, BanPlan, LatinLexicon, TokenBlocker, ValueVocabulary, latin_words, load_ad_law_words, load_latin_words, value_aliases
from components.models.generator.decoding import DecodingSettings, PhraseMemory, search
from components.models.generator.focus import ANY, LENGTHS, TONES, focusable_values, normalize_focus, typical_lengths
from components.models.generator.model import BrokenModel, CopyTransformer, ModelSpec
from components.models.generator.retrieval import RetrievalGenerator
from components.models.generator.tokenizer import PAD, CopyTokenizer

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.pt"
VALUES_FILE = "values.json"
AD_LAW_FILE = "ad_law_words.txt"
LATIN_FILE = "latin_words.txt"
# What a bundle saved before it carried its own Latin word list gets.
DEFAULT_LATIN_WORDS = Path(__file__).resolve().parents[2] / "resources" / LATIN_FILE
# Where the corpus names a brand or an origin (这款来自<UNK>的, 来自太平鸟的, 来自韩国的): the model
# cannot write a masked brand and the catalog gives it no fact for the slot, so a copy that
# opens one garbles it (来自man的这款, 来自在牛仔裙). 来自 may stand only inside these: 看起来自然,
# 穿起来自在, 走起路来自带.
SLOT_PHRASES = {"来自": ("起来自", "路来自")}
# A number in a copy is a product fact (10%, 2018新款, 3cm) that no catalog value gives the model,
# which otherwise writes one where the ad-law ban stopped it short (100% -> 采用10%纯蓝色). A digit
# stays writable as part of one of the product's own values.
DIGITS = "0123456789"
_NUMBER = re.compile(r"[0-9]+")
ONNX_DIR = "onnx"
BUNDLE_ARTIFACT = "generator_bundle"  # the model directory as logged to MLflow by training
TYPICAL_COPY_CHARS = 110  # about the median copy of the bundled corpus


class GenerationInputError(ValueError):
    """A generation request is malformed (bad attributes, unknown tone, ...)."""


@dataclass
class Request:
    attributes: dict[str, list[str]]
    focus: list[str]
    tone: str = ANY
    length: str = ANY
    exemplar: str | None = None


def check_controls(tone: str, length: str) -> None:
    """Raise GenerationInputError for a tone or length control the model was not trained with."""
    if tone not in (*TONES, ANY):
        raise GenerationInputError(f"unknown tone {tone!r}; expected one of {', '.join((*TONES, ANY))}")
    if length not in (*LENGTHS, ANY):
        raise GenerationInputError(f"unknown length {length!r}; expected one of {', '.join((*LENGTHS, ANY))}")


class TorchBackend:
    """decoding.Backend over the torch model (the same decoder_step that ONNX exports)."""

    def __init__(self, net: CopyTransformer):
        self.net = net.eval()

    @torch.inference_mode()
    def start(self, src: np.ndarray):
        src_t = torch.from_numpy(src)
        cross_k, cross_v, copy_keys = self.net.cross_cache(src_t)
        past_k, past_v = self.net.empty_cache(src.shape[0])
        return past_k, past_v, cross_k, cross_v, copy_keys, src_t

    @torch.inference_mode()
    def step(self, tokens: np.ndarray, state):
        past_k, past_v, cross_k, cross_v, copy_keys, src = state
        logprobs, past_k, past_v = self.net.decoder_step(torch.from_numpy(tokens), past_k, past_v, cross_k, cross_v, copy_keys, src)
        return logprobs, (past_k, past_v, cross_k, cross_v, copy_keys, src)

    def select(self, state, rows: np.ndarray, same_source: bool = False):
        index = torch.from_numpy(rows)
        past_k, past_v, cross_k, cross_v, copy_keys, src = state
        if same_source:
            return past_k[:, index], past_v[:, index], cross_k, cross_v, copy_keys, src
        return past_k[:, index], past_v[:, index], cross_k[:, index], cross_v[:, index], copy_keys[index], src[index]


def settings_from(defaults: DecodingSettings, decoding: str | dict | DecodingSettings | None) -> DecodingSettings:
    """A method name ("beam"), a dict of overrides, full settings, or None for the defaults."""
    if decoding is None:
        return defaults
    if isinstance(decoding, DecodingSettings):
        return decoding
    if isinstance(decoding, str):
        if decoding not in ("greedy", "beam", "top_p"):
            raise GenerationInputError(f"unknown decoding {decoding!r}; expected greedy, beam or top_p")
        return defaults.with_(method=decoding)
    if isinstance(decoding, dict):
        unknown = set(decoding) - set(asdict(defaults))
        if unknown:
            raise GenerationInputError(f"unknown decoding settings {sorted(unknown)}")
        return checked_settings(defaults.with_(**decoding))
    raise GenerationInputError(f"decoding must be a name, a dict or DecodingSettings, not {type(decoding).__name__}")


def checked_settings(settings: DecodingSettings) -> DecodingSettings:
    """Overrides a search cannot run with, all named at once (temperature 0 or top_p 0 used to
    fail deep inside sampling with "index -1 is out of bounds")."""
    s = settings
    problems = [
        message
        for bad, message in (
            (s.method not in ("greedy", "beam", "top_p"), f"method {s.method!r} is not greedy, beam or top_p"),
            (not 0 < s.top_p <= 1, f"top_p {s.top_p} is not in (0, 1]"),
            (not s.temperature > 0, f"temperature {s.temperature} is not above 0"),
            (s.beam_size < 1 or s.num_candidates < 1, f"beam_size {s.beam_size} and num_candidates {s.num_candidates} must be at least 1"),
            (s.max_len < 1 or s.min_len < 0 or s.min_len > s.max_len, f"need 0 <= min_len ({s.min_len}) <= max_len ({s.max_len}) and max_len >= 1"),
            (s.no_repeat_ngram < 0 or s.no_doubling < 0, "no_repeat_ngram and no_doubling must be 0 (off) or more"),
            (s.length_budget < 0 or s.catalog_penalty < 0, "length_budget and catalog_penalty must be 0 (off) or more"),
        )
        if bad
    ]
    if problems:
        raise GenerationInputError("invalid decoding settings: " + "; ".join(problems))
    return settings


def twin_indices(requests: Sequence[Request], earlier: Iterable[Request] = ()) -> list[int]:
    """For each request, how many identical requests (same attributes, focus, tone and length)
    come before it in the job, `earlier` ones included: sampling draws from a stream per
    (request, index), so twin products of a catalog get different copies."""
    seen: Counter[str] = Counter(_identity(r) for r in earlier)
    out = []
    for request in requests:
        key = _identity(request)
        out.append(seen[key])
        seen[key] += 1
    return out


def _identity(request: Request) -> str:
    return json.dumps([request.attributes, request.focus, request.tone, request.length], ensure_ascii=False, sort_keys=True)


def _is_text(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class Generator:
    def __init__(
        self,
        tokenizer: CopyTokenizer,
        backend,
        vocabulary: ValueVocabulary,
        ad_law_words: Sequence[str],
        defaults: DecodingSettings,
        max_source_len: int,
        batch_size: int = 32,
        retrieval: RetrievalGenerator | None = None,
        max_exemplar_len: int = 0,
        known_latin_words: Iterable[str] | None = None,
        known_doubles: Iterable[str] | None = None,
        known_attributes: Sequence[dict[str, list[str]]] | None = None,
        typical_lengths: dict[str, int] | None = None,
        max_target_len: int | None = None,
    ):
        """`retrieval`: when given, every request is conditioned on the nearest training copy
        (own values substituted), which the model edits into this product's copy.
        `known_latin_words`: when given, a run of Latin letters in a copy must be one of them or
        of the product's own values (see `copy_lexicon`). `known_doubles`: when given, a Chinese
        character may come twice in a row only if it is one of them or doubled in one of the
        product's own values (see `copy_doubles`). `known_attributes`: the training products,
        against which `unfamiliar` tells which keys and values of a request the model never saw.
        `typical_lengths`: characters a copy should have, per length control (`typical_lengths`
        of the training copies); without them every copy aims at `TYPICAL_COPY_CHARS`.
        `max_target_len`: the model's target positions, the longest copy it can decode."""
        self.tokenizer = tokenizer
        self.backend = backend
        self.vocabulary = vocabulary
        self.ad_law_words = list(ad_law_words)
        self.defaults = defaults
        self.max_source_len = max_source_len
        self.batch_size = batch_size
        self.retrieval = retrieval
        self.max_exemplar_len = max_exemplar_len
        self.blocker = TokenBlocker(tokenizer.piece_texts, always_banned_ids=tokenizer.non_text_ids)
        self.known_latin_words = None if known_latin_words is None else frozenset(w.lower() for w in known_latin_words)
        self._lexicons: dict[frozenset[str], LatinLexicon] = {}
        self.known_doubles = None if known_doubles is None else frozenset(known_doubles)
        self.known_keys = {k for attrs in known_attributes or () for k in attrs}
        self.known_values = {v.lower() for attrs in known_attributes or () for vs in attrs.values() for v in vs}
        self.typical_lengths = dict(typical_lengths or {})
        self.max_target_len = max_target_len

    # -- constraints -------------------------------------------------------------------------
    def ban_plan(self, attributes: dict[str, list[str]], forbid_unlisted: bool = True) -> BanPlan:
        """Ad-law words, brand slots (`SLOT_PHRASES`), digits (`DIGITS`) and the values the
        product does not list (only the contradicting ones with `forbid_unlisted` off), banned
        at every decoding step. Such a value inside one of the product's own values (红色 in 粉红色, 对称 in 不对称,
        西装 in 西装领) stays writable only as part of that value: right after its opening, and
        then only going on to its end."""
        own = [v.lower() for values in attributes.values() for v in values]
        words, inside = list(self.ad_law_words), {phrase: list(hosts) for phrase, hosts in SLOT_PHRASES.items()}
        banned_values = self.vocabulary.unlisted_values(attributes) if forbid_unlisted else self.vocabulary.contradicting_values(attributes)
        for value in [*banned_values, *DIGITS]:
            hosts = [o for o in own if value.lower() in o]
            if hosts:
                inside[value] = hosts
            else:
                words.append(value)
        return self.blocker.plan(words, inside, self.lexicon(own, forbid_unlisted), self.allowed_doubles(attributes))

    def allowed_doubles(self, attributes: dict[str, list[str]]) -> frozenset[str] | None:
        """The characters a copy of this product may write twice in a row: the known ones and
        those its own values double (None: no such rule)."""
        if self.known_doubles is None:
            return None
        return self.known_doubles | tm.doubled_characters(v for values in attributes.values() for v in values)

    def lexicon(self, own_values: Iterable[str], forbid_unlisted: bool = True) -> LatinLexicon | None:
        """The Latin words a copy of this product may write: the known ones and its own (with
        `forbid_unlisted` off, also those of any factual value: v字领 for a product with no
        collar listed is then only measured, like the values themselves)."""
        if self.known_latin_words is None:
            return None
        words = set(latin_words(own_values))
        if not forbid_unlisted:
            factual = set(self.vocabulary.factual_keys)
            words |= latin_words(v for key, vs in self.vocabulary.values_by_key.items() if key in factual for v in vs)
        extra = frozenset(words - self.known_latin_words)
        if extra not in self._lexicons:
            self._lexicons[extra] = LatinLexicon(self.known_latin_words | extra, self.tokenizer.piece_texts)
        return self._lexicons[extra]

    def unfamiliar(self, attributes: dict[str, list[str]]) -> dict[str, list[str]]:
        """What in a request the copy may not reflect: keys and values no training product had
        (the model has not learned to write about them; empty where the generator was built
        without `known_attributes`), and values with advertising-law words, which no copy states."""
        pairs = [(k, v) for k, vs in attributes.items() for v in vs]
        known = bool(self.known_keys)
        return {
            "unseen_keys": [k for k in attributes if known and k not in self.known_keys],
            "unseen_values": [f"{k}#{v}" for k, v in pairs if known and v.lower() not in self.known_values],
            "ad_law_values": [f"{k}#{v}" for k, v in pairs if tm.banned_occurrences(v, self.ad_law_words)],
            "cut_off": self.tokenizer.pairs_past(attributes, self.max_source_len),
        }

    def violations(self, text: str, attributes: dict[str, list[str]], forbid_unlisted: bool = True) -> dict[str, list[str]]:
        """The hard-constraint breaches of a copy (empty lists: none)."""
        values = self.vocabulary.unlisted(text, attributes) if forbid_unlisted else self.vocabulary.contradictions(text, attributes)
        return {"values": values, "ad_law": tm.banned_occurrences(text, self.ad_law_words)}

    def servable(self, texts: Sequence[str], attributes: dict[str, list[str]]) -> tuple[list[str], dict[str, dict[str, list[str]]]]:
        """`texts` split into the copies that may be shown to a shopper and those that break a
        hard rule (`violations`), each with what it breaks. Unlisted values count where the
        bundle's decoding defaults forbid them, whatever a caller decoded with. Decoding bans the
        same words and values and `rerank` puts a breaking copy last, but keeps it: evaluation
        must see it, a shopper must not. An empty copy (trimming a copy of one unfinished word
        back to whole words leaves nothing) is neither: it is no candidate at all."""
        servable, withheld = [], {}
        for text in texts:
            if not text.strip():
                continue
            found = self.violations(text, attributes, self.defaults.forbid_unlisted)
            if found["values"] or found["ad_law"]:
                withheld[text] = found
            else:
                servable.append(text)
        return servable, withheld

    # -- generation --------------------------------------------------------------------------
    def request(self, attributes: dict[str, list[str]] | str, focus: Sequence[str] | None, tone: str, length: str) -> Request:
        if isinstance(attributes, str):
            try:
                attributes = parse_attributes(attributes)
            except ValueError as exc:
                raise GenerationInputError(str(exc)) from exc
        if not isinstance(attributes, dict) or not attributes:
            raise GenerationInputError("attributes must be a non-empty dict of key -> list of values")
        wrong = [k for k, vs in attributes.items() if not isinstance(k, str) or not isinstance(vs, (list, tuple)) or not all(isinstance(v, str) for v in vs)]
        if wrong:  # a bare string would be read as a list of its characters
            raise GenerationInputError(f"attributes must map a key to a list of string values; not so for {wrong[:5]} (e.g. {{'颜色': ['白色']}})")
        broken = [k for k, vs in attributes.items() if not all(_is_text(t) for t in (k, *vs))]
        if broken:  # a lone surrogate (a string cut mid-emoji): sentencepiece would raise deep inside
            raise GenerationInputError(f"attributes of {broken[:5]} are not valid Unicode text (a lone surrogate?)")
        check_controls(tone, length)
        chosen = normalize_focus(focus, attributes)
        exemplar = self.retrieval.generate(attributes, chosen, tone, length, n=1)[0] if self.retrieval is not None else None
        return Request(attributes, chosen, tone, length, exemplar)

    def generate(
        self,
        attributes: dict[str, list[str]] | str,
        focus: Sequence[str] | None = None,
        tone: str = ANY,
        length: str = ANY,
        decoding: str | dict | DecodingSettings | None = None,
        n: int = 1,
    ) -> list[str]:
        """Up to n distinct copies for one product, best first."""
        return self.generate_many([self.request(attributes, focus, tone, length)], decoding, n)[0]

    def generate_many(self, requests: Sequence[Request], decoding=None, n: int = 1) -> list[list[str]]:
        """Up to n copies per request. One call is one job: with settings.catalog_penalty, each
        chunk of requests avoids the phrases the job's earlier chunks already used."""
        return [copies for chunk in self.generate_chunks(requests, decoding, n) for copies in chunk]

    def generate_chunks(self, requests: Sequence[Request], decoding=None, n: int = 1, earlier: Iterable[str] = (), earlier_requests: Iterable[Request] = ()) -> Iterator[list[list[str]]]:
        """generate_many one chunk (batch_size requests) at a time, for jobs that write as they
        go. `earlier`: copies this job wrote before (a resumed batch), whose phrases the catalog
        penalty counts as if this call had written them; `earlier_requests`: the requests they
        were written for, so that a product's twins keep their places (see `twin_indices`)."""
        if n < 1:
            raise GenerationInputError(f"n must be at least 1, got {n}")
        settings = settings_from(self.defaults, decoding)
        if self.max_target_len is not None and settings.max_len > self.max_target_len:
            raise GenerationInputError(f"max_len {settings.max_len} is beyond this model's {self.max_target_len} target positions")
        if settings.method == "top_p":
            settings = settings.with_(num_candidates=max(n, settings.num_candidates))
        elif settings.method == "beam":
            settings = settings.with_(beam_size=max(n, settings.beam_size))
        memory = PhraseMemory() if settings.catalog_penalty else None
        if memory is not None:
            for text in earlier:
                memory.add(self.tokenizer.encode_text(text))
        twins = twin_indices(requests, earlier_requests)
        for start in range(0, len(requests), self.batch_size):
            chunk = requests[start : start + self.batch_size]
            src = self.encode_sources(chunk)
            plans = [self.ban_plan(r.attributes, settings.forbid_unlisted) for r in chunk]
            candidates = search(self.backend, src, plans, self.tokenizer.piece_texts, settings, [self.expected_length(r) for r in chunk], memory, twins[start : start + self.batch_size])
            results = []
            for request, cands in zip(chunk, candidates):
                ranked = self.rerank(request, cands, settings, n)
                results.append(ranked)
                if memory is not None and ranked:
                    memory.add(self.tokenizer.encode_text(ranked[0]))
            yield results

    def expected_length(self, request: Request) -> int:
        """Characters a copy for this request should have: the median training copy's of its
        length control. Not the exemplar's: one other product's copy says little about how long
        this one's should be (its error is larger than a constant's), and it overrode the length
        control (copies asked to be short came out in the short bucket half of the time)."""
        return self.typical_lengths.get(request.length, TYPICAL_COPY_CHARS)

    def encode_sources(self, requests: Sequence[Request]) -> np.ndarray:
        encoded = [self.tokenizer.encode_source(r.attributes, r.focus, r.tone, r.length, self.max_source_len, r.exemplar, self.max_exemplar_len) for r in requests]
        src = np.full((len(encoded), max(map(len, encoded))), PAD, dtype=np.int64)
        for i, ids in enumerate(encoded):
            src[i, : len(ids)] = ids
        return src

    @staticmethod
    def rerank_bonus(text: str, request: Request) -> float:
        """With a focus: how well the copy leads with it (mentioned at all + in the opening 40%).
        Without: the share of the product's values it mentions."""
        if request.focus:
            return tm.coverage(text, request.focus) + tm.lead_coverage(text, request.focus)
        values = focusable_values(request.attributes)
        return tm.coverage(text, values) if values else 0.0

    def rerank(self, request: Request, candidates, settings: DecodingSettings, n: int) -> list[str]:
        """Copies without violations first; then model score + rerank_coverage x bonus."""

        def key(c):
            bad = self.violations(c.text, request.attributes, settings.forbid_unlisted)
            bonus = self.rerank_bonus(c.text, request) if settings.rerank_coverage else 0.0
            return (bool(bad["values"] or bad["ad_law"]) or not c.text, -(c.score + settings.rerank_coverage * bonus))

        ranked, seen = [], set()
        for c in sorted(candidates, key=key):
            if c.text not in seen:
                seen.add(c.text)
                ranked.append(c.text)
        return ranked[:n]


# -- model directory ------------------------------------------------------------------------
def save_model_dir(
    directory: Path,
    net: CopyTransformer,
    tokenizer: CopyTokenizer,
    vocabulary: ValueVocabulary,
    ad_law_words_path: Path,
    retrieval: RetrievalGenerator,
    defaults: DecodingSettings,
    extra: dict[str, Any] | None = None,
    latin_words_path: Path = DEFAULT_LATIN_WORDS,
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save(directory)
    torch.save(net.state_dict(), directory / WEIGHTS_FILE)
    (directory / VALUES_FILE).write_text(json.dumps(vocabulary.to_dict(), ensure_ascii=False), encoding="utf-8")
    shutil.copyfile(ad_law_words_path, directory / AD_LAW_FILE)
    shutil.copyfile(latin_words_path, directory / LATIN_FILE)
    retrieval.save(directory)
    config = {"spec": net.spec.to_dict(), "decoding": asdict(defaults), "length_edges": retrieval.length_edges, **(extra or {})}
    (directory / CONFIG_FILE).write_text(json.dumps(config, ensure_ascii=False, indent=2), encoding="utf-8")
    return directory


def copy_lexicon(training_copies: Iterable[str], vocabulary: ValueVocabulary, generic_words: Iterable[str]) -> set[str]:
    """Latin words any copy may use: the generic ones (`generic_words`) that the training copies
    use, and those of the values of keys that state no fact (风格#ol). The corpus's copies also
    name brands (veromoda, pawinpaw) and spell words in pinyin (zui 最): a copy that copies one
    of those states a false product fact or slips an ad-law word past the filter. The words of
    factual values (v of v领, polo) are the product's own to write (`Generator.lexicon`)."""
    factual = set(vocabulary.factual_keys)
    moods = [v for key, vs in vocabulary.values_by_key.items() if key not in factual for v in vs]
    return (latin_words(training_copies) & {w.lower() for w in generic_words}) | latin_words(moods)


def copy_doubles(training_copies: Iterable[str], vocabulary: ValueVocabulary) -> set[str]:
    """Characters a copy may write twice in a row: doubled in at least two training copies
    (满满, 微微; once may be a typo) or in any known value (泡泡袖)."""
    values = [v for vs in vocabulary.values_by_key.values() for v in vs]
    return tm.doubled_characters(training_copies, min_count=2) | tm.doubled_characters(values)


def resolve_model_dir(model_dir_or_uri: str | Path) -> Path:
    """A local model directory, or an MLflow artifact URI (runs:/..., models:/..., file:...)."""
    path = Path(str(model_dir_or_uri))
    if path.is_dir():
        if not (path / CONFIG_FILE).exists():
            raise FileNotFoundError(f"{path} is not a generator model directory (no {CONFIG_FILE})")
        return path
    uri = str(model_dir_or_uri)
    if "://" in uri or uri.startswith(("runs:/", "models:/")):
        import mlflow

        if uri.startswith("models:/"):
            # A logged or registered pytorch-flavour model (e.g. the champion): serving needs
            # the whole bundle (tokenizer, constraints, ONNX) logged by the same run.
            uri = f"runs:/{mlflow.models.get_model_info(uri).run_id}/{BUNDLE_ARTIFACT}"
        from components.tracking import download_artifacts_cached

        return resolve_model_dir(download_artifacts_cached(uri))
    raise FileNotFoundError(f"generator model not found: {model_dir_or_uri}")


def load_torch_net(directory: Path) -> CopyTransformer:
    config = json.loads((directory / CONFIG_FILE).read_text(encoding="utf-8"))
    net = CopyTransformer(ModelSpec(**config["spec"]))
    try:
        net.load_state_dict(torch.load(directory / WEIGHTS_FILE, map_location="cpu", weights_only=True))
    except FileNotFoundError:
        raise
    except Exception as exc:  # truncated or foreign weights: torch raises OSError, RuntimeError, UnpicklingError
        raise BrokenModel(f"{directory / WEIGHTS_FILE} cannot be loaded ({str(exc).strip().splitlines()[0][:300]}); the bundle is damaged") from exc
    return net.eval()


def load_generator(model_dir_or_uri: str | Path, backend: str = "torch", batch_size: int = 32, threads: int | None = None,
                   extra_ad_law_words: Sequence[str] = ()) -> Generator:
    """The trained generator; backend "torch" or "onnx" (ONNX Runtime on the exported graphs).
    `threads`: intra-op threads (decoding runs many small steps: 1 is often fastest on CPU).
    `extra_ad_law_words`: banned and judged beside the bundle's own list. The law does not
    depend on when a bundle was built: a server passes the maintained list, so a champion built
    before the list grew avoids the new words too."""
    directory = resolve_model_dir(model_dir_or_uri)
    if threads:
        torch.set_num_threads(threads)
    config = json.loads((directory / CONFIG_FILE).read_text(encoding="utf-8"))
    if backend == "torch":
        engine = TorchBackend(load_torch_net(directory))
    elif backend == "onnx":
        from components.serving.generator_onnx import OnnxBackend

        engine = OnnxBackend(directory / ONNX_DIR, threads=threads or 0)
    else:
        raise ValueError(f"unknown backend {backend!r}; expected torch or onnx")
    exemplars = config.get("max_exemplar_len", 0) > 0
    retrieval = RetrievalGenerator.load(directory)
    vocabulary = ValueVocabulary.from_dict(json.loads((directory / VALUES_FILE).read_text(encoding="utf-8")))
    if vocabulary.aliases is None:  # saved before aliases: derived from its own training copies
        vocabulary.aliases = value_aliases(retrieval.attributes, retrieval.texts, vocabulary, ALIAS_MAX_HUMAN_RATE, ALIAS_MIN_USES)
    latin_path = directory / LATIN_FILE
    return Generator(
        CopyTokenizer.load(directory),
        engine,
        vocabulary,
        list(dict.fromkeys([*load_ad_law_words(directory / AD_LAW_FILE), *extra_ad_law_words])),
        DecodingSettings(**config["decoding"]),
        config["spec"]["max_source_len"],
        batch_size,
        retrieval if exemplars else None,
        config.get("max_exemplar_len", 0),
        copy_lexicon(retrieval.texts, vocabulary, load_latin_words(latin_path if latin_path.exists() else DEFAULT_LATIN_WORDS)),
        copy_doubles(retrieval.texts, vocabulary),
        retrieval.attributes,
        typical_lengths([len(t) for t in retrieval.texts], retrieval.length_edges),
        config["spec"]["max_target_len"],
    )


def load_baseline(model_dir_or_uri: str | Path) -> RetrievalGenerator:
    return RetrievalGenerator.load(resolve_model_dir(model_dir_or_uri))


# -- batch generation and per-example evaluation ----------------------------------------------
def read_jsonl_contents(path: Path | str, shown: int = 10) -> list[dict[str, Any]]:
    """Rows with a valid "content". Bad rows raise one error naming each (the first `shown` of
    them, and how many in all), so a catalog export is fixed in one pass, not one line per run."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"input not found: {path}")
    if not path.is_file():
        raise GenerationInputError(f"input {path} is not a file")
    rows: list[dict[str, Any]] = []
    problems: list[str] = []
    # Bytes, decoded line by line: a bad line is named, and a leading BOM (spreadsheet exports) is fine.
    for line_no, raw in enumerate(path.read_bytes().splitlines(), start=1):
        try:
            row = _content_row(raw, first=line_no == 1)
        except GenerationInputError as exc:
            problems.append(f"{path}:{line_no}: {exc}")
            continue
        if row is not None:
            rows.append(row)
    if problems:
        more = f"\n... and {len(problems) - shown} more" if len(problems) > shown else ""
        raise GenerationInputError(f"{len(problems)} bad row(s), nothing written:\n" + "\n".join(problems[:shown]) + more)
    if not rows:
        raise GenerationInputError(f"{path}: no rows")
    return rows


def _content_row(raw: bytes, first: bool) -> dict[str, Any] | None:
    """One JSONL line as a row with parsed attributes; None for a blank line."""
    try:
        line = raw.decode("utf-8-sig" if first else "utf-8")
    except UnicodeDecodeError as exc:
        raise GenerationInputError(f"not UTF-8 ({exc.reason} at byte {exc.start})") from exc
    if not line.strip():
        return None
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise GenerationInputError(f"not valid JSON ({exc.msg})") from exc
    if not isinstance(row, dict) or not isinstance(row.get("content"), str):
        raise GenerationInputError("expected an object with a string 'content'")
    try:
        row["content"].encode("utf-8")
    except UnicodeEncodeError as exc:  # a JSON \ud800 escape: valid JSON, not text the tokenizer takes
        raise GenerationInputError(f"'content' is not valid Unicode (a lone surrogate at character {exc.start})") from exc
    try:
        row["attributes"] = parse_attributes(row["content"])
    except ValueError as exc:
        raise GenerationInputError(f"bad 'content': {exc}") from exc
    return row


@dataclass
class BatchReport:
    """What a batch job wrote, and how many of its rows asked for something the copy may not
    reflect (per key, value or pair: the number of rows)."""

    written: int
    unseen_keys: Counter[str] = field(default_factory=Counter)
    unseen_values: Counter[str] = field(default_factory=Counter)
    ad_law_values: Counter[str] = field(default_factory=Counter)
    cut_off: Counter[str] = field(default_factory=Counter)
    focus_unused: list[str] = field(default_factory=list)  # asked for, but no row has them
    withheld: int = 0  # rows written with an empty copy: every candidate broke a hard rule (this run's rows)

    def count(self, found: dict[str, list[str]]) -> None:
        """Add one row's `Generator.unfamiliar` findings."""
        for name in ("unseen_keys", "unseen_values", "ad_law_values", "cut_off"):
            getattr(self, name).update(set(found.get(name, ())))

    def warnings(self, shown: int = 5) -> list[str]:
        def top(counter: Counter[str]) -> str:
            more = len(counter) - shown
            return ", ".join(f"{_printable(name)} ({rows})" for name, rows in counter.most_common(shown)) + (f", and {more} more" if more > 0 else "")

        notes = []
        if self.withheld:
            notes.append(f"{self.withheld} row(s) have an empty copy: every candidate broke a hard rule (advertising-law words, or values the product does not list)")
        if self.unseen_keys:
            notes.append(f"keys no training product had, which copies may ignore (rows): {top(self.unseen_keys)}")
        if self.unseen_values:
            notes.append(f"values no training product had, which copies may garble or leave out (rows): {top(self.unseen_values)}")
        if self.ad_law_values:
            notes.append(f"values with advertising-law words, which no copy states (rows): {top(self.ad_law_values)}")
        if self.cut_off:
            notes.append(f"values past the model's input length, which it never saw (rows): {top(self.cut_off)}")
        if self.focus_unused:
            notes.append(f"focus values no row has, so no copy foregrounds them: {', '.join(map(_printable, self.focus_unused))}")
        return notes


def _printable(text: str) -> str:
    """Input text for a terminal line: a tab, NUL or escape sequence from a row is shown escaped, not sent."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def partial_path(output: Path) -> Path:
    """Where a batch job writes while it runs; renamed to `output` when every row is done."""
    return output.with_name(output.name + ".partial")


def lock_path(output: Path) -> Path:
    """Held (flock) by the job writing `output`; kept afterwards: removing it would let a job that
    opened it just before take a lock on a file the next job no longer sees."""
    return output.with_name(output.name + ".lock")


@contextmanager
def _output_lock(output: Path) -> Iterator[None]:
    """One job per output: a second one would interleave its rows with the first's in the
    partial file, and both would report success. The lock dies with its process."""
    handle = lock_path(output).open("a")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise GenerationInputError(f"another generate-batch job is writing {output} (it holds {lock_path(output)}); wait for it or choose another output") from exc
        yield
    finally:
        handle.close()


def job_path(output: Path) -> Path:
    """Beside the partial file: which model and settings the job writes with, so that a resume
    never mixes two models (a champion promoted in between) or two settings in one output."""
    return output.with_name(output.name + ".partial.job.json")


def _job_record(model: str | Path, directory: Path, settings: DecodingSettings, focus: Sequence[str] | None, tone: str, length: str) -> dict[str, Any]:
    digest = hashlib.sha256()
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        digest.update((directory / name).read_bytes())
    # The runtime (torch or ONNX Runtime) is left out: the same model writes the same copies on
    # either (greedy exactly), so a job may resume on the other one.
    return {"model": str(model), "model_sha256": digest.hexdigest(), "focus": list(focus or []), "tone": tone, "length": length, "decoding": asdict(settings)}


def _check_same_job(partial: Path, recorded_path: Path, job: dict[str, Any]) -> None:
    start_over = f"rerun with the model and options it was started with, or delete {partial} to start over"
    try:
        recorded = json.loads(recorded_path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError) as exc:
        raise GenerationInputError(f"{partial} has no readable record of the model and settings that wrote it ({recorded_path.name}); cannot resume: delete it to start over") from exc
    if recorded.get("model_sha256") != job["model_sha256"]:
        raise GenerationInputError(f"{partial} was written by another model ({recorded.get('model')}); resuming would mix two models in one output: {start_over}")
    for control in ("focus", "tone", "length"):
        # a record from before tone and length were options was written with both at "any"
        if recorded.get(control, ANY) != job[control]:
            raise GenerationInputError(f"{partial} was written with {control} {recorded.get(control, ANY)}, not {job[control]}: {start_over}")
    before, now = recorded.get("decoding", {}), job["decoding"]
    changed = sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k))
    if changed:
        shown = ", ".join(f"{k} {before.get(k)!r} -> {now.get(k)!r}" for k in changed)
        raise GenerationInputError(f"{partial} was written with other decoding settings ({shown}): {start_over}")


def _resumable_rows(partial: Path, rows: Sequence[dict[str, Any]]) -> tuple[list[str], int]:
    """The copies a stopped job already wrote, if they are for the first rows of this input,
    and the byte length of their complete lines (a line cut off mid-write comes after it)."""
    if not partial.exists():
        raise GenerationInputError(f"nothing to resume: {partial} does not exist")
    copies, complete = [], 0
    for line_no, raw in enumerate(partial.read_bytes().splitlines(keepends=True), start=1):
        try:
            written = json.loads(raw.decode("utf-8"))
            copy = written["copy"]
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
            break
        if not raw.endswith(b"\n"):
            break  # cut off right before its newline: write it again
        if line_no > len(rows) or written.get("content") != rows[line_no - 1]["content"]:
            raise GenerationInputError(f"{partial}:{line_no} is not for row {line_no} of this input; cannot resume (delete it to start over)")
        copies.append(copy)
        complete += len(raw)
    return copies, complete


def check_resume_overwrite(output: Path | str, resume: bool, overwrite: bool) -> None:
    """`resume` with `overwrite` carries on a stopped job and replaces an existing output at the
    end (a job started with `overwrite` over a finished output needs both to carry on). With no
    stopped job, the two contradict each other: refused, naming both, not "nothing to resume"."""
    partial = partial_path(Path(output))
    if resume and overwrite and not partial.exists():
        raise GenerationInputError(
            f"--resume and --overwrite conflict: there is no stopped job to resume ({partial} does not exist); --overwrite alone starts over"
        )


def generate_batch(
    input_jsonl: Path | str,
    output_jsonl: Path | str,
    model_dir_or_uri: str | Path,
    focus: Sequence[str] | None = None,
    decoding: str | dict | None = None,
    backend: str = "torch",
    resume: bool = False,
    tone: str = ANY,
    length: str = ANY,
    progress: Callable[[int, int], None] | None = None,
    batch_size: int = 32,
    overwrite: bool = False,
    extra_ad_law_words: Sequence[str] = (),
) -> BatchReport:
    """One {"content", "copy"} row per input {"content"} row. `focus` applies to every row,
    restricted to the values each product has, and so do the `tone` and `length` controls. The
    report counts what was written and the rows whose attributes the model does not know (see
    `Generator.unfamiliar`).

    Rows are written as each chunk is done, to `<output>.partial`, which becomes `output` only
    once every row has its copy: a job that stops part-way leaves no output that looks
    complete, and `resume` carries on from the partial file if it was written by the same model
    with the same focus, tone, length and decoding settings (recorded beside it, see `job_path`).
    `progress(done, total)` is called after each chunk. Work is never thrown away unasked: an
    existing output, or a stopped job's partial file without `resume`, is refused unless
    `overwrite`. A row whose copy breaks a hard rule (`Generator.servable`: every candidate did,
    as `rerank` puts such copies last) gets an empty copy, counted in the report (`withheld`).
    `extra_ad_law_words`: see `load_generator`."""
    check_controls(tone, length)
    rows = read_jsonl_contents(input_jsonl)
    output = Path(output_jsonl)
    partial = partial_path(output)
    if Path(input_jsonl).resolve() in (partial.resolve(), job_path(output).resolve()):
        raise GenerationInputError(f"input {input_jsonl} is where the unfinished rows of output {output} are kept; move it or give another output")
    if output.is_dir():  # found before the model runs, not after
        raise GenerationInputError(f"output {output} is a directory; give a file path")
    if output.exists() and output.resolve() == Path(input_jsonl).resolve():
        # The output keeps only content and copy: writing over the input would lose its other fields.
        raise GenerationInputError(f"output {output} is the input file; give another path")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GenerationInputError(f"cannot create the output's folder {output.parent}: {exc}") from exc
    with _output_lock(output):
        check_resume_overwrite(output, resume, overwrite)
        if output.exists() and not overwrite:
            raise GenerationInputError(f"output {output} exists: --overwrite replaces it, or give another path")
        if partial.exists() and not resume and not overwrite:
            with partial.open("rb") as handle:
                done = sum(1 for line in handle if line.endswith(b"\n"))
            raise GenerationInputError(
                f"a stopped job left {done} copies in {partial}: --resume carries on from them (same model and options), "
                "--overwrite starts over without them"
            )
        return _write_batch(rows, output, model_dir_or_uri, focus, decoding, backend, resume, tone, length, progress, batch_size, extra_ad_law_words)


def _write_batch(
    rows: list[dict[str, Any]],
    output: Path,
    model_dir_or_uri: str | Path,
    focus: Sequence[str] | None,
    decoding: str | dict | None,
    backend: str,
    resume: bool,
    tone: str,
    length: str,
    progress: Callable[[int, int], None] | None,
    batch_size: int,
    extra_ad_law_words: Sequence[str],
) -> BatchReport:
    """generate_batch's work, under the output's lock."""
    partial, recorded = partial_path(output), job_path(output)
    earlier, complete = _resumable_rows(partial, rows) if resume else ([], 0)
    directory = resolve_model_dir(model_dir_or_uri)
    generator = load_generator(directory, backend=backend, batch_size=batch_size, extra_ad_law_words=extra_ad_law_words)
    job = _job_record(model_dir_or_uri, directory, settings_from(generator.defaults, decoding), focus, tone, length)
    if resume:  # checked before any retrieval or decoding work
        _check_same_job(partial, recorded, job)
        os.truncate(partial, complete)  # drop a line cut off mid-write; the complete ones stay
    else:
        recorded.write_text(json.dumps(job, ensure_ascii=False, indent=1), encoding="utf-8")
    requests = [generator.request(r["attributes"], focus, tone, length) for r in rows[len(earlier) :]]
    with partial.open("a" if resume else "w", encoding="utf-8") as handle:
        done = len(earlier)
        if progress is not None:
            progress(done, len(rows))
        # Only the identity of the rows already written: their twins further on keep their streams.
        before = [Request(r["attributes"], normalize_focus(focus, r["attributes"]), tone, length) for r in rows[: len(earlier)]]
        withheld = 0
        for chunk in generator.generate_chunks(requests, decoding, n=1, earlier=earlier, earlier_requests=before):
            for row, texts in zip(rows[done:], chunk):
                servable, broke = generator.servable(texts[:1], row["attributes"])
                withheld += bool(broke)  # an empty copy is no candidate, but it broke no rule
                handle.write(json.dumps({"content": row["content"], "copy": servable[0] if servable else ""}, ensure_ascii=False) + "\n")
            handle.flush()
            done += len(chunk)
            if progress is not None:
                progress(done, len(rows))
    partial.replace(output)
    recorded.unlink(missing_ok=True)
    report = BatchReport(len(rows), withheld=withheld)
    for row in rows:
        report.count(generator.unfamiliar(row["attributes"]))
    present = {v for row in rows for vs in row["attributes"].values() for v in vs}
    report.focus_unused = [f for f in dict.fromkeys(focus or ()) if f and f not in present]
    return report


def _row_request(row: dict[str, Any], index: int) -> tuple[dict[str, list[str]], str]:
    attributes = row.get("attributes")
    if attributes is None:
        if not isinstance(row.get("content"), str):
            raise GenerationInputError(f"row {index}: needs 'attributes' or a string 'content'")
        attributes = parse_attributes(row["content"])
    reference = row.get("reference", row.get("summary"))
    if not isinstance(reference, str):
        raise GenerationInputError(f"row {index}: needs a string 'reference' (or 'summary')")
    return attributes, reference


def score_copies(generator_like, rows: Sequence[dict[str, Any]], copies: Sequence[str], focuses: Sequence[list[str]]) -> pd.DataFrame:
    """Per-example metrics of given copies (model or baseline) against the references."""
    vocabulary: ValueVocabulary = generator_like.vocabulary
    ad_law = generator_like.ad_law_words
    records = []
    for i, (row, copy, focus) in enumerate(zip(rows, copies, focuses)):
        attributes, reference = _row_request(row, i)
        allowed_doubles = generator_like.allowed_doubles(attributes)
        lexicon = generator_like.lexicon(v.lower() for values in attributes.values() for v in values)
        rouge = tm.rouge_scores(copy, reference)
        contradictions = vocabulary.contradictions(copy, attributes)
        unlisted = vocabulary.unlisted(copy, attributes)
        records.append(
            {
                "content": row.get("content") or "*".join(f"{k}#{v}" for k, vs in attributes.items() for v in vs),
                "focus": "、".join(focus),
                "reference": reference,
                "copy": copy,
                "bleu4": tm.bleu4(copy, reference),
                **rouge,
                "repetition4": tm.repetition_n(copy, 4),
                "doubled": "、".join(tm.doubled_runs(copy)),
                "stuttered": None if allowed_doubles is None else "、".join(tm.stuttered(copy, allowed_doubles)),
                # Latin words outside the generic list and the product's own values (a brand,
                # pinyin), and numbers no own value has (10%, 2018)
                "foreign_words": None if lexicon is None else "、".join(sorted((latin_words([copy]) - lexicon.words) | _numbers(copy, attributes))),
                "attr_coverage": tm.coverage(copy, focusable_values(attributes)),
                "focus_coverage": tm.coverage(copy, focus),
                "hallucinated": bool(contradictions),
                "contradictions": "、".join(contradictions),
                "unlisted": "、".join(unlisted),
                "ad_law_violations": len(tm.banned_occurrences(copy, ad_law)),
                "length": len(copy),
            }
        )
    return pd.DataFrame.from_records(records)


def _numbers(text: str, attributes: dict[str, list[str]]) -> set[str]:
    """The numbers of `text` that none of the product's own values has (a bare 1 of 10cm counts)."""
    own = {n for values in attributes.values() for v in values for n in _NUMBER.findall(v)}
    return set(_NUMBER.findall(text)) - own


def evaluate_examples(
    generator: Generator,
    rows: Iterable[dict[str, Any]],
    decoding: str | dict | DecodingSettings | None = None,
    tone: str = ANY,
    length: str = ANY,
) -> pd.DataFrame:
    """Generate for each row ({"content" or "attributes", "summary" or "reference", optional
    "focus"}) and score it: columns content, focus, reference, copy, bleu4, rouge1, rouge2,
    rougeL, repetition4, doubled, stuttered, foreign_words, attr_coverage, focus_coverage,
    hallucinated, contradictions, unlisted, ad_law_violations, length. Paired per-example
    scores for the champion/candidate gate."""
    rows = list(rows)
    requests = []
    for i, row in enumerate(rows):
        attributes, _ = _row_request(row, i)
        requests.append(generator.request(attributes, row.get("focus"), tone, length))
    copies = [texts[0] if texts else "" for texts in generator.generate_many(requests, decoding, n=1)]
    return score_copies(generator, rows, copies, [r.focus for r in requests])
