import pandas as pd
import pytest

from components.data.raw import RawFormatError, read_raw_table, write_raw_table


def test_raw_tables_round_trip_with_nulls(tmp_path):
    products = pd.DataFrame(
        {"product_id": ["p1", "p2"], "category": ["裙", None], "content": ["类型#裙*品牌#<UNK>", "类型#裤"],
         "price": [99.5, float("nan")], "source": "advertisegen"}
    )
    write_raw_table(products, tmp_path, "products")
    back = read_raw_table(tmp_path, "products")
    assert back["category"][1] == "裙" and back["category"].isna().tolist() == [False, True]
    assert back["price"].isna().tolist() == [False, True]
    assert back["content"][1] == "类型#裙*品牌#<UNK>"  # index = file line number
    users = pd.DataFrame({"user_id": ["a", "b"], "age_band": ["18-24", None], "city_tier": ["tier1", "tier2"],
                          "signup_date": ["2025-01-01", "2025-02-01"]})
    write_raw_table(users, tmp_path, "users")
    back = read_raw_table(tmp_path, "users")
    assert list(back.index) == [2, 3] and back["age_band"].isna().tolist() == [False, True]


def test_unreadable_files_name_file_and_line(tmp_path):
    (tmp_path / "users.csv").write_bytes("user_id,age_band,city_tier,signup_date\na,18-24,tier1,2025-01-01\n".encode() + b"b,\xe4\xb8,tier1,2025-01-01\n")
    with pytest.raises(RawFormatError, match=r"users.csv: line 3, byte 3: not valid UTF-8"):
        read_raw_table(tmp_path, "users")
    (tmp_path / "copies.jsonl").write_text('{"copy_id": "c1", "product_id": "p1", "text": "x", "source": "human", "model_version": null}\n{"copy_id": \n', encoding="utf-8")
    with pytest.raises(RawFormatError, match=r"copies.jsonl:2: not valid JSON"):
        read_raw_table(tmp_path, "copies")
    (tmp_path / "copies.jsonl").write_text('{"copy_id": "c1", "product_id": "p1", "text": "x"}\n', encoding="utf-8")
    with pytest.raises(RawFormatError, match=r"copies.jsonl:1: missing fields \['source', 'model_version'\]"):
        read_raw_table(tmp_path, "copies")
    (tmp_path / "events.csv").write_text("event_id,user_id\ne1,u1\n", encoding="utf-8")
    with pytest.raises(RawFormatError, match=r"events.csv: missing columns \['product_id'"):
        read_raw_table(tmp_path, "events")
    (tmp_path / "events.csv").write_text("", encoding="utf-8")
    with pytest.raises(RawFormatError, match="file is empty"):
        read_raw_table(tmp_path, "events")
    with pytest.raises(RawFormatError, match="raw file not found"):
        read_raw_table(tmp_path, "products")


def test_rows_longer_than_the_header_are_refused(tmp_path):
    # every row with a trailing comma: pandas would take user_id as the index and shift age bands
    # into user_id, to be pseudonymized as ids
    header = "user_id,age_band,city_tier,signup_date\n"
    (tmp_path / "users.csv").write_text(header + "a,18-24,tier1,2025-01-01,\nb,25-34,tier2,2025-02-01,\n", encoding="utf-8")
    with pytest.raises(RawFormatError, match=r"users.csv:2: 5 fields, more than the header's 4: a trailing comma.*\n.*users.csv:3: 5 fields"):
        read_raw_table(tmp_path, "users")
    (tmp_path / "users.csv").write_text(header + "a,18-24,tier1,2025-01-01\nb,25-34,tier2,2025-02-01,x\n", encoding="utf-8")
    with pytest.raises(RawFormatError, match=r"users.csv: 1 line\(s\) cannot be read:\n.*users.csv:3: 5 fields, more than the header's 4"):
        read_raw_table(tmp_path, "users")
    (tmp_path / "users.csv").write_text(header + "a,18-24,tier1,2025-01-01\nb,\"25,34\",tier2,2025-02-01\n", encoding="utf-8")
    assert read_raw_table(tmp_path, "users")["age_band"].tolist() == ["18-24", "25,34"]  # a quoted comma is a value


def test_every_line_that_cannot_be_read_is_named_and_the_others_are_read(tmp_path):
    # A reader stopped at the first broken line: a file with 40 of them took 40 fix-and-rerun rounds.
    from components.data.raw import read_raw_lines

    good = '{"copy_id": "c%d", "product_id": "p1", "text": "x", "source": "human", "model_version": null}'
    lines = [good % 1, '{"copy_id": ', "", good % 3, "[1, 2]", '{"copy_id": "c6"}', good % 7]
    (tmp_path / "copies.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    read = read_raw_lines(tmp_path, "copies")
    assert [line for line, _ in read.bad] == [2, 5, 6]
    assert read.bad[0][1].startswith("not valid JSON") and read.bad[1][1] == "expected a JSON object, got list"
    assert list(read.frame.index) == [1, 4, 7] and list(read.frame["copy_id"]) == ["c1", "c3", "c7"]

    rows = ["user_id,age_band,city_tier,signup_date", "a,18-24,tier1,2025-01-01", "", "b,18-24,tier1",  # cut off
            'c,"25,34",tier2,2025-02-01', "d,18-24,tier1,2025-01-01,", '"e\nf",18-24,tier1,2025-01-01', "g,x"]
    (tmp_path / "users.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    read = read_raw_lines(tmp_path, "users")
    assert read.bad == [(4, "3 fields, fewer than the header's 4: cut off or mis-quoted"),
                        (6, "5 fields, more than the header's 4: a trailing comma, or a comma in a value that is not quoted"),
                        (9, "2 fields, fewer than the header's 4: cut off or mis-quoted")]
    # every row read keeps its own line: the blank line 3 and the two-line value on 7-8 shift nothing
    assert list(read.frame.index) == [2, 5, 7] and list(read.frame["user_id"]) == ["a", "c", "e\nf"]
    assert read.frame.loc[5, "age_band"] == "25,34"
    with pytest.raises(RawFormatError, match=r"users.csv: 3 line\(s\) cannot be read:\n.*users.csv:4: 3 fields"):
        read_raw_table(tmp_path, "users")  # the strict reader still refuses the file


def test_a_leading_byte_order_mark_is_not_data_in_either_format(tmp_path):
    # Spreadsheet tools and Windows editors start UTF-8 files with U+FEFF; the CSV reader skipped
    # it, the JSON Lines reader refused line 1 as "not valid JSON (Unexpected UTF-8 BOM)".
    line = '{"copy_id": "c1", "product_id": "p1", "text": "白色上衣", "source": "human", "model_version": null}\n'
    (tmp_path / "copies.jsonl").write_bytes(b"\xef\xbb\xbf" + line.encode())
    assert read_raw_table(tmp_path, "copies")["copy_id"].tolist() == ["c1"]
    (tmp_path / "users.csv").write_bytes(b"\xef\xbb\xbf" + "user_id,age_band,city_tier,signup_date\na,18-24,tier1,2025-01-01\n".encode()
                                         + b"b,\xe4\xb8,tier1,2025-01-01\n")
    # a bad byte after the mark is still named by its own line and byte
    with pytest.raises(RawFormatError, match=r"users.csv: line 3, byte 3: not valid UTF-8"):
        read_raw_table(tmp_path, "users")
    (tmp_path / "copies.jsonl").write_bytes(line.encode() + b"\xef\xbb\xbf" + line.replace("c1", "c2").encode())
    with pytest.raises(RawFormatError, match=r"copies.jsonl:2: not valid JSON"):  # a mark inside the file is data
        read_raw_table(tmp_path, "copies")
