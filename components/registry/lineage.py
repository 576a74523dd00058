"""Lineage tags of a registered version: which code, data, validation and orchestration run made it."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from components import dvc_runner, tracking
from components.config import Config
from components.registry.names import KEY_METRICS, METRIC_TAG_PREFIX, verdict

# Prefect's workers and the flow engine export the running flow's id to its process.
PREFECT_FLOW_RUN_ENV = "PREFECT__FLOW_RUN_ID"
TRAINING_STAGE = {"preference": "train_preference", "generator": "train_generator", "effect": "train_effect"}


def data_digest(family: str, profile: str, project_dir: Path) -> str:
    """sha256 over the dvc.lock md5s of the training stage's dependencies (its data + code).

    Empty dependency list (no dvc.lock yet, e.g. a training run outside DVC) gives "none".
    """
    deps = dvc_runner.stage_lock(TRAINING_STAGE.get(family, f"train_{family}"), profile, project_dir)["deps"]
    if not deps:
        return "none"
    return hashlib.sha256(json.dumps(deps, sort_keys=True).encode()).hexdigest()


def ge_verdict(cfg: Config, parent_tags: dict[str, str] | None = None) -> str:
    """The Great Expectations verdict of the batch: from the retrain run's tag, else the report."""
    if parent_tags and parent_tags.get("ge.verdict"):
        return parent_tags["ge.verdict"]
    summary = cfg.stage_dir("validation") / "summary.json"
    if summary.exists():
        data = json.loads(summary.read_text(encoding="utf-8"))
        for key in ("verdict", "success", "passed"):
            if key in data:
                value = data[key]
                return verdict(value) if isinstance(value, bool) else str(value)
    return "unknown"


def metric_tags(family: str, metrics: dict) -> dict[str, str]:
    """metric.<name> tags for the family's key metrics (the ones `copyflow status` shows)."""
    wanted = KEY_METRICS.get(family) or tuple(metrics)
    return {
        f"{METRIC_TAG_PREFIX}{name}": f"{float(metrics[name]):.6g}"
        for name in wanted
        if isinstance(metrics.get(name), int | float)
    }


def lineage_tags(
    cfg: Config,
    manifest: dict,
    *,
    project_dir: Path | str = ".",
    flow_run_id: str | None = None,
    parent_tags: dict[str, str] | None = None,
) -> dict[str, str]:
    """Every lineage tag of one candidate version (gate.verdict is added by the gate step)."""
    project_dir = Path(project_dir)
    family = manifest["model"]
    return {
        "git_commit": (parent_tags or {}).get("git_commit") or tracking.git_commit(project_dir),
        "dvc.lock.sha256": dvc_runner.lock_digest(project_dir) or "none",
        "data.sha256": data_digest(family, cfg.profile, project_dir),
        "ge.verdict": ge_verdict(cfg, parent_tags),
        "prefect_flow_run_id": flow_run_id
        or (parent_tags or {}).get("prefect_flow_run_id")
        or os.environ.get(PREFECT_FLOW_RUN_ENV)
        or "none",
        "training_run_id": str(manifest.get("run_id") or "none"),
        "profile": cfg.profile,
        **metric_tags(family, manifest.get("metrics") or {}),
    }
