"""A small synthetic features stage with exactly the contract of components/features.

Used by the preference tests so they do not depend on the full data chain: shoppers with latent
attribute preferences, products with attributes, impressions whose true click probability rises
with the shopper-product affinity and the copy's mentions and falls with position. Features are
computed point-in-time (strictly earlier events only), like the real features stage.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd

from components.data.schema import write_table

ATTRIBUTE_VALUES = {
    "类型": ["裙", "裤", "上衣", "外套"],
    "颜色": ["白色", "黑色", "红色", "蓝色", "绿色"],
    "风格": ["简约", "复古", "性感", "休闲"],
    "材质": ["棉", "丝", "牛仔", "针织"],
}
NUMERIC = [
    "u_recency_hours",
    "u_has_history",
    "u_n_impressions",
    "u_n_clicks",
    "u_n_purchases",
    "u_ctr",
    "u_monetary",
    "u_days_since_signup",
    "p_log_price",
    "p_n_impressions",
    "p_ctr",
    "ua_attr_affinity",
    "ua_attr_affinity_max",
    "ua_category_affinity",
    "uc_copy_pref_mentions",
    "position",
]


def _make_world(rng: np.random.Generator, n_users: int, n_products: int):
    products = []
    for p in range(n_products):
        attrs = {key: str(rng.choice(values)) for key, values in ATTRIBUTE_VALUES.items()}
        products.append(
            {"product_id": f"p{p:04d}", "category": attrs["类型"], "attrs": attrs, "price": float(rng.lognormal(5, 0.6))}
        )
    users = []
    for u in range(n_users):
        pref = {key: dict(zip(values, rng.dirichlet([0.4] * len(values)))) for key, values in ATTRIBUTE_VALUES.items()}
        users.append({"user_id": f"u{u:04d}", "pref": pref, "activity": float(rng.gamma(2.0, 1.0)), "signup_days": float(rng.uniform(10, 400))})
    return products, users


def synthetic_samples(
    n_users: int = 150, n_products: int = 120, n_impressions: int = 6000, days: int = 14, seed: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(samples, product_attributes, user_affinity, ground_truth) following the features contract."""
    rng = np.random.default_rng(seed)
    products, users = _make_world(rng, n_users, n_products)
    start = pd.Timestamp("2026-01-05", tz="UTC")
    activity = np.array([u["activity"] for u in users])
    user_idx = rng.choice(n_users, size=n_impressions, p=activity / activity.sum())
    product_idx = rng.integers(0, n_products, size=n_impressions)
    seconds = np.sort(rng.uniform(0, days * 86400, size=n_impressions))
    position = rng.integers(0, 8, size=n_impressions)

    user_state = defaultdict(lambda: {"n_imp": 0, "n_click": 0, "n_purchase": 0, "money": 0.0, "last": None, "hist": [], "attr_clicks": defaultdict(int), "cat_clicks": defaultdict(int)})
    product_state = defaultdict(lambda: {"n_imp": 0, "n_click": 0})
    rows, truth = [], []
    copy_ids: dict[tuple[str, tuple[str, ...]], str] = {}
    for i in range(n_impressions):
        user, product = users[user_idx[i]], products[product_idx[i]]
        ts = start + pd.Timedelta(seconds=float(seconds[i]))
        state, pstate = user_state[user["user_id"]], product_state[product["product_id"]]
        # Copy variant: which attribute values the shown copy mentions.
        mentioned = [v for v in product["attrs"].values() if rng.random() < 0.5]
        copy_id = copy_ids.setdefault((product["product_id"], tuple(mentioned)), f"c{len(copy_ids):05d}")
        affinity = float(np.mean([user["pref"][k][v] for k, v in product["attrs"].items()]))
        pref_top = {k: max(vals, key=vals.get) for k, vals in user["pref"].items()}
        mentions_true = sum(1 for k, v in product["attrs"].items() if v in mentioned and pref_top[k] == v)
        logit = -3.0 + 6.0 * affinity + 0.6 * mentions_true - 0.2 * position[i]
        prob = 1.0 / (1.0 + np.exp(-logit))
        click = int(rng.random() < prob)
        purchase = int(click and rng.random() < 0.2)

        n_clicks = state["n_click"]
        attr_share = [state["attr_clicks"][f"{k}#{v}"] / n_clicks if n_clicks else 0.0 for k, v in product["attrs"].items()]
        top_seen = {a for a, c in state["attr_clicks"].items() if n_clicks and c / n_clicks >= 0.3}
        rows.append(
            {
                "event_id": f"e{i:06d}",
                "user_id": user["user_id"],
                "product_id": product["product_id"],
                "copy_id": copy_id,
                "category": product["category"],
                "timestamp": ts,
                "position": int(position[i]),
                "propensity": 1.0 / n_products,
                "label": click,
                "label_purchase": purchase,
                "hist_products": list(state["hist"][-20:]),
                "u_recency_hours": (ts - state["last"]).total_seconds() / 3600 if state["last"] is not None else np.nan,
                "u_has_history": float(state["n_imp"] > 0),
                "u_n_impressions": float(state["n_imp"]),
                "u_n_clicks": float(n_clicks),
                "u_n_purchases": float(state["n_purchase"]),
                "u_ctr": (n_clicks + 0.1) / (state["n_imp"] + 2.0),
                "u_monetary": state["money"],
                "u_days_since_signup": user["signup_days"] + seconds[i] / 86400,
                "p_log_price": float(np.log(product["price"])),
                "p_n_impressions": float(pstate["n_imp"]),
                "p_ctr": (pstate["n_click"] + 0.1) / (pstate["n_imp"] + 2.0),
                "ua_attr_affinity": float(np.mean(attr_share)),
                "ua_attr_affinity_max": float(np.max(attr_share)),
                "ua_category_affinity": state["cat_clicks"][product["category"]] / n_clicks if n_clicks else 0.0,
                "uc_copy_pref_mentions": float(sum(1 for k, v in product["attrs"].items() if v in mentioned and f"{k}#{v}" in top_seen)),
            }
        )
        truth.append({"event_id": f"e{i:06d}", "click_probability": prob})
        state["n_imp"] += 1
        state["last"] = ts
        pstate["n_imp"] += 1
        if click:
            state["n_click"] += 1
            pstate["n_click"] += 1
            state["hist"].append(product["product_id"])
            state["cat_clicks"][product["category"]] += 1
            for k, v in product["attrs"].items():
                state["attr_clicks"][f"{k}#{v}"] += 1
        if purchase:
            state["n_purchase"] += 1
            state["money"] += product["price"]

    samples = pd.DataFrame(rows)
    day = ((samples["timestamp"] - start) / pd.Timedelta(days=1)).astype(int)
    samples["split"] = np.where(day >= days - 3, "test", np.where(day >= days - 5, "valid", "train"))
    samples["is_cold"] = samples["u_n_impressions"] < 5
    samples["position"] = samples["position"].astype(np.int64)

    product_attributes = pd.DataFrame(
        [{"product_id": p["product_id"], "attr_key": k, "attr_value": v} for p in products for k, v in p["attrs"].items()]
    )
    user_affinity = pd.DataFrame(
        [
            {"user_id": uid, "attr_key": a.split("#")[0], "attr_value": a.split("#")[1], "affinity": c / max(s["n_click"], 1)}
            for uid, s in user_state.items()
            for a, c in s["attr_clicks"].items()
        ]
    )
    copies = pd.DataFrame(
        [{"copy_id": cid, "product_id": pid, "text": "这款" + "，".join(values) + "的好物"} for (pid, values), cid in copy_ids.items()]
    )
    samples.attrs["copies"] = copies
    return samples, product_attributes, user_affinity, pd.DataFrame(truth)


def write_synthetic_features(cfg, shuffle_labels: bool = False, **kwargs) -> Path:
    """Write the synthetic stage to cfg.stage_dir('features') (+ clean/copies.parquet with copy
    texts mentioning attribute values, + ground truth under source/)."""
    samples, product_attributes, user_affinity, truth = synthetic_samples(seed=cfg.seed, **kwargs)
    if shuffle_labels:
        samples["label"] = np.random.default_rng(7).permutation(samples["label"].to_numpy())
    out = cfg.stage_dir("features")
    out.mkdir(parents=True, exist_ok=True)
    copies = samples.attrs.pop("copies")
    samples.to_parquet(out / "samples.parquet", index=False)
    samples.attrs["copies"] = copies
    product_attributes.to_parquet(out / "product_attributes.parquet", index=False)
    user_affinity.to_parquet(out / "user_affinity.parquet", index=False)
    spec = {"numeric": NUMERIC, "categorical": ["user_id", "product_id", "category"], "sequence": ["hist_products"], "label": "label", "time": "timestamp"}
    (out / "feature_spec.json").write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    clean = cfg.stage_dir("clean")
    clean.mkdir(parents=True, exist_ok=True)
    _write_clean_log(samples, product_attributes, clean)
    truth_dir = cfg.stage_dir("source") / "ground_truth"
    truth_dir.mkdir(parents=True, exist_ok=True)
    truth.to_parquet(truth_dir / "impressions.parquet", index=False)
    return out


def _write_clean_log(samples: pd.DataFrame, product_attributes: pd.DataFrame, clean: Path) -> None:
    """The clean tables behind the samples: the copies, the catalogue, the shoppers, and a log of
    one impression per row and a click 5 s after each clicked one (`copyflow explain` computes a
    pair's features from them)."""
    copies = samples.attrs["copies"]
    write_table(copies.assign(source="human", model_version=None), clean, "copies")
    shoppers = pd.DataFrame({"user_id": samples["user_id"].unique()})
    write_table(shoppers.assign(age_band=None, city_tier=None, signup_date=pd.Timestamp("2025-12-01", tz="UTC")), clean, "users")
    attributes: dict[str, dict[str, list[str]]] = {}
    for product, key, value in product_attributes[["product_id", "attr_key", "attr_value"]].itertuples(index=False):
        attributes.setdefault(product, {}).setdefault(key, []).append(value)
    first = samples.drop_duplicates("product_id")
    catalogue = pd.DataFrame({"product_id": first["product_id"].to_numpy(), "category": first["category"].to_numpy()})
    write_table(catalogue.assign(attributes=catalogue["product_id"].map(attributes), price=100.0, source="synthetic"), clean, "products")
    columns = ["event_id", "user_id", "product_id", "copy_id", "timestamp", "position", "propensity"]
    shown = pd.DataFrame({c: samples[c].to_numpy() for c in columns}).assign(event_type="impression", value=np.nan)
    shown["timestamp"] = pd.to_datetime(shown["timestamp"], utc=True).dt.floor("us")
    clicked = shown[samples["label"].to_numpy() == 1]
    clicks = clicked.assign(event_id=clicked["event_id"] + "c", event_type="click", timestamp=clicked["timestamp"] + pd.Timedelta(seconds=5))
    write_table(pd.concat([shown, clicks], ignore_index=True).astype({"position": "Int32"}), clean, "events")
