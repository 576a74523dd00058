"""The GPU path without a GPU: the trainer section reaches Lightning unchanged, and a preference
model logged in pt2 format stays loadable on a host where CUDA is visible (docs/gpu.md)."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from components.config import load_config
from components.models.preference.train import trainer_kwargs
from tests.conftest import PARAMS

GPU_TRAINER = {"accelerator": "gpu", "devices": 1, "strategy": "ddp", "precision": "bf16-mixed", "num_nodes": 1}


def test_trainer_override_goes_straight_to_lightning():
    cfg = load_config(PARAMS, "quick", {"trainer": GPU_TRAINER})
    assert trainer_kwargs(cfg) == GPU_TRAINER
    with pytest.raises(ValidationError, match="gpus"):
        load_config(PARAMS, "quick", {"trainer": {"gpus": 1}})  # a typo fails loudly, not silently on CPU


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.mark.slow
def test_pt2_model_logged_on_a_cuda_host_validates_and_loads_on_cpu(tmp_path, monkeypatch):
    import mlflow
    from mlflow.exceptions import MlflowException

    from components.training.preference import PREDICTION_DEVICE_ENV, log_pt2_model

    monkeypatch.delenv(PREDICTION_DEVICE_ENV, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # what MLflow's pyfunc loader asks
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_experiment("gpu-host")
    model = torch.nn.Sequential(torch.nn.Linear(3, 1), torch.nn.Sigmoid()).eval()
    example = np.ones((2, 3), dtype=np.float32)
    records = _Records()
    logging.getLogger("mlflow").addHandler(records)
    try:
        with mlflow.start_run():
            unguarded = mlflow.pytorch.log_model(model, name="plain", input_example=example, serialization_format="pt2")
            assert any("Failed to validate serving input example" in m for m in records.messages)  # the bug, reproduced
            records.messages.clear()
            info = log_pt2_model(model, name="model", input_example=example)
    finally:
        logging.getLogger("mlflow").removeHandler(records)
    assert not any("Failed to validate serving input example" in m for m in records.messages), records.messages
    assert PREDICTION_DEVICE_ENV not in os.environ  # restored after logging

    # On a CUDA host MLflow's default device is cuda, which a CPU-exported pt2 model cannot use.
    with pytest.raises(MlflowException, match="can't be loaded on 'cuda'"):
        mlflow.pyfunc.load_model(unguarded.model_uri)
    loaded = mlflow.pyfunc.load_model(info.model_uri, model_config={"device": "cpu"})
    expected = model(torch.from_numpy(example)).detach().numpy()
    np.testing.assert_allclose(loaded.predict(example), expected, atol=1e-6)
