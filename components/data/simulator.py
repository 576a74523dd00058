"""Seeded behaviour simulator: shoppers, a logging policy and their events over the corpus catalog.

Generative story (all vectorized numpy; the same seed gives byte-identical output):

* Shoppers. Per attribute key (类型, 颜色, 图案, ...) every shopper draws a preference
  distribution over that key's values from Dirichlet(dirichlet_alpha); a small alpha makes
  tastes peaked. A value's *relative weight* is its weight divided by the shopper's top weight
  for that key (1.0 = favourite); values with relative weight >= 0.5 are the shopper's
  *preferred* values. Shoppers also get a price sensitivity (lognormal), an activity rate
  (sessions/day, gamma), and quasi-identifiers (age band, city tier, signup date).
* Logging policy. Each session shows `impressions_per_session` slots (positions 1..k). Every
  slot independently draws a product from a fixed popularity-softmax mixed with uniform, so the
  logged propensity is the exact probability of that product being shown in that slot; the copy
  shown is drawn uniformly among the product's copies (copy propensity = 1 / #copies).
* Clicks. logit = base_logit + affinity_weight * affinity(shopper, product)
  + copy_mention_weight * (#preferred values of the shopper that the shown copy mentions)
  - position_decay * (position - 1), where affinity is the mean relative weight of the product's
  attribute values. Add-to-cart and purchase follow a click, less likely the more the price
  exceeds its category median times the shopper's price sensitivity; a purchase's value is the
  price.
* Dirt, so cleaning has real work: bot users (huge impression counts around the clock, random
  clicks), exact duplicate events, missing values in non-id columns, out-of-range catalog prices
  (0 or absurdly high; never negative, which is reserved for corruption the validator rejects).

The truth (preferences, exact click probability of each impression, bot list, parameters)
goes to source/ground_truth/ for evaluation only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from components.config import Config
from components.data.advertisegen import (
    CORPUS_SOURCE,
    copy_variants,
    corpus_catalog,
    mentioned_values,
    read_corpus_head,
)
from components.data.attributes import attribute_values

AGE_BANDS = ("18-24", "25-34", "35-44", "45-54", "55+")
AGE_BAND_PROBS = (0.22, 0.36, 0.24, 0.12, 0.06)
CITY_TIERS = ("tier1", "tier2", "tier3", "tier4+")
CITY_TIER_PROBS = (0.25, 0.35, 0.25, 0.15)
# Category median prices (CNY) for the lognormal price model; other categories use the default.
CATEGORY_MEDIAN_PRICE = {"上衣": 159.0, "裙": 229.0, "裤": 139.0}
DEFAULT_MEDIAN_PRICE = 169.0
PRICE_SIGMA = 0.55
PREFERRED_RELATIVE_WEIGHT = 0.5
POLICY_UNIFORM_SHARE = 0.3      # logging policy: share of uniform exploration
POLICY_POPULARITY_TEMPERATURE = 1.0
BOT_CLICK_RATE = (0.15, 0.6)    # each bot clicks at a random rate in this range, whatever it sees
ABSURD_PRICE = 999_999.0
SECONDS_PER_DAY = 86_400


@dataclass
class Simulation:
    """Raw-layer tables (raw user ids) plus the evaluation-only ground truth."""

    products: pd.DataFrame
    copies: pd.DataFrame
    users: pd.DataFrame
    events: pd.DataFrame
    truth_users: pd.DataFrame
    truth_preferences: pd.DataFrame
    truth_impressions: pd.DataFrame
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Vocabulary:
    """Every (key, value) attribute pair of the catalog, grouped by key (keys are contiguous)."""

    keys: np.ndarray         # key of each value index
    values: np.ndarray       # value string of each value index
    key_starts: np.ndarray   # first value index of each key group
    group_of: np.ndarray     # key-group number of each value index
    index: dict[tuple[str, str], int]

    @property
    def size(self) -> int:
        return len(self.values)


@dataclass(frozen=True)
class Ragged:
    """CSR-like rows of value indices (attributes of a product, mentions of a copy)."""

    indptr: np.ndarray
    indices: np.ndarray

    def lengths(self) -> np.ndarray:
        return np.diff(self.indptr)


def _rngs(seed: int, names: list[str]) -> dict[str, np.random.Generator]:
    """One independent generator per concern, so changing one knob does not reshuffle the rest."""
    children = np.random.SeedSequence(seed).spawn(len(names))
    return {name: np.random.default_rng(child) for name, child in zip(names, children)}


def build_vocabulary(attributes: list[dict[str, list[str]]]) -> Vocabulary:
    pairs = sorted({(k, v) for attrs in attributes for k, vs in attrs.items() for v in vs})
    keys = np.array([k for k, _ in pairs], dtype=object)
    values = np.array([v for _, v in pairs], dtype=object)
    is_start = np.r_[True, keys[1:] != keys[:-1]] if len(keys) else np.array([], dtype=bool)
    key_starts = np.flatnonzero(is_start)
    group_of = np.cumsum(is_start) - 1
    return Vocabulary(keys, values, key_starts, group_of, {p: i for i, p in enumerate(pairs)})


def ragged_rows(rows: list[list[tuple[str, str]]], vocab: Vocabulary) -> Ragged:
    lengths = np.array([len(r) for r in rows], dtype=np.int64)
    indices = np.array([vocab.index[p] for r in rows for p in r], dtype=np.int64)
    return Ragged(np.r_[0, np.cumsum(lengths)], indices)


def gather_row_sums(ragged: Ragged, rows: np.ndarray, users: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """For each i: sum of matrix[users[i], j] over the value indices j of ragged row rows[i]."""
    lengths = ragged.lengths()[rows]
    owner = np.repeat(np.arange(len(rows)), lengths)
    starts = np.repeat(ragged.indptr[rows] - np.r_[0, np.cumsum(lengths)[:-1]], lengths)
    cols = ragged.indices[starts + np.arange(lengths.sum())]
    return np.bincount(owner, weights=matrix[users[owner], cols], minlength=len(rows))


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def simulate_prices(categories: pd.Series, rng: np.random.Generator) -> np.ndarray:
    medians = categories.map(CATEGORY_MEDIAN_PRICE).fillna(DEFAULT_MEDIAN_PRICE).to_numpy(float)
    prices = medians * np.exp(rng.normal(0.0, PRICE_SIGMA, len(medians)))
    return np.round(np.maximum(prices, 9.9), 1)


def shopper_preferences(
    n_users: int, vocab: Vocabulary, alpha: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(weights, relative weights), users x values: Dirichlet per key; relative = weight / key max."""
    gamma = rng.gamma(alpha, 1.0, size=(n_users, vocab.size)) + 1e-12
    group_sum = np.add.reduceat(gamma, vocab.key_starts, axis=1)
    weights = gamma / group_sum[:, vocab.group_of]
    group_max = np.maximum.reduceat(weights, vocab.key_starts, axis=1)
    return weights, weights / group_max[:, vocab.group_of]


def logging_policy(n_products: int, rng: np.random.Generator) -> np.ndarray:
    """Per-slot product distribution: popularity softmax mixed with uniform exploration."""
    popularity = rng.normal(0.0, 1.0, n_products) / POLICY_POPULARITY_TEMPERATURE
    softmax = np.exp(popularity - popularity.max())
    softmax /= softmax.sum()
    return (1 - POLICY_UNIFORM_SHARE) * softmax + POLICY_UNIFORM_SHARE / n_products


def exact_count(rate: float, n: int) -> int:
    """How many rows a dirt rate touches: at least one whenever the rate is positive."""
    return 0 if rate <= 0 or n == 0 else min(n, max(1, int(round(rate * n))))


def _catalog(cfg: Config, rng: np.random.Generator) -> tuple[pd.DataFrame, pd.DataFrame]:
    corpus = read_corpus_head(cfg.paths.corpus, limit=cfg.data.n_products)
    products, human = corpus_catalog(corpus)
    variants = copy_variants(human, cfg.simulator.variants_per_product - 1, rng)
    copies = pd.concat([human, variants], ignore_index=True)
    order = pd.Series(np.arange(len(products)), index=products["product_id"])
    copies["_product"] = copies["product_id"].map(order).to_numpy()
    copies = copies.sort_values("_product", kind="stable", ignore_index=True)
    return products, copies


def _sessions(
    rates: np.ndarray, days: int, rng: np.random.Generator, hours: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """(user index, start second) of every session: Poisson(rate) sessions per user-day."""
    counts = rng.poisson(np.repeat(rates[:, None], days, axis=1))
    user = np.repeat(np.repeat(np.arange(len(rates)), days), counts.ravel())
    day = np.repeat(np.tile(np.arange(days), len(rates)), counts.ravel())
    start = day * SECONDS_PER_DAY + rng.uniform(hours[0] * 3600, hours[1] * 3600, len(day))
    return user, start


def simulate(cfg: Config) -> Simulation:
    sim, dirt = cfg.simulator, cfg.simulator.dirt
    rng = _rngs(cfg.seed, ["catalog", "price", "users", "sessions", "policy", "clicks", "bots", "dirt"])
    products, copies = _catalog(cfg, rng["catalog"])
    n_products = len(products)
    true_price = simulate_prices(products["category"], rng["price"])

    vocab = build_vocabulary(list(products["attributes"]))
    product_values = ragged_rows([attribute_values(a) for a in products["attributes"]], vocab)
    attrs_by_product = dict(zip(products["product_id"], products["attributes"]))
    copy_mentions = ragged_rows(
        [mentioned_values(t, attrs_by_product[p]) for t, p in zip(copies["text"], copies["product_id"])], vocab
    )

    # --- shoppers (normal and bots share one id space; bots sit at random positions) ---
    n_users = sim.n_users + dirt.bot_users
    r = rng["users"]
    is_bot = np.zeros(n_users, dtype=bool)
    is_bot[r.choice(n_users, size=dirt.bot_users, replace=False)] = True
    user_ids = np.array([f"shopper{i:06d}" for i in range(1, n_users + 1)], dtype=object)
    weights, relative = shopper_preferences(n_users, vocab, sim.dirichlet_alpha, r)
    preferred = relative >= PREFERRED_RELATIVE_WEIGHT
    sensitivity_sigma = 0.5
    price_sensitivity = r.lognormal(np.log(sim.price_sensitivity_mean) - sensitivity_sigma**2 / 2, sensitivity_sigma, n_users)
    activity = r.gamma(2.0, sim.sessions_per_user_per_day / 2.0, n_users)
    start = pd.Timestamp(sim.start_date, tz="UTC")
    users = pd.DataFrame(
        {
            "user_id": user_ids,
            "age_band": r.choice(AGE_BANDS, size=n_users, p=AGE_BAND_PROBS),
            "city_tier": r.choice(CITY_TIERS, size=n_users, p=CITY_TIER_PROBS),
            "signup_date": (start - pd.to_timedelta(r.integers(1, 730, n_users), unit="D")).strftime("%Y-%m-%d"),
        }
    )

    # --- sessions and impressions (logging policy) ---
    normal = np.flatnonzero(~is_bot)
    bots = np.flatnonzero(is_bot)
    s_user, s_start = _sessions(activity[normal], sim.days, rng["sessions"], hours=(7.0, 24.0))
    s_user = normal[s_user]
    bot_sessions = int(np.ceil(dirt.bot_impressions / sim.impressions_per_session))
    b_user = np.repeat(bots, bot_sessions)
    b_start = rng["bots"].uniform(0, sim.days * SECONDS_PER_DAY, len(b_user))  # around the clock
    session_user = np.r_[s_user, b_user]
    session_start = np.r_[s_start, b_start]
    k = sim.impressions_per_session
    imp_user = np.repeat(session_user, k)
    position = np.tile(np.arange(1, k + 1), len(session_user))
    imp_is_bot = is_bot[imp_user]
    p = rng["policy"]
    gaps = np.where(imp_is_bot, p.exponential(1.0, len(imp_user)) + 0.2, p.exponential(8.0, len(imp_user)) + 1.0)
    gaps = gaps.reshape(-1, k).cumsum(axis=1).ravel()
    imp_seconds = np.repeat(session_start, k) + gaps
    policy = logging_policy(n_products, p)
    imp_product = p.choice(n_products, size=len(imp_user), p=policy)
    n_copies = np.bincount(copies["_product"].to_numpy(), minlength=n_products)
    copy_start = np.r_[0, np.cumsum(n_copies)[:-1]]
    imp_copy = copy_start[imp_product] + (p.random(len(imp_user)) * n_copies[imp_product]).astype(np.int64)

    # --- clicks, carts, purchases ---
    c = rng["clicks"]
    affinity = gather_row_sums(product_values, imp_product, imp_user, relative) / product_values.lengths()[imp_product]
    mentions = gather_row_sums(copy_mentions, imp_copy, imp_user, preferred.astype(np.float64))
    logit = (
        sim.base_logit
        + sim.affinity_weight * affinity
        + sim.copy_mention_weight * mentions
        - sim.position_decay * (position - 1)
    )
    bot_click_rate = np.where(is_bot, c.uniform(*BOT_CLICK_RATE, n_users), np.nan)
    click_probability = np.where(imp_is_bot, bot_click_rate[imp_user], sigmoid(logit))
    clicked = c.random(len(imp_user)) < click_probability
    category_median = products["category"].map(CATEGORY_MEDIAN_PRICE).fillna(DEFAULT_MEDIAN_PRICE).to_numpy(float)
    price_z = np.log(true_price / category_median)[imp_product]
    buy_logit = sim.purchase_base_logit - price_sensitivity[imp_user] * price_z
    cart_probability = np.where(imp_is_bot, 0.0, sigmoid(buy_logit + 1.0))   # carting is easier than buying
    purchase_probability = np.where(imp_is_bot, 0.0, sigmoid(buy_logit + 0.5))
    carted = clicked & (c.random(len(imp_user)) < cart_probability)
    purchased = carted & (c.random(len(imp_user)) < purchase_probability)

    click_seconds = imp_seconds + c.uniform(1.0, 10.0, len(imp_user))
    cart_seconds = click_seconds + c.uniform(10.0, 120.0, len(imp_user))
    purchase_seconds = cart_seconds + c.uniform(30.0, 600.0, len(imp_user))
    kinds = [
        ("impression", np.ones(len(imp_user), dtype=bool), imp_seconds),
        ("click", clicked, click_seconds),
        ("add_to_cart", carted, cart_seconds),
        ("purchase", purchased, purchase_seconds),
    ]
    parts = []
    for event_type, mask, seconds in kinds:
        idx = np.flatnonzero(mask)
        parts.append(
            pd.DataFrame(
                {
                    "_impression": idx,
                    "_order": {"impression": 0, "click": 1, "add_to_cart": 2, "purchase": 3}[event_type],
                    "_seconds": seconds[idx],
                    "event_type": event_type,
                    "value": true_price[imp_product[idx]] if event_type == "purchase" else 0.0,
                }
            )
        )
    events = pd.concat(parts, ignore_index=True).sort_values(["_seconds", "_order"], kind="stable", ignore_index=True)
    imp = events["_impression"].to_numpy()
    events["event_id"] = [f"ev{i:09d}" for i in range(1, len(events) + 1)]
    events["user_id"] = user_ids[imp_user[imp]]
    events["product_id"] = products["product_id"].to_numpy()[imp_product[imp]]
    events["copy_id"] = copies["copy_id"].to_numpy()[imp_copy[imp]]
    events["timestamp"] = start + pd.to_timedelta(np.round(events["_seconds"].to_numpy() * 1e6).astype(np.int64), unit="us")
    events["position"] = position[imp].astype(np.int64)
    events["propensity"] = policy[imp_product[imp]]

    impression_rows = events[events["event_type"] == "impression"]
    order = impression_rows["_impression"].to_numpy()
    truth_impressions = pd.DataFrame(
        {
            "event_id": impression_rows["event_id"].to_numpy(),
            "user_id": user_ids[imp_user[order]],
            "product_id": events.loc[impression_rows.index, "product_id"].to_numpy(),
            "copy_id": events.loc[impression_rows.index, "copy_id"].to_numpy(),
            "position": position[order],
            "affinity": np.where(imp_is_bot[order], np.nan, affinity[order]),
            "copy_mentions": mentions[order].astype(np.int64),
            "click_probability": click_probability[order],
            "cart_probability_given_click": cart_probability[order],
            "purchase_probability_given_cart": purchase_probability[order],
            "product_propensity": policy[imp_product[order]],
            "copy_propensity": 1.0 / n_copies[imp_product[order]],
            "clicked": clicked[order],
            "is_bot": imp_is_bot[order],
        }
    )
    events = events.drop(columns=["_impression", "_order", "_seconds"])

    raw_products = pd.DataFrame(
        {
            "product_id": products["product_id"],
            "category": products["category"],
            "content": products["content"],
            "price": true_price,
            "source": CORPUS_SOURCE,
        }
    )
    raw_copies = copies.drop(columns=["_product"])
    raw_products, users, events, dirt_report = inject_dirt(raw_products, users, events, cfg, rng["dirt"])

    normal_imp = ~truth_impressions["is_bot"].to_numpy()
    truth_users = pd.DataFrame(
        {
            "user_id": user_ids,
            "is_bot": is_bot,
            "price_sensitivity": price_sensitivity,
            "activity_rate": np.where(is_bot, np.nan, activity),
            "bot_click_rate": bot_click_rate,
        }
    )
    truth_preferences = pd.DataFrame(
        {
            "user_id": np.repeat(user_ids, vocab.size),
            "key": np.tile(vocab.keys, n_users),
            "value": np.tile(vocab.values, n_users),
            "weight": weights.ravel(),
            "relative_weight": relative.ravel(),
            "preferred": preferred.ravel(),
        }
    )
    truth_preferences = truth_preferences[~np.repeat(is_bot, vocab.size)].reset_index(drop=True)
    diagnostics = simulation_diagnostics(truth_impressions[normal_imp])
    params = {
        "seed": cfg.seed,
        "simulator": sim.model_dump(),
        "n_products": cfg.data.n_products,
        "constants": {
            "preferred_relative_weight": PREFERRED_RELATIVE_WEIGHT,
            "policy_uniform_share": POLICY_UNIFORM_SHARE,
            "bot_click_rate_range": list(BOT_CLICK_RATE),
            "category_median_price": CATEGORY_MEDIAN_PRICE,
            "price_sigma": PRICE_SIGMA,
        },
        "bot_user_ids": sorted(user_ids[is_bot].tolist()),
        "dirt": dirt_report,
        "diagnostics": diagnostics,
    }
    return Simulation(raw_products, raw_copies, users, events, truth_users, truth_preferences, truth_impressions, params)


def simulation_diagnostics(impressions: pd.DataFrame) -> dict[str, float]:
    """How learnable the simulated behaviour is (normal shoppers only)."""
    from sklearn.metrics import roc_auc_score  # heavy import, only needed here

    clicked = impressions["clicked"].to_numpy()
    prob = impressions["click_probability"].to_numpy()
    both = len(np.unique(clicked)) == 2
    by_mentions = impressions.groupby("copy_mentions")["click_probability"].mean()
    return {
        "impressions": int(len(impressions)),
        "ctr": float(clicked.mean()) if len(clicked) else 0.0,
        "mean_click_probability": float(prob.mean()) if len(prob) else 0.0,
        "click_probability_auc": float(roc_auc_score(clicked, prob)) if both else float("nan"),
        "mean_copy_mentions": float(impressions["copy_mentions"].mean()),
        "click_probability_by_copy_mentions": {str(int(k)): float(v) for k, v in by_mentions.items()},
    }


def inject_dirt(
    products: pd.DataFrame, users: pd.DataFrame, events: pd.DataFrame, cfg: Config, rng: np.random.Generator
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Out-of-range prices, missing values in non-id columns, then exact duplicate events."""
    dirt = cfg.simulator.dirt
    products, users, events = products.copy(), users.copy(), events.copy()
    report: dict[str, Any] = {}

    n_bad = exact_count(dirt.bad_price_rate, len(products))
    bad = rng.choice(len(products), size=n_bad, replace=False)
    zero = bad[: (n_bad + 1) // 2]
    products.loc[zero, "price"] = 0.0
    products.loc[bad[len(zero):], "price"] = ABSURD_PRICE
    report["bad_price_products"] = sorted(products.loc[bad, "product_id"].tolist())

    events["position"] = events["position"].astype("Int64")
    missing: dict[str, int] = {}
    targets = {
        "products": (products, ["category", "price"]),
        "users": (users, ["age_band", "city_tier", "signup_date"]),
        "events": (events, ["timestamp", "position", "propensity", "value"]),
    }
    for table, (df, columns) in targets.items():
        for column in columns:
            n = exact_count(dirt.missing_value_rate, len(df))
            rows = rng.choice(len(df), size=n, replace=False)
            df.loc[df.index[rows], column] = None
            missing[f"{table}.{column}"] = n
    report["missing_values"] = missing

    n_dup = exact_count(dirt.duplicate_event_rate, len(events))
    duplicated = rng.choice(len(events), size=n_dup, replace=False)
    # Duplicates sit right after their original, as a replayed log batch would put them.
    order = np.argsort(np.r_[np.arange(len(events)), duplicated], kind="stable")
    events = events.iloc[np.r_[np.arange(len(events)), duplicated][order]].reset_index(drop=True)
    report["duplicate_events"] = n_dup
    return products, users, events, report
