"""From training manifests to a gated release: score, gate, register, alias, (auto-)promote.

`release_candidates` is what the retrain flow calls after training:
1. freeze (once) or reuse the profile's evaluation snapshot for every family;
2. score each candidate, and the champion's member of the same family, on the same rows;
3. run the family's gate; log per-example evidence, the report and gate metrics to MLflow;
4. register every candidate version with its lineage tags and gate verdict (failed ones too,
   so the registry shows why a version never shipped); a family whose training DVC skipped
   keeps the version its run already has (only its gate tags are updated);
5. if every gate passed: alias `challenger` on each member and on a new `copyflow-release`
   version; if params say auto_promote and no champion exists yet, promote it.
A failing gate raises GateFailed with the report after step 4: no alias moves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from components.config import Config
from components.evaluation.copy_rules import judge_generator_frames
from components.evaluation.frozen import Scorer, ensure_snapshot, score_on_snapshot
from components.evaluation.gates import GateFailed, GateResult, evaluate_gate, render_report
from components.registry.evidence import gate_clusters, log_gate_artifacts, member_label, member_scores
from components.registry.lineage import lineage_tags
from components.registry.names import CHALLENGER, CHAMPION, LINEAGE_TAGS, RELEASE_MODEL, VERDICT_PASS, registered_model, verdict
from components.registry.release import create_release, load_manifest, now_iso, release_with_alias
from components.registry.store import bundle_files, ensure_registered_model, registry_client, registry_lock, set_alias, versions_of_run

REQUIRED_MANIFEST_KEYS = ("model", "run_id", "model_uri", "metrics")


class ManifestError(ValueError):
    """A training manifest lacks what the registry needs."""


@dataclass
class ReleaseOutcome:
    passed: bool
    report: str
    gates: list[GateResult]
    versions: dict[str, str] = field(default_factory=dict)  # family -> registered version
    release: str | None = None
    promoted: bool = False
    promotion: dict | None = None
    reused: bool = False  # these exact training runs were released before (DVC skipped training)

    def to_dict(self) -> dict:
        return {
            "passed": self.passed,
            "release": self.release,
            "versions": self.versions,
            "promoted": self.promoted,
            "promotion": self.promotion,
            "reused": self.reused,
            "report": self.report,
            "gates": [g.to_dict() for g in self.gates],
        }


def _version_of_run(client: MlflowClient, family: str, run_id: str):
    """The latest version of the family registered from this training run, or None."""
    try:
        versions = versions_of_run(client, registered_model(family), run_id)
    except MlflowException:
        return None
    return max(versions, key=lambda v: int(v.version)) if versions else None


def _released_members(client: MlflowClient) -> set[tuple[str, str]]:
    """(family, version) of every member of a release: a release exists only if its gates
    passed, so this is what shipped (release.gate tags are older than some releases, and are
    set before the release is created)."""
    return {(key.removeprefix("member."), value) for release in client.search_model_versions(f"name = '{RELEASE_MODEL}'")
            for key, value in release.tags.items() if key.startswith("member.")}


def _registered_versions(client: MlflowClient, families: list[str], manifests: list[dict]) -> dict[str, object] | None:
    """family -> the version already registered from this manifest's training run, if all are."""
    found = {}
    for family, manifest in zip(families, manifests, strict=True):
        version = _version_of_run(client, family, manifest["run_id"])
        if version is None:
            return None
        found[family] = version
    return found


def _tag_reused_verdict(client: MlflowClient, parent_run_id: str | None, passed: bool, report: str) -> None:
    """The retrain run that reused unchanged training still shows a verdict: the earlier one."""
    if not parent_run_id:
        return
    client.log_text(parent_run_id, report, "gate/report.md")
    for key in ("gate.verdict", "release.gate"):
        client.set_tag(parent_run_id, key, verdict(passed))
    client.set_tag(parent_run_id, "gate.reused", "true")


def _previous_outcome(client: MlflowClient, found: dict, parent_run_id: str | None = None) -> ReleaseOutcome:
    """The verdict these training runs already got: their release, or their gate failure again."""
    versions = {family: str(v.version) for family, v in found.items()}
    if all(v.tags.get("gate.verdict") == VERDICT_PASS for v in found.values()):
        for release in client.search_model_versions(f"name = '{RELEASE_MODEL}'"):
            if all(release.tags.get(f"member.{f}") == version for f, version in versions.items()):
                manifest = load_manifest(client, release.version)
                _tag_reused_verdict(client, parent_run_id, True, manifest["gate_report"])
                return ReleaseOutcome(True, manifest["gate_report"], [], versions, str(release.version), reused=True)
    reports = []
    for family, version in found.items():
        try:
            path = client.download_artifacts(version.run_id, f"gate/{family}_report.md")
            reports.append(Path(path).read_text(encoding="utf-8"))
        except (MlflowException, OSError):
            reports.append(f"(no stored gate report for {version.name} v{version.version})")
    text = "\n\n".join(reports)
    _tag_reused_verdict(client, parent_run_id, False, text)
    why = "these training runs were already evaluated and rejected (training was skipped: nothing changed)"
    raise GateFailed(f"{why[0].upper()}{why[1:]}.\n\n{text}", why=why)


def _check_manifest(manifest: dict) -> str:
    missing = [key for key in REQUIRED_MANIFEST_KEYS if not manifest.get(key) and key != "metrics"]
    if "metrics" not in manifest:
        missing.append("metrics")
    if missing:
        raise ManifestError(f"training manifest of {manifest.get('model', '?')!r} lacks {missing}: {sorted(manifest)}")
    registered_model(manifest["model"])  # unknown family -> clear error
    return manifest["model"]


def _finite(metrics: dict) -> dict[str, float]:
    """Numbers only, no NaN/inf: the release manifest must stay strict JSON."""
    return {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and math.isfinite(v)}


def _model_ref(manifest: dict) -> str:
    """Score from the local model directory when it is still there (no download), else the URI."""
    model_dir = manifest.get("model_dir")
    return str(model_dir) if model_dir and Path(model_dir).exists() else manifest["model_uri"]


def _register(client: MlflowClient, family: str, manifest: dict, tags: dict[str, str]) -> str:
    name = registered_model(family)
    ensure_registered_model(client, name, f"copyflow {family} model; aliases champion / challenger / previous.")
    version = mlflow.register_model(manifest["model_uri"], name, tags=tags)
    return str(version.version)


def release_candidates(
    cfg: Config,
    manifests: list[dict],
    *,
    project_dir: Path | str = ".",
    flow_run_id: str | None = None,
    parent_run_id: str | None = None,
    scorers: dict[str, Scorer] | None = None,
) -> ReleaseOutcome:
    """Gate, register and release the models of one retrain (see module docstring).

    Raises GateFailed (report attached) when any gate fails; nothing is aliased then.
    """
    if not manifests:
        raise ManifestError("no training manifests to release")
    families = [_check_manifest(m) for m in manifests]
    if len(set(families)) != len(families):
        raise ManifestError(f"one manifest per model family expected, got {families}")
    client = registry_client(cfg)
    already = _registered_versions(client, families, manifests)
    if already is not None:  # DVC skipped training: same runs, same verdict, nothing new to register
        return _previous_outcome(client, already, parent_run_id)
    experiment_id = mlflow.get_experiment_by_name(cfg.tracking.experiment).experiment_id
    parent_tags = client.get_run(parent_run_id).data.tags if parent_run_id else {}
    champion = release_with_alias(client, CHAMPION)
    champion_release, champion_manifest = champion if champion else (None, None)

    gates: list[GateResult] = []
    members: dict[str, dict] = {}
    for family, manifest in zip(families, manifests, strict=True):
        snapshot = ensure_snapshot(cfg, family)
        scorer = (scorers or {}).get(family)
        candidate = score_on_snapshot(snapshot, _model_ref(manifest), cache_key=manifest["model_uri"], scorer=scorer)
        champ_member = (champion_manifest or {}).get("members", {}).get(family)
        champion_frame = member_scores(snapshot, champ_member, scorer) if champ_member else None
        # ad-law words and contradictions by the gate's rules, not each bundle's own
        candidate, champion_frame = judge_generator_frames(cfg, family, candidate, champion_frame, snapshot.rows)
        gate = evaluate_gate(
            family,
            cfg.gates,
            candidate,
            champion_frame,
            seed=cfg.seed,
            snapshot=snapshot.fingerprint,
            candidate_label=f"candidate {registered_model(family)} (run {manifest['run_id'][:8]})",
            champion_label=member_label(champion_release, champ_member) if champ_member else None,
            **gate_clusters(family, snapshot.rows),
        )
        gates.append(gate)
        evidence_uri = log_gate_artifacts(client, manifest["run_id"], family, candidate, gate)
        members[family] = {
            "registered_model": registered_model(family),
            "source_uri": manifest["model_uri"],
            "onnx_uri": manifest.get("onnx_uri"),
            "bundle_files": bundle_files(client, manifest.get("onnx_uri")),
            "run_id": manifest["run_id"],
            "metrics": _finite(manifest.get("metrics") or {}),
            "gate": gate.to_dict(),
            "snapshot": snapshot.fingerprint,
            "evidence_uri": evidence_uri,
            "inherited": False,
        }

    passed = all(g.passed for g in gates)
    report = render_report(gates, f"Release gate report ({cfg.profile})")
    versions: dict[str, str] = {}
    lineage: dict[str, dict[str, str]] = {}
    shipped: set[str] = set()  # reused versions that were released before
    released = _released_members(client)
    for family, manifest in zip(families, manifests, strict=True):
        registered = _version_of_run(client, family, manifest["run_id"])
        gate = next(g for g in gates if g.family == family)
        gate_tags = {
            "gate.verdict": gate.verdict,
            "gate.failed_rules": ", ".join(f"{r.kind}:{r.metric}" for r in gate.failures()) or "none",
            "gate.baseline_release": champion_release or "none",
        }
        if registered is not None:
            # DVC skipped this family's training (another family changed): the same run keeps
            # its version and the lineage of the retrain that trained it; gated again above.
            versions[family] = str(registered.version)
            members[family]["version_reused"] = True
            if (family, versions[family]) in released:  # membership, not a tag set before the release existed
                shipped.add(family)
            members[family]["version"] = versions[family]
            lineage[family] = {k: v for k, v in registered.tags.items() if k in LINEAGE_TAGS}
            members[family]["model_uri"] = f"models:/{registered_model(family)}/{versions[family]}"
            for key, value in gate_tags.items():  # its latest gate
                client.set_model_version_tag(registered_model(family), versions[family], key, value)
            continue
        tags = lineage_tags(cfg, manifest, project_dir=project_dir, flow_run_id=flow_run_id, parent_tags=parent_tags)
        tags.update(gate_tags)
        versions[family] = _register(client, family, manifest, tags)
        members[family]["version"] = versions[family]
        members[family]["model_uri"] = f"models:/{registered_model(family)}/{versions[family]}"
        lineage[family] = tags
    # The release's outcome on every version and training run of it: a member that passed its
    # own gate in a rejected release must not read as shipped (gate.verdict=pass alone). A
    # version already released keeps its pass: a later rejected release does not unship it.
    for family, manifest in zip(families, manifests, strict=True):
        outcome = verdict(passed or family in shipped)
        client.set_model_version_tag(registered_model(family), versions[family], "release.gate", outcome)
        client.set_tag(manifest["run_id"], "release.gate", outcome)
    if parent_run_id:
        client.log_text(parent_run_id, report, "gate/report.md")
        client.set_tag(parent_run_id, "gate.verdict", verdict(passed))
        client.set_tag(parent_run_id, "release.gate", verdict(passed))
    if not passed:
        raise GateFailed(report, gates)

    # Families this retrain did not train keep the champion's version, so a release is complete.
    for family, member in (champion_manifest or {}).get("members", {}).items():
        members.setdefault(family, {**member, "inherited": True})
    # The release's own lineage is this retrain's: a freshly trained member's, when there is one.
    fresh = [f for f in families if not members[f].get("version_reused")]
    any_lineage = lineage[fresh[0]] if fresh else next(iter(lineage.values()))
    manifest = {
        "profile": cfg.profile,
        "created_at": now_iso(),
        "baseline_release": champion_release,
        "gate_verdict": VERDICT_PASS,
        "gate_report": report,
        "members": members,
        "lineage": lineage,
    }
    release_tags = {
        "gate.verdict": VERDICT_PASS,
        "profile": cfg.profile,
        "git_commit": any_lineage["git_commit"],
        "dvc.lock.sha256": any_lineage["dvc.lock.sha256"],
        "prefect_flow_run_id": any_lineage["prefect_flow_run_id"],
        "baseline_release": champion_release or "none",
    }
    with registry_lock(cfg):
        release = str(
            create_release(
                client, experiment_id=experiment_id, manifest=manifest, tags=release_tags, parent_run_id=parent_run_id
            ).version
        )
        for family, member in members.items():
            set_alias(client, member["registered_model"], CHALLENGER, str(member["version"]))
        set_alias(client, RELEASE_MODEL, CHALLENGER, release)
    if parent_run_id:
        client.set_tag(parent_run_id, "release", release)

    outcome = ReleaseOutcome(True, report, gates, versions, release)
    if cfg.gates.auto_promote and champion is None:
        from components.registry.promotion import promote

        outcome.promotion = promote(
            cfg,
            release=release,
            note="first release (gates.auto_promote)",
            actor="copyflow auto-promote",
            only_if_no_champion=True,
        )
        outcome.promoted = bool(outcome.promotion.get("changed"))
    return outcome
