import pandas as pd

from components.features.build import _compute_samples, compute_samples
from tests.features.factories import copy, event, frame, ts
from tests.features.hand_example import hand_tables


def _with_more_copies(tables: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """pA gets a second catalog copy (mentions only 裙) and a copy the server generated."""
    generated = copy("cG", "pA", "白色裙子") | {"source": "generated", "model_version": "models:/gen/1"}
    copies = pd.concat([tables["copies"], frame("copies", [copy("cA2", "pA", "简约半身裙"), generated])], ignore_index=True)
    events = pd.concat([tables["events"], frame("events", [event("e11", "u2", "pA", "impression", ts(hours=4), "cG", 0)])], ignore_index=True)
    return tables | {"copies": copies, "events": events}


def _options(tables, cfg) -> pd.DataFrame:
    # Before the time split, which a four-hour log cannot fill.
    _, _, context = _compute_samples(tables["events"], tables["products"], tables["copies"], tables["users"], cfg.features)
    return context.copy_options


def test_every_catalog_copy_of_the_product_is_an_option_with_its_point_in_time_feature(cfg):
    tables = _with_more_copies(hand_tables())
    options = _options(tables, cfg)
    # pA's impressions that showed a catalog copy: e1, e8, e10. pB and pC have one copy each, and
    # e11 showed a generated copy, which was never an option for anyone.
    assert sorted(options["event_id"].unique()) == ["e1", "e10", "e8"]
    assert set(options["copy_id"]) == {"cA", "cA2"} and (options["n_options"] == 2).all()
    by = options.set_index(["event_id", "copy_id"])["uc_copy_pref_mentions"]
    # Before e8 u1's top values are 裙 and 白色: cA (白色连衣裙) mentions both, cA2 (简约半身裙) only 裙.
    assert (by["e8", "cA"], by["e8", "cA2"]) == (2, 1)
    # No click before e1 (u1's first event) or e10 (u2 never clicked): no top values yet.
    assert by["e1"].tolist() == [0, 0] and by["e10"].tolist() == [0, 0]


def test_the_shown_option_carries_the_impressions_own_feature(cfg):
    tables = _with_more_copies(hand_tables())
    samples, _ = compute_samples(tables["events"], tables["products"], tables["copies"], tables["users"], cfg.features)
    shown = _options(tables, cfg).merge(samples[["event_id", "copy_id", "uc_copy_pref_mentions"]], on=["event_id", "copy_id"])
    assert len(shown) == 3
    assert (shown["uc_copy_pref_mentions_x"] == shown["uc_copy_pref_mentions_y"]).all()


def test_no_product_with_two_copies_gives_no_options(cfg):
    options = _options(hand_tables(), cfg)
    assert options.empty and list(options.columns) == ["event_id", "copy_id", "n_options", "uc_copy_pref_mentions"]
