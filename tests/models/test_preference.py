"""Preference models: encoding, nets, training (resume, honest evaluation), fallback, explanations."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from components.data.schema import write_all
from components.evaluation.preference import evaluate_model
from components.features.affinity import user_affinity_table
from components.features.build import NUMERIC_FEATURES, _compute_samples, compute_samples, samples_to_arrow
from components.models.preference.api import load_preference, save_model_dir, score_examples
from components.models.preference.data import OOV, FeatureDataError, FeatureEncoder, load_feature_tables
from components.models.preference.explain import explain, explain_row, pair_feature_row
from components.models.preference.fallback import fit_fallback
from components.models.preference.nets import AttributeInterest
from components.models.preference.train import train
from components.serving.preference_onnx import torch_predict
from components.training.preference import load_data
from tests.features.factories import START, event, frame, product, ts, user
from tests.features.hand_example import hand_tables
from tests.models.preference_data import synthetic_samples, write_synthetic_features

FAST = {"max_epochs": 2, "batch_size": 256, "bootstrap": 40, "hidden": [32], "embedding_dim": 8}


@pytest.fixture
def small_cfg(make_cfg):
    return make_cfg(preference=FAST)


# ---------------------------------------------------------------- encoding


def test_encoder_fits_on_train_only_and_maps_unseen_ids_to_oov():
    samples, attrs, _, _ = synthetic_samples(n_users=40, n_products=30, n_impressions=800)
    spec = {"numeric": ["u_n_clicks", "p_ctr", "u_recency_hours", "position"], "label": "label"}
    train_rows = samples[samples["split"] == "train"]
    encoder = FeatureEncoder.fit(train_rows, spec, attrs, history_length=5)
    x = encoder.transform(train_rows)
    # Normalization statistics come from train rows: standardized train columns have mean 0.
    np.testing.assert_allclose(x[:, : encoder.n_numeric].mean(axis=0), 0.0, atol=1e-4)
    assert not np.isnan(x).any()  # missing recency (no history) filled with the train median
    unseen = samples.head(2).assign(user_id=["nobody", "nobody-else"], product_id=["p-new", "p-new"])
    packed = encoder.transform(unseen)
    user_col, product_col = encoder.n_numeric, encoder.n_numeric + 1
    assert (packed[:, user_col] == OOV).all() and (packed[:, product_col] == OOV).all()
    # History: left-padded, most recent last, at most history_length entries.
    history = encoder.transform(samples.tail(1).assign(hist_products=[["p0001", "p0002", "never-seen"]]))[0, -5:]
    assert history[:2].tolist() == [0, 0] and history[-1] == OOV and history[2] == encoder.catalogue["p0001"]


def test_an_infinite_feature_is_refused_not_scored_as_certain():
    """Before, log1p/standardization kept inf: logreg scored the row 1.0 or 0.0, deep NaN."""
    samples, attrs, _, _ = synthetic_samples(n_users=20, n_products=15, n_impressions=300)
    train_rows = samples[samples["split"] == "train"]
    enc = FeatureEncoder.fit(train_rows, {"numeric": ["u_monetary", "p_ctr"]}, attrs, history_length=5)
    rows = samples.head(3).copy()
    rows["u_monetary"] = rows["u_monetary"].astype(float)
    rows.loc[rows.index[1], "u_monetary"] = -np.inf
    with pytest.raises(FeatureDataError, match="'u_monetary' is infinite in 1 rows"):
        enc.transform(rows)
    rows.loc[rows.index[1], "u_monetary"] = np.nan  # missing: the training fill, as before
    assert np.isfinite(enc.transform(rows)).all()


def test_encoder_round_trips_through_json(tmp_path):
    samples, attrs, _, _ = synthetic_samples(n_users=20, n_products=15, n_impressions=300)
    encoder = FeatureEncoder.fit(samples, {"numeric": ["p_ctr", "position"], "label": "label"}, attrs, history_length=4)
    encoder.save(tmp_path / "encoder.json")
    again = FeatureEncoder.load(tmp_path / "encoder.json")
    np.testing.assert_array_equal(encoder.transform(samples), again.transform(samples))


def test_bad_feature_files_fail_with_a_clear_message(small_cfg):
    out = write_synthetic_features(small_cfg, n_users=20, n_products=15, n_impressions=300)
    samples = pd.read_parquet(out / "samples.parquet")
    samples.drop(columns=["p_ctr"]).to_parquet(out / "samples.parquet")
    with pytest.raises(FeatureDataError, match=r"missing columns \['p_ctr'\]"):
        load_feature_tables(out)
    samples.assign(label=samples["label"] * 2).to_parquet(out / "samples.parquet")
    with pytest.raises(FeatureDataError, match="must be 0/1"):
        load_feature_tables(out)


def test_attribute_interest_estimates_relative_preference_from_history():
    # Attribute ids: 2,3 belong to key 1; 4 to key 2. History: value 2 twice, value 3 once.
    attribute_key = torch.tensor([0, 0, 1, 1, 2])
    history = torch.tensor([[[2, 4], [2, 0], [3, 0]]])
    target = torch.tensor([[3, 4]])
    mentions = torch.tensor([[2, 0]])
    out = AttributeInterest(n_attributes=5, n_keys=2)(target, mentions, history, torch.ones(1, 3), attribute_key)[0]
    values = dict(zip(AttributeInterest.names, out.tolist()))
    assert values["hist_attr_relative_mean"] == pytest.approx((0.5 + 1.0) / 2)   # 3 is half as liked as 2; 4 is the favourite
    assert values["hist_attr_relative_min"] == pytest.approx(0.5)
    assert values["copy_mentions_preferred"] == 1 and values["copy_n_mentions"] == 1


# ---------------------------------------------------------------- training


class _Interrupt(Callback):
    """Simulates a crash right after the first epoch's checkpoint was written."""

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == 1:
            raise RuntimeError("simulated crash")


def test_interrupted_training_resumes_from_the_last_checkpoint(small_cfg, tmp_path):
    write_synthetic_features(small_cfg, n_users=40, n_products=30, n_impressions=1200)
    data = load_data(small_cfg)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(small_cfg, "deep", data, tmp_path / "ckpt", callbacks=[_Interrupt()])
    resumed = train(small_cfg, "deep", data, tmp_path / "ckpt")
    assert resumed.resumed_from is not None and resumed.resumed_from.endswith("last.ckpt")
    assert resumed.first_epoch == 1 and resumed.epochs_completed == 2
    assert [row["epoch"] for row in resumed.history] == [0, 1]  # the curve survives the crash
    steps_per_epoch = int(np.ceil(len(data.train.y) / FAST["batch_size"]))
    assert resumed.global_step == 2 * steps_per_epoch
    # A finished run is reused, not retrained.
    again = train(small_cfg, "deep", data, tmp_path / "ckpt")
    assert again.resumed_from == "finished" and again.best_checkpoint == resumed.best_checkpoint


class _TrainLoss(Callback):
    """The epoch's mean training loss, as Lightning aggregates it."""

    def __init__(self):
        self.per_epoch: dict[int, float] = {}

    def on_train_epoch_end(self, trainer, pl_module):
        self.per_epoch[trainer.current_epoch] = float(trainer.callback_metrics["train_loss"])


def test_history_rows_pair_each_epochs_training_and_validation_loss(small_cfg, tmp_path):
    write_synthetic_features(small_cfg, n_users=40, n_products=30, n_impressions=1200)
    truth = _TrainLoss()
    fit = train(small_cfg.model_copy(update={"preference": small_cfg.preference.model_copy(update={"max_epochs": 3, "patience": 5})}),
                "logreg", load_data(small_cfg), tmp_path / "ckpt", callbacks=[truth])
    assert [row["epoch"] for row in fit.history] == [0, 1, 2]
    assert [row["train_loss"] for row in fit.history] == pytest.approx([truth.per_epoch[e] for e in range(3)])


class _Poison(Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        with torch.no_grad():
            pl_module.net.linear.weight.fill_(float("nan"))


def test_a_run_that_never_reaches_a_finite_validation_loss_is_not_kept(small_cfg, tmp_path):
    from components.models.preference.train import TrainingDiverged
    from components.training.checkpoints import DONE_FILE

    write_synthetic_features(small_cfg, n_users=40, n_products=30, n_impressions=1200)
    data = load_data(small_cfg)
    with pytest.raises(TrainingDiverged, match="Lower preference.logreg_lr"):
        train(small_cfg, "logreg", data, tmp_path / "ckpt", callbacks=[_Poison()])
    assert not list((tmp_path / "ckpt").glob(f"*/{DONE_FILE}"))  # the next run trains again
    assert train(small_cfg, "logreg", data, tmp_path / "ckpt").resumed_from != "finished"


def test_a_run_that_stopped_early_continues_when_patience_is_raised(small_cfg, tmp_path):
    write_synthetic_features(small_cfg, n_users=40, n_products=30, n_impressions=1200)
    data = load_data(small_cfg)

    def cfg(patience):  # a large step zig-zags, so patience 0 stops within a few epochs
        knobs = {"patience": patience, "max_epochs": 8, "logreg_lr": 0.5}
        return small_cfg.model_copy(update={"preference": small_cfg.preference.model_copy(update=knobs)})

    first = train(cfg(0), "logreg", data, tmp_path / "ckpt")
    assert first.stopped_early and first.epochs_completed < 8
    assert train(cfg(0), "logreg", data, tmp_path / "ckpt").resumed_from == "finished"
    patient = train(cfg(8), "logreg", data, tmp_path / "ckpt")
    assert patient.resumed_from.endswith("last.ckpt")
    assert patient.epochs_completed == 8 and not patient.stopped_early  # the new patience, not the stored 0


def _epochs_world(small_cfg):
    """Small synthetic features and a config maker for a given max_epochs (patience 5)."""
    write_synthetic_features(small_cfg, n_users=40, n_products=30, n_impressions=1200)

    def cfg(max_epochs):
        knobs = {"patience": 5, "max_epochs": max_epochs}
        return small_cfg.model_copy(update={"preference": small_cfg.preference.model_copy(update=knobs)})

    return load_data(small_cfg), cfg


def test_a_lower_max_epochs_trains_again_rather_than_reusing_a_longer_run(small_cfg, tmp_path):
    # A finished 3-epoch run was reused for max_epochs 1: dvc.lock then recorded max_epochs 1
    # for a 3-epoch model, which no `dvc checkout` + repro could reproduce.
    data, cfg = _epochs_world(small_cfg)
    assert train(cfg(3), "logreg", data, tmp_path / "ckpt").epochs_completed == 3
    shorter = train(cfg(1), "logreg", data, tmp_path / "ckpt")
    assert shorter.resumed_from is None and shorter.epochs_completed == 1
    assert train(cfg(1), "logreg", data, tmp_path / "ckpt").resumed_from == "finished"


def test_a_lower_max_epochs_starts_over_rather_than_resuming_a_longer_interrupted_run(small_cfg, tmp_path):
    # Only last.ckpt left (interrupted after its last epoch, before done.json): resuming it under
    # max_epochs 1 trained on to epoch 2, past the configured maximum.
    from components.models.preference.train import epochs_in_checkpoint
    from components.training.checkpoints import DONE_FILE, LAST

    data, cfg = _epochs_world(small_cfg)
    longer = train(cfg(3), "logreg", data, tmp_path / "ckpt")
    (longer.checkpoint_dir / DONE_FILE).unlink()
    assert epochs_in_checkpoint(longer.checkpoint_dir / LAST) == longer.epochs_completed == 3
    shorter = train(cfg(1), "logreg", data, tmp_path / "ckpt")
    assert shorter.resumed_from is None and shorter.first_epoch == 0 and shorter.epochs_completed == 1
    assert [row["epoch"] for row in shorter.history] == [0]
    # A last.ckpt within the new maximum still resumes.
    (shorter.checkpoint_dir / DONE_FILE).unlink()
    assert epochs_in_checkpoint(shorter.checkpoint_dir / LAST) == 1
    resumed = train(cfg(2), "logreg", data, tmp_path / "ckpt")
    assert resumed.resumed_from.endswith(LAST) and resumed.first_epoch == 1 and resumed.epochs_completed == 2


@pytest.mark.parametrize("shuffle", [False, True])
def test_evaluation_is_honest_shuffled_labels_score_chance(make_cfg, tmp_path, shuffle):
    cfg = make_cfg(preference={**FAST, "max_epochs": 3})
    write_synthetic_features(cfg, shuffle_labels=shuffle, n_users=120, n_products=100, n_impressions=5000)
    data = load_data(cfg)
    for kind in ("logreg", "deep"):
        fit = train(cfg, kind, data, tmp_path / "ckpt")
        p = torch_predict(fit.module.probability_model(), data.test.x)
        metrics = evaluate_model(data.test.y, p, threshold=0.2, n_boot=60, seed=0, clusters=data.test.frame["user_id"].to_numpy())
        if shuffle:
            assert abs(metrics["auc"] - 0.5) < 0.06, (kind, metrics["auc"])
            assert metrics["auc_ci_low"] < 0.5 < metrics["auc_ci_high"]
        else:
            assert metrics["auc_ci_low"] > 0.55, (kind, metrics["auc"])


# ---------------------------------------------------------------- model folder, fallback, explanations


@pytest.fixture
def model_dirs(small_cfg, tmp_path):
    write_synthetic_features(small_cfg, n_users=60, n_products=40, n_impressions=2000)
    data = load_data(small_cfg)
    fallback = fit_fallback(data.train.x, data.train.y, data.encoder, seed=0)
    dirs = {}
    for kind in ("logreg", "deep"):
        module = train(small_cfg, kind, data, tmp_path / "ckpt").module
        dirs[kind] = save_model_dir(
            tmp_path / kind, kind=kind, spec=module.spec, net=module.net, encoder=data.encoder, fallback=fallback,
            threshold=0.3, cold_policy="fallback", cold_min_events=5, extra={"label": "label"},
        )
    return small_cfg, data, dirs


def test_loaded_model_scores_like_the_trained_one_and_routes_cold_shoppers(model_dirs):
    cfg, data, dirs = model_dirs
    model = load_preference(dirs["deep"])
    frame = data.test.frame
    scores = model.predict(frame)
    cold = frame["u_n_impressions"].to_numpy() < 5
    np.testing.assert_allclose(scores[~cold], model.predict_model(frame)[~cold], atol=1e-6)
    np.testing.assert_allclose(scores[cold], model.predict_fallback(frame)[cold], atol=1e-9)
    scored = score_examples(model, frame)
    assert list(scored.columns) == ["example_id", "label", "score"] and len(scored) == len(frame)
    assert scored["example_id"].tolist() == frame["event_id"].tolist()



def test_an_empty_batch_scores_to_no_scores(model_dirs):
    """Zero rows give zero scores, as ONNX Runtime does; the deep net's torch path had raised
    "cannot reshape tensor of 0 elements into shape [0, -1]"."""
    cfg, data, dirs = model_dirs
    empty = data.test.frame.iloc[:0]
    for kind in ("logreg", "deep"):
        model = load_preference(dirs[kind])
        assert model.predict(empty).shape == (0,) and model.predict_model(empty).shape == (0,)
        assert model.predict_copies(empty, [], {}).shape == (0,)
        assert score_examples(model, empty).empty

def test_a_copy_scored_by_its_text_scores_as_the_same_copy_by_id(model_dirs):
    # How the server scores its freshly generated candidates (components/serving/choice.py):
    # by the values the text mentions, which training read from the copies table by copy id.
    cfg, data, dirs = model_dirs
    text = pd.read_parquet(cfg.stage_dir("clean") / "copies.parquet").set_index("copy_id")["text"]
    pairs = pd.read_parquet(cfg.stage_dir("features") / "product_attributes.parquet")
    attributes = {p: g.groupby("attr_key")["attr_value"].apply(list).to_dict() for p, g in pairs.groupby("product_id")}
    frame = data.test.frame[data.test.frame["copy_id"].isin(text.index)].head(40)
    assert len(frame) == 40
    mentioned = [data.encoder.mention_codes([text[c]], attributes[p])[0] for c, p in zip(frame["copy_id"], frame["product_id"])]
    assert sum((codes > 0).any() for codes in mentioned) >= 10  # the texts do mention values
    for kind in ("logreg", "deep"):
        model = load_preference(dirs[kind])
        by_id = model.predict_model(frame)
        by_text = [model.predict_copies(frame.iloc[[i]], [text[c]], attributes[p])[0]
                   for i, (c, p) in enumerate(zip(frame["copy_id"], frame["product_id"]))]
        np.testing.assert_allclose(by_text, by_id, atol=1e-6, err_msg=kind)
    with pytest.raises(ValueError, match="2 rows but 1 copy texts"):
        model.predict_copies(frame.head(2), ["x"], {})


def test_logreg_contributions_add_up_to_the_logit(model_dirs):
    cfg, data, dirs = model_dirs
    model = load_preference(dirs["logreg"])
    row = data.test.frame[data.test.frame["u_n_impressions"] >= 5].head(1)
    explanation = explain_row(model, row)
    logit = float(np.log(explanation.score / (1 - explanation.score)))
    assert sum(v for _, v in explanation.contributions) + float(model.net.linear.bias.detach()) == pytest.approx(logit, abs=1e-4)
    sizes = [abs(v) for _, v in explanation.contributions]
    assert sizes == sorted(sizes, reverse=True)


def test_deep_integrated_gradients_are_complete(model_dirs):
    cfg, data, dirs = model_dirs
    model = load_preference(dirs["deep"])
    row = data.test.frame[data.test.frame["u_n_impressions"] >= 5].head(1)
    explanation = explain_row(model, row)
    names = {name for name, _ in explanation.contributions}
    assert {"user_id", "product_attributes", "hist_products", "ua_attr_affinity", "copy_mentions"} <= names
    # Completeness: attributions sum to f(x) - f(baseline), baseline = zero lookups.
    x = torch.from_numpy(model.encode(row))
    parts = model.net.parts(x)
    baseline = [torch.zeros_like(t) for t in parts[:-1]] + [parts[-1]]
    with torch.no_grad():
        gap = float(model.net.head(*parts) - model.net.head(*baseline))
    assert sum(v for _, v in explanation.contributions) == pytest.approx(gap, abs=0.02 + 0.02 * abs(gap))


def test_explain_a_pair_by_ids(model_dirs):
    cfg, data, dirs = model_dirs
    samples = pd.read_parquet(cfg.stage_dir("features") / "samples.parquet")
    user = samples.loc[samples["u_n_impressions"] > 20, "user_id"].iloc[0]
    seen = set(samples.loc[samples["user_id"] == user, "product_id"])
    unseen_product = next(p for p in samples["product_id"].unique() if p not in seen)
    for product in (next(iter(seen)), unseen_product):
        top = explain(dirs["deep"], user, product, cfg, top_k=5)
        assert len(top) == 5 and all(isinstance(name, str) and np.isfinite(value) for name, value in top)
    with pytest.raises(KeyError, match="unknown shopper"):
        explain(dirs["deep"], "no-such-user", unseen_product, cfg)


def test_a_shopper_without_impressions_gets_the_features_stages_first_impression(cfg):
    """The hand example's log plus u3 (signed up, never shown anything) and u4 (one click on
    pB at 2h with no impression logged): explain's row is the features stage's own first
    impression, one microsecond after the last event (3h)."""
    tables = hand_tables()
    tables["users"] = pd.concat([tables["users"], frame("users", [user("u3", START - pd.Timedelta(days=2)), user("u4", START)])], ignore_index=True)
    tables["events"] = pd.concat([tables["events"], frame("events", [event("e11", "u4", "pB", "click", ts(hours=2), "cB", 1)])], ignore_index=True)
    _write_features_stage(cfg, tables)
    # End of data: 5 impressions, 3 clicks that answer one (u4's answers none: interest, not a
    # click rate) -> global CTR (3+1)/(5+2); CTR prior strength 10.
    global_ctr = 4 / 7
    u3 = pair_feature_row(cfg, "u3", "pC").iloc[0]
    assert (u3["user_id"], u3["product_id"], u3["category"], u3["position"]) == ("u3", "pC", "裙", 0)
    assert u3["u_has_history"] == 0 and u3["u_n_events"] == 0 and u3["is_cold"] == True  # noqa: E712
    assert u3["u_recency_hours"] >= 24 * 365 and list(u3["hist_products"]) == []
    assert u3["u_ctr"] == pytest.approx(global_ctr)
    assert u3["u_days_since_signup"] == pytest.approx(2 + 3 / 24)
    assert (u3["up_n_impressions"], u3["p_n_impressions"]) == (0, 1)  # pC: e4
    u4 = pair_feature_row(cfg, "u4", "pA").iloc[0]
    assert u4["u_has_history"] == 1 and u4["u_n_events"] == 1 and u4["u_n_clicks"] == 1
    assert u4["u_recency_hours"] == pytest.approx(1.0, abs=1e-6)
    assert u4["u_ctr"] == pytest.approx((0 + 10 * global_ctr) / 10)
    assert list(u4["hist_products"]) == ["pB"] and u4["ua_category_affinity"] < 0.5  # clicked 裤, not 裙
    with pytest.raises(KeyError, match="unknown shopper"):
        pair_feature_row(cfg, "no-such-user", "pA")


def test_a_product_no_impression_shows_yet_gets_its_catalogue_values_not_training_medians(cfg):
    """The hand example's log plus pD (in the catalogue, 裤 at 300, never shown): a known
    shopper's row for it carries what the features stage gives a first impression of pD (its
    probe below) for the product columns: category, log price, no impressions, the global
    click rate. Before, they were missing: the encoder filled the training medians, and the
    category went out of vocabulary."""
    tables = hand_tables()
    tables["products"] = pd.concat([tables["products"], frame("products", [product("pD", {"类型": ["裤"], "颜色": ["白色"]}, price=300.0)])], ignore_index=True)
    _write_features_stage(cfg, tables)
    probe = frame("events", [event("probe", "u1", "pD", "impression", ts(hours=3, seconds=1), None, 0)])
    with_probe, _ = compute_samples(pd.concat([tables["events"], probe], ignore_index=True), tables["products"], tables["copies"], tables["users"], cfg.features)
    stage = with_probe[with_probe["event_id"] == "probe"].iloc[0]
    row = pair_feature_row(cfg, "u1", "pD").iloc[0]
    assert row["category"] == stage["category"] == "裤"
    assert row["p_log_price"] == pytest.approx(stage["p_log_price"]) and row["p_log_price"] == pytest.approx(np.log1p(300.0))
    assert row["p_n_impressions"] == stage["p_n_impressions"] == 0
    assert row["p_ctr"] == pytest.approx(stage["p_ctr"])
    assert row["ua_category_affinity"] == pytest.approx(stage["ua_category_affinity"])  # u1's clicks in 裤 count
    with pytest.raises(KeyError, match="unknown product"):
        pair_feature_row(cfg, "u1", "no-such-product")


def test_a_new_pairs_category_affinity_counts_every_click_over_every_catalogue_category(cfg):
    """For a product the shopper never saw, the row's `ua_category_affinity` is the features
    stage's end-of-data value (its probe a microsecond after the last event): every click the
    shopper made, over every category of the catalogue. It counted clicked impressions among
    the categories impressions show: a double click on e3 and pE's category (上衣, never shown)
    gave (1 + 2/2) / (3 + 2) = 0.4 where the stage has (2 + 2/3) / (4 + 2) = 0.444."""
    tables = hand_tables()
    new = [product("pD", {"类型": ["裤"], "颜色": ["白色"]}, price=300.0), product("pE", {"类型": ["上衣"], "颜色": ["白色"]})]
    tables["products"] = pd.concat([tables["products"], frame("products", new)], ignore_index=True)
    double_click = frame("events", [event("e3b", "u1", "pB", "click", ts(hours=1, seconds=20), "cB", 1)])
    tables["events"] = pd.concat([tables["events"], double_click], ignore_index=True)
    _write_features_stage(cfg, tables)
    probe = frame("events", [event("probe", "u1", "pD", "impression", ts(hours=3, seconds=1), None, 0)])
    with_probe, _ = compute_samples(pd.concat([tables["events"], probe], ignore_index=True), tables["products"], tables["copies"], tables["users"], cfg.features)
    stage = with_probe[with_probe["event_id"] == "probe"].iloc[0]
    row = pair_feature_row(cfg, "u1", "pD").iloc[0]
    assert stage["ua_category_affinity"] == pytest.approx((2 + 2 / 3) / (4 + 2))
    assert row["ua_category_affinity"] == pytest.approx(stage["ua_category_affinity"])
    assert row["ua_attr_affinity"] == pytest.approx(stage["ua_attr_affinity"])


def _write_features_stage(cfg, tables) -> None:
    """The clean tables and the features stage's outputs for a log too short for its time split."""
    write_all(tables, cfg.stage_dir("clean"))
    samples, report, context = _compute_samples(tables["events"], tables["products"], tables["copies"], tables["users"], cfg.features)
    features = cfg.stage_dir("features")
    features.mkdir(parents=True)
    (features / "summary.json").write_text(json.dumps({"end_click_prior": report["end_click_prior"]}), encoding="utf-8")
    pq.write_table(samples_to_arrow(samples), features / "samples.parquet")
    user_affinity_table(context.click_pairs, context.index, context.user_ids, cfg.features.affinity_prior_strength).to_parquet(features / "user_affinity.parquet")
    context.product_attributes.to_parquet(features / "product_attributes.parquet")


def test_a_pairs_row_is_the_features_stages_row_right_after_the_last_event(cfg):
    """What explain and the copy server score is the features stage's own row of an impression a
    microsecond after the last event, for a pair shown before as for any other. The pair's latest
    impression was returned: u1 saw pA at 3h, then pB at 4h and clicked it, so pA's row missed
    two impressions, a click and pB in the recent products (quick profile: a pair last seen
    weeks earlier missed 95 of the shopper's impressions, median of 60 shoppers)."""
    tables = hand_tables()
    tables["products"] = pd.concat([tables["products"], frame("products", [product("pD", {"类型": ["裤"], "颜色": ["白色"]})])], ignore_index=True)
    tables["users"] = pd.concat([tables["users"], frame("users", [user("u3", START - pd.Timedelta(days=2))])], ignore_index=True)
    later = [event("e12", "u1", "pB", "impression", ts(hours=4), "cB", 1), event("e13", "u1", "pB", "click", ts(hours=4, seconds=5), "cB", 1)]
    tables["events"] = pd.concat([tables["events"], frame("events", later)], ignore_index=True)
    _write_features_stage(cfg, tables)
    pairs = [("u1", "pA"), ("u1", "pB"), ("u1", "pD"), ("u2", "pA"), ("u2", "pC"), ("u3", "pB")]
    probes = frame("events", [event(f"probe{i}", u, p, "impression", ts(hours=4, seconds=5) + pd.Timedelta(microseconds=1), None, 0) for i, (u, p) in enumerate(pairs)])
    stage, _ = compute_samples(pd.concat([tables["events"], probes], ignore_index=True), tables["products"], tables["copies"], tables["users"], cfg.features)
    stage = stage.set_index("event_id")
    for i, (u, p) in enumerate(pairs):
        expected, row = stage.loc[f"probe{i}"], pair_feature_row(cfg, u, p).iloc[0]
        for column in [*NUMERIC_FEATURES, "is_cold", "category"]:
            assert row[column] == pytest.approx(expected[column]), (u, p, column)
        assert list(row["hist_products"]) == list(expected["hist_products"]), (u, p)
        assert (row["user_id"], row["product_id"]) == (u, p) and row["copy_id"] is None
    assert list(stage.loc["probe0", "hist_products"]) == ["pA", "pC", "pB", "pB"] and stage.loc["probe0", "u_n_impressions"] == 5


def test_an_unseen_category_scores_as_the_average_training_category(small_cfg, tmp_path):
    """The out-of-vocabulary category (a category no training row had) gets the training rows'
    average category weight (logreg, fallback) or embedding (deep), in the saved model folder
    and its ONNX graph. Before, it kept its initial value: 0 for the logreg and the fallback, whose
    fitted category weights all sat below 0 in the quick profile (an unseen category's mean P(click)
    0.107 and 0.139 against 0.083 and 0.080), and a random vector for the deep model."""
    from components.serving.preference_onnx import OnnxPreferenceScorer
    from components.training.preference import evaluate_all

    write_synthetic_features(small_cfg, n_users=60, n_products=40, n_impressions=2000)
    data = load_data(small_cfg)
    fits = {kind: train(small_cfg, kind, data, tmp_path / "ckpt") for kind in ("logreg", "deep")}
    reports, _ = evaluate_all(small_cfg, data, fits, tmp_path / "out")
    category = np.rint(data.train.x[:, data.encoder.n_numeric + 2]).astype(np.int64)
    assert not (category == OOV).any()
    for kind, report in reports.items():
        model = load_preference(report.model_dir)
        table = model.net.category_weight if kind == "logreg" else model.net.category_embedding
        rows = table.weight.detach().numpy()
        np.testing.assert_allclose(rows[OOV], rows[category].mean(axis=0), rtol=1e-4, atol=1e-6)
        unseen = data.test.x[:50].copy()
        unseen[:, data.encoder.n_numeric + 2] = OOV
        np.testing.assert_allclose(OnnxPreferenceScorer(report.model_dir).predict_packed(unseen), model.predict_packed(unseen), atol=1e-4)
    fallback = model.fallback
    average = np.mean([fallback.category_coef[str(c)] for c in category])
    assert fallback.unseen_category_coef == pytest.approx(average)
    x = data.test.x[:1].copy()
    x[:, data.encoder.n_numeric + 2] = OOV
    logit = np.log(fallback.predict(x, data.encoder) / (1 - fallback.predict(x, data.encoder)))
    numeric = x[0, [data.encoder.numeric_names.index(c) for c in fallback.columns]] @ np.asarray(fallback.coef)
    assert logit[0] == pytest.approx(fallback.intercept + numeric + average, abs=1e-6)
