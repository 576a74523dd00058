"""Pipeline stage `source`: produce the raw layer (artifacts/<profile>/source/) from cfg.data.source.

    simulated  the AdvertiseGen corpus catalog + the seeded behaviour simulator (with dirt)
    obd        the Open Bandit Dataset CSVs fetched into cfg.paths.obd_dir (`fetch_obd`)
    folder     a shop's own exports in cfg.paths.source_folder, already in the raw-layer format
               (products.jsonl, copies.jsonl, users.csv, events.csv; see components/data/raw.py)

The raw layer carries RAW user ids; only `ingest` (which pseudonymizes them) reads it.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from components.config import Config
from components.data.feedback import FeedbackLog
from components.data.ingest import RawProblems, check_raw_tables
from components.data.raw import GROUND_TRUTH_DIR, RAW_COLUMNS, RAW_FILES, RawFormatError, jsonl_lines, write_raw_layer
from components.data.summary import write_summary

STAGE = "source"


def _reset_dir(path: Path) -> None:
    """Start from an empty stage dir so no file of an earlier run survives next to new ones."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)


def write_simulated_source(cfg: Config, out_dir: Path) -> dict[str, Any]:
    from components.data.simulator import simulate

    sim = simulate(cfg)
    write_raw_layer({"products": sim.products, "copies": sim.copies, "users": sim.users, "events": sim.events}, out_dir)
    truth = out_dir / GROUND_TRUTH_DIR
    truth.mkdir()
    sim.truth_users.to_parquet(truth / "users.parquet", index=False)
    sim.truth_preferences.to_parquet(truth / "user_preferences.parquet", index=False)
    sim.truth_impressions.to_parquet(truth / "impressions.parquet", index=False)
    (truth / "params.json").write_text(json.dumps(sim.params, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    diagnostics = sim.params["diagnostics"]
    return {
        "rows": {"products": len(sim.products), "copies": len(sim.copies), "users": len(sim.users), "events": len(sim.events)},
        "event_types": {str(k): int(v) for k, v in sim.events["event_type"].value_counts().items()},
        "simulation": {
            "ctr": diagnostics["ctr"],
            "click_probability_auc": diagnostics["click_probability_auc"],
            "mean_copy_mentions": diagnostics["mean_copy_mentions"],
        },
        "dirt": {
            "bot_users": len(sim.params["bot_user_ids"]),
            "duplicate_events": sim.params["dirt"]["duplicate_events"],
            "bad_price_products": len(sim.params["dirt"]["bad_price_products"]),
            "missing_values": sim.params["dirt"]["missing_values"],
        },
    }


def write_obd_source(cfg: Config, out_dir: Path) -> dict[str, Any]:
    from components.data.obd import obd_raw_layer

    layer = obd_raw_layer(cfg.paths.obd_dir, cfg.obd.behavior_policy, cfg.obd.campaign)
    write_raw_layer(layer.tables, out_dir)
    truth = out_dir / GROUND_TRUTH_DIR
    truth.mkdir()
    (truth / "params.json").write_text(json.dumps(layer.params, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    events = layer.tables["events"]
    return {
        "rows": {table: len(df) for table, df in layer.tables.items()},
        "event_types": {str(k): int(v) for k, v in events["event_type"].value_counts().items()},
        "notes": layer.params["notes"],
    }


def write_folder_source(cfg: Config, out_dir: Path) -> dict[str, Any]:
    """Copy a shop's export folder into the raw layer, after reading every file the way ingest
    will: a file that is missing, not UTF-8, malformed or short of a column, or a value that is
    not its column's type (a price "cheap", a timestamp "yesterday") stops here, before anything
    downstream runs. One error names every problem in every file as `export-file:line`: the file
    the shop edits, not its copy in the raw layer; the copy server's feedback log
    (cfg.feedback_dir(), components/data/feedback.py) is checked in the same round, its problems
    named in the log's own files. The export's bytes are copied unchanged; the log is appended."""
    folder = Path(cfg.paths.source_folder)
    if not folder.is_dir():
        raise RawFormatError(f"data.source is folder, but paths.source_folder {folder} is not a directory")
    missing = [name for name in RAW_FILES.values() if not (folder / name).is_file()]
    if missing:
        raise RawFormatError(f"{folder}: missing {missing}; a shop export needs {list(RAW_FILES.values())} (docs/schema.md)")
    problems = RawProblems()
    tables = check_raw_tables(folder, problems=problems)
    logged = read_feedback_log(cfg, problems)
    problems.raise_if_any()
    for name in RAW_FILES.values():
        shutil.copy2(folder / name, out_dir / name)
    feedback = append_feedback(out_dir, tables, logged)
    return {
        "folder": str(folder),
        "rows": {table: len(frame) for table, frame in tables.items()},
        "event_types": {str(k): int(v) for k, v in tables["events"]["event_type"].value_counts().items()},
        "ignored_files": sorted(p.name for p in folder.iterdir() if p.name not in RAW_FILES.values()),
        "feedback": feedback,
    }


@dataclass(frozen=True)
class FeedbackRead:
    folder: Path
    fragments: int  # partial lines dead writers left (FeedbackLog.fragments): not read
    tables: dict[str, pd.DataFrame] | None  # raw copies and events; None: no log yet


def read_feedback_log(cfg: Config, problems: RawProblems) -> FeedbackRead:
    """The served copies and their events in the feedback log (a snapshot under its lock), read
    and typed as ingest will; what fails goes to `problems`, named by the log's own files."""
    folder = cfg.feedback_dir()
    log = FeedbackLog(folder)
    fragments = log.fragments() if folder.is_dir() else 0
    with tempfile.TemporaryDirectory() as tmp:
        found = log.snapshot(Path(tmp))
        if not found:
            return FeedbackRead(folder, fragments, None)
        # a log with copies but no events yet (impressions reported later): read both the same way
        if "copies" not in found:
            (Path(tmp) / RAW_FILES["copies"]).write_text("", encoding="utf-8")
        if "events" not in found:
            (Path(tmp) / RAW_FILES["events"]).write_text(",".join(RAW_COLUMNS["events"]) + "\n", encoding="utf-8")
        in_snapshot = RawProblems()
        tables = check_raw_tables(Path(tmp), ("copies", "events"), in_snapshot)
        # name the log's files, not the snapshot's (deleted when this returns)
        problems.take(in_snapshot, read_in=Path(tmp), named_in=folder)
    return FeedbackRead(folder, fragments, tables)


def append_feedback(out_dir: Path, export: dict[str, pd.DataFrame], logged: FeedbackRead) -> dict[str, Any]:
    """Append the served copies and their events from the feedback log to the raw layer.
    A copy or event id the export already has is the export's (a shop that re-exports what it
    was served): it is skipped, not doubled. The lines are appended in the export's own column
    order, so the export's bytes stay as they were."""
    if logged.tables is None:
        return {"folder": str(logged.folder), "copies": 0, "events": 0, "skipped_as_duplicates": 0,
                "fragments_not_read": logged.fragments}
    copies, events = logged.tables["copies"], logged.tables["events"]
    new_copies = copies[~copies["copy_id"].isin(export["copies"]["copy_id"])]
    new_events = events[~events["event_id"].isin(export["events"]["event_id"])]
    _append_lines(out_dir / RAW_FILES["copies"], jsonl_lines(new_copies, RAW_COLUMNS["copies"]))
    target = out_dir / RAW_FILES["events"]
    with open(target, encoding="utf-8", newline="") as handle:
        header = next(csv.reader(handle))
    rows = new_events.reindex(columns=header).astype(object).where(new_events.reindex(columns=header).notna(), "")
    lines = []
    for record in rows.itertuples(index=False, name=None):
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="").writerow(record)
        lines.append(buffer.getvalue())
    _append_lines(target, lines)
    return {
        "folder": str(logged.folder),
        "copies": len(new_copies),
        "events": len(new_events),
        "event_types": {str(k): int(v) for k, v in new_events["event_type"].value_counts().items()},
        "skipped_as_duplicates": int(len(copies) - len(new_copies) + len(events) - len(new_events)),
        "fragments_not_read": logged.fragments,
    }


def _append_lines(path: Path, lines: list[str]) -> None:
    if not lines:
        return
    text = path.read_text(encoding="utf-8")
    with open(path, "a", encoding="utf-8") as handle:
        if text and not text.endswith("\n"):
            handle.write("\n")
        handle.write("\n".join(lines) + "\n")


def run_source(cfg: Config) -> dict[str, Any]:
    """Write the raw layer for cfg.data.source into artifacts/<profile>/source/ and summarize it."""
    out_dir = cfg.stage_dir(STAGE)
    _reset_dir(out_dir)
    writers = {"simulated": write_simulated_source, "obd": write_obd_source, "folder": write_folder_source}
    details = writers[cfg.data.source](cfg, out_dir)
    summary = {"stage": STAGE, "source": cfg.data.source, "files": dict(RAW_FILES), **details}
    written = write_summary(out_dir, summary)
    _owner_only(out_dir)
    return written


def _owner_only(out_dir: Path) -> None:
    """The raw layer holds raw shopper ids: readable by the owner only, like the pseudonym key."""
    for path in out_dir.rglob("*"):
        path.chmod(0o700 if path.is_dir() else 0o600)
    out_dir.chmod(0o700)


def read_ground_truth(cfg: Config, name: str) -> pd.DataFrame:
    """Evaluation-only access to source/ground_truth/<name>.parquet (never for features/models)."""
    return pd.read_parquet(cfg.stage_dir(STAGE) / GROUND_TRUTH_DIR / f"{name}.parquet")
