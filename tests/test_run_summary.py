"""What `copyflow retrain` prints at the end."""

from __future__ import annotations

from components.run_summary import RetrainResult, format_summary


def test_the_summary_points_at_the_profiles_own_ui():
    clean = {"rows_before": {"events": 120}, "rows_after": {"events": 100}, "removed": {"bot_events": 20}}
    result = RetrainResult(profile="shop", mlflow_run_id="abc", stages={"clean": {"skipped": False, "summary": clean}})
    text = format_summary(result, "sqlite:///mlflow/shop/mlflow.db")
    assert "stages run: clean" in text and "removed: bot_events=20" in text
    assert "open the UI: copyflow ui --profile shop" in text and "MLflow run: abc  (sqlite:///mlflow/shop/mlflow.db)" in text
    assert "open the UI: copyflow ui   (" in format_summary(RetrainResult(profile="quick"))
