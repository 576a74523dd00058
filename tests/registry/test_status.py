"""status / render_status / compare on the shared world (release 1 champion, release 2 challenger)."""

from __future__ import annotations

from components.registry.promotion import promote
from components.registry.status import compare, render_status, status
from components.registry.store import registry_client, set_alias


def test_status_lists_champion_challenger_and_key_metrics(world):
    data = status(world.cfg)
    assert data["problems"] == []
    assert data["release"]["champion"]["version"] == "1"
    assert data["release"]["challenger"]["version"] == "2"
    assert data["release"]["previous"] is None
    assert data["release"]["champion"]["members"] == world.first.versions
    pref = data["models"]["preference"]
    assert pref["champion"]["version"] == world.first.versions["preference"]
    assert pref["challenger"]["version"] == world.second.versions["preference"]
    assert float(pref["challenger"]["metrics"]["auc"]) > float(pref["champion"]["metrics"]["auc"])
    assert pref["latest"]["version"] == world.second.versions["preference"]  # newer than the rejected one
    text = render_status(data)
    assert "copyflow-release:" in text and "copyflow-preference:" in text and "copyflow-generator:" in text
    champion_line = next(line for line in text.splitlines() if line.strip().startswith("champion") and "v1" in line)
    assert "by copyflow auto-promote" in champion_line
    assert "auc" in text and "INCONSISTENT" not in text


def test_compare_is_the_gate_report_of_the_challenger(world):
    report = compare(world.cfg)
    assert report == world.second.report
    assert "vs release 1 (copyflow-preference v1)" in report and "| auc |" in report


def test_compare_rechecks_when_the_champion_changed_and_status_flags_inconsistency(fresh_world):
    cfg = fresh_world.cfg
    promote(cfg, release=2)
    # release 1 was gated against nothing; compared with today's champion it is re-gated
    report = compare(cfg, release=1)
    assert report.startswith("## Release 1 vs champion release 2: **FAIL**")
    set_alias(registry_client(cfg), "copyflow-generator", "previous", None)
    data = status(cfg)
    assert data["problems"] == [
        f"copyflow-generator@previous is unset but copyflow-release@previous (v1) says {fresh_world.first.versions['generator']}"
    ]
    assert "INCONSISTENT aliases" in render_status(data)


def test_status_of_an_empty_registry(make_cfg):
    cfg = make_cfg()
    data = status(cfg)
    assert data["release"] == {"champion": None, "challenger": None, "previous": None}
    assert "no registered models yet" in render_status(data)
    assert "No challenger release" in compare(cfg)


def test_a_release_whose_manifest_cannot_be_read_is_shown_not_raised(fresh_world):
    """Its artifacts were lost (a moved store, a cleaned artifact root): status still shows the rest."""
    import pytest

    from components.registry.names import RELEASE_MODEL
    from components.registry.promotion import PromotionRefused

    cfg = fresh_world.cfg
    client = registry_client(cfg)
    lost = client.create_model_version(RELEASE_MODEL, source=(fresh_world.base / "lost" / "release").as_uri()).version
    set_alias(client, RELEASE_MODEL, "challenger", lost)
    data = status(cfg)
    assert data["release"]["champion"]["version"] == "1"
    assert data["release"]["challenger"]["version"] == str(lost) and "cannot be read" in data["release"]["challenger"]["error"]
    assert any(p.startswith(f"copyflow-release@challenger (v{lost}): the manifest of") for p in data["problems"])
    assert f"challenger v{lost}" in " ".join(render_status(data).split()) and "UNREADABLE" in render_status(data)
    with pytest.raises(PromotionRefused, match="cannot be read"):
        promote(cfg)
    assert promote(cfg, release=2)["release"] == "2"  # the others still promote
