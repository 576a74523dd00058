"""Personalized copy for one shopper and one product: the shopper's strongest attribute
affinities (end-of-data features) choose the generator's focus. How likely the shopper is to
click the product at all is the preference model's (`copyflow explain`), not used here.

Only copies that break no hard rule come out (`Generator.servable`): the bundle's ad-law words
and the maintained list (`load_served_generator`), and the values the product does not list.
What decoding still let through is withheld, never served."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

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
    copies: list[str]  # those that may be served, best first
    model: str
    affinities: dict[str, float] = field(default_factory=dict)
    withheld: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # copy -> the rules it breaks


@dataclass(frozen=True)
class ShopperData:
    """What personalization reads, in memory: the clean shoppers and catalog, and the shoppers'
    and population's attribute affinities as of the end of the data. A server keeps one and swaps
    it whole, so a retrain rewriting these folders never leaves it half-read."""

    clean_dir: Path
    users: frozenset[str]
    attributes: dict[str, dict[str, list[str]]]
    affinity: pd.DataFrame      # user_id, attr_key, attr_value, affinity
    population: pd.DataFrame    # attr_key, attr_value, affinity_population
    key: object = field(repr=False, default=None)  # the pseudonym key (PseudonymKey)
    features: object = field(repr=False, default=None)  # FeatureFiles, for scoring copies (serving.choice)

    @classmethod
    def load(cls, cfg: Config, with_features: bool = False) -> "ShopperData":
        """`with_features`: also keep the features stage's samples in memory, to build the
        feature rows the preference model scores candidate copies with."""
        from components.data.privacy import key_for_data
        from components.models.preference.explain import FeatureFiles

        clean, features = cfg.stage_dir("clean"), cfg.stage_dir("features")
        products = load_products(clean)
        files = FeatureFiles.load(features, clean) if with_features else None
        if files is not None:
            files.end_of_data(cfg)  # now, not on the first request: the features stage's computation
        # With the features in memory, their affinity table (indexed by shopper) is the one read.
        affinity = files.user_affinity if files is not None and files.user_affinity is not None else pd.read_parquet(
            features / "user_affinity.parquet", columns=["user_id", "attr_key", "attr_value", "affinity"])
        population = pd.read_parquet(features / "population_affinity.parquet", columns=["attr_key", "attr_value", "affinity"])
        return cls(
            clean_dir=clean,
            users=frozenset(load_users(clean)["user_id"]),
            attributes=dict(zip(products["product_id"], products["attributes"])),
            affinity=affinity,
            population=population.rename(columns={"affinity": "affinity_population"}),
            key=key_for_data(cfg),
            features=files,
        )

    def resolve_user_id(self, user: str) -> str:
        """Accept the pseudonymized id, or a raw id (pseudonymized here with the same key)."""
        from components.data.privacy import pseudonym

        if user in self.users:
            return user
        candidate = pseudonym(user, self.key)
        if candidate in self.users:
            return candidate
        raise UnknownEntity(f"user {user!r} is not a shopper in this profile's data (neither as a raw id nor as a pseudonym)")

    def product_attributes(self, product_id: str) -> dict[str, list[str]]:
        if product_id not in self.attributes:
            raise UnknownEntity(f"product {product_id!r} is not in this profile's catalog")
        return self.attributes[product_id]

    def top_values(self, user_id: str) -> set[tuple[str, str]]:
        """The shopper's top value of each key, as of the end of the data (features stage)."""
        if self.features is None or self.features.user_affinity is None:
            return set()
        mine = self.features.affinities(user_id)
        mine = mine[mine["is_top"].astype(bool)]
        return set(zip(mine["attr_key"], mine["attr_value"]))

    def affinity_lift(self, user_id: str) -> dict[str, float]:
        """key#value -> how much more this shopper clicks the value than shoppers overall
        (their click share over the population's, as of the end of the data). A share alone is not
        comparable across keys: a key with two values gives every value a share near 0.5."""
        # Indexed look-up when the features are in memory (the server); one scan otherwise (a CLI call).
        mine = self.features.affinities(user_id) if self.features is not None else self.affinity[self.affinity["user_id"] == user_id]
        return affinity_lift(mine, self.population)


def affinity_lift(mine: pd.DataFrame, population: pd.DataFrame) -> dict[str, float]:
    """key#value -> a shopper's affinity (`mine`: attr_key, attr_value, affinity) over the
    population's (`population`: attr_key, attr_value, affinity_population)."""
    merged = mine[["attr_key", "attr_value", "affinity"]].merge(population, on=["attr_key", "attr_value"])
    lift = merged["affinity"] / merged["affinity_population"].clip(lower=1e-6)
    return {f"{k}#{v}": float(x) for k, v, x in zip(merged["attr_key"], merged["attr_value"], lift)}


def personalized_copies(
    data: ShopperData, generator, user: str, product_id: str, n: int = 3, decoding: str | None = None, k_focus: int = 2, tone: str = ANY, length: str = ANY,
    lift: dict[str, float] | None = None,
) -> PersonalizedCopies:
    """`lift`: the shopper's `affinity_lift` the focus is chosen from (None: as of the end of the
    data, as the server reads it; an offline evaluation passes it as of the impression it replays)."""
    user_id = data.resolve_user_id(user)
    attributes = data.product_attributes(product_id)
    lift = data.affinity_lift(user_id) if lift is None else lift
    # Only values this shopper favours more than shoppers overall become the focus.
    focus = focus_from_affinities({item: x - 1.0 for item, x in lift.items()}, attributes, k=k_focus)
    copies, withheld = generator.servable(generator.generate(attributes, focus=focus or None, tone=tone, length=length, decoding=decoding, n=n), attributes)
    own = {f"{k}#{v}" for k, values in attributes.items() for v in values}
    shown = {item: round(x, 2) for item, x in lift.items() if item in own}
    return PersonalizedCopies(user_id, product_id, attributes, focus, copies, model="", affinities=shown, withheld=withheld)


def load_served_generator(cfg: Config, ref: str, backend: str = "torch", threads: int | None = None):
    """The generator as serving runs it: the bundle's ad-law words and the maintained list (the
    statutory list and the profile's, as the release gate judges) banned at decoding and judged
    after it. A champion built before the list grew would otherwise write the new words."""
    from components.evaluation.copy_rules import gate_ad_law_words
    from components.models.generator.api import load_generator

    return load_generator(ref, backend=backend, threads=threads, extra_ad_law_words=gate_ad_law_words(cfg))


def withheld_summary(withheld: dict[str, dict[str, list[str]]]) -> str:
    """What the withheld copies break, in one line (the rules, not the copies)."""
    words = sorted({w for found in withheld.values() for w in found["ad_law"]})
    values = sorted({v for found in withheld.values() for v in found["values"]})
    parts = ([f"advertising-law words {'、'.join(words)}"] if words else []) + ([f"values the product does not list {'、'.join(values)}"] if values else [])
    return "; ".join(parts)
