import json

import pandas as pd
import pytest

from components.data.cleaning import clean_events, run_clean
from components.data.ingest import run_ingest
from components.data.privacy import k_anonymity, load_key, pseudonymize
from components.data.schema import load_all
from components.data.source import run_source
from tests.data.obd_files import write_obd

# The tiny world has 6 bots among ~126 users: contamination near that share.
TINY_BOT_SHARE = {"bot_contamination": 0.06}


@pytest.fixture(autouse=True)
def no_env_key(cfg, monkeypatch):
    monkeypatch.delenv(cfg.privacy.key_env, raising=False)


def run_chain(cfg):
    source = run_source(cfg)
    run_ingest(cfg)
    return source, run_clean(cfg)


def test_cleaning_removes_the_dirt_and_counts_it(make_cfg):
    cfg = make_cfg(cleaning=TINY_BOT_SHARE)
    source, summary = run_chain(cfg)
    clean = load_all(cfg.stage_dir("clean"))
    assert json.loads((cfg.stage_dir("clean") / "summary.json").read_text(encoding="utf-8")) == summary
    removed, imputed = summary["removed"], summary["imputed"]

    events = clean["events"]
    assert events["event_id"].is_unique and events.notna().all().all()
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
    assert set(events["copy_id"]) <= set(clean["copies"]["copy_id"])
    # every removed event is accounted for by exactly one reason
    event_reasons = ["duplicate_events", "replayed_events", "events_missing_required", "bot_events", "events_dangling_user",
                     "events_dangling_product", "events_dangling_copy"]
    assert summary["rows_before"]["events"] - sum(removed[r] for r in event_reasons) == summary["rows_after"]["events"]
    assert summary["rows_before"]["users"] - removed["bot_users"] == summary["rows_after"]["users"]
    assert summary["k_anonymity"] == k_anonymity(clean["users"], ["age_band", "city_tier"], cfg.privacy.k_anonymity_min)
    assert summary["k_anonymity"]["smallest_group"] >= 1


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
    cfg = make_cfg(cleaning=TINY_BOT_SHARE)
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


def test_light_users_are_never_bots_and_the_filter_can_be_off(make_cfg):
    cfg = make_cfg(cleaning={**TINY_BOT_SHARE, "bot_min_impressions": 10_000})
    _, summary = run_chain(cfg)
    assert summary["removed"]["bot_users"] == 0 and summary["bot_detection"]["users_flagged"] == 0
    cfg = make_cfg(cleaning={**TINY_BOT_SHARE, "bot_filter": False})
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
    """data/shop holds the simulator's output with 6 bots among 106 shoppers (its README says how
    it was made); the shop profile's bot share must be set so that cleaning finds them."""
    from components.data.cleaning import run_clean
    from components.data.ingest import run_ingest
    from components.data.privacy import load_key, pseudonym
    from components.data.schema import load_table
    from components.data.source import run_source
    from components.validation.gate import run_validate
    from tests.conftest import ROOT

    cfg = make_cfg("shop", tiny=False, paths={"source_folder": str(ROOT / "data/shop")})
    run_source(cfg)
    run_ingest(cfg)
    run_validate(cfg)
    summary = run_clean(cfg)
    bots = ["shopper000004", "shopper000041", "shopper000051", "shopper000052", "shopper000065", "shopper000081"]
    key = load_key(cfg)
    kept = set(load_table(cfg.stage_dir("clean"), "users")["user_id"])
    assert not kept & {pseudonym(b, key) for b in bots}
    assert summary["bot_detection"]["users_flagged"] <= len(bots) + 1  # at most one real shopper mistaken
