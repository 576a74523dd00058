import json
import stat

import pandas as pd
import pytest

from components.data.raw import RAW_FILES
from components.data.source import read_ground_truth, run_source
from tests.data.refusals import refused_naming


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
    assert stat.S_IMODE(out.stat().st_mode) == 0o700 and stat.S_IMODE((out / "users.csv").stat().st_mode) == 0o600
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


def _shop_cfg(make_cfg, folder):
    return make_cfg(data={"source": "folder"}, paths={"source_folder": str(folder)})


def _export_and_a_log_with_a_short_line(make_cfg, tmp_path):
    """A copy of the bundled export, and a feedback log holding one served copy and, on events.csv
    line 3, a row cut short (as edited by hand)."""
    import shutil

    from components.data.feedback import FeedbackLog
    from tests.conftest import ROOT

    folder = tmp_path / "export"
    shutil.copytree(ROOT / "data/shop_example", folder)
    cfg = _shop_cfg(make_cfg, folder)
    users = pd.read_csv(folder / "users.csv", dtype=str)["user_id"]
    product = json.loads((folder / "products.jsonl").read_text(encoding="utf-8").splitlines()[0])["product_id"]
    FeedbackLog(cfg.feedback_dir()).record_serving(users[0], product, "文案。", "models:/copyflow-generator/1", candidates=4)
    with open(cfg.feedback_dir() / "events.csv", "a", encoding="utf-8") as handle:
        handle.write("fb-1,shopper,p\n")
    return cfg, folder


def test_a_shop_export_folder_becomes_the_raw_layer_unchanged(make_cfg, tmp_path):
    from tests.conftest import ROOT

    cfg = _shop_cfg(make_cfg, ROOT / "data/shop_example")
    summary = run_source(cfg)
    out = cfg.stage_dir("source")
    for name in RAW_FILES.values():
        assert (out / name).read_bytes() == (ROOT / "data/shop_example" / name).read_bytes(), name
    assert summary["source"] == "folder" and summary["rows"]["events"] == len(pd.read_csv(out / "events.csv"))
    assert summary["event_types"]["impression"] > summary["event_types"]["click"] > 0
    assert summary["ignored_files"] == ["README.md"]
    assert not (out / "ground_truth").exists()  # a shop has no simulator truth


def test_a_broken_shop_export_is_refused_with_file_and_line_before_anything_is_copied(make_cfg, tmp_path):
    import shutil

    import pytest

    from components.data.raw import RawFormatError
    from tests.conftest import ROOT

    folder = tmp_path / "export"
    shutil.copytree(ROOT / "data/shop_example", folder)
    cfg = _shop_cfg(make_cfg, folder)
    lines = (folder / "products.jsonl").read_text(encoding="utf-8").splitlines()
    lines[2] = lines[2][:-5]  # a truncated line
    (folder / "products.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(RawFormatError, match=r"products.jsonl:3: not valid JSON"):
        run_source(cfg)
    assert not (cfg.stage_dir("source") / "events.csv").exists()
    (folder / "users.csv").unlink()
    with pytest.raises(RawFormatError, match=r"missing \['users.csv'\]"):
        run_source(cfg)
    with pytest.raises(RawFormatError, match="is not a directory"):
        run_source(_shop_cfg(make_cfg, tmp_path / "nowhere"))


def test_bad_values_in_a_shop_export_are_named_in_the_export_all_at_once(make_cfg, tmp_path):
    """A value that is not its column's type stops the source stage, named as export-file:line:
    ingest used to find it in the raw layer's copy (artifacts/<profile>/source/), one file a run."""
    import re
    import shutil

    from components.data.ingest import run_ingest
    from components.data.raw import RawFormatError
    from tests.conftest import ROOT

    folder = tmp_path / "export"
    shutil.copytree(ROOT / "data/shop_example", folder)
    cfg = _shop_cfg(make_cfg, folder)

    def edit(name, line, old, new):
        lines = (folder / name).read_text(encoding="utf-8").split("\n")
        assert re.search(old, lines[line - 1]), (name, line)
        lines[line - 1] = re.sub(old, new, lines[line - 1], count=1)
        (folder / name).write_text("\n".join(lines), encoding="utf-8")

    edit("products.jsonl", 4, r'"price": [0-9.]+', '"price": "cheap"')
    edit("products.jsonl", 7, r'"content": "[^"]+"', '"content": "类型#*风格#简约"')
    edit("users.csv", 6, r'"\d{4}-\d{2}-\d{2}"$', '"sometime"')
    edit("events.csv", 5, r"2026-[0-9: .-]+Z", "yesterday")
    edit("events.csv", 10, r"2026-[0-9: .-]+Z", "yesterday")
    export = {path.name: path.read_bytes() for path in folder.iterdir()}

    with pytest.raises(RawFormatError) as refused:
        run_source(cfg)
    message = str(refused.value)
    for expected in [
        f"{folder / 'products.jsonl'}:4: column 'price': 'cheap' is not a finite number",
        f"{folder / 'products.jsonl'}:7: column 'content': malformed attribute pair '类型#'",
        f"{folder / 'users.csv'}:6: column 'signup_date': 'sometime' is not an ISO 8601 timestamp",
        f"{folder / 'events.csv'}:5: column 'timestamp': 'yesterday' is not an ISO 8601 timestamp",
        f"{folder / 'events.csv'}:10: column 'timestamp': 'yesterday' is not an ISO 8601 timestamp",
    ]:
        assert expected in message, expected
    assert str(cfg.stage_dir("source")) not in message  # never the copy the shop does not edit
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == export  # the export untouched
    assert not (cfg.stage_dir("source") / "products.jsonl").exists()
    with pytest.raises(FileNotFoundError, match="run the source stage first"):
        run_ingest(cfg)  # not four "raw file not found" lines


def test_every_broken_line_of_a_shop_export_is_named_in_one_round(make_cfg, tmp_path):
    """A line that is not valid JSON, or a CSV row without the header's fields, stopped the
    file's read at its first one: each further broken line took another run to find."""
    import shutil

    from tests.conftest import ROOT

    folder = tmp_path / "export"
    shutil.copytree(ROOT / "data/shop_example", folder)
    cfg = _shop_cfg(make_cfg, folder)
    products = (folder / "products.jsonl").read_text(encoding="utf-8").split("\n")
    for line in (3, 9):
        products[line - 1] = products[line - 1][:-5]  # truncated
    (folder / "products.jsonl").write_text("\n".join(products), encoding="utf-8")
    events = (folder / "events.csv").read_text(encoding="utf-8").split("\n")
    events[3] = events[3].rsplit(",", 2)[0]  # line 4 cut off: two fields short
    events[6] += ","  # line 7: a trailing comma
    events[11] = events[11].replace('"impression"', '"impression",')  # line 12: an unquoted comma
    (folder / "events.csv").write_text("\n".join(events), encoding="utf-8")
    users = (folder / "users.csv").read_text(encoding="utf-8").split("\n")
    users[5] = users[5].rsplit(",", 1)[0] + ',"sometime"'  # line 6: a whole row, a bad value
    (folder / "users.csv").write_text("\n".join(users), encoding="utf-8")
    export = {path.name: path.read_bytes() for path in folder.iterdir()}

    refused_naming(run_source, cfg, "cannot ingest: 6 problem(s) in 3 file(s)", [
        f"{folder / 'products.jsonl'}:3: not valid JSON",
        f"{folder / 'products.jsonl'}:9: not valid JSON",
        f"{folder / 'events.csv'}:4: 7 fields, fewer than the header's 9: cut off or mis-quoted",
        f"{folder / 'events.csv'}:7: 10 fields, more than the header's 9",
        f"{folder / 'events.csv'}:12: 10 fields, more than the header's 9",
        f"{folder / 'users.csv'}:6: column 'signup_date': 'sometime' is not an ISO 8601 timestamp",
    ])
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == export  # the export untouched
    assert not (cfg.stage_dir("source") / "products.jsonl").exists()


def test_ids_padded_with_whitespace_in_a_shop_export_are_named_in_the_export(make_cfg, tmp_path):
    """A CSV export that pads its cells split one shopper into two pseudonyms (padding half of
    shopper000051's lines put 354 events under a second shopper, unknown to users.csv) and left an
    event with product_id "p… " dangling. The source stage names each padded id, untrimmed."""
    import shutil

    from tests.conftest import ROOT

    folder = tmp_path / "export"
    shutil.copytree(ROOT / "data/shop_example", folder)
    cfg = _shop_cfg(make_cfg, folder)
    users = (folder / "users.csv").read_text(encoding="utf-8").split("\n")
    users[3] = users[3].replace('"shopper000003"', '"shopper000003\t"')
    (folder / "users.csv").write_text("\n".join(users), encoding="utf-8")
    events = (folder / "events.csv").read_text(encoding="utf-8").split("\n")
    product = events[5].split(",")[2].strip('"')
    events[2] = events[2].replace('"shopper000051"', '" shopper000051"')
    events[5] = events[5].replace(f'"{product}"', f'"{product} "')
    (folder / "events.csv").write_text("\n".join(events), encoding="utf-8")
    export = {path.name: path.read_bytes() for path in folder.iterdir()}

    refused_naming(run_source, cfg, "cannot ingest: 3 problem(s) in 2 file(s)", [
        f"{folder / 'users.csv'}:4: column 'user_id': 'shopper000003\\t' has whitespace at its start or end; trim it in the export",
        f"{folder / 'events.csv'}:3: column 'user_id': ' shopper000051' has whitespace",
        f"{folder / 'events.csv'}:6: column 'product_id': '{product} ' has whitespace",
    ])
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == export  # nothing trimmed in the export
    assert not (cfg.stage_dir("source") / "events.csv").exists()


def test_the_copy_servers_feedback_follows_the_export_into_ingestion(make_cfg, tmp_path):
    """A folder source appends the feedback log (cfg.feedback_dir()) after the export's own
    lines; ingestion then reads the served copies and their events like any other."""
    import shutil

    from components.data.feedback import FeedbackLog
    from components.data.ingest import run_ingest
    from components.data.privacy import load_key, pseudonym
    from tests.conftest import ROOT

    folder = tmp_path / "export"
    shutil.copytree(ROOT / "data/shop_example", folder)
    cfg = _shop_cfg(make_cfg, folder)
    assert run_source(cfg)["feedback"] == {"folder": str(cfg.feedback_dir()), "copies": 0, "events": 0, "skipped_as_duplicates": 0,
                                        "fragments_not_read": 0}

    users = pd.read_csv(folder / "users.csv", dtype=str)["user_id"]
    products = [json.loads(line)["product_id"] for line in (folder / "products.jsonl").read_text(encoding="utf-8").splitlines()]
    log = FeedbackLog(cfg.feedback_dir())
    served = [log.record_serving(users[i], products[i], f"为你写的第{i}条文案。", "models:/copyflow-generator/1", candidates=4) for i in range(3)]
    log.record_event(served[0].serve_id, "click")
    log.record_event(served[0].serve_id, "purchase", value=99.0)
    # an event id the export has already (a client reusing the shop's own id): the export's line wins
    exported_event = log.record_event(served[1].serve_id, "click", event_id="ev000000001")

    summary = run_source(cfg)
    out = cfg.stage_dir("source")
    for name in ("copies.jsonl", "events.csv"):  # the export's bytes first, unchanged
        assert (out / name).read_bytes().startswith((folder / name).read_bytes()), name
    assert summary["feedback"]["copies"] == 3 and summary["feedback"]["events"] == 5  # 3 impressions, click, purchase
    assert summary["feedback"]["skipped_as_duplicates"] == 1 and exported_event == "ev000000001"
    assert summary["feedback"]["event_types"] == {"impression": 3, "click": 1, "purchase": 1}
    assert summary["feedback"]["fragments_not_read"] == 0

    run_ingest(cfg)
    events = pd.read_parquet(cfg.stage_dir("ingested") / "events.parquet")
    mine = events[events["copy_id"] == served[0].copy_id]
    assert sorted(mine["event_type"]) == ["click", "impression", "purchase"]
    assert set(mine["user_id"]) == {pseudonym(users[0], load_key(cfg))}  # raw ids go no further than the raw layer
    copies = pd.read_parquet(cfg.stage_dir("ingested") / "copies.parquet")
    assert (copies.loc[copies["copy_id"] == served[0].copy_id, "source"] == "generated").all()


def test_a_broken_feedback_log_is_named_by_its_own_path(make_cfg, tmp_path):
    # The stage reads a snapshot of the log; an error naming the snapshot (a deleted temp folder)
    # would leave the operator nothing to open.
    import re

    from components.data.raw import RawFormatError

    cfg, folder = _export_and_a_log_with_a_short_line(make_cfg, tmp_path)

    with pytest.raises(RawFormatError) as refused:
        run_source(cfg)
    assert f"{cfg.feedback_dir() / 'events.csv'}:3: 3 fields, fewer than the header's 9" in str(refused.value)

    # a whole row whose value is no time: named by the log's own file and line, not the raw layer's
    log_events = cfg.feedback_dir() / "events.csv"
    lines = log_events.read_text(encoding="utf-8").splitlines()
    lines[-1] = lines[1].replace(re.search(r",(\d{4}-[^,]+),", lines[1]).group(1), "yesterday")
    log_events.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(RawFormatError) as refused:
        run_source(cfg)
    assert f"{log_events}:3: column 'timestamp': 'yesterday' is not an ISO 8601 timestamp" in str(refused.value)


def test_a_broken_export_and_a_broken_feedback_log_are_named_in_one_round(make_cfg, tmp_path):
    # The log was read only once the export had passed: a broken export and a broken log took two
    # runs to find, and a broken log alone left the export copied into a raw layer with no summary.
    import shutil

    from components.data.raw import RawFormatError
    from tests.conftest import ROOT

    cfg, folder = _export_and_a_log_with_a_short_line(make_cfg, tmp_path)
    (cfg.feedback_dir() / "copies.jsonl").write_text("{not json\n", encoding="utf-8")
    exported = (folder / "users.csv").read_text(encoding="utf-8").split("\n")
    exported[5] = exported[5].rsplit(",", 1)[0] + ',"sometime"'
    (folder / "users.csv").write_text("\n".join(exported), encoding="utf-8")

    refused_naming(run_source, cfg, "cannot ingest: 3 problem(s) in 3 file(s)", [
        f"{folder / 'users.csv'}:6: column 'signup_date': 'sometime' is not an ISO 8601 timestamp",
        f"{cfg.feedback_dir() / 'events.csv'}:3: 3 fields, fewer than the header's 9",
        f"{cfg.feedback_dir() / 'copies.jsonl'}:1: not valid JSON",
    ])

    shutil.copy2(ROOT / "data/shop_example/users.csv", folder / "users.csv")  # the export fixed, the log not
    with pytest.raises(RawFormatError, match="2 problem"):
        run_source(cfg)
    assert not (cfg.stage_dir("source") / "events.csv").exists()  # nothing copied before the log was read
