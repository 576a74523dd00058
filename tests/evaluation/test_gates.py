"""Gate rules on synthetic per-example frames: floors, guardrails, paired non-inferiority, report."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score
from torchmetrics.functional.classification import binary_calibration_error

from components.evaluation.gates import (
    GateInputError,
    GateResult,
    auc_by_ranks,
    evaluate_gate,
    expected_calibration_error,
    generator_gate,
    paired_bootstrap_delta,
    preference_gate,
    render_report,
)
from components.evaluation.preference import auc, paired_difference


def preference_frame(n: int = 3000, signal: float = 1.0, seed: int = 0, noise_seed: int | None = None) -> pd.DataFrame:
    """Calibrated-ish click scores whose ranking quality grows with `signal` (same labels per seed)."""
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=n)
    label = (rng.random(n) < 1 / (1 + np.exp(-2 * latent))).astype(int)
    noise = np.random.default_rng(noise_seed if noise_seed is not None else seed + 1).normal(size=n)
    score = 1 / (1 + np.exp(-(2 * (signal * latent + (1 - signal) * noise))))
    return pd.DataFrame({"example_id": [f"x{i}" for i in range(n)], "label": label, "score": score})


def generator_frame(n: int = 60, bleu: float = 8.0, hallucinated: int = 0, violations: int = 0, seed: int = 0, unlisted: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "example_id": [f"g{i}" for i in range(n)],
            "bleu4": np.clip(rng.normal(bleu, 2.0, n), 0, 100),
            "rougeL": rng.normal(20, 3, n),
            "hallucinated": [i < hallucinated for i in range(n)],
            "unlisted": [i < max(hallucinated, unlisted) for i in range(n)],  # a contradiction is unlisted too
            "ad_law_violations": [1 if i < violations else 0 for i in range(n)],
        }
    )


def test_auc_by_ranks_equals_sklearn_with_ties_and_vectorized():
    frame = preference_frame()
    scores = np.round(frame["score"].to_numpy(), 2)  # ties
    assert auc_by_ranks(frame["label"].to_numpy(), scores) == pytest.approx(roc_auc_score(frame["label"], scores))
    batch = np.stack([scores, 1 - scores])
    labels = np.stack([frame["label"].to_numpy()] * 2)
    np.testing.assert_allclose(auc_by_ranks(labels, batch), [roc_auc_score(frame["label"], scores), roc_auc_score(frame["label"], 1 - scores)])


def test_ece_matches_torchmetrics():
    frame = preference_frame(signal=0.6)
    scores = np.array(frame["score"])  # a writable copy
    scores[:2] = [0.0, 1.0]  # the edges of the bins
    expected = binary_calibration_error(torch.tensor(scores, dtype=torch.float64), torch.tensor(frame["label"].to_numpy()), n_bins=15)
    assert expected_calibration_error(frame["label"].to_numpy(), scores) == pytest.approx(float(expected), abs=1e-9)


def test_paired_bootstrap_interval_is_zero_for_identical_models_and_covers_a_real_gap():
    frame = preference_frame()
    labels, scores = frame["label"].to_numpy(), frame["score"].to_numpy()
    delta, low, high = paired_bootstrap_delta(auc_by_ranks, (scores,), (scores,), (labels,), n_resamples=200, confidence_level=0.95, seed=0)
    assert delta == low == high == 0.0
    worse = preference_frame(signal=0.5)["score"].to_numpy()
    delta, low, high = paired_bootstrap_delta(auc_by_ranks, (scores,), (worse,), (labels,), n_resamples=300, confidence_level=0.95, seed=0)
    assert low < delta < high and low > 0  # the better model is significantly better


def test_the_interval_resamples_shoppers_when_given_them(gates):
    # 40 shoppers x 50 impressions; the candidate shifts each shopper's scores by an amount of
    # its own, so the AUC difference depends on which shoppers are drawn: resampling single
    # impressions treats 2,000 correlated rows as independent and understates the interval.
    rng = np.random.default_rng(0)
    shopper = np.repeat(np.arange(40), 50)
    labels = (rng.random(2000) < 0.3).astype(int)
    champion = np.clip(0.3 + 0.3 * labels + rng.normal(0, 0.15, 2000), 0, 1)
    candidate = np.clip(champion + rng.normal(0, 0.2, 40)[shopper], 0, 1)
    _, row_low, row_high = paired_bootstrap_delta(auc_by_ranks, (candidate,), (champion,), (labels,), n_resamples=400, confidence_level=0.95, seed=0)
    clustered = paired_difference(labels, candidate, champion, auc, 400, 0, shopper, confidence_level=0.95)
    assert clustered.high - clustered.low > 1.5 * (row_high - row_low)
    frame = pd.DataFrame({"example_id": [f"e{i}" for i in range(2000)], "label": labels, "score": candidate})
    champ = frame.assign(score=champion)
    clusters = pd.Series(shopper.astype(str), index=frame["example_id"])
    result = preference_gate(gates, frame, champ, clusters=clusters)
    rule = next(r for r in result.rules if r.kind == "non_inferiority")
    assert rule.ci_high - rule.ci_low > 1.5 * (row_high - row_low)  # the gate resamples shoppers too
    with pytest.raises(GateInputError, match="have no shopper"):
        preference_gate(gates, frame, champ, clusters=clusters.iloc[:-3])


def test_an_auc_interval_from_one_clicking_shopper_is_inconclusive(gates):
    """60 shoppers, every click from one of them: a third of the shopper resamples hold no click
    and have no AUC. The interval of the others was tight (+0.165 [+0.155, +0.175]) and passed;
    now the rule fails, inconclusive."""
    rng = np.random.default_rng(1)
    shopper = np.repeat(np.arange(60), 40)
    labels = ((shopper == 7) & (rng.random(2400) < 0.5)).astype(int)
    champion = np.clip(0.05 + 0.02 * labels + rng.normal(0, 0.02, 2400), 0.001, 1)
    candidate = np.clip(champion + 0.03 * labels, 0.001, 1)
    frame = pd.DataFrame({"example_id": [f"e{i}" for i in range(2400)], "label": labels, "score": candidate})
    clusters = pd.Series(shopper.astype(str), index=frame["example_id"])
    rule = next(r for r in preference_gate(gates, frame, frame.assign(score=champion), clusters=clusters).rules if r.metric == "auc" and r.kind == "non_inferiority")
    assert not rule.passed and rule.note.startswith("inconclusive:") and "too few shoppers" in rule.note
    assert rule.ci_low > -gates.non_inferiority_margin  # the interval alone would have passed it
    spread = frame.assign(label=(rng.random(2400) < 0.1).astype(int))  # clicks from every shopper
    rule = next(r for r in preference_gate(gates, spread, spread, clusters=clusters).rules if r.metric == "auc" and r.kind == "non_inferiority")
    assert rule.passed


def test_first_release_passes_on_floors_and_guardrails_alone(gates):
    result = preference_gate(gates, preference_frame())
    assert result.passed and result.champion_label is None and result.n_resamples == 0
    [relative] = [r for r in result.rules if r.kind == "non_inferiority"]
    assert relative.passed and relative.note == "first release" and relative.ci_low is None
    weak = preference_gate(gates, preference_frame(signal=0.02))  # almost no signal left
    assert not weak.passed and "floor:auc" in [f"{r.kind}:{r.metric}" for r in weak.failures()]


def test_non_inferiority_rejects_a_clearly_worse_candidate_and_accepts_an_equal_one(gates):
    champion = preference_frame(signal=0.9)
    worse = preference_gate(gates, preference_frame(signal=0.5), champion)
    rule = next(r for r in worse.rules if r.kind == "non_inferiority")
    assert not rule.passed and rule.ci_low < -gates.non_inferiority_margin and rule.champion > rule.candidate
    assert next(r for r in worse.rules if r.kind == "floor").passed  # above the floor, still rejected
    assert rule.note == ""  # clearly worse: no excuse in the report
    same = preference_gate(gates, champion.sample(frac=1.0, random_state=1), champion)  # row order must not matter
    assert same.passed and next(r for r in same.rules if r.kind == "non_inferiority").delta == 0.0


def test_a_small_frozen_set_that_cannot_show_non_inferiority_says_so(gates):
    """Equal models on 300 rows: the interval is wider than the margin, and the report says that
    this, not a worse candidate, is why the rule fails."""
    champion = preference_frame(n=300, signal=0.7, noise_seed=5)
    candidate = preference_frame(n=300, signal=0.7, noise_seed=14)  # same labels, other noise: delta -0.001
    rule = next(r for r in preference_gate(gates, candidate, champion).rules if r.kind == "non_inferiority")
    assert not rule.passed and rule.delta > -gates.non_inferiority_margin
    assert rule.note.startswith("inconclusive: the interval is") and "a larger frozen set can decide" in rule.note
    report = render_report([preference_gate(gates, candidate, champion)])
    assert "**FAIL** (inconclusive: the interval is" in report


def test_ece_guardrail(gates):
    frame = preference_frame()
    logit = np.log(frame["score"] / (1 - frame["score"]))
    frame["score"] = 1 / (1 + np.exp(-3 * logit))  # same ranking and mean, over-confident
    result = preference_gate(gates, frame)
    assert [f"{r.kind}:{r.metric}" for r in result.failures()] == ["guardrail:ece"]
    frame["score"] = np.clip(frame["score"] + 0.3, 0, 1)  # and too high on average
    assert [r.metric for r in preference_gate(gates, frame).failures()] == ["ece", "calibration_ratio_error"]


def test_generator_guardrails_hold_exactly(gates):
    assert generator_gate(gates, generator_frame()).passed
    one_violation = generator_gate(gates, generator_frame(violations=1))
    assert [f"{r.kind}:{r.metric}" for r in one_violation.failures()] == ["guardrail:ad_law_violations"]
    hallucinating = generator_gate(gates, generator_frame(hallucinated=3))
    assert [f"{r.kind}:{r.metric}" for r in hallucinating.failures()] == ["guardrail:hallucination_rate", "guardrail:unlisted_rate"]
    # 3 of 60 copies (5%) name a value the product does not list, none contradicting one
    inventing = generator_gate(gates, generator_frame(unlisted=3))
    assert [f"{r.kind}:{r.metric}" for r in inventing.failures()] == ["guardrail:unlisted_rate"]
    assert generator_gate(gates, generator_frame(unlisted=1)).passed  # 1.7%: within max_unlisted_rate
    low_bleu = generator_gate(gates, generator_frame(bleu=1.0))
    assert "floor:bleu4" in [f"{r.kind}:{r.metric}" for r in low_bleu.failures()]
    at_floor = generator_frame().assign(bleu4=3.0)  # a floor is reached at exactly its value
    assert generator_gate(gates.model_copy(update={"generator_bleu4_min": 3.0}), at_floor).passed
    assert not generator_gate(gates.model_copy(update={"generator_bleu4_min": 3.01}), at_floor).passed


def test_generator_non_inferiority_on_bleu(gates):
    champion = generator_frame(bleu=10.0)
    worse = generator_frame(bleu=10.0)
    worse["bleu4"] = worse["bleu4"] - 2.0  # paired: the same rows, 2 points worse each
    result = generator_gate(gates, worse, champion)
    rule = next(r for r in result.rules if r.kind == "non_inferiority")
    assert rule.delta == pytest.approx(-2.0) and not rule.passed
    assert evaluate_gate("generator", gates, champion, champion).passed


def test_frames_scored_on_different_rows_are_refused(gates):
    candidate = preference_frame()
    with pytest.raises(GateInputError, match="not scored on the same frozen snapshot rows"):
        preference_gate(gates, candidate, candidate.iloc[:-5])
    renamed = candidate.assign(example_id=candidate["example_id"].replace({"x0": "y0"}))  # as many rows, not the same
    with pytest.raises(GateInputError, match="only candidate e.g. \\['x0'\\], only champion e.g. \\['y0'\\]"):
        preference_gate(gates, candidate, renamed)
    with pytest.raises(GateInputError, match="miss columns \\['score'\\]"):
        preference_gate(gates, candidate.drop(columns=["score"]))
    with pytest.raises(GateInputError, match="repeat example ids"):
        preference_gate(gates, pd.concat([candidate, candidate.iloc[:1]]))
    with pytest.raises(GateInputError, match="disagree on labels"):  # the same rows, other clicks
        preference_gate(gates, candidate, candidate.assign(label=1 - candidate["label"]))
    with pytest.raises(GateInputError, match="need at least 10 of each"):
        preference_gate(gates, candidate.assign(label=0).iloc[:50])
    with pytest.raises(GateInputError, match="no release gate is defined for model family 'effect'"):
        evaluate_gate("effect", gates, candidate)


def test_report_is_a_markdown_table_and_round_trips(gates):
    result = preference_gate(gates, preference_frame(signal=0.5), preference_frame(signal=0.9), snapshot="f" * 64, champion_label="release 3")
    report = render_report([result])
    assert report.startswith("## Release gate report: **FAIL**")
    assert "| metric | candidate | champion | delta [95% CI] | rule | verdict |" in report
    row = next(line for line in report.splitlines() if "non_inferiority" in line)
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[0] == "auc" and cells[-1] == "**FAIL**" and "[" in cells[3]
    assert GateResult.from_dict(result.to_dict()).to_markdown() == result.to_markdown()


def choice_frames(n: int = 6000, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Impressions of products with 3 copies, the shown one drawn uniformly; one copy clicks at
    0.15, the others at 0.05. Frames of a model that always chooses the good copy, one that
    chooses it half the time, and one that always chooses a poor copy (choice_weight = 3 where
    its choice is the shown copy, else 0)."""
    rng = np.random.default_rng(seed)
    shown = rng.integers(3, size=n)  # copy 0 is the good one
    label = (rng.random(n) < np.where(shown == 0, 0.15, 0.05)).astype(int)
    click_rate = np.where(shown == 0, 0.15, 0.05)  # calibrated scores: the AUC floor and ECE guardrail hold
    base = pd.DataFrame({"example_id": [f"c{i}" for i in range(n)], "label": label, "score": click_rate + rng.normal(0, 0.005, n)})
    half = np.where(rng.random(n) < 0.5, 0, 1)
    good, mixed, poor = (base.assign(choice_weight=3.0 * (shown == pick)) for pick in (0, half, 1))
    return good, mixed, poor


def test_copy_choice_must_not_get_measurably_worse(gates):
    good, mixed, poor = choice_frames()
    clusters = pd.Series([f"s{i % 500}" for i in range(len(good))], index=good["example_id"])
    first = next(r for r in preference_gate(gates, good, clusters=clusters).rules if r.metric == "copy_choice_lift")
    assert first.passed and first.note == "first release" and first.candidate > 0.5  # 0.15 / (0.25 / 3) - 1 = +0.8
    worse = preference_gate(gates, poor, good, clusters=clusters)
    rule = next(r for r in worse.rules if r.metric == "copy_choice_lift")
    assert not worse.passed and not rule.passed and rule.ci_high < 0 and rule.candidate < 0 < rule.champion
    assert all(r.passed for r in worse.rules if r.metric != "copy_choice_lift")  # its AUC is the same
    same = next(r for r in preference_gate(gates, good, good, clusters=clusters).rules if r.metric == "copy_choice_lift")
    assert same.passed and same.delta == 0.0
    better = next(r for r in preference_gate(gates, good, mixed, clusters=clusters).rules if r.metric == "copy_choice_lift")
    assert better.passed and better.ci_low > 0
    # Not measurable: no options frozen (OBD), too few matches, a champion scored before the rule.
    assert all(r.metric != "copy_choice_lift" for r in preference_gate(gates, good.drop(columns="choice_weight")).rules)
    few = good.assign(choice_weight=np.where(np.arange(len(good)) < 30, good["choice_weight"], np.nan))
    note = next(r for r in preference_gate(gates, few, good).rules if r.metric == "copy_choice_lift").note
    assert note.startswith("not measured:")
    old = next(r for r in preference_gate(gates, good, poor.drop(columns="choice_weight")).rules if r.metric == "copy_choice_lift")
    assert old.passed and "not compared" in old.note
    assert all(r.metric != "copy_choice_lift" for r in preference_gate(gates, good.assign(choice_weight=np.nan)).rules)


def test_a_copy_choice_verdict_needs_clicks_from_more_than_a_few_shoppers(gates):
    """Ten clicks, all from one shopper, all on copies both models chose: most shopper resamples
    hold none of them, so no verdict is drawn (the rule reads `not measured`), whichever way."""
    good, _, poor = choice_frames()
    shoppers = pd.Series([f"s{i % 100}" for i in range(len(good))], index=good["example_id"])
    one_shopper = good["example_id"].map(shoppers).eq("s7").to_numpy()
    label = (one_shopper & (good["choice_weight"] > 0)).astype(int).to_numpy().copy()
    label[np.flatnonzero(label)[10:]] = 0
    cand, champ = good.assign(label=label), poor.assign(label=label, choice_weight=np.where(label > 0, 3.0, poor["choice_weight"]))
    for a, b in ((cand, champ), (champ, cand)):
        rule = next(r for r in _choice_only(gates, a, b, shoppers) if r.metric == "copy_choice_lift")
        assert rule.passed and rule.note.startswith("not measured") and "hold no click on a chosen copy" in rule.note and rule.ci_low is None
    assert label.sum() == 10
    # Other shoppers' clicks on copies neither model chose: every resample now has a click, so
    # no lift is NaN, but most still hold no click on a chosen copy. Before, the rule counted
    # only NaN lifts and drew a verdict from the one shopper.
    elsewhere = (~one_shopper) & (cand["choice_weight"] == 0).to_numpy() & (champ["choice_weight"] == 0).to_numpy()
    label[np.flatnonzero(elsewhere)[::5]] = 1
    cand, champ = cand.assign(label=label), champ.assign(label=label)
    rule = next(r for r in _choice_only(gates, cand, champ, shoppers) if r.metric == "copy_choice_lift")
    assert rule.passed and rule.note.startswith("not measured") and rule.ci_low is None


def _choice_only(gates, candidate, champion, clusters):
    from components.evaluation.gates import _copy_choice_rule

    return [_copy_choice_rule(gates, candidate, champion, 0, clusters)]


@pytest.fixture
def gates(cfg):
    return cfg.gates.model_copy(update={"bootstrap_resamples": 300})


def test_scores_at_half_the_true_click_rate_pass_ece_but_not_the_calibration_ratio(cfg):
    # At a 7% click rate the absolute ECE gap of halved scores is ~0.035, under max_ece 0.05.
    rng = np.random.default_rng(3)
    p = 1 / (1 + np.exp(-(1.2 * rng.normal(size=20000) - 3.0)))
    label = (rng.random(p.size) < p).astype(int)
    frame = pd.DataFrame({"example_id": [f"x{i}" for i in range(p.size)], "label": label, "score": p})
    calibrated = preference_gate(cfg.gates, frame)
    halved = preference_gate(cfg.gates, frame.assign(score=p * 0.5))
    rule = {r.metric: r for r in halved.rules}
    assert 0.05 < label.mean() < 0.1 and calibrated.passed
    assert rule["ece"].passed and not rule["calibration_ratio_error"].passed
    assert rule["calibration_ratio_error"].candidate == pytest.approx(0.5, abs=0.05)
    assert "calibration_ratio_error" in str(halved.to_markdown())
