"""ONNX serving path of the copy generator.

Two graphs, exported with the torch dynamo exporter:
- encoder.onnx:      src ids [B, S] -> cross-attention keys/values for every decoder layer;
- decoder_step.onnx: one token per row + the self-attention cache -> log-probs + grown cache.
`OnnxBackend` runs them with ONNX Runtime behind the same decoding.Backend protocol as torch, so
greedy/beam/top-p and every constraint run through identical search code.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from components.models.generator.model import BrokenModel, CopyTransformer
from components.models.generator.tokenizer import BOS, PAD

ENCODER_FILE = "encoder.onnx"
DECODER_FILE = "decoder_step.onnx"


class _Encoder(nn.Module):
    def __init__(self, net: CopyTransformer):
        super().__init__()
        self.net = net

    def forward(self, src: torch.Tensor):
        return self.net.cross_cache(src)


class _DecoderStep(nn.Module):
    def __init__(self, net: CopyTransformer):
        super().__init__()
        self.net = net

    def forward(self, tokens, past_k, past_v, cross_k, cross_v, copy_keys, src):
        return self.net.decoder_step(tokens, past_k, past_v, cross_k, cross_v, copy_keys, src)


def export_onnx(net: CopyTransformer, directory: Path) -> dict[str, Path]:
    """Write encoder.onnx and decoder_step.onnx (dynamic batch, source and cache lengths)."""
    directory.mkdir(parents=True, exist_ok=True)
    net = net.eval()
    spec = net.spec
    batch, src_len, past_len = 3, 7, 4
    src = torch.randint(4, spec.vocab_size, (batch, src_len))
    b, s, t = torch.export.Dim("batch", min=1), torch.export.Dim("src_len", min=2, max=spec.max_source_len), torch.export.Dim("past_len", min=1, max=spec.max_target_len)
    encoder_path, decoder_path = directory / ENCODER_FILE, directory / DECODER_FILE
    with torch.no_grad():
        torch.onnx.export(
            _Encoder(net).eval(), (src,), str(encoder_path), dynamo=True, input_names=["src"],
            output_names=["cross_k", "cross_v", "copy_keys"], dynamic_shapes={"src": {0: b, 1: s}}, verbose=False,
        )
        cross_k, cross_v, copy_keys = net.cross_cache(src)
        head = spec.d_model // spec.nhead
        past = torch.randn(spec.decoder_layers, batch, spec.nhead, past_len, head)
        src[0, -2:] = PAD  # padded rows must export the masking path
        args = (torch.randint(4, spec.vocab_size, (batch,)), past, past.clone(), cross_k, cross_v, copy_keys, src)
        torch.onnx.export(
            _DecoderStep(net).eval(), args, str(decoder_path), dynamo=True,
            input_names=["tokens", "past_k", "past_v", "cross_k", "cross_v", "copy_keys", "src"],
            output_names=["logprobs", "present_k", "present_v"],
            dynamic_shapes={
                "tokens": {0: b}, "past_k": {1: b, 3: t}, "past_v": {1: b, 3: t},
                "cross_k": {1: b, 3: s}, "cross_v": {1: b, 3: s}, "copy_keys": {0: b, 1: s}, "src": {0: b, 1: s},
            },
            verbose=False,
        )
    return {"encoder": encoder_path, "decoder_step": decoder_path}


def _session(path: Path, options):
    """An ONNX Runtime session; a truncated graph or a missing weights file beside it
    (`*.onnx.data`) is named, not left to surface as an ONNX Runtime traceback."""
    import onnxruntime as ort

    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own pybind types (InvalidProtobuf, Fail, ...)
        reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise BrokenModel(f"{path} cannot be loaded by ONNX Runtime ({reason}); re-export the bundle or use the torch backend") from exc


class OnnxBackend:
    """decoding.Backend over ONNX Runtime sessions of the two exported graphs."""

    def __init__(self, onnx_dir: Path, threads: int = 0):
        import onnxruntime as ort

        onnx_dir = Path(onnx_dir)
        for name in (ENCODER_FILE, DECODER_FILE):
            if not (onnx_dir / name).exists():
                raise FileNotFoundError(f"{onnx_dir / name} missing: export the model first (export_onnx)")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.encoder = _session(onnx_dir / ENCODER_FILE, options)
        self.decoder = _session(onnx_dir / DECODER_FILE, options)
        shape = self.decoder.get_inputs()[1].shape  # [layers, batch, heads, time, head_dim]
        self.layers, self.heads, self.head_dim = int(shape[0]), int(shape[2]), int(shape[4])

    def start(self, src: np.ndarray):
        src = src.astype(np.int64)
        cross_k, cross_v, copy_keys = self.encoder.run(None, {"src": src})
        empty = np.zeros((self.layers, src.shape[0], self.heads, 1, self.head_dim), dtype=np.float32)
        return empty, empty.copy(), cross_k, cross_v, copy_keys, src

    def step(self, tokens: np.ndarray, state):
        past_k, past_v, cross_k, cross_v, copy_keys, src = state
        logprobs, past_k, past_v = self.decoder.run(
            None,
            {"tokens": tokens.astype(np.int64), "past_k": past_k, "past_v": past_v, "cross_k": cross_k, "cross_v": cross_v, "copy_keys": copy_keys, "src": src},
        )
        return torch.from_numpy(logprobs), (past_k, past_v, cross_k, cross_v, copy_keys, src)

    def select(self, state, rows: np.ndarray, same_source: bool = False):
        past_k, past_v, cross_k, cross_v, copy_keys, src = state
        if same_source:  # beams of one copy: only the self-attention cache moves
            return past_k[:, rows], past_v[:, rows], cross_k, cross_v, copy_keys, src
        return past_k[:, rows], past_v[:, rows], cross_k[:, rows], cross_v[:, rows], copy_keys[rows], src[rows]


# ONNX Runtime and torch log-probabilities differ by about 1e-5 on a sound export; a wrong
# graph differs by orders more. Beyond this the exported model is not the one evaluated.
MAX_LOGPROB_DIFF = 1e-3
PARITY_STEPS = 8


class ExportParityError(RuntimeError):
    """The ONNX graphs do not reproduce the torch model: they must not ship."""


def parity(torch_generator, onnx_generator, requests) -> dict[str, float]:
    """How closely the ONNX export reproduces torch on `requests`: the share of identical copies
    under greedy and under beam search (the deterministic decoders), and the largest per-step
    log-probability difference along torch's greedy path (padded batch, growing cache). Sampled
    copies are not compared: a draw that falls within 1e-5 of a token boundary may part."""
    same_greedy = [x == y for x, y in zip(torch_generator.generate_many(requests, "greedy", n=1), onnx_generator.generate_many(requests, "greedy", n=1))]
    same_beam = [x == y for x, y in zip(torch_generator.generate_many(requests, "beam", n=1), onnx_generator.generate_many(requests, "beam", n=1))]
    src = torch_generator.encode_sources(requests)
    state_t, state_o = torch_generator.backend.start(src), onnx_generator.backend.start(src)
    tokens = np.full(len(requests), BOS, dtype=np.int64)
    largest = 0.0
    for _ in range(PARITY_STEPS):
        lp_t, state_t = torch_generator.backend.step(tokens, state_t)
        lp_o, state_o = onnx_generator.backend.step(tokens, state_o)
        difference = (lp_t.float() - lp_o.float()).abs()
        largest = max(largest, float(difference.max())) if bool(torch.isfinite(difference).all()) else float("inf")
        tokens = lp_t.argmax(-1).numpy()
    return {"onnx_parity_exact": float(np.mean(same_greedy)), "onnx_parity_beam": float(np.mean(same_beam)),
            "onnx_max_logprob_diff": largest, "onnx_parity_inputs": float(len(same_greedy))}


def require_parity(result: dict[str, float]) -> None:
    """Raise ExportParityError unless greedy and beam copies are identical and the per-step
    log-probabilities agree within MAX_LOGPROB_DIFF."""
    n = int(result["onnx_parity_inputs"])
    problems = [f"{name}: {round((1 - result[key]) * n)} of {n} copies differ" for name, key in (("greedy", "onnx_parity_exact"), ("beam", "onnx_parity_beam")) if result[key] < 1.0]
    if not result["onnx_max_logprob_diff"] <= MAX_LOGPROB_DIFF:
        problems.append(f"log-probabilities differ by up to {result['onnx_max_logprob_diff']:.3g} (allowed {MAX_LOGPROB_DIFF:g})")
    if problems:
        raise ExportParityError(
            "the ONNX export does not reproduce the torch generator (" + "; ".join(problems) + "); the server runs ONNX, "
            "so this model must not ship. Check the onnx/onnxruntime/onnxscript versions against requirements.lock."
        )
