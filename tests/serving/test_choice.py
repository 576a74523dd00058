import random
from collections import Counter

import pandas as pd
import pytest

from components.serving.choice import PREFERENCE, UNIFORM, candidate_frame, choose, top_value_mentions


def test_the_best_candidate_is_served_with_its_epsilon_greedy_probability():
    rng = random.Random(0)
    scores = [0.10, 0.30, 0.20, 0.05]
    picks = [choose(4, scores, exploration=0.2, rng=rng) for _ in range(20000)]
    counts = Counter(p.index for p in picks)
    # best: 1 - 0.2 + 0.2/4 = 0.85; each other: 0.2/4 = 0.05. The logged propensity is exactly that.
    assert counts[1] / len(picks) == pytest.approx(0.85, abs=0.01)
    for other in (0, 2, 3):
        assert counts[other] / len(picks) == pytest.approx(0.05, abs=0.006)
    assert all(p.propensity == pytest.approx(0.85 if p.index == 1 else 0.05) for p in picks)
    assert {p.strategy for p in picks} == {PREFERENCE}


def test_full_exploration_ties_and_missing_scores_are_uniform_draws():
    rng = random.Random(1)
    uniform = Counter(choose(3, [0.9, 0.1, 0.1], exploration=1.0, rng=rng).index for _ in range(9000))
    assert all(count / 9000 == pytest.approx(1 / 3, abs=0.02) for count in uniform.values())
    # Equal best scores share the greedy part: 0.2/4 + 0.8/2 = 0.45 each, 0.05 for the others.
    rng = random.Random(2)
    ties = Counter(choose(4, [0.5, 0.1, 0.5, 0.2], exploration=0.2, rng=rng).index for _ in range(20000))
    assert ties[0] / 20000 == pytest.approx(0.45, abs=0.01) and ties[2] / 20000 == pytest.approx(0.45, abs=0.01)
    assert choose(4, [0.5, 0.1, 0.5, 0.2], exploration=0.2, rng=random.Random(7)).propensity in (pytest.approx(0.45), 0.05)
    unscored = choose(4, None, exploration=0.2, rng=random.Random(3))
    assert unscored.strategy == UNIFORM and unscored.propensity == 0.25 and unscored.scores is None
    single = choose(1, [0.3], exploration=0.2, rng=random.Random(4))
    assert (single.index, single.propensity, single.strategy) == (0, 1.0, UNIFORM)
    with pytest.raises(ValueError, match="finite scores"):
        choose(2, [0.1, float("nan")], exploration=0.2, rng=random.Random(5))
    with pytest.raises(ValueError, match="no candidate"):
        choose(0, None, exploration=0.2, rng=random.Random(6))


def test_candidates_carry_their_own_copy_features_on_the_pairs_row():
    top = {("颜色", "白色"), ("类型", "裙"), ("品牌", "<UNK>")}
    texts = ["白色的连衣裙", "黑色长裙", "简约大方"]
    assert top_value_mentions(texts, top) == [2, 1, 0]
    # a catalog copy may keep the masked brand; as in training (copy_mentions) it is no preference
    assert top_value_mentions(["<UNK>的白色连衣裙"], top) == [2]
    row = pd.DataFrame({"user_id": ["u"], "product_id": ["p"], "copy_id": ["c-shown"], "uc_copy_pref_mentions": [7], "p_ctr": [0.1]})
    frame = candidate_frame(row, texts, top)
    assert frame["uc_copy_pref_mentions"].tolist() == [2, 1, 0] and frame["copy_id"].isna().all()
    assert (frame["p_ctr"] == 0.1).all() and (frame["user_id"] == "u").all() and len(frame) == 3


def test_candidates_are_read_with_the_products_values_as_training_read_them(tmp_path, cfg):
    # The features stage gives a product without a 类型 key its category as one, and the model
    # learned copies' mentions of it; the clean catalog's own list lacks it.
    from pathlib import Path

    from components.data.schema import write_all
    from components.models.preference.explain import FeatureFiles
    from components.serving.choice import preference_scores
    from components.serving.copywriter import ShopperData
    from tests.features.factories import copy, event, frame, product, user

    t = pd.Timestamp("2026-01-05", tz="UTC")
    # The clean tables the row is computed from (the features stage's own computation).
    write_all({
        "products": frame("products", [{**product("p1", {"颜色": ["白色"]}), "category": "裙"}]),
        "copies": frame("copies", [copy("c1", "p1", "白色连衣裙")]),
        "users": frame("users", [user("u1")]),
        "events": frame("events", [event("e1", "u1", "p1", "impression", t, "c1", 1)]),
    }, cfg.stage_dir("clean"))
    samples = pd.DataFrame({"event_id": ["e1"], "user_id": ["u1"], "product_id": ["p1"], "copy_id": ["c1"], "category": ["裙"],
                            "timestamp": [t], "position": [1], "label": [0], "uc_copy_pref_mentions": [0]})
    features = pd.DataFrame({"product_id": ["p1", "p1"], "attr_key": ["颜色", "类型"], "attr_value": ["白色", "裙"]})
    affinity = pd.DataFrame({"user_id": ["u1"], "attr_key": ["颜色"], "attr_value": ["白色"], "affinity": [0.9], "is_top": [True]})
    files = FeatureFiles(Path(tmp_path), samples, features, affinity)
    data = ShopperData(clean_dir=Path(tmp_path), users=frozenset({"u1"}), attributes={"p1": {"颜色": ["白色"]}},
                       affinity=affinity, population=pd.DataFrame(), features=files)

    class Recorder:  # records what the model is asked to read
        def predict_copies(self, frame, texts, attributes):
            self.frame, self.attributes = frame, attributes
            return [0.5] * len(texts)

    model = Recorder()
    assert preference_scores(model, cfg, data, "u1", "p1", ["白色连衣裙", "简约"]) == [0.5, 0.5]
    assert model.attributes == {"颜色": ["白色"], "类型": ["裙"]}
    assert model.frame["uc_copy_pref_mentions"].tolist() == [1, 0]
    assert preference_scores(model, cfg, data, "someone-else", "p1", ["白色连衣裙", "简约"]) is None  # no row: uniform


def test_scores_a_few_float32_ulps_apart_are_equal_best_scores():
    # torch scores identical candidate rows differently in the last bits, by their place in the
    # batch (a 3-row batch of one quick-profile row gave 0x1.3053e8p-4, 0x1.3053e4p-4, 0x1.3053e8p-4):
    # the candidates read the same, so they share the greedy part instead of batch position choosing.
    import numpy as np

    from components.serving.choice import choice_probabilities

    same = np.array([float.fromhex("0x1.3053e8p-4"), float.fromhex("0x1.3053e4p-4"), float.fromhex("0x1.3053e8p-4")], dtype=np.float32)
    assert choice_probabilities(same, exploration=0.2) == pytest.approx([1 / 3] * 3)
    rng = random.Random(8)
    picks = Counter(choose(3, same, exploration=0.2, rng=rng).index for _ in range(9000))
    assert all(picks[i] / 9000 == pytest.approx(1 / 3, abs=0.02) for i in range(3))
    # A real difference, however small in P(click), still decides.
    assert choice_probabilities(np.array([0.0744, 0.0743, 0.0744]), exploration=0.2) == pytest.approx([0.4666667, 0.0666667, 0.4666667])
