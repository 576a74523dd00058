"""MLflow wiring: the embedded sqlite store under mlflow/, or any server named in params/env.

Nothing here runs at import; callers call `configure(cfg)` once per process.
"""

from __future__ import annotations

import os
from pathlib import Path

TELEMETRY_OFF = {
    "DO_NOT_TRACK": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DVC_NO_ANALYTICS": "1",
    "ORT_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
}

EMBEDDED_DIR = Path("mlflow")


def disable_telemetry() -> None:
    """Turn every library's telemetry off unless the user explicitly set the variable."""
    for key, value in TELEMETRY_OFF.items():
        os.environ.setdefault(key, value)


def tracking_uri(cfg=None) -> str:
    """params.yaml `tracking.uri`, else $MLFLOW_TRACKING_URI, else the embedded sqlite store."""
    if cfg is not None and cfg.tracking.uri:
        return cfg.tracking.uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{(EMBEDDED_DIR / 'mlflow.db').resolve()}"


def artifact_root(uri: str) -> str | None:
    """Artifacts of an sqlite store live next to the database file (mlflow/artifacts)."""
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        return (db.parent / "artifacts").resolve().as_uri()
    return None


def configure(cfg=None) -> str:
    """Point MLflow at the configured store and select the experiment; returns its id."""
    import mlflow

    disable_telemetry()
    uri = tracking_uri(cfg)
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    # Subprocesses (training launched under DDP) must write to the same store.
    os.environ["MLFLOW_TRACKING_URI"] = uri
    name = cfg.tracking.experiment if cfg is not None else "copyflow"
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is None:
        experiment_id = mlflow.create_experiment(name, artifact_location=artifact_root(uri))
    else:
        experiment_id = experiment.experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id
