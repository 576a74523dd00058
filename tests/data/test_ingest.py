import json

import pandas as pd
import pytest

from components.data.ingest import run_ingest
from components.data.privacy import PseudonymKeyError, load_key, recorded_key_id, rotate_key
from components.data.raw import RawFormatError, read_raw_table, write_raw_table
from components.data.schema import load_all
from components.data.source import run_source
from tests.data.refusals import refused_naming


@pytest.fixture(autouse=True)
def no_env_key(cfg, monkeypatch):
    monkeypatch.delenv(cfg.privacy.key_env, raising=False)


def string_cells(tables):
    for table, df in tables.items():
        for column in df.columns:
            for value in df[column]:
                if isinstance(value, str):
                    yield table, column, value


def test_ingest_pseudonymizes_and_keeps_the_dirt(cfg):
    source = run_source(cfg)
    summary = run_ingest(cfg)
    tables = load_all(cfg.stage_dir("ingested"))
    assert summary["rows"] == source["rows"] == {t: len(df) for t, df in tables.items()}
    assert tables["events"]["event_id"].duplicated().sum() == source["dirt"]["duplicate_events"]
    assert tables["events"]["timestamp"].isna().sum() > 0

    raw_ids = set(pd.read_csv(cfg.stage_dir("source") / "users.csv")["user_id"])
    leaks = [(t, c) for t, c, v in string_cells(tables) if v in raw_ids or "shopper" in v]
    assert not leaks
    assert set(tables["events"]["user_id"]) <= set(tables["users"]["user_id"])
    assert tables["users"]["user_id"].str.match(r"^u_[0-9a-f]{32}$").all()

    secret = load_key(cfg).secret.decode()
    for stage in ("source", "ingested"):
        text = (cfg.stage_dir(stage) / "summary.json").read_text(encoding="utf-8")
        assert secret not in text and not any(raw in text for raw in raw_ids)
    assert summary["pseudonym_key_origin"] == "file"


def test_pseudonyms_are_stable_per_key_and_change_with_the_key(cfg, monkeypatch):
    run_source(cfg)
    run_ingest(cfg)
    first = load_all(cfg.stage_dir("ingested"))["users"]["user_id"]
    run_ingest(cfg)
    assert load_all(cfg.stage_dir("ingested"))["users"]["user_id"].equals(first)
    monkeypatch.setenv(cfg.privacy.key_env, "rotated key " + "r" * 40)
    with pytest.raises(PseudonymKeyError, match="rotate-key"):
        run_ingest(cfg)  # another key would split every shopper's history: refused, nothing rewritten
    assert load_all(cfg.stage_dir("ingested"))["users"]["user_id"].equals(first)
    rotate_key(cfg)
    summary = run_ingest(cfg)
    assert summary["pseudonym_key_origin"] == f"env:{cfg.privacy.key_env}"
    assert summary["pseudonym_key_id"] == load_key(cfg).key_id == recorded_key_id(cfg)
    rotated = load_all(cfg.stage_dir("ingested"))["users"]["user_id"]
    assert len(rotated) == len(first) and not set(rotated) & set(first)


def write_small_source(source_dir):
    write_raw_table(pd.DataFrame({"product_id": ["p1"], "category": ["裙"], "content": ["类型#裙*品牌#<UNK>*颜色#白色"],
                                  "price": [199.0], "source": ["advertisegen"]}), source_dir, "products")
    write_raw_table(pd.DataFrame({"copy_id": ["c1"], "product_id": ["p1"], "text": ["<UNK>白色连衣裙。"],
                                  "source": ["human"], "model_version": [None]}), source_dir, "copies")
    write_raw_table(pd.DataFrame({"user_id": ["shopper1"], "age_band": ["18-24"], "city_tier": ["tier1"],
                                  "signup_date": ["2025-12-01"]}), source_dir, "users")
    events = pd.DataFrame({"event_id": ["e1", "e2"], "user_id": ["shopper1"] * 2, "product_id": ["p1"] * 2,
                           "copy_id": ["c1"] * 2, "event_type": ["impression", "click"],
                           "timestamp": ["2026-01-05T10:00:00Z", "2026-01-05T10:00:04Z"], "position": [1, 1],
                           "propensity": [0.5, 0.5], "value": [0.0, 0.0]})
    write_raw_table(events, source_dir, "events")


def test_unk_survives_ingestion(cfg):
    write_small_source(cfg.stage_dir("source"))
    run_ingest(cfg)
    tables = load_all(cfg.stage_dir("ingested"))
    assert tables["products"].loc[0, "attributes"] == {"类型": ["裙"], "品牌": ["<UNK>"], "颜色": ["白色"]}
    assert tables["copies"].loc[0, "text"] == "<UNK>白色连衣裙。"
    assert str(tables["events"]["timestamp"].dt.tz) == "UTC" and tables["events"]["position"].tolist() == [1, 1]


def test_bad_source_files_stop_ingestion_with_file_and_line(cfg):
    source_dir = cfg.stage_dir("source")
    write_small_source(source_dir)
    events = source_dir / "events.csv"
    good = events.read_bytes()
    events.write_bytes(good + b"e3,shopper1,p1,c1,impression,2026-01-05T10:00:09Z,\xff,0.5,0.0\n")
    with pytest.raises(RawFormatError, match=r"events.csv: line 4, byte 51: not valid UTF-8"):
        run_ingest(cfg)
    events.write_bytes(good + b"e3,shopper1,p1,c1,impression,2026-01-05T10:00:09Z,second,0.5,0.0\n")
    with pytest.raises(RawFormatError, match=r"events.csv:4: column 'position': 'second' is not a finite number"):
        run_ingest(cfg)
    events.write_bytes(good + b"e3,shopper1,p1,c1,purchase,2026-01-05T10:00:09Z,1,0.5,inf\n")  # parses as a float
    with pytest.raises(RawFormatError, match=r"events.csv:4: column 'value': 'inf' is not a finite number"):
        run_ingest(cfg)
    events.write_bytes(good + b"e3,shopper1,p1,c1,impression,2026-01-05T10:00:09Z,3000000000,0.5,0.0\n")  # overflows int32
    with pytest.raises(RawFormatError, match=r"events.csv:4: column 'position': '3000000000' is not an integer within ±2,147,483,647"):
        run_ingest(cfg)
    events.write_bytes(good + b"e3,shopper1,p1,c1,impression,2026-01-05T18:00:09,1,0.5,0.0\n")  # local time, no offset
    with pytest.raises(RawFormatError, match=r"events.csv:4: column 'timestamp': .* is not a timestamp with a UTC offset"):
        run_ingest(cfg)
    events.write_bytes(good + b"e3,shopper1,p1,c1,impression,yesterday,1,0.5,0.0\n")
    with pytest.raises(RawFormatError, match=r"events.csv:4: column 'timestamp': 'yesterday' is not an ISO 8601 timestamp"):
        run_ingest(cfg)
    events.write_bytes(good + b"e3,shopper1,p1,c1,impression,2026-01-05T10:00:09.123456789Z,1,0.5,0.0\n")  # canonical is us
    with pytest.raises(RawFormatError, match=r"events.csv:4: column 'timestamp': .* is not a timestamp in whole microseconds"):
        run_ingest(cfg)
    events.write_bytes(good + b"e3,shopper1,p1,c1,impression,2026-01-05T10:00:09Z,1,0.02186\n")  # cut off mid-row
    with pytest.raises(RawFormatError, match=r"events.csv:4: 8 fields, fewer than the header's 9: cut off or mis-quoted"):
        run_ingest(cfg)
    events.write_bytes(good)
    products = source_dir / "products.jsonl"
    products.write_text(products.read_text(encoding="utf-8").replace("类型#裙*", "类型裙*"), encoding="utf-8")
    with pytest.raises(RawFormatError, match=r"products.jsonl:1: column 'content': malformed attribute pair"):
        run_ingest(cfg)
    products.write_text(json.dumps({"product_id": "p1", "category": "裙", "content": "类型#裙", "price": True,
                                    "source": "advertisegen"}) + "\n", encoding="utf-8")
    with pytest.raises(RawFormatError, match=r"products.jsonl:1: column 'price': True is not a finite number"):
        run_ingest(cfg)  # JSON true is not a price of 1.0
    assert not (cfg.stage_dir("ingested") / "summary.json").exists()


def test_every_bad_file_is_named_in_one_error_with_file_and_line(cfg):
    # Ingestion used to stop at the first bad column of the first bad table: a shop with three
    # broken files fixed them one run at a time.
    source_dir = cfg.stage_dir("source")
    write_small_source(source_dir)
    products = source_dir / "products.jsonl"
    products.write_text(products.read_text(encoding="utf-8").replace("199.0", '"cheap"').replace("类型#裙*", "类型#*"),
                        encoding="utf-8")
    (source_dir / "copies.jsonl").write_text('{"copy_id": \n', encoding="utf-8")
    users = source_dir / "users.csv"
    users.write_text(users.read_text(encoding="utf-8").replace("2025-12-01", "sometime"), encoding="utf-8")
    events = source_dir / "events.csv"
    events.write_text(events.read_text(encoding="utf-8").replace("2026-01-05T10:00:04Z", "yesterday"), encoding="utf-8")
    before = {path.name: path.read_bytes() for path in source_dir.iterdir()}

    with pytest.raises(RawFormatError) as refused:
        run_ingest(cfg)
    message = str(refused.value)
    assert message.startswith("cannot ingest: 5 problem(s) in 4 file(s)")
    for expected in [
        f"{products}:1: column 'content': malformed attribute pair '类型#'",
        f"{products}:1: column 'price': 'cheap' is not a finite number",
        f"{source_dir / 'copies.jsonl'}:1: not valid JSON",
        f"{users}:2: column 'signup_date': 'sometime' is not an ISO 8601 timestamp",
        f"{events}:3: column 'timestamp': 'yesterday' is not an ISO 8601 timestamp",
    ]:
        assert expected in message, expected
    assert {path.name: path.read_bytes() for path in source_dir.iterdir()} == before  # nothing lost or changed
    assert not cfg.stage_dir("ingested").exists()


def test_a_column_broken_throughout_is_listed_up_to_a_cap_and_counted(cfg):
    from components.data.ingest import MAX_LISTED_PER_FILE

    source_dir = cfg.stage_dir("source")
    write_small_source(source_dir)
    events = source_dir / "events.csv"
    rows = [f"e{i},shopper1,p1,c1,impression,2026-01-05 10:00:{i:02d},1,0.5,0.0" for i in range(3, 43)]  # no offset
    rows[30] = rows[30].replace(",0.5,", ",half,")  # line 34: a second column, past the cap
    events.write_text(events.read_text(encoding="utf-8") + "\n".join(rows) + "\n", encoding="utf-8")

    with pytest.raises(RawFormatError) as refused:
        run_ingest(cfg)
    message = str(refused.value).splitlines()
    assert message[0] == "cannot ingest: 41 problem(s) in 1 file(s); nothing was ingested:"
    listed = [line for line in message[1:] if line.startswith(f"{events}:") and line[len(f"{events}:")].isdigit()]
    assert len(listed) == MAX_LISTED_PER_FILE and listed[0].startswith(f"{events}:4: column 'timestamp'")
    assert message[-1] == (f"{events}: 31 more not listed: column 'timestamp' 30 (lines 14, 15, 16, 17, 18, …), "
                           "column 'propensity' 1 (lines 34)")


def test_every_broken_line_is_named_by_its_own_line_in_one_error_with_the_values(cfg):
    # A line that is not valid JSON, or a CSV row without the header's fields, stopped the file's
    # read at its first one: a shop with 40 broken lines needed 40 fix-and-rerun rounds, and the
    # values of its other files and lines waited behind them.
    from components.data.ingest import MAX_LISTED_PER_FILE

    source_dir = cfg.stage_dir("source")
    write_small_source(source_dir)
    events = source_dir / "events.csv"
    header, *good = events.read_text(encoding="utf-8").splitlines()
    rows = [f"e{i},shopper1,p1,c1,impression,2026-01-05T10:00:{i:02d}Z,1,0.5" for i in range(3, 43)]  # cut off: 8 fields
    rows[5] += ",0.0,"  # line 10: 10 fields, a trailing comma
    rows[35] = "e38,shopper1,p1,c1,impression,2026-01-05T10:00:38Z,1,half,0.0"  # line 40: whole, but a bad value
    events.write_text("\n".join([header, "", *good, *rows]) + "\n", encoding="utf-8")  # a blank line 2 shifts nothing
    products = source_dir / "products.jsonl"
    product = products.read_text(encoding="utf-8").strip()
    products.write_text("\n".join([product[:-3], product.replace('"p1"', '"p2"'), '{"product_id": "p3"'])
                        + "\n", encoding="utf-8")
    users = source_dir / "users.csv"
    users.write_text(users.read_text(encoding="utf-8").replace("2025-12-01", "sometime"), encoding="utf-8")

    with pytest.raises(RawFormatError) as refused:
        run_ingest(cfg)
    message = str(refused.value).splitlines()
    assert message[0] == "cannot ingest: 43 problem(s) in 3 file(s); nothing was ingested:", message
    assert any(line.startswith(f"{products}:1: not valid JSON (Unterminated string") for line in message)
    assert any(line.startswith(f"{products}:3: not valid JSON") for line in message)
    assert f"{users}:2: column 'signup_date': 'sometime' is not an ISO 8601 timestamp" in message
    listed = [line for line in message if line.startswith(f"{events}:") and line[len(f"{events}:")].isdigit()]
    assert len(listed) == MAX_LISTED_PER_FILE
    assert listed[0] == f"{events}:5: 8 fields, fewer than the header's 9: cut off or mis-quoted"
    assert listed[5] == (f"{events}:10: 10 fields, more than the header's 9: "
                         "a trailing comma, or a comma in a value that is not quoted")
    assert listed[-1].startswith(f"{events}:14: 8 fields")
    assert message[-1] == (f"{events}: 30 more not listed: malformed lines 29 (lines 15, 16, 17, 18, 19, …), "
                           "column 'propensity' 1 (lines 40)")
    assert not cfg.stage_dir("ingested").exists()


def test_a_bad_value_is_named_by_its_own_line_after_a_blank_line(cfg):
    # pandas skips a blank line (and a quoted value may span lines): counting rows from line 2
    # named the line above the bad value, in the file the shop is told to edit.
    source_dir = cfg.stage_dir("source")
    write_small_source(source_dir)
    users = source_dir / "users.csv"
    header, first, *rest = users.read_text(encoding="utf-8").splitlines()
    users.write_text("\n".join([header, "", first, *rest]).replace("2025-12-01", "sometime") + "\n", encoding="utf-8")
    bad = next(n for n, line in enumerate(users.read_text(encoding="utf-8").splitlines(), start=1) if "sometime" in line)

    with pytest.raises(RawFormatError) as refused:
        run_ingest(cfg)
    assert f"{users}:{bad}: column 'signup_date': 'sometime' is not an ISO 8601 timestamp" in str(refused.value)


def test_ids_with_whitespace_at_either_end_are_refused_in_every_key_column(cfg):
    # Ids were pseudonymized and joined as given: "shopper1 " from a CSV export that pads its
    # cells was a second shopper, and an event whose product_id was "p1 " dangled (cleaning
    # dropped it). Trimming silently could merge ids the shop keeps apart, so each is named.
    source_dir = cfg.stage_dir("source")
    write_small_source(source_dir)
    products, copies = source_dir / "products.jsonl", source_dir / "copies.jsonl"
    products.write_text(products.read_text(encoding="utf-8").replace('"p1"', '"p1\\u00a0"'), encoding="utf-8")  # no-break space
    copies.write_text(copies.read_text(encoding="utf-8").replace('"c1"', '"\\tc1"').replace('"p1"', '"p1\\u3000"'),
                      encoding="utf-8")  # a tab, an ideographic space
    users = source_dir / "users.csv"
    users.write_text(users.read_text(encoding="utf-8").replace("shopper1", " shopper1"), encoding="utf-8")
    events = source_dir / "events.csv"
    events.write_text(events.read_text(encoding="utf-8")
                      + 'e3 ,shopper1,p1,c1,impression,2026-01-05T10:00:09Z,1,0.5,0.0\n'
                      + 'e4,"shopper1\r",p1 ,"c1 ",click,2026-01-05T10:00:10Z,1,0.5,0.0\n'  # a carriage return, quoted
                      + 'e5,shopper 1,p1,,click,2026-01-05T10:00:11Z,,,0.0\n', encoding="utf-8")  # inner space: an id
    before = {path.name: path.read_bytes() for path in source_dir.iterdir()}

    message = refused_naming(run_ingest, cfg, "cannot ingest: 8 problem(s) in 4 file(s)", [
        f"{products}:1: column 'product_id': 'p1\\xa0' has whitespace at its start or end; trim it in the export "
        "(ids match exactly: 'p1\\xa0' and 'p1' would be two ids)",
        f"{copies}:1: column 'copy_id': '\\tc1' has whitespace",
        f"{copies}:1: column 'product_id': 'p1\\u3000' has whitespace",
        f"{users}:2: column 'user_id': ' shopper1' has whitespace",
        f"{events}:4: column 'event_id': 'e3 ' has whitespace",
        f"{events}:5: column 'user_id': 'shopper1\\r' has whitespace",
        f"{events}:5: column 'product_id': 'p1 ' has whitespace",
        f"{events}:5: column 'copy_id': 'c1 ' has whitespace",
    ])
    assert "shopper 1" not in message  # a space inside an id is the shop's to use
    assert {path.name: path.read_bytes() for path in source_dir.iterdir()} == before  # nothing trimmed or lost
    assert not cfg.stage_dir("ingested").exists()


def test_ids_with_an_invisible_format_character_are_refused_in_every_key_column(cfg):
    # A zero-width space (or joiner, word joiner, U+FEFF) inside an id passed: pasted in from a web
    # page, it made a second shopper or product that looks exactly like the first in the export.
    source_dir = cfg.stage_dir("source")
    write_small_source(source_dir)
    products, copies = source_dir / "products.jsonl", source_dir / "copies.jsonl"
    products.write_text(products.read_text(encoding="utf-8").replace('"p1"', '"p\\u200b1"'), encoding="utf-8")
    copies.write_text(copies.read_text(encoding="utf-8").replace('"c1"', '"c1\\u200d"'), encoding="utf-8")
    # a byte order mark at the very start of a CSV file is the file's, not the first id's: it passes
    users = source_dir / "users.csv"
    users.write_text("\ufeff" + users.read_text(encoding="utf-8") + "shopper\u20602,18-24,tier1,2025-12-01\n", encoding="utf-8")
    events = source_dir / "events.csv"
    events.write_text("\ufeff" + events.read_text(encoding="utf-8")
                      + "e\ufeff3,shopper1,p1\u200c,c1,impression,2026-01-05T10:00:09Z,1,0.5,0.0\n", encoding="utf-8")
    before = {path.name: path.read_bytes() for path in source_dir.iterdir()}

    message = refused_naming(run_ingest, cfg, "cannot ingest: 5 problem(s) in 4 file(s)", [
        f"{products}:1: column 'product_id': 'p\\u200b1' holds the invisible character(s) U+200B; remove them in the export "
        "(ids match exactly: 'p\\u200b1' and 'p1' would be two ids)",
        f"{copies}:1: column 'copy_id': 'c1\\u200d' holds the invisible character(s) U+200D",
        f"{users}:3: column 'user_id': 'shopper\\u20602' holds the invisible character(s) U+2060",
        f"{events}:4: column 'event_id': 'e\\ufeff3' holds the invisible character(s) U+FEFF",
        f"{events}:4: column 'product_id': 'p1\\u200c' holds the invisible character(s) U+200C",
    ])
    assert f"{users}:2:" not in message and f"{events}:2:" not in message  # the files' leading BOM
    assert {path.name: path.read_bytes() for path in source_dir.iterdir()} == before  # nothing removed or lost
    assert not cfg.stage_dir("ingested").exists()

    write_small_source(source_dir)
    for path in (users, events):  # a BOM at the start alone: ingested, ids unchanged
        path.write_text("\ufeff" + path.read_text(encoding="utf-8"), encoding="utf-8")
    run_ingest(cfg)
    assert len(load_all(cfg.stage_dir("ingested"))["events"]) == 2


def test_an_id_converter_alone_raises_at_once(tmp_path):
    from components.data.ingest import to_id

    path = tmp_path / "users.csv"
    ids = pd.DataFrame({"user_id": ["u1", "u 2", None]}, index=pd.Index([2, 3, 4], name="line"))
    assert to_id(ids, "user_id", path).iloc[:2].tolist() == ["u1", "u 2"]  # a missing id is cleaning's to count
    ids.loc[4, "user_id"] = "u3 "
    with pytest.raises(RawFormatError, match=r"users.csv:4: column 'user_id': 'u3 ' has whitespace at its start or end"):
        to_id(ids, "user_id", path)


def test_missing_source_stage_is_a_clear_error(cfg):
    with pytest.raises(FileNotFoundError, match="run the source stage first"):
        run_ingest(cfg)


def test_event_times_need_an_offset_and_keep_the_instant(tmp_path):
    from components.data.ingest import to_utc_timestamp

    raw = pd.DataFrame({"timestamp": ["2026-01-05T18:00:09+08:00", "2026-01-05T10:00:09Z", "2026-01-05T18:00:09+0800", None]})
    converted = to_utc_timestamp(raw, "timestamp", tmp_path / "events.csv", require_offset=True)
    assert converted.iloc[:3].tolist() == [pd.Timestamp("2026-01-05T10:00:09Z")] * 3 and pd.isna(converted.iloc[3])
    naive = pd.DataFrame({"timestamp": ["2026-01-05T18:00:09"]})
    with pytest.raises(RawFormatError, match="is not a timestamp with a UTC offset"):
        to_utc_timestamp(naive, "timestamp", tmp_path / "events.csv", require_offset=True)
    bare_date = pd.DataFrame({"timestamp": ["2026-01-05"]})  # its "-05" is the day, not an offset
    with pytest.raises(RawFormatError, match="is not a timestamp with a UTC offset"):
        to_utc_timestamp(bare_date, "timestamp", tmp_path / "events.csv", require_offset=True)
    assert to_utc_timestamp(naive, "timestamp", tmp_path / "users.csv").iloc[0] == pd.Timestamp("2026-01-05T18:00:09Z")


def test_number_columns_refuse_booleans(tmp_path):
    from components.data.ingest import to_float, to_int

    raw = pd.DataFrame({"price": [12.5, True, None, False]}, index=pd.Index([1, 2, 3, 4], name="line"))
    with pytest.raises(RawFormatError, match=r"products.jsonl:2: column 'price': True is not a finite number\n.*products.jsonl:4: column 'price': False is not"):
        to_float(raw, "price", tmp_path / "products.jsonl")
    every_row = pd.DataFrame({"position": [True, False]})  # a bool column, not object
    with pytest.raises(RawFormatError, match=r"2 problem\(s\).*\n.*column 'position': True is not a finite number"):
        to_int(every_row, "position", tmp_path / "events.csv")
    assert to_float(pd.DataFrame({"price": [12.5, 3, None]}), "price", tmp_path / "p.jsonl").tolist()[:2] == [12.5, 3.0]


def test_event_times_beyond_microseconds_are_refused_not_truncated(tmp_path):
    from components.data.ingest import to_utc_timestamp

    # truncating would tie events within a microsecond and change what the file said
    raw = pd.DataFrame({"timestamp": ["2026-02-01T10:07:00.123456Z", "2026-02-01T10:07:00.123456789Z", None]},
                       index=pd.Index([2, 3, 4], name="line"))
    with pytest.raises(RawFormatError, match=r"events.csv:3: column 'timestamp': '2026-02-01T10:07:00.123456789Z' is not a timestamp in whole microseconds"):
        to_utc_timestamp(raw, "timestamp", tmp_path / "events.csv", require_offset=True)
    exact = pd.DataFrame({"timestamp": ["2026-02-01T10:07:00.123456000Z"]})  # nine digits, nothing lost
    assert to_utc_timestamp(exact, "timestamp", tmp_path / "events.csv").iloc[0] == pd.Timestamp("2026-02-01T10:07:00.123456Z")


def test_a_forgotten_shopper_is_dropped_from_every_later_batch_even_if_the_export_lists_them(cfg):
    from components.data.erasure import forget_shoppers, forgotten_records
    from components.data.privacy import pseudonym, run_key_check

    source_dir = cfg.stage_dir("source")
    write_small_source(source_dir)
    write_raw_table(pd.DataFrame({"user_id": ["shopper1", "shopper2"], "age_band": ["18-24"] * 2,
                                  "city_tier": ["tier1"] * 2, "signup_date": ["2025-12-01"] * 2}), source_dir, "users")
    events = read_raw_table(source_dir, "events")
    kept = events.assign(event_id=["e3", "e4"], user_id="shopper2")
    write_raw_table(pd.concat([events, kept], ignore_index=True), source_dir, "events")
    assert run_ingest(cfg)["forgotten_shoppers_dropped"] == {"shoppers": 0, "users": 0, "events": 0}
    digest_before = run_key_check(cfg)["forgotten_shoppers"]

    forget_shoppers(cfg, ["shopper1"])
    key = load_key(cfg)
    gone, stays = pseudonym("shopper1", key), pseudonym("shopper2", key)
    assert [r["pseudonym"] for r in forgotten_records(cfg)] == [gone]
    assert "shopper1" not in forgotten_path_text(cfg)  # the record holds the pseudonym, never the raw id
    assert run_key_check(cfg)["forgotten_shoppers"] != digest_before  # DVC re-runs ingest

    summary = run_ingest(cfg)  # the raw layer (the export) still lists shopper1
    tables = load_all(cfg.stage_dir("ingested"))
    assert set(tables["users"]["user_id"]) == set(tables["events"]["user_id"]) == {stays}
    assert tables["events"]["event_id"].tolist() == ["e3", "e4"]
    assert summary["forgotten_shoppers_dropped"] == {"shoppers": 1, "users": 1, "events": 2}
    assert summary["rows"] == {"products": 1, "copies": 1, "users": 1, "events": 2}


def forgotten_path_text(cfg):
    from components.data.erasure import forgotten_path

    return forgotten_path(cfg).read_text(encoding="utf-8")
