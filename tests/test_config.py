"""params.yaml -> typed Config: every profile loads, and mistakes are named, not silently kept."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from components.config import load_config
from tests.conftest import ROOT

PARAMS = ROOT / "params.yaml"


@pytest.mark.parametrize("profile", ["quick", "full", "obd"])
def test_every_profile_loads(profile):
    cfg = load_config(PARAMS, profile)
    assert cfg.profile == profile and cfg.generator.d_model % cfg.generator.nhead == 0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"generator": {"nhead": 5}}, "nhead \\(5\\) must divide d_model"),
        ({"cleaning": {"price_min": 50000.0}}, "price_min \\(50000.0\\) must be below price_max"),
        ({"validation": {"drift": {"row_count_ratio_min": 5.0}}}, "row_count_ratio_min \\(5.0\\) exceeds row_count_ratio_max"),
        ({"gates": {"preference_auc_min": 1.5}}, "preference_auc_min"),
        ({"generator": {"decodng": "beam"}}, "decodng"),  # a typo is an error, not an ignored key
    ],
)
def test_contradictory_or_misspelt_knobs_are_refused(overrides, message):
    with pytest.raises(ValidationError, match=message):
        load_config(PARAMS, "quick", overrides=overrides)


def test_unknown_profile_is_named():
    with pytest.raises(ValueError, match="unknown profile 'quik'"):
        load_config(PARAMS, "quik")
