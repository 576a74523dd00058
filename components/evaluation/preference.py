"""Evaluation of click models: point metrics with bootstrap 95% intervals, and plots.

Why a *cluster* bootstrap: impressions of one shopper are correlated (same tastes, same
session), so resampling single impressions understates the uncertainty. When `clusters` (the
shopper ids) are given, each resample draws shoppers with replacement and keeps all their
impressions. Every metric of one resample uses the same draw, and a paired comparison of two
models uses the same draw for both, so the interval of the difference accounts for their
correlation.

Metrics come from scikit-learn (ROC AUC, log loss, average precision = PR-AUC, precision /
recall / F1) and torchmetrics (expected calibration error, 15 equal-width bins, L1).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import average_precision_score, log_loss, precision_recall_curve, precision_recall_fscore_support, roc_auc_score
from torchmetrics.functional.classification import binary_calibration_error

ECE_BINS = 15
EPS = 1e-7
Metric = Callable[[np.ndarray, np.ndarray], float]


class EvaluationError(ValueError):
    """Predictions cannot be evaluated as given (shapes, label values, a single class)."""


@dataclass(frozen=True)
class Interval:
    value: float
    low: float
    high: float

    def as_metrics(self, name: str) -> dict[str, float]:
        return {name: self.value, f"{name}_ci_low": self.low, f"{name}_ci_high": self.high}


def _check(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y, p = np.asarray(y, dtype=np.float64).ravel(), np.asarray(p, dtype=np.float64).ravel()
    if len(y) != len(p):
        raise EvaluationError(f"{len(y)} labels but {len(p)} predictions")
    if not np.isin(y, (0.0, 1.0)).all():
        raise EvaluationError(f"labels must be 0/1, got values {np.unique(y)[:5]}")
    if np.isnan(p).any() or (p < 0).any() or (p > 1).any():
        raise EvaluationError("predictions must be probabilities in [0, 1] without NaN")
    return y, p


def both_classes(y: np.ndarray) -> bool:
    return 0 < float(np.sum(y)) < len(y)


# ---------------------------------------------------------------- point metrics


def auc(y: np.ndarray, p: np.ndarray) -> float:
    return float(roc_auc_score(y, p)) if both_classes(y) else float("nan")


def pr_auc(y: np.ndarray, p: np.ndarray) -> float:
    return float(average_precision_score(y, p)) if both_classes(y) else float("nan")


def logloss(y: np.ndarray, p: np.ndarray) -> float:
    return float(log_loss(y, np.clip(p, EPS, 1 - EPS), labels=[0, 1]))


def ece(y: np.ndarray, p: np.ndarray) -> float:
    # Copies: scores may come read-only (a parquet column), which torch warns about.
    scores, labels = torch.tensor(np.asarray(p, dtype=np.float64)), torch.tensor(np.asarray(y, dtype=np.int64))
    return float(binary_calibration_error(scores, labels, n_bins=ECE_BINS, norm="l1"))


def precision_recall_f1(y: np.ndarray, p: np.ndarray, threshold: float) -> tuple[float, float, float]:
    precision, recall, f1, _ = precision_recall_fscore_support(y, (p >= threshold).astype(int), average="binary", zero_division=0)
    return float(precision), float(recall), float(f1)


def choose_threshold(y_valid: np.ndarray, p_valid: np.ndarray) -> float:
    """The decision threshold that maximizes F1 on the validation split (never on test)."""
    y_valid, p_valid = _check(y_valid, p_valid)
    if not both_classes(y_valid):
        raise EvaluationError("cannot choose a threshold: the validation split has a single class")
    precision, recall, thresholds = precision_recall_curve(y_valid, p_valid)
    f1 = 2 * precision * recall / np.maximum(precision + recall, EPS)
    return float(thresholds[int(np.argmax(f1[:-1]))])


# ---------------------------------------------------------------- bootstrap


def bootstrap_indices(n: int, n_boot: int, seed: int, clusters: np.ndarray | None = None) -> Iterator[np.ndarray]:
    """Row indices of `n_boot` resamples (of rows, or of whole clusters when given)."""
    rng = np.random.default_rng(seed)
    if clusters is None:
        for _ in range(n_boot):
            yield rng.integers(0, n, n)
        return
    codes = np.unique(np.asarray(clusters), return_inverse=True)[1]
    order = np.argsort(codes, kind="stable")
    counts = np.bincount(codes)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    for _ in range(n_boot):
        drawn = rng.integers(0, len(counts), len(counts))
        lengths = counts[drawn]
        # Row positions of every drawn cluster, concatenated, without a Python loop.
        offsets = np.repeat(starts[drawn] - (np.cumsum(lengths) - lengths), lengths) + np.arange(lengths.sum())
        yield order[offsets]


def _interval(point: float, samples: list[float], confidence_level: float = 0.95) -> Interval:
    values = np.asarray([s for s in samples if not np.isnan(s)])
    if np.isnan(point) or values.size < 10:
        return Interval(point, float("nan"), float("nan"))
    tail = (1 - confidence_level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return Interval(float(point), float(low), float(high))


def bootstrap_metrics(
    y: np.ndarray,
    p: np.ndarray,
    metrics: dict[str, Metric],
    n_boot: int,
    seed: int,
    clusters: np.ndarray | None = None,
    masks: dict[str, np.ndarray] | None = None,
) -> dict[str, Interval]:
    """Point value and percentile 95% interval of each metric (and of each metric per mask).

    `masks` restrict a metric to a segment: key "auc_new" with metric "auc" and a mask computes
    the AUC on that segment's rows of every resample.
    """
    y, p = _check(y, p)
    segments = {name: np.asarray(mask, dtype=bool) for name, mask in (masks or {}).items()}
    plan: dict[str, tuple[Metric, np.ndarray | None]] = {name: (fn, None) for name, fn in metrics.items()}
    for name, mask in segments.items():
        base = name.split("__", 1)[0]
        plan[name] = (metrics[base], mask)
    def evaluate(yv: np.ndarray, pv: np.ndarray, rows: np.ndarray | None) -> dict[str, float]:
        values: dict[str, float] = {}
        for name, (fn, mask) in plan.items():
            keep = None if mask is None else mask[rows] if rows is not None else mask
            if keep is not None and not keep.any():
                result = tuple(float("nan") for _ in name.split(","))
            else:
                result = fn(yv, pv) if keep is None else fn(yv[keep], pv[keep])
            # A metric named "a,b,c" returns a tuple of three values.
            parts = name.split(",")
            values.update(zip(parts, result if len(parts) > 1 else (result,)))
        return values

    points = evaluate(y, p, None)
    samples: dict[str, list[float]] = {name: [] for name in points}
    for idx in bootstrap_indices(len(y), n_boot, seed, clusters):
        for name, value in evaluate(y[idx], p[idx], idx).items():
            samples[name].append(value)
    return {name: _interval(points[name], samples[name]) for name in points}


def paired_difference(
    y: np.ndarray,
    p_a: np.ndarray,
    p_b: np.ndarray,
    metric: Metric,
    n_boot: int,
    seed: int,
    clusters: np.ndarray | None = None,
    confidence_level: float = 0.95,
) -> Interval:
    """metric(a) - metric(b) with a paired bootstrap interval (same resamples for both)."""
    y, p_a = _check(y, p_a)
    _, p_b = _check(y, p_b)
    point = metric(y, p_a) - metric(y, p_b)
    diffs = [metric(y[i], p_a[i]) - metric(y[i], p_b[i]) for i in bootstrap_indices(len(y), n_boot, seed, clusters)]
    return _interval(point, diffs, confidence_level)


# ---------------------------------------------------------------- the report of one model


def evaluate_model(
    y: np.ndarray,
    p: np.ndarray,
    *,
    threshold: float,
    n_boot: int,
    seed: int,
    clusters: np.ndarray | None = None,
    segments: dict[str, np.ndarray] | None = None,
) -> dict[str, float]:
    """Flat metrics: auc, logloss, pr_auc, ece, precision, recall, f1 (each + _ci_low/_ci_high),
    threshold, n, positives, and `auc_<segment>` (+ CI) for every segment mask given."""
    y, p = _check(y, p)
    if not both_classes(y):
        raise EvaluationError(f"cannot evaluate on {len(y)} rows with a single class (positives={int(y.sum())})")
    metrics: dict[str, Metric] = {
        "auc": auc,
        "logloss": logloss,
        "pr_auc": pr_auc,
        "ece": ece,
        # One call gives all three (sklearn's validation overhead dominates on small resamples).
        "precision,recall,f1": lambda a, b: precision_recall_f1(a, b, threshold),
    }
    masks = {f"auc__{name}": mask for name, mask in (segments or {}).items()}
    intervals = bootstrap_metrics(y, p, metrics, n_boot, seed, clusters, masks)
    flat: dict[str, float] = {"threshold": float(threshold), "n": float(len(y)), "positives": float(y.sum())}
    for name, interval in intervals.items():
        key = name.replace("auc__", "auc_") if name.startswith("auc__") else name
        flat.update(interval.as_metrics(key))
    for name, mask in (segments or {}).items():
        flat[f"n_{name}"] = float(np.sum(mask))
        flat[f"positives_{name}"] = float(np.sum(y[np.asarray(mask, dtype=bool)]))
    return flat


# ---------------------------------------------------------------- plots


def plot_curves(curves: dict[str, tuple[np.ndarray, np.ndarray]], out_dir: Path, title: str = "") -> list[Path]:
    """ROC, precision-recall and reliability diagrams of several scorers on the same rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.calibration import calibration_curve
    from sklearn.metrics import roc_curve

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    kinds = ("roc", "pr", "reliability")
    for kind in kinds:
        fig, ax = plt.subplots(figsize=(5, 5))
        for name, (y, p) in curves.items():
            y, p = _check(y, p)
            if kind == "roc":
                fpr, tpr, _ = roc_curve(y, p)
                ax.plot(fpr, tpr, label=f"{name} (AUC {auc(y, p):.3f})")
            elif kind == "pr":
                precision, recall, _ = precision_recall_curve(y, p)
                ax.plot(recall, precision, label=f"{name} (AP {pr_auc(y, p):.3f})")
            else:
                # Quantile bins: click rates are small, equal-width bins would put nearly all rows in one.
                frac_pos, mean_pred = calibration_curve(y, p, n_bins=10, strategy="quantile")
                ax.plot(mean_pred, frac_pos, marker="o", label=f"{name} (ECE {ece(y, p):.3f})")
        if kind == "roc":
            ax.plot([0, 1], [0, 1], "k:", lw=1)
            ax.set(xlabel="false positive rate", ylabel="true positive rate")
        elif kind == "pr":
            ax.set(xlabel="recall", ylabel="precision")
        else:
            top = max(float(np.max(p)) for _, p in curves.values())
            ax.plot([0, top], [0, top], "k:", lw=1)
            ax.set(xlabel="mean predicted probability", ylabel="observed click rate")
        ax.set_title(f"{title} {kind}".strip())
        ax.legend(loc="best", fontsize=8)
        path = out_dir / f"{kind}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths
