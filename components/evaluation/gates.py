"""Release gates: may this candidate replace the champion?

Three kinds of rule, all configured in params.yaml `gates`:
- floor: the candidate's metric must reach an absolute minimum (preference AUC, generator BLEU-4);
- guardrail: a must-hold limit (ad-law violations = 0, hallucination rate, ECE and the ratio of
  mean predicted to observed click rate within a cap);
- non-inferiority: on the frozen evaluation snapshot, the paired bootstrap interval of
  (candidate - champion) must have its lower bound above -margin. "Paired" = both models are
  scored on the same rows and every resample draws the same rows for both, so the interval is
  about the models, not about which rows happened to be drawn. A first release (no champion)
  passes on floors and guardrails alone.

Inputs are per-example frames (one row per snapshot example), so the gate is a pure function that
tests can feed directly; components/evaluation/frozen.py produces those frames from real models.
Preference frames: [example_id, label, score], and `choice_weight` where the snapshot froze copy
options (the copy-choice rule); generator frames: [example_id, bleu4, rougeL, hallucinated, unlisted,
ad_law_violations].
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Literal

import numpy as np
import pandas as pd
import scipy.stats

from components.config import GatesConfig
from components.registry.names import verdict

RuleKind = Literal["floor", "guardrail", "non_inferiority"]

PREFERENCE_COLUMNS = ("example_id", "label", "score")
GENERATOR_COLUMNS = ("example_id", "bleu4", "hallucinated", "unlisted", "ad_law_violations")
# AUC needs both classes in every resample; below this the interval is meaningless.
MIN_EXAMPLES_PER_CLASS = 10


class GateInputError(ValueError):
    """Per-example scores are malformed or candidate and champion were not scored on the same rows."""


class GateFailed(RuntimeError):
    """At least one gate rule failed; `report` is the markdown table that says which and why.

    The message is one line naming the failed rules (the retrain flow's task and flow run states
    and `copyflow retrain` repeat it, without a traceback); the report is published and printed once."""

    def __init__(self, report: str, results: list[GateResult] | None = None, why: str = ""):
        self.report = report
        self.results = results or []
        failed = [
            f"{g.family} {r.metric} {_fmt_value(r.candidate)} fails {r.kind} {r.rule}"
            for g in self.results for r in g.failures()
        ]
        super().__init__(f"release gate failed; no alias was moved: {why or '; '.join(failed) or 'see the report'}")


@dataclass(frozen=True)
class RuleResult:
    metric: str
    kind: RuleKind
    rule: str  # human-readable, e.g. ">= 0.600" or "CI low of delta > -0.010"
    candidate: float | None  # None: not measured
    champion: float | None
    delta: float | None
    ci_low: float | None
    ci_high: float | None
    passed: bool
    note: str = ""


@dataclass
class GateResult:
    family: str  # preference | generator
    rules: list[RuleResult]
    n_examples: int
    snapshot: str = ""  # fingerprint of the frozen snapshot the evidence was computed on
    candidate_label: str = "candidate"
    champion_label: str | None = None  # e.g. "release 3 (copyflow-preference v2)"; None = first release
    confidence_level: float = 0.95
    n_resamples: int = 0
    metrics: dict[str, float] = field(default_factory=dict)  # candidate metrics on the snapshot

    @property
    def passed(self) -> bool:
        return all(rule.passed for rule in self.rules)

    @property
    def verdict(self) -> str:
        return verdict(self.passed)

    def failures(self) -> list[RuleResult]:
        return [rule for rule in self.rules if not rule.passed]

    def to_dict(self) -> dict:
        data = asdict(self)
        data["passed"] = self.passed
        data["verdict"] = self.verdict
        return data

    @classmethod
    def from_dict(cls, data: dict) -> GateResult:
        fields = {k: v for k, v in data.items() if k not in ("passed", "verdict")}
        fields["rules"] = [RuleResult(**rule) for rule in data["rules"]]
        return cls(**fields)

    def to_markdown(self) -> str:
        level = f"{self.confidence_level:.0%}"
        against = self.champion_label or "no champion yet (first release: floors and guardrails only)"
        lines = [
            f"### Gate `{self.family}`: **{self.verdict.upper()}**",
            "",
            f"{self.candidate_label} vs {against}; frozen snapshot `{self.snapshot[:12] or 'n/a'}`, "
            f"{self.n_examples} examples; paired bootstrap, {self.n_resamples} resamples, {level} interval.",
            "",
            f"| metric | candidate | champion | delta [{level} CI] | rule | verdict |",
            "|---|---|---|---|---|---|",
        ]
        for rule in self.rules:
            verdict = "pass" if rule.passed else "**FAIL**"
            if rule.note:
                verdict += f" ({rule.note})"
            lines.append(
                f"| {rule.metric} | {_num(rule.candidate)} | {_num(rule.champion)} | "
                f"{_delta(rule)} | {rule.kind}: {rule.rule} | {verdict} |"
            )
        return "\n".join(lines)


def _num(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.4f}" if abs(value) < 100 else f"{value:.1f}"


def _delta(rule: RuleResult) -> str:
    if rule.delta is None:
        return "–"
    text = f"{rule.delta:+.4f}"
    if rule.ci_low is not None and rule.ci_high is not None:
        text += f" [{rule.ci_low:+.4f}, {rule.ci_high:+.4f}]"
    return text


def render_report(results: list[GateResult], title: str = "Release gate report") -> str:
    """All families' tables under one heading: what the CLI prints and MLflow stores."""
    overall = "PASS" if results and all(r.passed for r in results) else "FAIL"
    parts = [f"## {title}: **{overall}**", ""]
    for result in results:
        parts += [result.to_markdown(), ""]
    return "\n".join(parts).rstrip() + "\n"


# ---------------------------------------------------------------- statistics


def auc_by_ranks(labels: np.ndarray, scores: np.ndarray, axis: int = -1) -> np.ndarray:
    """ROC AUC via the Mann-Whitney rank identity (== sklearn's roc_auc_score, ties averaged).

    Why not sklearn in the bootstrap: this form is vectorized over a batch of resamples.
    """
    ranks = scipy.stats.rankdata(scores, axis=axis)
    positive = labels == 1
    n_pos = positive.sum(axis=axis)
    n_neg = labels.shape[axis] - n_pos
    return ((ranks * positive).sum(axis=axis) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def expected_calibration_error(labels: np.ndarray, scores: np.ndarray, n_bins: int = 15) -> float:
    """ECE of the click probability: over equal-width score bins, |click rate - mean score| * share.

    The definition of torchmetrics' binary_calibration_error (norm="l1"); the tests check they
    agree. numpy here so promotion and the CLI do not import torch just for this.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    bins = np.searchsorted(np.linspace(0.0, 1.0, n_bins + 1), scores, side="right") - 1
    slots = n_bins + 1  # a score of exactly 1.0 gets its own slot, as in torchmetrics
    gap = np.abs(np.bincount(bins, labels, slots) - np.bincount(bins, scores, slots))
    return float(gap.sum() / len(scores))


def calibration_ratio_error(labels: np.ndarray, scores: np.ndarray) -> float:
    """|mean predicted P(click) / observed click rate - 1| (calibration in the large)."""
    return float(abs(np.mean(scores) / np.mean(labels) - 1.0))


def paired_bootstrap_delta(
    statistic: Callable[..., np.ndarray],
    candidate: tuple[np.ndarray, ...],
    champion: tuple[np.ndarray, ...],
    shared: tuple[np.ndarray, ...] = (),
    *,
    n_resamples: int,
    confidence_level: float,
    seed: int,
) -> tuple[float, float, float]:
    """(delta, ci_low, ci_high) of statistic(candidate) - statistic(champion) over paired resamples.

    `statistic(*shared, *arrays, axis=-1)` must be vectorized along the last axis.
    """
    n_shared, n_model = len(shared), len(candidate)

    def delta(*arrays, axis=-1):
        common = arrays[:n_shared]
        cand = arrays[n_shared : n_shared + n_model]
        champ = arrays[n_shared + n_model :]
        return statistic(*common, *cand, axis=axis) - statistic(*common, *champ, axis=axis)

    data = (*shared, *candidate, *champion)
    point = float(delta(*data))
    result = scipy.stats.bootstrap(
        data,
        delta,
        paired=True,
        vectorized=True,
        n_resamples=n_resamples,
        batch=min(n_resamples, 100),
        confidence_level=confidence_level,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return point, float(result.confidence_interval.low), float(result.confidence_interval.high)


def _mean(values: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(values, axis=axis)


# ---------------------------------------------------------------- input checks


def _require(frame: pd.DataFrame, columns: tuple[str, ...], who: str) -> pd.DataFrame:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise GateInputError(f"{who} per-example scores miss columns {missing}; has {sorted(frame.columns)}")
    if frame.empty:
        raise GateInputError(f"{who} per-example scores are empty")
    duplicated = frame["example_id"].duplicated()
    if duplicated.any():
        raise GateInputError(
            f"{who} per-example scores repeat example ids, e.g. {frame.loc[duplicated, 'example_id'].head(3).tolist()}"
        )
    numeric = [c for c in columns if c != "example_id"]
    bad = frame[numeric].isna().any(axis=1)
    if bad.any():
        raise GateInputError(f"{who} per-example scores have missing values:\n{frame.loc[bad].head(3).to_string()}")
    return frame


def align_pair(candidate: pd.DataFrame, champion: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Both frames in the same example order; refuses frames scored on different rows."""
    cand_ids, champ_ids = set(candidate["example_id"]), set(champion["example_id"])
    if cand_ids != champ_ids:
        only_cand = sorted(map(str, cand_ids - champ_ids))[:3]
        only_champ = sorted(map(str, champ_ids - cand_ids))[:3]
        raise GateInputError(
            "candidate and champion were not scored on the same frozen snapshot rows "
            f"({len(cand_ids)} vs {len(champ_ids)} examples; only candidate e.g. {only_cand}, "
            f"only champion e.g. {only_champ}); refresh the champion's evidence on this snapshot"
        )
    candidate = candidate.sort_values("example_id", kind="stable").reset_index(drop=True)
    champion = champion.sort_values("example_id", kind="stable").reset_index(drop=True)
    return candidate, champion


# ---------------------------------------------------------------- rules


def _floor(metric: str, value: float, minimum: float, champion: float | None) -> RuleResult:
    return RuleResult(
        metric=metric,
        kind="floor",
        rule=f">= {minimum:g}",
        candidate=value,
        champion=champion,
        delta=None if champion is None else value - champion,
        ci_low=None,
        ci_high=None,
        passed=bool(value >= minimum),
    )


def _guardrail(metric: str, value: float, maximum: float, champion: float | None) -> RuleResult:
    return RuleResult(
        metric=metric,
        kind="guardrail",
        rule=f"<= {maximum:g}",
        candidate=value,
        champion=champion,
        delta=None if champion is None else value - champion,
        ci_low=None,
        ci_high=None,
        passed=bool(value <= maximum),
    )


def _non_inferiority(
    metric: str,
    candidate_value: float,
    champion_value: float | None,
    margin: float,
    interval: tuple[float, float, float] | None,
) -> RuleResult:
    rule = f"CI low of delta > -{margin:g}"
    if interval is None:
        return RuleResult(metric, "non_inferiority", rule, candidate_value, None, None, None, None, True, "first release")
    delta, low, high = interval
    passed = bool(low > -margin)
    # A point estimate inside the margin with an interval reaching past it is no evidence of a
    # worse model, only of too few frozen examples to show it is not: say so in the report.
    note = "" if passed or delta <= -margin else (
        f"inconclusive: the interval is {high - low:.3g} wide, the margin {margin:g}; a larger frozen set can decide"
    )
    return RuleResult(metric, "non_inferiority", rule, candidate_value, champion_value, delta, low, high, passed, note)


def one_class_share(labels: np.ndarray, n_resamples: int, seed: int, clusters: np.ndarray) -> float:
    """Share of the shopper resamples (the same draws as the AUC interval's) that hold one class
    only: AUC is undefined there, and the interval silently describes the other resamples."""
    from components.evaluation.preference import bootstrap_indices

    drawn = list(bootstrap_indices(len(labels), n_resamples, seed, clusters))
    return sum(labels[i].min() == labels[i].max() for i in drawn) / len(drawn)


def _auc_non_inferiority(auc: float, champion_auc: float | None, margin: float,
                         interval: tuple[float, float, float] | None, one_class: float) -> RuleResult:
    """AUC non-inferiority; with over 1% of the shopper resamples holding one class (the clicks
    come from a handful of shoppers), the interval is not evidence: the rule fails, inconclusive."""
    result = _non_inferiority("auc", auc, champion_auc, margin, interval)
    if interval is None or one_class <= 0.01:
        return result
    return replace(result, passed=False, note=(
        f"inconclusive: {one_class:.1%} of the shopper resamples hold no click (or only clicks): the frozen "
        "set's clicks come from too few shoppers to bound the difference"))


def _copy_choice_rule(
    gates: GatesConfig, candidate: pd.DataFrame, champion: pd.DataFrame | None, seed: int, clusters: pd.Series | None
) -> RuleResult | None:
    """Non-inferiority of the copy choice's off-policy lift (components/evaluation/copy_choice.py)
    on the snapshot's impressions with two or more copies; None where no frozen impression has
    a choice (OBD, a snapshot frozen before the rule). Frames are aligned when both are given.

    The estimate rests on clicks on impressions whose shown copy a model chose: with fewer than
    MIN_CHOSEN_CLICKS of them for either model, or too many bootstrap resamples without one, the
    rule is reported as not measured (a pass) instead of a verdict drawn from a few clicks."""
    from components.evaluation.copy_choice import MIN_CHOSEN_CLICKS, snips_lift
    from components.evaluation.preference import _interval, bootstrap_indices

    if "choice_weight" not in candidate.columns or candidate["choice_weight"].isna().all():
        return None
    rule = f"CI low of delta > -{gates.copy_choice_margin:g}"

    def unmeasured(note: str, lift: float | None = None) -> RuleResult:
        return RuleResult("copy_choice_lift", "non_inferiority", rule, lift, None, None, None, None, True, note)

    has_choice = candidate["choice_weight"].notna().to_numpy()
    labels = candidate["label"].to_numpy(dtype=np.float64)[has_choice]
    weight = candidate["choice_weight"].to_numpy(dtype=np.float64)[has_choice]
    chosen_clicks = int(((weight > 0) & (labels > 0)).sum())
    if chosen_clicks < MIN_CHOSEN_CLICKS:
        return unmeasured(f"not measured: {chosen_clicks} clicks on frozen impressions showing the candidate's chosen copy, fewer than {MIN_CHOSEN_CLICKS}")
    lift = snips_lift(labels, weight)
    if champion is None or "choice_weight" not in champion.columns:
        return unmeasured("first release" if champion is None else "champion scored before the copy-choice rule: not compared", lift)
    champ_weight = champion["choice_weight"].to_numpy(dtype=np.float64)[has_choice]
    if np.isnan(champ_weight).any():
        raise GateInputError("candidate and champion disagree on which frozen impressions had a copy choice")
    champ_clicks = int(((champ_weight > 0) & (labels > 0)).sum())
    if champ_clicks < MIN_CHOSEN_CLICKS:
        return unmeasured(f"not compared: {champ_clicks} clicks on frozen impressions showing the champion's chosen copy", lift)
    shoppers = None
    if clusters is not None:
        shoppers = candidate["example_id"].map(clusters).astype(str).to_numpy()[has_choice]
    champ_lift = snips_lift(labels, champ_weight)
    chosen, champ_chosen = (weight > 0) & (labels > 0), (champ_weight > 0) & (labels > 0)
    deltas, unweighed = [], 0
    for i in bootstrap_indices(len(labels), gates.bootstrap_resamples, seed, shoppers):
        deltas.append(snips_lift(labels[i], weight[i]) - snips_lift(labels[i], champ_weight[i]))
        unweighed += not (chosen[i].any() and champ_chosen[i].any())
    # A resample with no click on a chosen copy (either model's) has a lift of 0 by default, not
    # by evidence: when over 1% are such, the clicks come from too few shoppers to compare.
    undefined = max(unweighed / len(deltas), float(np.isnan(deltas).mean()))
    if undefined > 0.01:
        return unmeasured(f"not measured: {undefined:.1%} of the shopper resamples hold no click on a chosen copy", lift)
    diff = _interval(lift - champ_lift, list(deltas), gates.confidence_level)
    return _non_inferiority("copy_choice_lift", lift, champ_lift, gates.copy_choice_margin, (diff.value, diff.low, diff.high))


def preference_gate(
    gates: GatesConfig,
    candidate: pd.DataFrame,
    champion: pd.DataFrame | None = None,
    *,
    seed: int = 0,
    snapshot: str = "",
    candidate_label: str = "candidate",
    champion_label: str | None = None,
    clusters: pd.Series | None = None,
) -> GateResult:
    """AUC floor, ECE guardrail and AUC non-inferiority on per-example [example_id, label, score].
    `clusters`: example_id -> shopper; the non-inferiority interval then resamples shoppers."""
    candidate = _require(candidate, PREFERENCE_COLUMNS, "candidate preference")
    labels = candidate["label"].to_numpy()
    if not np.isin(labels, (0, 1)).all():
        raise GateInputError("preference labels must be 0/1")
    n_pos = int(labels.sum())
    if min(n_pos, len(labels) - n_pos) < MIN_EXAMPLES_PER_CLASS:
        raise GateInputError(
            f"frozen snapshot has {n_pos} positives and {len(labels) - n_pos} negatives; need at least "
            f"{MIN_EXAMPLES_PER_CLASS} of each to estimate AUC and its interval"
        )
    interval = champ_auc = champ_ece = champ_ratio = None
    one_class = 0.0
    if champion is not None:
        champion = _require(champion, PREFERENCE_COLUMNS, "champion preference")
        candidate, champion = align_pair(candidate, champion)
        if not (candidate["label"].to_numpy() == champion["label"].to_numpy()).all():
            raise GateInputError("candidate and champion frames disagree on labels of the same examples")
        labels = candidate["label"].to_numpy()
        champ_scores = champion["score"].to_numpy(dtype=np.float64)
        champ_auc = float(auc_by_ranks(labels, champ_scores))
        champ_ece = expected_calibration_error(labels, champ_scores)
        champ_ratio = calibration_ratio_error(labels, champ_scores)
        cand_scores = candidate["score"].to_numpy(dtype=np.float64)
        if clusters is None:
            interval = paired_bootstrap_delta(
                auc_by_ranks,
                (cand_scores,),
                (champ_scores,),
                shared=(labels,),
                n_resamples=gates.bootstrap_resamples,
                confidence_level=gates.confidence_level,
                seed=seed,
            )
        else:  # whole shoppers: the training evaluation's paired cluster bootstrap
            from components.evaluation.preference import auc as sk_auc
            from components.evaluation.preference import paired_difference

            shoppers = candidate["example_id"].map(clusters)
            if shoppers.isna().any():
                raise GateInputError(f"{int(shoppers.isna().sum())} scored examples have no shopper in the snapshot's clusters")
            groups = shoppers.astype(str).to_numpy()
            diff = paired_difference(labels, cand_scores, champ_scores, sk_auc, gates.bootstrap_resamples, seed,
                                     groups, gates.confidence_level)
            interval = (diff.value, diff.low, diff.high)
            one_class = one_class_share(labels, gates.bootstrap_resamples, seed, groups)
    scores = candidate["score"].to_numpy(dtype=np.float64)
    auc = float(auc_by_ranks(labels, scores))
    ece = expected_calibration_error(labels, scores)
    ratio_error = calibration_ratio_error(labels, scores)
    rules = [
        _floor("auc", auc, gates.preference_auc_min, champ_auc),
        _guardrail("ece", ece, gates.max_ece, champ_ece),
        _guardrail("calibration_ratio_error", ratio_error, gates.max_calibration_ratio_error, champ_ratio),
        _auc_non_inferiority(auc, champ_auc, gates.non_inferiority_margin, interval, one_class),
    ]
    choice_rule = _copy_choice_rule(gates, candidate, champion, seed, clusters)
    if choice_rule is not None:
        rules.append(choice_rule)
    return GateResult(
        family="preference",
        rules=rules,
        n_examples=len(candidate),
        snapshot=snapshot,
        candidate_label=candidate_label,
        champion_label=champion_label if champion is not None else None,
        confidence_level=gates.confidence_level,
        n_resamples=gates.bootstrap_resamples if champion is not None else 0,
        metrics={"auc": auc, "ece": ece, "calibration_ratio_error": ratio_error, "positive_rate": float(labels.mean()),
                 "mean_score": float(scores.mean())}
        | ({"copy_choice_lift": choice_rule.candidate} if choice_rule is not None and choice_rule.candidate is not None else {}),
    )


def generator_gate(
    gates: GatesConfig,
    candidate: pd.DataFrame,
    champion: pd.DataFrame | None = None,
    *,
    seed: int = 0,
    snapshot: str = "",
    candidate_label: str = "candidate",
    champion_label: str | None = None,
) -> GateResult:
    """BLEU-4 floor, ad-law and hallucination guardrails, BLEU-4 non-inferiority on per-example rows."""
    candidate = _require(candidate, GENERATOR_COLUMNS, "candidate generator")
    interval = champ_bleu = champ_halluc = champ_unlisted = champ_law = None
    if champion is not None:
        champion = _require(champion, GENERATOR_COLUMNS, "champion generator")
        candidate, champion = align_pair(candidate, champion)
        champ_bleu = float(champion["bleu4"].mean())
        champ_halluc = float(champion["hallucinated"].astype(float).mean())
        champ_unlisted = float(champion["unlisted"].astype(float).mean())
        champ_law = float(champion["ad_law_violations"].sum())
        interval = paired_bootstrap_delta(
            _mean,
            (candidate["bleu4"].to_numpy(dtype=np.float64),),
            (champion["bleu4"].to_numpy(dtype=np.float64),),
            n_resamples=gates.bootstrap_resamples,
            confidence_level=gates.confidence_level,
            seed=seed,
        )
    bleu = float(candidate["bleu4"].mean())
    halluc = float(candidate["hallucinated"].astype(float).mean())
    unlisted = float(candidate["unlisted"].astype(float).mean())
    law = float(candidate["ad_law_violations"].sum())
    rules = [
        _floor("bleu4", bleu, gates.generator_bleu4_min, champ_bleu),
        _guardrail("ad_law_violations", law, gates.max_ad_law_violations, champ_law),
        _guardrail("hallucination_rate", halluc, gates.max_hallucination_rate, champ_halluc),
        _guardrail("unlisted_rate", unlisted, gates.max_unlisted_rate, champ_unlisted),
        _non_inferiority("bleu4", bleu, champ_bleu, gates.generator_bleu4_margin, interval),
    ]
    metrics = {"bleu4": bleu, "hallucination_rate": halluc, "unlisted_rate": unlisted, "ad_law_violations": law}
    if "rougeL" in candidate.columns:
        metrics["rougeL"] = float(candidate["rougeL"].mean())
    return GateResult(
        family="generator",
        rules=rules,
        n_examples=len(candidate),
        snapshot=snapshot,
        candidate_label=candidate_label,
        champion_label=champion_label if champion is not None else None,
        confidence_level=gates.confidence_level,
        n_resamples=gates.bootstrap_resamples if champion is not None else 0,
        metrics=metrics,
    )


GATES: dict[str, Callable[..., GateResult]] = {"preference": preference_gate, "generator": generator_gate}


def evaluate_gate(
    family: str,
    gates: GatesConfig,
    candidate: pd.DataFrame,
    champion: pd.DataFrame | None = None,
    **kwargs,
) -> GateResult:
    """Dispatch to the family's gate; a family without a gate is an error, never a silent pass."""
    if family not in GATES:
        raise GateInputError(f"no release gate is defined for model family {family!r}; known: {sorted(GATES)}")
    return GATES[family](gates, candidate, champion, **kwargs)


def _fmt_value(value: float | None) -> str:
    return "not measured" if value is None else f"{value:.4f}"
