"""`copyflow retrain` as `make run` runs it, on a tiny project: every stage through DVC and
Prefect, both models trained in subprocesses, a gated release registered and promoted, then
the CLI reads it back (status, generate, explain). Real Prefect, DVC, GE and MLflow."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from components.config import load_config
from components.pipeline import ALWAYS_RUN_STAGES
from components.tracking import tracking_uri
from flows.cli import app
from flows.retrain import retrain
from tests.flows.conftest import TINY_TRAINING, make_project, prefect_artifact


def test_retrain_registers_and_promotes_a_release_then_serves_it(tmp_path, prefect_harness, monkeypatch):
    project = make_project(tmp_path, TINY_TRAINING)
    monkeypatch.chdir(project)
    runner = CliRunner()

    # Exactly what `make run` does, in its own process (and its own ephemeral Prefect server).
    first = subprocess.run([sys.executable, "-m", "flows.cli", "retrain", "--profile", "quick"],
                           cwd=project, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "data gate (Great Expectations): PASSED" in first.stdout
    assert "release 1: promoted to champion" in first.stdout
    assert "copyflow-generator" in first.stdout  # the registry status printed at the end

    cfg = load_config(project / "params.yaml", "quick")
    uri = tracking_uri(cfg)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    for name in ("copyflow-preference", "copyflow-generator", "copyflow-release"):
        assert str(client.get_model_version_by_alias(name, "champion").version) == "1"
    version = client.get_model_version("copyflow-preference", "1")
    for tag in ("git_commit", "dvc.lock.sha256", "ge.verdict", "prefect_flow_run_id", "gate.verdict"):
        assert version.tags.get(tag), tag

    # Nothing changed: DVC skips every stage, and the same models are not registered again.
    second = retrain(profile="quick", project_dir=str(project))
    assert all(v["skipped"] for s, v in second.stages.items() if s not in ALWAYS_RUN_STAGES), second.stages
    assert second.release["release"] == "1"
    assert len(client.search_model_versions("name = 'copyflow-release'")) == 1
    # Both retrain runs compare on their own: the trainings' headline figures and the verdict,
    # the unchanged one's reused from the release it matched (it had no gate.verdict at all).
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    retrains = client.search_runs([experiment.experiment_id], "tags.kind = 'retrain'")
    assert len(retrains) == 2
    for run in retrains:
        assert {"preference.auc", "generator.bleu4", "generator.rougeL"} <= set(run.data.metrics), run.data.metrics
        assert (run.data.tags["gate.verdict"], run.data.tags["release.gate"]) == ("pass", "pass")
    assert client.get_run(second.mlflow_run_id).data.tags["gate.reused"] == "true"
    gate_report = prefect_artifact("release-gate-quick")
    assert "Gate `preference`" in gate_report  # on the flow run's page
    assert "| copy_choice_lift |" in gate_report  # the snapshot froze the copies each impression could show
    assert "release 1" in prefect_artifact("retrain-quick")

    users = pd.read_parquet(cfg.stage_dir("clean") / "users.parquet")["user_id"]
    products = pd.read_parquet(cfg.stage_dir("clean") / "products.parquet")["product_id"]
    shown = runner.invoke(app, ["status"])  # the copy-choice lift beside the AUC, for comparing releases
    assert shown.exit_code == 0 and "copy_choice_lift" in shown.output, shown.output
    generated = runner.invoke(app, ["generate", "--user", users.iloc[0], "--product", products.iloc[0], "--n", "2"])
    assert generated.exit_code == 0, generated.output
    assert "generator: release 1 (champion)" in generated.output
    assert re.search(r"\n1\. \[P\(click\) 0\.\d{4}\] ", generated.output), generated.output
    assert "P(click): preference model release 1 (champion)" in generated.output

    catalog = project / "catalog.jsonl"
    catalog.write_text('{"content": "类型#裙*颜色#白色"}\n{"content": "类型#裤*版型#宽松"}\n', encoding="utf-8")
    copies = {}
    for backend in ("torch", "onnx"):  # the champion bundle carries both
        out = project / f"copies_{backend}.jsonl"
        batch = runner.invoke(app, ["generate-batch", "--input", str(catalog), "--output", str(out), "--decoding", "greedy", "--backend", backend])
        assert batch.exit_code == 0, batch.output
        assert "wrote 2 copies" in batch.output and "generator: release 1 (champion)" in batch.output
        assert "2/2 copies" in batch.output  # progress, on stderr
        copies[backend] = out.read_text(encoding="utf-8")
    assert copies["torch"] == copies["onnx"]  # greedy parity, through the CLI
    # --model as an MLflow URI is looked up in this project's store, like the champion (in a
    # process of its own: this one's MLflow already points at the store)
    by_uri = subprocess.run([sys.executable, "-m", "flows.cli", "generate-batch", "--input", str(catalog), "--output", str(out),
                             "--decoding", "greedy", "--model", "models:/copyflow-generator@champion", "--overwrite"],
                            cwd=project, capture_output=True, text=True, timeout=300)
    assert by_uri.returncode == 0, by_uri.stdout[-2000:] + by_uri.stderr[-2000:]
    assert out.read_text(encoding="utf-8") == copies["torch"]
    assert runner.invoke(app, ["generate-batch", "--input", str(catalog), "--output", str(out), "--backend", "tpu"]).exit_code == 2
    kept = runner.invoke(app, ["generate-batch", "--input", str(catalog), "--output", str(out), "--decoding", "greedy"])
    assert kept.exit_code == 2 and "exists: --overwrite replaces it" in kept.output  # no copies lost unasked
    controlled = runner.invoke(app, ["generate-batch", "--input", str(catalog), "--output", str(out), "--decoding", "greedy", "--length", "short", "--tone", "lively", "--overwrite"])
    assert controlled.exit_code == 0, controlled.output
    assert runner.invoke(app, ["generate-batch", "--input", str(catalog), "--output", str(out), "--tone", "funny"]).exit_code == 2
    refused = runner.invoke(app, ["generate", "--user", users.iloc[0], "--product", products.iloc[0], "--length", "tiny"])
    assert refused.exit_code == 2 and "unknown length 'tiny'" in refused.output
    shorter = runner.invoke(app, ["generate", "--user", users.iloc[0], "--product", products.iloc[0], "--n", "1", "--length", "short"])
    assert shorter.exit_code == 0, shorter.output
    assert runner.invoke(app, ["generate", "--user", users.iloc[0], "--product", products.iloc[0], "--n", "0"]).exit_code == 2
    one = runner.invoke(app, ["generate", "--user", users.iloc[0], "--product", products.iloc[0], "--n", "3", "--decoding", "greedy"])
    assert one.exit_code == 0 and "note: 1 distinct copy of the 3 asked" in one.output

    explained = runner.invoke(app, ["explain", "--user", users.iloc[0], "--product", products.iloc[0]])
    assert explained.exit_code == 0, explained.output
    assert "preference model: release 1 (champion)" in explained.output
    assert re.search(r"P\(click\) 0\.\d{4}, scored by the (logreg|deep|cold-start fallback)", explained.output), explained.output
    ghost = runner.invoke(app, ["explain", "--user", users.iloc[0], "--product", "NOPE"])
    assert ghost.exit_code == 2 and "product 'NOPE' is not in" in ghost.output
    assert runner.invoke(app, ["explain", "--user", users.iloc[0], "--product", products.iloc[0], "--top", "-3"]).exit_code == 2

    unknown = runner.invoke(app, ["generate", "--user", "nobody", "--product", products.iloc[0]])
    assert unknown.exit_code == 2
    assert "nobody" in unknown.output
    # a server with another pseudonym key would know no shopper: it refuses to start
    other_key = runner.invoke(app, ["serve"], env={cfg.privacy.key_env: "7" * 64})
    assert other_key.exit_code == 2 and "no shopper would be recognized" in other_key.output, other_key.output

    serve_the_champion_over_http(project, cfg, users, products)


def serve_the_champion_over_http(project, cfg, users, products) -> None:
    """The copy server on the same project: the champion's copy for a shopper, the feedback log
    in the raw layer's formats, clear refusals; then `copyflow serve` as a real process."""
    import os
    import signal
    import time

    import httpx
    from fastapi.testclient import TestClient

    from components.data.privacy import load_key, pseudonym
    from components.data.raw import read_raw_table
    from components.serving.app import Champion, create_app
    from components.serving.choice import choice_probabilities
    from tests.conftest import free_port

    key = load_key(cfg)
    raw_ids = pd.read_csv(cfg.stage_dir("source") / "users.csv", dtype=str)["user_id"]
    raw_user = next(u for u in raw_ids if pseudonym(u, key) in set(users))  # a shopper that survived cleaning
    product = products.iloc[0]
    always_reload = cfg.model_copy(update={"serving": cfg.serving.model_copy(update={"reload_seconds": 0})})
    client = TestClient(create_app(always_reload))
    health = client.get("/health").json()
    assert health["generator"] == "release 1 (champion)" and health["feedback"]["served"] == 0
    assert health["shoppers"] == {"users": len(users), "products": len(products), "reload_error": None}

    served = client.post("/copy", json={"user": raw_user, "product": product, "length": "short"})
    assert served.status_code == 200, served.text
    body = served.json()
    assert body["copy"] and body["generator"] == "release 1 (champion)" and body["model_version"].startswith("models:/")
    assert 1 <= body["candidates"] <= cfg.serving.candidates
    # The release's preference model chose among the candidates, epsilon-greedy (serving.choice).
    n, eps = body["candidates"], cfg.serving.exploration
    if n > 1:  # the propensity itself is checked against the logged scores below
        assert body["choice"] == "preference", client.get("/health").json()["choice"]
    else:
        assert (body["choice"], body["propensity"]) == ("uniform", 1.0)
    chooser = client.get("/health").json()["choice"]
    assert chooser["preference_model"].startswith("models:/") and (chooser["strategy"], chooser["error"]) == ("preference", None)
    click = client.post("/feedback", json={"serve_id": body["serve_id"], "event_type": "click"})
    assert click.status_code == 200, click.text

    folder = cfg.feedback_dir()
    events = read_raw_table(folder, "events")
    assert list(events["event_type"]) == ["impression", "click"] and set(events["user_id"]) == {raw_user}
    assert set(events["copy_id"]) == {body["copy_id"]} and set(events["product_id"]) == {product}
    copies = read_raw_table(folder, "copies")
    assert list(copies["text"]) == [body["copy"]] and list(copies["model_version"]) == [body["model_version"]]
    decision = json.loads((folder / "served.jsonl").read_text(encoding="utf-8"))
    assert (decision["strategy"], decision["propensity"]) == (body["choice"], body["propensity"])
    # What scoring another strategy on this log needs: every candidate, its score, the scorer.
    assert len(decision["candidate_texts"]) == n and body["copy"] in decision["candidate_texts"]
    if n > 1:
        assert len(decision["scores"]) == n and decision["scorer_version"] == chooser["preference_model"]
        # epsilon-greedy on those scores: eps/n each, 1 - eps shared by the equal best ones
        served_at = decision["candidate_texts"].index(body["copy"])
        assert body["propensity"] == pytest.approx(choice_probabilities(np.array(decision["scores"]), eps)[served_at])
    assert float(events["propensity"].iloc[0]) == pytest.approx(body["propensity"])

    # What the choice earns on generated candidates, priced by the simulator's truth.
    from components.evaluation.served_choice import measure

    priced = measure(cfg, requests=6)
    assert priced["requests"] == 6 and priced["scored_share"] > 0
    assert 0 < priced["ctr_uniform"] <= priced["ctr_best"] and priced["ctr_pick"] <= priced["ctr_best"]
    json.dumps(priced, allow_nan=False)  # the CLI prints it: standard JSON, no NaN

    # A preference model that cannot score leaves the request to a uniform draw, and says why.
    def unreadable(ref):
        raise RuntimeError(f"{ref}: weights.pt is truncated")  # what torch.load raises

    class ScoresNaN:  # a model that loads but scores nonsense
        def predict_copies(self, frame, texts, attributes):
            return np.full(len(texts), np.nan)

    for load, why in ((unreadable, "weights.pt is truncated"), (lambda ref: ScoresNaN(), "scored the candidates [nan")):
        broken = TestClient(create_app(always_reload, scorer=Champion(always_reload, "preference", load=load)))
        uniform = broken.post("/copy", json={"user": raw_user, "product": product, "impression": False})
        assert uniform.status_code == 200, uniform.text
        assert uniform.json()["choice"] == "uniform" and uniform.json()["propensity"] == pytest.approx(1 / uniform.json()["candidates"])
        if uniform.json()["candidates"] > 1:  # a single candidate is never scored
            assert why in broken.get("/health").json()["choice"]["error"]

    # One release serves, all its models together: a preference model of another release than
    # the generator's (the new champion's generator failed to load) does not choose.
    from dataclasses import replace

    class OtherRelease:
        not_loaded = None

        def __init__(self, inner: Champion) -> None:
            self.inner = inner

        def current(self, looked_up_since=None):
            return replace(self.inner.current(looked_up_since), origin="release 2 (champion)", release="2")

        @property
        def checked_at(self):
            return self.inner.checked_at

        @property
        def changed_at(self):
            return self.inner.changed_at

        @property
        def loaded(self):
            return self.current()

    mixed = TestClient(create_app(always_reload, scorer=OtherRelease(Champion(always_reload, "preference"))))
    uniform = mixed.post("/copy", json={"user": raw_user, "product": product, "impression": False})
    assert uniform.status_code == 200 and uniform.json()["choice"] == "uniform", uniform.text
    health = mixed.get("/health").json()
    assert "until both serve one release" in health["choice"]["error"] and health["generator"] == "release 1 (champion)"

    refusals = {
        "pseudonym": (client.post("/copy", json={"user": pseudonym(raw_user, key), "product": product}), 422, "not its pseudonym"),
        "unknown product": (client.post("/copy", json={"user": raw_user, "product": "NOPE"}), 404, "product 'NOPE' is not in"),
        "unknown user": (client.post("/copy", json={"user": "nobody", "product": product}), 404, "nobody"),
        "bad tone": (client.post("/copy", json={"user": raw_user, "product": product, "tone": "funny"}), 422, "tone"),
        "unknown serve": (client.post("/feedback", json={"serve_id": "nope", "event_type": "click"}), 404, "was not served"),
        "bad event": (client.post("/feedback", json={"serve_id": body["serve_id"], "event_type": "like"}), 422, "event_type"),
        "naive time": (client.post("/feedback", json={"serve_id": body["serve_id"], "event_type": "click",
                                                      "timestamp": "2099-01-01T00:00:00"}), 422, "no UTC offset"),
        "future time": (client.post("/feedback", json={"serve_id": body["serve_id"], "event_type": "click",
                                                       "timestamp": "2099-01-01T00:00:00Z"}), 422, "in the future"),
        "infinite value": (client.post("/feedback", content='{"serve_id": "%s", "event_type": "purchase", "value": Infinity}' % body["serve_id"],
                                       headers={"content-type": "application/json"}), 422, "value"),
        "id with a line break": (client.post("/copy", json={"user": "a\nb", "product": product}), 422, "on one line"),
        "CJK id with a wide space": (client.post("/copy", json={"user": "山田\u3000太郎", "product": product}), 404, "is not a shopper"),
    }
    for name, (response, status, text) in refusals.items():
        assert response.status_code == status and text in response.text, (name, response.status_code, response.text)
        assert str(project) not in response.text, (name, response.text)  # no server paths in answers
    assert len(read_raw_table(folder, "events")) == 2  # refusals write nothing

    # A retrain empties the features folder while it rebuilds it: the last snapshot keeps serving.
    features = cfg.stage_dir("features")
    features.rename(features.with_name("features.rebuilding"))
    try:
        during = client.post("/copy", json={"user": raw_user, "product": product, "impression": False})
        assert during.status_code == 200, during.text
        assert "FileNotFoundError" in client.get("/health").json()["shoppers"]["reload_error"]
    finally:
        features.with_name("features.rebuilding").rename(features)
    assert client.get("/health").json()["shoppers"]["reload_error"] is None

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "flows.cli", "serve", "--port", str(port)], cwd=project,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)
                break
            except httpx.TransportError:
                assert server.poll() is None and time.monotonic() < deadline, server.stdout.read() if server.poll() is not None else "no answer"
                time.sleep(0.5)
        assert health.json()["feedback"]["served"] == 5 and health.json()["feedback"]["events"] == 2
        again = httpx.post(f"http://127.0.0.1:{port}/copy", json={"user": raw_user, "product": product}, timeout=120)
        assert again.status_code == 200 and again.json()["copy"], again.text
    finally:
        os.killpg(server.pid, signal.SIGINT)
        output = server.communicate(timeout=60)[0]
    assert f"copy server on http://127.0.0.1:{port}" in output and "generator: release 1 (champion)" in output, output
    assert len(read_raw_table(folder, "events")) == 3  # the second server appended to the same log
