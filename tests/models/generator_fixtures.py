"""Tiny generator settings and a params file for subprocess training tests."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from components.config import deep_merge

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "data/advertisegen/train.jsonl"

TINY_GENERATOR = {
    "tokenizer_vocab_size": 300,
    "d_model": 32,
    "nhead": 2,
    "encoder_layers": 1,
    "decoder_layers": 1,
    "dim_feedforward": 64,
    "embed_dim": 16,
    "max_target_len": 32,
    "batch_size": 16,
    "max_epochs": 1,
    "max_steps": 4,
    "max_minutes": 2,
    "warmup_steps": 2,
    "beam_size": 2,
    "num_candidates": 2,
    "eval_samples": 4,
    "tradeoff_samples": 0,
    "parity_samples": 3,
}


def tiny_corpus(path: Path, rows: int = 160) -> Path:
    """The first `rows` corpus lines: enough for every split to be non-empty."""
    lines = CORPUS.read_text(encoding="utf-8").splitlines()[:rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_params(tmp_path: Path, profile: str = "quick", **overrides) -> Path:
    """A params.yaml whose paths live in tmp_path and whose profile trains a tiny generator."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    isolated = {
        "paths": {
            "corpus": str(tiny_corpus(tmp_path / "corpus.jsonl")),
            "artifacts": str(tmp_path / "artifacts"),
            "state": str(tmp_path / "state"),
            "feedback_folder": str(tmp_path / "feedback"),
            "pseudonym_key_file": str(tmp_path / "pseudonym.key"),
            "ad_law_words": str(ROOT / "components/resources/ad_law_words.txt"),
            "latin_words": str(ROOT / "components/resources/latin_words.txt"),
        },
        "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
        "data": {"valid_fraction": 0.15, "test_fraction": 0.15},
        "generator": TINY_GENERATOR,
    }
    raw["profiles"][profile] = deep_merge(deep_merge(raw["profiles"].get(profile) or {}, isolated), overrides)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    return path


def read_manifest(out_dir: Path) -> dict:
    return json.loads((out_dir / "manifest.json").read_text(encoding="utf-8"))


def tiny_parts(rows: int = 200, d_model: int = 32, seed: int = 0):
    """A tokenizer, value vocabulary, length edges, retrieval baseline and an untrained tiny
    model, all built from the first `rows` corpus rows (seconds, no training)."""
    import torch

    from components.data.corpus import read_corpus
    from components.models.generator.constraints import build_value_vocabulary
    from components.models.generator.focus import length_edges
    from components.models.generator.model import CopyTransformer, ModelSpec
    from components.models.generator.retrieval import RetrievalGenerator
    from components.models.generator.tokenizer import CopyTokenizer

    corpus = read_corpus(CORPUS).head(rows)
    attributes, texts = list(corpus["attributes"]), list(corpus["summary"])
    keys = {k for a in attributes for k in a}
    values = {v for a in attributes for vs in a.values() for v in vs} | {"黑色", "白色"}
    tokenizer = CopyTokenizer.train(texts, keys, values, 300)
    vocabulary = build_value_vocabulary(attributes, texts, 0.05)
    edges = length_edges([len(t) for t in texts])
    torch.manual_seed(seed)
    net = CopyTransformer(ModelSpec(tokenizer.vocab_size, d_model, 2, 1, 1, 2 * d_model, 0.0, 64, 48)).eval()
    return tokenizer, vocabulary, edges, RetrievalGenerator(attributes, texts, edges), net, corpus


class WrappedBackend:
    """A real backend (torch or ONNX Runtime) that tests subclass to change one thing."""

    def __init__(self, backend):
        self.backend = backend

    def start(self, src):
        return self.backend.start(src)

    def step(self, tokens, state):
        return self.backend.step(tokens, state)

    def select(self, state, rows, same_source=False):
        return self.backend.select(state, rows, same_source)


class _AlwaysFullSelect(WrappedBackend):
    """Gathers every state tensor on every select."""

    def select(self, state, rows, same_source=False):
        return self.backend.select(state, rows)


def assert_beams_share_sources(generator) -> None:
    """Beam search that moves only the self-attention cache between beams (select with
    same_source) writes exactly what one that gathers the whole state does."""
    from components.models.generator.decoding import DecodingSettings, search

    products = [{"类型": ["裙"], "颜色": ["白色"]}, {"类型": ["裤"]}, {"类型": ["上衣"], "颜色": ["黑色"], "风格": ["简约"]}]
    requests = [generator.request(p, None, "any", "any") for p in products]
    plans = [generator.ban_plan(p, True) for p in products]
    settings = DecodingSettings(method="beam", beam_size=3, max_len=12)
    found = {}
    for name, engine in (("beams", generator.backend), ("full", _AlwaysFullSelect(generator.backend))):
        found[name] = [[(c.text, round(c.score, 4)) for c in cands] for cands in search(engine, generator.encode_sources(requests), plans, generator.tokenizer.piece_texts, settings)]
    assert found["beams"] == found["full"] and all(found["beams"])
