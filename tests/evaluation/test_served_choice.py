"""What the server's choice earns on generated candidates: the summary over requests."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from components.evaluation.served_choice import summarize


def _requests(n_shoppers: int = 40, per_shopper: int = 20) -> pd.DataFrame:
    """Half the shoppers gain +100% from the pick, half nothing: the requests of one shopper
    move together."""
    user = np.repeat(np.arange(n_shoppers), per_shopper)
    gains = user % 2 == 0
    return pd.DataFrame({"user_id": [f"u{u}" for u in user], "uniform": 0.1, "pick": np.where(gains, 0.2, 0.1),
                         "served": np.where(gains, 0.18, 0.1), "best": 0.2, "differ": True, "scored": True})


def test_the_lifts_interval_resamples_shoppers_not_requests():
    report = summarize(_requests(), seed=0)
    assert report["requests"] == 800 and report["shoppers"] == 40
    assert report["lift_pick"] == pytest.approx(0.5) and report["gap_closed"] == pytest.approx(0.5)
    low, high = report["lift_pick_ci"]
    # 40 independent shoppers: [0.35, 0.65]. Resampling the 800 requests gave [0.465, 0.533], as
    # if a shopper's 20 requests were 20 shoppers.
    assert low < 0.42 and high > 0.58
    assert low > 0.25 and high < 0.75


def test_a_test_impression_is_replayed_with_what_was_known_at_its_time(make_cfg):
    # u1 clicks a black skirt, then is shown a white one (the impression replayed), clicks it and
    # comes back to click it again; u2 clicks trousers, so skirts are u1's more than everyone's.
    # At the end of the data the white skirt's own clicks make it u1's top colour, their pair's
    # clicks 2 and 白色 a focus: none of it was known when the impression was shown.
    from components.data.privacy import load_key
    from components.data.schema import write_all
    from components.evaluation.served_choice import AffinitiesAsOf, replay
    from components.features.build import run_features
    from components.models.preference.explain import FeatureFiles, pair_feature_row
    from components.serving.copywriter import ShopperData
    from tests.features.factories import copy, event, frame, product, ts, user

    cfg = make_cfg(features={"valid_days": 1, "test_days": 1})  # three days of events: every split has one
    clean = cfg.stage_dir("clean")
    tables = {
        "products": frame("products", [product("black", {"类型": ["裙"], "颜色": ["黑色"]}), product("white", {"类型": ["裙"], "颜色": ["白色"]}),
                                       product("pants", {"类型": ["裤"], "颜色": ["红色"]})]),
        "copies": frame("copies", [copy("c-black", "black", "黑色长裙"), copy("c-white", "white", "白色连衣裙"), copy("c-pants", "pants", "红色长裤")]),
        "users": frame("users", [user("u1"), user("u2")]),
        "events": frame("events", [
            event("e0", "u1", "black", "impression", ts(0), "c-black"), event("e0c", "u1", "black", "click", ts(0, seconds=10), "c-black"),
            event("e2", "u2", "pants", "impression", ts(0, 1), "c-pants"), event("e2c", "u2", "pants", "click", ts(0, 1, 10), "c-pants"),
            event("e1", "u1", "white", "impression", ts(1), "c-white"), event("e1c", "u1", "white", "click", ts(1, seconds=5), "c-white"),
            event("e3", "u1", "white", "impression", ts(2), "c-white"), event("e3c", "u1", "white", "click", ts(2, seconds=5), "c-white"),
        ]),
    }
    write_all(tables, clean)
    run_features(cfg)
    files = FeatureFiles.load(cfg.stage_dir("features"), clean)
    affinities = AffinitiesAsOf(tables["events"], tables["products"], tables["users"], cfg.features.affinity_prior_strength)
    load_key(cfg, create=True)  # the data's pseudonym key, as ingestion creates it
    data = ShopperData.load(cfg)

    class Writer:  # the generator: writes two skirts, records the focus it is asked for
        def generate(self, attributes, focus=None, **_):
            self.focus = focus
            return ["白色连衣裙", "黑色长裙"]

        def servable(self, texts, attributes):
            return list(texts), {}

    class Recorder:  # the preference model: records the rows it scores
        def predict_copies(self, frame, texts, attributes):
            self.frame = frame
            return np.array([0.5, 0.4])

    generator, model = Writer(), Recorder()
    replayed = replay(files.samples[files.samples["event_id"] == "e1"], affinities, data, files, generator, model, cfg)
    assert replayed.texts == ["白色连衣裙", "黑色长裙"] and list(replayed.scores) == [0.5, 0.4]
    row = model.frame
    assert (row["up_n_impressions"] == 0).all() and (row["up_n_clicks"] == 0).all() and (row["u_n_clicks"] == 1).all()
    # top values then: 裙 and 黑色 (now 白色): the white copy mentions one, the black two
    assert row["uc_copy_pref_mentions"].tolist() == [1, 2]
    assert generator.focus == ["裙"]
    # What the end-of-data row (the server's, and this evaluation's before) says of the pair.
    later = pair_feature_row(cfg, "u1", "white", files)
    assert int(later["up_n_clicks"].iloc[0]) == 2 and int(later["up_n_impressions"].iloc[0]) == 2

    # u2's first impression: the server had no row of u2 yet, so it drew uniformly.
    first = replay(files.samples[files.samples["event_id"] == "e2"], affinities, data, files, generator, Recorder(), cfg)
    assert first.scores is None and first.texts
