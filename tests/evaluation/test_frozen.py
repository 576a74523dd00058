"""The frozen evaluation snapshot: frozen once per profile, reused, refreshed only on request."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from components.evaluation.frozen import (
    SnapshotError,
    ensure_snapshot,
    frozen_dir,
    load_snapshot,
    refresh_snapshots,
    score_on_snapshot,
)


def write_samples(cfg, batch: str, n: int = 70) -> None:
    """n rows, the last 20 in the test split: 10 clicks and 10 non-clicks, the least the gate takes."""
    frame = pd.DataFrame(
        {
            "event_id": [f"{batch}-{i}" for i in range(n)],
            "label": np.arange(n) % 2,
            "x": np.linspace(0, 1, n),
            "split": ["train"] * (n - 20) + ["test"] * 20,
        }
    )
    path = cfg.stage_dir("features") / "samples.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path, index=False)


def test_preference_snapshot_is_frozen_from_the_first_test_split_and_reused(cfg):
    write_samples(cfg, "first")
    first = ensure_snapshot(cfg, "preference")
    assert first.path.parent == frozen_dir(cfg) == cfg.state_dir() / "frozen_eval"
    assert first.n_rows == 20 and first.rows["example_id"].tolist() == [f"first-{i}" for i in range(50, 70)]
    write_samples(cfg, "second")  # a new batch arrives
    again = ensure_snapshot(cfg, "preference")
    assert again.fingerprint == first.fingerprint and again.rows["example_id"].str.startswith("first-").all()
    refreshed = ensure_snapshot(cfg, "preference", refresh=True)
    assert refreshed.fingerprint != first.fingerprint and refreshed.rows["example_id"].str.startswith("second-").all()
    write_samples(cfg, "third")
    assert refresh_snapshots(cfg, ("preference",)) == {"preference": load_snapshot(cfg, "preference").fingerprint}
    assert load_snapshot(cfg, "preference").rows["example_id"].str.startswith("third-").all()


def test_the_snapshot_is_refrozen_once_new_data_trains_on_its_rows(cfg):
    # New days of data move the frozen test rows into the candidate's train/valid split: gating
    # the candidate on rows it trained on would favour it over the champion.
    import json

    write_samples(cfg, "first")
    first = ensure_snapshot(cfg, "preference")
    grown = pd.read_parquet(cfg.stage_dir("features") / "samples.parquet").assign(split="train")
    later = pd.DataFrame({"event_id": [f"later-{i}" for i in range(20)], "label": np.arange(20) % 2, "x": 0.5, "split": "test"})
    pd.concat([grown, later], ignore_index=True).to_parquet(cfg.stage_dir("features") / "samples.parquet", index=False)
    again = ensure_snapshot(cfg, "preference")
    assert again.fingerprint != first.fingerprint and again.rows["example_id"].str.startswith("later-").all()
    meta = json.loads(again.path.with_name("preference.meta.json").read_text(encoding="utf-8"))
    assert meta["reason"].startswith("20 of the 20 rows frozen at")
    assert ensure_snapshot(cfg, "preference").fingerprint == again.fingerprint  # stable while nothing overlaps


def test_the_preference_snapshot_freezes_each_impressions_copy_options(cfg):
    """The copies each test impression could have shown travel with it (the gate's copy-choice
    rule); a features stage with no options (OBD: no copies) freezes none and no column."""
    write_samples(cfg, "b1")
    options_path = cfg.stage_dir("features") / "copy_options.parquet"
    pd.DataFrame({"event_id": [], "copy_id": [], "n_options": [], "uc_copy_pref_mentions": []}).astype(
        {"event_id": str, "copy_id": str, "n_options": "int64", "uc_copy_pref_mentions": "int64"}).to_parquet(options_path)
    assert "copy_options" not in ensure_snapshot(cfg, "preference").rows.columns
    pd.DataFrame({"event_id": ["b1-55", "b1-55", "b1-2"], "copy_id": ["a", "b", "a"], "n_options": [2, 2, 2],
                  "uc_copy_pref_mentions": [1, 0, 0]}).to_parquet(options_path)
    rows = ensure_snapshot(cfg, "preference", refresh=True).rows.set_index("event_id")
    assert [o["copy_id"] for o in rows.loc["b1-55", "copy_options"]] == ["a", "b"]  # b1-2 is a train row: not frozen
    assert rows["copy_options"].map(len).sum() == 2


def test_a_snapshot_missing_its_meta_file_is_refrozen_with_that_reason(cfg, caplog):
    import json

    write_samples(cfg, "first")
    first = ensure_snapshot(cfg, "preference")
    meta = first.path.with_name("preference.meta.json")
    meta.unlink()
    again = ensure_snapshot(cfg, "preference")
    assert json.loads(meta.read_text(encoding="utf-8"))["reason"] == "preference.meta.json was missing, so the snapshot could not be verified"
    assert again.n_rows == first.n_rows and "re-freezing the preference evaluation snapshot" in caplog.text


def test_a_tampered_snapshot_is_refused(cfg):
    write_samples(cfg, "b")
    snapshot = ensure_snapshot(cfg, "preference")
    snapshot.rows.iloc[:3].drop(columns=["attributes"], errors="ignore").to_parquet(snapshot.path, index=False)
    with pytest.raises(SnapshotError, match="changed after it was frozen"):
        load_snapshot(cfg, "preference")


def test_missing_sources_give_clear_errors(cfg):
    with pytest.raises(SnapshotError, match="samples.parquet does not exist"):
        ensure_snapshot(cfg, "preference")
    with pytest.raises(SnapshotError, match="no frozen snapshot is defined for model family 'effect'"):
        ensure_snapshot(cfg, "effect")


def test_generator_snapshot_is_the_corpus_test_split(make_cfg):
    cfg = make_cfg(generator={"eval_samples": 7})
    snapshot = ensure_snapshot(cfg, "generator")
    assert snapshot.n_rows == 7 and snapshot.rows["example_id"].str.startswith("corpus-").all()
    from components.data.corpus import split_of

    assert all(split_of(c, cfg.data.valid_fraction, cfg.data.test_fraction) == "test" for c in snapshot.rows["content"])
    assert isinstance(snapshot.rows["attributes"].iloc[0], dict)  # rebuilt on load for the generator API
    assert load_snapshot(cfg, "generator").fingerprint == snapshot.fingerprint


def test_the_generator_snapshot_is_refrozen_when_a_new_split_trains_on_its_rows(make_cfg):
    from components.data.corpus import split_of

    first = ensure_snapshot(make_cfg(generator={"eval_samples": 40}), "generator")
    narrower = make_cfg(generator={"eval_samples": 40}, data={"test_fraction": 0.05, "valid_fraction": 0.02})
    moved = sum(split_of(c, 0.02, 0.05) != "test" for c in first.rows["content"])
    assert moved > 0  # these rows are now in the candidate's train or valid split
    again = ensure_snapshot(narrower, "generator")
    assert again.fingerprint != first.fingerprint
    assert all(split_of(c, 0.02, 0.05) == "test" for c in again.rows["content"])
    assert ensure_snapshot(narrower, "generator").fingerprint == again.fingerprint


def test_the_preference_snapshot_is_refrozen_after_the_pseudonym_key_is_rotated(cfg, monkeypatch):
    import json

    from components.data.privacy import profile_key, rotate_key

    monkeypatch.delenv(cfg.privacy.key_env, raising=False)
    old = profile_key(cfg).key_id
    write_samples(cfg, "first")
    first = ensure_snapshot(cfg, "preference")
    assert ensure_snapshot(cfg, "preference").fingerprint == first.fingerprint
    monkeypatch.setenv(cfg.privacy.key_env, "n" * 64)
    new = rotate_key(cfg)["key_id"]
    again = ensure_snapshot(cfg, "preference")  # its shoppers' ids were made with the old key
    meta = json.loads(again.path.with_name("preference.meta.json").read_text(encoding="utf-8"))
    assert meta["pseudonym_key_id"] == new and f"pseudonym key {old}" in meta["reason"]
    assert ensure_snapshot(cfg, "preference").created_at == again.created_at


def test_scores_are_cached_per_model_and_snapshot(cfg):
    write_samples(cfg, "c")
    snapshot = ensure_snapshot(cfg, "preference")
    calls = []

    def scorer(model_ref, rows):
        calls.append(model_ref)
        return pd.DataFrame({"example_id": rows["example_id"], "label": rows["label"], "score": rows["x"]})

    first = score_on_snapshot(snapshot, "/models/a", cache_key="runs:/a/model", scorer=scorer)
    again = score_on_snapshot(snapshot, "models:/m/1", cache_key="runs:/a/model", scorer=scorer)
    pd.testing.assert_frame_equal(first, again)
    assert calls == ["/models/a"]
    with pytest.raises(SnapshotError, match="left 20 snapshot examples unscored"):
        score_on_snapshot(snapshot, "b", cache_key="runs:/b/model", scorer=lambda ref, rows: rows.iloc[:0][["example_id"]])


def test_a_test_split_too_small_to_gate_is_not_frozen(cfg):
    # The OBD sample's two test days held 9 clicks: the snapshot was frozen anyway, and every
    # release then crashed on it, even after more test days were configured.
    write_samples(cfg, "few", n=30)
    frame = pd.read_parquet(cfg.stage_dir("features") / "samples.parquet")
    frame.loc[frame["split"] == "test", "label"] = [1] * 9 + [0] * 11
    frame.to_parquet(cfg.stage_dir("features") / "samples.parquet", index=False)
    with pytest.raises(SnapshotError, match="its test split has 9 clicks and 11 non-clicks; the release gate needs at least 10"):
        ensure_snapshot(cfg, "preference")
    assert load_snapshot(cfg, "preference") is None  # nothing frozen

    write_samples(cfg, "enough")
    assert ensure_snapshot(cfg, "preference").rows["example_id"].str.startswith("enough-").all()


def test_the_gate_weighs_the_copy_choice_by_the_models_scores_for_cold_shoppers_too(make_cfg, tmp_path):
    """The copy server and the training report choose by the model's scores: the cold-start
    fallback does not read the copy, so routing a cold shopper's options to it ties them all and
    turns the gate's choice there into the logged (uniform) one."""
    from components.evaluation.copy_choice import choice_weights, with_copy_options
    from components.evaluation.frozen import score_preference
    from components.models.preference.api import load_preference, save_model_dir
    from components.models.preference.fallback import fit_fallback
    from components.models.preference.train import train
    from components.training.preference import load_data
    from tests.models.preference_data import write_synthetic_features

    cfg = make_cfg(preference={"max_epochs": 1, "batch_size": 256, "hidden": [16], "embedding_dim": 8})
    write_synthetic_features(cfg, n_users=60, n_products=40, n_impressions=2000)
    data = load_data(cfg)
    fallback = fit_fallback(data.train.x, data.train.y, data.encoder, seed=0)
    module = train(cfg, "deep", data, tmp_path / "ckpt").module
    model_dir = save_model_dir(tmp_path / "deep", kind="deep", spec=module.spec, net=module.net, encoder=data.encoder,
                               fallback=fallback, threshold=0.3, cold_policy="fallback", cold_min_events=5)
    # Every impression of a cold shopper may show its own copy or two others of the catalog's.
    cold = data.cold.frame.assign(example_id=data.cold.frame["event_id"])
    cold = cold[cold["u_n_impressions"] < 5].head(30)
    assert len(cold) >= 10
    others = data.encoder.mentions.keys()
    options = pd.DataFrame([
        {"event_id": e, "copy_id": c, "n_options": 3, "uc_copy_pref_mentions": m}
        for e, shown in zip(cold["event_id"], cold["copy_id"])
        for c, m in zip([shown, *[o for o in sorted(others) if o != shown][:2]], (0, 1, 2))
    ])
    rows = with_copy_options(cold.reset_index(drop=True), options)
    scored = score_preference(str(model_dir), rows)
    model = load_preference(model_dir)
    expected = choice_weights(rows, model.predict_model)
    np.testing.assert_allclose(scored["choice_weight"].to_numpy(), expected.to_numpy())
    assert not np.allclose(scored["choice_weight"], 1.0)  # the fallback's tie would weigh every row 1


def test_an_erased_shoppers_rows_leave_the_frozen_preference_set_for_both_models(cfg):
    from components.data.erasure import record_forgotten

    n = 80  # 40 test rows: 20 clicks, 20 not; shopper u_gone has 8 of them
    users = ["u_gone" if i % 10 in (0, 1) and i >= 40 else f"u_{i % 7}" for i in range(n)]
    frame = pd.DataFrame({"event_id": [f"e{i}" for i in range(n)], "user_id": users, "label": np.arange(n) % 2,
                          "x": np.linspace(0, 1, n), "split": ["train"] * 40 + ["test"] * 40})
    path = cfg.stage_dir("features") / "samples.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path, index=False)
    first = ensure_snapshot(cfg, "preference")
    assert first.n_rows == 40 and "u_gone" in set(first.rows["user_id"])
    scored = []

    def scorer(model_ref, rows):
        scored.append((model_ref, len(rows)))
        return pd.DataFrame({"example_id": rows["example_id"], "label": rows["label"], "score": 0.5})

    score_on_snapshot(first, "champion", cache_key="champion", scorer=scorer)
    record_forgotten(cfg, ["u_gone"], "key")

    after = ensure_snapshot(cfg, "preference")
    assert after.n_rows == 32 and "u_gone" not in set(after.rows["user_id"])
    assert after.fingerprint != first.fingerprint and load_snapshot(cfg, "preference").fingerprint == after.fingerprint
    assert after.path.read_bytes() == first.path.read_bytes()  # not re-frozen: the same rows, less the shopper's
    for model in ("champion", "candidate"):  # the champion's scores on the full set are not reused
        assert len(score_on_snapshot(after, model, cache_key=model, scorer=scorer)) == 32
    assert scored == [("champion", 40), ("champion", 32), ("candidate", 32)]
    refrozen = ensure_snapshot(cfg, "preference", refresh=True)  # from features built before the erasure
    assert refrozen.n_rows == 32 and "u_gone" not in set(pd.read_parquet(refrozen.path)["user_id"])
