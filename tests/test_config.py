"""params.yaml -> typed Config: every profile loads, and mistakes are named, not silently kept."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from components.config import config_error_text, load_config
from tests.conftest import ROOT

PARAMS = ROOT / "params.yaml"


@pytest.mark.parametrize("profile", ["quick", "full", "obd", "shop"])
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
        # What lightning.Trainer would refuse only after the data stages, or accept and misuse.
        ({"trainer": {"devices": 0}}, "trainer.devices must be a positive count"),
        ({"trainer": {"devices": -2}}, "trainer.devices must be a positive count"),
        ({"trainer": {"devices": "two"}}, "devices"),
        ({"trainer": {"devices": []}}, "must be non-empty"),
        ({"trainer": {"accelerator": "gpuu"}}, "accelerator"),
        ({"trainer": {"precision": "15"}}, "precision"),
        ({"trainer": {"num_nodes": 0}}, "num_nodes"),
        ({"trainer": {"num_workers": -2}}, "num_workers"),
        ({"preference": {"models": []}}, "models"),
        ({"preference": {"models": ["deep", "deep"]}}, "lists a model twice"),
        ({"preference": {"hidden": [64, 0]}}, "hidden"),
        ({"generator": {"max_steps": 0}}, "would train nothing"),
        ({"cleaning": {"bot_contamination": 0.02}}, "bot_contamination is gone"),  # a params file from before bot_z
        ({"cleaning": {"bot_min_signals": 4}}, "bot_min_signals"),
        ({"generator": {"max_steps": -7}}, "max_steps"),
        ({"simulator": {"start_date": "yesterday"}}, "'yesterday' is not an ISO 8601 date"),
        ({"validation": {"min_timestamp": "not-a-date"}}, "'not-a-date' is not an ISO 8601 date"),
        ({"trainer": {"strategy": "dpp"}}, "trainer.strategy"),  # failed only inside training, after the data stages
        # Rates, BLEU x 100 and seeds have a range; out of it, a gate that can never fail or a run that fails late
        ({"gates": {"max_hallucination_rate": 2}}, "max_hallucination_rate"),
        ({"gates": {"max_unlisted_rate": 1.5}}, "max_unlisted_rate"),
        ({"gates": {"max_ece": 5}}, "max_ece"),
        ({"gates": {"generator_bleu4_min": -1}}, "generator_bleu4_min"),
        ({"gates": {"generator_bleu4_min": 300}}, "generator_bleu4_min"),
        ({"seed": -1}, "seed"),  # numpy refuses it, and seed_everything
        ({"seed": 2**32}, "seed"),
        ({"registry": {"keep_releases": 0}}, "keep_releases"),  # a prune would keep no release at all
        ({"registry": {"prune_min_age_days": -1}}, "prune_min_age_days"),
        ({"registry": {"keep_release": 5}}, "keep_release"),
    ],
)
def test_contradictory_or_misspelt_knobs_are_refused(overrides, message):
    with pytest.raises(ValidationError, match=message):
        load_config(PARAMS, "quick", overrides=overrides)


def test_the_retention_knobs_are_loaded_from_params_yaml():
    registry = load_config(PARAMS, "quick").registry
    assert (registry.keep_releases, registry.prune_min_age_days) == (10, 7)


def test_unknown_profile_is_named():
    with pytest.raises(ValueError, match="unknown profile 'quik'"):
        load_config(PARAMS, "quik")


def test_every_strategy_the_config_accepts_is_one_lightning_knows():
    from lightning.pytorch.strategies import StrategyRegistry

    from components.config import STRATEGIES

    assert set(STRATEGIES) - {"auto"} <= set(StrategyRegistry.available_strategies())
    for strategy in ("ddp", "ddp_find_unused_parameters_true", "fsdp", "auto"):
        assert load_config(PARAMS, "quick", {"trainer": {"strategy": strategy}}).trainer.strategy == strategy


def test_strategies_whose_ranks_lightning_spawns_or_forks_are_refused_with_ddp_named():
    # Their launcher returns only best_model_path to the trainer (no best score, epochs or callback
    # state): every preference run read as diverged and its checkpoints were deleted.
    from lightning.pytorch.strategies import StrategyRegistry, XLAStrategy

    from components.config import MULTIPROCESSING_STRATEGIES, STRATEGIES

    registry = StrategyRegistry
    launched = {name for name in STRATEGIES if name != "auto" and (
        registry[name]["init_params"].get("start_method") in ("spawn", "fork") or registry[name]["strategy"] is XLAStrategy)}
    assert launched == set(MULTIPROCESSING_STRATEGIES)
    for strategy in sorted(launched):
        with pytest.raises(ValidationError, match=f"trainer.strategy '{strategy}' is not supported.*Use 'ddp'"):
            load_config(PARAMS, "quick", {"trainer": {"strategy": strategy, "devices": 2}})


@pytest.mark.parametrize("devices", ["auto", -1, [0, 1], 2])
def test_every_lightning_form_of_devices_loads(devices):
    assert load_config(PARAMS, "quick", {"trainer": {"devices": devices}}).trainer.devices == devices


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "is empty"),
        ("- seed\n", "must be a mapping of sections"),
        ("seed: 42\nseed: 7\nprofiles: {quick: {}}\n", "line 2: key 'seed' appears twice"),
        ("seed: 42\nprofiles:\n  quick: {}\n  quick: {}\n", "key 'quick' appears twice"),
        # each escaped as a 190-line traceback from every command
        ("seed: 42\npreference: {max_epochs: [8}\nprofiles: {quick: {}}\n", "is not valid YAML: .*line 2"),
        ("seed: 42\nprofiles: {quick: 3}\n", "profiles.quick must be a mapping of sections, not 3"),
        ("seed: 42\npaths: {ad_law_words: 5}\nprofiles: {quick: {}}\n", "paths must map names to path strings; not so for {'ad_law_words': 5}"),
    ],
)
def test_a_malformed_params_file_is_named(tmp_path, text, message):
    path = tmp_path / "params.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        load_config(path, "quick")


def test_a_dvc_stage_names_a_bad_knob_without_a_traceback(tmp_path, capsys):
    # `dvc repro` runs `python -m components.pipeline`: a typo'd key was a 22-line traceback there
    from components.pipeline import main

    params = tmp_path / "params.yaml"
    params.write_text((ROOT / "params.yaml").read_text(encoding="utf-8").replace("  patience:", "  patiense:", 1), encoding="utf-8")

    assert main(["features", "--params", str(params)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("copyflow stage 'features': ") and "patiense" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("overrides", "hint"),
    [
        # pydantic's lax mode converted each of these: true trained 1 epoch, "10" and 10.0 ran 10
        ({"preference": {"max_epochs": True}}, "preference.max_epochs: Input should be a valid integer (got True); true/false is not a number here"),
        ({"preference": {"max_epochs": "10"}}, "preference.max_epochs: Input should be a valid integer (got '10'); in quotes it is text in YAML"),
        ({"preference": {"max_epochs": 10.0}}, "preference.max_epochs: Input should be a valid integer (got 10.0); a count takes a whole number"),
        ({"preference": {"lr": "0.003"}}, "preference.lr: Input should be a valid number (got '0.003'); in quotes it is text"),
        ({"preference": {"lr": True}}, "preference.lr: Input should be a valid number (got True)"),
        ({"gates": {"auto_promote": 1}}, "gates.auto_promote: Input should be a valid boolean (got 1); write true or false"),
        ({"gates": {"auto_promote": "false"}}, "gates.auto_promote: Input should be a valid boolean (got 'false'); in quotes"),
        ({"seed": "42"}, "seed: Input should be a valid integer (got '42')"),
        ({"trainer": {"devices": True}}, "trainer.devices.int: Input should be a valid integer (got True)"),
        ({"registry": {"keep_releases": "10"}}, "registry.keep_releases: Input should be a valid integer (got '10'); in quotes"),
    ],
)
def test_a_setting_of_another_type_is_refused_not_converted(overrides, hint):
    with pytest.raises(ValidationError) as caught:
        load_config(PARAMS, "quick", overrides=overrides)
    assert hint in config_error_text(caught.value, PARAMS, "quick")


def test_what_yaml_writes_for_numbers_still_loads(tmp_path):
    # Strict types must not refuse legitimate YAML: an int where a float is expected, and
    # 1e-3 (PyYAML alone reads it as the text "1e-3"; YAML 1.2 and DVC read a float).
    params = tmp_path / "params.yaml"
    text = (ROOT / "params.yaml").read_text(encoding="utf-8")
    text = text.replace("  lr: 0.003\n", "  lr: 3e-3\n", 1).replace("  max_minutes: 25\n", "  max_minutes: 1E+1\n", 1)
    params.write_text(text, encoding="utf-8")
    cfg = load_config(params, "obd")  # overrides neither
    assert cfg.preference.lr == 0.003 and cfg.generator.max_minutes == 10.0
    assert cfg.validation.max_event_value == 1_000_000 and cfg.features.link_max_hours == 24  # ints in float settings


def _edited_params(tmp_path, edit) -> Path:
    import yaml

    raw = yaml.safe_load(PARAMS.read_text(encoding="utf-8"))
    edit(raw)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return params


@pytest.mark.parametrize(
    ("edit", "line"),
    [
        # quick overrides max_epochs: the bad base value failed only under `full`, weeks later in its nightly run
        (lambda raw: raw["preference"].update(max_epochs="ten"),
         "  preference.max_epochs: Input should be a valid integer (got 'ten') [base value; used by profile 'full']"),
        (lambda raw: raw["profiles"]["shop"]["preference"].update(max_epoch=3),
         "  profiles.shop.preference.max_epoch: unknown setting; did you mean 'max_epochs'?"),
        (lambda raw: raw["profiles"]["obd"].update(generatr={}), "  profiles.obd.generatr: unknown setting; did you mean 'generator'?"),
        (lambda raw: raw["profiles"]["shop"]["gates"].update(copy_choice_margin=-0.1),
         "  profiles.shop.gates.copy_choice_margin: Input should be greater than or equal to 0 (got -0.1)"),
        # a base value every profile overrides is still checked: the next profile would inherit it
        (lambda raw: [raw["data"].update(n_products=-3)] + [p.setdefault("data", {}).update(n_products=10) for p in raw["profiles"].values()],
         "  data.n_products: Input should be greater than 0 (got -3) [base value; used by no profile (each overrides it)]"),
        (lambda raw: raw["profiles"]["full"].update(paths={"state": 3}), "  profile 'full': paths must map names to path strings"),
    ],
)
def test_a_mistake_in_a_profile_not_loaded_fails_every_load(tmp_path, edit, line):
    from components.config import OtherProfilesInvalid

    params = _edited_params(tmp_path, edit)
    with pytest.raises(OtherProfilesInvalid) as caught:
        load_config(params, "quick")
    text = config_error_text(caught.value, params, "quick")
    assert text.startswith(f"{params}: profile 'quick' is valid, but 1 invalid setting of the base or other profiles")
    assert text.splitlines()[1].startswith(line), text


def test_the_profile_loaded_reports_its_own_mistakes_first(tmp_path):
    params = _edited_params(tmp_path, lambda raw: raw["preference"].update(max_epochs="ten"))
    with pytest.raises(ValidationError, match="max_epochs"):
        load_config(params, "full")
