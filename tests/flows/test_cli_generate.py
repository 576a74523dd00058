"""`copyflow generate`, `generate-batch` and `fetch-obd` refuse what they cannot do in one line."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from flows.cli import MAX_COPIES_PER_REQUEST, app
from tests.conftest import params_file


def test_generate_refuses_more_copies_than_one_request_holds(make_cfg, tmp_path):
    # decoded as one batch: 20,000 copies ran out of memory with a 150-line traceback
    result = CliRunner().invoke(app, ["generate", "--user", "u", "--product", "p", "--n", str(MAX_COPIES_PER_REQUEST + 1),
                                      "--params", str(params_file(make_cfg(), tmp_path))])
    assert result.exit_code == 2 and "less than or equal to 50" in result.output


def test_fetch_obd_without_a_package_index_is_one_line(make_cfg, tmp_path, monkeypatch):
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # as on a machine without the network
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    result = CliRunner().invoke(app, ["fetch-obd", "--params", str(params_file(make_cfg(profile="obd"), tmp_path))])
    assert result.exit_code == 1 and "error:" in result.output and "obp==0.4.1" in result.output
    assert "Traceback" not in result.output


def test_generate_batch_with_a_mistyped_model_path_creates_no_tracking_store(make_cfg, tmp_path):
    # A --model path that does not exist was taken for an MLflow URI: the project's store was
    # created empty, and `copyflow status` then reported "no registered models" instead of no store.
    cfg = make_cfg()
    params = params_file(cfg, tmp_path)
    source = tmp_path / "in.jsonl"
    source.write_text('{"content": "类型#裙*颜色#白色"}\n', encoding="utf-8")
    store = Path(cfg.tracking.uri.removeprefix("sqlite:///"))

    for model, says in ((str(tmp_path / "modle"), "generator model not found"), ("models:/copyflow-generator/1", "no MLflow tracking store")):
        result = CliRunner().invoke(app, ["generate-batch", "--input", str(source), "--output", str(tmp_path / "out.jsonl"),
                                          "--model", model, "--params", str(params)])
        assert result.exit_code == 2 and says in result.output, result.output
        assert not store.exists() and not (tmp_path / "out.jsonl").exists()
