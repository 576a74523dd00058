"""Open Bandit Dataset (ZOZOTOWN click logs with logging propensities) -> the raw layer.

`fetch_obd` obtains the small sample that ships inside the PyPI package `obp` (downloaded with
pip, never installed) and extracts its CSVs:

    <dest>/<behavior_policy>/<campaign>/<campaign>.csv       one row per impression:
        (index), timestamp, item_id, position (1-3), click (0/1), propensity_score,
        user_feature_0..3 (hashed categoricals), user-item_affinity_<item> (floats)
    <dest>/<behavior_policy>/<campaign>/item_context.csv     one row per item:
        (index), item_id, item_feature_0 (numeric, standardized), item_feature_1..3 (hashed)

with behavior_policy in {random, bts} and campaign in {all, men, women}.

Mapping (`obd_raw_layer`):
* events: every row is an impression (item, position, propensity, timestamp); a row with
  click == 1 also yields a click event. OBD records no separate click time, so the click carries
  the impression's timestamp. Value is 0 (OBD has no purchases/prices). copy_id is null.
* users: OBD has NO user ids. A pseudo-user is one distinct combination of the four hashed
  user features, so one pseudo-user may be many real people (and vice versa). OBD publishes no
  age or city: age_band and city_tier are "unknown"; signup_date is the pseudo-user's first day.
* products: one per item; attributes = the hashed categorical item features plus the quintile of
  item_feature_0; category = the coarsest categorical item feature (fewest distinct values).
  price = item_feature_0 only when it is numeric and positive; in the OBD release it is
  standardized (it has negative values), so price is null and `notes` says why.
* copies: OBD has no marketing copy, so the copies table is empty.
The precomputed user-item_affinity columns are not carried over (not part of the schema).
"""

from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd

from components.data.raw import RAW_COLUMNS, RawFormatError, read_utf8

OBD_PACKAGE_DIR = "obp/dataset/obd/"
LOG_COLUMNS = ["timestamp", "item_id", "position", "click", "propensity_score"]
UNKNOWN = "unknown"
SOURCE = "obd"


class ObdFetchError(RuntimeError):
    """The obp package could not be downloaded or holds no OBD CSVs."""


@dataclass(frozen=True)
class ObdLayer:
    tables: dict[str, pd.DataFrame]
    params: dict[str, Any]


def _csv_members(names: list[str]) -> dict[str, str]:
    """archive member -> path relative to obp/dataset/obd/, for the CSV files only."""
    members = {}
    for name in names:
        if OBD_PACKAGE_DIR not in name or not name.endswith(".csv"):
            continue
        relative = PurePosixPath(name.split(OBD_PACKAGE_DIR, 1)[1])
        if relative.is_absolute() or ".." in relative.parts:
            raise ObdFetchError(f"refusing unsafe archive member path {name!r}")
        members[name] = str(relative)
    return members


def extract_obd_csvs(archive: Path, dest_dir: Path) -> list[Path]:
    """Copy the OBD CSVs out of an obp wheel (zip) or sdist (tar.gz) into dest_dir."""
    written = []
    if archive.suffix in {".whl", ".zip"}:
        with zipfile.ZipFile(archive) as zf:
            for member, relative in _csv_members(zf.namelist()).items():
                target = dest_dir / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(member) as src, target.open("wb") as dst:
                    shutil.copyfileobj(src, dst)
                written.append(target)
    elif archive.name.endswith((".tar.gz", ".tgz")):
        with tarfile.open(archive, "r:gz") as tf:
            by_name = {m.name: m for m in tf.getmembers() if m.isfile()}
            for member, relative in _csv_members(list(by_name)).items():
                target = dest_dir / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                src = tf.extractfile(by_name[member])
                assert src is not None  # regular files always have a payload
                with src, target.open("wb") as dst:
                    shutil.copyfileobj(src, dst)
                written.append(target)
    else:
        raise ObdFetchError(f"unexpected obp archive type: {archive.name}")
    if not written:
        raise ObdFetchError(f"{archive.name} contains no CSV under {OBD_PACKAGE_DIR}")
    return sorted(written)


def fetch_obd(dest_dir: Path | str, version: str = "0.4.1") -> Path:
    """Download `obp==version` with pip (no deps, not installed) and extract the OBD CSVs to dest_dir."""
    dest_dir = Path(dest_dir)
    with tempfile.TemporaryDirectory(prefix="obp-download-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               f"obp=={version}", "--dest", tmp]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            detail = (result.stderr or result.stdout).strip()[-2000:]
            hint = " (this Python has no pip: run `python -m ensurepip`)" if "No module named pip" in detail else ""
            raise ObdFetchError(f"`{' '.join(cmd[1:])}` failed with exit code {result.returncode}{hint}:\n{detail}")
        archives = sorted(Path(tmp).glob("obp-*"))
        if not archives:
            raise ObdFetchError(f"pip reported success but downloaded no obp archive into {tmp}")
        dest_dir.mkdir(parents=True, exist_ok=True)
        extract_obd_csvs(archives[0], dest_dir)
    return dest_dir


def read_obd_csv(path: Path, required: list[str]) -> pd.DataFrame:
    """An OBD CSV (first column is an unnamed row index) with a clear error for a bad file."""
    if not path.exists():
        raise FileNotFoundError(f"OBD file not found: {path} (run `copyflow fetch-obd` first)")
    try:
        df = pd.read_csv(io.StringIO(read_utf8(path)), index_col=0)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise RawFormatError(f"{path}: malformed CSV: {exc}") from exc
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise RawFormatError(f"{path}: missing columns {missing}; header has {list(df.columns)[:12]}")
    return df


def join_columns(df: pd.DataFrame, sep: str) -> pd.Series:
    """Row-wise string join of all columns (vectorized; DataFrame.agg over rows is slow)."""
    joined = df.iloc[:, 0].astype(str)
    for column in df.columns[1:]:
        joined = joined + sep + df[column].astype(str)
    return joined


def pseudo_user_ids(logs: pd.DataFrame, feature_columns: list[str]) -> pd.Series:
    """One raw pseudo-user id per distinct combination of the hashed user features."""
    combo = join_columns(logs[feature_columns].astype(str), "|")
    ids = {c: "obd-user-" + hashlib.sha1(c.encode("utf-8")).hexdigest()[:16] for c in combo.unique()}
    return combo.map(ids)


def item_products(items: pd.DataFrame, campaign: str) -> tuple[pd.DataFrame, list[str], str]:
    """item_context rows -> raw products (content in key#value notation); returns notes, category column."""
    feature_columns = [c for c in items.columns if c.startswith("item_feature_")]
    # Only float columns are numeric: a hashed categorical whose hashes are all digits reads as int.
    numeric = [c for c in feature_columns if pd.api.types.is_float_dtype(items[c])]
    categorical = [c for c in feature_columns if c not in numeric]
    if not categorical:
        raise RawFormatError(f"item_context has no categorical item_feature_* column: {feature_columns}")
    category_column = min(categorical, key=lambda c: (items[c].nunique(), c))
    notes = [f"category = {category_column} (the coarsest hashed categorical item feature)"]
    attributes = items[categorical].astype(str).radd([f"{c}#" for c in categorical])
    for column in numeric:
        ranks = items[column].rank(method="first")
        quintile = np.ceil(ranks / len(items) * 5).clip(1, 5).astype(int)
        attributes[column] = f"{column}#q" + quintile.astype(str)
    content = join_columns(attributes, "*")
    price: pd.Series = pd.Series(np.nan, index=items.index)
    if "item_feature_0" in numeric and (items["item_feature_0"] > 0).all():
        price = items["item_feature_0"].astype(float)
        notes.append("price = item_feature_0 (numeric and positive)")
    else:
        notes.append(
            "price is null: item_feature_0 is not a usable price (in the OBD release it is a "
            "standardized numeric feature with negative values); its quintile is kept as an attribute"
        )
    products = pd.DataFrame(
        {
            "product_id": [f"obd-{campaign}-item{int(i)}" for i in items["item_id"]],
            "category": items[category_column].astype(str).to_numpy(),
            "content": content.to_numpy(),
            "price": price.to_numpy(),
            "source": SOURCE,
        }
    )
    return products, notes, category_column


def obd_raw_layer(obd_dir: Path | str, behavior_policy: str, campaign: str) -> ObdLayer:
    """Map one OBD policy/campaign sample into the raw-layer tables (raw pseudo-user ids)."""
    base = Path(obd_dir) / behavior_policy / campaign
    logs = read_obd_csv(base / f"{campaign}.csv", LOG_COLUMNS)
    items = read_obd_csv(base / "item_context.csv", ["item_id"])
    user_columns = sorted(c for c in logs.columns if c.startswith("user_feature_"))
    if not user_columns:
        raise RawFormatError(f"{base / f'{campaign}.csv'}: no user_feature_* columns")
    products, notes, category_column = item_products(items, campaign)
    unknown_items = sorted(set(logs["item_id"]) - set(items["item_id"]))
    if unknown_items:
        raise RawFormatError(f"{base / f'{campaign}.csv'}: item_id values not in item_context.csv: {unknown_items[:5]}")

    timestamps = pd.to_datetime(logs["timestamp"], utc=True, format="ISO8601")
    user_ids = pseudo_user_ids(logs, user_columns)
    prefix = f"obd-{behavior_policy}-{campaign}-"
    impressions = pd.DataFrame(
        {
            "event_id": [f"{prefix}{i}-impression" for i in logs.index],
            "user_id": user_ids.to_numpy(),
            "product_id": [f"obd-{campaign}-item{int(i)}" for i in logs["item_id"]],
            "copy_id": None,
            "event_type": "impression",
            "timestamp": timestamps.to_numpy(),
            "position": logs["position"].astype("Int64").to_numpy(),
            "propensity": logs["propensity_score"].astype(float).to_numpy(),
            "value": 0.0,
        }
    )
    clicked = (logs["click"] == 1).to_numpy()
    clicks = impressions[clicked].copy()
    clicks["event_id"] = [f"{prefix}{i}-click" for i in logs.index[clicked]]
    clicks["event_type"] = "click"
    events = pd.concat([impressions, clicks]).sort_values(["timestamp", "event_type"], kind="stable", ignore_index=True)
    events["timestamp"] = pd.to_datetime(events["timestamp"], utc=True)

    first_seen = events.groupby("user_id")["timestamp"].min()
    users = pd.DataFrame(
        {
            "user_id": first_seen.index.to_numpy(),
            "age_band": UNKNOWN,
            "city_tier": UNKNOWN,
            "signup_date": first_seen.dt.strftime("%Y-%m-%d").to_numpy(),
        }
    )
    copies = pd.DataFrame(columns=RAW_COLUMNS["copies"])
    notes += [
        "users are pseudo-users: OBD has no user ids, so one user = one combination of "
        f"{', '.join(user_columns)}",
        "age_band/city_tier are 'unknown' (OBD publishes no demographics)",
        "copies table is empty and events.copy_id is null (OBD has no marketing copy)",
        "click events carry their impression's timestamp (OBD records no click time)",
    ]
    params = {
        "source": SOURCE,
        "behavior_policy": behavior_policy,
        "campaign": campaign,
        "log_rows": int(len(logs)),
        "clicks": int(clicked.sum()),
        "category_feature": category_column,
        "user_features": user_columns,
        "notes": notes,
    }
    return ObdLayer({"products": products, "copies": copies, "users": users, "events": events}, params)
