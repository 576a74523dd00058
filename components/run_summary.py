"""What a retrain run reports to a person at the end: counts, gate verdict, models, where to look."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RetrainResult:
    profile: str
    mlflow_run_id: str = ""
    stages: dict[str, dict] = field(default_factory=dict)  # stage -> {"skipped", "summary"}
    release: dict | None = None

    def summary(self, stage: str) -> dict:
        return (self.stages.get(stage) or {}).get("summary") or {}


def _table_counts(result: RetrainResult) -> list[str]:
    clean = result.summary("clean")
    before, after = clean.get("rows_before") or {}, clean.get("rows_after") or {}
    if not before:
        return []
    lines = ["  rows per table      before cleaning   after cleaning"]
    for table in ("products", "copies", "users", "events"):
        if table in before:
            lines.append(f"    {table:<18}{before[table]:>14,}{after.get(table, 0):>17,}")
    removed = clean.get("removed") or {}
    if removed:
        lines.append("  removed: " + ", ".join(f"{k}={v:,}" for k, v in removed.items() if isinstance(v, int)))
    return lines


def _release_line(release: dict) -> str:
    if not release.get("passed"):
        return "  release gate: FAILED (see the report above; no alias moved)"
    members = ", ".join(f"{family} v{version}" for family, version in (release.get("versions") or {}).items())
    if release.get("reused"):
        state = "unchanged (these models were already gated and released; see the status below)"
    elif release.get("promoted"):
        state = "promoted to champion"
    else:
        state = "registered as challenger (promote with `copyflow promote`)"
    return f"  release {release.get('release')}: {state} [{members}]"


def format_summary(result: RetrainResult, tracking_uri: str = "") -> str:
    lines = [f"copyflow retrain — profile {result.profile!r}", ""]
    ran = [s for s, v in result.stages.items() if not v["skipped"]]
    skipped = [s for s, v in result.stages.items() if v["skipped"]]
    lines.append(f"  stages run: {', '.join(ran) or '-'}")
    if skipped:
        lines.append(f"  stages unchanged (skipped by DVC): {', '.join(skipped)}")
    lines += _table_counts(result)
    feedback = (result.summary("source") or {}).get("feedback") or {}
    if feedback.get("events") or feedback.get("copies"):
        lines.append(f"  served feedback taken in: {feedback.get('copies', 0):,} copies, {feedback.get('events', 0):,} events "
                     f"({feedback.get('skipped_as_duplicates', 0):,} already in the export)")
    if feedback.get("fragments_not_read"):
        lines.append(f"  WARNING: {feedback['fragments_not_read']} partial line(s) in {feedback.get('folder')} were not read "
                     "(writers that died mid-line; see its *.fragments files)")
    erased = (result.summary("ingest") or {}).get("forgotten_shoppers_dropped") or {}
    if erased.get("shoppers"):  # the proof an erasure took effect in this batch
        lines.append(f"  erased shoppers (copyflow forget) dropped at ingest: {erased['shoppers']:,} still in this batch, "
                     f"{erased.get('users', 0):,} users rows, {erased.get('events', 0):,} events")
    anonymity = (result.summary("clean") or {}).get("k_anonymity") or {}
    if anonymity and not anonymity.get("satisfied", True):
        lines.append(f"  WARNING: k-anonymity not met: {anonymity.get('users_below_k', '?'):,} shoppers share their "
                     f"{', '.join(anonymity.get('quasi_identifiers') or [])} with fewer than {anonymity.get('k_min')} shoppers "
                     "(privacy.k_anonymity_min); coarsen those columns before the clean layer leaves this machine")
    validate = result.summary("validate")
    if validate:
        verdict = "PASSED" if validate.get("success") else "FAILED"
        lines.append(
            f"  data gate (Great Expectations): {verdict} "
            f"({validate.get('evaluated_expectations', '?')} expectations, "
            f"{validate.get('failed_expectations', 0)} failed)"
        )
    features = result.summary("features")
    if features:
        shape = features.get("shape") or [features.get("rows"), features.get("columns")]
        lines.append(f"  feature table: {shape[0]:,} rows x {shape[1]} columns")
    for stage, label in (("train_preference", "preference model"), ("train_generator", "copy generator")):
        manifest = result.summary(stage)
        if manifest:
            metrics = manifest.get("metrics") or {}
            keys = ("auc", "baseline_auc", "ceiling_auc") if stage == "train_preference" else (
                "bleu4", "rougeL", "distinct2", "hallucination_rate")
            shown = ", ".join(f"{k}={metrics[k]:.3f}" for k in keys if isinstance(metrics.get(k), (int, float)))
            lines.append(f"  {label}: {shown}  (run {manifest.get('run_id', '?')})")
    if result.release:
        lines.append(_release_line(result.release))
    lines.append(f"  MLflow run: {result.mlflow_run_id}" + (f"  ({tracking_uri})" if tracking_uri else ""))
    profile_option = "" if result.profile == "quick" else f" --profile {result.profile}"  # its own store for obd and shop
    lines.append(f"  open the UI: copyflow ui{profile_option}   (then http://127.0.0.1:5000)")
    return "\n".join(lines)
