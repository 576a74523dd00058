"""AdvertiseGen JSONL (`{"content": "类型#裙*颜色#白色", "summary": "<human copy>"}`) -> catalog.

Each distinct `content` is one product (product_id = stable hash of the content, so the same
attribute set always maps to the same id); every row's `summary` is one human copy of it, so
repeated content gives one product with several human copies. `<UNK>` (a masked brand name in
the source) stays in attributes and texts as a visible token.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pandas as pd

from components.data.attributes import category_of
from components.data.corpus import read_corpus

CORPUS_SOURCE = "advertisegen"
CLAUSE_PUNCTUATION = "，。！；"
_CLAUSE_SPLIT = re.compile(f"(?<=[{CLAUSE_PUNCTUATION}])")


def stable_id(prefix: str, *parts: str) -> str:
    """Deterministic short id from content (sha1; ids only need to be stable, not secret)."""
    digest = hashlib.sha1("\x1f".join(parts).encode("utf-8")).hexdigest()[:16]
    return f"{prefix}{digest}"


def read_corpus_head(path: Path | str, limit: int | None = None) -> pd.DataFrame:
    """The first `limit` corpus rows (content, summary, attributes, line); bad rows name their line."""
    corpus = read_corpus(path)
    return corpus if limit is None else corpus.head(limit).reset_index(drop=True)


def corpus_catalog(corpus: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Corpus rows -> (products, human copies); products keep first-seen order.

    products: product_id, category, content, attributes
    copies:   copy_id, product_id, text, source="human", model_version=None
    """
    product_ids = corpus["content"].map(lambda c: stable_id("p", c))
    first = ~product_ids.duplicated()
    products = pd.DataFrame(
        {
            "product_id": product_ids[first].to_numpy(),
            "category": corpus.loc[first, "attributes"].map(category_of).to_numpy(),
            "content": corpus.loc[first, "content"].to_numpy(),
            "attributes": corpus.loc[first, "attributes"].to_numpy(),
        }
    )
    copies = pd.DataFrame(
        {
            "copy_id": [stable_id("c", p, t) for p, t in zip(product_ids, corpus["summary"])],
            "product_id": product_ids.to_numpy(),
            "text": corpus["summary"].to_numpy(),
            "source": "human",
            "model_version": None,
        }
    )
    return products, copies.drop_duplicates("copy_id", ignore_index=True)


def split_clauses(text: str) -> list[str]:
    """Split after each clause mark (，。！；), keeping the mark with its clause."""
    return [clause for clause in _CLAUSE_SPLIT.split(text) if clause.strip()]


def clause_subset(clauses: list[str], keep: np.ndarray) -> str:
    """Join the kept clauses in order; the text ends with a full stop rather than a comma."""
    text = "".join(c for c, k in zip(clauses, keep) if k)
    if text and text[-1] in "，；":
        text = text[:-1] + "。"
    return text


def copy_variants(human_copies: pd.DataFrame, n_variants: int, rng: np.random.Generator) -> pd.DataFrame:
    """`n_variants` clause-subset variants per product, made from its first human copy.

    Each variant keeps a random half (at least two) of the copy's clauses in order, so the
    variants of one product mention different attribute values — the copy effect the behaviour
    simulator rewards. Variants identical to an existing copy are dropped.
    """
    if n_variants <= 0:
        return human_copies.iloc[0:0].copy()
    base = human_copies.drop_duplicates("product_id")
    rows = []
    for product_id, text in zip(base["product_id"], base["text"]):
        clauses = split_clauses(text)
        if len(clauses) < 3:
            continue  # too short to make a distinct subset
        for _ in range(n_variants):
            keep = rng.random(len(clauses)) < 0.5
            if keep.sum() < 2:
                keep[rng.choice(len(clauses), size=2, replace=False)] = True
            variant = clause_subset(clauses, keep)
            rows.append((stable_id("c", product_id, variant), product_id, variant))
    variants = pd.DataFrame(rows, columns=["copy_id", "product_id", "text"])
    variants["source"] = "human"  # derived from the human copy, not from a model
    variants["model_version"] = None
    variants = variants[~variants["copy_id"].isin(human_copies["copy_id"])]
    return variants.drop_duplicates("copy_id", ignore_index=True)


def mentioned_values(text: str, attributes: dict[str, list[str]]) -> list[tuple[str, str]]:
    """The product's (key, value) pairs whose value appears literally in the copy text."""
    return [(key, value) for key, values in attributes.items() for value in values if value in text]
