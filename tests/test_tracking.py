"""Which MLflow store a profile uses: params, then $COPYFLOW_TRACKING_URI, then the embedded one,
and never the shared store for a profile that keeps a registry of its own (obd: another shop)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from components.config import load_config
from components.tracking import TRACKING_URI_ENV, StoreConflict, tracking_uri
from tests.conftest import ROOT

PARAMS = ROOT / "params.yaml"
SERVER = "http://127.0.0.1:5999"


def test_without_the_variable_each_profile_uses_its_embedded_store(monkeypatch):
    monkeypatch.delenv(TRACKING_URI_ENV, raising=False)
    quick, obd = load_config(PARAMS, "quick"), load_config(PARAMS, "obd")
    assert tracking_uri(quick) == f"sqlite:///{ROOT / 'mlflow' / 'mlflow.db'}"
    assert tracking_uri(obd) == f"sqlite:///{ROOT / 'mlflow' / 'obd' / 'mlflow.db'}"
    assert not quick.own_store and obd.own_store


def test_the_variable_moves_the_shared_profiles_but_refuses_one_with_its_own_store(monkeypatch):
    monkeypatch.setenv(TRACKING_URI_ENV, SERVER)
    assert tracking_uri(load_config(PARAMS, "quick")) == SERVER
    assert tracking_uri(load_config(PARAMS, "full")) == SERVER
    with pytest.raises(StoreConflict, match=r"profile 'obd' keeps a tracking store .*profiles\.obd\.tracking\.uri"):
        tracking_uri(load_config(PARAMS, "obd"))


def test_a_profile_with_its_own_store_follows_its_own_variable_beside_the_shared_one(monkeypatch):
    """What `make up` writes to .run/env, so one worker runs the shared and the shop profiles."""
    monkeypatch.setenv(TRACKING_URI_ENV, SERVER)
    monkeypatch.setenv(f"{TRACKING_URI_ENV}_SHOP", "sqlite:////srv/copyflow/mlflow/shop/mlflow.db")
    assert tracking_uri(load_config(PARAMS, "shop")) == "sqlite:////srv/copyflow/mlflow/shop/mlflow.db"
    assert tracking_uri(load_config(PARAMS, "quick")) == SERVER  # the shared profiles are unaffected
    with pytest.raises(StoreConflict, match=r"COPYFLOW_TRACKING_URI_OBD"):  # another shop's variable is its own
        tracking_uri(load_config(PARAMS, "obd"))


def test_a_profile_with_its_own_store_may_name_its_own_server(monkeypatch):
    monkeypatch.setenv(TRACKING_URI_ENV, SERVER)
    obd = load_config(PARAMS, "obd", overrides={"tracking": {"uri": "http://127.0.0.1:5998"}})
    assert tracking_uri(obd) == "http://127.0.0.1:5998"


def test_overrides_of_the_store_path_do_not_count_as_the_profile_owning_one(monkeypatch, tmp_path):
    # Tests and scripts point a profile at a scratch store with overrides; the variable still wins.
    monkeypatch.setenv(TRACKING_URI_ENV, SERVER)
    cfg = load_config(PARAMS, "quick", overrides={"paths": {"mlflow_dir": str(tmp_path)}})
    assert not cfg.own_store and tracking_uri(cfg) == SERVER


def test_the_cli_refuses_the_conflict_in_one_line_and_creates_no_store(monkeypatch, tmp_path):
    from flows.cli import app

    params = tmp_path / "params.yaml"
    params.write_text(PARAMS.read_text(encoding="utf-8"), encoding="utf-8")
    monkeypatch.setenv(TRACKING_URI_ENV, f"sqlite:///{tmp_path / 'shared' / 'mlflow.db'}")
    result = CliRunner().invoke(app, ["status", "--profile", "obd", "--params", str(params)])
    assert result.exit_code == 2
    assert "profile 'obd' keeps a tracking store" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "shared").exists() and not Path(tmp_path / "mlflow").exists()


def test_a_run_artifact_is_downloaded_once_and_reused(tmp_path, monkeypatch):
    # MLflow's download_artifacts copies into a new temporary folder on every call: serving a
    # model from the registry left a full bundle in /tmp per command.
    import mlflow

    from components.tracking import CACHE_DIR_ENV, artifact_cache_dir, download_artifacts_cached

    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "cache"))
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = mlflow.create_experiment("t", artifact_location=(tmp_path / "artifacts").as_uri())
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "config.json").write_text('{"x": 1}', encoding="utf-8")
    with mlflow.start_run(experiment_id=experiment) as run:
        mlflow.log_artifacts(str(bundle), artifact_path="generator_bundle")
    uri = f"runs:/{run.info.run_id}/generator_bundle"
    first = download_artifacts_cached(uri)
    assert (first / "config.json").read_text(encoding="utf-8") == '{"x": 1}'
    assert download_artifacts_cached(uri) == first
    assert [p.name for p in artifact_cache_dir().iterdir()] == [first.parent.name]  # one copy, no staging left


def test_runs_left_running_by_a_dead_process_are_ended_and_live_ones_kept(tmp_path):
    """A SIGKILLed flow never ends its MLflow runs; the next retrain marks them FAILED."""
    import socket
    import subprocess
    import sys

    import mlflow
    from mlflow import MlflowClient

    from components.tracking import end_orphaned_runs

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = MlflowClient()
    experiment = client.create_experiment("copyflow")
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    host = socket.gethostname()

    def run(pid: str, run_host: str = host, kind: str = "retrain", parent: str | None = None) -> str:
        tags = {"kind": kind, "profile": "quick", "copyflow.host": run_host, "copyflow.pid": pid}
        if parent:
            tags = {"mlflow.parentRunId": parent}
        return client.create_run(experiment, tags=tags).info.run_id

    crashed = run(gone)
    crashed_child = run("", parent=crashed)
    alive = run(str(os.getpid()))
    elsewhere = run(gone, run_host="another-host")
    other_kind = run(gone, kind="promote")

    ended = end_orphaned_runs(experiment, "retrain", "quick")

    assert sorted(ended) == sorted([crashed, crashed_child])
    status = {run_id: client.get_run(run_id).info.status for run_id in (crashed, crashed_child, alive, elsewhere, other_kind)}
    assert status == {crashed: "FAILED", crashed_child: "FAILED", alive: "RUNNING", elsewhere: "RUNNING", other_kind: "RUNNING"}
    assert "pid" in client.get_run(crashed).data.tags["copyflow.orphaned"]


def test_the_artifact_cache_evicts_the_least_recently_used_entries_over_its_size(tmp_path, monkeypatch):
    # Every nightly release adds its bundles; a server host would otherwise fill its disk.
    import time

    from components.tracking import CACHE_DIR_ENV, MARKER, artifact_cache_dir, evict_artifact_cache

    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "cache"))
    root = artifact_cache_dir()
    now = time.time()

    def entry(name: str, mb: float, used_hours_ago: float) -> Path:
        path = root / name / "bundle"
        path.mkdir(parents=True)
        (path / "weights.bin").write_bytes(b"\0" * int(mb * 2**20))
        (root / name / MARKER).write_text("bundle", encoding="utf-8")
        os.utime(root / name / MARKER, (now - used_hours_ago * 3600,) * 2)
        return root / name

    entry("a", 2, 72), entry("b", 2, 48), entry("d", 2, 0.1)
    kept = entry("c", 2, 96)
    killed_download = root / ".e-x1y2"
    killed_download.mkdir()
    os.utime(killed_download, (now - 2 * 86400,) * 2)
    in_progress = root / ".f-x3y4"
    in_progress.mkdir()

    removed = evict_artifact_cache(keep=kept, max_mb=4.5, now=now)

    # 8 MB over a 4.5 MB limit: the least recently used go first; `keep` and an entry used in
    # the last hour (another process may be loading it) stay even though they are older or big
    assert removed == [".e-x1y2", "a", "b"]
    assert sorted(p.name for p in root.iterdir()) == [".f-x3y4", "c", "d"]
    assert evict_artifact_cache(max_mb=4.5, now=now) == []  # under the limit: nothing more to do


def test_a_cache_hit_counts_as_a_use(tmp_path, monkeypatch):
    import mlflow

    from components.tracking import CACHE_DIR_ENV, MARKER, download_artifacts_cached

    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "cache"))
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = mlflow.create_experiment("t", artifact_location=(tmp_path / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=experiment) as run:
        mlflow.log_text("x", "bundle/config.json")
    uri = f"runs:/{run.info.run_id}/bundle"
    marker = download_artifacts_cached(uri).parent / MARKER
    os.utime(marker, (1_000_000_000,) * 2)

    download_artifacts_cached(uri)

    assert marker.stat().st_mtime > 1_000_000_000


def test_split_datasets_are_logged_as_inputs_with_their_context_and_digest(tmp_path):
    """What the preference and generator runs show under Datasets: one input per split, the same
    digest for the same rows (so two runs on the same data are recognisably so)."""
    import mlflow
    import pandas as pd

    from components.tracking import log_datasets, split_datasets

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = mlflow.create_experiment("t", artifact_location=(tmp_path / "artifacts").as_uri())
    frames = {"train": pd.DataFrame({"x": [1.0, 2.0, 3.0]}), "valid": pd.DataFrame({"x": [4.0]}), "test": pd.DataFrame({"x": [5.0, 6.0]})}
    digests = []
    for _ in range(2):
        with mlflow.start_run(experiment_id=experiment) as run:
            log_datasets(split_datasets(frames, name="preference-quick", source=tmp_path / "features"))
        inputs = mlflow.get_run(run.info.run_id).inputs.dataset_inputs
        assert {d.dataset.name: {t.key: t.value for t in d.tags}["mlflow.data.context"] for d in inputs} == {
            "preference-quick-train": "training", "preference-quick-valid": "validation", "preference-quick-test": "testing"}
        digests.append(sorted(d.dataset.digest for d in inputs))
    assert digests[0] == digests[1] and len(set(digests[0])) == 3


def test_headline_metrics_name_each_family_s_figures_for_the_retrain_run():
    """The retrain run had no metric of its own: comparing retrains needed their child runs."""
    from components.tracking import headline_metrics

    manifests = [
        {"model": "preference", "metrics": {"auc": 0.71, "logloss": 0.5}},
        {"model": "generator", "metrics": {"bleu4": 12.5, "rougeL": float("nan"), "distinct2": 0.4}},
        {"model": "effect", "metrics": {"auc": 0.6}},
    ]
    # each family's key figures (KEY_METRICS, as `copyflow status` shows them), finite ones only
    assert headline_metrics(manifests) == {"preference.auc": 0.71, "preference.logloss": 0.5, "generator.bleu4": 12.5, "generator.distinct2": 0.4}
    assert headline_metrics([]) == {}
