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

The training report's "Copy choice" measures the same choice among the catalog's own copies;
this measures it where the server uses it, on top of the focus that already steers every
candidate toward the shopper's values.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from components.config import Config, load_config

GENERATED = "generated-candidate"
BOOTSTRAP = 2000  # resamples of the requests


def measure(cfg: Config, requests: int, seed: int = 0) -> dict:
    from components.data.schema import load_table
    from components.data.source import read_ground_truth
    from components.evaluation.copy_choice import simulator_copy_weight, true_option_probabilities
    from components.models.preference.api import load_preference
    from components.serving.choice import choice_probabilities, is_best, preference_scores
    from components.serving.copywriter import ShopperData, load_served_generator, personalized_copies
    from components.serving.models import resolve_model

    truth_dir = cfg.stage_dir("source") / "ground_truth"
    if not (truth_dir / "impressions.parquet").exists():
        raise FileNotFoundError(f"{truth_dir}: no simulator truth (this needs a profile with data.source: simulated)")
    data = ShopperData.load(cfg, with_features=True)
    generator = load_served_generator(cfg, resolve_model(cfg, "generator").ref, backend=cfg.serving.backend, threads=cfg.serving.threads or None)
    preference = load_preference(resolve_model(cfg, "preference").ref)
    truth = read_ground_truth(cfg, "impressions")
    preferences = read_ground_truth(cfg, "user_preferences")
    catalog_copies = load_table(cfg.stage_dir("clean"), "copies")
    products = load_table(cfg.stage_dir("clean"), "products")
    weight = simulator_copy_weight(truth_dir)

    samples = data.features.samples
    human = set(truth.loc[~truth["is_bot"].astype(bool), "event_id"])
    test = samples[(samples["split"] == "test") & samples["event_id"].isin(human) & samples["copy_id"].notna()]
    drawn = test.sample(min(requests, len(test)), random_state=seed)

    started = time.perf_counter()
    options, generated, picks, scoring_ms = [], [], {}, []
    shoppers = dict(zip(drawn["event_id"], drawn["user_id"]))
    for impression in drawn.itertuples(index=False):
        texts = list(dict.fromkeys(personalized_copies(data, generator, impression.user_id, impression.product_id,
                                                       n=cfg.serving.candidates, decoding=cfg.serving.decoding).copies))
        if not texts:  # every candidate broke a hard rule: the server serves none, there is nothing to price
            continue
        tick = time.perf_counter()
        scores = preference_scores(preference, cfg, data, impression.user_id, impression.product_id, texts)
        scoring_ms.append(1000 * (time.perf_counter() - tick))
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
        "scoring_ms_p50": float(np.median(scoring_ms)),
        "scoring_ms_p95": float(np.percentile(scoring_ms, 95)),
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
