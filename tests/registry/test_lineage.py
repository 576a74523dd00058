"""Lineage tags: dvc.lock data hash, GE verdict, Prefect flow-run id, metric tags."""

from __future__ import annotations

import json

import yaml

from components.registry.lineage import data_digest, ge_verdict, lineage_tags, metric_tags
from components.registry.names import LINEAGE_TAGS


def _write_lock(project, md5: str) -> None:
    lock = {
        "schema": "2.0",
        "stages": {
            "train_preference@quick": {
                "cmd": "python -m components.pipeline train_preference --profile quick",
                "deps": [{"path": "artifacts/quick/features", "md5": md5, "size": 10, "nfiles": 3}],
            }
        },
    }
    (project / "dvc.lock").write_text(yaml.safe_dump(lock), encoding="utf-8")


def test_data_digest_follows_the_training_stage_dependencies(tmp_path):
    assert data_digest("preference", "quick", tmp_path) == "none"
    _write_lock(tmp_path, "aaa.dir")
    first = data_digest("preference", "quick", tmp_path)
    _write_lock(tmp_path, "bbb.dir")
    assert len(first) == 64 and data_digest("preference", "quick", tmp_path) != first
    assert data_digest("generator", "quick", tmp_path) == "none"  # no such stage in this lock


def test_ge_verdict_prefers_the_retrain_run_tag_then_the_validation_summary(make_cfg):
    cfg = make_cfg()
    assert ge_verdict(cfg) == "unknown"
    summary = cfg.stage_dir("validation") / "summary.json"
    summary.parent.mkdir(parents=True)
    summary.write_text(json.dumps({"success": False}), encoding="utf-8")
    assert ge_verdict(cfg) == "fail"  # the vocabulary of gate.verdict, so one search finds both
    summary.write_text(json.dumps({"success": True}), encoding="utf-8")
    assert ge_verdict(cfg) == "pass"
    assert ge_verdict(cfg, {"ge.verdict": "fail"}) == "fail"


def test_lineage_tags_are_complete(make_cfg, tmp_path, monkeypatch):
    cfg = make_cfg()
    _write_lock(tmp_path, "ccc.dir")
    monkeypatch.setenv("PREFECT__FLOW_RUN_ID", "flow-run-123")
    manifest = {"model": "preference", "run_id": "r1", "model_uri": "runs:/r1/model", "metrics": {"auc": 0.71234567, "note": "x"}}
    tags = lineage_tags(cfg, manifest, project_dir=tmp_path, parent_tags={"ge.verdict": "pass", "git_commit": "abc"})
    assert tags["prefect_flow_run_id"] == "flow-run-123" and tags["git_commit"] == "abc"
    assert tags["dvc.lock.sha256"] != "none" and tags["data.sha256"] != "none"
    assert tags["metric.auc"] == "0.712346" and "metric.note" not in tags
    assert set(LINEAGE_TAGS) - {"gate.verdict"} <= set(tags)


def test_metric_tags_only_for_numbers():
    assert metric_tags("generator", {"bleu4": 3, "rougeL": None, "distinct2": 0.5}) == {"metric.bleu4": "3", "metric.distinct2": "0.5"}
