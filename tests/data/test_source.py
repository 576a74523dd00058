import json

import pandas as pd

from components.data.raw import RAW_FILES
from components.data.source import read_ground_truth, run_source


def test_simulated_source_writes_raw_layer_and_ground_truth(cfg):
    stale = cfg.stage_dir("source") / "stale.csv"
    stale.parent.mkdir(parents=True)
    stale.write_text("left over from an earlier run")
    summary = run_source(cfg)
    out = cfg.stage_dir("source")
    assert not stale.exists()
    assert json.loads((out / "summary.json").read_text(encoding="utf-8")) == summary
    for table, name in RAW_FILES.items():
        assert (out / name).stat().st_size > 0, name
    events = pd.read_csv(out / "events.csv")
    assert summary["rows"]["events"] == len(events)
    assert events["user_id"].str.startswith("shopper").all()  # raw ids live here, and only here
    assert 0.03 <= summary["simulation"]["ctr"] <= 0.12
    assert summary["dirt"]["bot_users"] == cfg.simulator.dirt.bot_users

    truth = read_ground_truth(cfg, "impressions")
    impressions = set(events.loc[events["event_type"] == "impression", "event_id"])
    assert set(truth["event_id"]) == impressions
    assert truth["click_probability"].between(0, 1).all()
    params = json.loads((out / "ground_truth/params.json").read_text(encoding="utf-8"))
    assert len(params["bot_user_ids"]) == cfg.simulator.dirt.bot_users
    prefs = read_ground_truth(cfg, "user_preferences")
    assert {"user_id", "key", "value", "weight", "preferred"} <= set(prefs.columns)
    weight_sums = prefs.groupby(["user_id", "key"])["weight"].sum()
    assert weight_sums.between(0.999, 1.001).all()  # a Dirichlet distribution per user and key
