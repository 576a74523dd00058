import numpy as np
import pandas as pd
import pytest

from components.data.advertisegen import mentioned_values
from components.data.attributes import parse_attributes
from components.data.simulator import simulate


@pytest.fixture
def sim(cfg):
    return simulate(cfg)


def test_same_seed_same_world_other_seed_other_world(make_cfg, sim):
    again = simulate(make_cfg())
    pd.testing.assert_frame_equal(sim.events, again.events)
    pd.testing.assert_frame_equal(sim.users, again.users)
    pd.testing.assert_frame_equal(sim.copies, again.copies)
    other = simulate(make_cfg(seed=7))
    assert len(other.events) != len(sim.events) or not other.events["user_id"].equals(sim.events["user_id"])
    assert not np.allclose(
        sim.truth_impressions["click_probability"].head(500), other.truth_impressions["click_probability"].head(500)
    )


def test_ctr_and_learnability(sim):
    diag = sim.params["diagnostics"]
    assert 0.03 <= diag["ctr"] <= 0.12
    assert diag["click_probability_auc"] > 0.7
    clicks = sim.events[sim.events["event_type"] == "click"]
    assert len(clicks) > 0 and {"add_to_cart", "purchase"} <= set(sim.events["event_type"])


def test_click_probability_follows_the_generative_story(cfg, sim):
    """logit(p) is exactly base + w_a*affinity + w_c*mentions - decay*(position-1), and each term matters."""
    s = cfg.simulator
    imp = sim.truth_impressions[~sim.truth_impressions["is_bot"]]
    p = imp["click_probability"].to_numpy()
    logit = np.log(p / (1 - p))
    x = np.column_stack([np.ones(len(imp)), imp["affinity"], imp["copy_mentions"], imp["position"] - 1])
    coef, *_ = np.linalg.lstsq(x, logit, rcond=None)
    np.testing.assert_allclose(coef, [s.base_logit, s.affinity_weight, s.copy_mention_weight, -s.position_decay], atol=1e-6)

    by_position = imp.groupby("position")["click_probability"].mean()
    assert by_position.is_monotonic_decreasing and by_position.iloc[0] > 1.5 * by_position.iloc[-1]
    quartile = pd.qcut(imp["affinity"], 4, labels=False)
    by_affinity = imp.groupby(quartile)["click_probability"].mean()
    assert by_affinity.is_monotonic_increasing and by_affinity.iloc[-1] > 1.5 * by_affinity.iloc[0]
    # the copy effect within the same product and position: more preferred mentions, more clicks
    mentioned = imp.assign(more=imp["copy_mentions"] > 0)
    paired = mentioned.groupby(["product_id", "position", "more"])["click_probability"].mean().unstack().dropna()
    assert len(paired) > 20 and (paired[True] > paired[False]).mean() > 0.7


def test_copies_of_a_product_differ_in_what_they_mention(sim):
    copies = sim.copies
    per_product = copies.groupby("product_id").size()
    assert (per_product >= 2).mean() > 0.9
    assert set(copies["source"]) == {"human"} and copies["model_version"].isna().all()
    # variants are clause subsets: shorter than, and contained clause-wise in, the human copy
    first = copies.drop_duplicates("product_id").set_index("product_id")["text"]
    variants = copies[copies.duplicated("product_id")]
    assert (variants["text"].str.len() < variants["product_id"].map(first).str.len()).mean() > 0.95
    attributes = sim.products.set_index("product_id")["content"].map(parse_attributes)
    mentioned = [frozenset(mentioned_values(t, attributes[p])) for t, p in zip(copies["text"], copies["product_id"])]
    distinct_sets = pd.Series(mentioned, index=copies.index).groupby(copies["product_id"]).nunique()
    assert (distinct_sets >= 2).mean() > 0.7


def test_dirt_is_injected(cfg, sim):
    dirt = cfg.simulator.dirt
    truth_bots = set(sim.truth_users.loc[sim.truth_users["is_bot"], "user_id"])
    assert len(truth_bots) == dirt.bot_users
    impressions = sim.events[sim.events["event_type"] == "impression"].groupby("user_id").size()
    assert impressions[list(truth_bots)].min() >= dirt.bot_impressions * 0.95
    assert impressions.drop(list(truth_bots)).max() < dirt.bot_impressions / 2
    assert sim.events["event_id"].duplicated().sum() == sim.params["dirt"]["duplicate_events"] > 0
    for column in ["timestamp", "position", "propensity", "value"]:
        assert sim.events[column].isna().sum() > 0, column
    assert sim.users[["age_band", "city_tier", "signup_date"]].isna().sum().min() > 0
    prices = sim.products["price"]
    assert ((prices == 0) | (prices > cfg.cleaning.price_max)).sum() == len(sim.params["dirt"]["bad_price_products"]) > 0
    assert (prices.dropna() >= 0).all()  # negative prices are a corruption, never simulated dirt
    assert sim.events[["event_id", "user_id", "product_id", "copy_id"]].notna().all().all()
