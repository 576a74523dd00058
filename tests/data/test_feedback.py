"""The feedback log: served copies and outcomes in the raw layer's formats, whole lines only."""

import json
import multiprocessing
import stat
from datetime import datetime, timedelta, timezone

import pandas as pd
import pytest

from components.data.feedback import EventIdTaken, FeedbackError, FeedbackLog, UnknownServe, copy_id_for
from components.data.raw import RAW_COLUMNS, read_raw_table


def test_the_log_is_readable_by_its_owner_only(tmp_path):
    folder = tmp_path / "feedback"
    log = FeedbackLog(folder)
    log.record_event(log.record_serving("shopper1", "p", "文案", "m", candidates=1).serve_id, "click")
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700  # raw shopper ids
    modes = {f.name: stat.S_IMODE(f.stat().st_mode) for f in folder.iterdir()}
    assert {"served.jsonl", "events.csv"} <= set(modes) and set(modes.values()) == {0o600}, modes


def test_a_served_copy_and_its_outcomes_read_back_as_raw_layer_tables(tmp_path):
    log = FeedbackLog(tmp_path / "fb")
    first = log.record_serving("shopper1", "p1", "这款白色连衣裙", "models:/copyflow-generator/2", candidates=4)
    again = log.record_serving("shopper2", "p1", "这款白色连衣裙", "models:/copyflow-generator/2", candidates=2, impression=False)
    assert first.copy_id == again.copy_id == copy_id_for("models:/copyflow-generator/2", "p1", "这款白色连衣裙")
    assert first.serve_id != again.serve_id and first.propensity == 0.25 and again.propensity == 0.5
    click = log.record_event(first.serve_id, "click")
    soon = datetime.now(timezone(timedelta(hours=8))) + timedelta(minutes=10)  # a shop in UTC+8, clocks a little apart
    log.record_event(first.serve_id, "purchase", timestamp=soon.isoformat(), value=129.0)

    copies = read_raw_table(log.folder, "copies")
    assert len(copies) == 1  # the same text for the same product by the same model is one copy
    assert copies.iloc[0].to_dict() == {"copy_id": first.copy_id, "product_id": "p1", "text": "这款白色连衣裙",
                                        "source": "generated", "model_version": "models:/copyflow-generator/2"}
    events = read_raw_table(log.folder, "events")
    assert list(events.columns) == RAW_COLUMNS["events"]
    assert list(events["event_type"]) == ["impression", "click", "purchase"]  # the second serving logged none
    assert set(events["user_id"]) == {"shopper1"} and click in set(events["event_id"])
    assert events["propensity"].astype(float).tolist() == [0.25] * 3
    assert events["timestamp"].iloc[2] == soon.astimezone(timezone.utc).isoformat()  # normalized to UTC
    assert events["value"].iloc[2] == "129.0" and events["value"].iloc[1] == "0"  # no money in a click
    assert log.counts() == {"copies": 1, "served": 2, "events": 3}
    assert FeedbackLog(log.folder).counts() == log.counts()  # another process's view, read from the files


def test_no_outcome_is_logged_before_the_first_impression_of_its_copy(tmp_path):
    # The data gate rejects a batch where more than 1% of outcomes come before the first
    # impression of their shopper, product and copy; accepted here, such events would fail every
    # later retrain. A frontend that reports impressions itself (impression=False) can send them late.
    log = FeedbackLog(tmp_path, max_future=timedelta(minutes=10))  # clocks may be ten minutes apart
    served = log.record_serving("u", "p", "文案", "m", candidates=1, impression=False)
    shown = datetime.fromisoformat(served.timestamp)
    at = lambda seconds: (shown + timedelta(seconds=seconds)).isoformat()  # noqa: E731

    log.record_event(served.serve_id, "click", timestamp=at(200))  # no impression yet: nothing to compare with
    with pytest.raises(FeedbackError, match="after the .* outcome already logged"):
        log.record_event(served.serve_id, "impression", timestamp=at(300))
    log.record_event(served.serve_id, "impression", timestamp=at(100))
    log.record_event(served.serve_id, "impression", timestamp=at(500))  # shown again after the click: fine
    other = FeedbackLog(tmp_path, max_future=timedelta(minutes=10))  # another server process knows it from the files
    with pytest.raises(FeedbackError, match="before this shopper's first impression of this copy .* by more than clocks drift apart"):
        other.record_event(served.serve_id, "add_to_cart", timestamp=at(-550))
    # a client clock a little behind: recorded at the first impression, the earliest it can have happened
    other.record_event(served.serve_id, "add_to_cart", timestamp=at(70))

    events = read_raw_table(tmp_path, "events")
    assert list(events["event_type"]) == ["click", "impression", "impression", "add_to_cart"]
    assert events["timestamp"].iloc[3] == at(100)


def test_a_client_clock_a_little_behind_does_not_lose_a_fast_click(tmp_path):
    # A click reported at one-second precision in the second of the serve came out "before the
    # copy was served" and was refused; clocks a little apart are tolerated like future times.
    log = FeedbackLog(tmp_path, max_future=timedelta(hours=1))
    served = log.record_serving("u", "p", "文案", "m", candidates=1)
    same_second = datetime.fromisoformat(served.timestamp).replace(microsecond=0).isoformat()

    log.record_event(served.serve_id, "click", timestamp=same_second)

    events = read_raw_table(tmp_path, "events")
    assert list(events["timestamp"]) == [served.timestamp, served.timestamp]  # at the serve, not before it


def test_an_event_id_that_names_another_event_is_refused_not_dropped(tmp_path):
    log = FeedbackLog(tmp_path)
    first, second = (log.record_serving(user, "p", "文案", "m", candidates=1) for user in ("u1", "u2"))
    log.record_event(first.serve_id, "click", event_id="e-1")
    assert log.record_event(first.serve_id, "click", event_id="e-1") == "e-1"  # a retry: written once
    with pytest.raises(EventIdTaken, match="'e-1' already names another event$") as taken:
        log.record_event(second.serve_id, "purchase", value=500.0, event_id="e-1")
    assert "u1" not in str(taken.value)  # whose event it is: not the caller's to know
    with pytest.raises(EventIdTaken):
        log.record_event(first.serve_id, "purchase", event_id="e-1")
    assert list(read_raw_table(tmp_path, "events")["event_type"]) == ["impression", "impression", "click"]


def test_bad_events_are_refused_and_write_nothing(tmp_path):
    log = FeedbackLog(tmp_path)
    served = log.record_serving("u", "p", "文案", "m", candidates=1)
    before = (tmp_path / "events.csv").read_bytes()
    with pytest.raises(UnknownServe, match="'nope' was not served"):
        log.record_event("nope", "click")
    with pytest.raises(FeedbackError, match="not one of"):
        log.record_event(served.serve_id, "like")
    with pytest.raises(FeedbackError, match="no UTC offset"):
        log.record_event(served.serve_id, "click", timestamp="2026-01-01T00:00:00")
    with pytest.raises(FeedbackError, match="not ISO 8601"):
        log.record_event(served.serve_id, "click", timestamp="yesterday")
    with pytest.raises(FeedbackError, match="before the copy was served"):
        log.record_event(served.serve_id, "click", timestamp="2000-01-01T00:00:00Z")
    with pytest.raises(FeedbackError, match="finite, non-negative number no larger than 1e"):
        log.record_event(served.serve_id, "purchase", value=float("nan"))
    with pytest.raises(FeedbackError, match="finite, non-negative number no larger than 1e"):  # finite, but it would wreck the sums
        log.record_event(served.serve_id, "purchase", value=1e308)
    with pytest.raises(FeedbackError, match="on one line"):
        log.record_event(served.serve_id, "click", event_id="a\nb")
    with pytest.raises(FeedbackError, match="user_id"):
        log.record_serving("shopper\r1", "p", "文案", "m", candidates=1)
    # ingest refuses a padded id in the log (the source stage would stop on it): refused here first
    with pytest.raises(FeedbackError, match=r"event_id 'client-7\\xa0' has whitespace at its start or end"):
        log.record_event(served.serve_id, "click", event_id="client-7\xa0")
    with pytest.raises(FeedbackError, match=r"user_id ' u' has whitespace"):
        log.record_serving(" u", "p", "文案", "m", candidates=1)
    # an invisible format character makes another id that looks the same: ingest refuses it in the log
    with pytest.raises(FeedbackError, match=r"user_id 'u\\u200b' holds the invisible character\(s\) U\+200B"):
        log.record_serving("u\u200b", "p", "文案", "m", candidates=1)
    with pytest.raises(FeedbackError, match=r"product_id .* U\+2060, U\+FEFF"):
        log.record_serving("u", "p\u2060\ufeff\u2060", "文案", "m", candidates=1)
    with pytest.raises(FeedbackError, match=r"event_id 'client\\u200c7' holds the invisible"):
        log.record_event(served.serve_id, "click", event_id="client\u200c7")
    assert (tmp_path / "events.csv").read_bytes() == before


def test_a_retried_event_id_is_recorded_once(tmp_path):
    log = FeedbackLog(tmp_path)
    served = log.record_serving("u", "p", "文案", "m", candidates=1, impression=False)
    assert log.record_event(served.serve_id, "click", event_id="client-7") == "client-7"
    assert log.record_event(served.serve_id, "click", event_id="client-7") == "client-7"
    assert list(read_raw_table(tmp_path, "events")["event_id"]) == ["client-7"]


def _serve_many(folder, worker: int, n: int) -> None:
    log = FeedbackLog(folder)
    for i in range(n):
        served = log.record_serving(f"u{worker}", f"p{i}", f"文案{worker}-{i}，" * 40, "m", candidates=2)
        log.record_event(served.serve_id, "click")


def test_processes_sharing_one_log_never_interleave_lines(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=_serve_many, args=(tmp_path, w, 25)) for w in range(3)]
    for p in workers:
        p.start()
    for p in workers:
        p.join(60)
        assert p.exitcode == 0
    events = read_raw_table(tmp_path, "events")
    assert len(events) == 3 * 25 * 2 and events["event_id"].is_unique
    assert len(read_raw_table(tmp_path, "copies")) == 75
    served = [json.loads(line) for line in (tmp_path / "served.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(served) == 75
    # every click follows its own impression, for the same shopper, product and copy
    by_serve = events.groupby(["user_id", "product_id", "copy_id"])["event_type"].apply(list)
    assert all(types == ["impression", "click"] for types in by_serve)


def test_a_fragment_left_by_a_dead_writer_is_set_aside_and_never_joins_a_line(tmp_path):
    log = FeedbackLog(tmp_path)
    first = log.record_serving("u", "p", "文案", "m", candidates=1)
    for name in ("events.csv", "served.jsonl", "copies.jsonl"):  # killed mid-line, in every file
        with open(tmp_path / name, "a", encoding="utf-8") as handle:
            handle.write('fb-dead,u,p,"half')
    assert len(FeedbackLog(tmp_path).snapshot(tmp_path / "snap")) == 2  # whole lines only
    assert len(read_raw_table(tmp_path / "snap", "events")) == 1
    second = log.record_serving("u", "p2", "另一条", "m", candidates=2)
    log.record_event(second.serve_id, "click")
    events = read_raw_table(tmp_path, "events")
    assert list(events["event_type"]) == ["impression", "impression", "click"] and not events["event_id"].str.contains("dead").any()
    assert (tmp_path / "events.csv.fragments").read_text(encoding="utf-8") == 'fb-dead,u,p,"half\n'
    assert FeedbackLog(tmp_path).counts() == {"copies": 2, "served": 2, "events": 3}
    assert log.record_event(first.serve_id, "click")


def test_a_rotated_log_is_read_again_from_its_start(tmp_path):
    writer, idle = FeedbackLog(tmp_path), FeedbackLog(tmp_path)
    writer.record_serving("u", "p", "文案", "m", candidates=1)
    assert idle.counts()["served"] == 1
    for name in ("events.csv", "served.jsonl", "copies.jsonl"):  # archived by an operator
        (tmp_path / name).rename(tmp_path / f"{name}.1")
    for i in range(6):  # the new files grow past the idle reader's offsets
        writer.record_serving("u", f"p{i}", f"新的第{i}条文案，" * 5, "m", candidates=1)
    assert idle.counts() == {"copies": 6, "served": 6, "events": 6}
    served = idle.record_serving("u", "p0", "新的第0条文案，" * 5, "m", candidates=1)  # a copy the new file has
    assert len(read_raw_table(tmp_path, "copies")) == 6 and served.copy_id in set(read_raw_table(tmp_path, "copies")["copy_id"])


def test_a_hand_edited_events_header_stops_appends_instead_of_shifting_columns(tmp_path):
    from components.data.feedback import FeedbackLogBroken

    log = FeedbackLog(tmp_path)
    served = log.record_serving("u", "p", "文案", "m", candidates=1)
    text = (tmp_path / "events.csv").read_text(encoding="utf-8").splitlines()
    text[0] = "event_id,user_id,product_id,copy_id,event_type,timestamp,value,position,propensity"
    (tmp_path / "events.csv").write_text("\n".join(text) + "\n", encoding="utf-8")
    before = (tmp_path / "events.csv").read_bytes()
    with pytest.raises(FeedbackLogBroken, match="header"):
        FeedbackLog(tmp_path).record_event(served.serve_id, "click")
    assert (tmp_path / "events.csv").read_bytes() == before


def test_any_unicode_id_and_line_separators_in_copy_text_round_trip(tmp_path):
    log = FeedbackLog(tmp_path)
    text = "第一行\u2028第二行\u2029第三行\x85完"
    served = log.record_serving("山田\u3000太郎", "p\u00a01", text, "m", candidates=1)
    log.record_event(served.serve_id, "click")
    copies = read_raw_table(tmp_path, "copies")
    assert list(copies["text"]) == [text]
    assert set(read_raw_table(tmp_path, "events")["user_id"]) == {"山田\u3000太郎"}
    assert FeedbackLog(tmp_path).counts() == {"copies": 1, "served": 1, "events": 2}


def test_times_and_values_the_data_gate_would_refuse_are_refused_here(tmp_path):
    log = FeedbackLog(tmp_path, max_future=timedelta(hours=1))
    served = log.record_serving("u", "p", "文案", "m", candidates=1)
    later = (datetime.now(timezone.utc) + timedelta(hours=2)).isoformat()
    with pytest.raises(FeedbackError, match="in the future"):
        log.record_event(served.serve_id, "click", timestamp=later)
    for stamp in ("0001-01-01T00:00:00+01:00", "9999-12-31T23:00:00-05:00"):
        with pytest.raises(FeedbackError, match="within years 1..9999"):
            log.record_event(served.serve_id, "click", timestamp=stamp)
    for value in (float("inf"), -1.0):
        with pytest.raises(FeedbackError, match="finite, non-negative"):
            log.record_event(served.serve_id, "purchase", value=value)
    soon = (datetime.now(timezone.utc) + timedelta(minutes=30)).isoformat()  # clocks differ a little
    log.record_event(served.serve_id, "purchase", timestamp=soon)
    assert pd.isna(read_raw_table(tmp_path, "events")["value"].iloc[-1])  # a purchase without a value: cleaning fills in the price


def test_a_strategys_propensity_is_logged_and_a_zero_one_refused(tmp_path):
    log = FeedbackLog(tmp_path / "fb")
    chosen = log.record_serving("shopper1", "p1", "白色连衣裙", "models:/g/1", candidates=4, propensity=0.85, strategy="preference")
    decision = json.loads((log.folder / "served.jsonl").read_text(encoding="utf-8"))
    assert (decision["strategy"], decision["propensity"]) == ("preference", 0.85) and chosen.propensity == 0.85
    assert read_raw_table(log.folder, "events")["propensity"].astype(float).tolist() == [0.85]
    for bad in (0.0, 1.5, float("nan")):
        with pytest.raises(FeedbackError, match="propensity must be in"):
            log.record_serving("shopper1", "p1", "白色连衣裙", "models:/g/1", candidates=4, propensity=bad)
    assert log.counts()["served"] == 1  # nothing written for a refusal
    # A decision logged before strategies existed reads back as a uniform draw, and one with a
    # key a newer server added is read too (several servers may share the folder mid-upgrade).
    older = {k: v for k, v in decision.items() if k not in ("strategy", "candidate_texts", "scores", "scorer_version")}
    newer = decision | {"serve_id": "newer", "a_later_field": [1, 2]}
    with open(log.folder / "served.jsonl", "a", encoding="utf-8") as handle:
        handle.write(json.dumps(older | {"serve_id": "old"}) + "\n" + json.dumps(newer) + "\n")
    again = FeedbackLog(log.folder)
    assert again.record_event("old", "click") and again.record_event("newer", "click")


def test_the_candidates_and_their_scores_are_logged_with_the_decision(tmp_path):
    log = FeedbackLog(tmp_path / "fb")
    log.record_serving("shopper1", "p1", "白色\u2028连衣裙", "models:/g/1", candidates=2, propensity=0.9, strategy="preference",
                       candidate_texts=["黑色长裙", "白色\u2028连衣裙"], scores=[0.1, 0.3], scorer_version="models:/p/4")
    line = (log.folder / "served.jsonl").read_text(encoding="utf-8")
    assert line.count("\n") == 1  # the separator inside a candidate is escaped
    decision = json.loads(line)
    assert decision["candidate_texts"] == ["黑色长裙", "白色\u2028连衣裙"] and decision["scores"] == [0.1, 0.3]
    assert decision["scorer_version"] == "models:/p/4"


def test_a_log_cut_by_hand_and_written_again_is_read_again_by_every_server(tmp_path):
    # Server B repairs the cut line and appends: the file grows back past server A's offset. A
    # used to resume mid-line, drop an acknowledged retry and write B's event a second time.
    a, b = FeedbackLog(tmp_path), FeedbackLog(tmp_path)
    served = a.record_serving("shopper1", "p1", "文案", "m", candidates=4)
    a.record_event(served.serve_id, "click", event_id="e-last")
    b.counts()  # both have read the whole file
    events = tmp_path / "events.csv"
    with open(events, "rb+") as handle:
        handle.truncate(events.stat().st_size - 40)  # e-last cut mid-line, as a crash would
    b.record_event(served.serve_id, "click", event_id="e-from-b")

    assert a.record_event(served.serve_id, "click", event_id="e-last") == "e-last"
    assert a.record_event(served.serve_id, "click", event_id="e-from-b") == "e-from-b"

    ids = list(read_raw_table(tmp_path, "events")["event_id"])
    assert ids.count("e-last") == 1 and ids.count("e-from-b") == 1
    assert a.counts() == b.counts() == FeedbackLog(tmp_path).counts()


def test_a_header_cut_off_by_a_crash_is_written_again(tmp_path):
    (tmp_path / "events.csv").write_text("event_id,user_id,prod")  # the first write died mid-header
    log = FeedbackLog(tmp_path)
    served = log.record_serving("shopper1", "p1", "文案", "m", candidates=4)
    log.record_event(served.serve_id, "click")

    events = read_raw_table(tmp_path, "events")  # what the source stage reads
    assert list(events["event_type"]) == ["impression", "click"]
    assert FeedbackLog(tmp_path).counts()["events"] == 2  # a new server starts on it
    assert (tmp_path / "events.csv.fragments").read_text() == "event_id,user_id,prod\n"
    assert log.fragments() == 1  # the source stage reports it
    with open(tmp_path / "served.jsonl", "a", encoding="utf-8") as handle:
        handle.write('{"serve_id": "cut')  # a writer dying now
    assert log.fragments() == 2


def test_an_emptied_log_does_not_count_its_new_header_as_an_event(tmp_path):
    (tmp_path / "events.csv").write_text("")  # archived with `: > events.csv`
    log = FeedbackLog(tmp_path)
    assert log.counts()["events"] == 0
    served = log.record_serving("shopper1", "p1", "文案", "m", candidates=4)

    assert log.counts()["events"] == 1
    log.record_event(served.serve_id, "click", event_id="event_id")  # a client id that equals the header's first name
    assert list(read_raw_table(tmp_path, "events")["event_id"].iloc[1:]) == ["event_id"]


def test_erasing_a_shopper_removes_only_their_lines_and_a_second_log_reads_the_rewrite(tmp_path):
    writer, server = FeedbackLog(tmp_path), FeedbackLog(tmp_path)  # two processes on one folder
    gone = writer.record_serving("shopper,1", "p1", "文案", "m", candidates=2)  # a comma: a quoted CSV field
    writer.record_event(gone.serve_id, "click")
    kept = writer.record_serving("shopper2", "p1", "文案", "m", candidates=2)
    writer.record_event(kept.serve_id, "click", event_id="e-kept")
    assert server.counts() == {"copies": 1, "served": 2, "events": 4}  # the server has read everything
    before = {name: (tmp_path / name).read_bytes() for name in ("events.csv", "served.jsonl", "copies.jsonl")}
    inode = (tmp_path / "events.csv").stat().st_ino

    assert writer.remove_user("shopper,1") == {"events.csv": 2, "served.jsonl": 1}

    for name, old in before.items():  # the other lines, byte for byte, in their order
        assert (tmp_path / name).read_bytes() == b"".join(
            line for line in old.splitlines(keepends=True) if b'"shopper,1"' not in line)
    assert (tmp_path / "events.csv").stat().st_ino != inode  # replaced whole, never edited in place
    modes = {f.name: stat.S_IMODE(f.stat().st_mode) for f in tmp_path.iterdir()}
    assert set(modes.values()) == {0o600} and not [n for n in modes if n.endswith(".tmp")], modes
    assert server.counts() == {"copies": 1, "served": 1, "events": 2}  # read again, without the shopper
    with pytest.raises(UnknownServe):
        server.record_event(gone.serve_id, "purchase")
    server.record_event(kept.serve_id, "purchase", value=10.0)  # and it keeps logging the others
    assert writer.record_event(kept.serve_id, "click", event_id="e-kept") == "e-kept"  # a retry, still known
    events = read_raw_table(tmp_path, "events")
    assert set(events["user_id"]) == {"shopper2"} and list(events["event_type"]) == ["impression", "click", "purchase"]
    assert writer.remove_user("shopper,1") == {"events.csv": 0, "served.jsonl": 0}  # twice: harmless


def test_erasing_keeps_a_fragment_and_clears_a_crashed_rewrite(tmp_path):
    log = FeedbackLog(tmp_path)
    log.record_serving("shopper1", "p1", "文案", "m", candidates=1)
    log.record_serving("shopper2", "p1", "文案", "m", candidates=1)
    with open(tmp_path / "served.jsonl", "ab") as handle:
        handle.write(b'{"serve_id": "cut')  # a writer that died mid-line
    (tmp_path / ".rewrite-crashed.tmp").write_bytes(b"shopper1 lines of a crashed rewrite\n")
    assert log.remove_user("shopper1") == {"events.csv": 1, "served.jsonl": 1}
    assert (tmp_path / "served.jsonl").read_bytes().endswith(b'\n{"serve_id": "cut')
    assert not (tmp_path / ".rewrite-crashed.tmp").exists()
    assert not (tmp_path.parent / "none").exists() and FeedbackLog(tmp_path.parent / "none").remove_user("x") == {
        "events.csv": 0, "served.jsonl": 0}
    assert not (tmp_path.parent / "none").exists()  # no log is created to erase from
    with pytest.raises(FeedbackError):
        log.remove_user(" shopper1")
