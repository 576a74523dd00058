"""Training examples for the generator: controls derived from each reference copy, sources
re-sampled every time an example is drawn (so the model sees many focus subsets of one copy),
and length-bucketed batches (similar lengths together: far less padding to compute on)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from components.data.attributes import shuffled_attributes
from components.models.generator.focus import ANY, length_bucket, mentioned_values, sample_training_focus, tone_of
from components.models.generator.tokenizer import PAD, CopyTokenizer


@dataclass(frozen=True)
class ControlSampling:
    focus_empty_prob: float
    control_any_prob: float
    max_focus: int
    exemplar_dropout: float = 1.0  # share of rows without an exemplar (1.0 = exemplars off)
    max_exemplar_len: int = 0
    shuffle_attributes: bool = False  # training draws list the attribute pairs in a random order


@dataclass
class Example:
    attributes: dict[str, list[str]]
    mentioned: list[str]
    tone: str
    length: str
    target: list[int]
    exemplars: list[str]


def build_examples(
    attributes: Sequence[dict],
    texts: Sequence[str],
    tokenizer: CopyTokenizer,
    edges: Sequence[float],
    max_target_len: int,
    exemplars: Sequence[list[str]] | None = None,
) -> list[Example]:
    """`exemplars[i]`: retrieved copies (other products', own values substituted) for row i."""
    return [
        Example(attrs, mentioned_values(text, attrs), tone_of(text), length_bucket(len(text), edges), tokenizer.encode_target(text, max_target_len), list(exemplars[i]) if exemplars else [])
        for i, (attrs, text) in enumerate(zip(attributes, texts))
    ]


def pad(rows: Sequence[Sequence[int]]) -> torch.Tensor:
    out = torch.full((len(rows), max(map(len, rows))), PAD, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out


class BucketedBatches(Dataset):
    """Item i is a whole collated batch. Batches group examples of similar target length
    (sorted inside shuffled windows of 50 batches); the loader shuffles the batch order."""

    def __init__(
        self,
        examples: Sequence[Example],
        tokenizer: CopyTokenizer,
        batch_size: int,
        max_source_len: int,
        sampling: ControlSampling,
        seed: int,
        resample: bool,
    ):
        self.examples, self.tokenizer, self.max_source_len = list(examples), tokenizer, max_source_len
        self.sampling, self.seed, self.resample = sampling, seed, resample
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(self.examples))
        window = batch_size * 50
        self.batches: list[list[int]] = []
        for start in range(0, len(order), window):
            chunk = sorted(order[start : start + window], key=lambda i: len(self.examples[i].target))
            self.batches += [chunk[j : j + batch_size] for j in range(0, len(chunk), batch_size)]
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Training draws depend on (seed, batch, epoch), not on a counter: a DataLoader worker
        gets a fresh copy of the dataset every epoch, so a counter would restart and repeat
        the first epoch's controls (`EpochControls` calls this before the workers start)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.batches)

    def controls(self, example: Example, rng: np.random.Generator) -> tuple[list[str], str, str, str | None]:
        s = self.sampling
        focus = sample_training_focus(example.mentioned, rng, s.focus_empty_prob, s.max_focus)
        tone = ANY if rng.random() < s.control_any_prob else example.tone
        length = ANY if rng.random() < s.control_any_prob else example.length
        exemplar = None
        if example.exemplars and rng.random() >= s.exemplar_dropout:
            exemplar = example.exemplars[int(rng.integers(len(example.exemplars)))]
        return focus, tone, length, exemplar

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        # Training draws fresh controls every epoch; validation is fixed per batch (comparable losses).
        rng = np.random.default_rng((self.seed, index, self.epoch + 1 if self.resample else 0))
        sources, targets = [], []
        for i in self.batches[index]:
            example = self.examples[i]
            focus, tone, length, exemplar = self.controls(example, rng)
            attributes = example.attributes
            if self.resample and self.sampling.shuffle_attributes:
                attributes = shuffled_attributes(attributes, rng)
            sources.append(self.tokenizer.encode_source(attributes, focus, tone, length, self.max_source_len, exemplar, self.sampling.max_exemplar_len))
            targets.append(example.target)
        return {"src": pad(sources), "tgt": pad(targets)}
