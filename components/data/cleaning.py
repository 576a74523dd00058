"""Pipeline stage `clean`: ingested/ (after the validation gate) -> clean/, every fix counted.

Steps, in order (counts land in summary.json under `removed` and `imputed`):

1. Duplicates: rows repeating an id (events: the same event_id replayed) keep their first copy;
   so does an event equal to an earlier one in every field but its id (a producer that retried
   and minted a new id: the same shopper, product, copy, type, microsecond timestamp, position).
2. Missing values, per column (MISSING_VALUE_POLICY below says what and why):
   rows whose identity or meaning is lost are dropped; descriptive columns are imputed. An
   impression needs its slot, propensity and copy; a click, cart or purchase does not.
3. Out-of-range prices (outside cfg.cleaning.price_min..price_max, e.g. 0 or 999999) are data
   entry errors: they are replaced like a missing price (category median of valid prices).
4. Bots: each user's activity is compared with that of the users with at least
   cfg.cleaning.bot_reference_min_impressions impressions on three signals, as robust z-scores
   (distance from the median in units of the scaled MAD): volume (impressions per active day,
   log), pace (median gap between distinct impression timestamps within a visit, log; faster =
   higher) and click rate (either way). A user with at least cfg.cleaning.bot_min_impressions impressions on
   whom at least cfg.cleaning.bot_min_signals signals reach cfg.cleaning.bot_z (one of them pace,
   with cfg.cleaning.bot_require_pace) is a bot; flagged
   users and all their events are removed, and bot_users.csv lists them with each signal's z.
   The rule is a level of evidence, not a share: a shop with no bots loses no shopper. Volume
   alone never suffices at the default of two signals (a shop's best customers are heavy users).
   It holds while bots are a minority of the reference users (docs/schema.md, "Bots").
   cfg.cleaning.bot_filter: false turns this off where "users" are not people (OBD's
   pseudo-users are segments of shoppers sharing features, so their volume is no bot signal).
5. Referential integrity: events whose user, product or copy no longer exists are dropped,
   as are copies of removed products.
6. k-anonymity over cfg.privacy.quasi_identifiers is reported (smallest group size, users in
   groups smaller than k_anonymity_min); it is a check, it does not alter data.
"""

from __future__ import annotations

import shutil
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import median_abs_deviation

from components.config import Config
from components.data.attributes import category_of
from components.data.privacy import k_anonymity
from components.data.schema import ID_COLUMNS, TABLES, load_all, write_table
from components.data.summary import write_summary

STAGE = "clean"
INPUT_STAGE = "ingested"
UNKNOWN = "unknown"

# table.column -> what cleaning does with a missing value (documentation; enforced below).
MISSING_VALUE_POLICY: dict[str, str] = {
    "events.event_id|user_id|product_id|event_type": "drop row (the event cannot be attributed)",
    "events.timestamp": "drop row (point-in-time features need the time)",
    "events.position": "impressions: drop row (position bias must be known for debiasing); other events: keep (an outcome need not name its slot)",
    "events.propensity": "impressions: drop row (off-policy estimates need the logging propensity); other events: keep",
    "events.copy_id": "impressions: drop row, unless the source has no copies at all (OBD); other events: keep (linked by shopper and product)",
    "events.value": "impute: the product price for a purchase, 0 for any other event",
    "products.product_id|attributes": "drop row",
    "products.category": "impute from the 类型 attribute, else 'unknown'",
    "products.price": "impute the category median of valid prices (null when none exists)",
    "copies.copy_id|product_id|text": "drop row",
    "users.user_id": "drop row",
    "users.age_band|city_tier": "impute 'unknown' (a quasi-identifier value of its own)",
    "users.signup_date": "impute the user's first event day (else the median signup date)",
}


def drop_duplicate_ids(df: pd.DataFrame, table: str) -> tuple[pd.DataFrame, int]:
    keep = ~df[ID_COLUMNS[table]].duplicated(keep="first") | df[ID_COLUMNS[table]].isna()
    return df[keep].reset_index(drop=True), int((~keep).sum())


def drop_replayed_events(events: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Events equal to an earlier one in every field but event_id: one impression or click sent
    twice under fresh ids would double-count it in labels and frequency features."""
    replayed = events.duplicated([c for c in events.columns if c != "event_id"], keep="first")
    return events[~replayed].reset_index(drop=True), int(replayed.sum())


def drop_missing(df: pd.DataFrame, columns: list[str]) -> tuple[pd.DataFrame, int]:
    missing = df[columns].isna().any(axis=1)
    return df[~missing].reset_index(drop=True), int(missing.sum())


def price_medians(products: pd.DataFrame, valid: pd.Series) -> tuple[pd.Series, float]:
    """Median valid price per category and overall (NaN when no valid price exists)."""
    valid_prices = products.loc[valid, ["category", "price"]]
    return valid_prices.groupby("category")["price"].median(), float(valid_prices["price"].median())


def clean_products(products: pd.DataFrame, cfg: Config) -> tuple[pd.DataFrame, dict[str, int], dict[str, int]]:
    removed: dict[str, int] = {}
    imputed: dict[str, int] = {}
    products, removed["duplicate_products"] = drop_duplicate_ids(products, "products")
    products, removed["products_missing_required"] = drop_missing(products, ["product_id", "attributes"])
    products = products.copy()

    no_category = products["category"].isna()
    products.loc[no_category, "category"] = [category_of(a) for a in products.loc[no_category, "attributes"]]
    imputed["products.category"] = int(no_category.sum())
    products["source"] = products["source"].fillna(UNKNOWN)

    price = products["price"]
    out_of_range = price.notna() & ((price < cfg.cleaning.price_min) | (price > cfg.cleaning.price_max))
    missing = price.isna()
    by_category, overall = price_medians(products, ~out_of_range & ~missing)
    fill = products["category"].map(by_category).fillna(overall)
    products.loc[out_of_range | missing, "price"] = fill[out_of_range | missing]
    imputed["products.price_missing"] = int((missing & fill.notna()).sum())
    imputed["products.price_out_of_range"] = int(out_of_range.sum())
    imputed["products.price_unavailable"] = int(products["price"].isna().sum())  # e.g. OBD: no prices at all
    return products, removed, imputed


def clean_copies(copies: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
    removed: dict[str, int] = {}
    copies, removed["duplicate_copies"] = drop_duplicate_ids(copies, "copies")
    copies, removed["copies_missing_required"] = drop_missing(copies, ["copy_id", "product_id", "text"])
    return copies, removed


# Every event needs these; an impression also needs IMPRESSION_REQUIRED (and its copy_id where
# the source has copies). A click, cart or purchase is linked to its impression by shopper and
# product, so its own slot, propensity and copy may be missing (a purchase rarely has a slot).
EVENT_REQUIRED = ["event_id", "user_id", "product_id", "event_type", "timestamp"]
IMPRESSION_REQUIRED = ["position", "propensity"]


class NothingLeft(ValueError):
    """Cleaning would leave a table with no rows: a batch to fix, not data to train on."""


def clean_events(events: pd.DataFrame, copy_less_source: bool) -> tuple[pd.DataFrame, dict[str, int]]:
    removed: dict[str, int] = {}
    events, removed["duplicate_events"] = drop_duplicate_ids(events, "events")
    events, removed["replayed_events"] = drop_replayed_events(events)
    events, removed["events_missing_required"] = drop_missing(events, EVENT_REQUIRED)
    impression_required = IMPRESSION_REQUIRED + ([] if copy_less_source else ["copy_id"])
    bad = (events["event_type"] == "impression") & events[impression_required].isna().any(axis=1)
    events = events[~bad].reset_index(drop=True)
    removed["impressions_missing_required"] = int(bad.sum())
    return events, removed


def require_impressions(events: pd.DataFrame, rows_before: int, removed: dict[str, int]) -> None:
    """Raise NothingLeft, with what removed the rows, when no impression is left to learn from."""
    if (events["event_type"] == "impression").any():
        return
    why = ", ".join(f"{name} {count:,}" for name, count in removed.items() if count and ("event" in name or "impression" in name))
    raise NothingLeft(
        f"clean: no impression is left of the batch's {rows_before:,} events (removed: {why or 'none'}); "
        "fix the export and ingest it again"
    )


def impute_event_values(events: pd.DataFrame, products: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    missing = events["value"].isna()
    price = events["product_id"].map(products.set_index("product_id")["price"])
    events = events.copy()
    events.loc[missing, "value"] = np.where(events.loc[missing, "event_type"] == "purchase", price[missing], 0.0)
    return events, int(missing.sum())


def clean_users(users: pd.DataFrame, events: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int], dict[str, int]]:
    removed: dict[str, int] = {}
    imputed: dict[str, int] = {}
    users, removed["duplicate_users"] = drop_duplicate_ids(users, "users")
    users, removed["users_missing_required"] = drop_missing(users, ["user_id"])
    users = users.copy()
    for column in ("age_band", "city_tier"):
        imputed[f"users.{column}"] = int(users[column].isna().sum())
        users[column] = users[column].fillna(UNKNOWN)
    no_signup = users["signup_date"].isna()
    first_event_day = users["user_id"].map(events.groupby("user_id")["timestamp"].min()).dt.floor("D")
    fill = first_event_day.fillna(users["signup_date"].median())
    users.loc[no_signup, "signup_date"] = fill[no_signup]
    imputed["users.signup_date"] = int(no_signup.sum())
    return users, removed, imputed


def user_activity(events: pd.DataFrame, session_gap_seconds: float) -> pd.DataFrame:
    """Per-user activity features for bot detection (one row per user with any event).

    median_gap_seconds is the pace of browsing: the median gap between the user's consecutive
    distinct impression timestamps within a session (gaps up to session_gap_seconds). Distinct,
    because a shop may stamp a page's impressions with the page's load time; within a session,
    because the hours between two visits say nothing about how fast a person reads; impressions
    only, because a click comes seconds after the impression it answers: counting clicks would
    make an engaged shopper's pace look fast, and pace and click rate one signal, not two. NaN
    where no such gap exists (one impression per visit): no pace to judge. ctr is NaN without
    impressions."""
    ev = events[["user_id", "event_type", "timestamp", "product_id"]].sort_values(["user_id", "timestamp"])
    stamps = ev.loc[ev["event_type"] == "impression", ["user_id", "timestamp"]].drop_duplicates()
    seconds = (stamps["timestamp"] - pd.Timestamp(0, tz="UTC")).dt.total_seconds()
    gaps = seconds.groupby(stamps["user_id"].to_numpy()).diff()
    in_session = gaps.where(gaps <= session_gap_seconds)
    pace = in_session.groupby(stamps["user_id"].to_numpy()).median()
    ev = ev.assign(day=ev["timestamp"].dt.floor("D"))
    grouped = ev.groupby("user_id")
    counts = pd.crosstab(ev["user_id"], ev["event_type"])
    impressions = counts.get("impression", pd.Series(0, index=counts.index))
    clicks = counts.get("click", pd.Series(0, index=counts.index))
    purchases = counts.get("purchase", pd.Series(0, index=counts.index))
    active_days = grouped["day"].nunique()
    return pd.DataFrame(
        {
            "impressions": impressions,
            "clicks": clicks,
            "ctr": (clicks / impressions).where(impressions > 0),
            "purchase_per_click": purchases / clicks.clip(lower=1),
            "active_days": active_days,
            "impressions_per_active_day": impressions / active_days.clip(lower=1),
            "median_gap_seconds": pace.reindex(counts.index),
            "distinct_products_share": grouped["product_id"].nunique() / grouped.size(),
        }
    )


# Iglewicz and Hoaglin's stand-in for the scaled MAD where over half the values are equal
MEAN_ABSOLUTE_DEVIATION_SCALE = 1.2533


def robust_scale(reference: pd.Series) -> tuple[float, float]:
    """(median, spread) of the defined values: the MAD scaled to a normal's standard deviation,
    or where it is 0 (over half the values equal) the scaled mean absolute deviation; spread 0
    only when every value is equal, NaN when none is defined."""
    defined = reference.dropna().to_numpy(dtype=float)
    if defined.size == 0:
        return float("nan"), float("nan")
    median = float(np.median(defined))
    spread = float(median_abs_deviation(defined, scale="normal"))
    if spread == 0:
        spread = MEAN_ABSOLUTE_DEVIATION_SCALE * float(np.mean(np.abs(defined - median)))
    return median, spread


def robust_z(values: pd.Series, reference: pd.Series | None = None) -> pd.Series:
    """(value - median) / spread (`robust_scale` of `reference`, default the values themselves);
    0 where the reference has no spread (no evidence either way), NaN where the value is NaN."""
    median, spread = robust_scale(values if reference is None else reference)
    if not spread > 0:
        return values.where(values.isna(), 0.0).astype(float)
    return (values - median) / spread


BOT_SIGNALS = ("z_volume", "z_pace", "z_click_rate")


def bot_signals(features: pd.DataFrame, reference: pd.Series) -> pd.DataFrame:
    """Each signal's z in the direction a bot deviates (higher = more bot-like), against the
    users marked in `reference` (bool, aligned with features)."""
    volume = np.log1p(features["impressions_per_active_day"])
    pace = np.log1p(features["median_gap_seconds"])
    ctr = features["ctr"]
    return pd.DataFrame(
        {
            "z_volume": robust_z(volume, volume[reference]),
            "z_pace": -robust_z(pace, pace[reference]),
            "z_click_rate": robust_z(ctr, ctr[reference]).abs(),
        },
        index=features.index,
    )


def detect_bots(events: pd.DataFrame, cfg: Config) -> pd.DataFrame:
    """Activity features, each signal's z, how many reach cfg.cleaning.bot_z, and is_bot.

    The yardstick is the users with at least cfg.cleaning.bot_reference_min_impressions
    impressions: a light user's click rate and pace are noise (1 impression, 0 or 1 click), and
    in a real shop light users are the majority. With fewer than
    cfg.cleaning.bot_min_reference_users of them there is no yardstick, and nobody is flagged."""
    c = cfg.cleaning
    features = user_activity(events, c.bot_session_gap_minutes * 60)
    if not c.bot_filter or features.empty:
        return features.assign(**dict.fromkeys(BOT_SIGNALS, np.nan), reference=False, signals=0, is_bot=False)
    reference = features["impressions"] >= c.bot_reference_min_impressions
    if int(reference.sum()) < c.bot_min_reference_users:
        return features.assign(**dict.fromkeys(BOT_SIGNALS, np.nan), reference=reference, signals=0, is_bot=False)
    z = bot_signals(features, reference)
    signals = (z >= c.bot_z).sum(axis=1)  # NaN (no pace to judge) never counts
    eligible = features["impressions"] >= c.bot_min_impressions
    # Volume and click rate together are also how an engaged best customer looks; a bot's tell is
    # its speed, so with bot_require_pace one of its signals must be pace.
    paced = (z["z_pace"] >= c.bot_z) if c.bot_require_pace else True
    is_bot = eligible & (signals >= c.bot_min_signals) & paced
    return pd.concat([features, z.round(2)], axis=1).assign(reference=reference, signals=signals, is_bot=is_bot)


def drop_dangling(
    events: pd.DataFrame, users: pd.DataFrame, products: pd.DataFrame, copies: pd.DataFrame, copy_less_source: bool
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, int]]:
    removed: dict[str, int] = {}
    orphan_copies = ~copies["product_id"].isin(products["product_id"])
    copies = copies[~orphan_copies].reset_index(drop=True)
    removed["copies_of_missing_products"] = int(orphan_copies.sum())
    for column, table, ids in (
        ("user_id", "users", users["user_id"]),
        ("product_id", "products", products["product_id"]),
        ("copy_id", "copies", copies["copy_id"]),
    ):
        if column == "copy_id" and copy_less_source:
            continue
        dangling = events[column].notna() & ~events[column].isin(ids)  # a click may name no copy
        events = events[~dangling].reset_index(drop=True)
        removed[f"events_dangling_{column.removesuffix('_id')}"] = int(dangling.sum())
    return events, copies, removed


def bot_detection_report(activity: pd.DataFrame, cfg: Config) -> dict[str, Any]:
    c = cfg.cleaning
    bots = activity[activity["is_bot"]]
    reference_users = int(activity["reference"].sum()) if "reference" in activity else 0
    if not c.bot_filter:
        method = "disabled (cleaning.bot_filter: false)"
    elif reference_users < c.bot_min_reference_users:
        method = f"skipped: {reference_users} users with >= {c.bot_reference_min_impressions} impressions, fewer than bot_min_reference_users ({c.bot_min_reference_users})"
    else:
        method = "robust z on volume, pace and click rate"
    scored = method.startswith("robust")
    eligible = activity["impressions"] >= c.bot_min_impressions
    return {
        "method": method,
        "z": c.bot_z,
        "min_signals": c.bot_min_signals,
        "min_impressions": c.bot_min_impressions,
        "reference_users": reference_users,
        "users_scored": int(len(activity)),
        "users_flagged": int(len(bots)),
        "flagged_impressions": int(bots["impressions"].sum()),
        # eligible users one signal short of a bot: where to look if bots slip through
        "users_one_signal_short": int((eligible & (activity["signals"] == c.bot_min_signals - 1)).sum()) if scored and c.bot_min_signals > 1 else None,
        # a signal with no spread among the reference users can flag nobody
        "signals_without_spread": [
            name for name, column in (("volume", "impressions_per_active_day"), ("pace", "median_gap_seconds"), ("click_rate", "ctr"))
            if scored and not robust_scale(activity.loc[activity["reference"], column])[1] > 0
        ],
    }


def run_clean(cfg: Config) -> dict[str, Any]:
    """ingested/ -> clean/: dedupe, missing values, price outliers, bots, dangling refs; counts."""
    tables = load_all(cfg.stage_dir(INPUT_STAGE))
    rows_before = {t: int(len(tables[t])) for t in TABLES}
    copy_less_source = tables["copies"].empty
    removed: dict[str, int] = {}
    imputed: dict[str, int] = {}

    products, r, i = clean_products(tables["products"], cfg)
    removed.update(r)
    imputed.update(i)
    copies, r = clean_copies(tables["copies"])
    removed.update(r)
    events, r = clean_events(tables["events"], copy_less_source)
    removed.update(r)
    require_impressions(events, rows_before["events"], removed)
    events, imputed["events.value"] = impute_event_values(events, products)
    users, r, i = clean_users(tables["users"], events)
    removed.update(r)
    imputed.update(i)

    activity = detect_bots(events, cfg)
    bot_ids = activity.index[activity["is_bot"]]
    removed["bot_users"] = int(users["user_id"].isin(bot_ids).sum())
    removed["bot_events"] = int(events["user_id"].isin(bot_ids).sum())
    users = users[~users["user_id"].isin(bot_ids)].reset_index(drop=True)
    events = events[~events["user_id"].isin(bot_ids)].reset_index(drop=True)

    events, copies, r = drop_dangling(events, users, products, copies, copy_less_source)
    removed.update(r)
    require_impressions(events, rows_before["events"], removed)

    out_dir = cfg.stage_dir(STAGE)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    clean = {"products": products, "copies": copies, "users": users, "events": events}
    for table in TABLES:
        write_table(clean[table], out_dir, table)
    activity[activity["is_bot"]].rename_axis("user_id").reset_index().to_csv(out_dir / "bot_users.csv", index=False)

    summary = {
        "stage": STAGE,
        "rows_before": rows_before,
        "rows_after": {t: int(len(clean[t])) for t in TABLES},
        "removed": removed,
        "imputed": imputed,
        "bot_detection": bot_detection_report(activity, cfg),
        "k_anonymity": k_anonymity(users, cfg.privacy.quasi_identifiers, cfg.privacy.k_anonymity_min),
        "missing_value_policy": MISSING_VALUE_POLICY,
    }
    return write_summary(out_dir, summary)
