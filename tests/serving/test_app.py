"""The copy server without a model: `copyflow serve` refuses to start with one line, and a
running server answers 503 with the reason instead of serving something unpromoted."""

from __future__ import annotations

import yaml
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from components.serving.app import create_app
from flows.cli import app
from tests.conftest import PARAMS


def test_no_model_is_a_one_line_refusal_to_start_and_a_503_with_the_reason(make_cfg, tmp_path, monkeypatch):
    monkeypatch.delenv("COPYFLOW_TRACKING_URI", raising=False)
    cfg = make_cfg()
    params = tmp_path / "params.yaml"
    raw = yaml.safe_load(PARAMS.read_text(encoding="utf-8"))
    raw["paths"].update({k: str(v) for k, v in cfg.paths.model_dump().items()})
    raw["tracking"]["uri"] = cfg.tracking.uri
    params.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")

    refused = CliRunner().invoke(app, ["serve", "--params", str(params), "--port", "1"])
    assert refused.exit_code == 2, refused.output
    assert "error:" in refused.output and "no local generator model" in refused.output

    client = TestClient(create_app(cfg))
    for response in (client.get("/health"), client.post("/copy", json={"user": "u", "product": "p"})):
        assert response.status_code == 503 and "no generator to serve" in response.text
    assert client.post("/copy", json={"user": "", "product": "p"}).status_code == 422  # malformed before anything loads
    assert not cfg.feedback_dir().exists()  # nothing served, nothing logged
