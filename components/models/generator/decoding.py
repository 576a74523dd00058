"""Search over a step function: greedy, beam and top-p sampling, with n-gram repetition blocking
and per-example banned strings (constraints.BanPlan) applied at every step, and an optional
catalog-level penalty on phrases the copies already written in the same job keep reusing.

The search is written once against a small `Backend` protocol (encode, step, select rows), so the
torch model and the ONNX Runtime session run exactly the same decoding code; with identical
log-probabilities they produce identical copies.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, Protocol

import numpy as np
import torch

from components.models.generator.constraints import BanPlan, TokenBlocker
from components.models.generator.tokenizer import BOS, EOS, PAD

SENTENCE_ENDS = ("。", "！", "!", "？", "?", "~", "～", "…")
# No punctuation mark straight after one of these (the model's `。。`, `。，`; human copy has it
# in 0.3% of copies, as typos).
PAUSES = tuple("，。、；：,;:")
MARKS = "".join(PAUSES) + "！？!?"
NEVER_TWICE = "的"  # 的的: in no human copy of the corpus

Method = Literal["greedy", "beam", "top_p"]


@dataclass(frozen=True)
class DecodingSettings:
    method: Method = "beam"
    beam_size: int = 4
    top_p: float = 0.9
    temperature: float = 1.0
    length_penalty: float = 1.0
    no_repeat_ngram: int = 4
    num_candidates: int = 1  # samples drawn per copy with top_p, re-ranked down to n
    rerank_coverage: float = 0.0  # weight of focus/attribute coverage in re-ranking
    max_len: int = 160
    min_len: int = 0
    seed: int = 0
    # How a copy ends. The model's own EOS is never taken (it is one of the tokenizer's control
    # ids, which every ban plan holds): allowed, it stops far too early (the `full` model, beam 4,
    # 200 held-out rows: 56 characters against 109, BLEU-4 6.0 against 9.6). Instead, once a copy
    # is this share of its expected length in characters (the median human copy's of the
    # requested length bucket), it ends at the next sentence end; min_len tokens come first.
    # 0 = off: copies run to max_len and are trimmed back to their last full sentence.
    length_budget: float = 0.0
    # Copies of one job (a catalog batch) should not all read alike: every token bigram already
    # used by earlier copies of the job costs catalog_penalty x log(1 + uses). 0 = off.
    catalog_penalty: float = 0.0
    # No run of 2..no_doubling Chinese characters repeated at once or one character later
    # (休闲休闲, 显瘦又显瘦): without it, about 40% of beam copies; under 1% of human copies.
    # On by default, so bundles saved before the setting existed get it too. 0 = off.
    no_doubling: int = 4
    # Faithfulness beyond contradictions: no factual value the product does not list at all
    # (雪纺 for a dress with no 材质). Without it, 7% of beam copies and 10% of sampled ones
    # guess such a fact. On by default, so older bundles get it too.
    forbid_unlisted: bool = True

    def with_(self, **changes: Any) -> DecodingSettings:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


# Greedy and top-p decoding drop finished rows from the backend state once the share of rows
# still writing falls to this (1.0: at every finish; 0: never). Copying the state costs one step.
COMPACT_AT = 0.75


class Backend(Protocol):
    def start(self, src: np.ndarray) -> Any: ...  # [B, S] int64 -> state for B rows

    def step(self, tokens: np.ndarray, state: Any) -> tuple[torch.Tensor, Any]: ...  # -> log-probs [N, V]

    # Gather/repeat rows of the state. same_source: row i's new source is its old one (beams
    # of one copy), so only the self-attention cache moves, not the far larger source tensors.
    def select(self, state: Any, rows: np.ndarray, same_source: bool = False) -> Any: ...


class PhraseMemory:
    """Token-bigram counts of the copies already written in one generation job."""

    def __init__(self) -> None:
        self._next: dict[int, dict[int, int]] = {}

    def add(self, tokens: Sequence[int]) -> None:
        for first, second in zip([BOS, *tokens], tokens):
            followers = self._next.setdefault(int(first), {})
            followers[int(second)] = followers.get(int(second), 0) + 1

    def penalize(self, logprobs: torch.Tensor, last: np.ndarray, weight: float) -> torch.Tensor:
        """Log-probabilities of the next token, renormalized after subtracting weight x
        log(1 + uses) from every continuation of each row's last token seen before."""
        if not weight or not self._next:
            return logprobs
        penalty = torch.zeros_like(logprobs)
        for row, token in enumerate(last.tolist()):
            followers = self._next.get(token)
            if followers:
                index = torch.tensor(list(followers), dtype=torch.long)
                uses = torch.tensor(list(followers.values()), dtype=logprobs.dtype)
                penalty[row, index] = weight * torch.log1p(uses)
        return torch.log_softmax(logprobs - penalty, dim=-1)


@dataclass
class Candidate:
    tokens: list[int]
    text: str
    logprob: float
    score: float


@dataclass
class _Row:
    tokens: list[int]
    text: str


_END = np.array([EOS], dtype=np.int64)
_NONE = np.array([], dtype=np.int64)


def _settled(row: _Row, plan: BanPlan, piece_texts: Sequence[str]) -> _Row:
    """A row cut off by the length limit, less any trailing tokens that leave it part-way
    through an allowed context (西装 of 西装领: cut there, the copy would state 西装) or through
    a Latin word (…ici of icicle), and back to its last full sentence where that keeps at
    least half of it (no copy ends `…口袋`)."""
    tokens, text = list(row.tokens), row.text
    while tokens and (plan.unfinished(text) or (plan.latin is not None and plan.latin.unfinished(text))):
        text = text[: len(text) - len(piece_texts[tokens.pop()])]
    whole, whole_text = list(tokens), text
    while whole and not whole_text.rstrip().endswith(SENTENCE_ENDS):
        whole_text = whole_text[: len(whole_text) - len(piece_texts[whole.pop()])]
    if whole and len(whole_text) * 2 >= len(text):
        return _Row(whole, whole_text)
    return _Row(tokens, text)


def _repeat_bans(tokens: Sequence[int], n: int) -> list[int]:
    """Tokens that would repeat an n-gram already in `tokens`."""
    if n <= 0 or len(tokens) < n:
        return []
    if n == 1:
        return list(set(tokens))
    tokens = list(tokens)
    suffix = tokens[len(tokens) - n + 1 :]
    first = suffix[0]
    # Compare whole (n-1)-grams only where the first token matches: this runs every step.
    return [tokens[i + n - 1] for i in range(len(tokens) - n + 1) if tokens[i] == first and tokens[i : i + n - 1] == suffix]


def _trailing_hanzi(text: str, most: int) -> int:
    """How many of the last `most` characters of `text` are Chinese, counting from the end."""
    count, length = 0, len(text)
    while count < most and count < length and "\u4e00" <= text[length - 1 - count] <= "\u9fff":
        count += 1
    return count


def _doubling_bans(text: str, blocker: TokenBlocker, longest: int) -> list[np.ndarray]:
    """Tokens that would repeat a run of 2..longest Chinese characters right away (休闲休闲) or
    after one character (显瘦又显瘦, 性感的性感). The repeat may already be begun (text ends
    休闲休): then tokens going on with 闲 are banned. A token shorter than what is left is
    allowed; the next step bans the rest. Runs every step for every row: integer and
    one-character checks first, prefix lookups only where a repeat can still happen."""
    text = text.lower()
    length = len(text)
    hanzi = _trailing_hanzi(text, 2 * longest + 1)
    out = []
    for unit in range(2, min(longest, hanzi) + 1):
        run = text[length - unit :]
        out.append(blocker.starting_with(run))  # the run again, right away
        out.append(blocker.starting_after_one(run))  # one token: a character, then the run
        if hanzi > unit:  # the text ends with a run and one more character
            out.append(blocker.starting_with(text[length - unit - 1 : length - 1]))
        for gap in (0, 1):
            period = unit + gap
            for begun in range(1, unit):  # the repeat's first `begun` characters are written
                if hanzi < period + begun or text[length - begun] != text[length - begun - period]:
                    break
                out.append(blocker.starting_with(text[length - gap - unit : length - begun - gap]))
    return [ids for ids in out if len(ids)]


def _stutter_bans(text: str, blocker: TokenBlocker, allowed: frozenset[str]) -> np.ndarray:
    """Tokens that would write the last Chinese character again (更更加, 性感感, 了了) where no
    training copy or known value doubles it (满满, 泡泡 stay writable). This holds across word
    boundaries too: the human copies never write 袖口口袋 or 中国风风格 either."""
    if not text or not "\u4e00" <= text[-1] <= "\u9fff" or text[-1] in allowed:
        return _NONE
    return blocker.starting_with(text[-1])


def _masked(logprobs: torch.Tensor, rows: Sequence[_Row], plans: Sequence[BanPlan], settings: DecodingSettings, step: int, budgets: Sequence[int] | None = None) -> torch.Tensor:
    """-inf for every banned next token of every row; only EOS for a row past its length
    budget that has just finished a sentence."""
    # (EOS is banned here with the other control ids: only the length rule below lifts it.)
    masks = np.stack([plan.banned(row.text) for row, plan in zip(rows, plans)])
    glitches_of: list[list[np.ndarray]] = []
    for i, row in enumerate(rows):
        banned = _repeat_bans(row.tokens, settings.no_repeat_ngram)
        if banned:
            masks[i, banned] = True
        blocker = plans[i].blocker
        glitches = _doubling_bans(row.text, blocker, settings.no_doubling) if settings.no_doubling else []
        if plans[i].doubles is not None:
            glitches.append(_stutter_bans(row.text, blocker, plans[i].doubles))
        if plans[i].latin is not None:
            glitches.append(plans[i].latin.banned(row.text))
            if plans[i].latin.unfinished(row.text):
                glitches.append(_END)  # half a word: the copy may not end there either
        if row.text.rstrip().endswith(PAUSES):
            glitches.append(blocker.starting_with_any(MARKS))
        elif row.text.endswith(NEVER_TWICE):
            glitches.append(blocker.starting_with(NEVER_TWICE))
        glitches_of.append(glitches)
        if glitches:
            masks[i, np.concatenate(glitches)] = True
        if budgets is not None and len(row.text) >= budgets[i] and row.text.rstrip().endswith(SENTENCE_ENDS):
            masks[i, :] = True
            masks[i, EOS] = False
    if step < settings.min_len:
        masks[:, EOS] = True
    for i in np.flatnonzero(masks.all(axis=1)):
        # The soft rules (repetition, doubling, stutter, Latin words, punctuation, length,
        # min_len) left nothing. First only the n-gram repetition rule gives way: a word may
        # need a repeated pair (i-c-i-c of icicle), and dropping every rule there let letters
        # run on. Failing that, keep only the hard constraints, so a row repeats itself rather
        # than crash or state a falsehood.
        masks[i] = plans[i].banned(rows[i].text)
        if glitches_of[i]:
            relaxed = masks[i].copy()
            relaxed[np.concatenate(glitches_of[i])] = True
            if not relaxed.all():
                masks[i] = relaxed
        if masks[i].all():
            masks[i, EOS] = False
    return logprobs.masked_fill(torch.from_numpy(masks), float("-inf"))


def row_budgets(expected: Sequence[int] | None, row_of: np.ndarray, settings: DecodingSettings) -> list[int] | None:
    if not settings.length_budget or expected is None:
        return None
    return [max(1, int(expected[b] * settings.length_budget)) for b in row_of]


def _normalized(logprob: float, length: int, penalty: float) -> float:
    return logprob / (max(1, length) ** penalty)


def greedy(backend: Backend, src: np.ndarray, plans: Sequence[BanPlan], piece_texts: Sequence[str], settings: DecodingSettings, expected: Sequence[int] | None = None, memory: PhraseMemory | None = None) -> list[list[Candidate]]:
    return _sample_or_greedy(backend, src, plans, piece_texts, settings, sample=False, expected=expected, memory=memory)


def top_p(backend: Backend, src: np.ndarray, plans: Sequence[BanPlan], piece_texts: Sequence[str], settings: DecodingSettings, expected: Sequence[int] | None = None, memory: PhraseMemory | None = None, streams: Sequence[int] | None = None) -> list[list[Candidate]]:
    return _sample_or_greedy(backend, src, plans, piece_texts, settings, sample=True, expected=expected, memory=memory, streams=streams)


def row_draws(src: np.ndarray, row_of: np.ndarray, per: int, seed: int, steps: int, streams: Sequence[int] | None = None) -> torch.Tensor:
    """Uniform numbers [rows, steps] for sampling, one stream per (example, candidate), seeded by
    the seed, the example's source tokens (padding left out) and `streams[example]` (which of
    several identical examples of a job this is: 0 for the first). A copy then depends on its
    own product, its place among its twins and the seed: not on which other rows share its batch
    or chunk, nor their order (with one stream for the batch, adding a row changed every copy
    after it), while two identical products of a catalog still get two copies."""
    out = np.empty((len(row_of), steps), dtype=np.float64)
    for i, b in enumerate(row_of):
        tokens = np.ascontiguousarray(src[b][src[b] != PAD], dtype=np.int64)
        twin = 0 if streams is None else int(streams[b])
        out[i] = np.random.default_rng([seed, zlib.crc32(tokens.tobytes()), twin, i % per]).random(steps)
    return torch.from_numpy(out)


def _nucleus(logprobs: torch.Tensor, top_p_mass: float, temperature: float, draws: torch.Tensor, widths: Sequence[int] = (64, 512)) -> torch.Tensor:
    """One token per row from the smallest set of likeliest tokens holding top_p_mass, at the
    row's uniform draw (`draws` [rows]) along the nucleus' cumulative mass.
    Each row is ranked over its top `widths[0]` tokens only, a row whose nucleus is wider over
    the next width, and so on up to the whole vocabulary: sorting and sampling every row over
    the whole vocabulary took most of the decoding time. One draw per row, so the token drawn
    does not depend on the widths."""
    probs = torch.softmax(logprobs / temperature, dim=-1)
    draws = draws.to(probs.dtype).reshape(-1, 1)
    chosen = torch.empty(probs.shape[0], dtype=torch.long)
    todo = torch.ones(probs.shape[0], dtype=torch.bool)
    for width in [w for w in widths if w < probs.shape[-1]] + [probs.shape[-1]]:
        ranked, order = probs[todo].topk(width, dim=-1)  # descending
        chosen[todo] = _draw(ranked, order, draws[todo], top_p_mass)
        still = ranked.sum(-1) < top_p_mass  # the nucleus goes on past this width
        if width == probs.shape[-1] or not still.any():
            break
        todo[todo.clone()] = still
    return chosen


def _draw(ranked: torch.Tensor, order: torch.Tensor, draws: torch.Tensor, top_p_mass: float) -> torch.Tensor:
    """The token at each row's draw along the cumulative mass of its nucleus (ranked descending)."""
    keep = ranked.cumsum(dim=-1) - ranked < top_p_mass  # always keeps the top token
    kept = ranked * keep
    cumulative = (kept / kept.sum(-1, keepdim=True)).cumsum(dim=-1)
    picked = torch.searchsorted(cumulative, draws, right=True).clamp_(max=keep.sum(-1, keepdim=True) - 1)
    return order.gather(-1, picked)[:, 0]


def _sample_or_greedy(backend, src, plans, piece_texts, settings, sample: bool, expected=None, memory: PhraseMemory | None = None, streams: Sequence[int] | None = None) -> list[list[Candidate]]:
    batch = src.shape[0]
    per = settings.num_candidates if sample else 1
    row_of = np.repeat(np.arange(batch), per)
    budgets = row_budgets(expected, row_of, settings)
    state = backend.select(backend.start(src), row_of)
    row_plans = [plans[b] for b in row_of]
    rows = [_Row([], "") for _ in row_of]
    logprob = np.zeros(len(rows))
    done = np.zeros(len(rows), dtype=bool)
    draws = row_draws(src, row_of, per, settings.seed, settings.max_len, streams) if sample else None
    last = np.full(len(rows), BOS, dtype=np.int64)
    stepped = np.arange(len(rows))  # the rows the backend state holds, in its order
    for step in range(settings.max_len):
        scores, state = backend.step(last[stepped], state)
        if memory is not None:
            scores = memory.penalize(scores, last[stepped], settings.catalog_penalty)
        scores = _masked(scores, [rows[i] for i in stepped], [row_plans[i] for i in stepped], settings, step, None if budgets is None else [budgets[i] for i in stepped])
        live = ~done[stepped]
        if sample:  # finished rows draw nothing: their next token is ignored anyway
            chosen = torch.full((len(stepped),), EOS, dtype=torch.long)
            chosen[torch.from_numpy(live)] = _nucleus(scores[torch.from_numpy(live)], settings.top_p, settings.temperature, draws[stepped[live], step])
        else:
            chosen = scores.argmax(-1)
        chosen_np = chosen.numpy()
        picked = scores.gather(-1, chosen[:, None])[:, 0].numpy()
        for j, i in enumerate(stepped):
            if done[i]:
                continue
            token = chosen_np[j]
            logprob[i] += float(picked[j])
            if token == EOS:
                done[i] = True
            else:
                rows[i].tokens.append(int(token))
                rows[i].text += piece_texts[token]
                last[i] = token
        if done.all():
            break
        live = ~done[stepped]
        if live.sum() <= COMPACT_AT * len(stepped):
            # Drop finished rows from the state once enough of it is finished: every step
            # costs in proportion to the rows it carries, and copies end at different lengths.
            state = backend.select(state, np.flatnonzero(live))
            stepped = stepped[live]
    out: list[list[Candidate]] = [[] for _ in range(batch)]
    for i, b in enumerate(row_of):
        if not done[i]:
            rows[i] = _settled(rows[i], row_plans[i], piece_texts)
        length = len(rows[i].tokens) + 1
        out[b].append(Candidate(rows[i].tokens, rows[i].text.strip(), logprob[i], _normalized(logprob[i], length, settings.length_penalty)))
    return out


def beam(backend: Backend, src: np.ndarray, plans: Sequence[BanPlan], piece_texts: Sequence[str], settings: DecodingSettings, expected: Sequence[int] | None = None, memory: PhraseMemory | None = None) -> list[list[Candidate]]:
    """Beam search with length-normalized final scores; returns up to beam_size finished copies."""
    batch, k = src.shape[0], settings.beam_size
    budgets = row_budgets(expected, np.repeat(np.arange(batch), k), settings)
    state = backend.select(backend.start(src), np.repeat(np.arange(batch), k))
    rows = [_Row([], "") for _ in range(batch * k)]
    row_plans = [plans[b] for b in np.repeat(np.arange(batch), k)]
    beam_scores = torch.full((batch, k), float("-inf"))
    beam_scores[:, 0] = 0.0  # all beams start identical: only the first may expand at step 0
    finished: list[list[Candidate]] = [[] for _ in range(batch)]
    active = np.ones(batch, dtype=bool)
    last = np.full(batch * k, BOS, dtype=np.int64)
    for step in range(settings.max_len):
        logprobs, state = backend.step(last, state)
        if memory is not None:
            logprobs = memory.penalize(logprobs, last, settings.catalog_penalty)
        logprobs = _masked(logprobs, rows, row_plans, settings, step, budgets)
        vocab = logprobs.shape[-1]
        totals = (beam_scores.view(-1, 1) + logprobs).view(batch, k * vocab)
        top_scores, top_ids = totals.topk(2 * k, dim=-1)
        parents = np.zeros(batch * k, dtype=np.int64)
        new_rows: list[_Row] = []
        new_scores = torch.full((batch, k), float("-inf"))
        new_last = np.full(batch * k, EOS, dtype=np.int64)
        for b in range(batch):
            kept = 0
            if active[b]:
                for score, flat in zip(top_scores[b].tolist(), top_ids[b].tolist()):
                    if score == float("-inf"):
                        break
                    parent, token = b * k + flat // vocab, flat % vocab
                    if token == EOS:
                        row = rows[parent]
                        finished[b].append(Candidate(list(row.tokens), row.text.strip(), score, _normalized(score, len(row.tokens) + 1, settings.length_penalty)))
                        continue
                    slot = b * k + kept
                    parents[slot] = parent
                    new_rows.append(_Row(rows[parent].tokens + [token], rows[parent].text + piece_texts[token]))
                    new_scores[b, kept] = score
                    new_last[slot] = token
                    kept += 1
                    if kept == k:
                        break
                if len(finished[b]) >= k or kept == 0:
                    active[b] = False
            for slot in range(b * k + kept, b * k + k):
                parents[slot] = b * k
                new_rows.append(_Row(rows[b * k].tokens, rows[b * k].text))
        rows, beam_scores, last = new_rows, new_scores, new_last
        if not active.any():
            break
        state = backend.select(state, parents, same_source=True)
    for b in range(batch):
        if len(finished[b]) < k:  # ran out of length: keep the live beams too
            for j in range(k):
                score = float(beam_scores[b, j])
                if score > float("-inf"):
                    row = _settled(rows[b * k + j], row_plans[b * k + j], piece_texts)
                    finished[b].append(Candidate(row.tokens, row.text.strip(), score, _normalized(score, len(row.tokens), settings.length_penalty)))
        finished[b].sort(key=lambda c: c.score, reverse=True)
    return finished


def search(backend: Backend, src: np.ndarray, plans: Sequence[BanPlan], piece_texts: Sequence[str], settings: DecodingSettings, expected: Sequence[int] | None = None, memory: PhraseMemory | None = None, streams: Sequence[int] | None = None) -> list[list[Candidate]]:
    """Candidates per example, best first by (length-normalized) score. `expected`: each
    example's expected length in characters (for settings.length_budget). `memory`: the
    phrases of the job's earlier copies (for settings.catalog_penalty). `streams`: each
    example's place among identical examples of the job (for top_p's random draws)."""
    if settings.method == "greedy":
        return greedy(backend, src, plans, piece_texts, settings, expected, memory)
    if settings.method == "beam":
        return beam(backend, src, plans, piece_texts, settings, expected, memory)
    if settings.method == "top_p":
        out = top_p(backend, src, plans, piece_texts, settings, expected, memory, streams)
        for candidates in out:
            candidates.sort(key=lambda c: c.score, reverse=True)
        return out
    raise ValueError(f"unknown decoding method {settings.method!r}; expected greedy, beam or top_p")
