"""What a candidate's training run shows of its release gate in the MLflow UI (real sqlite store)."""

from __future__ import annotations

import mlflow
import pandas as pd
from mlflow import MlflowClient

from components.evaluation.gates import GateResult, RuleResult
from components.registry.evidence import log_gate_artifacts


def test_the_gate_logs_both_ends_of_each_delta_interval_and_the_champion_value(tmp_path):
    """Only the lower end of the delta's interval was a metric: the UI could not chart the interval
    the gate report prints, nor the champion's value the delta is taken from."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("t", artifact_location=(tmp_path / "artifacts").as_uri())
    run_id = client.create_run(experiment).info.run_id
    rules = [
        RuleResult("auc", "non_inferiority", "CI low of delta > -0.010", 0.71, 0.70, 0.01, -0.004, 0.025, True),
        RuleResult("auc", "floor", ">= 0.600", 0.71, None, None, None, None, True),
    ]
    gate = GateResult("preference", rules, n_examples=100)
    mlflow.set_tracking_uri(uri)
    log_gate_artifacts(client, run_id, "preference", pd.DataFrame({"example_id": ["a"], "score": [0.5]}), gate)
    metrics = client.get_run(run_id).data.metrics
    assert {k: v for k, v in metrics.items() if k.startswith("gate.non_inferiority.")} == {
        "gate.non_inferiority.auc.candidate": 0.71, "gate.non_inferiority.auc.champion": 0.70,
        "gate.non_inferiority.auc.delta": 0.01, "gate.non_inferiority.auc.ci_low": -0.004,
        "gate.non_inferiority.auc.ci_high": 0.025}
    assert {k for k in metrics if k.startswith("gate.floor.")} == {"gate.floor.auc.candidate"}
    assert metrics["gate.passed"] == 1.0
