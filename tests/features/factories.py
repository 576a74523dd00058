"""Small canonical tables for the feature tests, built by hand or by a tiny seeded simulator.

The simulator mirrors the real one's event semantics: an impression shows a product with a copy
at a position; a click on it repeats user/product/copy/position seconds later; add_to_cart and
purchase (value = price) follow some clicks. Session impressions share one timestamp, so ties
between events are common — exactly what point-in-time logic must get right.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from components.data.schema import SCHEMAS

VOCAB = {
    "类型": ["裙", "裤", "上衣"],
    "颜色": ["白色", "黑色", "红色"],
    "风格": ["简约", "复古", "休闲"],
}
START = pd.Timestamp("2026-01-05", tz="UTC")


def ts(day: float = 0, hours: float = 0, seconds: float = 0) -> pd.Timestamp:
    return START + pd.Timedelta(days=day, hours=hours, seconds=seconds)


def frame(table: str, rows: list[dict]) -> pd.DataFrame:
    """Rows -> a frame with exactly the canonical columns and dtypes of `table`."""
    columns = SCHEMAS[table].names
    df = pd.DataFrame(rows, columns=columns)
    if table == "events":
        df["timestamp"] = pd.to_datetime(df["timestamp"], utc=True).dt.as_unit("us")
        df["position"] = df["position"].astype("Int32")
        df["propensity"] = df["propensity"].astype("float64")
        df["value"] = df["value"].astype("float64")
    if table == "users":
        df["signup_date"] = pd.to_datetime(df["signup_date"], utc=True).dt.as_unit("us")
    return df


def product(product_id: str, attributes: dict[str, list[str]], price: float = 100.0) -> dict:
    return {
        "product_id": product_id,
        "category": attributes.get("类型", ["unknown"])[0],
        "attributes": attributes,
        "price": price,
        "source": "advertisegen",
    }


def copy(copy_id: str, product_id: str, text: str) -> dict:
    return {"copy_id": copy_id, "product_id": product_id, "text": text, "source": "human", "model_version": None}


def user(user_id: str, signup: pd.Timestamp | None = None) -> dict:
    return {"user_id": user_id, "age_band": "25-34", "city_tier": "1", "signup_date": signup or START - pd.Timedelta(days=30)}


def event(
    event_id: str,
    user_id: str,
    product_id: str,
    event_type: str,
    timestamp: pd.Timestamp,
    copy_id: str | None = "c",
    position: int | None = 0,
    value: float | None = None,
) -> dict:
    return {
        "event_id": event_id,
        "user_id": user_id,
        "product_id": product_id,
        "copy_id": copy_id,
        "event_type": event_type,
        "timestamp": timestamp,
        "position": position,
        "propensity": 0.1,
        "value": value,
    }


def simulate(
    n_users: int = 30, n_products: int = 25, days: int = 12, sessions_per_day: float = 0.8, seed: int = 0
) -> dict[str, pd.DataFrame]:
    """A seeded toy log with the real simulator's semantics (shoppers favour some values)."""
    rng = np.random.default_rng(seed)
    keys = list(VOCAB)
    products, copies = [], []
    for p in range(n_products):
        attributes = {k: [str(rng.choice(VOCAB[k]))] for k in keys}
        products.append(product(f"p{p:03d}", attributes, price=float(np.round(rng.lognormal(4.5, 0.5), 2))))
        for variant in range(2):
            mentioned = [v[0] for k, v in attributes.items() if rng.random() < 0.6] or [attributes["类型"][0]]
            copies.append(copy(f"c{p:03d}_{variant}", f"p{p:03d}", "这款" + "，".join(mentioned) + "，值得拥有。"))
    users, events = [], []
    favourite = {u: {k: str(rng.choice(VOCAB[k])) for k in keys} for u in range(n_users)}
    for u in range(n_users):
        users.append(user(f"u{u:03d}", START - pd.Timedelta(days=float(rng.uniform(1, 200)))))
        n_sessions = rng.poisson(sessions_per_day * days)
        for second in np.sort(rng.uniform(0, days * 86400, size=n_sessions)).round():
            shown = rng.choice(n_products, size=min(4, n_products), replace=False)
            at = START + pd.Timedelta(seconds=float(second))
            for position, p in enumerate(shown):
                attrs, variant = products[p]["attributes"], int(rng.integers(0, 2))
                copy_id = f"c{p:03d}_{variant}"
                base = f"e{len(events):06d}"
                events.append(event(base, f"u{u:03d}", f"p{p:03d}", "impression", at, copy_id, position))
                matches = sum(attrs[k][0] == favourite[u][k] for k in keys)
                if rng.random() < 0.05 + 0.2 * matches - 0.03 * position:
                    click_at = at + pd.Timedelta(seconds=float(rng.integers(2, 30)))
                    events.append(event(base + "c", f"u{u:03d}", f"p{p:03d}", "click", click_at, copy_id, position))
                    if rng.random() < 0.4:
                        cart_at = click_at + pd.Timedelta(seconds=20)
                        events.append(event(base + "a", f"u{u:03d}", f"p{p:03d}", "add_to_cart", cart_at, copy_id, position))
                        if rng.random() < 0.5:
                            events.append(
                                event(base + "p", f"u{u:03d}", f"p{p:03d}", "purchase", cart_at + pd.Timedelta(seconds=40),
                                      copy_id, position, value=products[p]["price"])
                            )
    return {
        "products": frame("products", products),
        "copies": frame("copies", copies),
        "users": frame("users", users),
        "events": frame("events", events),
    }
