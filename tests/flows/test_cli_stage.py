"""`copyflow stage` as a person runs it out of order: a training stage whose input is missing or
malformed says what to fix in one line (the trainer runs in its own process), not a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import params_file

ROOT = Path(__file__).resolve().parents[2]


def _stage(name: str, params: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flows.cli", "stage", name, "--params", str(params)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_train_preference_before_the_features_stage_is_one_line(make_cfg, tmp_path):
    result = _stage("train_preference", params_file(make_cfg(), tmp_path))

    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert "error: features stage output missing" in result.stderr and "(run the features stage first)" in result.stderr


@pytest.mark.parametrize("corpus", ["missing", "malformed"])
def test_train_generator_on_a_missing_or_malformed_corpus_is_one_line(make_cfg, tmp_path, corpus):
    path = tmp_path / "corpus.jsonl"
    if corpus == "malformed":
        path.write_text('{"content": "类型#裙", "summary": "一条裙子"}\n{"content": broken\n', encoding="utf-8")
    result = _stage("train_generator", params_file(make_cfg(paths={"corpus": str(path)}), tmp_path))

    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    expected = f"error: corpus not found: {path}" if corpus == "missing" else f"error: {path}:2: not valid JSON"
    assert expected in result.stderr
