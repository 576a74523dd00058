"""Gate evidence: per-example scores on the frozen snapshot, stored with each candidate's run.

Storing the per-example frames (not just the verdict) lets a later promotion re-run the paired
gate against whichever release is champion *then*, without re-scoring either model.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pandas as pd
from mlflow import MlflowClient

from components.config import Config
from components.evaluation.copy_rules import judge_generator_frames
from components.evaluation.frozen import DEFAULT_SCORERS, FrozenSnapshot, Scorer, SnapshotError, load_snapshot, score_on_snapshot
from components.evaluation.gates import GateResult, evaluate_gate


class EvidenceError(RuntimeError):
    """Stored gate evidence is missing, or two releases were evaluated on different snapshots."""


def evidence_path(family: str) -> str:
    return f"gate/{family}_evidence.parquet"


def log_gate_artifacts(client: MlflowClient, run_id: str, family: str, frame: pd.DataFrame, gate: GateResult) -> str:
    """Per-example evidence + this family's report + gate metrics on the candidate's training run."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(evidence_path(family)).name
        frame.to_parquet(path, index=False)
        client.log_artifact(run_id, str(path), "gate")
    client.log_text(run_id, gate.to_markdown(), f"gate/{family}_report.md")
    for rule in gate.rules:
        # Consistent names across runs so two retrains compare side by side in the MLflow UI.
        prefix = f"gate.{rule.kind}.{rule.metric}"
        # None: not measured (its note says why), or no champion to compare with. Both ends of
        # the delta's interval: the lower end alone cannot be charted as an interval.
        for part in ("candidate", "champion", "delta", "ci_low", "ci_high"):
            value = getattr(rule, part)
            if value is not None:
                client.log_metric(run_id, f"{prefix}.{part}", value)
    client.log_metric(run_id, "gate.passed", float(gate.passed))
    client.set_tag(run_id, "gate.verdict", gate.verdict)
    return f"runs:/{run_id}/{evidence_path(family)}"


def load_evidence(member: dict) -> pd.DataFrame:
    import mlflow
    from mlflow.exceptions import MlflowException

    uri = member.get("evidence_uri")
    if not uri:
        raise EvidenceError(f"{member.get('registered_model')} v{member.get('version')} has no stored gate evidence")
    try:
        return pd.read_parquet(mlflow.artifacts.download_artifacts(artifact_uri=uri))
    except (MlflowException, OSError) as exc:
        raise EvidenceError(f"cannot read gate evidence {uri}: {exc}") from exc


def member_scores(snapshot: FrozenSnapshot, member: dict, scorer: Scorer | None = None) -> pd.DataFrame:
    """A registered member's per-example scores on `snapshot`: local cache, else its stored
    evidence when it was computed on this very snapshot, else scored again by its model."""
    base = scorer or DEFAULT_SCORERS[snapshot.family]

    def stored_or_scored(model_ref: str, rows: pd.DataFrame) -> pd.DataFrame:
        if member.get("snapshot") == snapshot.fingerprint and member.get("evidence_uri"):
            try:
                return load_evidence(member)
            except EvidenceError:
                pass  # fall back to scoring the registered model itself
        return base(model_ref, rows)

    return score_on_snapshot(
        snapshot, member["model_uri"], cache_key=member.get("source_uri") or member["model_uri"], scorer=stored_or_scored
    )


def gate_clusters(family: str, rows: pd.DataFrame) -> dict:
    """The preference gate resamples shoppers (example_id -> user_id) when the snapshot has them."""
    if family != "preference" or "user_id" not in rows.columns:
        return {}
    return {"clusters": pd.Series(rows["user_id"].astype(str).to_numpy(), index=rows["example_id"].astype(str))}


def member_label(release: str | None, member: dict) -> str:
    where = f"release {release} " if release else ""
    return f"{where}({member['registered_model']} v{member['version']})"


def regate(cfg: Config, target: dict, champion: dict | None) -> list[GateResult]:
    """Re-run every member's gate from stored evidence: target release vs champion release.

    Used when the champion changed after the target was evaluated (e.g. after a rollback), so a
    promotion is always judged against the release it would actually replace.
    """
    results = []
    for family, member in target["members"].items():
        champ_member = (champion or {}).get("members", {}).get(family)
        if champ_member and str(champ_member["version"]) == str(member["version"]):
            continue  # the same version on both sides: nothing to compare
        candidate = load_evidence(member)
        champion_frame = None
        if champ_member:
            if champ_member.get("snapshot") != member.get("snapshot"):
                raise EvidenceError(
                    f"{family}: release {target['release']} and champion release {champion['release']} were "
                    f"evaluated on different frozen snapshots ({str(member.get('snapshot'))[:12]} vs "
                    f"{str(champ_member.get('snapshot'))[:12]}); run retrain to evaluate a fresh candidate"
                )
            champion_frame = load_evidence(champ_member)
        # The snapshot the evidence was scored on, when it is still the frozen one: its rows give
        # the preference gate its shoppers to resample (as at the retrain) and the generator gate
        # the products whose copies it re-counts with its own rules.
        try:
            snapshot = load_snapshot(cfg, family)
        except SnapshotError:  # edited since: the stored evidence alone, as before the snapshot was read here
            snapshot = None
        rows = snapshot.rows if snapshot is not None and snapshot.fingerprint == member.get("snapshot") else None
        if rows is not None:
            candidate, champion_frame = judge_generator_frames(cfg, family, candidate, champion_frame, rows)
        results.append(
            evaluate_gate(
                family,
                cfg.gates,
                candidate,
                champion_frame,
                seed=cfg.seed,
                snapshot=member.get("snapshot", ""),
                candidate_label=member_label(target["release"], member),
                champion_label=member_label(champion["release"], champ_member) if champ_member else None,
                **(gate_clusters(family, rows) if rows is not None else {}),
            )
        )
    return results
