import numpy as np
import pandas as pd
import pytest

from components.evaluation.copy_choice import (
    choose,
    off_policy_metrics,
    option_frame,
    true_metrics,
    true_option_probabilities,
)
from components.serving.choice import choice_probabilities


def _uniformly_logged(n_users: int = 400, per_user: int = 10, seed: int = 0, share_a: float = 0.5):
    """Two copies per impression, shown uniformly (unless `share_a` says otherwise). Copy "a"
    gets clicks at 5% from half the shoppers and 25% from the other half; copy "b" the other
    way round."""
    rng = np.random.default_rng(seed)
    n = n_users * per_user
    user = np.repeat(np.arange(n_users), per_user)
    likes_a = user % 2 == 0
    shown_a = rng.random(n) < share_a
    ctr = {"a": np.where(likes_a, 0.25, 0.05), "b": np.where(likes_a, 0.05, 0.25)}
    label = (rng.random(n) < np.where(shown_a, ctr["a"], ctr["b"])).astype(int)
    events = [f"e{i}" for i in range(n)]
    frame = pd.DataFrame({
        "event_id": events, "user_id": [f"u{u}" for u in user], "copy_id": np.where(shown_a, "a", "b"),
        "uc_copy_pref_mentions": 0, "label": label,
    })
    options = pd.DataFrame({
        "event_id": np.repeat(events, 2), "copy_id": np.tile(["a", "b"], n), "n_options": 2,
        "uc_copy_pref_mentions": 0,
    })
    rows = option_frame(frame, options)
    true_ctr = np.where(rows["copy_id"] == "a", np.repeat(ctr["a"], 2), np.repeat(ctr["b"], 2))
    return rows, true_ctr


def test_the_off_policy_estimate_recovers_each_policys_click_rate():
    rows, true_ctr = _uniformly_logged()
    best = off_policy_metrics(choose(rows, true_ctr), n_boot=200, seed=0)
    worst = off_policy_metrics(choose(rows, -true_ctr), n_boot=200, seed=0)
    always_a = off_policy_metrics(choose(rows, (rows["copy_id"] == "a").to_numpy(float)), n_boot=200, seed=0)
    assert best["copy_choice_logged_ctr"] == pytest.approx(0.15, abs=0.02)
    assert best["copy_choice_model_ctr"] == pytest.approx(0.25, abs=0.025)
    assert worst["copy_choice_model_ctr"] == pytest.approx(0.05, abs=0.015)
    assert always_a["copy_choice_model_ctr"] == pytest.approx(0.15, abs=0.025)
    # The interval of the lift: above zero for the best copy, below for the worst, around it for neither.
    assert best["copy_choice_lift_ci_low"] > 0.3 and worst["copy_choice_lift_ci_high"] < -0.4
    assert always_a["copy_choice_lift_ci_low"] < 0 < always_a["copy_choice_lift_ci_high"]
    assert best["copy_choice_impressions"] == 4000 and best["copy_choice_mean_options"] == 2
    # Uniform logging: each policy matches the shown copy about 1 time in 2.
    assert all(abs(m["copy_choice_match_z"]) < 4 for m in (best, worst, always_a))


def test_logging_that_was_not_uniform_shows_in_the_matches():
    # Copy "a" shown 90% of the time: "always a" matches the shown copy far more often than
    # 1 in 2, which uniform logging cannot explain. (Where the skew depends on the shopper, the
    # estimate is biased; the z-score is the warning.)
    rows, _ = _uniformly_logged(share_a=0.9)
    skewed = off_policy_metrics(choose(rows, (rows["copy_id"] == "a").to_numpy(float)), n_boot=50, seed=0)
    assert skewed["copy_choice_match_z"] > 20


def test_the_highest_score_is_chosen_and_equal_best_scores_share_it_as_the_server_does():
    frame = pd.DataFrame({"event_id": ["e1", "e2"], "user_id": ["u1", "u2"], "copy_id": ["x", "y"], "label": [1, 0]})
    options = pd.DataFrame({"event_id": ["e1", "e1", "e1", "e2", "e2"], "copy_id": ["x", "y", "z", "x", "y"],
                            "n_options": [3, 3, 3, 2, 2], "uc_copy_pref_mentions": [0, 1, 0, 0, 0]})
    scores = [0.1, 0.2, 0.2, 0.3, 0.3]
    choice = choose(option_frame(frame, options), scores)
    assert choice.options["share"].tolist() == [0.0, 0.5, 0.5, 0.5, 0.5]
    for event, group in choice.options.groupby("event_id"):  # the server's rule, without exploration
        assert group["share"].tolist() == choice_probabilities(group["score"].to_numpy(), exploration=0.0).tolist(), event
    assert choice.impressions["shown_share"].tolist() == [0.0, 0.5]
    # Too few impressions where the choice is the shown copy: no estimate, only the counts.
    metrics = off_policy_metrics(choice, n_boot=50, seed=0)
    assert metrics["copy_choice_matched"] == 0.5 and "copy_choice_model_ctr" not in metrics
    # In the truth, a shared choice earns the mean of the tied options.
    truth = true_metrics(choice, np.array([0.1, 0.2, 0.4, 0.3, 0.5]))
    assert truth["copy_choice_true_model_ctr"] == pytest.approx((0.3 + 0.4) / 2)


def test_scores_a_few_float32_ulps_apart_tie_offline_as_on_the_server():
    # One big batch can score identical option rows the same while the server's small batch of
    # candidates scores them a few ulps apart (or the other way round): both must see one tie.
    frame = pd.DataFrame({"event_id": ["e1"], "user_id": ["u1"], "copy_id": ["x"], "label": [1]})
    options = pd.DataFrame({"event_id": ["e1"] * 3, "copy_id": ["x", "y", "z"], "n_options": 3, "uc_copy_pref_mentions": 0})
    scores = np.array([float.fromhex(h) for h in ("0x1.3053e8p-4", "0x1.3053e4p-4", "0x1.3053e8p-4")], dtype=np.float32)
    choice = choose(option_frame(frame, options), scores)
    assert choice.options["share"].tolist() == pytest.approx([1 / 3] * 3)
    assert choice.options["share"].tolist() == pytest.approx(choice_probabilities(scores, exploration=0.0).tolist())
    assert choose(option_frame(frame, options), [0.0744, 0.0743, 0.0744]).options["share"].tolist() == [0.5, 0.0, 0.5]


def test_options_replace_the_shown_copys_features():
    frame = pd.DataFrame({"event_id": ["e1"], "user_id": ["u1"], "copy_id": ["x"], "uc_copy_pref_mentions": [5], "label": [1]})
    options = pd.DataFrame({"event_id": ["e1", "e1"], "copy_id": ["x", "y"], "n_options": [2, 2], "uc_copy_pref_mentions": [5, 0]})
    rows = option_frame(frame, options)
    assert rows[["copy_id", "uc_copy_pref_mentions", "shown", "label"]].values.tolist() == [["x", 5, True, 1], ["y", 0, False, 1]]
    with pytest.raises(ValueError, match="re-run the features stage"):
        option_frame(frame, options.drop(columns="n_options"))
    with pytest.raises(ValueError, match="1 of 2 option scores are NaN"):
        choose(rows, [0.1, float("nan")])


def _truth_world():
    frame = pd.DataFrame({"event_id": ["e1"], "user_id": ["pseudo1"], "product_id": ["p1"], "copy_id": ["plain"],
                          "uc_copy_pref_mentions": [0], "label": [0]})
    options = pd.DataFrame({"event_id": ["e1", "e1"], "copy_id": ["plain", "white"], "n_options": [2, 2], "uc_copy_pref_mentions": [0, 1]})
    truth = pd.DataFrame({"event_id": ["e1"], "user_id": ["raw1"], "click_probability": [0.1], "copy_mentions": [0]})
    preferences = pd.DataFrame({"user_id": ["raw1", "raw1"], "key": ["颜色", "类型"], "value": ["白色", "裙"], "preferred": [True, False]})
    copies = pd.DataFrame({"copy_id": ["plain", "white"], "product_id": ["p1", "p1"], "text": ["一条好看的裙子", "白色的裙子"]})
    products = pd.DataFrame({"product_id": ["p1"], "attributes": [{"类型": ["裙"], "颜色": ["白色"]}]})
    return option_frame(frame, options), truth, preferences, copies, products


def test_true_probabilities_move_by_the_simulators_weight_per_preferred_mention():
    rows, truth, preferences, copies, products = _truth_world()
    p = true_option_probabilities(rows, truth, preferences, copies, products, copy_mention_weight=0.8)
    logit = np.log(0.1 / 0.9)
    assert p == pytest.approx([0.1, 1 / (1 + np.exp(-(logit + 0.8)))])
    metrics = true_metrics(choose(rows, [0.0, 1.0]), p)
    assert metrics["copy_choice_true_model_ctr"] == pytest.approx(p[1]) == pytest.approx(metrics["copy_choice_true_best_ctr"])
    assert metrics["copy_choice_true_uniform_ctr"] == pytest.approx(p.mean()) and metrics["copy_choice_true_captured"] == 1.0


def test_ground_truth_that_disagrees_with_the_clean_copies_is_refused():
    rows, truth, preferences, copies, products = _truth_world()
    with pytest.raises(ValueError, match="disagree with the simulator's ground truth on 1 shown"):
        true_option_probabilities(rows, truth.assign(copy_mentions=1), preferences, copies, products, 0.8)
    with pytest.raises(ValueError, match="no ground truth for 2 option rows"):
        true_option_probabilities(rows, truth.assign(event_id="other"), preferences, copies, products, 0.8)


def test_a_bot_clicks_at_its_own_rate_whatever_the_copy():
    rows, truth, preferences, copies, products = _truth_world()
    # Its logged mentions are not checked either: the simulator keeps no preferences for bots.
    p = true_option_probabilities(rows, truth.assign(is_bot=True, copy_mentions=3), preferences, copies, products, 0.8)
    assert p == pytest.approx([0.1, 0.1])


def test_options_nest_into_a_snapshot_and_weigh_the_choice(tmp_path):
    """A frozen snapshot carries each impression's options in one column (through parquet), and
    choice_weights gives n_options x the choice's share of the shown copy."""
    from components.evaluation.copy_choice import OPTIONS_COLUMN, choice_weights, nested_options, with_copy_options

    frame = pd.DataFrame({"event_id": ["e1", "e2", "e3"], "user_id": ["u", "u", "v"], "copy_id": ["a", "b", "z"],
                          "label": [1, 0, 0], "uc_copy_pref_mentions": [0, 1, 0]})
    options = pd.DataFrame({"event_id": ["e1", "e1", "e2", "e2", "e2"], "copy_id": ["a", "b", "a", "b", "c"],
                            "n_options": [2, 2, 3, 3, 3], "uc_copy_pref_mentions": [0, 2, 0, 1, 1]})
    nested = with_copy_options(frame, options)
    nested.to_parquet(tmp_path / "s.parquet")
    back = pd.read_parquet(tmp_path / "s.parquet")
    assert back[OPTIONS_COLUMN].map(len).tolist() == [2, 3, 0]
    assert nested_options(back).sort_values(["event_id", "copy_id"]).reset_index(drop=True).equals(
        options.sort_values(["event_id", "copy_id"]).reset_index(drop=True)[["event_id", "n_options", "copy_id", "uc_copy_pref_mentions"]])
    # A model that scores by mentions: e1 picks b (not shown: 0), e2 ties b and c (shown b: 3 x 1/2).
    weights = choice_weights(back, lambda rows: rows["uc_copy_pref_mentions"].to_numpy(dtype=float))
    assert weights["e1"] == 0 and weights["e2"] == 1.5 and np.isnan(weights["e3"])
