"""Erasing a shopper (`copyflow forget`): out of the feedback log now, out of every later batch.

The shop's raw id is turned into the profile's pseudonym (components/data/privacy.py) and kept in
state/<profile>/forgotten_shoppers.json: the pseudonym, the fingerprint of the key that made it
and the day, never the raw id. Ingest drops every row of a recorded pseudonym from each batch,
so an export that still lists the shopper does not bring them back (components/data/ingest.py),
and the frozen preference evaluation set leaves their rows out when it is loaded
(components/evaluation/frozen.py). The copy server's feedback log loses the shopper's lines
(FeedbackLog.remove_user). The shop's export is not edited: it is the shop's; the command counts
the lines that still name the shopper there, for the shop to remove.

Only pseudonyms made with the profile's current key match: after `copyflow rotate-key` a
recorded shopper gets a new pseudonym, so an export that still lists them needs a new `forget`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from components.config import Config
from components.data.feedback import FeedbackError, FeedbackLog, check_id, replace_file
from components.data.privacy import key_of_record, pseudonym
from components.data.raw import RAW_FILES, RawFormatError, read_raw_lines

FORGOTTEN_FILE = "forgotten_shoppers.json"
TABLES_WITH_SHOPPERS = ("users", "events")  # the raw tables whose rows name a shopper
LINES_LISTED = 5


class ErasureRecordError(RuntimeError):
    """The record of erased shoppers exists but cannot be read: nothing that needs it goes on."""


class ForgetError(ValueError):
    """An id that cannot be erased as given (empty, padded, on several lines): nothing was changed."""


def forgotten_path(cfg: Config) -> Path:
    return cfg.state_dir() / FORGOTTEN_FILE


def forgotten_records(cfg: Config) -> list[dict[str, str]]:
    """Every erasure of the profile: {pseudonym, key_id, forgotten_on}, oldest first."""
    path = forgotten_path(cfg)
    if not path.exists():
        return []
    try:
        records = json.loads(path.read_text(encoding="utf-8"))["shoppers"]
        if not all(isinstance(r, dict) and isinstance(r.get("pseudonym"), str) for r in records):
            raise ValueError("a record without a pseudonym")
    except (ValueError, KeyError, TypeError) as exc:  # ValueError covers JSON and UTF-8 errors
        # Never read as "nobody was erased": that would bring erased shoppers back.
        raise ErasureRecordError(
            f"{path} cannot be read ({type(exc).__name__}: {exc}); it lists the shoppers erased with `copyflow forget`, "
            "so nothing that depends on it runs: restore it from a backup (it holds pseudonyms only), "
            "or repair it by hand as {\"shoppers\": [{\"pseudonym\": ..., \"key_id\": ..., \"forgotten_on\": ...}]}"
        ) from exc
    return records


def forgotten_pseudonyms(cfg: Config) -> frozenset[str]:
    return frozenset(record["pseudonym"] for record in forgotten_records(cfg))


def forgotten_digest(cfg: Config) -> str:
    """A fingerprint of the set of erased shoppers ("none" without one): what the always-run
    pseudonym_key stage writes, so DVC re-runs ingest when a shopper is erased."""
    pseudonyms = sorted(forgotten_pseudonyms(cfg))
    return hashlib.sha256("\n".join(pseudonyms).encode()).hexdigest()[:16] if pseudonyms else "none"


def record_forgotten(cfg: Config, pseudonyms: list[str], key_id: str) -> list[str]:
    """Add `pseudonyms` to the profile's record (rewritten whole: temporary file, then rename);
    returns those not recorded before."""
    from filelock import FileLock

    path = forgotten_path(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock", timeout=60):  # two `forget` at once: neither loses the other's
        records = forgotten_records(cfg)
        known = {record["pseudonym"] for record in records}
        new = [p for p in dict.fromkeys(pseudonyms) if p not in known]
        if new:
            today = datetime.now(UTC).date().isoformat()
            records += [{"pseudonym": p, "key_id": key_id, "forgotten_on": today} for p in new]
            replace_file(path, (json.dumps({"shoppers": records}, indent=2) + "\n").encode("utf-8"))
    return new


@dataclass
class Erasure:
    """What `forget` did for one raw id, and where the shopper is still found."""

    raw_id: str
    newly_recorded: bool
    feedback_removed: dict[str, int]
    export_lines: dict[str, list[int]] = field(default_factory=dict)  # export file -> lines naming the shopper
    raw_layer_lines: dict[str, list[int]] = field(default_factory=dict)  # the raw layer (artifacts/<profile>/source/), the same


@dataclass
class ForgetReport:
    artifacts: Path  # the profile's pipeline outputs (paths.artifacts/<profile>), the raw layer in its source/
    erasures: list[Erasure]
    export_folder: Path | None  # the shop's export (data.source folder), else None
    source: str  # data.source: what the raw layer is rewritten from
    unreadable: dict[str, str] = field(default_factory=dict)  # folder -> why it could not be searched


def check_raw_ids(raw_ids: list[str]) -> list[str]:
    """The ids as given, each once; refused as the feedback log and ingest refuse them."""
    if not raw_ids:
        raise ForgetError("no shopper id given: pass --user ID (several times if needed) or --users-file FILE")
    for raw_id in raw_ids:
        try:
            check_id("shopper id", raw_id)
        except FeedbackError as exc:
            raise ForgetError(f"{exc}; nothing was erased") from exc
    return list(dict.fromkeys(raw_ids))


def forget_shoppers(cfg: Config, raw_ids: list[str]) -> ForgetReport:
    """Erase shoppers by the shop's raw ids: recorded first (so a crash part-way leaves them
    dropped from every later batch, and running it again finishes), then out of the feedback log.
    Raises ForgetError for a bad id, PseudonymKeyError for a key that is not the profile's."""
    raw_ids = check_raw_ids(raw_ids)
    key = key_of_record(cfg)
    by_pseudonym = {raw_id: pseudonym(raw_id, key) for raw_id in raw_ids}
    new = set(record_forgotten(cfg, list(by_pseudonym.values()), key.key_id))
    log = FeedbackLog(cfg.feedback_dir())
    erasures = [Erasure(raw_id, by_pseudonym[raw_id] in new, log.remove_user(raw_id)) for raw_id in raw_ids]
    report = ForgetReport(cfg.stage_dir("source").parent, erasures,
                          Path(cfg.paths.source_folder) if cfg.data.source == "folder" else None, cfg.data.source)
    if report.export_folder is not None:
        _find_lines(report, report.export_folder, "export_lines")
    _find_lines(report, report.artifacts / "source", "raw_layer_lines")
    return report


def _find_lines(report: ForgetReport, folder: Path, attribute: str) -> None:
    """Which lines of `folder`'s users.csv and events.csv still name each erased shopper."""
    for table in TABLES_WITH_SHOPPERS:
        if not (folder / RAW_FILES[table]).is_file():
            continue
        try:
            read = read_raw_lines(folder, table)  # a broken line does not hide the readable ones
        except RawFormatError as exc:
            report.unreadable[str(folder / RAW_FILES[table])] = str(exc).splitlines()[0][:200]
            continue
        if read.bad:
            report.unreadable[str(folder / RAW_FILES[table])] = (
                f"{len(read.bad)} line(s) cannot be read (first: line {read.bad[0][0]}) and were not searched; the others were")
        users = read.frame["user_id"]
        for erasure in report.erasures:
            lines = [int(line) for line in users.index[(users == erasure.raw_id).to_numpy()]]
            if lines:
                getattr(erasure, attribute)[RAW_FILES[table]] = lines


def _raw_layer_until(source: str) -> str:
    """How long the raw layer keeps an erased shopper's raw id: it is rewritten from its source."""
    if source == "folder":  # a copy of the export (and the feedback log): the shopper stays while the export lists them
        return "until a retrain's source stage copies an export that no longer lists them"
    # The simulator and the OBD sample are fixed inputs: every source run writes the same shoppers again.
    return (f"for good: the {source} source writes this shopper again on every run, under the same raw id; "
            "ingest drops them each time")


def report_lines(report: ForgetReport) -> list[str]:
    """The command's output: what was done, then what still holds the shopper."""
    out = []
    for erasure in report.erasures:
        removed = ", ".join(f"{n} from {name}" for name, n in erasure.feedback_removed.items())
        recorded = "recorded as forgotten" if erasure.newly_recorded else "already recorded as forgotten"
        out.append(f"{erasure.raw_id!r}: {recorded}; feedback log lines removed: {removed}")
        if erasure.newly_recorded and not any(erasure.feedback_removed.values()) and not erasure.export_lines \
                and not erasure.raw_layer_lines:  # a mistyped id would otherwise read as a done erasure
            out.append(f"  found nowhere: no line of the feedback log, the shop's export or the raw layer names "
                       f"{erasure.raw_id!r}; check the id (it is recorded all the same)")
        for name, lines in erasure.export_lines.items():
            shown = ", ".join(map(str, lines[:LINES_LISTED])) + (", …" if len(lines) > LINES_LISTED else "")
            out.append(f"  still in the shop's export {report.export_folder / name}: {len(lines)} line(s) ({shown}); remove "
                       "them there (copyflow does not edit the export; ingest drops them meanwhile)")
        for name, lines in erasure.raw_layer_lines.items():
            out.append(f"  still in the raw layer {report.artifacts / 'source' / name}: {len(lines)} line(s), "
                       + _raw_layer_until(report.source))
    for path, why in report.unreadable.items():
        out.append(f"could not search {path} for the shopper(s): {why}")
    out.append(f"Left until the next retrain: {report.artifacts} (ingested data, features, models) holds the "
               "pseudonym(s); ingest drops them from the next batch. The models of the current release and of the older "
               "releases still registered (`copyflow rollback` can restore them) were trained with them; they and their "
               "MLflow evidence stay until `copyflow prune` removes them. The frozen preference evaluation set leaves "
               "their rows out from now on.")
    return out
