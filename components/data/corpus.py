"""The bundled copy corpus (AdvertiseGen JSONL rows `{"content": attrs, "summary": copy}`) and its
deterministic train/valid/test split.

The split of a row is a pure function of its `content` (a hash), so it never changes when rows
are added or removed, identical attribute strings always land in the same split (no leakage of a
product between train and test), and every consumer (generator, evaluation gate, features)
agrees on which rows are held out.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd

from components.data.attributes import UNK, parse_attributes

SPLITS = ("train", "valid", "test")
# The corpus masks brand names two ways: `<UNK>` (1,553 copies) and a literal `BRAND` (234).
# Kept as written, a model learns to spell B-R-A-N-D into copies a shop would ship; as the one
# masked token, it is never generated.
BRAND_PLACEHOLDER = "BRAND"


class CorpusError(ValueError):
    """A corpus file is missing, empty or has a malformed row."""


def split_of(content: str, valid_fraction: float, test_fraction: float) -> str:
    """'train' | 'valid' | 'test' from a stable hash of the attribute string."""
    digest = hashlib.sha256(content.encode("utf-8")).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64  # uniform in [0, 1)
    if u < test_fraction:
        return "test"
    if u < test_fraction + valid_fraction:
        return "valid"
    return "train"


def read_corpus(path: Path | str, *, require_summary: bool = True) -> pd.DataFrame:
    """JSONL -> DataFrame[line, content, summary, attributes]; a bad row raises naming its line.
    A `BRAND` placeholder in a copy becomes the masked token `<UNK>`."""
    path = Path(path)
    if not path.exists():
        raise CorpusError(f"corpus not found: {path}")
    records = []
    with path.open(encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise CorpusError(f"{path}:{line_no}: not valid JSON ({exc.msg})") from exc
            if not isinstance(row, dict) or not isinstance(row.get("content"), str):
                raise CorpusError(f"{path}:{line_no}: expected an object with a string 'content'")
            summary = row.get("summary")
            if require_summary and (not isinstance(summary, str) or not summary.strip()):
                raise CorpusError(f"{path}:{line_no}: missing or empty 'summary'")
            try:
                attributes = parse_attributes(row["content"])
            except ValueError as exc:
                raise CorpusError(f"{path}:{line_no}: bad 'content': {exc}") from exc
            if isinstance(summary, str):
                summary = summary.replace(BRAND_PLACEHOLDER, UNK)
            records.append(
                {"line": line_no, "content": row["content"], "summary": summary, "attributes": attributes}
            )
    if not records:
        raise CorpusError(f"corpus is empty: {path}")
    return pd.DataFrame.from_records(records)


def split_corpus(corpus: pd.DataFrame, valid_fraction: float, test_fraction: float) -> dict[str, pd.DataFrame]:
    """{'train'|'valid'|'test': rows}, each keeping the corpus order."""
    labels = corpus["content"].map(lambda c: split_of(c, valid_fraction, test_fraction))
    return {name: corpus[labels == name].reset_index(drop=True) for name in SPLITS}


def load_corpus_splits(cfg) -> dict[str, pd.DataFrame]:
    """The configured corpus split by cfg.data.valid_fraction / test_fraction."""
    corpus = read_corpus(cfg.paths.corpus)
    return split_corpus(corpus, cfg.data.valid_fraction, cfg.data.test_fraction)
