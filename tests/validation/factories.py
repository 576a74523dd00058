"""A small, clean, referentially consistent canonical batch (independent of the simulator)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from components.data.schema import EVENT_TYPES, TABLES, write_table

CATEGORIES = ("裙", "上衣", "裤")
EVENT_SHARES = (0.85, 0.10, 0.03, 0.02)


def clean_tables(n_products: int = 60, n_users: int = 30, n_events: int = 800, seed: int = 7) -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    product_ids = [f"p{i:04d}" for i in range(n_products)]
    products = pd.DataFrame(
        {
            "product_id": product_ids,
            "category": [CATEGORIES[i % len(CATEGORIES)] for i in range(n_products)],
            "attributes": [{"类型": [CATEGORIES[i % len(CATEGORIES)]], "颜色": ["白色", "黑色"][: 1 + i % 2]} for i in range(n_products)],
            "price": rng.uniform(20, 800, n_products).round(2),
            "source": "advertisegen",
        }
    )
    copies = pd.DataFrame(
        {
            "copy_id": [f"c{i:04d}" for i in range(2 * n_products)],
            "product_id": [product_ids[i // 2] for i in range(2 * n_products)],
            "text": ["这款连衣裙采用白色面料，简约大方。", "黑色上衣，显瘦百搭。"] * n_products,
            "source": ["human", "generated"] * n_products,
            "model_version": [None, "generator-v1"] * n_products,
        }
    )
    users = pd.DataFrame(
        {
            "user_id": [f"u{i:04d}" for i in range(n_users)],
            "age_band": [["18-24", "25-34", "35-44"][i % 3] for i in range(n_users)],
            "city_tier": [["1", "2", "3"][i % 3] for i in range(n_users)],
            "signup_date": pd.Timestamp("2025-06-01", tz="UTC") + pd.to_timedelta(rng.integers(0, 150, n_users), unit="D"),
        }
    )
    event_type = rng.choice(EVENT_TYPES, n_events, p=EVENT_SHARES)
    product_index = rng.integers(0, n_products, n_events)
    events = pd.DataFrame(
        {
            "event_id": [f"e{i:06d}" for i in range(n_events)],
            "user_id": [f"u{i:04d}" for i in rng.integers(0, n_users, n_events)],
            "product_id": [product_ids[i] for i in product_index],
            "copy_id": [f"c{2 * i + int(rng.integers(0, 2)):04d}" for i in product_index],
            "event_type": event_type,
            "timestamp": pd.Timestamp("2026-01-05", tz="UTC") + pd.to_timedelta(rng.integers(0, 86400 * 21, n_events), unit="s"),
            "position": rng.integers(1, 9, n_events).astype("int32"),
            "propensity": rng.uniform(0.05, 1.0, n_events),
        }
    )
    events = outcomes_answering_impressions(events, rng)
    price = products.set_index("product_id")["price"]
    events["value"] = np.where(events["event_type"] == "purchase", events["product_id"].map(price), 0.0)
    return {"products": products, "copies": copies, "users": users, "events": events}


def outcomes_answering_impressions(events: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """Give every click, cart or purchase the shopper, product and copy of a random impression,
    a minute after it, as real logs have them."""
    impressions = events[events["event_type"] == "impression"]
    outcome = (events["event_type"] != "impression").to_numpy()
    answered = impressions.iloc[rng.integers(0, len(impressions), int(outcome.sum()))]
    events.loc[outcome, ["user_id", "product_id", "copy_id"]] = answered[["user_id", "product_id", "copy_id"]].to_numpy()
    events.loc[outcome, "timestamp"] = answered["timestamp"].to_numpy() + pd.Timedelta(minutes=1)
    return events


def write_batch(tables: dict[str, pd.DataFrame], data_dir: Path) -> Path:
    """Write canonical parquet for every table (schema enforced by components.data.schema)."""
    for table in TABLES:
        write_table(tables[table], data_dir, table)
    return data_dir


def copy_tables(tables: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    return {name: frame.copy(deep=True) for name, frame in tables.items()}
