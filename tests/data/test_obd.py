import io
import tarfile
import zipfile

import pandas as pd
import pytest

from components.data.obd import ObdFetchError, extract_obd_csvs, fetch_obd, obd_raw_layer
from components.data.raw import RawFormatError
from components.data.source import run_source
from tests.data.obd_files import ITEMS, LOGS, write_obd

def test_obd_rows_map_to_impressions_clicks_pseudo_users_and_products(tmp_path):
    layer = obd_raw_layer(write_obd(tmp_path / "obd"), "random", "all")
    events, users, products, copies = (layer.tables[t] for t in ["events", "users", "products", "copies"])
    assert (events["event_type"] == "impression").sum() == 4 and (events["event_type"] == "click").sum() == 2
    clicks = events[events["event_type"] == "click"]
    impressions = events[events["event_type"] == "impression"].set_index(events[events["event_type"] == "impression"]["event_id"].str.replace("-impression", ""))
    for _, click in clicks.iterrows():
        imp = impressions.loc[click["event_id"].replace("-click", "")]
        assert (click[["user_id", "product_id", "position", "propensity", "timestamp"]] == imp[["user_id", "product_id", "position", "propensity", "timestamp"]]).all()
    assert events["copy_id"].isna().all() and copies.empty and list(copies.columns) == ["copy_id", "product_id", "text", "source", "model_version"]
    assert sorted(events["position"].unique()) == [1, 2, 3] and (events["propensity"] == 0.33).all()
    # two user-feature combinations -> two pseudo-users, first seen on their first day
    assert len(users) == 2 and set(events["user_id"]) == set(users["user_id"])
    assert sorted(users["signup_date"]) == ["2019-11-24", "2019-11-25"]
    assert set(users["age_band"]) == {"unknown"}
    # products: hashed categoricals + item_feature_0 quintile; coarsest categorical is the category
    assert list(products["product_id"]) == ["obd-all-item0", "obd-all-item1", "obd-all-item2"]
    assert layer.params["category_feature"] == "item_feature_3"
    assert products.loc[0, "content"].startswith("item_feature_1#ceca2003*item_feature_2#eb6f942c*item_feature_3#79509155*item_feature_0#q")
    assert products["price"].isna().all() and any("price is null" in n for n in layer.params["notes"])


def test_positive_numeric_item_feature_becomes_price(tmp_path):
    items = ITEMS.replace("-0.67", "10.5").replace("-0.72", "20.0")
    layer = obd_raw_layer(write_obd(tmp_path / "obd", items=items), "random", "all")
    assert list(layer.tables["products"]["price"]) == [10.5, 20.0, 1.35]


def test_obd_source_stage_writes_the_raw_layer(make_cfg, tmp_path):
    cfg = make_cfg(profile="obd", paths={"obd_dir": str(write_obd(tmp_path / "obd", policy="bts", campaign="men"))},
                   obd={"behavior_policy": "bts", "campaign": "men"})
    summary = run_source(cfg)
    assert summary["source"] == "obd" and summary["rows"]["events"] == 6 and summary["rows"]["copies"] == 0
    assert pd.read_csv(cfg.stage_dir("source") / "events.csv")["event_id"].str.startswith("obd-bts-men-").all()


def test_bad_obd_files_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="fetch-obd"):
        obd_raw_layer(tmp_path / "nowhere", "random", "all")
    write_obd(tmp_path / "a", logs=LOGS.replace(",propensity_score", ",propensity"))
    with pytest.raises(RawFormatError, match="missing columns \\['propensity_score'\\]"):
        obd_raw_layer(tmp_path / "a", "random", "all")
    write_obd(tmp_path / "b", logs=LOGS.replace("\n3,2019-11-25 10:00:09.100000+00:00,2,", "\n3,2019-11-25 10:00:09.100000+00:00,9,"))
    with pytest.raises(RawFormatError, match="not in item_context.csv: \\[9\\]"):
        obd_raw_layer(tmp_path / "b", "random", "all")
    write_obd(tmp_path / "c")
    (tmp_path / "c/random/all/all.csv").write_bytes(LOGS.encode() + b"4,\xff\xfe\n")
    with pytest.raises(RawFormatError, match="line 6.*not valid UTF-8"):
        obd_raw_layer(tmp_path / "c", "random", "all")


def test_extract_csvs_from_wheel_and_sdist(tmp_path):
    members = {"obp/dataset/obd/random/all/all.csv": LOGS, "obp/dataset/obd/random/all/item_context.csv": ITEMS,
               "obp/dataset/obd/.DS_Store": "x", "obp/__init__.py": ""}
    wheel = tmp_path / "obp-0.4.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for name, text in members.items():
            zf.writestr(name, text)
    written = extract_obd_csvs(wheel, tmp_path / "from_wheel")
    assert [p.relative_to(tmp_path / "from_wheel").as_posix() for p in written] == ["random/all/all.csv", "random/all/item_context.csv"]
    sdist = tmp_path / "obp-0.4.1.tar.gz"
    with tarfile.open(sdist, "w:gz") as tf:
        for name, text in members.items():
            data = text.encode()
            info = tarfile.TarInfo(f"obp-0.4.1/{name}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    extract_obd_csvs(sdist, tmp_path / "from_sdist")
    assert (tmp_path / "from_sdist/random/all/item_context.csv").read_text() == ITEMS
    empty = tmp_path / "obp-0.0.1-py3-none-any.whl"
    with zipfile.ZipFile(empty, "w") as zf:
        zf.writestr("obp/__init__.py", "")
    with pytest.raises(ObdFetchError, match="contains no CSV"):
        extract_obd_csvs(empty, tmp_path / "none")


def test_fetch_obd_reports_pip_failure(tmp_path, monkeypatch):
    # No index and an empty find-links folder: pip fails at once, without touching the network.
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    with pytest.raises(ObdFetchError, match="obp==0.4.1.*failed with exit code"):
        fetch_obd(tmp_path / "dest")
    assert not (tmp_path / "dest").exists()
