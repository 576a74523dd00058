import stat

import pandas as pd
import pytest

from components.data.privacy import k_anonymity, load_key, pseudonym, pseudonymize


@pytest.fixture(autouse=True)
def no_env_key(cfg, monkeypatch):
    monkeypatch.delenv(cfg.privacy.key_env, raising=False)


def test_key_file_is_created_private_and_reused(cfg):
    path = cfg.paths.pseudonym_key_file
    assert not path.exists()
    key = load_key(cfg)
    assert key.origin == "file" and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(path.read_text().strip()) == 64
    assert load_key(cfg).secret == key.secret
    assert key.secret.decode() not in repr(key)


def test_env_key_wins_over_the_file(cfg, monkeypatch):
    file_key = load_key(cfg)
    monkeypatch.setenv(cfg.privacy.key_env, "a-secret-from-the-environment")
    env_key = load_key(cfg)
    assert env_key.origin == f"env:{cfg.privacy.key_env}" and env_key.secret != file_key.secret


def test_pseudonyms_are_stable_per_key_and_differ_across_keys(cfg, monkeypatch):
    ids = pd.Series(["shopper000001", "shopper000002", None, "shopper000001"])
    key = load_key(cfg)
    first, again = pseudonymize(ids, key), pseudonymize(ids, key)
    assert first.equals(again)
    assert first[0] == first[3] != first[1] and first[2] is None
    assert first[0].startswith("u_") and "shopper" not in first[0]
    monkeypatch.setenv(cfg.privacy.key_env, "another key")
    assert pseudonym("shopper000001", load_key(cfg)) != first[0]


def test_empty_key_file_is_an_error(cfg):
    cfg.paths.pseudonym_key_file.write_text("\n")
    with pytest.raises(ValueError, match="empty"):
        load_key(cfg)


def test_k_anonymity_reports_smallest_group():
    users = pd.DataFrame(
        {"age_band": ["18-24"] * 5 + ["25-34"] * 2 + [None], "city_tier": ["tier1"] * 5 + ["tier2"] * 2 + ["tier2"]}
    )
    report = k_anonymity(users, ["age_band", "city_tier"], 3)
    assert report["smallest_group"] == 1 and report["groups"] == 3
    assert report["groups_below_k"] == 2 and report["users_below_k"] == 3 and not report["satisfied"]
    with pytest.raises(ValueError, match="zip_code"):
        k_anonymity(users, ["zip_code"], 3)
