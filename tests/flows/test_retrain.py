"""The retrain flow for real: Prefect (test harness), DVC, Great Expectations and MLflow (sqlite)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import yaml
from mlflow.tracking import MlflowClient

from components.config import load_config
from components.data.privacy import load_key, recorded_key_id, rotate_key
from components.dvc_runner import StageFailed
from components.pipeline import ALWAYS_RUN_STAGES, DATA_STAGES
from components.tracking import tracking_uri
from flows.retrain import DataGateFailed, ParamsNotTracked, RetrainBusy, retrain
from tests.flows.conftest import make_project, prefect_artifact
from tests.processes import processes_in


def _runs(project):
    cfg = load_config(project / "params.yaml", "quick")
    uri = tracking_uri(cfg)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    return client, client.search_runs([experiment.experiment_id], max_results=200)


def test_data_stages_run_then_skip_when_unchanged(tmp_path, prefect_harness, monkeypatch):
    project = make_project(tmp_path)
    monkeypatch.chdir(project)
    first = retrain(profile="quick", project_dir=str(project), stages=list(DATA_STAGES))
    assert all(not first.stages[s]["skipped"] for s in DATA_STAGES)
    assert first.summary("validate")["success"] is True
    clean = first.summary("clean")
    assert clean["rows_after"]["events"] < clean["rows_before"]["events"]  # dirt was removed

    client, runs = _runs(project)
    parent = client.get_run(first.mlflow_run_id)
    assert parent.data.tags["ge.verdict"] == "pass"  # the vocabulary of gate.verdict and release.gate
    logged_lock = Path(client.download_artifacts(first.mlflow_run_id, "dvc.lock", str(tmp_path / "lock")))
    assert hashlib.sha256(logged_lock.read_bytes()).hexdigest() == parent.data.tags["dvc.lock.sha256"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == first.mlflow_run_id]
    assert sorted(r.data.tags["stage"] for r in children) == sorted(DATA_STAGES)
    # One verdict vocabulary for every verdict tag: the UI's search finds the retrain and its gate run.
    passed = client.search_runs([parent.info.experiment_id], "tags.`ge.verdict` = 'pass'")
    assert first.mlflow_run_id in {r.info.run_id for r in passed}
    assert any(r.data.tags.get("stage") == "validate" for r in passed)
    ingest = next(r for r in children if r.data.tags["stage"] == "ingest")
    assert any(k.startswith("dvc.outs.") for k in ingest.data.tags)  # data hash from dvc.lock
    summary = prefect_artifact("retrain-quick")
    assert "data gate (Great Expectations): PASSED" in summary and first.mlflow_run_id in summary

    second = retrain(profile="quick", project_dir=str(project), stages=list(DATA_STAGES))
    cached = [s for s in DATA_STAGES if s not in ALWAYS_RUN_STAGES]
    assert all(second.stages[s]["skipped"] for s in cached) and not second.stages["pseudonym_key"]["skipped"], second.stages
    # from another directory: the project is where its params.yaml is
    monkeypatch.chdir(tmp_path)
    elsewhere = retrain(profile="quick", params_path=str(project / "params.yaml"), stages=list(DATA_STAGES))
    assert all(elsewhere.stages[s]["skipped"] for s in cached), elsewhere.stages
    # another params file would be ignored by every DVC stage: refused, not half-applied
    (project / "alt.yaml").write_text((project / "params.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    with pytest.raises(ParamsNotTracked, match="alt.yaml is not that file"):
        retrain(profile="quick", params_path=str(project / "alt.yaml"), stages=list(DATA_STAGES))
    monkeypatch.chdir(project)
    # a profile override re-runs exactly the stages that read its section
    params = yaml.safe_load((project / "params.yaml").read_text(encoding="utf-8"))
    params["profiles"]["quick"]["features"] = {**params["profiles"]["quick"]["features"], "ctr_prior_strength": 7.0}
    (project / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True, sort_keys=False), encoding="utf-8")
    stale = subprocess.run([str(Path(sys.executable).parent / "dvc"), "status", "--json", *(f"{s}@quick" for s in cached)],
                           cwd=project, capture_output=True, text=True, check=True)
    assert set(json.loads(stale.stdout)) == {"features@quick"}, stale.stdout

    # Another pseudonym key would give every shopper a new id: refused at the first stage.
    cfg = load_config(project / "params.yaml", "quick")
    before = (project / "artifacts/quick/ingested/users.parquet").read_bytes()
    monkeypatch.setenv(cfg.privacy.key_env, "9" * 64)
    with pytest.raises(StageFailed, match="pseudonym_key@quick.*\n(.*\n)*.*not the one profile 'quick' was pseudonymized with"):
        retrain(profile="quick", project_dir=str(project), stages=list(DATA_STAGES))
    assert (project / "artifacts/quick/ingested/users.parquet").read_bytes() == before
    # Rotated on purpose: ingest runs again (DVC's run cache cannot restore the old key's ids).
    rotate_key(cfg)
    rotated = retrain(profile="quick", project_dir=str(project), stages=list(DATA_STAGES))
    assert not rotated.stages["ingest"]["skipped"] and rotated.stages["source"]["skipped"]
    assert rotated.summary("ingest")["pseudonym_key_id"] == load_key(cfg).key_id == recorded_key_id(cfg)
    assert (project / "artifacts/quick/ingested/users.parquet").read_bytes() != before
    mlflow.set_tracking_uri(tracking_uri(load_config(project / "params.yaml", "quick")))


def test_the_retrain_run_logs_every_knob_of_params_yaml_and_its_stage_runs_the_profile(tmp_path, prefect_harness, monkeypatch):
    """Comparing two retrains in the UI showed only `profile` and `stages`: a changed simulator,
    cleaning or feature setting was invisible."""
    from components.tracking import config_params

    project = make_project(tmp_path, {"features": {"history_length": 7}})
    monkeypatch.chdir(project)
    result = retrain(profile="quick", project_dir=str(project), stages=["pseudonym_key"])
    client, _ = _runs(project)
    params = client.get_run(result.mlflow_run_id).data.params
    cfg = load_config(project / "params.yaml", "quick")
    assert params == {**config_params(cfg), "stages": "pseudonym_key"}
    assert params["features.history_length"] == "7" and params["simulator.n_users"] == "120" and params["profile"] == "quick"
    # Its stage runs carry the profile too: a `tags.profile = 'quick'` search in the UI hid them.
    (stage,) = client.search_runs([client.get_run(result.mlflow_run_id).info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{result.mlflow_run_id}'")
    assert stage.data.tags["stage"] == "pseudonym_key" and stage.data.tags["profile"] == "quick"
    mlflow.set_tracking_uri(tracking_uri(cfg))


def test_failing_gate_stops_the_flow_before_cleaning(tmp_path, prefect_harness, monkeypatch):
    # A gate that tolerates no duplicate events rejects the simulator's dirty batch.
    project = make_project(tmp_path, {"validation": {"mostly_unique_events": 1.0}})
    monkeypatch.chdir(project)
    with pytest.raises(DataGateFailed) as failure:
        retrain(profile="quick", project_dir=str(project), stages=list(DATA_STAGES))
    message = str(failure.value)
    # a few lines naming the failed check and the report, not the report itself
    # (Prefect repeats the message in its log, the traceback and the flow run's state)
    assert "events.event_id: expect_column_values_to_be_unique" in message and "report.md" in message
    assert len(message.splitlines()) <= 3 and "## All checks" not in message
    assert not (project / "artifacts/quick/clean").exists()
    assert not (project / "artifacts/quick/features").exists()

    client, runs = _runs(project)
    parent = next(r for r in runs if r.data.tags.get("kind") == "retrain")
    assert parent.info.status == "FAILED"
    assert parent.data.tags["ge.verdict"] == "fail"
    assert parent.data.tags["failed_stage"] == "validate"
    gate_run = next(r for r in runs if r.data.tags.get("stage") == "validate")
    assert gate_run.info.status == "FAILED" and gate_run.data.tags["ge.verdict"] == "fail"
    assert gate_run.data.tags["profile"] == "quick"
    # the error tag is the end of the stage's output in whole lines, down to the failed check (a
    # cut at 240 characters kept only the report's path and DVC's last line)
    assert "checks failed (events.event_id: expect_column_values_to_be_unique)" in gate_run.data.tags["error"]
    logged = {a.path for a in client.list_artifacts(gate_run.info.run_id)}
    assert "report.md" in logged
    assert client.search_registered_models() == []
    assert "FAILED" in prefect_artifact("data-gate-quick") and "event_id" in prefect_artifact("data-gate-quick")
    # A verdict, not a crash, yet Prefect records both runs as Failed, saying why.
    flow_state, task_states = _prefect_states(parent.data.tags["prefect_flow_run_id"])
    assert flow_state.is_failed() and flow_state.message.startswith("Data validation failed for profile 'quick': 1 of "), flow_state
    assert task_states["validate@quick"].is_failed(), task_states
    assert task_states["validate@quick"].message.startswith("data gate rejected the batch: 1 of "), task_states
    assert task_states["ingest@quick"].is_completed() and "clean@quick" not in task_states


def _prefect_states(flow_run_id: str):
    """The flow run's final state and its task runs' by task run name, as the Prefect API has them."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(flow_run_id)
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id])))
    return flow_run.state, {t.name: t.state for t in tasks}


def test_only_the_gate_s_verdict_ends_the_validate_task_without_a_traceback(tmp_path):
    """A validate stage that failed without writing a failing verdict crashed: it keeps the traceback."""
    from components.pipeline import stage_output_dir
    from flows.retrain import _gate_rejection

    project = make_project(tmp_path)
    out = stage_output_dir(load_config(project / "params.yaml", "quick"), "validate")
    assert _gate_rejection("validate", "quick", str(project)) == ""  # no summary: it crashed before its verdict
    out.mkdir(parents=True)
    failed = ["events.event_id: expect_column_values_to_be_unique"]
    (out / "summary.json").write_text(json.dumps({"success": False, "evaluated_expectations": 93, "failed": failed}), encoding="utf-8")
    assert _gate_rejection("validate", "quick", str(project)) == (
        "data gate rejected the batch: 1 of 93 checks failed (events.event_id: expect_column_values_to_be_unique)")
    assert _gate_rejection("clean", "quick", str(project)) == ""  # another stage's failure is never a verdict
    (out / "summary.json").write_text(json.dumps({"success": True, "evaluated_expectations": 93, "failed": []}), encoding="utf-8")
    assert _gate_rejection("validate", "quick", str(project)) == ""  # passed, then DVC failed: not the gate


def test_a_release_failure_s_error_tag_keeps_whole_first_lines():
    """The release step's error tag was the first line cut at 240 characters, mid-word."""
    from flows.retrain import _first_lines

    rules = "; ".join(f"generator metric_{i} 0.5000 fails guardrail <= 0.1" for i in range(8))  # 8 x 47 characters
    message = f"release gate failed; no alias was moved: {rules}\nReport: the Prefect artifact release-gate-quick"
    assert _first_lines(message) == message  # all of it: under 1,000 characters, both lines whole
    assert _first_lines(message, limit=len(message) - 1) == message.splitlines()[0]  # whole lines only
    assert _first_lines("x" * 1500) == "x" * 1000  # one line past the limit: its start


def test_a_second_retrain_of_the_same_profile_is_refused(tmp_path, prefect_harness, monkeypatch):
    from filelock import FileLock

    project = make_project(tmp_path)
    monkeypatch.chdir(project)
    cfg = load_config(project / "params.yaml", "quick")
    cfg.state_dir().mkdir(parents=True, exist_ok=True)
    with FileLock(str(cfg.state_dir() / "retrain.lock")):  # the first retrain, still running
        with pytest.raises(RetrainBusy, match="a retrain or a prune of profile 'quick' is running"):
            retrain(profile="quick", project_dir=str(project), stages=["source"])
    assert not (project / "artifacts/quick/source").exists()


def test_cli_retrain_says_in_one_line_that_the_prefect_server_is_down(tmp_path, monkeypatch):
    import socket

    from typer.testing import CliRunner

    from flows.cli import app

    project = make_project(tmp_path)
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("PREFECT_API_URL", f"http://127.0.0.1:{port}/api")
    result = CliRunner().invoke(app, ["retrain", "--params", str(project / "params.yaml")])
    assert result.exit_code == 2
    assert f"the Prefect server at PREFECT_API_URL=http://127.0.0.1:{port}/api does not answer" in result.output
    assert "Traceback" not in result.output


def test_each_stage_logs_its_figures_in_one_line():
    from flows.retrain import SUMMARY_FIGURES, _figures

    line = _figures({"stage": "clean", "rows_before": {"events": 62664}, "removed": {"bot_events": 9120, "replayed_events": 0}, "k_anonymity": True})
    assert line == "rows_before.events=62664, removed.bot_events=9120, removed.replayed_events=0, k_anonymity=1"
    many = _figures({f"m{i}": float(i) for i in range(SUMMARY_FIGURES + 5)})
    assert many.endswith("… (5 more in MLflow)") and many.count("=") == SUMMARY_FIGURES
    assert _figures({"stage": "pseudonym_key", "key_id": "26debe7865b7"}) == "key_id=26debe7865b7"


def test_a_shop_export_runs_the_pipeline_and_a_new_export_reruns_it(tmp_path, prefect_harness, monkeypatch):
    """profile shop: the export folder is the source; DVC tracks it, the gate checks it."""
    project = make_project(tmp_path)
    monkeypatch.chdir(project)
    first = retrain(profile="shop", project_dir=str(project), stages=list(DATA_STAGES))
    assert all(not first.stages[s]["skipped"] for s in DATA_STAGES)
    assert first.summary("source")["source"] == "folder" and first.summary("validate")["success"] is True
    assert (project / "mlflow/shop/mlflow.db").exists()  # its own store, like obd

    unchanged = retrain(profile="shop", project_dir=str(project), stages=list(DATA_STAGES))
    assert all(unchanged.stages[s]["skipped"] for s in DATA_STAGES if s not in ALWAYS_RUN_STAGES)
    events = project / "data/shop_example/events.csv"
    lines = events.read_text(encoding="utf-8").splitlines()
    events.write_text("\n".join(lines[:-200]) + "\n", encoding="utf-8")  # the next export
    again = retrain(profile="shop", project_dir=str(project), stages=list(DATA_STAGES))
    assert not again.stages["source"]["skipped"] and not again.stages["features"]["skipped"]
    assert again.summary("source")["rows"]["events"] == first.summary("source")["rows"]["events"] - 200

    # What `copyflow serve` logs is a dependency of source@shop too (dvc.yaml)...
    from components.data.feedback import FeedbackLog

    cfg = load_config(project / "params.yaml", "shop")
    assert cfg.feedback_dir() == project / "data/feedback/shop"
    product = json.loads((project / "data/shop_example/products.jsonl").read_text(encoding="utf-8").splitlines()[0])["product_id"]
    log = FeedbackLog(cfg.feedback_dir())
    log.record_serving("shopper000001", product, "为你写的文案。", "models:/copyflow-generator/1", candidates=2)
    fed = retrain(profile="shop", project_dir=str(project), stages=["source"])
    assert not fed.stages["source"]["skipped"] and fed.summary("source")["feedback"]["events"] == 1
    # ...but not its serving decisions or lock file, which the stage does not read (.dvcignore)
    log.record_serving("shopper000001", product, "为你写的文案。", "models:/copyflow-generator/1", candidates=2, impression=False)
    assert retrain(profile="shop", project_dir=str(project), stages=["source"]).stages["source"]["skipped"]


def test_a_stage_past_its_time_limit_is_stopped_and_not_retried(tmp_path, prefect_harness, monkeypatch):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from components.dvc_runner import StageTimedOut

    project = make_project(tmp_path, {"flow": {"stage_timeout_minutes": 0.02}})  # 1.2 s: DVC alone takes longer
    monkeypatch.chdir(project)
    with pytest.raises(StageTimedOut, match="stopped after 1 s"):
        retrain(profile="quick", project_dir=str(project), stages=["source"])
    client, runs = _runs(project)
    parent = next(r for r in runs if r.data.tags.get("kind") == "retrain")
    assert parent.info.status == "FAILED" and parent.data.tags["failed_stage"] == "source"
    with get_client(sync_client=True) as api:
        flow_run_id = parent.data.tags["prefect_flow_run_id"]
        [task_run] = [t for t in api.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
                      if t.name.startswith("source@")]
    assert task_run.run_count == 1  # `source` has two retries, none used on a timeout
    assert processes_in(project) == []  # DVC and its stage are gone, not left behind


def test_cli_retrain_takes_any_http_answer_as_a_prefect_server_answering(monkeypatch):
    # Prefect Cloud or a gateway in front of a server may answer /health with 401 or 404; that
    # server is up, as infra/prefect_api.sh and tracking.require_server judge. Only no answer stops.
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from flows.cli import _require_prefect_server

    class Unauthorized(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(401)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Unauthorized)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("PREFECT_API_URL", f"http://127.0.0.1:{server.server_address[1]}/api")
        _require_prefect_server()  # no typer.Exit
    finally:
        server.shutdown()
        server.server_close()
