"""Evaluation of click models: metrics, bootstrap intervals, thresholds, plots."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from components.evaluation.preference import (
    EPS,
    EvaluationError,
    bootstrap_indices,
    bootstrap_metrics,
    choose_threshold,
    ece,
    evaluate_model,
    logloss,
    paired_difference,
    auc,
    plot_curves,
    precision_recall_f1,
)


def _scored(n: int = 4000, signal: float = 2.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=n)
    p_true = 1 / (1 + np.exp(-(-2.0 + signal * z)))
    y = (rng.uniform(size=n) < p_true).astype(float)
    return y, p_true, z


def test_cluster_bootstrap_draws_whole_clusters():
    clusters = np.repeat(np.arange(50), np.arange(1, 51))  # cluster c has c + 1 rows
    for idx in bootstrap_indices(len(clusters), 5, seed=1, clusters=clusters):
        drawn = clusters[idx]
        values, counts = np.unique(drawn, return_counts=True)
        # every drawn cluster appears a whole number of times its size
        assert all(count % (value + 1) == 0 for value, count in zip(values, counts))
        assert len(np.unique(idx)) == sum(v + 1 for v in values)


def test_intervals_cover_the_point_and_narrow_with_more_data():
    y, p, _ = _scored(n=2000)
    small = evaluate_model(y[:500], p[:500], threshold=0.2, n_boot=100, seed=0)
    large = evaluate_model(y, p, threshold=0.2, n_boot=100, seed=0)
    for metrics in (small, large):
        for name in ("auc", "logloss", "pr_auc", "ece", "f1"):
            assert metrics[f"{name}_ci_low"] <= metrics[name] <= metrics[f"{name}_ci_high"], name
    assert large["auc"] == pytest.approx(roc_auc_score(y, p))
    width = lambda m: m["auc_ci_high"] - m["auc_ci_low"]  # noqa: E731
    assert width(large) < width(small)


def test_calibrated_scores_have_small_ece_and_miscalibrated_large():
    y, p, _ = _scored(n=20000)
    assert ece(y, p) < 0.02
    assert ece(y, np.clip(p * 2.5, 0, 1)) > 0.1


def test_segments_are_reported_with_their_own_interval():
    y, p, z = _scored()
    segments = {"high": z > 0, "low": z <= 0}
    metrics = evaluate_model(y, p, threshold=0.2, n_boot=100, seed=0, segments=segments)
    assert metrics["auc_high"] == pytest.approx(roc_auc_score(y[z > 0], p[z > 0]))
    assert metrics["n_low"] == float((z <= 0).sum())
    assert metrics["auc_low_ci_low"] < metrics["auc_low"] < metrics["auc_low_ci_high"]


def test_paired_difference_separates_a_better_model_and_not_a_copy():
    y, p, z = _scored()
    noisy = 1 / (1 + np.exp(-(-2.0 + 2.0 * z + np.random.default_rng(3).normal(scale=2.0, size=len(z)))))
    better = paired_difference(y, p, noisy, auc, n_boot=200, seed=0)
    assert better.value > 0 and better.low > 0
    same = paired_difference(y, p, p, auc, n_boot=50, seed=0)
    assert same.value == 0 and same.low == 0 and same.high == 0


def test_threshold_is_chosen_by_f1_on_validation():
    y, p, _ = _scored()
    threshold = choose_threshold(y, p)
    f1_at = lambda t: evaluate_model(y, p, threshold=t, n_boot=0, seed=0)["f1"]  # noqa: E731
    assert f1_at(threshold) >= max(f1_at(t) for t in (0.05, 0.1, 0.3, 0.5, 0.7))


def test_bad_inputs_are_rejected():
    with pytest.raises(EvaluationError, match="single class"):
        evaluate_model(np.zeros(10), np.full(10, 0.1), threshold=0.5, n_boot=10, seed=0)
    with pytest.raises(EvaluationError, match="0/1"):
        evaluate_model(np.array([0, 2]), np.array([0.1, 0.2]), threshold=0.5, n_boot=10, seed=0)
    with pytest.raises(EvaluationError, match="2 labels but 3"):
        evaluate_model(np.array([0, 1]), np.array([0.1, 0.2, 0.3]), threshold=0.5, n_boot=10, seed=0)
    with pytest.raises(EvaluationError, match="single class"):  # only clicks is a single class too
        evaluate_model(np.ones(10), np.full(10, 0.9), threshold=0.5, n_boot=10, seed=0)
    for outside in (-0.1, 1.2, np.nan):  # a logit or a percentage is no probability
        with pytest.raises(EvaluationError, match="probabilities in \\[0, 1\\]"):
            evaluate_model(np.array([0, 1]), np.array([0.1, outside]), threshold=0.5, n_boot=10, seed=0)


def test_saturated_scores_give_a_bounded_logloss():
    # a float32 sigmoid rounds to exactly 0 or 1: each wrong certainty costs -log(EPS), not infinity
    assert logloss(np.array([1, 0]), np.array([0.0, 1.0])) == pytest.approx(-np.log(EPS))
    assert math.isnan(auc(np.ones(4), np.full(4, 0.5)))


def test_plots_are_written(tmp_path):
    y, p, _ = _scored(n=500)
    paths = plot_curves({"model": (y, p), "noise": (y, np.random.default_rng(0).uniform(size=500))}, tmp_path)
    assert [path.name for path in paths] == ["roc.png", "pr.png", "reliability.png"]
    assert all(path.stat().st_size > 5000 for path in paths)


def test_shopper_resamples_draw_whole_shoppers_with_replacement():
    shoppers = np.array(["a", "b", "a", "c", "b", "a", "d", "d"])
    drawn = list(bootstrap_indices(len(shoppers), 50, seed=0, clusters=shoppers))
    sizes = {s: int((shoppers == s).sum()) for s in set(shoppers)}
    for rows in drawn:  # every drawn shopper comes with all of their rows, as often as drawn
        picked = shoppers[rows]
        assert all((picked == s).sum() % sizes[s] == 0 for s in set(picked))
    assert any(len(set(shoppers[rows])) < 4 for rows in drawn)  # with replacement: some shopper left out
    assert len({tuple(sorted(rows)) for rows in drawn}) > 1


def test_a_score_at_the_threshold_counts_as_a_click():
    # choose_threshold returns a validation score itself (sklearn's curve predicts 1 at p >= threshold)
    y, p = np.array([0, 1, 1]), np.array([0.2, 0.6, 0.9])
    assert choose_threshold(y, p) == pytest.approx(0.6)
    assert precision_recall_f1(y, p, 0.6) == (1.0, 1.0, 1.0)


def test_resamples_without_a_click_are_left_out_of_the_interval_not_counted_as_chance():
    # 2 clicks in 20 rows: about a third of the resamples draw neither and have no AUC
    y = np.zeros(20)
    y[[3, 11]] = 1
    interval = bootstrap_metrics(y, 0.05 + 0.9 * y, {"auc": auc}, n_boot=200, seed=0)["auc"]
    assert (interval.value, interval.low, interval.high) == (1.0, 1.0, 1.0)  # a perfect ranking in every defined resample
