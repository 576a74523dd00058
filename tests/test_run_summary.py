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


def test_the_summary_says_how_much_served_feedback_came_in_and_warns_of_unread_fragments():
    feedback = {"folder": "data/feedback/shop", "copies": 3, "events": 5, "skipped_as_duplicates": 1, "fragments_not_read": 2}
    result = RetrainResult(profile="shop", stages={"source": {"skipped": False, "summary": {"feedback": feedback}}})
    text = format_summary(result)
    assert "served feedback taken in: 3 copies, 5 events (1 already in the export)" in text
    assert "WARNING: 2 partial line(s) in data/feedback/shop were not read" in text
    quiet = RetrainResult(profile="quick", stages={"source": {"skipped": False, "summary": {}}})
    assert "feedback" not in format_summary(quiet) and "WARNING" not in format_summary(quiet)


def test_the_summary_warns_when_k_anonymity_is_not_met():
    below = {"quasi_identifiers": ["age_band", "city_tier"], "k_min": 5, "users_below_k": 31, "satisfied": False}
    result = RetrainResult(profile="shop", stages={"clean": {"skipped": False, "summary": {"k_anonymity": below}}})
    assert "WARNING: k-anonymity not met: 31 shoppers share their age_band, city_tier with fewer than 5" in format_summary(result)
    met = RetrainResult(profile="shop", stages={"clean": {"skipped": False, "summary": {"k_anonymity": {**below, "satisfied": True}}}})
    assert "WARNING" not in format_summary(met)


def test_the_summary_says_when_ingest_dropped_erased_shoppers():
    # The retrain's printout was silent about an erasure taking effect (only the ingest log line said it).
    dropped = {"shoppers": 2, "users": 2, "events": 326}
    result = RetrainResult(profile="shop", stages={"ingest": {"skipped": False, "summary": {"forgotten_shoppers_dropped": dropped}}})
    assert "erased shoppers (copyflow forget) dropped at ingest: 2 still in this batch, 2 users rows, 326 events" in format_summary(result)
    none = RetrainResult(profile="shop", stages={"ingest": {"skipped": False, "summary": {
        "forgotten_shoppers_dropped": {"shoppers": 0, "users": 0, "events": 0}}}})
    assert "erased" not in format_summary(none)
