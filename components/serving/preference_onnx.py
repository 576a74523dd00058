"""The preference model as ONNX: export (torch's dynamo exporter), parity check, scoring.

The exported graph is `ProbabilityModel`: packed features `x` [batch, width] float32 ->
`probability` [batch, 1]. The catalogue tables (product -> attribute values) are constants in
the graph, so scoring needs only the encoder (encoder.json) to pack a frame of features.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch

PARITY_TOLERANCE = 1e-4
INPUT_NAME = "x"
OUTPUT_NAME = "probability"
ONNX_FILE = "model.onnx"


class ParityError(RuntimeError):
    """ONNX Runtime and torch disagree on the same inputs beyond the tolerance."""


def export_onnx(model: torch.nn.Module, example_x: np.ndarray, path: Path) -> Path:
    """Export an eval-mode model to a single self-contained .onnx file with a dynamic batch."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    example = torch.from_numpy(np.ascontiguousarray(example_x[: max(2, min(len(example_x), 8))], dtype=np.float32))
    batch = torch.export.Dim("batch", min=1)
    # The exporter is chatty at INFO level; its progress lines are not useful in pipeline logs.
    logging.getLogger("torch.onnx").setLevel(logging.WARNING)
    with torch.no_grad():
        program = torch.onnx.export(
            model,
            (example,),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes={"x": {0: batch}},
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    program.save(str(path), external_data=False)
    return path


def session(path: Path, threads: int | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or max(1, min(4, os.cpu_count() or 1))
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def onnx_predict(sess, x: np.ndarray) -> np.ndarray:
    return sess.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(x, dtype=np.float32)})[0][:, 0]


def torch_predict(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model.eval()(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))[:, 0].numpy()


def check_parity(path: Path, model: torch.nn.Module, x: np.ndarray, tolerance: float = PARITY_TOLERANCE) -> float:
    """Max |onnx - torch| on `x`; raises ParityError above the tolerance."""
    diff = float(np.max(np.abs(onnx_predict(session(path), x) - torch_predict(model, x))))
    if not diff <= tolerance:
        raise ParityError(f"ONNX parity failed for {path}: max abs diff {diff:.3g} > {tolerance:g} on {len(x)} rows")
    return diff


class OnnxPreferenceScorer:
    """A frame of features -> P(click), with ONNX Runtime for the network (no torch model) and
    the same cold-start routing as `PreferenceModel.predict`. The copy server does not use it: it
    scores generated candidates with torch (`predict_copies`), because the graph does not take
    the values a new text mentions (docs/preference.md)."""

    def __init__(self, model_dir: Path, threads: int | None = None):
        import json

        from components.models.preference.api import ENCODER_FILE, FALLBACK_FILE, META_FILE
        from components.models.preference.data import FeatureEncoder
        from components.models.preference.fallback import PopularityFallback

        model_dir = Path(model_dir)
        meta = json.loads((model_dir / META_FILE).read_text(encoding="utf-8"))
        self.cold_policy, self.cold_min_events = meta["cold_policy"], int(meta["cold_min_events"])
        self.encoder = FeatureEncoder.load(model_dir / ENCODER_FILE)
        self.fallback = PopularityFallback.load(model_dir / FALLBACK_FILE)
        self.session = session(model_dir / ONNX_FILE, threads)

    def predict_packed(self, x: np.ndarray) -> np.ndarray:
        """Network-only probabilities for packed rows (no cold-start routing)."""
        return onnx_predict(self.session, x)

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        """P(click) per row, cold-start shoppers routed to the fallback as the model's policy says."""
        from components.models.preference.api import route_cold_start

        x = self.encoder.transform(frame)
        return route_cold_start(self.predict_packed(x), x, frame, self)
