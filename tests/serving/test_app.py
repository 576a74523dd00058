"""The copy server without a model: `copyflow serve` refuses to start with one line, and a
running server answers 503 with the reason instead of serving something unpromoted."""

from __future__ import annotations

from fastapi.testclient import TestClient
from typer.testing import CliRunner

from components.serving.app import create_app, is_loopback
from flows.cli import app
from tests.conftest import params_file


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
