"""The preference model as a product: a self-contained model folder, loading, scoring.

A model folder (written by training, logged to MLflow as the run's `model_dir` artifact):
  preference_model.json  kind, net spec, decision threshold, cold-start policy, key metrics
  encoder.json           feature normalization and vocabularies (fit on train)
  weights.pt             the net's state dict (loaded with weights_only=True: no pickle code)
  fallback.json          the cold-start popularity model
  model.onnx             the same net for ONNX Runtime

`load_preference(ref)` accepts that folder, or an MLflow URI (runs:/<id>/model_dir, or a
logged/registered model URI whose source run holds a model_dir).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from components.models.preference.data import FeatureEncoder
from components.models.preference.fallback import PopularityFallback, is_cold
from components.models.preference.nets import NetSpec, ProbabilityModel, build_net

META_FILE = "preference_model.json"
ENCODER_FILE = "encoder.json"
WEIGHTS_FILE = "weights.pt"
FALLBACK_FILE = "fallback.json"
MODEL_DIR_ARTIFACT = "model_dir"
COLD_POLICIES = ("fallback", "model")


@dataclass
class PreferenceModel:
    kind: str
    spec: NetSpec
    encoder: FeatureEncoder
    net: torch.nn.Module
    fallback: PopularityFallback
    threshold: float = 0.5
    cold_policy: str = "fallback"
    cold_min_events: int = 5
    meta: dict = field(default_factory=dict)
    model_dir: Path | None = None

    @property
    def probability_model(self) -> ProbabilityModel:
        return ProbabilityModel(self.net).eval()

    def encode(self, frame: pd.DataFrame) -> np.ndarray:
        return self.encoder.transform(frame)

    def predict_packed(self, x: np.ndarray) -> np.ndarray:
        """Model-only probabilities for already packed rows (no cold-start routing)."""
        if len(x) == 0:  # the deep net cannot reshape an empty batch; ONNX Runtime gives no scores
            return np.zeros(0, dtype=np.float32)
        with torch.no_grad():
            return self.probability_model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))[:, 0].numpy()

    def predict_model(self, frame: pd.DataFrame) -> np.ndarray:
        return self.predict_packed(self.encode(frame))

    def predict_copies(self, frame: pd.DataFrame, texts: list[str], attributes: dict[str, list[str]]) -> np.ndarray:
        """Model-only P(click) of rows showing copies the training copies table does not hold
        (`texts`, one per row, all of the product with these `attributes`): the deep net reads
        the values each text mentions, as it does for the table's copies. The row's other
        copy feature (`uc_copy_pref_mentions`) is the caller's. No cold-start routing: the
        fallback does not see the copy."""
        if len(frame) != len(texts):
            raise ValueError(f"{len(frame)} rows but {len(texts)} copy texts")
        if len(frame) == 0:
            return np.zeros(0, dtype=np.float64)
        x = torch.from_numpy(np.ascontiguousarray(self.encode(frame), dtype=np.float32))
        mentions = torch.from_numpy(self.encoder.mention_codes(list(texts), attributes))
        with torch.no_grad():
            return torch.sigmoid(self.net(x, mentions=mentions)).numpy().astype(np.float64)

    def predict_fallback(self, frame: pd.DataFrame) -> np.ndarray:
        return self.fallback.predict(self.encode(frame), self.encoder)

    def cold_mask(self, frame: pd.DataFrame) -> np.ndarray:
        return is_cold(frame, self.cold_min_events)

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        """P(click) per row; cold-start shoppers go to the fallback when the policy says so."""
        x = self.encode(frame)
        return route_cold_start(self.predict_packed(x), x, frame, self)


def route_cold_start(scores: np.ndarray, x: np.ndarray, frame: pd.DataFrame, model) -> np.ndarray:
    """The model's scores with cold-start shoppers' rows replaced by the fallback's when the
    policy says so. `model`: anything with cold_policy, cold_min_events, fallback and encoder
    (the torch model, or the ONNX scorer, which must route exactly the same rows)."""
    scores = np.asarray(scores, dtype=np.float64).copy()
    if model.cold_policy == "fallback":
        cold = is_cold(frame, model.cold_min_events)
        if cold.any():
            scores[cold] = model.fallback.predict(x[cold], model.encoder)
    return scores


def save_model_dir(
    model_dir: Path,
    *,
    kind: str,
    spec: NetSpec,
    net: torch.nn.Module,
    encoder: FeatureEncoder,
    fallback: PopularityFallback,
    threshold: float,
    cold_policy: str,
    cold_min_events: int,
    extra: dict | None = None,
) -> Path:
    if cold_policy not in COLD_POLICIES:
        raise ValueError(f"cold_policy must be one of {COLD_POLICIES}, got {cold_policy!r}")
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    meta = {
        "model": "preference",
        "kind": kind,
        "spec": spec.to_dict(),
        "threshold": float(threshold),
        "cold_policy": cold_policy,
        "cold_min_events": int(cold_min_events),
        **(extra or {}),
    }
    (model_dir / META_FILE).write_text(json.dumps(meta, ensure_ascii=False, indent=2, default=str), encoding="utf-8")
    encoder.save(model_dir / ENCODER_FILE)
    fallback.save(model_dir / FALLBACK_FILE)
    torch.save(net.state_dict(), model_dir / WEIGHTS_FILE)
    return model_dir


def _load_dir(model_dir: Path) -> PreferenceModel:
    meta_path = model_dir / META_FILE
    if not meta_path.exists():
        raise FileNotFoundError(f"{model_dir} is not a preference model folder (no {META_FILE})")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    spec = NetSpec(**meta["spec"])
    net = build_net(spec)
    net.load_state_dict(torch.load(model_dir / WEIGHTS_FILE, map_location="cpu", weights_only=True))
    net.eval()
    return PreferenceModel(
        kind=meta["kind"],
        spec=spec,
        encoder=FeatureEncoder.load(model_dir / ENCODER_FILE),
        net=net,
        fallback=PopularityFallback.load(model_dir / FALLBACK_FILE),
        threshold=float(meta["threshold"]),
        cold_policy=meta["cold_policy"],
        cold_min_events=int(meta["cold_min_events"]),
        meta=meta,
        model_dir=model_dir,
    )


def _download(uri: str) -> Path:
    """Local folder of a preference model referenced by an MLflow URI."""
    import mlflow

    from components.tracking import download_artifacts_cached

    local = download_artifacts_cached(uri)
    for candidate in (local, local / MODEL_DIR_ARTIFACT):
        if (candidate / META_FILE).exists():
            return candidate
    # A logged/registered model URI: its source run keeps the model folder next to it.
    run_id = mlflow.models.get_model_info(uri).run_id
    if not run_id:
        raise FileNotFoundError(f"{uri}: no preference model folder and no source run to find one in")
    return download_artifacts_cached(f"runs:/{run_id}/{MODEL_DIR_ARTIFACT}")


def load_preference(model_dir_or_uri: str | Path) -> PreferenceModel:
    """A trained preference model from its folder or an MLflow URI (runs:/, models:/, ...)."""
    ref = str(model_dir_or_uri)
    path = Path(ref)
    if path.exists():
        return _load_dir(path)
    if "://" in ref or ref.startswith(("runs:/", "models:/")):
        return _load_dir(_download(ref))
    raise FileNotFoundError(f"preference model not found: {ref} (neither a folder nor an MLflow URI)")


def score_examples(model: PreferenceModel, samples: pd.DataFrame) -> pd.DataFrame:
    """[example_id, label, score] for a frozen evaluation set (example_id = event_id if absent)."""
    if "example_id" in samples.columns:
        example_id = samples["example_id"].astype(str)
    elif "event_id" in samples.columns:
        example_id = samples["event_id"].astype(str)
    else:
        raise ValueError(f"cannot score examples: neither 'example_id' nor 'event_id' among {sorted(samples.columns)}")
    label_col = model.meta.get("label", "label")
    if label_col not in samples.columns:
        raise ValueError(f"cannot score examples: label column {label_col!r} missing")
    return pd.DataFrame(
        {"example_id": example_id.to_numpy(), "label": samples[label_col].to_numpy(dtype=np.int64), "score": model.predict(samples)}
    )
