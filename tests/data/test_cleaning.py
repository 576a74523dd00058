import json

import numpy as np
import pandas as pd
import pytest

from components.data.cleaning import (
    NothingLeft,
    bot_detection_report,
    bot_signals,
    clean_events,
    clean_products,
    detect_bots,
    drop_dangling,
    drop_duplicate_ids,
    drop_missing,
    robust_z,
    run_clean,
    user_activity,
)
from components.data.ingest import run_ingest
from components.data.privacy import k_anonymity, load_key, pseudonymize
from components.data.schema import load_all, write_table
from components.data.source import run_source
from components.features.labels import link_outcomes
from tests.data.obd_files import write_obd


@pytest.fixture(autouse=True)
def no_env_key(cfg, monkeypatch):
    monkeypatch.delenv(cfg.privacy.key_env, raising=False)


def run_chain(cfg):
    source = run_source(cfg)
    run_ingest(cfg)
    return source, run_clean(cfg)


def test_cleaning_removes_the_dirt_and_counts_it(make_cfg):
    cfg = make_cfg()
    source, summary = run_chain(cfg)
    clean = load_all(cfg.stage_dir("clean"))
    assert json.loads((cfg.stage_dir("clean") / "summary.json").read_text(encoding="utf-8")) == summary
    removed, imputed = summary["removed"], summary["imputed"]

    events = clean["events"]
    assert events["event_id"].is_unique and events.drop(columns=["position", "propensity", "copy_id"]).notna().all().all()
    assert events[events["event_type"] == "impression"].notna().all().all()  # an impression needs slot, propensity, copy
    assert removed["duplicate_events"] == source["dirt"]["duplicate_events"]
    assert removed["events_missing_required"] > 0 and imputed["events.value"] > 0
    products = clean["products"]
    assert products["price"].between(cfg.cleaning.price_min, cfg.cleaning.price_max).all()
    assert products[["category", "attributes"]].notna().all().all()
    assert imputed["products.price_out_of_range"] == source["dirt"]["bad_price_products"]
    assert clean["users"].notna().all().all() and imputed["users.signup_date"] > 0
    # referential integrity after bot and dangling removal
    assert set(events["user_id"]) <= set(clean["users"]["user_id"])
    assert set(events["product_id"]) <= set(products["product_id"])
    assert set(events["copy_id"].dropna()) <= set(clean["copies"]["copy_id"])
    # every removed event is accounted for by exactly one reason
    event_reasons = ["duplicate_events", "replayed_events", "events_missing_required", "impressions_missing_required", "bot_events", "events_dangling_user",
                     "events_dangling_product", "events_dangling_copy"]
    assert summary["rows_before"]["events"] - sum(removed[r] for r in event_reasons) == summary["rows_after"]["events"]
    assert summary["rows_before"]["users"] - removed["bot_users"] == summary["rows_after"]["users"]
    assert summary["k_anonymity"] == k_anonymity(clean["users"], ["age_band", "city_tier"], cfg.privacy.k_anonymity_min)
    assert summary["k_anonymity"]["smallest_group"] >= 1


def test_an_outcome_needs_no_slot_propensity_or_copy_but_an_impression_does(make_cfg):
    """A shop's purchase rarely carries the slot or propensity of the impression that led to it:
    dropping such outcomes would zero every purchase label and spend feature."""
    cfg = make_cfg()
    run_source(cfg)
    run_ingest(cfg)
    tables = load_all(cfg.stage_dir("ingested"))
    events = tables["events"].dropna().drop_duplicates("event_id").reset_index(drop=True)
    outcome = events["event_type"] != "impression"
    events.loc[outcome, ["position", "propensity", "copy_id"]] = None
    no_slot = events.index[~outcome][:3]
    events.loc[no_slot, "position"] = None
    cleaned, removed = clean_events(events, copy_less_source=False)
    assert removed["events_missing_required"] == 0 and removed["impressions_missing_required"] == 3
    assert (cleaned["event_type"] != "impression").sum() == outcome.sum()
    kept, _, dangling = drop_dangling(cleaned, tables["users"], tables["products"], tables["copies"], copy_less_source=False)
    assert dangling["events_dangling_copy"] == 0 and (kept["event_type"] == "purchase").sum() == (events["event_type"] == "purchase").sum()
    _, link = link_outcomes(kept[kept["event_type"] == "impression"], kept[kept["event_type"] == "purchase"])
    assert link.linked > 0.9 * (link.linked + link.unlinked)  # linked by shopper and product


def test_a_batch_with_no_impression_left_is_refused_with_the_reason(make_cfg):
    cfg = make_cfg()
    run_source(cfg)
    run_ingest(cfg)
    ingested = cfg.stage_dir("ingested")
    tables = load_all(ingested)
    tables["events"]["copy_id"] = None  # an export that lost the copy column's values
    write_table(tables["events"], ingested, "events")
    with pytest.raises(NothingLeft, match=r"no impression is left .* impressions_missing_required"):
        run_clean(cfg)


def test_an_event_replayed_under_a_new_id_is_dropped_once(make_cfg):
    cfg = make_cfg()
    run_source(cfg)
    run_ingest(cfg)
    events = load_all(cfg.stage_dir("ingested"))["events"].dropna().drop_duplicates("event_id").reset_index(drop=True)
    replays = events.sample(5, random_state=0).assign(event_id=lambda d: "replay-" + d["event_id"])
    # Same shopper and product a microsecond later: a second real impression, kept.
    later = events.sample(3, random_state=1).assign(
        event_id=lambda d: "later-" + d["event_id"], timestamp=lambda d: d["timestamp"] + pd.Timedelta(microseconds=1)
    )
    cleaned, removed = clean_events(pd.concat([events, replays, later], ignore_index=True), copy_less_source=False)
    assert removed["duplicate_events"] == 0 and removed["replayed_events"] == 5
    assert len(cleaned) == len(events) + 3
    assert not cleaned["event_id"].str.startswith("replay-").any()  # the first copy is the one kept
    assert cleaned["event_id"].str.startswith("later-").sum() == 3


def test_bots_are_caught(make_cfg):
    cfg = make_cfg()
    _, summary = run_chain(cfg)
    params = json.loads((cfg.stage_dir("source") / "ground_truth/params.json").read_text(encoding="utf-8"))
    true_bots = set(pseudonymize(pd.Series(params["bot_user_ids"]), load_key(cfg)))
    flagged = set(pd.read_csv(cfg.stage_dir("clean") / "bot_users.csv")["user_id"])
    precision = len(flagged & true_bots) / max(len(flagged), 1)
    recall = len(flagged & true_bots) / len(true_bots)
    print(f"bot detection on the tiny world: precision={precision:.2f} recall={recall:.2f}")
    assert precision >= 0.8 and recall >= 0.8
    assert summary["removed"]["bot_users"] == len(flagged)
    assert not set(load_all(cfg.stage_dir("clean"))["users"]["user_id"]) & flagged


def activity_world(seed: int = 0, light_users: int = 0, page_stamped: tuple[str, ...] = (), engaged: bool = False) -> pd.DataFrame:
    """200 shoppers over 10 days: 10-40 impressions on each active day, 3-12 s apart, about 7%
    clicked; a heavy real customer, a crawler, a click farm, a one-event visitor; optionally
    `light_users` who come 1-3 times for one product each (most of a real shop's users), users
    whose impressions are stamped with their page's load time (10 per page), and an engaged
    customer: heavy, clicking 35% of what they see, at a person's pace."""
    rng = np.random.default_rng(seed)
    rows = []
    start = pd.Timestamp("2026-03-01", tz="UTC")

    def add(user, days, per_day, gap, ctr, products=300):
        for day in range(days):
            t = start + pd.Timedelta(days=day, hours=int(rng.integers(8, 20)))
            for i in range(per_day):
                step = float(gap())  # drawn either way: page stamping changes no other user's draws
                if user not in page_stamped:
                    t += pd.Timedelta(seconds=step)
                elif i % 10 == 0:
                    t += pd.Timedelta(seconds=10 * step)
                product = f"p{int(rng.integers(products))}"
                rows.append((user, product, "impression", t))
                if rng.random() < ctr:
                    rows.append((user, product, "click", t + pd.Timedelta(seconds=1)))

    for i in range(200):
        add(f"u{i}", int(rng.integers(3, 11)), int(rng.integers(10, 40)), lambda: 3 + rng.exponential(5), rng.uniform(0.03, 0.12))
    add("best_customer", 10, 150, lambda: 3 + rng.exponential(5), 0.08)  # heavy, but a person's pace and clicks
    add("crawler", 10, 250, lambda: 0.2 + rng.exponential(0.5), 0.0)  # fast and never clicks
    add("click_farm", 10, 60, lambda: 1 + rng.exponential(0.5), 0.6)
    for i in range(light_users):
        for _ in range(int(rng.integers(1, 4))):
            t = start + pd.Timedelta(seconds=float(rng.uniform(0, 10 * 86400)))
            rows.append((f"light{i}", f"p{int(rng.integers(300))}", "impression", t))
            if rng.random() < 0.05:
                rows.append((f"light{i}", "p1", "click", t + pd.Timedelta(seconds=2)))
    rows.append(("one_event", "p1", "impression", start + pd.Timedelta(days=1)))
    if engaged:
        add("engaged_customer", 10, 150, lambda: 3 + rng.exponential(5), 0.35)
    return pd.DataFrame(rows, columns=["user_id", "product_id", "event_type", "timestamp"])


def test_robust_z_is_the_distance_from_the_median_in_scaled_mads():
    z = robust_z(pd.Series([1.0, 2.0, 3.0, 4.0, 100.0, np.nan]))
    assert z.iloc[2] == 0 and np.isclose(z.iloc[4], 97 / 1.4826) and np.isnan(z.iloc[5])
    # over half the values equal (most shoppers never click): the MAD is 0, the scaled mean
    # absolute deviation stands in, so the outlier still stands out
    z = robust_z(pd.Series([0.0] * 6 + [0.9]))
    assert np.isclose(z.iloc[6], 0.9 / (1.2533 * 0.9 / 7)) and (z.iloc[:6] == 0).all()
    assert (robust_z(pd.Series([5.0] * 4)) == 0).all()  # no spread at all: no evidence
    assert robust_z(pd.Series([np.nan, np.nan])).isna().all()
    # against a reference population: the reference's median and spread
    assert np.isclose(robust_z(pd.Series([10.0]), reference=pd.Series([1.0, 2.0, 3.0])).iloc[0], 8 / 1.4826)


def test_a_click_rate_far_below_everyone_elses_is_evidence_too():
    features = pd.DataFrame(
        {"impressions_per_active_day": [20.0] * 41, "median_gap_seconds": [6.0] * 41, "ctr": [0.1 + 0.002 * (i % 5) for i in range(40)] + [0.0]}
    )
    z = bot_signals(features, pd.Series(True, index=features.index))
    assert z["z_click_rate"].iloc[-1] >= 4 and z["z_click_rate"].iloc[:-1].max() < 4


def test_bots_need_several_signals_and_no_share_is_removed(make_cfg):
    cfg = make_cfg(cleaning={"bot_min_impressions": 100})
    events = activity_world()
    activity = detect_bots(events, cfg)
    assert set(activity.index[activity["is_bot"]]) == {"crawler", "click_farm"}
    # The heaviest shopper is a volume outlier only: one signal, kept.
    best = activity.loc["best_customer"]
    assert best["z_volume"] >= cfg.cleaning.bot_z and best["signals"] == 1 and not best["is_bot"]
    assert activity.loc["crawler", ["z_volume", "z_pace"]].ge(cfg.cleaning.bot_z).all()
    # One event: no pace to judge (NaN never counts as evidence), and nothing else stands out.
    assert pd.isna(activity.loc["one_event", "z_pace"]) and activity.loc["one_event", "signals"] == 0
    report = bot_detection_report(activity, cfg)
    assert report["users_flagged"] == 2 and report["users_one_signal_short"] == 1  # best_customer
    assert report["signals_without_spread"] == []
    # Without bots nobody is removed: the rule is a level of evidence, not a share of shoppers.
    clean = detect_bots(events[~events["user_id"].isin(["crawler", "click_farm"])], cfg)
    assert not clean["is_bot"].any()
    # Each of these bots shows two of the three signals: asking for all three spares both.
    strict = detect_bots(events, make_cfg(cleaning={"bot_min_impressions": 100, "bot_min_signals": 3}))
    assert activity.loc[["crawler", "click_farm"], "signals"].eq(2).all() and not strict["is_bot"].any()
    one = make_cfg(cleaning={"bot_min_impressions": 100, "bot_min_signals": 1})
    assert bot_detection_report(detect_bots(events, one), one)["users_one_signal_short"] is None


def test_an_engaged_customer_at_a_persons_pace_is_no_bot(make_cfg):
    """Volume and a high click rate are two signals, and also how a shop's most engaged customer
    looks. A bot's tell is its speed: with bot_require_pace one of the signals must be pace. The
    pace is read from impressions only, so the customer's clicks (a second after each
    impression) do not make them look fast."""
    events = activity_world(engaged=True)
    activity = detect_bots(events, make_cfg(cleaning={"bot_min_impressions": 100}))
    engaged = activity.loc["engaged_customer"]
    assert engaged["z_volume"] >= 4 and engaged["z_click_rate"] >= 4 and engaged["z_pace"] < 4
    assert set(activity.index[activity["is_bot"]]) == {"crawler", "click_farm"}
    without_pace = detect_bots(events, make_cfg(cleaning={"bot_min_impressions": 100, "bot_require_pace": False}))
    assert set(without_pace.index[without_pace["is_bot"]]) == {"crawler", "click_farm", "engaged_customer"}
    impressions_only = user_activity(events[events["event_type"] == "impression"], 1800)
    assert activity.loc["engaged_customer", "median_gap_seconds"] == impressions_only.loc["engaged_customer", "median_gap_seconds"]


def test_light_users_and_page_stamped_logs_do_not_make_real_shoppers_bots(make_cfg):
    """A real shop: most users come once or twice for one product (their click rate is 0 or 1,
    the gap between visits hours), and some logs stamp a page's impressions with its load time.
    Neither may move the yardstick or read as a bot's pace."""
    cfg = make_cfg(cleaning={"bot_min_impressions": 100})
    events = activity_world(light_users=2000, page_stamped=("best_customer", "u0", "u1"))
    activity = detect_bots(events, cfg)
    assert set(activity.index[activity["is_bot"]]) == {"crawler", "click_farm"}
    assert activity["reference"].sum() < 210  # light users are no yardstick
    assert activity.loc["best_customer", "signals"] == 1  # 10 impressions a page: not a bot's pace
    # pace is read within a visit: the hours between a light user's visits are no pace
    light = activity.index.str.startswith("light")
    assert activity.loc[light, "median_gap_seconds"].max() < 1800 and not activity.loc[light, "is_bot"].any()


def test_too_few_established_users_is_no_yardstick(make_cfg):
    cfg = make_cfg(cleaning={"bot_min_impressions": 100, "bot_min_reference_users": 300})
    activity = detect_bots(activity_world(), cfg)
    report = bot_detection_report(activity, cfg)
    assert not activity["is_bot"].any() and report["method"].startswith("skipped: 203 users")


def test_light_users_are_never_bots_and_the_filter_can_be_off(make_cfg):
    cfg = make_cfg(cleaning={"bot_min_impressions": 10_000})
    _, summary = run_chain(cfg)
    assert summary["removed"]["bot_users"] == 0 and summary["bot_detection"]["users_flagged"] == 0
    cfg = make_cfg(cleaning={"bot_filter": False})
    run_ingest(cfg)
    summary = run_clean(cfg)
    assert summary["removed"]["bot_users"] == 0 and summary["bot_detection"]["method"].startswith("disabled")


def test_obd_without_copies_or_prices_cleans_without_loss(make_cfg, tmp_path):
    cfg = make_cfg(profile="obd", paths={"obd_dir": str(write_obd(tmp_path / "obd"))})
    _, summary = run_chain(cfg)
    clean = load_all(cfg.stage_dir("clean"))
    assert summary["rows_after"] == summary["rows_before"]
    assert clean["events"]["copy_id"].isna().all() and clean["copies"].empty
    assert summary["imputed"]["products.price_unavailable"] == len(clean["products"])


def test_the_shop_profile_removes_the_example_exports_bots(make_cfg):
    """data/shop_example holds the simulator's output with 6 bots among 106 shoppers (its README says how
    it was made): cleaning must find all six and keep every real shopper, its heaviest included."""
    from components.data.cleaning import run_clean
    from components.data.ingest import run_ingest
    from components.data.privacy import load_key, pseudonym
    from components.data.schema import load_table
    from components.data.source import run_source
    from components.validation.gate import run_validate
    from tests.conftest import ROOT

    cfg = make_cfg("shop", tiny=False, paths={"source_folder": str(ROOT / "data/shop_example")})
    run_source(cfg)
    run_ingest(cfg)
    run_validate(cfg)
    summary = run_clean(cfg)
    bots = ["shopper000004", "shopper000041", "shopper000051", "shopper000052", "shopper000065", "shopper000081"]
    key = load_key(cfg)
    kept = set(load_table(cfg.stage_dir("clean"), "users")["user_id"])
    assert not kept & {pseudonym(b, key) for b in bots}
    assert summary["bot_detection"]["users_flagged"] == len(bots)


def test_prices_at_the_bounds_are_kept_and_only_prices_outside_them_imputed(cfg):
    low, high = cfg.cleaning.price_min, cfg.cleaning.price_max
    products = pd.DataFrame({"product_id": ["p1", "p2", "p3", "p4", "p5"], "attributes": [{"类型": ["裙"]}] * 5,
                             "category": ["裙"] * 4 + ["裤"], "source": ["s"] * 5, "price": [low, high, 50.0, high + 1, 200.0]})
    cleaned, _, imputed = clean_products(products, cfg)
    # p4 gets its category's median of the valid prices (50), not the median of all (125)
    assert cleaned["price"].tolist() == [low, high, 50.0, 50.0, 200.0]
    assert imputed["products.price_out_of_range"] == 1


def test_rows_without_an_id_are_counted_as_missing_not_as_duplicates():
    events = pd.DataFrame({"event_id": ["e1", "e1", None, None], "user_id": ["u"] * 4})
    kept, duplicates = drop_duplicate_ids(events, "events")
    assert duplicates == 1 and len(kept) == 3 and kept["event_id"].isna().sum() == 2
    assert drop_missing(kept, ["event_id"])[1] == 2
