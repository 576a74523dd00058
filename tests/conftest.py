"""Shared fixtures: every test gets its own artifacts/state folders and MLflow sqlite store."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import yaml

from components.config import Config, deep_merge, load_config
from components.tracking import CACHE_DIR_ENV, TELEMETRY_OFF

ROOT = Path(__file__).resolve().parents[1]
PARAMS = ROOT / "params.yaml"

# Small enough for CI's two cores, large enough that models can learn something.
TINY = {
    "data": {"n_products": 300},
    "simulator": {"n_users": 120, "days": 14},
}


@pytest.fixture(autouse=True, scope="session")
def _telemetry_off(tmp_path_factory):
    for key, value in TELEMETRY_OFF.items():
        os.environ.setdefault(key, value)
    # Downloaded model artifacts go to a session folder, not the user's ~/.cache.
    os.environ.setdefault(CACHE_DIR_ENV, str(tmp_path_factory.mktemp("artifact-cache")))


@pytest.fixture
def make_cfg(tmp_path):
    """make_cfg(profile="quick", tiny=True, **section_overrides) -> Config isolated in tmp_path."""

    def _make(profile: str = "quick", tiny: bool = True, **overrides) -> Config:
        isolated = {
            "paths": {
                "artifacts": str(tmp_path / "artifacts"),
                "state": str(tmp_path / "state"),
                "feedback_folder": str(tmp_path / "feedback"),
                "pseudonym_key_file": str(tmp_path / "pseudonym.key"),
                "mlflow_dir": str(tmp_path / "mlflow"),
                "corpus": str(ROOT / "data/advertisegen/train.jsonl"),
                "ad_law_words": str(ROOT / "components/resources/ad_law_words.txt"),
                "latin_words": str(ROOT / "components/resources/latin_words.txt"),
            },
            "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
        }
        merged = deep_merge(TINY, isolated) if tiny else isolated
        return load_config(PARAMS, profile, deep_merge(merged, overrides))

    return _make


@pytest.fixture
def cfg(make_cfg) -> Config:
    return make_cfg()


def free_port() -> int:
    """A loopback TCP port nothing listens on right now (for servers a test starts)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def params_file(cfg, tmp_path: Path) -> Path:
    """A params.yaml in tmp_path that points at `cfg`'s paths and store (for CLI commands)."""
    params = tmp_path / "params.yaml"
    raw = yaml.safe_load(PARAMS.read_text(encoding="utf-8"))
    raw["paths"].update({k: str(v) for k, v in cfg.paths.model_dump().items()})
    raw["tracking"]["uri"] = cfg.tracking.uri
    params.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    return params
