"""The features stage: clean canonical tables -> point-in-time training samples.

One sample per impression. Every feature of a sample is computed from events with a timestamp
STRICTLY before the impression's (see pit.py), so neither the impression's own click nor any
later event can leak into it; labels are the impression's own outcome.

Outputs (artifacts/<profile>/features/):
  samples.parquet             features + labels + time split, one row per impression
  feature_spec.json           which columns are numeric / categorical / sequence / label / time
  user_affinity.parquet       end-of-data shopper affinities per attribute value (generator focus)
  population_affinity.parquet everyone's affinities (fallback for shoppers without clicks)
  product_attributes.parquet  product attributes, one row per (product, key, value)
  copy_options.parquet        per impression, every catalog copy it could have shown and that
                              copy's features (copy_options.py; for the copy-choice evaluation)
  summary.json                sizes, split sizes, positive rates, cold share, timings
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from components.config import Config, FeaturesConfig
from components.data.schema import EVENT_TYPES, load_table
from components.features.affinity import (
    ClickPairs,
    EventCodes,
    attribute_affinity_features,
    category_affinity_feature,
    copy_preference_mentions,
    population_affinity_table,
    top_value_changes,
    user_affinity_table,
)
from components.features.attribute_index import AttributeIndex, explode_product_attributes
from components.features.copy_mentions import copy_mention_index
from components.features.copy_options import copy_options
from components.features.history import recent_clicked_products
from components.features.labels import impression_labels, link_outcomes
from components.features.pit import NO_EVENT, is_member, prior_last_time, prior_sum, to_epoch_us
from components.features.splits import SPLITS, SplitBoundaries, assign_split, split_boundaries

FEATURE_SET_VERSION = 1
UNKNOWN_CATEGORY = "unknown"  # the category code of a product without one (ua_category_affinity)
RECENCY_SENTINEL_HOURS = 24.0 * 365  # "never seen before"; u_has_history = 0 says so explicitly
US_PER_HOUR = 3_600_000_000
US_PER_DAY = 24 * US_PER_HOUR

NUMERIC_FEATURES: tuple[str, ...] = (
    "u_recency_hours",
    "u_has_history",
    "u_n_events",
    "u_n_impressions",
    "u_n_clicks",
    "u_n_add_to_cart",
    "u_n_purchases",
    "u_ctr",
    "u_monetary",
    "u_days_since_signup",
    "p_log_price",
    "p_n_impressions",
    "p_ctr",
    "up_n_impressions",
    "up_n_clicks",
    "ua_attr_affinity",
    "ua_attr_affinity_max",
    "ua_category_affinity",
    "uc_copy_pref_mentions",
    "position",
)
CATEGORICAL_FEATURES: tuple[str, ...] = ("user_id", "product_id", "category")
SEQUENCE_FEATURES: tuple[str, ...] = ("hist_products",)
ID_COLUMNS: tuple[str, ...] = ("event_id", "user_id", "product_id", "copy_id", "category", "timestamp")
SAMPLE_COLUMNS: tuple[str, ...] = (
    *ID_COLUMNS,
    "propensity",
    "label",
    "label_purchase",
    "is_cold",
    "hist_products",
    *NUMERIC_FEATURES,
)


class FeatureInputError(ValueError):
    """The clean tables cannot be turned into features (names the table, column and examples)."""


@dataclass(frozen=True)
class FeatureTables:
    samples: pd.DataFrame  # SAMPLE_COLUMNS + split
    user_affinity: pd.DataFrame
    population_affinity: pd.DataFrame
    product_attributes: pd.DataFrame
    copy_options: pd.DataFrame  # copy_options.COLUMNS, for impressions in samples
    report: dict


def feature_spec() -> dict:
    return {
        "numeric": list(NUMERIC_FEATURES),
        "categorical": list(CATEGORICAL_FEATURES),
        "sequence": list(SEQUENCE_FEATURES),
        "label": "label",
        "time": "timestamp",
        "id": "event_id",
        "label_purchase": "label_purchase",
        "split": "split",
        "cold": "is_cold",
        "version": FEATURE_SET_VERSION,
    }


# ---------------------------------------------------------------- input checks


def _fail_if(bad: pd.Series | np.ndarray, what: str, frame: pd.DataFrame, columns: list[str]) -> None:
    """Raise naming the table.column problem, how many rows and up to five example rows."""
    bad = np.asarray(bad, dtype=bool)
    if bad.any():
        examples = frame.loc[bad, columns].head(5).to_dict("records")
        raise FeatureInputError(f"{what}: {int(bad.sum())} rows, e.g. {examples}")


def check_inputs(events: pd.DataFrame, products: pd.DataFrame, copies: pd.DataFrame, users: pd.DataFrame) -> None:
    """Fail loudly on anything clean data must not contain, instead of producing quiet garbage."""
    shown = ["event_id", "user_id", "product_id", "event_type", "timestamp"]
    for column in shown:
        _fail_if(events[column].isna(), f"events.{column} is missing", events, shown)
    unknown_type = ~is_member(events["event_type"], pd.Series(EVENT_TYPES))
    _fail_if(unknown_type, f"events.event_type not in {EVENT_TYPES}", events, shown)
    _fail_if(events["event_id"].duplicated(keep=False), "events.event_id: rows share ids", events, shown)
    impressions = (events["event_type"] == "impression").to_numpy()
    if not impressions.any():
        raise FeatureInputError("events: no impression events, so there is nothing to build samples from")
    _fail_if(impressions & events["position"].isna(), "events.position missing on impressions", events, shown)
    _fail_if(products["product_id"].duplicated(keep=False), "products.product_id duplicated", products, ["product_id"])
    # A missing price is legitimate for sources without prices (OBD); a negative one never is.
    _fail_if(products["price"] < 0, "products.price negative", products, ["product_id", "price"])
    _fail_if(np.isinf(products["price"].to_numpy(dtype=np.float64, na_value=np.nan)), "products.price infinite", products, ["product_id", "price"])
    # A purchase value feeds running spend sums: one inf or negative value would corrupt them.
    value = events["value"].to_numpy(dtype=np.float64, na_value=np.nan)
    _fail_if(np.isinf(value) | (value < 0), "events.value negative or infinite", events, [*shown, "value"])
    unknown_product = ~is_member(events["product_id"], products["product_id"])
    _fail_if(unknown_product, "events.product_id not in products", events, shown)
    _fail_if(~is_member(events["user_id"], users["user_id"]), "events.user_id not in users", events, shown)
    unknown_copy = impressions & events["copy_id"].notna().to_numpy() & ~is_member(events["copy_id"], copies["copy_id"])
    _fail_if(unknown_copy, "events.copy_id of impressions not in copies", events, [*shown, "copy_id"])


# ---------------------------------------------------------------- feature computation


def click_prior(clicks, impressions):
    """The global click rate so far, Laplace-smoothed: what user and product rates shrink toward."""
    return (clicks + 1.0) / (impressions + 2.0)


def log_price(price):
    """The `p_log_price` feature: log1p of the price; an unknown price is 0 (standardized later;
    OBD has no prices at all)."""
    return np.nan_to_num(np.log1p(price), nan=0.0)


def _smoothed_ctr(clicks: np.ndarray, impressions: np.ndarray, prior: np.ndarray, strength: float) -> np.ndarray:
    return (clicks + strength * prior) / (impressions + strength)


@dataclass(frozen=True)
class _ClickContext:
    """What the end-of-data tables share with the per-impression features."""

    product_attributes: pd.DataFrame
    index: AttributeIndex
    user_ids: pd.Index
    click_pairs: ClickPairs
    copy_options: pd.DataFrame


def compute_samples(
    events: pd.DataFrame,
    products: pd.DataFrame,
    copies: pd.DataFrame,
    users: pd.DataFrame,
    fcfg: FeaturesConfig,
) -> tuple[pd.DataFrame, dict]:
    """Features and labels per impression (no split); returns the frame and counts for the summary.

    Pure function of its inputs: the leakage tests call it on truncated event logs.
    """
    samples, report, _ = _compute_samples(events, products, copies, users, fcfg)
    return samples, report


def _compute_samples(
    events: pd.DataFrame,
    products: pd.DataFrame,
    copies: pd.DataFrame,
    users: pd.DataFrame,
    fcfg: FeaturesConfig,
) -> tuple[pd.DataFrame, dict, _ClickContext]:
    check_inputs(events, products, copies, users)
    report: dict = {}
    events = events.sort_values(["timestamp", "event_id"], kind="stable", ignore_index=True)
    time_us = to_epoch_us(events["timestamp"])
    user_ids = pd.Index(users["user_id"].unique())
    product_ids = pd.Index(products["product_id"])
    user = user_ids.get_indexer(events["user_id"])
    product = product_ids.get_indexer(events["product_id"])
    event_type = events["event_type"].to_numpy()
    is_imp, is_click = event_type == "impression", event_type == "click"
    is_cart, is_buy = event_type == "add_to_cart", event_type == "purchase"

    imp = EventCodes(user=user[is_imp], product=product[is_imp], time=time_us[is_imp])
    clk = EventCodes(user=user[is_click], product=product[is_click], time=time_us[is_click])
    # Click *rates* count only clicks that answer a logged impression (the labels' link; it looks
    # back only, so it is point-in-time). A click with none, from a click bot or a placement the
    # log does not show, still counts as the shopper's interest (counts, affinities, history).
    click_impression, _ = link_outcomes(events.loc[is_imp], events.loc[is_click], fcfg.link_max_hours)
    is_rated_click = np.zeros(len(events), dtype=bool)
    is_rated_click[np.flatnonzero(is_click)] = click_impression.notna().to_numpy()
    rated = EventCodes(user=user[is_rated_click], product=product[is_rated_click], time=time_us[is_rated_click])
    report["clicks_outside_click_rates"] = int(is_click.sum() - is_rated_click.sum())
    carried = ["event_id", "user_id", "product_id", "copy_id", "timestamp", "position", "propensity"]
    samples = events.loc[is_imp, carried].reset_index(drop=True)

    def user_prior(mask: np.ndarray, weight: np.ndarray | None = None) -> np.ndarray:
        return prior_sum(imp.user, imp.time, user[mask], time_us[mask], None if weight is None else weight[mask])

    # Recency / frequency / monetary of the shopper.
    last_event = prior_last_time(imp.user, imp.time, user, time_us)
    has_history = last_event != NO_EVENT
    samples["u_recency_hours"] = np.where(
        has_history, (imp.time - np.where(has_history, last_event, 0)) / US_PER_HOUR, RECENCY_SENTINEL_HOURS
    )
    samples["u_has_history"] = has_history.astype(np.int64)
    samples["u_n_events"] = prior_sum(imp.user, imp.time, user, time_us)
    samples["u_n_impressions"] = user_prior(is_imp)
    samples["u_n_clicks"] = user_prior(is_click)
    samples["u_n_add_to_cart"] = user_prior(is_cart)
    samples["u_n_purchases"] = user_prior(is_buy)
    price = products["price"].to_numpy(dtype=np.float64)
    value = events["value"].to_numpy(dtype=np.float64, na_value=np.nan)
    missing_value = is_buy & np.isnan(value)
    report["purchase_value_imputed_from_price"] = int(missing_value.sum())
    value = np.where(missing_value, price[product], value)
    # No value and no price (a source without prices): the spend is unknown, counted as 0.
    unknown_value = is_buy & np.isnan(value)
    report["purchase_value_unknown"] = int(unknown_value.sum())
    value = np.where(unknown_value, 0.0, value)
    samples["u_monetary"] = user_prior(is_buy, np.where(is_buy, value, 0.0))

    # Global CTR so far: the prior that user and product CTRs shrink toward.
    everyone = np.zeros(len(imp), np.int64)
    global_impressions = prior_sum(everyone, imp.time, np.zeros(int(is_imp.sum()), np.int64), time_us[is_imp])
    global_clicks = prior_sum(everyone, imp.time, np.zeros(len(rated), np.int64), rated.time)
    global_ctr = click_prior(global_clicks, global_impressions)
    # The prior a product or shopper with no impressions yet gets at the end of the data, for the
    # summary (serving computes its rows with this same code: explain.EndOfData).
    report["end_click_prior"] = float(click_prior(len(rated.time), len(imp.time)))
    strength = fcfg.ctr_prior_strength
    samples["u_ctr"] = _smoothed_ctr(user_prior(is_rated_click), samples["u_n_impressions"].to_numpy(), global_ctr, strength)

    signup = users.drop_duplicates("user_id").set_index("user_id")["signup_date"].reindex(user_ids)
    first_event = pd.Series(time_us).groupby(user).min().reindex(np.arange(len(user_ids)))
    known = signup.notna().to_numpy()
    # A user without events and without a signup date is never looked up: 0 is a placeholder.
    signup_us = np.nan_to_num(first_event.to_numpy(dtype=np.float64), nan=0.0).astype(np.int64)
    signup_us[known] = to_epoch_us(signup[known])
    report["signup_imputed_from_first_event"] = int((~known & first_event.notna().to_numpy()).sum())
    samples["u_days_since_signup"] = np.maximum(imp.time - signup_us[imp.user], 0) / US_PER_DAY

    # Product popularity so far.
    samples["p_log_price"] = log_price(price[imp.product])
    report["price_missing_products"] = int(np.isnan(price).sum())
    samples["p_n_impressions"] = prior_sum(imp.product, imp.time, imp.product, imp.time)
    p_clicks = prior_sum(imp.product, imp.time, rated.product, rated.time)
    samples["p_ctr"] = _smoothed_ctr(p_clicks, samples["p_n_impressions"].to_numpy(), global_ctr, strength)

    # This shopper with this product before.
    n_products = len(product_ids)
    imp_pair, clk_pair = imp.user * n_products + imp.product, clk.user * n_products + clk.product
    samples["up_n_impressions"] = prior_sum(imp_pair, imp.time, imp_pair, imp.time)
    samples["up_n_clicks"] = prior_sum(imp_pair, imp.time, clk_pair, clk.time)

    # Attribute and category affinities, and the copy's mentions of the shopper's top values.
    product_attributes = explode_product_attributes(products)
    index = AttributeIndex.build(product_attributes, product_ids)
    click_pairs = ClickPairs.from_clicks(clk, index)
    affinity = attribute_affinity_features(imp, click_pairs, index, fcfg.affinity_prior_strength)
    samples["ua_attr_affinity"] = affinity["ua_attr_affinity"].to_numpy()
    samples["ua_attr_affinity_max"] = affinity["ua_attr_affinity_max"].to_numpy()
    category_codes, _ = pd.factorize(products["category"].fillna(UNKNOWN_CATEGORY))
    samples["ua_category_affinity"] = category_affinity_feature(
        imp, clk, category_codes.astype(np.int64), samples["u_n_clicks"].to_numpy(), fcfg.affinity_prior_strength
    )
    shown_copies = copies[is_member(copies["copy_id"], samples["copy_id"])]
    copy_ids, mentions = copy_mention_index(shown_copies, index)
    impression_copy = copy_ids.get_indexer(samples["copy_id"].fillna(""))  # -1: no copy shown
    changes = top_value_changes(click_pairs)
    samples["uc_copy_pref_mentions"] = copy_preference_mentions(imp, impression_copy, mentions, changes, index.n_pairs)
    options = copy_options(samples["event_id"], samples["copy_id"], imp, copies, index, changes)

    samples["position"] = samples["position"].astype(np.int64)
    samples["category"] = products["category"].to_numpy()[imp.product]
    samples["is_cold"] = samples["u_n_events"].to_numpy() < fcfg.min_events_returning
    history = recent_clicked_products(
        imp.user, imp.time, clk.user, clk.time,
        click_tiebreak=np.flatnonzero(is_click),
        click_product=events.loc[is_click, "product_id"],
        length=fcfg.history_length,
    )
    # Arrow-backed list column: no per-row Python lists, written to parquet as list<string> as is.
    samples["hist_products"] = pd.arrays.ArrowExtensionArray(history)

    labels, link_report = impression_labels(
        events.loc[is_imp].reset_index(drop=True), events, fcfg.label_window_days, fcfg.link_max_hours
    )
    samples["label"] = labels["label"].to_numpy()
    samples["label_purchase"] = labels["label_purchase"].to_numpy()
    report.update(link_report)
    report["n_attribute_pairs"] = index.n_pairs
    report["n_copies_shown"] = len(copy_ids)
    context = _ClickContext(product_attributes, index, user_ids, click_pairs, options)
    return samples[list(SAMPLE_COLUMNS)], report, context


def drop_open_windows(samples: pd.DataFrame, boundaries: SplitBoundaries, last_event: pd.Timestamp, window_days: int) -> tuple[pd.DataFrame, dict[str, int]]:
    """With windowed labels an impression's label looks `window_days` ahead. A train row whose
    window reaches into the valid days would learn from valid-period clicks (a valid row, from
    test's), and a row whose window runs past the last event has a label not known yet (a
    missing click reads as 0). Such rows are dropped and counted per split."""
    window = pd.Timedelta(days=window_days)
    limit = pd.Series(last_event, index=samples.index)
    limit[samples["split"] == "train"] = boundaries.valid_start
    limit[samples["split"] == "valid"] = boundaries.test_start
    open_window = samples["timestamp"] + window > limit
    dropped = {split: int((open_window & (samples["split"] == split)).sum()) for split in SPLITS}
    kept = samples[~open_window]
    empty = [split for split in SPLITS if not (kept["split"] == split).any()]
    if empty:
        raise ValueError(
            f"a {window_days}-day label window leaves no complete {empty} rows: each split needs rows whose "
            "window ends before the next split starts (features.label_window_days too large for valid_days/test_days?)"
        )
    return kept, dropped


def build_feature_tables(tables: dict[str, pd.DataFrame], fcfg: FeaturesConfig) -> FeatureTables:
    """All feature-stage outputs from the four clean tables (no I/O)."""
    events, products, copies, users = (tables[t] for t in ("events", "products", "copies", "users"))
    samples, report, context = _compute_samples(events, products, copies, users, fcfg)
    boundaries = split_boundaries(events["timestamp"].max(), fcfg.valid_days, fcfg.test_days)
    split = assign_split(samples["timestamp"], boundaries)
    samples.insert(samples.columns.get_loc("label_purchase") + 1, "split", split)
    if fcfg.label_window_days > 0:
        samples, report["label_window_dropped"] = drop_open_windows(samples, boundaries, events["timestamp"].max(), fcfg.label_window_days)
    samples = samples.sort_values(["timestamp", "event_id"], ignore_index=True)
    report["split_boundaries"] = boundaries.as_dict()
    strength = fcfg.affinity_prior_strength
    options = context.copy_options[is_member(context.copy_options["event_id"], samples["event_id"])].reset_index(drop=True)
    report["copy_option_impressions"] = int(options["event_id"].nunique())
    return FeatureTables(
        samples=samples,
        user_affinity=user_affinity_table(context.click_pairs, context.index, context.user_ids, strength),
        population_affinity=population_affinity_table(context.click_pairs, context.index, strength),
        product_attributes=context.product_attributes,
        copy_options=options,
        report=report,
    )


# ---------------------------------------------------------------- stage I/O


def samples_to_arrow(samples: pd.DataFrame) -> pa.Table:
    # Without pandas metadata: its record of the Arrow-backed list dtype cannot be read back by
    # pandas, and readers get the same frame from the Arrow types alone.
    table = pa.Table.from_pandas(samples, preserve_index=False).replace_schema_metadata(None)
    if not pa.types.is_list(table.schema.field("hist_products").type):
        raise TypeError(f"hist_products must be a list column, got {table.schema.field('hist_products').type}")
    return table


def split_summary(samples: pd.DataFrame) -> dict:
    grouped = samples.groupby("split")
    return {
        name: {
            "rows": int(len(part)),
            "positive_rate": float(part["label"].mean()),
            "purchase_rate": float(part["label_purchase"].mean()),
            "cold_share": float(part["is_cold"].mean()),
            "first": part["timestamp"].min().isoformat(),
            "last": part["timestamp"].max().isoformat(),
        }
        for name, part in grouped
        if name in SPLITS
    }


def run_features(cfg: Config) -> dict:
    """Read artifacts/<profile>/clean, write artifacts/<profile>/features; return the summary."""
    started = time.perf_counter()
    clean_dir, out_dir = cfg.stage_dir("clean"), cfg.stage_dir("features")
    tables = {t: load_table(clean_dir, t) for t in ("events", "products", "copies", "users")}
    built = build_feature_tables(tables, cfg.features)
    out_dir.mkdir(parents=True, exist_ok=True)
    pq.write_table(samples_to_arrow(built.samples), out_dir / "samples.parquet")
    built.user_affinity.to_parquet(out_dir / "user_affinity.parquet", index=False)
    built.population_affinity.to_parquet(out_dir / "population_affinity.parquet", index=False)
    built.product_attributes.to_parquet(out_dir / "product_attributes.parquet", index=False)
    built.copy_options.to_parquet(out_dir / "copy_options.parquet", index=False)
    spec_json = json.dumps(feature_spec(), ensure_ascii=False, indent=2)
    (out_dir / "feature_spec.json").write_text(spec_json, encoding="utf-8")
    samples = built.samples
    summary = {
        "stage": "features",
        "profile": cfg.profile,
        "rows": int(len(samples)),
        "columns": list(samples.columns),
        "shape": [int(samples.shape[0]), int(samples.shape[1])],
        "n_numeric_features": len(NUMERIC_FEATURES),
        "positive_rate": float(samples["label"].mean()),
        "cold_share": float(samples["is_cold"].mean()),
        "splits": split_summary(samples),
        "users": int(samples["user_id"].nunique()),
        "products": int(samples["product_id"].nunique()),
        "user_affinity_rows": int(len(built.user_affinity)),
        "product_attribute_rows": int(len(built.product_attributes)),
        "input_rows": {name: int(len(frame)) for name, frame in tables.items()},
        **built.report,
        "seconds": round(time.perf_counter() - started, 2),
    }
    # The file is a dependency of training: a wall-clock figure in it would make every re-run of
    # this stage retrain the models on identical features. The returned summary keeps it.
    stable = {key: value for key, value in summary.items() if key != "seconds"}
    (out_dir / "summary.json").write_text(json.dumps(stable, ensure_ascii=False, indent=2), encoding="utf-8")
    return summary


def load_samples(features_dir: Path | str) -> pd.DataFrame:
    """samples.parquet back as a DataFrame (hist_products as lists of str)."""
    path = Path(features_dir) / "samples.parquet"
    if not path.exists():
        raise FileNotFoundError(f"feature samples not found: {path} (run the features stage first)")
    return pq.read_table(path).to_pandas()
