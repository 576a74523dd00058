"""Privacy: keyed pseudonymization of user ids and a k-anonymity check on quasi-identifiers.

Pseudonyms are HMAC-SHA256(key, raw_id): stable for one key (so a shopper's events stay joined
across batches), unlinkable to the raw id without the key, and different under another key.
The key comes from the environment variable cfg.privacy.key_env, else from the git-ignored key
file cfg.paths.pseudonym_key_file (mode 0600). The key is never logged, printed or written into
any summary; its fingerprint (`key_id`) is.

A changed key silently splits every shopper's history (new pseudonyms, a frozen evaluation set
of strangers, a server that knows nobody), so each profile records the fingerprint of the key
its data was pseudonymized with (state/<profile>/pseudonym_key.json). A key file is created only
for a profile with no such record; any other key is refused until `copyflow rotate-key`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import stat
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from components.config import Config

PSEUDONYM_PREFIX = "u_"
PSEUDONYM_HEX_CHARS = 32  # 128 bits: collisions are negligible for any realistic user count
# A short key ("abc", a word) is found by brute force from one known (raw id, pseudonym) pair,
# which un-pseudonymizes every id. The generated key is 64 hex characters.
MIN_KEY_BYTES = 32
KEY_STAGE = "pseudonym_key"
KEY_RECORD_FILE = "pseudonym_key.json"


class PseudonymKeyError(ValueError):
    """The key is missing, weak, readable by others, or not the one the profile's data was made with."""


@dataclass(frozen=True)
class PseudonymKey:
    secret: bytes
    origin: str  # "env:<NAME>" or "file" — safe to report; the secret itself never is

    @property
    def key_id(self) -> str:
        """A fingerprint safe to log and compare across runs: which key made a batch's pseudonyms."""
        return hmac.new(self.secret, b"copyflow pseudonym key id", hashlib.sha256).hexdigest()[:12]

    def __repr__(self) -> str:  # keep the secret out of logs and tracebacks
        return f"PseudonymKey(origin={self.origin!r}, key_id={self.key_id!r}, secret=<hidden>)"


def create_key_file(path: Path) -> None:
    """Write a fresh random key, readable by the owner only (created 0600 atomically, never wider)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(secrets.token_hex(32) + "\n")


def load_key(cfg: Config, create: bool = False) -> PseudonymKey:
    """The pseudonymization key: $<key_env> if set, else the key file (created only when `create`)."""
    env_name = cfg.privacy.key_env
    if env_name in os.environ:
        from_env = os.environ[env_name].strip()
        if not from_env:
            raise PseudonymKeyError(f"${env_name} is set but blank; unset it to use the key file {cfg.paths.pseudonym_key_file}")
        return _strong(PseudonymKey(from_env.encode("utf-8"), f"env:{env_name}"), f"${env_name}")
    path = Path(cfg.paths.pseudonym_key_file)
    if not path.exists():
        if not create:
            raise PseudonymKeyError(f"no pseudonym key: ${env_name} is unset and {path} does not exist; use the key "
                                    "this profile's data was pseudonymized with (copy the file or set the variable)")
        try:
            create_key_file(path)
        except FileExistsError:
            pass  # another process created it first; use theirs
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise PseudonymKeyError(f"pseudonym key file {path} is readable by other users (mode {mode:o}); run: chmod 600 {path}")
    secret = path.read_text(encoding="utf-8").strip()
    if not secret:
        raise PseudonymKeyError(f"pseudonym key file {path} is empty; restore the key this profile's data was made with")
    return _strong(PseudonymKey(secret.encode("utf-8"), "file"), str(path))


def _strong(key: PseudonymKey, where: str) -> PseudonymKey:
    if len(key.secret) < MIN_KEY_BYTES:
        raise PseudonymKeyError(f"the pseudonym key from {where} is {len(key.secret)} bytes; use at least {MIN_KEY_BYTES} "
                                "(for example: python -c 'import secrets; print(secrets.token_hex(32))')")
    return key


def _record_path(cfg: Config) -> Path:
    return cfg.state_dir() / KEY_RECORD_FILE


def recorded_key_id(cfg: Config) -> str | None:
    """The fingerprint of the key the profile's data was pseudonymized with, if it has data.

    The record in state/, else the last ingested batch's summary (a project from before the record)."""
    record = _record_path(cfg)
    if record.exists():
        return json.loads(record.read_text(encoding="utf-8"))["key_id"]
    return ingested_key_id(cfg)


def ingested_key_id(cfg: Config) -> str | None:
    """The fingerprint of the key the profile's ingested batch was made with (None: none recorded)."""
    summary = cfg.stage_dir("ingested") / "summary.json"
    return json.loads(summary.read_text(encoding="utf-8")).get("pseudonym_key_id") if summary.exists() else None


def _write_record(cfg: Config, key: PseudonymKey, note: str) -> None:
    path = _record_path(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"key_id": key.key_id, "since": datetime.now(UTC).isoformat(timespec="seconds"), "note": note}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


def profile_key(cfg: Config) -> PseudonymKey:
    """The key to pseudonymize this profile's ids with: the recorded one, or a new one for a
    profile with no data yet (recorded now). Any other key is refused, naming both fingerprints."""
    expected = recorded_key_id(cfg)
    if expected is None:
        key = load_key(cfg, create=True)
        _write_record(cfg, key, "first ingest of the profile")
        return key
    return key_of_record(cfg)


def key_of_record(cfg: Config) -> PseudonymKey:
    """The profile's key of record, never created here (`copyflow forget`): the key file or the
    variable, refused when it is not the one the profile's data was pseudonymized with. A profile
    with no data yet has no record: its existing key is the one its first ingest will record."""
    expected = recorded_key_id(cfg)
    try:
        key = load_key(cfg)
    except PseudonymKeyError as exc:
        if expected is None:
            raise
        raise PseudonymKeyError(f"{exc}. Profile {cfg.profile!r} was pseudonymized with key {expected}; to start over "
                                f"with a new key on purpose: copyflow rotate-key --profile {cfg.profile}") from exc
    if expected is not None and key.key_id != expected:
        raise PseudonymKeyError(
            f"the pseudonym key ({key.origin}, key {key.key_id}) is not the one profile {cfg.profile!r} was pseudonymized "
            f"with (key {expected}): every shopper would get a new id, splitting their history from the frozen "
            f"evaluation set and the served models. Restore that key, or rotate on purpose: "
            f"copyflow rotate-key --profile {cfg.profile}")
    return key


def key_for_data(cfg: Config) -> PseudonymKey:
    """The key to turn a shop's raw ids into the pseudonyms of the profile's ingested data (a
    server, a CLI): never created here, and refused when the data was made with another key."""
    key = load_key(cfg)
    made_with = ingested_key_id(cfg)
    if made_with and made_with != key.key_id:
        raise PseudonymKeyError(f"the pseudonym key here ({key.origin}, key {key.key_id}) is not the one profile "
                                f"{cfg.profile!r}'s data was pseudonymized with (key {made_with}): no shopper would be "
                                "recognized. Use that key (the key file or the environment variable training used)")
    return key


def rotate_key(cfg: Config) -> dict[str, Any]:
    """Make the current key (a new key file if there is none) the profile's key of record; the
    next retrain re-pseudonymizes every shopper with it, and the gate re-freezes the preference
    evaluation set, whose shoppers' ids changed (components/evaluation/frozen.py)."""
    previous = recorded_key_id(cfg)
    key = load_key(cfg, create=True)
    if key.key_id != previous:
        _write_record(cfg, key, f"rotated from key {previous}")
    return {"key_id": key.key_id, "previous": previous, "changed": key.key_id != previous}


def run_key_check(cfg: Config) -> dict[str, Any]:
    """Pipeline stage `pseudonym_key`: which key pseudonymizes this run (its fingerprint only).

    DVC cannot hash a secret kept outside the repository, so this stage runs every time and
    writes the fingerprint; `ingest` depends on it, so it re-runs exactly when the key changes,
    and DVC's run cache never restores ids made with another key. The fingerprint of the set of
    erased shoppers (`copyflow forget`) is written too: an erasure re-runs ingest, which drops them."""
    from components.data.erasure import forgotten_digest  # erasure pseudonymizes with this module

    key = profile_key(cfg)
    out_dir = cfg.stage_dir(KEY_STAGE)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = {"stage": KEY_STAGE, "key_id": key.key_id, "forgotten_shoppers": forgotten_digest(cfg)}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def pseudonym(raw_id: str, key: PseudonymKey) -> str:
    digest = hmac.new(key.secret, raw_id.encode("utf-8"), hashlib.sha256).hexdigest()
    return PSEUDONYM_PREFIX + digest[:PSEUDONYM_HEX_CHARS]


def pseudonymize(ids: pd.Series, key: PseudonymKey) -> pd.Series:
    """Replace every non-null id by its keyed pseudonym (computed once per distinct id)."""
    distinct = ids.dropna().unique()
    mapping = {raw: pseudonym(str(raw), key) for raw in distinct}
    return ids.map(mapping).astype(object).where(ids.notna(), None)


def k_anonymity(users: pd.DataFrame, quasi_identifiers: list[str], k_min: int) -> dict[str, Any]:
    """Size of the smallest group of users sharing all quasi-identifiers (missing = its own value)."""
    missing = [c for c in quasi_identifiers if c not in users.columns]
    if missing:
        raise ValueError(f"k-anonymity: quasi-identifier columns {missing} not in users {list(users.columns)}")
    if users.empty:
        return {"quasi_identifiers": quasi_identifiers, "k_min": k_min, "smallest_group": 0, "groups": 0,
                "groups_below_k": 0, "users_below_k": 0, "satisfied": False}
    sizes = users.groupby(quasi_identifiers, dropna=False).size()
    below = sizes[sizes < k_min]
    return {
        "quasi_identifiers": list(quasi_identifiers),
        "k_min": k_min,
        "smallest_group": int(sizes.min()),
        "groups": int(len(sizes)),
        "groups_below_k": int(len(below)),
        "users_below_k": int(below.sum()),
        "satisfied": bool(sizes.min() >= k_min),
    }
