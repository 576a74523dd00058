"""Retrieval baseline: the training copy whose product shares the most attribute pairs
(Jaccard on key#value), with the product's own values substituted for the neighbour's where the
same key has a different value. Same `generate` interface as the neural generator, so every
report compares the two on identical inputs.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import sparse

from components.models.generator.focus import ANY, length_bucket, normalize_focus, tone_of

RETRIEVAL_FILE = "retrieval.jsonl"


def _pairs(attributes: dict[str, list[str]]) -> list[str]:
    return [f"{k}#{v}" for k, values in attributes.items() for v in values]


def substitute_values(text: str, source: dict[str, list[str]], target: dict[str, list[str]]) -> str:
    """Replace the neighbour's values with the product's own, key by key, where they differ."""
    own = {v for values in target.values() for v in values}
    for key, target_values in target.items():
        theirs = [v for v in source.get(key, []) if v not in own]
        ours = [v for v in target_values if v not in source.get(key, [])]
        for old, new in zip(theirs, ours):
            # One-character values (裙, 裤) also occur inside longer words (连衣裙): leave them.
            if len(old) >= 2 and len(new) >= 2:
                text = text.replace(old, new)
    return text


class RetrievalGenerator:
    def __init__(self, attributes: Sequence[dict[str, list[str]]], texts: Sequence[str], length_edges: Sequence[float]):
        if len(attributes) != len(texts) or not texts:
            raise ValueError("retrieval baseline needs the same, non-zero number of attribute sets and texts")
        self.attributes = list(attributes)
        self.texts = list(texts)
        self.length_edges = list(length_edges)
        vocab: dict[str, int] = {}
        rows, cols = [], []
        for i, attrs in enumerate(self.attributes):
            for pair in set(_pairs(attrs)):
                rows.append(i)
                cols.append(vocab.setdefault(pair, len(vocab)))
        self.vocab = vocab
        self.matrix = sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(self.texts), len(vocab)))
        self.sizes = np.asarray(self.matrix.sum(axis=1)).ravel()
        self.tones = [tone_of(t) for t in self.texts]
        self.lengths = [length_bucket(len(t), self.length_edges) for t in self.texts]

    def scores(self, attributes: dict[str, list[str]], focus: Sequence[str], tone: str, length: str) -> np.ndarray:
        pairs = set(_pairs(attributes))
        query = np.zeros(len(self.vocab))
        for pair in pairs:
            if pair in self.vocab:
                query[self.vocab[pair]] = 1.0
        overlap = self.matrix @ query
        jaccard = overlap / np.maximum(1.0, self.sizes + len(pairs) - overlap)
        # Small tie-breakers: the neighbour mentions the focus values, matches tone / length.
        bonus = np.array([sum(f in t for f in focus) for t in self.texts], dtype=float) * 0.05 if focus else 0.0
        if tone != ANY:
            bonus = bonus + 0.01 * np.array([t == tone for t in self.tones])
        if length != ANY:
            bonus = bonus + 0.01 * np.array([x == length for x in self.lengths])
        return jaccard + bonus

    def generate(self, attributes: dict[str, list[str]], focus: Sequence[str] | None = None, tone: str = ANY, length: str = ANY, decoding=None, n: int = 1) -> list[str]:
        chosen = normalize_focus(focus, attributes)
        order = np.argsort(-self.scores(attributes, chosen, tone, length), kind="stable")
        copies: list[str] = []
        for i in order:
            text = substitute_values(self.texts[i], self.attributes[i], attributes)
            if text not in copies:
                copies.append(text)
            if len(copies) == n:
                break
        return copies

    def training_neighbors(self, k: int, chunk: int = 512) -> list[list[int]]:
        """For every indexed row, its k most similar *other* rows (never itself or a row with
        the same text): the exemplars a training example may be conditioned on."""
        dense_t = self.matrix.T.tocsc()
        neighbors: list[list[int]] = []
        for start in range(0, len(self.texts), chunk):
            block = (self.matrix[start : start + chunk] @ dense_t).toarray()
            union = self.sizes[start : start + chunk, None] + self.sizes[None, :] - block
            jaccard = block / np.maximum(1.0, union)
            for offset, row in enumerate(jaccard):
                i = start + offset
                row[i] = -1.0
                order = np.argsort(-row, kind="stable")
                picked = [int(j) for j in order[: k + 5] if self.texts[j] != self.texts[i]][:k]
                neighbors.append(picked)
        return neighbors

    def save(self, directory: Path) -> None:
        with (directory / RETRIEVAL_FILE).open("w", encoding="utf-8") as handle:
            handle.write(json.dumps({"length_edges": self.length_edges}) + "\n")
            for attrs, text in zip(self.attributes, self.texts):
                handle.write(json.dumps({"attributes": attrs, "text": text}, ensure_ascii=False) + "\n")

    @classmethod
    def load(cls, directory: Path) -> RetrievalGenerator:
        # "\n" only: a copy may hold U+2028 unescaped, which str.splitlines would split on
        lines = [line for line in (directory / RETRIEVAL_FILE).read_text(encoding="utf-8").split("\n") if line]
        header, rows = json.loads(lines[0]), [json.loads(line) for line in lines[1:]]
        return cls([r["attributes"] for r in rows], [r["text"] for r in rows], header["length_edges"])
