"""`copyflow status` and `copyflow compare`: what is champion / challenger / previous, and why."""

from __future__ import annotations

from mlflow import MlflowClient

from components.config import Config
from components.evaluation.gates import render_report
from components.registry.evidence import EvidenceError, regate
from components.registry.names import (
    ALIASES,
    CHALLENGER,
    CHAMPION,
    KEY_METRICS,
    METRIC_TAG_PREFIX,
    REGISTERED_MODELS,
    RELEASE_MODEL,
)
from components.registry.promotion import check_consistency
from components.registry.release import load_manifest
from components.registry.store import model_aliases, registry_client


def _version_info(client: MlflowClient, name: str, version: str) -> dict:
    mv = client.get_model_version(name, version)
    tags = mv.tags or {}
    return {
        "version": str(mv.version),
        "metrics": {k.removeprefix(METRIC_TAG_PREFIX): v for k, v in tags.items() if k.startswith(METRIC_TAG_PREFIX)},
        "gate_verdict": tags.get("gate.verdict", "?"),
        "git_commit": tags.get("git_commit", "?"),
        "promoted_at": tags.get("promoted_at", ""),
    }


def status(cfg: Config) -> dict:
    """{"release": {alias: {...} | None}, "models": {family: {alias | "latest": {...}}}, "problems": [...]}.

    "latest" is the newest registered version of the family, whatever its gate verdict.
    """
    client = registry_client(cfg)
    release: dict[str, dict | None] = {}
    for alias in ALIASES:
        version = model_aliases(client, RELEASE_MODEL).get(alias)
        if version is None:
            release[alias] = None
            continue
        tags = client.get_model_version(RELEASE_MODEL, str(version)).tags or {}
        try:
            manifest = load_manifest(client, version)
        except LookupError as exc:  # shown, not raised: status is how a person finds this out
            release[alias] = {"version": str(version), "error": str(exc)}
            continue
        release[alias] = {
            "version": str(version),
            "profile": manifest.get("profile"),
            "created_at": manifest.get("created_at"),
            "promoted_at": tags.get("promoted_at", ""),
            "promoted_by": tags.get("promoted_by", ""),
            "note": tags.get("promotion.note", ""),
            "members": {family: str(m["version"]) for family, m in manifest["members"].items()},
        }
    models: dict[str, dict] = {}
    for family, name in REGISTERED_MODELS.items():
        aliases = model_aliases(client, name)
        versions = client.search_model_versions(f"name = '{name}'")
        if not versions:
            continue
        models[family] = {alias: _version_info(client, name, aliases[alias]) for alias in ALIASES if alias in aliases}
        # the newest version, aliased or not: a rejected retrain shows up here with its failed rules
        newest = max(versions, key=lambda v: int(v.version))
        models[family]["latest"] = {
            **_version_info(client, name, str(newest.version)),
            "failed_rules": (newest.tags or {}).get("gate.failed_rules", ""),
        }
    return {"tracking_uri": client.tracking_uri, "release": release, "models": models, "problems": check_consistency(client)}


def _short(value: str | None) -> str:
    if value is None:
        return "–"
    try:
        return f"{float(value):.4g}"
    except ValueError:
        return value


def render_status(data: dict) -> str:
    """The status dict as the plain-text table the CLI prints."""
    lines = [f"MLflow registry: {data['tracking_uri']}", "", f"{RELEASE_MODEL}:"]
    for alias in ALIASES:
        info = data["release"].get(alias)
        if info is None:
            lines.append(f"  {alias:<10} –")
            continue
        if "error" in info:
            lines.append(f"  {alias:<10} v{info['version']:<4} UNREADABLE: {info['error']}")
            continue
        members = ", ".join(f"{f} v{v}" for f, v in info["members"].items())
        promoted = f"  promoted {info['promoted_at']} by {info['promoted_by']}" if info["promoted_at"] else ""
        note = f"  note: {info['note']}" if info["note"] else ""
        lines.append(f"  {alias:<10} v{info['version']:<4} [{members}]  ({info['profile']}){promoted}{note}")
    for family, aliases in data["models"].items():
        metric_names = [m for m in KEY_METRICS.get(family, ()) if any(m in a["metrics"] for a in aliases.values())]
        lines += ["", f"{REGISTERED_MODELS[family]}:"]
        widths = {m: max(len(m), 8) for m in metric_names}
        header = f"  {'alias':<10} {'version':>7}  {'gate':<5} " + " ".join(f"{m:>{widths[m]}}" for m in metric_names)
        lines.append(header.rstrip())
        for alias in (*ALIASES, "latest"):
            if alias not in aliases:
                continue
            info = aliases[alias]
            if alias == "latest" and any(aliases[a]["version"] == info["version"] for a in ALIASES if a in aliases):
                continue  # the newest version already shows under its alias
            values = " ".join(f"{_short(info['metrics'].get(m)):>{widths[m]}}" for m in metric_names)
            line = f"  {alias:<10} {info['version']:>7}  {info['gate_verdict']:<5} {values}".rstrip()
            if alias == "latest" and info.get("failed_rules") not in ("", "none"):
                line += f"   (failed: {info['failed_rules']})"
            lines.append(line)
    if not data["models"]:
        lines += ["", "no registered models yet: run `copyflow retrain`"]
    if data["problems"]:
        champion = data["release"].get(CHAMPION)
        repair = f"`copyflow promote --release {champion['version']}` rewrites them" if champion else "promote a release to rewrite them"
        lines += ["", f"INCONSISTENT aliases ({repair}):"]
        lines += [f"  - {p}" for p in data["problems"]]
    return "\n".join(lines)


def compare(cfg: Config, release: int | str | None = None) -> str:
    """Markdown: the challenger (or `release`) vs the current champion, the same table as the gate.

    The stored gate report is shown when it was computed against today's champion; otherwise the
    gates are re-run from the stored per-example evidence against the current champion.
    """
    client = registry_client(cfg)
    aliases = model_aliases(client, RELEASE_MODEL)
    version = str(release) if release is not None else aliases.get(CHALLENGER)
    if version is None:
        return f"No challenger release to compare (no {RELEASE_MODEL}@challenger); run `copyflow retrain`.\n"
    target = load_manifest(client, version)
    champion_version = aliases.get(CHAMPION)
    if champion_version is None or str(target.get("baseline_release")) == str(champion_version):
        return target["gate_report"]
    if str(champion_version) == str(version):
        return f"Release {version} is the champion.\n\n" + target["gate_report"]
    champion = load_manifest(client, champion_version)
    try:
        results = regate(cfg, target, champion)
    except EvidenceError as exc:
        return f"Release {version} cannot be compared with champion release {champion_version}: {exc}\n"
    return render_report(results, f"Release {version} vs champion release {champion_version}")
