import json
import stat

import pandas as pd
import pytest

from components.data.privacy import (
    MIN_KEY_BYTES,
    PseudonymKeyError,
    k_anonymity,
    key_for_data,
    load_key,
    profile_key,
    pseudonym,
    pseudonymize,
    recorded_key_id,
    rotate_key,
    run_key_check,
)

ENV_KEY = "a-secret-from-the-environment-" + "x" * 40


@pytest.fixture(autouse=True)
def no_env_key(cfg, monkeypatch):
    monkeypatch.delenv(cfg.privacy.key_env, raising=False)


def test_key_file_is_created_private_and_reused(cfg):
    path = cfg.paths.pseudonym_key_file
    assert not path.exists()
    with pytest.raises(PseudonymKeyError, match="does not exist"):
        load_key(cfg)  # a server or CLI never makes up a key: every shopper would be unknown
    key = load_key(cfg, create=True)
    assert key.origin == "file" and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(path.read_text().strip()) == 64
    assert load_key(cfg).secret == key.secret
    assert key.secret.decode() not in repr(key) and key.key_id in repr(key)


def test_env_key_wins_over_the_file(cfg, monkeypatch):
    file_key = load_key(cfg, create=True)
    monkeypatch.setenv(cfg.privacy.key_env, ENV_KEY)
    env_key = load_key(cfg)
    assert env_key.origin == f"env:{cfg.privacy.key_env}" and env_key.secret != file_key.secret


def test_pseudonyms_are_stable_per_key_and_differ_across_keys(cfg, monkeypatch):
    ids = pd.Series(["shopper000001", "shopper000002", None, "shopper000001"])
    key = load_key(cfg, create=True)
    first, again = pseudonymize(ids, key), pseudonymize(ids, key)
    assert first.equals(again)
    assert first[0] == first[3] != first[1] and first[2] is None
    assert first[0].startswith("u_") and "shopper" not in first[0]
    monkeypatch.setenv(cfg.privacy.key_env, ENV_KEY)
    assert pseudonym("shopper000001", load_key(cfg)) != first[0]


def test_empty_key_file_is_an_error(cfg):
    cfg.paths.pseudonym_key_file.write_text("\n")
    cfg.paths.pseudonym_key_file.chmod(0o600)
    with pytest.raises(PseudonymKeyError, match="empty"):
        load_key(cfg)


def test_weak_blank_or_readable_keys_are_refused(cfg, monkeypatch):
    # "abc" is found by brute force from one known (raw id, pseudonym) pair in milliseconds
    monkeypatch.setenv(cfg.privacy.key_env, "abc")
    with pytest.raises(PseudonymKeyError, match=f"3 bytes; use at least {MIN_KEY_BYTES}"):
        load_key(cfg)
    monkeypatch.setenv(cfg.privacy.key_env, "k" * (MIN_KEY_BYTES - 1))  # one byte short is refused too
    with pytest.raises(PseudonymKeyError, match=f"{MIN_KEY_BYTES - 1} bytes; use at least"):
        load_key(cfg)
    monkeypatch.setenv(cfg.privacy.key_env, "k" * MIN_KEY_BYTES)
    assert load_key(cfg).origin == f"env:{cfg.privacy.key_env}"
    monkeypatch.setenv(cfg.privacy.key_env, "  ")
    with pytest.raises(PseudonymKeyError, match="set but blank"):
        load_key(cfg)  # not a silent fall-back to the key file
    monkeypatch.delenv(cfg.privacy.key_env)
    path = cfg.paths.pseudonym_key_file
    path.write_text("k" * 64 + "\n")
    path.chmod(0o644)
    with pytest.raises(PseudonymKeyError, match="readable by other users .*chmod 600"):
        load_key(cfg)
    path.chmod(0o640)  # readable by the group is readable by others too
    with pytest.raises(PseudonymKeyError, match="readable by other users \\(mode 640\\)"):
        load_key(cfg)
    path.chmod(0o600)
    assert load_key(cfg).origin == "file"


def test_the_profile_keeps_its_key_until_rotated_on_purpose(cfg, monkeypatch):
    assert recorded_key_id(cfg) is None
    first = profile_key(cfg)  # the first use creates the key file and records its fingerprint
    assert recorded_key_id(cfg) == first.key_id and first.secret.decode() not in first.key_id
    assert run_key_check(cfg) == {"stage": "pseudonym_key", "key_id": first.key_id, "forgotten_shoppers": "none"}
    assert first.secret.decode() not in (cfg.stage_dir("pseudonym_key") / "summary.json").read_text()

    monkeypatch.setenv(cfg.privacy.key_env, ENV_KEY)
    other = load_key(cfg).key_id
    with pytest.raises(PseudonymKeyError, match=f"key {other}.*not the one.*key {first.key_id}.*copyflow rotate-key"):
        run_key_check(cfg)
    monkeypatch.delenv(cfg.privacy.key_env)
    moved = cfg.paths.pseudonym_key_file.rename(cfg.paths.pseudonym_key_file.with_suffix(".bak"))
    with pytest.raises(PseudonymKeyError, match=f"does not exist.*pseudonymized with key {first.key_id}"):
        profile_key(cfg)  # a lost key file is not silently replaced by a new one
    assert not cfg.paths.pseudonym_key_file.exists()
    moved.rename(cfg.paths.pseudonym_key_file)

    monkeypatch.setenv(cfg.privacy.key_env, ENV_KEY)
    assert rotate_key(cfg) == {"key_id": other, "previous": first.key_id, "changed": True}
    assert profile_key(cfg).key_id == other == recorded_key_id(cfg)
    assert rotate_key(cfg)["changed"] is False


def test_a_server_refuses_a_key_other_than_its_datas(cfg, monkeypatch):
    key = profile_key(cfg)
    ingested = cfg.stage_dir("ingested")
    ingested.mkdir(parents=True)
    (ingested / "summary.json").write_text(json.dumps({"pseudonym_key_id": key.key_id}))
    assert key_for_data(cfg).key_id == key.key_id
    monkeypatch.setenv(cfg.privacy.key_env, ENV_KEY)
    with pytest.raises(PseudonymKeyError, match="no shopper would be recognized"):
        key_for_data(cfg)


def test_k_anonymity_reports_smallest_group():
    users = pd.DataFrame(
        {"age_band": ["18-24"] * 5 + ["25-34"] * 2 + [None], "city_tier": ["tier1"] * 5 + ["tier2"] * 2 + ["tier2"]}
    )
    report = k_anonymity(users, ["age_band", "city_tier"], 3)
    assert report["smallest_group"] == 1 and report["groups"] == 3
    assert report["groups_below_k"] == 2 and report["users_below_k"] == 3 and not report["satisfied"]
    with pytest.raises(ValueError, match="zip_code"):
        k_anonymity(users, ["zip_code"], 3)
    exactly_k = k_anonymity(users, ["age_band", "city_tier"], 5)  # the group of 5 is 5-anonymous
    assert exactly_k["groups_below_k"] == 2 and exactly_k["users_below_k"] == 3
    assert k_anonymity(users.iloc[:5], ["age_band"], 5)["satisfied"]


def test_a_pseudonym_is_the_keyed_sha256_cut_to_128_bits(cfg, monkeypatch):
    """The definition the ingested data was made with: changing it (a shorter cut collides at tens
    of thousands of shoppers, another hash renames everyone) would split every history."""
    import hashlib
    import hmac

    monkeypatch.setenv(cfg.privacy.key_env, ENV_KEY)
    expected = hmac.new(ENV_KEY.encode("utf-8"), b"shopper000001", hashlib.sha256).hexdigest()[:32]
    assert pseudonym("shopper000001", load_key(cfg)) == "u_" + expected
