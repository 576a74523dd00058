"""The copy server without a model: `copyflow serve` refuses to start with one line, and a
running server answers 503 with the reason instead of serving something unpromoted."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from components.models.generator.constraints import TokenBlocker, load_ad_law_words
from components.serving.app import create_app, is_loopback
from flows.cli import app
from tests.conftest import params_file
from tests.models.generator_fixtures import ROOT, WrappedBackend, tiny_parts


def test_no_model_is_a_one_line_refusal_to_start_and_a_503_with_the_reason(make_cfg, tmp_path, monkeypatch):
    monkeypatch.delenv("COPYFLOW_TRACKING_URI", raising=False)
    cfg = make_cfg()
    params = params_file(cfg, tmp_path)

    refused = CliRunner().invoke(app, ["serve", "--params", str(params), "--port", "1"])
    assert refused.exit_code == 2, refused.output
    assert "error:" in refused.output and "no local generator model" in refused.output

    client = TestClient(create_app(cfg))
    for response in (client.get("/health"), client.post("/copy", json={"user": "u", "product": "p"})):
        assert response.status_code == 503 and "no generator to serve" in response.text
    assert client.post("/copy", json={"user": "", "product": "p"}).status_code == 422  # malformed before anything loads
    hidden = client.post("/copy", json={"user": "u\u200b1", "product": "p"})  # a zero-width space: another shopper
    assert hidden.status_code == 422 and "U+200B" in hidden.text
    feedback = {"serve_id": "x", "event_type": "click", "event_id": "e\u20601"}  # a word joiner
    assert client.post("/feedback", json=feedback).status_code == 422
    assert not cfg.feedback_dir().exists()  # nothing served, nothing logged


def test_with_a_token_only_its_bearer_may_write_the_log(make_cfg, monkeypatch):
    """/copy and /feedback write what the next release trains on: with serving.token_env set,
    a request without the token (or with another) is a 401 before anything else is read."""
    cfg = make_cfg()
    monkeypatch.setenv(cfg.serving.token_env, "s3cret")
    client = TestClient(create_app(cfg))
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic s3cret"}):
        assert client.post("/copy", json={"user": "u", "product": "p"}, headers=headers).status_code == 401
        assert client.post("/feedback", json={"serve_id": "x", "event_type": "click"}, headers=headers).status_code == 401
    assert client.post("/copy", json={"user": ""}).status_code == 401  # malformed too: no hint without the token
    ok = {"Authorization": "Bearer s3cret"}
    response = client.post("/copy", json={"user": "u", "product": "p"}, headers=ok)
    assert response.status_code == 503 and "no generator to serve" in response.text  # past the door; no model yet
    assert client.get("/health").status_code == 503  # health needs no token (it says only that there is no model)
    assert str(cfg.feedback_dir()) not in client.get("/openapi.json").text  # the open API description names no path
    monkeypatch.setenv(cfg.serving.token_env, "s3cret\n")  # as `echo > file` leaves it: no header can carry it
    assert TestClient(create_app(cfg)).post("/copy", json={"user": "u", "product": "p"}, headers=ok).status_code == 503
    monkeypatch.setenv(cfg.serving.token_env, "  ")  # blank: no token
    assert TestClient(create_app(cfg)).post("/copy", json={"user": "u", "product": "p"}).status_code == 503
    monkeypatch.delenv(cfg.serving.token_env)
    assert TestClient(create_app(cfg)).post("/copy", json={"user": "u", "product": "p"}).status_code == 503


def test_serve_refuses_a_network_address_without_a_token(make_cfg, tmp_path, monkeypatch):
    monkeypatch.delenv("COPYFLOW_TRACKING_URI", raising=False)
    cfg = make_cfg()
    monkeypatch.delenv(cfg.serving.token_env, raising=False)
    params = params_file(cfg, tmp_path)
    refused = CliRunner().invoke(app, ["serve", "--params", str(params), "--host", "0.0.0.0", "--port", "1"])
    assert refused.exit_code == 2 and "without a token" in refused.output and cfg.serving.token_env in refused.output
    # With the token, or with the explicit opt-out, it goes on (and stops at the missing model).
    monkeypatch.setenv(cfg.serving.token_env, "s3cret")
    with_token = CliRunner().invoke(app, ["serve", "--params", str(params), "--host", "0.0.0.0", "--port", "1"])
    assert with_token.exit_code == 2 and "no local generator model" in with_token.output
    monkeypatch.delenv(cfg.serving.token_env)
    opted_out = CliRunner().invoke(app, ["serve", "--params", str(params), "--host", "0.0.0.0", "--port", "1", "--allow-unauthenticated"])
    assert opted_out.exit_code == 2 and "no local generator model" in opted_out.output
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("shop.example")


# -- hard rules at serving time: a copy that breaks one is never served ------------------------
WHITE_DRESS = {"类型": ["裙"], "颜色": ["白色"], "裙长": ["连衣裙"]}
MAINTAINED_AD_LAW_WORDS = ROOT / "components/resources/ad_law_words.txt"


class Forcing(WrappedBackend):
    """The real backend with a huge bonus on 最 (then 好 after it) in the rows `rows` picks, as
    tests/models/test_generator_constraints.py forces a decoder toward a banned word."""

    def __init__(self, backend, tokenizer, rows=lambda n: np.ones(n, dtype=bool)):
        super().__init__(backend)
        self.first, self.second, self.rows = tokenizer.token_id("最"), tokenizer.token_id("好"), rows

    def step(self, tokens, state):
        logprobs, state = self.backend.step(tokens, state)
        logprobs = torch.as_tensor(logprobs).clone()
        pushed = torch.from_numpy(self.rows(len(tokens)))
        after_first = torch.from_numpy(tokens == self.first)
        logprobs[pushed & after_first, self.second] += 100.0
        logprobs[pushed & ~after_first, self.first] += 100.0
        return logprobs, state


class BlindTo(TokenBlocker):
    """A decoder's blocker with a gap: it lets `word` through (as it would a spelling it does
    not match), so only the server's own check stands between the copy and the shopper."""

    def __init__(self, word: str, tokenizer):
        super().__init__(tokenizer.piece_texts, always_banned_ids=tokenizer.non_text_ids)
        self.word = word

    def plan(self, words, *args, **kwargs):
        return super().plan([w for w in words if w != self.word], *args, **kwargs)


def serve_a_tiny_bundle(make_cfg, tmp_path, ad_law_words: Path):
    """A real copy server (uniform choice, torch) over a tiny untrained bundle saved with
    `ad_law_words`, served as the local training output, and one shopper of one white dress in
    the clean and features stages. Returns the client, the loaded generator, the shopper's raw id."""
    from components.data.privacy import load_key, pseudonym
    from components.data.schema import write_table
    from components.models.generator import api
    from components.models.generator.decoding import DecodingSettings
    from components.serving.app import Champion

    cfg = make_cfg(serving={"backend": "torch", "choice": "uniform", "decoding": "top_p", "candidates": 4})
    tokenizer, vocabulary, _, baseline, net, _ = tiny_parts(seed=3)
    bundle = api.save_model_dir(tmp_path / "bundle", net, tokenizer, vocabulary, ad_law_words, baseline,
                                DecodingSettings(method="top_p", num_candidates=4, max_len=16, no_repeat_ngram=0))
    output = cfg.stage_dir("models") / "generator"
    output.mkdir(parents=True)
    (output / "manifest.json").write_text(json.dumps({"model_dir": str(bundle), "run_id": "tiny"}), encoding="utf-8")
    raw_user, key = "shopper-1", load_key(cfg, create=True)
    clean, features = cfg.stage_dir("clean"), cfg.stage_dir("features")
    write_table(pd.DataFrame({"product_id": ["p1"], "category": ["裙"], "attributes": [WHITE_DRESS], "price": [99.0], "source": ["test"]}), clean, "products")
    write_table(pd.DataFrame({"user_id": [pseudonym(raw_user, key)], "age_band": ["25-34"], "city_tier": ["1"],
                              "signup_date": [pd.Timestamp("2026-01-01", tz="UTC")]}), clean, "users")
    features.mkdir(parents=True)
    pd.DataFrame({"user_id": [pseudonym(raw_user, key)], "attr_key": ["颜色"], "attr_value": ["白色"], "affinity": [0.9]}).to_parquet(features / "user_affinity.parquet")
    pd.DataFrame({"attr_key": ["颜色"], "attr_value": ["白色"], "affinity": [0.5]}).to_parquet(features / "population_affinity.parquet")
    champion = Champion(cfg, "generator")
    client = TestClient(create_app(cfg, champion=champion))
    return cfg, client, champion.current().model, raw_user


def served_decisions(cfg) -> list[dict]:
    path = cfg.feedback_dir() / "served.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []


def test_a_candidate_that_breaks_a_rule_is_never_served(make_cfg, tmp_path, caplog):
    """The decoder is pushed toward 最 in half of its rows, and blind to it: half the candidates
    say 最. The server serves only the others; with every row pushed, it serves nothing (503),
    names the product and the rules broken, logs it and counts it in /health."""
    cfg, client, generator, user = serve_a_tiny_bundle(make_cfg, tmp_path, MAINTAINED_AD_LAW_WORDS)
    generator.blocker = BlindTo("最", generator.tokenizer)
    generator.backend = Forcing(generator.backend, generator.tokenizer, rows=lambda n: np.arange(n) % 2 == 0)
    written = generator.generate(WHITE_DRESS, focus=["白色"], decoding="top_p", n=4)
    assert any("最" in text for text in written) and any("最" not in text for text in written), written  # the push works

    served = [client.post("/copy", json={"user": user, "product": "p1"}) for _ in range(12)]
    assert all(r.status_code == 200 for r in served), served[0].text
    assert all("最" not in r.json()["copy"] for r in served)
    decisions = served_decisions(cfg)  # the candidates the choice was made among (and logged) hold none
    assert len(decisions) == 12 and not any("最" in text for d in decisions for text in d["candidate_texts"])
    assert served[0].json()["candidates"] == len(decisions[0]["candidate_texts"]) >= 1
    withheld = client.get("/health").json()["withheld"]
    assert withheld["candidates"] >= 12 and withheld["requests_without_copy"] == 0 and "最" in withheld["last"]

    generator.backend.rows = lambda n: np.ones(n, dtype=bool)  # every candidate says 最
    with caplog.at_level("WARNING", logger="copyflow.serving"):
        refused = client.post("/copy", json={"user": user, "product": "p1"})
    # A 503 like the other "nothing may be served" answers (it was a bare 500: a server fault)
    assert refused.status_code == 503, refused.text
    detail = refused.json()["detail"]
    assert "no copy of product p1 may be served" in detail and "broke a hard rule" in detail and "最" in detail, detail
    assert user not in detail and str(tmp_path) not in detail
    assert "no copy served" in caplog.text and "p1" in caplog.text and user not in caplog.text  # the shopper is not logged
    assert client.get("/health").json()["withheld"]["requests_without_copy"] == 1
    assert len(served_decisions(cfg)) == 12  # nothing logged as served


def test_a_word_added_to_the_maintained_list_after_the_bundle_was_built_is_not_served(make_cfg, tmp_path):
    """A champion built when the list did not yet have 最 and 最好: the server bans the
    maintained list's words with the bundle's, at decoding (ONNX and torch share the plan)."""
    older = tmp_path / "older_ad_law_words.txt"
    older.write_text("\n".join(w for w in load_ad_law_words(MAINTAINED_AD_LAW_WORDS) if "最" not in w) + "\n", encoding="utf-8")
    cfg, client, generator, user = serve_a_tiny_bundle(make_cfg, tmp_path, older)
    generator.backend = Forcing(generator.backend, generator.tokenizer)  # every row pushed toward 最
    for _ in range(3):
        response = client.post("/copy", json={"user": user, "product": "p1"})
        assert response.status_code == 200, response.text
        assert "最" not in response.json()["copy"], response.json()["copy"]
    assert "最" in generator.ad_law_words and "最" not in load_ad_law_words(older)
    assert client.get("/health").json()["withheld"]["candidates"] == 0  # decoding avoided it: nothing to withhold


class CountingStarts(WrappedBackend):
    """The real backend, counting the decodings it starts (one per request's batch)."""

    def __init__(self, backend):
        super().__init__(backend)
        self.starts = 0

    def start(self, src):
        self.starts += 1
        return self.backend.start(src)


def test_a_refused_copy_request_is_refused_before_the_generator_runs(make_cfg, tmp_path, monkeypatch):
    """Every refusal that does not depend on the copies is decided before decoding (about 0.4 s
    a request). A feedback log with a line the server did not write used to be found only when
    the serve line was written, after the copies were: 503 all the same, the decoding wasted."""
    from components.data.privacy import load_key, pseudonym

    cfg, client, generator, user = serve_a_tiny_bundle(make_cfg, tmp_path, MAINTAINED_AD_LAW_WORDS)
    generator.backend = CountingStarts(generator.backend)
    assert client.post("/copy", json={"user": user, "product": "p1"}).status_code == 200
    assert generator.backend.starts == 1  # the hook sees a request's decoding

    refusals = {
        404: [{"user": user, "product": "p-unknown"}, {"user": "nobody", "product": "p1"}],
        422: [{"user": pseudonym(user, load_key(cfg)), "product": "p1"}, {"user": user, "product": "p1", "tone": "shouty"},
              {"user": user, "product": "p1\n"}],
    }
    for status, bodies in refusals.items():
        for body in bodies:
            assert client.post("/copy", json=body).status_code == status, body
    monkeypatch.setenv(cfg.serving.token_env, "s3cret")
    guarded = TestClient(create_app(cfg, champion=client.app.state.champion))  # the same generator, behind a token
    assert guarded.post("/copy", json={"user": user, "product": "p1"}).status_code == 401
    monkeypatch.delenv(cfg.serving.token_env)

    served = cfg.feedback_dir() / "served.jsonl"
    with open(served, "a", encoding="utf-8") as handle:
        handle.write('{"serve_id": "cut", "user_\n')  # a torn line with a line break after it
    logged = served.read_bytes()
    for _ in range(2):
        broken = client.post("/copy", json={"user": user, "product": "p1"})
        assert broken.status_code == 503 and "served.jsonl, line 2" in broken.text, broken.text
    assert generator.backend.starts == 1, "a refused request ran the generator"
    assert served.read_bytes() == logged  # and wrote nothing


# -- the feedback log under the server: a line it did not write -------------------------------
def test_a_torn_line_inside_the_log_is_refused_on_every_request_and_hides_no_later_line(make_cfg):
    """A cut line with a line break after it (appended by hand, or by a writer that does not set
    fragments aside) used to be a 500 once; the lines read with it were then skipped for good: a
    later serve unknown (404) and a retried event_id recorded twice. Now every request is a 503
    naming the file and line, until the line is moved away; then nothing after it is missing."""
    from components.data.feedback import FeedbackLog

    cfg = make_cfg()
    folder = cfg.feedback_dir()
    writer = FeedbackLog(folder)
    before, after = (writer.record_serving("shopper1", p, "文案", "m", candidates=2) for p in ("p1", "p2"))
    writer.record_event(after.serve_id, "click", event_id="e-retried")
    served = (folder / "served.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    (folder / "served.jsonl").write_text(served[0] + '{"serve_id": "cut", "user_\n' + served[1], encoding="utf-8")

    client = TestClient(create_app(cfg))
    for _ in range(2):  # refused every time, not once
        refused = client.post("/feedback", json={"serve_id": after.serve_id, "event_type": "click", "event_id": "e-retried"})
        assert refused.status_code == 503 and "served.jsonl, line 2" in refused.text, refused.text
        assert "shopper1" not in refused.text and str(folder) not in refused.text
    (folder / "served.jsonl").write_text(served[0] + served[1], encoding="utf-8")  # the operator moves the line away
    assert client.post("/feedback", json={"serve_id": after.serve_id, "event_type": "click", "event_id": "e-retried"}).status_code == 200
    assert client.post("/feedback", json={"serve_id": before.serve_id, "event_type": "click"}).status_code == 200

    events = (folder / "events.csv").read_text(encoding="utf-8")
    (folder / "events.csv").write_text(events + 'fb-dead,shopper1,p1,"half\n', encoding="utf-8")  # a quote left open
    for _ in range(2):  # it used to swallow the lines after it, e-retried among them
        refused = client.post("/feedback", json={"serve_id": after.serve_id, "event_type": "click", "event_id": "e-retried"})
        assert refused.status_code == 503 and "events.csv, line 6" in refused.text, refused.text
    assert (folder / "events.csv").read_text(encoding="utf-8").count("e-retried,") == 1


def test_a_hand_edited_events_header_is_refused_on_every_request(make_cfg):
    """The refusal held for one request: the next one appended its row under the wrong header."""
    from components.data.feedback import FeedbackLog

    cfg = make_cfg()
    folder = cfg.feedback_dir()
    served = FeedbackLog(folder).record_serving("shopper1", "p1", "文案", "m", candidates=1)
    lines = (folder / "events.csv").read_text(encoding="utf-8").splitlines(keepends=True)
    lines[0] = "event_id,user_id,product_id,copy_id,event_type,timestamp,value,position,propensity\n"
    (folder / "events.csv").write_text("".join(lines), encoding="utf-8")
    edited = (folder / "events.csv").read_bytes()

    client = TestClient(create_app(cfg))
    for _ in range(3):
        refused = client.post("/feedback", json={"serve_id": served.serve_id, "event_type": "click"})
        assert refused.status_code == 503 and "events.csv: header" in refused.text, refused.text
        assert str(folder) not in refused.text  # no paths in an HTTP answer (/health, too, shows it, without a token)
    assert (folder / "events.csv").read_bytes() == edited


def test_a_partial_last_line_is_set_aside_with_a_warning_and_loses_nothing(make_cfg, caplog):
    """A server killed mid-line: the next one starts on the whole lines, and its first write sets
    the fragment aside, saying so in its log (it used to do it silently)."""
    from components.data.feedback import FeedbackLog

    cfg = make_cfg()
    folder = cfg.feedback_dir()
    served = FeedbackLog(folder).record_serving("shopper1", "p1", "文案", "m", candidates=1)
    with open(folder / "events.csv", "a", encoding="utf-8") as handle:
        handle.write("fb-dead,shopper1,p1,gen-")  # killed mid-line
    client = TestClient(create_app(cfg))  # the restarted server
    with caplog.at_level("WARNING", logger="copyflow.feedback"):
        assert client.post("/feedback", json={"serve_id": served.serve_id, "event_type": "click"}).status_code == 200
    assert "events.csv" in caplog.text and "events.csv.fragments" in caplog.text and "shopper1" not in caplog.text
    assert FeedbackLog(folder).counts() == {"copies": 1, "served": 1, "events": 2}
    assert (folder / "events.csv.fragments").read_text(encoding="utf-8") == "fb-dead,shopper1,p1,gen-\n"


def test_health_counts_the_partial_lines_dead_writers_left_without_naming_the_folder(make_cfg, tmp_path, caplog):
    """A fragment set aside was said only in the server's log and the next retrain's summary:
    /health, which an operator's probe reads, now counts them (at a file's end, or set aside)."""
    cfg, client, _, user = serve_a_tiny_bundle(make_cfg, tmp_path, MAINTAINED_AD_LAW_WORDS)
    folder = cfg.feedback_dir()
    assert client.get("/health").json()["feedback"]["fragments"] == 0
    assert not folder.exists()  # asking creates nothing
    assert client.post("/copy", json={"user": user, "product": "p1"}).status_code == 200
    with open(folder / "events.csv", "a", encoding="utf-8") as handle:
        handle.write(f"fb-dead,{user},p1,gen-")  # a server killed mid-line
    health = client.get("/health")
    assert health.json()["feedback"] == {"copies": 1, "served": 1, "events": 1, "fragments": 1}
    with caplog.at_level("WARNING", logger="copyflow.feedback"):
        assert client.post("/copy", json={"user": user, "product": "p1"}).status_code == 200
    assert "events.csv.fragments" in caplog.text  # the next write set it aside
    with open(folder / "served.jsonl", "a", encoding="utf-8") as handle:
        handle.write('{"serve_id": "dead", "user_')
    health = client.get("/health")
    assert health.json()["feedback"]["fragments"] == 2 and health.json()["feedback"]["served"] == 2
    assert str(folder) not in health.text and user not in health.text  # /health needs no token
    assert all(isinstance(n, int) for n in health.json()["feedback"].values())
