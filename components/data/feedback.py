"""The feedback log: what the copy server (`copyflow serve`) served, and what shoppers then did.

It is written in the raw layer's own formats (components/data/raw.py), so the next retrain of a
`data.source: folder` profile reads it next to the shop's export (components/data/source.py):

    copies.jsonl   each distinct copy served: copy_id, product_id, text, source "generated",
                   model_version (the generator's model URI)
    events.csv     impressions and outcomes of served copies, raw-layer columns; user ids are the
                   shop's own (RAW), pseudonymized at ingestion like the export's
    served.jsonl   one line per serving decision (serve_id, user, product, copy, how many
                   candidates it was chosen from, by which strategy, with what propensity):
                   what an outcome reported by serve_id refers to

Every write appends whole lines under an exclusive `flock`, so several server processes can share
one folder, and a reader taking the shared lock (`snapshot`) never sees half a line. The one
rewrite, erasing a shopper (`remove_user`, `copyflow forget`), replaces a file whole by a rename
under the same lock: every log reading the folder notices the new file and reads it again.
"""

from __future__ import annotations

import csv
import fcntl
import hashlib
import io
import json
import logging
import math
import os
import tempfile
import threading
import unicodedata
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable, Iterator, TypeVar

from components.data.raw import RAW_COLUMNS, RAW_FILES, invisible_characters

EVENT_TYPES = ("impression", "click", "add_to_cart", "purchase")
SERVED_FILE = "served.jsonl"
LOCK_FILE = ".lock"
# Where a rewrite builds its file before the rename; one left by a crash is removed by the next.
REWRITE_PREFIX, REWRITE_SUFFIX = ".rewrite-", ".tmp"
T = TypeVar("T")
log = logging.getLogger("copyflow.feedback")


class FeedbackError(ValueError):
    """An event the log cannot accept (bad type, time or value); nothing is written."""


class UnknownServe(FeedbackError):
    """The event names a serve_id this log never served."""


class EventIdTaken(FeedbackError):
    """A client event_id already names another event (another serve or type): not a retry."""


def _private(path: str, flags: int) -> int:
    """Open (creating) a log file readable by its owner only: it holds raw shopper ids."""
    return os.open(path, flags, 0o600)


class FeedbackLogBroken(RuntimeError):
    """The log's files are not what this module writes (edited by hand): nothing more is appended."""


@dataclass(frozen=True)
class Served:
    serve_id: str
    user_id: str      # the shop's own id (raw), as the export carries it
    product_id: str
    copy_id: str
    position: int
    propensity: float  # P(this copy | the candidates) under the strategy that chose it
    candidates: int
    model_version: str
    timestamp: str
    strategy: str = "uniform"  # what chose the copy (components/serving/choice.py); older lines: uniform
    # What another strategy needs to be scored off-policy on this decision: every distinct
    # candidate (the served one among them), the scores they got and the model that scored them.
    candidate_texts: tuple[str, ...] = ()
    scores: tuple[float, ...] | None = None
    scorer_version: str | None = None

    @classmethod
    def from_json(cls, line: str) -> "Served":
        """A served.jsonl line; keys this version does not know (a newer server's) are ignored."""
        record = json.loads(line)
        return cls(**{name: record[name] for name in SERVED_FIELDS if name in record})


SERVED_FIELDS = tuple(f.name for f in fields(Served))


def check_id(name: str, value: str) -> None:
    """Ids go into CSV lines and joins: none empty, none with a line break or control character
    (any other Unicode, a shop's CJK ids and spaces inside included, is fine), none with
    whitespace at either end or an invisible format character (ingest refuses such an id in the
    log, as in a shop's export: one logged would stop the next retrain's source stage)."""
    if not value or any(unicodedata.category(ch) in ("Cc", "Zl", "Zp") for ch in value):
        raise FeedbackError(f"{name} {value!r} must be non-empty and on one line, without control characters")
    if value != value.strip():
        raise FeedbackError(f"{name} {value!r} has whitespace at its start or end; send it trimmed (ids match exactly)")
    hidden = invisible_characters(value)
    if hidden:
        raise FeedbackError(f"{name} {value!r} holds the invisible character(s) {', '.join(f'U+{ord(ch):04X}' for ch in hidden)}; "
                            "send the id without them (ids match exactly)")


def copy_id_for(model_version: str, product_id: str, text: str) -> str:
    """Stable id of a generated copy: the same text for the same product by the same model is one copy."""
    digest = hashlib.sha256(f"{model_version}\x1f{product_id}\x1f{text}".encode("utf-8")).hexdigest()
    return f"gen-{digest[:20]}"


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat()


def parse_timestamp(value: str, latest: datetime | None = None) -> str:
    """An ISO 8601 time with a UTC offset, normalized to UTC (ingestion requires the offset), and
    no later than `latest` (the data gate refuses events from the future)."""
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise FeedbackError(f"timestamp {value!r} is not ISO 8601") from exc
    if parsed.tzinfo is None:
        raise FeedbackError(f"timestamp {value!r} has no UTC offset (write Z or +08:00)")
    try:
        utc = parsed.astimezone(timezone.utc)
    except OverflowError as exc:  # year 1 or 9999, moved across midnight
        raise FeedbackError(f"timestamp {value!r} is not within years 1..9999 in UTC") from exc
    if latest is not None and utc > latest:
        raise FeedbackError(f"timestamp {value!r} is in the future (later than {latest.isoformat()})")
    return utc.isoformat()


def _json_line(record: dict) -> str:
    # ensure_ascii=False keeps Chinese readable, but leaves U+2028/U+2029/U+0085 raw, which some
    # line readers split on: escape those three.
    line = json.dumps(record, ensure_ascii=False)
    return line.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029").replace("\x85", "\\u0085") + "\n"


TAIL_BYTES = 64


def _ends_mid_line(path: Path) -> bool:
    """The file exists, is not empty and its last byte is not a line break."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            if handle.tell() == 0:
                return False
            handle.seek(-1, os.SEEK_END)
            return handle.read(1) != b"\n"
    except FileNotFoundError:
        return False


class FeedbackLog:
    """Append-only feedback in one folder (created on first write).

    `max_future`: how far past the server's clock a reported event time may lie (the data gate's
    `validation.max_timestamp_skew_hours`); `max_value`: the largest purchase value (the gate's
    `validation.max_event_value`). What the data gate would refuse is refused here, when the
    client can still be told, not at the next retrain, where it would fail every night."""

    def __init__(self, folder: Path | str, max_future: timedelta = timedelta(hours=1), max_value: float = 1_000_000.0):
        self.folder = Path(folder)
        self.max_future = max_future
        self.max_value = max_value
        self._thread_lock = threading.Lock()
        # What the files held when last read, and how far they were read: each write reads only
        # what other processes appended since, so a long-running log costs no more per request.
        self._copies: set[str] = set()
        self._served: dict[str, Served] = {}
        self._events: dict[str, tuple[str, ...]] = {}  # event id -> shopper, product, copy, event type
        # Per shopper, product and copy: the first impression and the earliest outcome logged
        # (the data gate wants no click, cart or purchase before the first impression).
        self._first_seen: dict[tuple[str, str, str], datetime] = {}
        self._first_outcome: dict[tuple[str, str, str], datetime] = {}
        # file -> (device, inode, bytes read, the last bytes read): a file cut and written again
        # past the old offset is told apart by those bytes, not only by its size.
        self._offsets: dict[str, tuple[int, int, int, bytes]] = {}

    @contextmanager
    def _locked(self, exclusive: bool) -> Iterator[None]:
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)  # raw shopper ids: the owner's only
        with self._thread_lock, open(self.folder / LOCK_FILE, "a+", opener=_private) as handle:
            fcntl.flock(handle, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _repair_tail(self, name: str) -> None:
        """A writer that died mid-line (killed, disk full) leaves a fragment without its newline:
        move it to <name>.fragments, so the next line does not join it. Under the exclusive lock."""
        path = self.folder / name
        if not path.exists() or path.stat().st_size == 0:
            return
        with open(path, "rb+") as handle:
            handle.seek(-1, os.SEEK_END)
            if handle.read(1) == b"\n":
                return
            handle.seek(0)
            data = handle.read()
            keep = data.rfind(b"\n") + 1
            with open(self.folder / f"{name}.fragments", "ab", opener=_private) as fragments:
                fragments.write(data[keep:] + b"\n")
            handle.truncate(keep)
        # Said where an operator looks (the server's log), not only in the next retrain's summary.
        log.warning("feedback log %s: a writer died mid-line; its %d byte(s) were set aside to %s.fragments, "
                    "and the lines before it are kept", name, len(data) - keep, name)

    def _append(self, name: str, text: str) -> None:
        self._repair_tail(name)
        with open(self.folder / name, "a", encoding="utf-8", opener=_private) as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())

    def _new_lines(self, name: str) -> list[str]:
        """Whole lines appended since the last read; a trailing fragment waits (or is repaired)."""
        path = self.folder / name
        if not path.exists():
            return []
        stat = path.stat()
        device, inode, offset, tail = self._offsets.get(name, (stat.st_dev, stat.st_ino, 0, b""))
        with open(path, "rb") as handle:
            handle.seek(offset)
            data = handle.read()
        complete = data.rfind(b"\n") + 1
        if complete:
            tail = (tail + data[:complete])[-TAIL_BYTES:]
        self._offsets[name] = (stat.st_dev, stat.st_ino, offset + complete, tail)
        return [line for line in data[:complete].decode("utf-8").split("\n") if line.strip()]

    def _unchanged_before(self, name: str, offset: int, tail: bytes) -> bool:
        """The file still holds, just before `offset`, the bytes this log last read there."""
        path = self.folder / name
        try:
            with open(path, "rb") as handle:
                handle.seek(offset - len(tail))
                return handle.read(len(tail)) == tail
        except OSError:
            return False

    def _refresh(self) -> None:
        """Take in what this or another process appended since the last read (under the lock).
        A line this module did not write (FeedbackLogBroken) is refused on every call, not once:
        what was read is forgotten, so the next call reads the files again from their start."""
        try:
            self._take_in_new_lines()
        except FeedbackLogBroken:
            self._forget()
            raise

    def _forget(self) -> None:
        self._copies, self._served, self._events, self._offsets = set(), {}, {}, {}
        self._first_seen, self._first_outcome = {}, {}

    def _take_in_new_lines(self) -> None:
        for name, (device, inode, offset, tail) in self._offsets.items():
            path = self.folder / name
            stat = path.stat() if path.exists() else None
            if (stat is None or (stat.st_dev, stat.st_ino) != (device, inode) or stat.st_size < offset
                    or not self._unchanged_before(name, offset, tail)):
                self._forget()  # rotated, replaced or truncated by hand (maybe written again since): read everything again
                break
        for line in self._new_lines(RAW_FILES["copies"]):
            self._copies.add(self._parsed(RAW_FILES["copies"], line, lambda text: json.loads(text)["copy_id"]))
        for line in self._new_lines(SERVED_FILE):
            record = self._parsed(SERVED_FILE, line, Served.from_json)
            # An outcome joins to shopper, product and copy: the candidates stay on disk only.
            self._served[record.serve_id] = replace(record, candidate_texts=(), scores=None)
        header_unread = self._offsets.get(RAW_FILES["events"], (0, 0, 0, b""))[2] == 0  # reading from the top
        # One row per line: no field this module writes holds a line break (check_id), so a quote
        # left open by a cut line cannot swallow the lines after it.
        rows = [(line, self._parsed(RAW_FILES["events"], line, lambda text: next(csv.reader([text]))))
                for line in self._new_lines(RAW_FILES["events"])]
        if header_unread and rows:
            self._check_header(rows[0][1])
            rows = rows[1:]
        for line, row in rows:
            if len(row) != len(RAW_COLUMNS["events"]):
                raise self._broken_line(RAW_FILES["events"], line, f"{len(row)} fields, not the header's {len(RAW_COLUMNS['events'])}")
        self._events.update((row[0], tuple(row[1:5])) for _, row in rows)
        for _, row in rows:
            self._take_in_time(row)

    def _parsed(self, name: str, line: str, parse: Callable[[str], T]) -> T:
        try:
            return parse(line)
        except (ValueError, KeyError, TypeError, AttributeError, csv.Error) as exc:
            raise self._broken_line(name, line, f"{type(exc).__name__}: {exc}") from exc

    def _broken_line(self, name: str, line: str, why: str) -> "FeedbackLogBroken":
        """Names the file and line, not its content (raw shopper ids), nor the folder (/health is open)."""
        lines = (self.folder / name).read_bytes().split(b"\n")
        number = lines.index(line.encode("utf-8")) + 1 if line.encode("utf-8") in lines else "?"
        return FeedbackLogBroken(
            f"feedback log {name}, line {number}: not a line this server writes ({why[:200]}): cut off and written after, "
            f"or edited by hand. Nothing more is logged until it is gone: move the line to {name}.fragments (no table "
            "reads it), or move the file aside (the log starts a new one)."
        )

    def _take_in_time(self, row: list[str]) -> None:
        fields = dict(zip(RAW_COLUMNS["events"], row))
        try:
            when = datetime.fromisoformat(fields["timestamp"])
        except (KeyError, ValueError):
            return  # not a row this log wrote; the source stage's readers judge it
        key = (fields.get("user_id", ""), fields.get("product_id", ""), fields.get("copy_id", ""))
        earliest = self._first_seen if fields.get("event_type") == "impression" else self._first_outcome
        if key not in earliest or when < earliest[key]:
            earliest[key] = when

    def _no_earlier_than_possible(self, served: Served, event_type: str, when: str) -> str:
        at, earliest = datetime.fromisoformat(when), datetime.fromisoformat(served.timestamp)
        what = "the copy was served"
        seen = self._first_seen.get((served.user_id, served.product_id, served.copy_id))
        if event_type != "impression" and seen is not None and seen > earliest:
            earliest, what = seen, "this shopper's first impression of this copy"
        if at >= earliest:
            return when
        if earliest - at <= self.max_future:
            return earliest.isoformat()  # a client clock a little behind
        raise FeedbackError(f"timestamp {when} is before {what} ({earliest.isoformat()}) by more than clocks drift apart ({self.max_future})")

    def _check_order(self, served: Served, event_type: str, when: str) -> None:
        """No first impression after an outcome of the same shopper, product and copy (an outcome
        before the first impression was moved up to it, or refused, by `_no_earlier_than_possible`)."""
        key, at = (served.user_id, served.product_id, served.copy_id), datetime.fromisoformat(when)
        seen, outcome = self._first_seen.get(key), self._first_outcome.get(key)
        if event_type == "impression" and seen is None and outcome is not None and outcome < at:
            raise FeedbackError(
                f"impression at {when} is after the {outcome.isoformat()} outcome already logged for this shopper and copy: "
                "report the time the copy was first shown"
            )

    def _check_header(self, header: list[str]) -> None:
        if header != RAW_COLUMNS["events"]:
            raise FeedbackLogBroken(
                f"feedback log {RAW_FILES['events']}: header {header} is not the raw layer's {RAW_COLUMNS['events']}; "
                "rows written now would land in the wrong columns. Move the file aside (the source stage reads it "
                "as it is) and the log starts a new one."
            )

    def record_serving(
        self, user_id: str, product_id: str, text: str, model_version: str, candidates: int, impression: bool = True,
        propensity: float | None = None, strategy: str = "uniform", candidate_texts: list[str] | None = None,
        scores: list[float] | None = None, scorer_version: str | None = None,
    ) -> Served:
        """Log one copy shown to one shopper (and, unless the caller reports it later, its
        impression). `propensity`: the probability the strategy gave this copy (default: a
        uniform draw, 1 / candidates); `candidate_texts`, `scores`, `scorer_version`: what the
        strategy chose among, for scoring other strategies on the log later."""
        for name, value in (("user_id", user_id), ("product_id", product_id), ("model_version", model_version)):
            check_id(name, value)
        propensity = 1.0 / candidates if propensity is None else float(propensity)
        if not 0.0 < propensity <= 1.0:
            raise FeedbackError(f"propensity must be in (0, 1], got {propensity}: a copy served with probability 0 cannot be scored off-policy")
        copy_id = copy_id_for(model_version, product_id, text)
        served = Served(
            serve_id=uuid.uuid4().hex, user_id=user_id, product_id=product_id, copy_id=copy_id, position=1,
            propensity=propensity, candidates=candidates, model_version=model_version, timestamp=utc_now(), strategy=strategy,
            candidate_texts=tuple(candidate_texts or ()), scores=None if scores is None else tuple(float(x) for x in scores),
            scorer_version=scorer_version,
        )
        with self._locked(exclusive=True):
            self._refresh()
            if copy_id not in self._copies:
                row = {"copy_id": copy_id, "product_id": product_id, "text": text, "source": "generated", "model_version": model_version}
                self._append(RAW_FILES["copies"], _json_line(row))
            self._append(SERVED_FILE, _json_line(asdict(served)))
            if impression:
                self._append_event(served, "impression", served.timestamp, None, None)
            self._refresh()  # take in our own lines now, so the next call does not read them again
        return served

    def record_event(
        self, serve_id: str, event_type: str, timestamp: str | None = None, value: float | None = None, event_id: str | None = None
    ) -> str:
        """Log what the shopper did with a served copy; returns the event id. A repeated
        event_id (a client retrying) is accepted once; one naming another event is refused.

        Client clocks run a little apart from the server's: an outcome stamped before the serve
        (or before the first impression of its copy) by less than `max_future` is recorded at that
        moment instead, the earliest it can have happened; earlier than that is refused."""
        if event_id is not None:
            check_id("event_id", event_id)
        if event_type not in EVENT_TYPES:
            raise FeedbackError(f"event_type {event_type!r} is not one of {list(EVENT_TYPES)}")
        when = parse_timestamp(timestamp, latest=datetime.now(timezone.utc) + self.max_future) if timestamp else utc_now()
        if value is not None and not (math.isfinite(value) and 0 <= value <= self.max_value):
            raise FeedbackError(f"value {value!r} must be a finite, non-negative number no larger than {self.max_value:g}")
        with self._locked(exclusive=True):
            self._refresh()
            served = self._served.get(serve_id)
            if served is None:
                raise UnknownServe(f"serve_id {serve_id!r} was not served by this profile's copy server")  # no paths: an HTTP answer
            if event_id is not None and event_id in self._events:
                if self._events[event_id] != (served.user_id, served.product_id, served.copy_id, event_type):
                    raise EventIdTaken(f"event_id {event_id!r} already names another event")  # whose: not the caller's to know
                return event_id
            when = self._no_earlier_than_possible(served, event_type, when)
            self._check_order(served, event_type, when)
            event_id = self._append_event(served, event_type, when, value, event_id)
            self._refresh()
            return event_id

    def _append_event(self, served: Served, event_type: str, when: str, value: float | None, event_id: str | None) -> str:
        path = self.folder / RAW_FILES["events"]
        self._repair_tail(RAW_FILES["events"])  # first: a header cut off by a crash is a fragment, and then there is none
        event_id = event_id or f"fb-{uuid.uuid4().hex}"
        row = {
            "event_id": event_id, "user_id": served.user_id, "product_id": served.product_id, "copy_id": served.copy_id,
            "event_type": event_type, "timestamp": when, "position": served.position,
            "propensity": served.propensity,
            # As exports do: 0 for events without money; a purchase without a value is left
            # empty, and cleaning fills in the product's price.
            "value": value if value is not None else ("" if event_type == "purchase" else 0),
        }
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=RAW_COLUMNS["events"], lineterminator="\n")
        if not path.exists() or path.stat().st_size == 0:
            writer.writeheader()
        writer.writerow(row)
        self._append(RAW_FILES["events"], buffer.getvalue())
        return event_id

    def counts(self) -> dict[str, int]:
        if not self.folder.is_dir():
            return {"copies": 0, "served": 0, "events": 0}
        with self._locked(exclusive=False):
            self._refresh()
            return {"copies": len(self._copies), "served": len(self._served), "events": len(self._events)}

    def fragments(self) -> int:
        """Partial lines that dead writers left: moved to `<file>.fragments`, or still at a file's
        end. No table reads them; the source stage and /health report the count, so none goes
        unnoticed. Under the shared lock (a line being appended is not a fragment), and reading
        only the live files' last byte: /health asks on every probe."""
        if not self.folder.is_dir():
            return 0
        count = 0
        with self._locked(exclusive=False):
            for name in (RAW_FILES["copies"], RAW_FILES["events"], SERVED_FILE):
                moved = self.folder / f"{name}.fragments"
                if moved.exists():
                    count += sum(1 for line in moved.read_bytes().split(b"\n") if line.strip())
                count += _ends_mid_line(self.folder / name)
        return count

    def remove_user(self, user_id: str) -> dict[str, int]:
        """Erase one shopper (the shop's raw id): their lines of events.csv and served.jsonl,
        {file: lines removed}. copies.jsonl names no shopper and stays. Every other byte stays as
        it was (a fragment at a file's end too); a file with nothing to remove is not rewritten.

        Under the exclusive lock the servers write under, each file is written whole to a
        temporary file (owner-only) and renamed over the old one: a reader sees the old file or
        the new one, never half of one, and a crash leaves the old file. Every FeedbackLog sees
        a new inode at its next read and reads the file again from its start (`_take_in_new_lines`)."""
        check_id("user_id", user_id)
        names = (RAW_FILES["events"], SERVED_FILE)
        if not self.folder.is_dir():
            return {name: 0 for name in names}
        with self._locked(exclusive=True):
            for stale in self.folder.glob(f"{REWRITE_PREFIX}*{REWRITE_SUFFIX}"):
                stale.unlink()  # an earlier rewrite that crashed: it may hold the shopper's lines
            removed = {name: self._rewrite_without(name, user_id) for name in names}
            self._forget()  # this object's own view: read again at its next use
        return removed

    def _rewrite_without(self, name: str, user_id: str) -> int:
        path = self.folder / name
        if not path.exists():
            return 0
        data = path.read_bytes()
        whole = data.rfind(b"\n") + 1
        lines = data[:whole].split(b"\n")[:-1]
        names_user = _served_user_is if name == SERVED_FILE else _events_user_is(lines[0] if lines else b"")
        header = 0 if name == SERVED_FILE else 1  # events.csv starts with its header
        kept = lines[:header] + [line for line in lines[header:] if not names_user(line, user_id)]
        removed = len(lines) - len(kept)
        if removed:
            replace_file(path, b"".join(line + b"\n" for line in kept) + data[whole:])
        return removed

    def snapshot(self, destination: Path) -> dict[str, Path]:
        """Copy the raw-layer files (those that exist) under the shared lock, whole lines only:
        a fragment a dead writer left at the end is not copied."""
        destination.mkdir(parents=True, exist_ok=True)
        copied = {}
        if not self.folder.is_dir():
            return copied
        with self._locked(exclusive=False):
            for table in ("copies", "events"):
                source = self.folder / RAW_FILES[table]
                if source.exists():
                    data = source.read_bytes()
                    target = destination / RAW_FILES[table]
                    target.write_bytes(data[: data.rfind(b"\n") + 1])
                    copied[table] = target
        return copied


def _served_user_is(line: bytes, user_id: str) -> bool:
    """A served.jsonl line of this shopper (a line that does not parse is left for the server to name)."""
    try:
        return json.loads(line.decode("utf-8")).get("user_id") == user_id
    except (ValueError, AttributeError):
        return False


def _events_user_is(header: bytes) -> Callable[[bytes, str], bool]:
    """Whether an events.csv row (not the header) is this shopper's, by the file's own header."""
    try:
        column = next(csv.reader([header.decode("utf-8")])).index("user_id")
    except (ValueError, StopIteration, csv.Error):
        column = RAW_COLUMNS["events"].index("user_id")

    def user_is(line: bytes, user_id: str) -> bool:
        try:
            row = next(csv.reader([line.decode("utf-8")]))
        except (ValueError, StopIteration, csv.Error):
            return False
        return len(row) > column and row[column] == user_id

    return user_is


def replace_file(path: Path, body: bytes) -> None:
    """Write `body` to a new owner-only file next to `path`, then rename it over `path`: a reader
    sees the old file or the new one, never half of one, and a crash leaves the old one."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=REWRITE_PREFIX, suffix=REWRITE_SUFFIX)  # mode 0600
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(body)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself survives a power cut
    finally:
        os.close(directory)
