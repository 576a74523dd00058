"""Personalized copy for one shopper and one product: the shopper's strongest attribute
affinities (point-in-time features) choose the generator's focus. How likely the shopper is to
click the product at all is the preference model's (`copyflow explain`), not used here."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from components.config import Config
from components.data.schema import load_products, load_users
from components.models.generator.focus import ANY, focus_from_affinities


class UnknownEntity(LookupError):
    pass


@dataclass
class PersonalizedCopies:
    user_id: str
    product_id: str
    attributes: dict[str, list[str]]
    focus: list[str]
    copies: list[str]
    model: str
    affinities: dict[str, float] = field(default_factory=dict)


def resolve_user_id(cfg: Config, user: str) -> str:
    """Accept the pseudonymized id, or a raw id (pseudonymized here with the same key)."""
    users = load_users(cfg.stage_dir("clean"))
    known = set(users["user_id"])
    if user in known:
        return user
    from components.data.privacy import load_key, pseudonym

    candidate = pseudonym(user, load_key(cfg))
    if candidate in known:
        return candidate
    raise UnknownEntity(f"user {user!r} is not in {cfg.stage_dir('clean')} (neither as a pseudonym nor as a raw id)")


def product_attributes(cfg: Config, product_id: str) -> dict[str, list[str]]:
    products = load_products(cfg.stage_dir("clean"))
    row = products.loc[products["product_id"] == product_id]
    if row.empty:
        raise UnknownEntity(f"product {product_id!r} is not in {cfg.stage_dir('clean')}")
    return row.iloc[0]["attributes"]


def user_affinity_lift(cfg: Config, user_id: str) -> dict[str, float]:
    """key#value -> how much more this shopper clicks the value than shoppers overall
    (their click share over the population's, as of the end of the data). A share alone is not
    comparable across keys: a key with two values gives every value a share near 0.5."""
    features = cfg.stage_dir("features")
    mine = pd.read_parquet(features / "user_affinity.parquet", filters=[("user_id", "==", user_id)])
    everyone = pd.read_parquet(features / "population_affinity.parquet")
    merged = mine.merge(everyone, on=["attr_key", "attr_value"], suffixes=("", "_population"))
    lift = merged["affinity"] / merged["affinity_population"].clip(lower=1e-6)
    return {f"{k}#{v}": float(x) for k, v, x in zip(merged["attr_key"], merged["attr_value"], lift)}


def personalized_copies(
    cfg: Config, generator, user: str, product_id: str, n: int = 3, decoding: str | None = None, k_focus: int = 2, tone: str = ANY, length: str = ANY
) -> PersonalizedCopies:
    user_id = resolve_user_id(cfg, user)
    attributes = product_attributes(cfg, product_id)
    lift = user_affinity_lift(cfg, user_id)
    # Only values this shopper favours more than shoppers overall become the focus.
    focus = focus_from_affinities({item: x - 1.0 for item, x in lift.items()}, attributes, k=k_focus)
    copies = generator.generate(attributes, focus=focus or None, tone=tone, length=length, decoding=decoding, n=n)
    own = {f"{k}#{v}" for k, values in attributes.items() for v in values}
    shown = {item: round(x, 2) for item, x in lift.items() if item in own}
    return PersonalizedCopies(user_id, product_id, attributes, focus, copies, model="", affinities=shown)
