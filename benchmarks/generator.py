"""Generator speed: latency of one copy (ONNX Runtime vs torch, greedy and beam 4) and batch
throughput (copies/s at batch 64: greedy, beam 4, and the shipped default, top-p with 8
candidates re-ranked), and the generation in one `copyflow serve` request (serving.candidates
copies with the default decoding). Copies are decoded with the model's own constraints
and length stop, so the latency is that of a real, shippable copy. Also the cost of one
`full`-size training step on CPU with the shipped dropout against torch's own (same process,
alternating rounds).

Uses the trained model of $COPYFLOW_GENERATOR_MODEL, else artifacts/{full,quick}/models/
generator/model. Without one it benchmarks an untrained model of the quick profile's size, with
the quick profile's decoding defaults (as a trained model ships them) and the copy length fixed
at 64 tokens (EOS blocked until then), so figures still compare runtimes.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from components.config import load_config
from components.models.generator import api
from components.models.generator import model as generator_model
from components.models.generator.decoding import DecodingSettings

PRODUCTS = [
    {"类型": ["裙"], "颜色": ["白色"], "风格": ["简约"], "裙长": ["连衣裙"], "裙领型": ["圆领"]},
    {"类型": ["裤"], "版型": ["宽松"], "材质": ["牛仔布"], "裤型": ["阔腿裤"], "裤腰型": ["高腰"]},
    {"类型": ["上衣"], "颜色": ["黑色"], "图案": ["条纹"], "衣样式": ["衬衫"], "衣领型": ["翻领"]},
    {"类型": ["裙"], "材质": ["蕾丝"], "图案": ["刺绣"], "裙型": ["a字"], "裙袖长": ["短袖"]},
]


def find_model_dir() -> Path | None:
    candidates = [os.environ.get("COPYFLOW_GENERATOR_MODEL", "")] + [f"artifacts/{p}/models/generator/model" for p in ("full", "quick")]
    for candidate in candidates:
        if candidate and (Path(candidate) / api.CONFIG_FILE).exists() and (Path(candidate) / api.ONNX_DIR / "decoder_step.onnx").exists():
            return Path(candidate)
    return None


def untrained_decoding(cfg) -> DecodingSettings:
    """The profile's shipped decoding (what the "default" and serve-request figures time), with
    the copy length fixed at 64 tokens: an untrained model's copies would otherwise end anywhere."""
    from components.training.generator import decoding_defaults

    return dataclasses.replace(decoding_defaults(cfg), min_len=64, max_len=64)


def untrained_model_dir(directory: Path) -> Path:
    """An untrained quick-size model (tokenizer from the corpus), exported to ONNX."""
    from components.data.corpus import read_corpus
    from components.models.generator.constraints import build_value_vocabulary
    from components.models.generator.focus import length_edges
    from components.models.generator.model import CopyTransformer, ModelSpec
    from components.models.generator.retrieval import RetrievalGenerator
    from components.models.generator.tokenizer import CopyTokenizer
    from components.serving.generator_onnx import export_onnx

    cfg = load_config("params.yaml", "quick")
    g = cfg.generator
    corpus = read_corpus(cfg.paths.corpus).head(1000)
    attributes, texts = list(corpus["attributes"]), list(corpus["summary"])
    tokenizer = CopyTokenizer.train(texts, {k for a in attributes for k in a}, {v for a in attributes for vs in a.values() for v in vs}, g.tokenizer_vocab_size)
    net = CopyTransformer(ModelSpec(tokenizer.vocab_size, g.d_model, g.nhead, g.encoder_layers, g.decoder_layers, g.dim_feedforward, 0.0, g.max_source_len, g.max_target_len, g.embed_dim)).eval()
    edges = length_edges([len(t) for t in texts])
    api.save_model_dir(directory, net, tokenizer, build_value_vocabulary(attributes, texts, g.faithful_key_max_rate), cfg.paths.ad_law_words, RetrievalGenerator(attributes, texts, edges), untrained_decoding(cfg))
    export_onnx(net, directory / api.ONNX_DIR)
    return directory


def latency(generator: api.Generator, decoding, repeats: int, n: int = 1) -> tuple[float, float]:
    """p50 / p95 milliseconds for `n` copies of one product (n = serving.candidates: the
    generation in one `copyflow serve` request, which then serves one of them)."""
    times = []
    generator.generate(PRODUCTS[0], decoding=decoding, n=n)  # warm-up
    for i in range(repeats):
        started = time.perf_counter()
        generator.generate(PRODUCTS[i % len(PRODUCTS)], decoding=decoding, n=n)
        times.append(1000 * (time.perf_counter() - started))
    return float(np.percentile(times, 50)), float(np.percentile(times, 95))


def throughput(generator: api.Generator, decoding, batch: int = 64) -> float:
    requests = [generator.request(PRODUCTS[i % len(PRODUCTS)], None, "any", "any") for i in range(batch)]
    started = time.perf_counter()
    generator.generate_many(requests, decoding)
    return batch / (time.perf_counter() - started)


def _torch_dropout(x, p, training):
    return F.dropout(x, p, training) if training and p else x


def _torch_attention(q, k, v, mask, causal, p):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, is_causal=causal)


def training_step_ms(rounds: int = 5, steps: int = 8, src_len: int = 115, tgt_len: int = 60) -> dict:
    """Median ms per `full`-profile training step (forward, backward, AdamW) on random tokens of
    the corpus' typical lengths: the shipped CPU dropout against torch's dropout and attention
    dropout, alternating rounds in one process so the machine's load hits both alike."""
    g = load_config("params.yaml", "full").generator
    threads = torch.get_num_threads()
    torch.set_num_threads(g.train_threads or g.torch_threads or threads)  # as the `full` training runs
    torch.manual_seed(0)
    spec = generator_model.ModelSpec(g.tokenizer_vocab_size, g.d_model, g.nhead, g.encoder_layers, g.decoder_layers, g.dim_feedforward, g.dropout, g.max_source_len, g.max_target_len, g.embed_dim)
    module = generator_model.GeneratorModule(spec.to_dict(), g.lr, 10, 1000, 1e9).train()
    optimizer = torch.optim.AdamW(module.parameters(), lr=g.lr)
    batches = [{"src": torch.randint(5, g.tokenizer_vocab_size, (g.batch_size, src_len)), "tgt": torch.randint(5, g.tokenizer_vocab_size, (g.batch_size, tgt_len))} for _ in range(steps)]
    variants = {"shipped": (generator_model.uniform_dropout, generator_model.attention_with_dropout), "torch": (_torch_dropout, _torch_attention)}
    times: dict[str, list[float]] = {name: [] for name in variants}
    try:
        for r in range(rounds + 1):
            for name, (dropout, attention) in variants.items():
                generator_model.uniform_dropout, generator_model.attention_with_dropout = dropout, attention
                started = time.perf_counter()
                for batch in batches:
                    loss = module.loss(batch)
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                if r:  # the first round warms up
                    times[name].append((time.perf_counter() - started) / steps * 1000)
    finally:
        generator_model.uniform_dropout, generator_model.attention_with_dropout = variants["shipped"]
        torch.set_num_threads(threads)
    shipped, plain = float(np.median(times["shipped"])), float(np.median(times["torch"]))
    return {"train_step_ms_shipped_dropout": round(shipped, 1), "train_step_ms_torch_dropout": round(plain, 1), "train_step_speedup": round(plain / shipped, 2)}


def run(report: dict, repeats: int = 10) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = find_model_dir()
        report["generator_model"] = str(model_dir) if model_dir else "untrained quick-size model, 64-token copies"
        model_dir = model_dir or untrained_model_dir(Path(tmp) / "model")
        # One intra-op thread for both runtimes: decoding is many tiny steps, where thread
        # hand-offs cost more than they save on a small shared CPU (and the comparison is fair).
        engines = {
            "torch": api.load_generator(model_dir, batch_size=64, threads=1),
            "onnx": api.load_generator(model_dir, backend="onnx", batch_size=64, threads=1),
        }
        for name, generator in engines.items():
            for decoding, label in (("greedy", "greedy"), ({"method": "beam", "beam_size": 4}, "beam4")):
                p50, p95 = latency(generator, decoding, repeats)
                report[f"{name}_{label}_latency_p50_ms"] = round(p50, 1)
                report[f"{name}_{label}_latency_p95_ms"] = round(p95, 1)
            for decoding, label in (("greedy", "greedy"), ({"method": "beam", "beam_size": 4}, "beam4"), (None, "default")):
                report[f"{name}_{label}_batch64_copies_per_s"] = round(throughput(generator, decoding), 2)
            candidates = load_config("params.yaml", "quick").serving.candidates
            p50, p95 = latency(generator, None, repeats, n=candidates)
            report[f"{name}_serve_request_{candidates}_candidates_p50_ms"] = round(p50, 1)
            report[f"{name}_serve_request_{candidates}_candidates_p95_ms"] = round(p95, 1)
        report["onnx_vs_torch_greedy_speedup"] = round(report["torch_greedy_latency_p50_ms"] / report["onnx_greedy_latency_p50_ms"], 2)
    report.update(training_step_ms())
    return report
