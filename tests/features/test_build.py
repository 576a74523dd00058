import json
import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from components.data.schema import write_all
from components.features.build import (
    NUMERIC_FEATURES,
    FeatureInputError,
    build_feature_tables,
    compute_samples,
    load_samples,
    run_features,
)
from tests.features.factories import event, frame, simulate, ts
from tests.features.hand_example import hand_tables

POINT_IN_TIME_COLUMNS = [*NUMERIC_FEATURES, "is_cold"]


def _samples(tables, fcfg):
    samples, _ = compute_samples(tables["events"], tables["products"], tables["copies"], tables["users"], fcfg)
    return samples.set_index("event_id")


def _assert_same_features(left: pd.Series, right: pd.Series, event_id: str) -> None:
    for column in POINT_IN_TIME_COLUMNS:
        assert left[column] == pytest.approx(right[column], rel=1e-9, abs=1e-9), (event_id, column)
    assert list(left["hist_products"]) == list(right["hist_products"]), event_id


# ---------------------------------------------------------------- hand-computed example


def test_hand_example_every_feature_of_the_late_impression(cfg):
    e8 = _samples(hand_tables(), cfg.features).loc["e8"]
    # Before 3h u1 has e1..e7 (7 events); the click e9 at exactly 3h must not count.
    assert e8["u_n_events"] == 7
    assert (e8["u_n_impressions"], e8["u_n_clicks"], e8["u_n_add_to_cart"], e8["u_n_purchases"]) == (3, 2, 1, 1)
    assert e8["u_monetary"] == 50.0
    assert e8["u_has_history"] == 1 and e8["is_cold"] == False  # noqa: E712 (numpy bool)
    assert math.isclose(e8["u_recency_hours"], 59 / 60)  # last event e7 at 2h01m
    # Global CTR before 3h: 2 clicks / 4 impressions -> (2+1)/(4+2) = 0.5; prior strength 10.
    assert math.isclose(e8["u_ctr"], (2 + 10 * 0.5) / (3 + 10))
    assert e8["p_n_impressions"] == 2  # e1 and u2's e10
    assert math.isclose(e8["p_ctr"], (1 + 10 * 0.5) / (2 + 10))
    assert (e8["up_n_impressions"], e8["up_n_clicks"]) == (1, 1)
    assert math.isclose(e8["u_days_since_signup"], 10 + 3 / 24)
    assert math.isclose(e8["p_log_price"], math.log1p(100.0))
    # Clicks pA(裙,白色), pC(裙,黑色); two values per key; strength 2 -> (n + 2/2) / (2 + 2).
    assert math.isclose(e8["ua_attr_affinity"], ((2 + 1) / 4 + (1 + 1) / 4) / 2)
    assert math.isclose(e8["ua_attr_affinity_max"], 3 / 4)
    assert math.isclose(e8["ua_category_affinity"], (2 + 1) / (2 + 2))
    # Top values: 裙 (2 clicks); 颜色 tie 白色/黑色 at 1 -> 白色 got there first. cA mentions both.
    assert e8["uc_copy_pref_mentions"] == 2
    assert list(e8["hist_products"]) == ["pA", "pC"]
    assert e8["position"] == 2 and e8["label"] == 0 and e8["label_purchase"] == 0


def test_hand_example_cold_shopper_and_labels(cfg):
    samples = _samples(hand_tables(), cfg.features)
    e10 = samples.loc["e10"]
    assert e10["u_has_history"] == 0 and e10["u_n_events"] == 0 and e10["is_cold"] == True  # noqa: E712
    assert e10["u_recency_hours"] >= 24 * 365
    # Global CTR before 1h: e1 clicked by e2 -> (1+1)/(1+2); e3 at exactly 1h is excluded.
    assert math.isclose(e10["u_ctr"], 2 / 3)
    assert math.isclose(e10["p_ctr"], (1 + 10 * 2 / 3) / (1 + 10))
    assert math.isclose(e10["ua_attr_affinity"], 0.5) and e10["uc_copy_pref_mentions"] == 0
    assert list(e10["hist_products"]) == []
    assert samples["label"].to_dict() == {"e1": 1, "e3": 1, "e4": 1, "e8": 0, "e10": 0}
    assert samples["label_purchase"].to_dict() == {"e1": 0, "e3": 0, "e4": 1, "e8": 0, "e10": 0}
    assert [list(samples.loc[e, "hist_products"]) for e in ("e1", "e3", "e4")] == [[], ["pA"], ["pA"]]


def test_clicks_that_answer_no_impression_are_interest_but_no_click_rate(cfg):
    """A click bot hitting pA 50 times with no impression shown: pA's click rate and u2's must
    not move (they did: p_ctr is clicks over impressions), while u2's click count and history,
    the shopper's interest, still see the clicks."""
    hand = hand_tables()
    later = frame("events", [event("e11", "u2", "pB", "impression", ts(hours=4), "cB", 0)])
    tables = {**hand, "events": pd.concat([hand["events"], later], ignore_index=True)}
    bot = [event(f"b{i}", "u2", "pA", "click", ts(hours=2, seconds=i), "cA", 0) for i in range(50)]
    with_bot = {**tables, "events": pd.concat([tables["events"], frame("events", bot)], ignore_index=True)}
    before, after = _samples(tables, cfg.features), _samples(with_bot, cfg.features)
    assert after.loc["e8", "p_ctr"] == pytest.approx(before.loc["e8", "p_ctr"])
    assert after.loc["e11", "u_ctr"] == pytest.approx(before.loc["e11", "u_ctr"])
    assert after.loc["e11", "u_n_clicks"] == before.loc["e11", "u_n_clicks"] + 50
    assert "pA" in list(after.loc["e11", "hist_products"]) and "pA" not in list(before.loc["e11", "hist_products"])
    _, report = compute_samples(with_bot["events"], with_bot["products"], with_bot["copies"], with_bot["users"], cfg.features)
    assert report["clicks_outside_click_rates"] == 50 and report["click_unlinked"] == 50


@pytest.mark.parametrize(("threshold", "cold"), [(7, False), (8, True)])
def test_cold_flag_threshold_is_prior_events(make_cfg, threshold, cold):
    fcfg = make_cfg(features={"min_events_returning": threshold}).features
    assert bool(_samples(hand_tables(), fcfg).loc["e8", "is_cold"]) is cold


def test_hand_example_end_of_data_user_affinity(cfg):
    tables = hand_tables()
    # Two more days so the time split has train/valid/test rows.
    extra = [
        event("x1", "u2", "pB", "impression", pd.Timestamp("2026-01-05 12:00", tz="UTC"), "cB", 0),
        event("x2", "u2", "pB", "impression", pd.Timestamp("2026-01-06 12:00", tz="UTC"), "cB", 0),
        event("x3", "u2", "pB", "impression", pd.Timestamp("2026-01-07 12:00", tz="UTC"), "cB", 0),
    ]
    tables["events"] = pd.concat([tables["events"], frame("events", extra)], ignore_index=True)
    built = build_feature_tables(tables, cfg.features.model_copy(update={"valid_days": 1, "test_days": 1}))
    u1 = built.user_affinity[built.user_affinity["user_id"] == "u1"].set_index(["attr_key", "attr_value"])
    # u1 clicked pA, pC, pB: 类型 裙 2/3, 裤 1/3; 颜色 白色 1/3, 黑色 2/3 (黑色 overtook 白色 at e9).
    assert u1.loc[("类型", "裙"), "clicks"] == 2 and u1.loc[("类型", "裙"), "key_clicks"] == 3
    assert math.isclose(u1.loc[("类型", "裙"), "affinity"], (2 + 1) / (3 + 2))
    assert math.isclose(u1.loc[("颜色", "白色"), "affinity"], (1 + 1) / (3 + 2))
    assert u1["is_top"].to_dict() == {
        ("类型", "裙"): True, ("类型", "裤"): False, ("颜色", "黑色"): True, ("颜色", "白色"): False,
    }
    assert set(built.product_attributes.columns) == {"product_id", "attr_key", "attr_value"}
    assert len(built.product_attributes) == 6
    assert built.samples["split"].tolist() == ["train"] * 6 + ["valid", "test"]


# ---------------------------------------------------------------- leakage


def test_no_event_at_or_after_an_impression_changes_its_features(cfg):
    """Recompute each chosen sample after deleting EVERY event at or after its timestamp
    (its own click, same-instant events of its session and of other shoppers, the whole future):
    its features must be identical."""
    tables = simulate(seed=3)
    full = _samples(tables, cfg.features)
    events = tables["events"]
    impressions = events[events["event_type"] == "impression"]
    clicked = full.index[full["label"] == 1]
    # Late clicked impressions of active shoppers: the most future there is to leak.
    late = impressions[impressions["timestamp"] > impressions["timestamp"].quantile(0.5)]
    chosen = list(late[late["event_id"].isin(clicked)].sample(5, random_state=0)["event_id"])
    chosen += list(late[~late["event_id"].isin(clicked)].sample(3, random_state=1)["event_id"])
    for event_id in chosen:
        t = events.loc[events["event_id"] == event_id, "timestamp"].iloc[0]
        truncated = dict(tables, events=events[(events["timestamp"] < t) | (events["event_id"] == event_id)])
        assert (events["timestamp"] >= t).sum() > 1  # there really was a future to delete
        recomputed = _samples(truncated, cfg.features)
        _assert_same_features(recomputed.loc[event_id], full.loc[event_id], event_id)


def test_same_instant_events_are_excluded_but_earlier_ones_count(cfg):
    """An adversarial click+purchase at exactly t leaves the features alone; 1 µs earlier it counts
    (so the comparison above can detect a leak)."""
    tables = simulate(seed=4)
    events = tables["events"]
    target = events[events["event_type"] == "impression"].iloc[len(events) // 2]
    base = _samples(tables, cfg.features).loc[target["event_id"]]

    def with_extra(at: pd.Timestamp) -> pd.Series:
        extra = frame("events", [
            event("z1", target["user_id"], target["product_id"], "click", at, target["copy_id"], 0),
            event("z2", target["user_id"], target["product_id"], "purchase", at, target["copy_id"], 0, value=10.0),
        ])
        return _samples(dict(tables, events=pd.concat([events, extra], ignore_index=True)), cfg.features).loc[
            target["event_id"]
        ]

    _assert_same_features(with_extra(target["timestamp"]), base, target["event_id"])
    earlier = with_extra(target["timestamp"] - pd.Timedelta(microseconds=1))
    assert earlier["u_n_clicks"] == base["u_n_clicks"] + 1
    assert earlier["u_n_purchases"] == base["u_n_purchases"] + 1
    assert earlier["up_n_clicks"] == base["up_n_clicks"] + 1
    assert earlier["u_monetary"] == pytest.approx(base["u_monetary"] + 10.0)
    assert list(earlier["hist_products"])[-1] == target["product_id"]


def test_features_match_a_naive_reference_on_random_samples(cfg):
    """Loop implementation of the definitions (filter events < t per impression) agrees with the
    vectorized one on counters, recency, history and top-value mentions."""
    tables = simulate(seed=5)
    events, copies = tables["events"], tables["copies"].set_index("copy_id")
    attributes = tables["products"].set_index("product_id")["attributes"]
    samples = _samples(tables, cfg.features)
    n_hist = cfg.features.history_length
    for event_id in samples.sample(60, random_state=2).index:
        row = samples.loc[event_id]
        before = events[(events["user_id"] == row["user_id"]) & (events["timestamp"] < row["timestamp"])]
        before = before.sort_values(["timestamp", "event_id"])
        kinds = before["event_type"].value_counts()
        assert row["u_n_events"] == len(before)
        assert row["u_n_impressions"] == kinds.get("impression", 0)
        assert row["u_n_clicks"] == kinds.get("click", 0)
        assert row["u_monetary"] == pytest.approx(before.loc[before["event_type"] == "purchase", "value"].sum())
        clicks = before[before["event_type"] == "click"]
        assert list(row["hist_products"]) == list(clicks["product_id"])[-n_hist:]
        if len(before):
            hours = (row["timestamp"] - before["timestamp"].max()) / pd.Timedelta(hours=1)
            assert row["u_recency_hours"] == pytest.approx(hours)
        # Top value per key: most clicks; a tie keeps the value that got there first.
        counts, top = {}, {}
        for product_id in clicks["product_id"]:
            for key, values in attributes[product_id].items():
                for value in values:
                    counts[key, value] = counts.get((key, value), 0) + 1
                    if key not in top or counts[key, value] > counts[key, top[key]]:
                        top[key] = value
        text = copies.loc[row["copy_id"], "text"]
        assert row["uc_copy_pref_mentions"] == sum(value in text for value in top.values()), event_id


# ---------------------------------------------------------------- split, stage I/O, bad input


def test_a_windowed_label_never_reaches_into_a_later_split(cfg):
    # With a 2-day window, a train impression from the day before valid could take its label
    # from a valid-period click; rows whose window is still open at the end are unknowable.
    fcfg = cfg.features.model_copy(update={"valid_days": 3, "test_days": 3, "label_window_days": 2})
    built = build_feature_tables(simulate(seed=6, days=16), fcfg)
    samples, bounds = built.samples, built.report["split_boundaries"]
    reach = samples["timestamp"] + pd.Timedelta(days=2)
    assert (reach[samples["split"] == "train"] <= pd.Timestamp(bounds["valid_start"])).all()
    assert (reach[samples["split"] == "valid"] <= pd.Timestamp(bounds["test_start"])).all()
    dropped = built.report["label_window_dropped"]
    assert dropped["train"] > 0 and dropped["valid"] > 0 and dropped["test"] > 0
    assert set(samples["split"]) == {"train", "valid", "test"}
    with pytest.raises(ValueError, match="leaves no complete"):
        build_feature_tables(simulate(seed=6, days=16), fcfg.model_copy(update={"label_window_days": 5}))


def test_split_is_time_ordered_without_overlap(cfg):
    samples = build_feature_tables(simulate(seed=6), cfg.features).samples
    by_split = samples.groupby("split")["timestamp"].agg(["min", "max", "size"])
    assert set(by_split.index) == {"train", "valid", "test"}
    assert by_split.loc["train", "max"] < by_split.loc["valid", "min"]
    assert by_split.loc["valid", "max"] < by_split.loc["test", "min"]
    last_day = samples["timestamp"].max().normalize()
    test_days = samples.loc[samples["split"] == "test", "timestamp"].dt.normalize().unique()
    assert len(test_days) <= cfg.features.test_days and test_days.min() == last_day - pd.Timedelta(days=cfg.features.test_days - 1)
    assert samples["timestamp"].is_monotonic_increasing


def test_run_features_writes_the_contract(cfg):
    write_all(simulate(seed=7), cfg.stage_dir("clean"))
    summary = run_features(cfg)
    out = cfg.stage_dir("features")
    spec = json.loads((out / "feature_spec.json").read_text(encoding="utf-8"))
    assert spec["categorical"] == ["user_id", "product_id", "category"]
    assert spec["sequence"] == ["hist_products"] and spec["label"] == "label" and spec["time"] == "timestamp"
    schema = pq.read_schema(out / "samples.parquet")
    assert pa.types.is_list(schema.field("hist_products").type)
    assert schema.field("hist_products").type.value_type == pa.string()
    assert str(schema.field("is_cold").type) == "bool" and str(schema.field("label").type) == "int64"
    samples = load_samples(out)
    for column in [*spec["numeric"], *spec["categorical"], "event_id", "copy_id", "propensity", "label_purchase", "split"]:
        assert column in samples.columns, column
    assert not samples[spec["numeric"]].isna().any().any()
    assert samples["event_id"].is_unique and len(samples) == summary["rows"]
    assert summary["shape"] == list(samples.shape)
    assert sum(s["rows"] for s in summary["splits"].values()) == summary["rows"]
    assert 0 < summary["splits"]["train"]["positive_rate"] < 1
    assert 0 < summary["cold_share"] < 1
    assert summary["click_unlinked"] == 0
    affinity = pd.read_parquet(out / "user_affinity.parquet")
    assert {"user_id", "attr_key", "attr_value", "affinity"} <= set(affinity.columns)
    assert affinity["affinity"].between(0, 1).all() and (affinity["attr_key"] == "类型").any()
    assert json.loads((out / "summary.json").read_text(encoding="utf-8"))["rows"] == summary["rows"]
    # the same input gives byte-identical outputs: DVC must not see new features (and retrain) on a re-run
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert "seconds" in run_features(cfg)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def test_bad_input_names_table_column_and_examples(cfg):
    tables = simulate(seed=8)
    events = tables["events"].copy()
    events.loc[events.index[:3], "product_id"] = "ghost"
    with pytest.raises(FeatureInputError, match=r"events\.product_id not in products: 3 rows.*ghost"):
        build_feature_tables(dict(tables, events=events), cfg.features)
    dupes = pd.concat([tables["events"], tables["events"].iloc[:2]], ignore_index=True)
    with pytest.raises(FeatureInputError, match=r"events\.event_id: rows share ids: 4 rows"):
        build_feature_tables(dict(tables, events=dupes), cfg.features)
    for bad_value in (float("inf"), -1.0):
        spent = tables["events"].copy()
        spent.loc[spent.index[spent["event_type"] == "purchase"][0], "value"] = bad_value
        with pytest.raises(FeatureInputError, match=r"events\.value negative or infinite: 1 rows"):
            build_feature_tables(dict(tables, events=spent), cfg.features)
    short = dict(tables, events=tables["events"][tables["events"]["timestamp"] < tables["events"]["timestamp"].min() + pd.Timedelta(days=2)])
    with pytest.raises(ValueError, match="time split leaves .* empty"):
        build_feature_tables(short, cfg.features)
    assert np.isfinite(_samples(tables, cfg.features)[list(NUMERIC_FEATURES)].to_numpy(dtype=float)).all()
