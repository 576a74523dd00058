"""Tiny real models for registry tests: trained, logged to MLflow and registered for real.

- preference: a numpy logistic regression on synthetic click data (four features), logged as an
  MLflow pyfunc; a "degraded" one is trained on shuffled labels (it learns nothing).
- generator: a template writer that turns the attribute values of a corpus row into a copy;
  a "degraded" one appends a word the advertising law forbids.
Scorers produce the per-example frames the gates expect, exactly as the real families' APIs do.
Module-level (importable) so spawned processes and the Prefect worker can unpickle the models.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

from components import tracking
from components.config import Config
from components.data.attributes import parse_attributes
from components.evaluation.text_metrics import banned_occurrences, bleu4

FEATURES = ["x1", "x2", "x3", "x4"]
TRUE_WEIGHTS = np.array([1.6, -1.1, 0.7, 0.0])
ROOT = Path(__file__).resolve().parents[2]


def write_samples(cfg: Config, n: int = 1600, seed: int = 0, shift: float = 0.0) -> Path:
    """features/samples.parquet: synthetic impressions with a known click model, time-split."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, len(FEATURES))) + shift
    p = 1 / (1 + np.exp(-(x @ TRUE_WEIGHTS - 0.8)))
    frame = pd.DataFrame(x, columns=FEATURES)
    frame.insert(0, "event_id", [f"e{seed}-{i}" for i in range(n)])
    frame.insert(1, "user_id", [f"u{i % 160}" for i in range(n)])  # ten impressions a shopper: the gate resamples shoppers
    frame["label"] = (rng.random(n) < p).astype(int)
    frame["split"] = np.where(np.arange(n) < int(n * 0.6), "train", np.where(np.arange(n) < int(n * 0.7), "valid", "test"))
    path = cfg.stage_dir("features") / "samples.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path, index=False)
    return path


def fit_logistic(x: np.ndarray, y: np.ndarray, steps: int = 300, lr: float = 0.5) -> np.ndarray:
    """Plain gradient descent on the log loss (weights + bias): small, deterministic, real."""
    xb = np.hstack([x, np.ones((len(x), 1))])
    w = np.zeros(xb.shape[1])
    for _ in range(steps):
        p = 1 / (1 + np.exp(-(xb @ w)))
        w -= lr * xb.T @ (p - y) / len(y)
    return w


class LogisticPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        self.weights = np.array(json.loads(Path(context.artifacts["weights"]).read_text()))

    def predict(self, context, model_input, params=None):
        x = np.hstack([model_input[FEATURES].to_numpy(dtype=float), np.ones((len(model_input), 1))])
        return 1 / (1 + np.exp(-(x @ self.weights)))


class TemplateGenerator(mlflow.pyfunc.PythonModel):
    """Writes '<values>，<suffix>' from an attribute string; `suffix` is what the version learned."""

    def load_context(self, context):
        self.suffix = Path(context.artifacts["suffix"]).read_text(encoding="utf-8")

    def predict(self, context, model_input, params=None):
        copies = []
        for content in model_input["content"]:
            values = [v for vs in parse_attributes(content).values() for v in vs]
            copies.append("这款" + "".join(values) + "，" + self.suffix)
        return copies


def _log(cfg: Config, name: str, python_model, artifacts: dict[str, str], metrics: dict, family: str) -> dict:
    tracking.configure(cfg)
    with mlflow.start_run(run_name=name) as run:
        mlflow.log_metrics(metrics)
        info = mlflow.pyfunc.log_model(
            name="model", python_model=python_model, artifacts=artifacts, pip_requirements=["mlflow", "numpy", "pandas"]
        )
    return {
        "model": family,
        "run_id": run.info.run_id,
        "model_uri": f"runs:/{run.info.run_id}/model",
        "onnx_uri": None,
        "model_dir": None,
        "metrics": metrics,
        "logged_model_uri": info.model_uri,
    }


def train_preference(cfg: Config, tmp: Path, *, shuffled: bool = False, n_features: int = 4, seed: int = 0) -> dict:
    """Fit on the train split of features/samples.parquet, log as pyfunc, return a training manifest.

    n_features < 4 hides the other features (a weaker model); shuffled labels = a model that learned nothing.
    """
    samples = pd.read_parquet(cfg.stage_dir("features") / "samples.parquet")
    train = samples[samples["split"] == "train"]
    y = train["label"].to_numpy(dtype=float)
    if shuffled:
        y = np.random.default_rng(seed).permutation(y)
    x = np.array(train[FEATURES].to_numpy(dtype=float))  # a writable copy
    x[:, n_features:] = 0.0
    weights = fit_logistic(x, y)
    path = tmp / f"weights-{seed}-{int(shuffled)}-{n_features}.json"
    path.write_text(json.dumps(weights.tolist()))
    test = samples[samples["split"] == "test"]
    xt = np.hstack([test[FEATURES].to_numpy(dtype=float), np.ones((len(test), 1))])
    from sklearn.metrics import roc_auc_score

    auc = float(roc_auc_score(test["label"], 1 / (1 + np.exp(-(xt @ weights)))))
    return _log(cfg, "train_preference", LogisticPyfunc(), {"weights": str(path)}, {"auc": auc, "ece": 0.02}, "preference")


def train_generator(cfg: Config, tmp: Path, *, suffix: str = "穿着舒适又好看。") -> dict:
    path = tmp / f"suffix-{abs(hash(suffix))}.txt"
    path.write_text(suffix, encoding="utf-8")
    return _log(cfg, "train_generator", TemplateGenerator(), {"suffix": str(path)}, {"bleu4": 5.0, "rougeL": 10.0}, "generator")


def score_preference(model_ref: str, rows: pd.DataFrame) -> pd.DataFrame:
    model = mlflow.pyfunc.load_model(model_ref)
    return pd.DataFrame(
        {"example_id": rows["example_id"], "label": rows["label"], "score": np.asarray(model.predict(rows[FEATURES]))}
    )


def score_generator(model_ref: str, rows: pd.DataFrame) -> pd.DataFrame:
    model = mlflow.pyfunc.load_model(model_ref)
    copies = list(model.predict(rows[["content"]]))
    words = [w.strip() for w in (ROOT / "components/resources/ad_law_words.txt").read_text(encoding="utf-8").splitlines()]
    words = [w for w in words if w and not w.startswith("#")]
    values = [{v for vs in a.values() for v in vs} for a in rows["attributes"]]
    return pd.DataFrame(
        {
            "example_id": rows["example_id"],
            "copy": copies,  # the gate re-counts ad-law words and contradictions from the copies themselves
            "bleu4": [bleu4(c, r) for c, r in zip(copies, rows["summary"])],
            # the template only restates input values, so a copy hallucinates iff it names none of them
            "hallucinated": [not any(v in c for v in vs) for c, vs in zip(copies, values)],
            "unlisted": [not any(v in c for v in vs) for c, vs in zip(copies, values)],
            "ad_law_violations": [len(banned_occurrences(c, words)) for c in copies],
        }
    )


SCORERS = {"preference": score_preference, "generator": score_generator}

