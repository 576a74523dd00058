"""Privacy: keyed pseudonymization of user ids and a k-anonymity check on quasi-identifiers.

Pseudonyms are HMAC-SHA256(key, raw_id): stable for one key (so a shopper's events stay joined
across batches), unlinkable to the raw id without the key, and different under another key.
The key comes from the environment variable cfg.privacy.key_env, else from the git-ignored key
file cfg.paths.pseudonym_key_file (created on first use, mode 0600). The key is never logged,
printed or written into any summary.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from components.config import Config

PSEUDONYM_PREFIX = "u_"
PSEUDONYM_HEX_CHARS = 32  # 128 bits: collisions are negligible for any realistic user count


@dataclass(frozen=True)
class PseudonymKey:
    secret: bytes
    origin: str  # "env:<NAME>" or "file" — safe to report; the secret itself never is

    def __repr__(self) -> str:  # keep the secret out of logs and tracebacks
        return f"PseudonymKey(origin={self.origin!r}, secret=<hidden>)"


def create_key_file(path: Path) -> None:
    """Write a fresh random key, readable by the owner only (created 0600 atomically, never wider)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(secrets.token_hex(32) + "\n")


def load_key(cfg: Config) -> PseudonymKey:
    """The pseudonymization key: $<key_env> if set and non-empty, else the key file (created if missing)."""
    from_env = os.environ.get(cfg.privacy.key_env, "").strip()
    if from_env:
        return PseudonymKey(from_env.encode("utf-8"), f"env:{cfg.privacy.key_env}")
    path = Path(cfg.paths.pseudonym_key_file)
    if not path.exists():
        try:
            create_key_file(path)
        except FileExistsError:
            pass  # another process created it first; use theirs
    secret = path.read_text(encoding="utf-8").strip()
    if not secret:
        raise ValueError(f"pseudonym key file {path} is empty; delete it to create a new key")
    return PseudonymKey(secret.encode("utf-8"), "file")


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
