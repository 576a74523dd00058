"""Preference model speed: training throughput of the Lightning loop vs a plain torch loop on
the same net and data, scoring throughput of ONNX Runtime vs torch eager at batch 1 and 4096,
and the copy server's choice (scoring a request's 4 candidates) on the features as they are and
tiled ten times, when a trained model exists.

Data: the features stage of artifacts/{quick,full} when one exists (the real encoded rows),
else random rows shaped like the quick profile's (speed does not depend on what rows mean).
Both loops use the same DataLoader settings, optimizer and thread count; ONNX Runtime gets as
many intra-op threads as torch. Ratios within one run are the figures to read (shared machine).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

TRAIN_EPOCHS = 1
TRAIN_ROUNDS = 1  # pairs of alternating rounds (plain first, then Lightning first)
MAX_TRAIN_ROWS = 20000
SCORING_ROWS = 4096
LATENCY_CALLS = 300


def _data(cfg):
    """(PreferenceData-like encoded train rows, NetSpec builder input) from features or random."""
    from components.training.preference import load_data

    if (cfg.stage_dir("features") / "samples.parquet").exists():
        return load_data(cfg), "features of " + cfg.profile
    return None, "random rows (no features stage found)"


def _random_module(cfg, n_rows: int = MAX_TRAIN_ROWS):
    """A deep module over random vocabularies the size of the quick profile's, and random rows."""
    from components.models.preference.modules import module_class
    from components.models.preference.nets import N_IDS, NetSpec

    rng = np.random.default_rng(cfg.seed)
    p = cfg.preference
    spec = NetSpec(kind="deep", n_numeric=20, history_length=cfg.features.history_length, n_users=400, n_product_ids=1400,
                   n_categories=6, n_attributes=370, n_catalogue=1500, max_attrs=16, n_keys=20, n_copies=4400, max_mentions=16,
                   embedding_dim=p.embedding_dim, cross_layers=p.cross_layers, hidden=list(p.hidden), dropout=p.dropout,
                   id_dropout=p.id_dropout)
    tables = {
        "product_id_row": rng.integers(1, spec.n_product_ids, spec.n_catalogue),
        "product_attrs": np.where(rng.uniform(size=(spec.n_catalogue, 16)) < 0.5, rng.integers(2, spec.n_attributes, (spec.n_catalogue, 16)), 0),
        "attribute_key": rng.integers(1, spec.n_keys + 1, spec.n_attributes),
        "copy_mentions": np.where(rng.uniform(size=(spec.n_copies, 16)) < 0.3, rng.integers(2, spec.n_attributes, (spec.n_copies, 16)), 0),
    }
    x = np.hstack([
        rng.normal(size=(n_rows, spec.n_numeric)),
        rng.integers(1, spec.n_users, (n_rows, 1)), rng.integers(1, spec.n_catalogue, (n_rows, 1)),
        rng.integers(1, spec.n_categories, (n_rows, 1)), rng.integers(1, spec.n_copies, (n_rows, 1)),
        np.where(rng.uniform(size=(n_rows, spec.history_length)) < 0.5, rng.integers(2, spec.n_catalogue, (n_rows, spec.history_length)), 0),
    ]).astype(np.float32)
    assert x.shape[1] == spec.n_numeric + N_IDS + spec.history_length
    y = (rng.uniform(size=n_rows) < 0.1).astype(np.float32)
    module = module_class("deep")(spec=spec.to_dict(), lr=p.lr, weight_decay=p.weight_decay, tables=tables)
    return module, x, y


def _lightning_seconds(module, loader, epochs: int) -> float:
    import lightning.pytorch as pl

    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=epochs, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0)
    started = time.perf_counter()
    trainer.fit(module, train_dataloaders=loader)
    return time.perf_counter() - started


def _plain_seconds(module, loader, epochs: int) -> float:
    import torch
    from torch.nn import functional as F

    net = module.net.train()
    optimizer = module.configure_optimizers()
    started = time.perf_counter()
    for _ in range(epochs):
        for x, y in loader:
            optimizer.zero_grad(set_to_none=True)
            loss = F.binary_cross_entropy_with_logits(net(x), y)
            loss.backward()
            optimizer.step()
    torch.cuda.synchronize() if torch.cuda.is_available() else None
    return time.perf_counter() - started


def _pairs_per_second(fn, x: np.ndarray, calls: int) -> float:
    fn(x)  # warm-up
    started = time.perf_counter()
    for _ in range(calls):
        fn(x)
    return calls * len(x) / (time.perf_counter() - started)


def run(report: dict) -> None:
    import logging

    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from components.config import load_config
    from components.models.preference.train import build_module
    from components.serving.preference_onnx import export_onnx, onnx_predict, session, torch_predict

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    cfg = load_config("params.yaml", "quick")
    threads = torch.get_num_threads()
    data, source = _data(cfg)
    if data is not None:
        module, x, y = build_module(cfg, "deep", data), data.train.x[:MAX_TRAIN_ROWS], data.train.y[:MAX_TRAIN_ROWS]
    else:
        module, x, y = _random_module(cfg)
    report["data"] = source
    report["train_rows"] = int(len(x))
    report["torch_threads"] = threads

    # Training throughput: same net, data, batch size and optimizer; fresh weights for each loop.
    def loader():
        torch.manual_seed(cfg.seed)
        return DataLoader(TensorDataset(torch.from_numpy(x), torch.from_numpy(y)), batch_size=cfg.preference.batch_size, shuffle=True)

    # Alternating rounds, best of each: whichever loop ran first paid the process' warm-up
    # (allocator, kernels, thread pool), which read as Lightning 1.5-5.7x "faster" than plain torch.
    initial = {k: v.clone() for k, v in module.state_dict().items()}
    timings: dict[str, list[float]] = {"plain": [], "lightning": []}
    loops = {"plain": _plain_seconds, "lightning": _lightning_seconds}
    for order in [("plain", "lightning"), ("lightning", "plain")] * TRAIN_ROUNDS:
        for name in order:
            module.load_state_dict(initial)
            timings[name].append(loops[name](module, loader(), TRAIN_EPOCHS))
    plain_s, lightning_s = min(timings["plain"]), min(timings["lightning"])
    report["train_rounds"] = len(timings["plain"])
    rows = TRAIN_EPOCHS * len(x)
    report["train_plain_torch_rows_per_s"] = rows / plain_s
    report["train_lightning_rows_per_s"] = rows / lightning_s
    report["train_lightning_vs_plain_ratio"] = plain_s / lightning_s

    # Scoring throughput: torch eager vs ONNX Runtime on the same rows and thread count.
    model = module.probability_model()
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(model, x, Path(tmp) / "model.onnx")
        sess = session(path, threads=threads)
        rows_big = np.ascontiguousarray(np.resize(x, (SCORING_ROWS, x.shape[1])))
        for batch, calls in ((1, LATENCY_CALLS), (SCORING_ROWS, 10)):
            sample = rows_big[:batch]
            torch_rate = _pairs_per_second(lambda a: torch_predict(model, a), sample, calls)
            onnx_rate = _pairs_per_second(lambda a: onnx_predict(sess, a), sample, calls)
            report[f"score_b{batch}_torch_pairs_per_s"] = torch_rate
            report[f"score_b{batch}_onnx_pairs_per_s"] = onnx_rate
            report[f"score_b{batch}_onnx_vs_torch_ratio"] = onnx_rate / torch_rate

    _serve_choice(cfg, report)


SERVE_CHOICE_PAIRS = 30
SERVE_CHOICE_TILES = 10


def _tile_suffix(i: int) -> str:
    return f"~{i}" if i else ""  # tile 0 keeps the real ids


def _tiled_end_of_data(end, tiles: int):
    """`end` with each shopper once per tile (ids suffixed as in `_tile_suffix`), indexes sorted as built."""
    from dataclasses import replace

    import pandas as pd

    def by_shopper(table, level=None):
        parts = [table.set_axis(table.index.astype(str) + _tile_suffix(i)) if level is None
                 else table.rename(lambda user, i=i: user + _tile_suffix(i), level=level) for i in range(tiles)]
        return pd.concat(parts).sort_index()

    return replace(end, shoppers=by_shopper(end.shoppers), pair_impressions=by_shopper(end.pair_impressions, 0),
                   pair_clicks=by_shopper(end.pair_clicks, 0),
                   category_clicks=replace(end.category_clicks, counts=by_shopper(end.category_clicks.counts, 0)))


def _serve_choice(cfg, report: dict) -> None:
    """Per-request cost of the copy server's choice (components/serving/choice.py): the pair's
    feature row from the features held in memory, plus scoring 4 candidates. Once on the data as
    it is, once with every shopper copied SERVE_CHOICE_TILES times (a shop that much larger): the
    ratio is how the cost grows with the data."""
    import pandas as pd
    import pyarrow as pa

    from components.models.preference.api import load_preference
    from components.models.preference.explain import FeatureFiles
    from components.serving.choice import preference_scores
    from components.serving.copywriter import ShopperData
    from components.serving.models import NoModel, resolve_model

    try:
        model = load_preference(resolve_model(cfg, "preference").ref)
        data = ShopperData.load(cfg, with_features=True)
    except (NoModel, FileNotFoundError) as exc:
        report["serve_choice"] = f"skipped: {exc}"[:200]
        return
    samples = data.features.samples
    users = samples["user_id"].drop_duplicates().head(SERVE_CHOICE_PAIRS).tolist()
    products = list(data.attributes)[:SERVE_CHOICE_PAIRS]
    texts = ["这款连衣裙简约大方", "白色的设计显瘦", "宽松的版型，舒适自在", "复古的格纹，时尚感十足"]

    def p50_ms(shoppers: ShopperData) -> float:
        times = []
        for user, product in zip(users, products):
            started = time.perf_counter()
            preference_scores(model, cfg, shoppers, user, product, texts)
            times.append(time.perf_counter() - started)
        return 1000 * float(np.median(times))

    base = p50_ms(data)
    # Ten times the shoppers: every table a request looks a shopper up in (the samples, the
    # end-of-data rows, pair and category click counts, the affinities) holds each shopper once
    # per tile, the copies under ids ~1..~9, so a lookup that scans grows with the data.
    tiled = pd.concat([samples.assign(user_id=samples["user_id"] + _tile_suffix(i)) for i in range(SERVE_CHOICE_TILES)],
                      ignore_index=True)
    tiled = pa.Table.from_pandas(tiled, preserve_index=False).combine_chunks().to_pandas()  # as FeatureFiles.load reads it
    files = data.features
    affinity = pd.concat([files.user_affinity.assign(user_id=files.user_affinity["user_id"] + _tile_suffix(i))
                          for i in range(SERVE_CHOICE_TILES)], ignore_index=True)
    bigger = ShopperData(data.clean_dir, data.users, data.attributes, data.affinity, data.population, data.key,
                         FeatureFiles(files.features_dir, tiled, files.product_attributes, affinity, files.clean_dir,
                                      end_of_data=_tiled_end_of_data(files.end_of_data(cfg), SERVE_CHOICE_TILES)))
    report["serve_choice_impressions"] = int(len(samples))
    report["serve_choice_4_candidates_p50_ms"] = base
    report[f"serve_choice_4_candidates_x{SERVE_CHOICE_TILES}_data_p50_ms"] = p50_ms(bigger)
    report[f"serve_choice_x{SERVE_CHOICE_TILES}_data_cost_ratio"] = report[f"serve_choice_4_candidates_x{SERVE_CHOICE_TILES}_data_p50_ms"] / base
