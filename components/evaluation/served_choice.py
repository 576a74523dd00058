"""What the copy server's choice earns on its generated candidates, in the simulator's truth.

    python -m components.evaluation.served_choice --profile quick [--requests 800]

On a project whose retrain of a simulated profile has run (the simulator's truth is in
source/ground_truth/). For random test impressions (bots excluded), it writes the server's
candidates for that shopper and product with the model the server would load (the champion
release, or before any release the local training output), lets the preference model choose as
the server does (components/serving/choice.py), and prices every candidate with the simulator's
exact click probability (components/evaluation/copy_choice.py). It prints the expected click
rate of a uniform draw, of the model's pick, of the epsilon-greedy default and of the best
candidate, with a bootstrap interval of the pick's lift that resamples shoppers.

Each request is replayed with what was known at its impression's time, never after: the
impression's own feature row from the features stage (its samples row, computed from earlier
events only), and the focus and top values from the shopper's and population's affinities over
the clicks strictly before it (the stage's end-of-data tables, computed over those clicks). A
shopper with no earlier impression gets the uniform draw, as the server gives a shopper it has
no impression of. (The server reads all of them as of the end of the data; replaying a test
impression with those would let its own click, and every later one, choose its copy.)

The training report's "Copy choice" measures the same choice among the catalog's own copies;
this measures it where the server uses it, on top of the focus that already steers every
candidate toward the shopper's values.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from components.config import Config, load_config
from components.features.affinity import ClickPairs, EventCodes, population_affinity_table, user_affinity_table
from components.features.attribute_index import AttributeIndex, explode_product_attributes
from components.features.pit import to_epoch_us
from components.serving.copywriter import affinity_lift

GENERATED = "generated-candidate"
BOOTSTRAP = 2000  # resamples of the requests


@dataclass(frozen=True)
class Request:
    """What the server would have read for a test impression, as of the impression's time."""

    row: pd.DataFrame                 # the impression's feature row (samples: earlier events only)
    top_values: set[tuple[str, str]]  # the shopper's top value of each key
    lift: dict[str, float]            # key#value -> the shopper's affinity over the population's (the focus)
    known: bool                       # an earlier impression of the shopper: the server scores, else draws uniformly


class AffinitiesAsOf:
    """The features stage's end-of-data affinity tables (user_affinity, population_affinity), as
    they were at any time: computed by the stage's own functions over the clicks strictly before
    it, as the stage's features are."""

    def __init__(self, events: pd.DataFrame, products: pd.DataFrame, users: pd.DataFrame, strength: float) -> None:
        # The stage's order: it breaks a top value's tie by which click came first.
        events = events.sort_values(["timestamp", "event_id"], kind="stable", ignore_index=True)
        clicks = events[events["event_type"] == "click"]
        product_ids = pd.Index(products["product_id"])
        self.user_ids = pd.Index(users["user_id"].unique())
        user, product = self.user_ids.get_indexer(clicks["user_id"]), product_ids.get_indexer(clicks["product_id"])
        if (user < 0).any() or (product < 0).any():
            raise ValueError(f"{int((user < 0).sum())} click(s) of unknown shoppers, {int((product < 0).sum())} of unknown products")
        self.index = AttributeIndex.build(explode_product_attributes(products), product_ids)
        self.clicks = ClickPairs.from_clicks(EventCodes(user, product, to_epoch_us(clicks["timestamp"])), self.index)
        self.strength = strength

    def tables(self, user_id: str, at: pd.Timestamp) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(the shopper's affinity rows, everyone's) over the clicks strictly before `at`."""
        earlier = self.clicks.where(self.clicks.time < to_epoch_us(pd.Series([at]))[0])
        mine = earlier.where(earlier.user == self.user_ids.get_loc(user_id))
        return (user_affinity_table(mine, self.index, self.user_ids, self.strength),
                population_affinity_table(earlier, self.index, self.strength))


def request_as_of(impression: pd.DataFrame, affinities: AffinitiesAsOf) -> Request:
    """The request a test impression (its one samples row) makes, with what was known at its time."""
    if len(impression) != 1:
        raise ValueError(f"request_as_of expects one impression's row, got {len(impression)}")
    first = impression.iloc[0]
    mine, population = affinities.tables(first["user_id"], first["timestamp"])
    top = mine[mine["is_top"].astype(bool)]
    return Request(
        row=impression.reset_index(drop=True),
        top_values=set(zip(top["attr_key"], top["attr_value"])),
        lift=affinity_lift(mine, population.rename(columns={"affinity": "affinity_population"})),
        known=int(first["u_n_impressions"]) > 0,
    )


@dataclass(frozen=True)
class Replayed:
    texts: list[str]            # the distinct servable candidates
    scores: np.ndarray | None   # None: the uniform draw (no candidate, or a shopper not known yet)
    scoring_ms: float | None    # the model on the candidates


def replay(impression: pd.DataFrame, affinities: AffinitiesAsOf, data, files, generator, preference, cfg: Config) -> Replayed:
    """The server's candidates for a test impression (its one samples row) and the preference
    model's scores of them, with what was known at the impression's time (`request_as_of`)."""
    from components.serving.choice import candidate_scores
    from components.serving.copywriter import personalized_copies

    request = request_as_of(impression, affinities)
    first = impression.iloc[0]
    texts = list(dict.fromkeys(personalized_copies(data, generator, first["user_id"], first["product_id"], n=cfg.serving.candidates,
                                                   decoding=cfg.serving.decoding, lift=request.lift).copies))
    if not texts or not request.known:
        return Replayed(texts, None, None)
    tick = time.perf_counter()
    scores = candidate_scores(preference, files, request.row, texts, request.top_values)
    return Replayed(texts, scores, 1000 * (time.perf_counter() - tick))


def measure(cfg: Config, requests: int, seed: int = 0) -> dict:
    from components.data.schema import load_table
    from components.data.source import read_ground_truth
    from components.evaluation.copy_choice import simulator_copy_weight, true_option_probabilities
    from components.models.preference.api import load_preference
    from components.models.preference.explain import FeatureFiles
    from components.serving.choice import choice_probabilities, is_best
    from components.serving.copywriter import ShopperData, load_served_generator
    from components.serving.models import resolve_model

    truth_dir = cfg.stage_dir("source") / "ground_truth"
    if not (truth_dir / "impressions.parquet").exists():
        raise FileNotFoundError(f"{truth_dir}: no simulator truth (this needs a profile with data.source: simulated)")
    clean = cfg.stage_dir("clean")
    data = ShopperData.load(cfg)  # ids and catalog only: the features are read as of each impression
    files = FeatureFiles.load(cfg.stage_dir("features"), clean)
    generator = load_served_generator(cfg, resolve_model(cfg, "generator").ref, backend=cfg.serving.backend, threads=cfg.serving.threads or None)
    preference = load_preference(resolve_model(cfg, "preference").ref)
    truth = read_ground_truth(cfg, "impressions")
    preferences = read_ground_truth(cfg, "user_preferences")
    catalog_copies = load_table(clean, "copies")
    products = load_table(clean, "products")
    weight = simulator_copy_weight(truth_dir)
    affinities = AffinitiesAsOf(load_table(clean, "events"), products, load_table(clean, "users"), cfg.features.affinity_prior_strength)

    samples = files.samples
    human = set(truth.loc[~truth["is_bot"].astype(bool), "event_id"])
    test = samples[(samples["split"] == "test") & samples["event_id"].isin(human) & samples["copy_id"].notna()]
    drawn = test.sample(min(requests, len(test)), random_state=seed)

    started = time.perf_counter()
    options, generated, picks, scoring_ms = [], [], {}, []
    shoppers = dict(zip(drawn["event_id"], drawn["user_id"]))
    for at in range(len(drawn)):
        impression = drawn.iloc[at]
        replayed = replay(drawn.iloc[[at]], affinities, data, files, generator, preference, cfg)
        texts, scores = replayed.texts, replayed.scores
        if not texts:  # every candidate broke a hard rule: the server serves none, there is nothing to price
            continue
        if replayed.scoring_ms is not None:
            scoring_ms.append(replayed.scoring_ms)
        picks[impression.event_id] = scores
        # The impression's own (shown) copy anchors the truth; its candidates are priced against it.
        ids = [f"{GENERATED}-{impression.event_id}-{i}" for i in range(len(texts))]
        options.append(pd.DataFrame({"event_id": impression.event_id, "copy_id": [impression.copy_id, *ids],
                                     "product_id": impression.product_id, "shown": [True] + [False] * len(texts)}))
        generated.append(pd.DataFrame({"copy_id": ids, "product_id": impression.product_id, "text": texts}))
    options = pd.concat(options, ignore_index=True)
    copies = pd.concat([catalog_copies[["copy_id", "product_id", "text"]], *generated], ignore_index=True)
    options["p"] = true_option_probabilities(options, truth, preferences, copies, products, weight)
    rows, eps = [], cfg.serving.exploration
    for event_id, group in options[~options["shown"]].groupby("event_id", sort=False):
        p, scores = group["p"].to_numpy(), picks[event_id]
        if scores is None or len(p) == 1:
            pick = served = p.mean()  # the server's uniform draw
        else:
            scores = np.asarray(scores, dtype=np.float64)
            pick = float(p[is_best(scores, scores.max())].mean())  # the greedy part, shared by equal best scores
            served = float(choice_probabilities(scores, eps) @ p)  # what the server's draw earns on average
        rows.append({"user_id": shoppers[event_id], "uniform": p.mean(), "pick": pick, "served": served, "best": p.max(),
                     "differ": bool(p.max() > p.min()), "scored": scores is not None})
    return {
        "profile": cfg.profile,
        **summarize(pd.DataFrame(rows), seed),
        # the model on the candidates (the server also builds the pair's row: make bench)
        # None (JSON null) when no request was scored: NaN is not JSON
        "scoring_ms_p50": float(np.median(scoring_ms)) if scoring_ms else None,
        "scoring_ms_p95": float(np.percentile(scoring_ms, 95)) if scoring_ms else None,
        "seconds": round(time.perf_counter() - started, 1),
    }


def summarize(frame: pd.DataFrame, seed: int) -> dict:
    """Expected click rates over the requests (one row each: user_id, uniform, pick, served,
    best, differ, scored) and the pick's lift, with an interval that resamples whole shoppers:
    a shopper's requests share their preferences, so they are not independent draws."""
    from components.evaluation.preference import _interval, bootstrap_indices

    uniform, pick, best = frame["uniform"].mean(), frame["pick"].mean(), frame["best"].mean()
    greedy = frame["served"].mean()
    pick_rate, uniform_rate = frame["pick"].to_numpy(), frame["uniform"].to_numpy()
    shoppers = frame["user_id"].astype(str).to_numpy()
    lift = _interval(pick / uniform - 1, [pick_rate[rows].mean() / uniform_rate[rows].mean() - 1
                                          for rows in bootstrap_indices(len(frame), BOOTSTRAP, seed, shoppers)])
    return {
        "requests": len(frame),
        "shoppers": int(frame["user_id"].nunique()),
        "scored_share": float(frame["scored"].mean()),
        "candidates_differ_share": float(frame["differ"].mean()),
        "ctr_uniform": float(uniform),
        "ctr_pick": float(pick),
        "ctr_epsilon_greedy": float(greedy),
        "ctr_best": float(best),
        "lift_pick": float(pick / uniform - 1),
        "lift_pick_ci": [lift.low, lift.high],
        "lift_epsilon_greedy": float(greedy / uniform - 1),
        "gap_closed": float((pick - uniform) / (best - uniform)) if best > uniform else float("nan"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--requests", type=int, default=800)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        report = measure(load_config(args.params, args.profile), args.requests, args.seed)
    except (FileNotFoundError, LookupError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
