"""Copy choice: would the preference model show each shopper the copy that works better for them?

The preference model scores (shopper, product, shown copy). Given the copies a product has, a
*copy-choice policy* shows the copy the model scores highest for this shopper. This module
measures what that policy would have earned, on test impressions that had a choice
(features/copy_options.py: the product has two or more catalog copies).

The choice is the copy server's rule without exploration (components/serving/choice.py,
`choice_probabilities`): the best-scored option, or an even share among options with equal best
scores (copies that mention the same values score the same).

Off-policy, from the logged clicks alone (any source): the logging policy is assumed to have
drawn the shown copy uniformly among the product's copies (the simulator does; a shop's export
must, for the figure to hold), so an impression stands for `n_options` impressions in the share
the choice gives its shown copy. The self-normalized inverse-propensity estimate of the
choice's click rate is

    model_ctr = sum(label * w) / sum(w),   w = n_options * P(choice = shown copy)

and the logged click rate is that of a uniform choice. The interval of their ratio comes from a
shopper-cluster bootstrap (components/evaluation/preference.py). A shop whose copies were not
shown uniformly gets a biased estimate: this evaluation assumes uniform logging, and checks it
as far as the data allow. The choice does not depend on which copy was shown, so under uniform
logging it matches the shown copy with probability 1/n_options; `copy_choice_match_z` is the
(expected) matches' distance from that expectation in standard deviations, and beyond
UNIFORM_LOGGING_MAX_Z the report says the logging does not look uniform.

For the simulated source the click probability of every option is known exactly (the simulator's
copy effect: `copy_mention_weight` per preferred value the copy mentions, from
source/ground_truth/), so the same choice is also scored without sampling noise, against the
best copy an oracle would have chosen (`true_*`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.special import expit, logit

from components.data.advertisegen import mentioned_values
from components.evaluation.preference import Interval, _interval, bootstrap_indices
from components.serving.choice import is_best

COPY_FEATURES = ("copy_id", "uc_copy_pref_mentions")
MIN_CHOSEN_AS_SHOWN = 20   # fewer matching impressions make the off-policy estimate meaningless
MIN_CHOSEN_CLICKS = 10     # the release gate's copy-choice rule: clicks on matched impressions, per model
UNIFORM_LOGGING_MAX_Z = 4.0


@dataclass(frozen=True)
class CopyChoice:
    """One row per option of each evaluated impression (`option_frame`) and the choice made."""

    options: pd.DataFrame   # event_id, copy_id, n_options, shown, score, share (+ option features)
    impressions: pd.DataFrame  # event_id, user_id, n_options, label, shown_share, share_sq_sum


def option_frame(frame: pd.DataFrame, options: pd.DataFrame) -> pd.DataFrame:
    """The impression rows of `frame`, once per option, with the option's copy features in
    place of the shown copy's; `shown` marks the option that was shown."""
    missing = [c for c in ("event_id", "copy_id", "n_options", *COPY_FEATURES[1:]) if c not in options.columns]
    if missing:
        raise ValueError(f"copy options lack columns {missing} (re-run the features stage)")
    base = frame.drop(columns=[c for c in COPY_FEATURES if c in frame.columns]).assign(shown_copy=frame["copy_id"].to_numpy())
    rows = options.merge(base, on="event_id", how="inner", validate="many_to_one", sort=False)
    rows["shown"] = rows["copy_id"].astype(str).to_numpy() == rows.pop("shown_copy").astype(str).to_numpy()
    return rows


OPTIONS_COLUMN = "copy_options"  # a frozen snapshot's options per row: [{copy_id, uc_copy_pref_mentions}, ...]


def with_copy_options(frame: pd.DataFrame, options: pd.DataFrame) -> pd.DataFrame:
    """`frame` with each impression's options nested in one column (empty where its product had
    one copy), so a frozen snapshot carries them and stays one file with one fingerprint.
    `frame` unchanged where none of its impressions has options (OBD has no copies)."""
    options = options[options["event_id"].isin(frame["event_id"])]
    if options.empty:
        return frame
    nested: dict[str, list[dict]] = {}
    for event, group in options.sort_values(["event_id", "copy_id"], kind="stable").groupby("event_id", sort=False):
        nested[event] = group[list(COPY_FEATURES)].to_dict("records")
    return frame.assign(**{OPTIONS_COLUMN: [nested.get(event, []) for event in frame["event_id"]]})


def nested_options(frame: pd.DataFrame) -> pd.DataFrame:
    """`with_copy_options` undone: [event_id, copy_id, n_options, uc_copy_pref_mentions]."""
    records = [
        {"event_id": event, "n_options": len(opts), **dict(option)}
        for event, opts in zip(frame["event_id"], frame[OPTIONS_COLUMN])
        for option in (opts if len(opts) >= 2 else [])
    ]
    return pd.DataFrame(records, columns=["event_id", "n_options", *COPY_FEATURES])


def choice_weights(frame: pd.DataFrame, score: Callable[[pd.DataFrame], np.ndarray]) -> pd.Series:
    """Per impression of a frozen snapshot with options: n_options x the share the model's
    choice gives the shown copy (its off-policy weight); NaN without a choice."""
    options = nested_options(frame)
    weights = pd.Series(np.nan, index=frame["event_id"].astype(str).to_numpy())
    if options.empty:
        return weights
    rows = option_frame(frame.drop(columns=[OPTIONS_COLUMN]), options)
    choice = choose(rows, score(rows)).impressions
    weights.loc[choice["event_id"].astype(str).to_numpy()] = (choice["n_options"] * choice["shown_share"]).to_numpy()
    return weights


def snips_lift(label: np.ndarray, weight: np.ndarray) -> float:
    """The choice's self-normalized IPS click rate over the logged (uniform) one, minus 1."""
    logged, model = _ctrs(np.asarray(label, dtype=np.float64), np.asarray(weight, dtype=np.float64))
    return model / logged - 1.0 if logged > 0 else float("nan")


def choose(rows: pd.DataFrame, scores: np.ndarray) -> CopyChoice:
    """Per impression, the probability the choice gives each option (`share`): 1 for the
    best-scored one, shared evenly among equal best scores (the server's rule at exploration 0)."""
    scores = np.asarray(scores, dtype=np.float64)
    if np.isnan(scores).any():
        raise ValueError(f"{int(np.isnan(scores).sum())} of {len(scores)} option scores are NaN: the model is broken")
    rows = rows.assign(score=scores).reset_index(drop=True)
    # The server's tie rule (serving.choice.is_best), so both see the same equal best scores.
    best = pd.Series(is_best(rows["score"], rows.groupby("event_id", sort=False)["score"].transform("max")), dtype=np.float64)
    rows["share"] = best / best.groupby(rows["event_id"], sort=False).transform("sum")
    share_sq_sum = (rows["share"] ** 2).groupby(rows["event_id"], sort=False).sum()
    shown = rows[rows["shown"]].set_index("event_id")
    impressions = pd.DataFrame({
        "event_id": shown.index.to_numpy(),
        "user_id": shown["user_id"].astype(str).to_numpy(),
        "n_options": shown["n_options"].to_numpy(dtype=np.float64),
        "label": shown["label"].to_numpy(dtype=np.float64),
        "shown_share": shown["share"].to_numpy(dtype=np.float64),
        "share_sq_sum": share_sq_sum.reindex(shown.index).to_numpy(dtype=np.float64),
    })
    return CopyChoice(options=rows, impressions=impressions)


def _ctrs(label: np.ndarray, weight: np.ndarray) -> tuple[float, float]:
    """(logged click rate, self-normalized IPS click rate of the choice)."""
    total = weight.sum()
    return float(label.mean()), float((label * weight).sum() / total) if total > 0 else float("nan")


def off_policy_metrics(choice: CopyChoice, n_boot: int, seed: int) -> dict[str, float]:
    """Logged and estimated click rates of the choice, and the lift with a 95% interval."""
    imp = choice.impressions
    label = imp["label"].to_numpy()
    n, shown_share = imp["n_options"].to_numpy(), imp["shown_share"].to_numpy()
    weight = n * shown_share
    # Under uniform logging the shown copy is any option with probability 1/n, so its share has
    # mean 1/n and variance sum(share^2)/n - 1/n^2.
    matched = shown_share.sum()
    expected = (1.0 / n).sum()
    spread = np.sqrt(np.clip(imp["share_sq_sum"].to_numpy() / n - 1.0 / n**2, 0.0, None).sum())
    metrics = {
        "copy_choice_impressions": float(len(imp)),
        "copy_choice_mean_options": float(n.mean()) if len(imp) else float("nan"),
        "copy_choice_matched": float(matched),
        "copy_choice_match_z": float((matched - expected) / spread) if spread > 0 else float("nan"),
    }
    if matched < MIN_CHOSEN_AS_SHOWN or label.sum() == 0:
        return metrics  # too few rows to estimate anything
    logged, model = _ctrs(label, weight)
    lifts = [snips_lift(label[rows], weight[rows]) for rows in bootstrap_indices(len(imp), n_boot, seed, imp["user_id"].to_numpy())]
    lift: Interval = _interval(snips_lift(label, weight), lifts)
    return metrics | {"copy_choice_logged_ctr": logged, "copy_choice_model_ctr": model, **lift.as_metrics("copy_choice_lift")}


# ---------------------------------------------------------------- simulated ground truth


def true_option_probabilities(
    rows: pd.DataFrame,
    truth_impressions: pd.DataFrame,
    preferences: pd.DataFrame,
    copies: pd.DataFrame,
    products: pd.DataFrame,
    copy_mention_weight: float,
) -> np.ndarray:
    """The simulator's exact click probability of every option row (event_id, copy_id).

    The simulator's logit has `copy_mention_weight` per value of the product the copy mentions
    that the shopper prefers; nothing else in it depends on the copy. So an option's probability
    is the shown copy's, moved by that weight times the difference in preferred mentions. A bot
    (`is_bot`) clicks at its own rate whatever it is shown: every option keeps the shown one's.
    """
    truth = truth_impressions.set_index(truth_impressions["event_id"].astype(str))
    event = rows["event_id"].astype(str)
    missing = ~event.isin(truth.index)
    if missing.any():
        raise ValueError(f"no ground truth for {int(missing.sum())} option rows, e.g. {event[missing].head(3).tolist()}")
    raw_user = truth.loc[event, "user_id"].astype(str).to_numpy()
    preferred = preferences[preferences["preferred"].astype(bool)]
    liked = set(zip(preferred["user_id"].astype(str), preferred["key"].astype(str), preferred["value"].astype(str)))
    text = copies.set_index(copies["copy_id"].astype(str))["text"].fillna("").astype(str)
    attributes = {
        str(p): {k: list(v) for k, v in dict(a).items()} for p, a in zip(products["product_id"], products["attributes"])
    }

    def preferred_mentions(user: str, copy_id: str, product_id: str) -> int:
        return sum((user, k, v) in liked for k, v in mentioned_values(text[copy_id], attributes[product_id]))

    mentions = np.array([
        preferred_mentions(u, c, p) for u, c, p in zip(raw_user, rows["copy_id"].astype(str), rows["product_id"].astype(str))
    ], dtype=np.float64)
    # A bot left in by cleaning clicks at its own rate whatever the copy says.
    human = ~truth.loc[event, "is_bot"].fillna(False).to_numpy(dtype=bool) if "is_bot" in truth.columns else np.ones(len(rows), bool)
    shown = rows["shown"].to_numpy(dtype=bool)
    check = shown & human
    logged_mentions = truth.loc[event[check], "copy_mentions"].to_numpy(dtype=np.float64)
    if not np.array_equal(mentions[check], logged_mentions):
        bad = int((mentions[check] != logged_mentions).sum())
        raise ValueError(f"the clean copies disagree with the simulator's ground truth on {bad} shown copies' mentions")
    shown_mentions = pd.Series(mentions[shown], index=event[shown].to_numpy()).reindex(event).to_numpy()
    shown_logit = logit(np.clip(truth.loc[event, "click_probability"].to_numpy(dtype=np.float64), 1e-9, 1 - 1e-9))
    mentions = np.where(human, mentions, shown_mentions)
    return expit(shown_logit + copy_mention_weight * (mentions - shown_mentions))


def true_metrics(choice: CopyChoice, probabilities: np.ndarray) -> dict[str, float]:
    """Exact expected click rates: a uniform choice (what was logged), the model's choice, and
    the best option; `captured` is the share of the uniform-to-best gap the model closes."""
    rows = choice.options.assign(p=probabilities)
    by_event = rows.groupby("event_id", sort=False)["p"]
    uniform, best = float(by_event.mean().mean()), float(by_event.max().mean())
    model = float((rows["p"] * rows["share"]).groupby(rows["event_id"], sort=False).sum().mean())
    captured = (model - uniform) / (best - uniform) if best > uniform else float("nan")
    return {
        "copy_choice_true_uniform_ctr": uniform,
        "copy_choice_true_model_ctr": model,
        "copy_choice_true_best_ctr": best,
        "copy_choice_true_captured": captured,
    }


def simulator_copy_weight(ground_truth_dir: Path) -> float:
    params = json.loads((Path(ground_truth_dir) / "params.json").read_text(encoding="utf-8"))
    return float(params["simulator"]["copy_mention_weight"])
