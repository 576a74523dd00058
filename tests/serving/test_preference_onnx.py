"""The preference model in ONNX: parity with torch on held-out rows, dynamic batch, frame scoring."""

from __future__ import annotations

import numpy as np
import pytest

from components.models.preference.api import load_preference, save_model_dir
from components.models.preference.fallback import fit_fallback
from components.models.preference.train import train
from components.serving.preference_onnx import (
    ONNX_FILE,
    OnnxPreferenceScorer,
    ParityError,
    check_parity,
    export_onnx,
    torch_predict,
)
from components.training.preference import load_data
from tests.models.preference_data import write_synthetic_features


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from components.config import load_config
    from tests.conftest import PARAMS

    root = tmp_path_factory.mktemp("onnx")
    cfg = load_config(PARAMS, "quick", {
        "paths": {"artifacts": str(root / "artifacts"), "state": str(root / "state")},
        "preference": {"max_epochs": 1, "batch_size": 256, "hidden": [32], "embedding_dim": 8},
    })
    write_synthetic_features(cfg, n_users=50, n_products=40, n_impressions=1500)
    data = load_data(cfg)
    fallback = fit_fallback(data.train.x, data.train.y, data.encoder, seed=0)
    models = {}
    for kind in ("logreg", "deep"):
        module = train(cfg, kind, data, root / "ckpt").module
        model_dir = save_model_dir(root / kind, kind=kind, spec=module.spec, net=module.net, encoder=data.encoder,
                                   fallback=fallback, threshold=0.5, cold_policy="model", cold_min_events=5)
        export_onnx(module.probability_model(), data.valid.x, model_dir / ONNX_FILE)
        models[kind] = model_dir
    return data, models


@pytest.mark.parametrize("kind", ["logreg", "deep"])
def test_onnx_matches_torch_on_held_out_rows(trained, kind):
    data, models = trained
    model = load_preference(models[kind])
    diff = check_parity(models[kind] / ONNX_FILE, model.probability_model, data.test.x)
    assert diff <= 1e-4
    scorer = OnnxPreferenceScorer(models[kind], threads=1)
    # Dynamic batch: one row and the whole split through the same graph.
    np.testing.assert_allclose(scorer.predict_packed(data.test.x[:1]), model.predict_packed(data.test.x[:1]), atol=1e-4)
    np.testing.assert_allclose(scorer.predict(data.test.frame), model.predict_model(data.test.frame), atol=1e-4)


def test_parity_check_catches_a_different_model(trained):
    data, models = trained
    other = load_preference(models["logreg"]).probability_model
    with pytest.raises(ParityError, match="max abs diff"):
        check_parity(models["deep"] / ONNX_FILE, other, data.test.x)
    assert torch_predict(other, data.test.x).shape == (len(data.test.x),)


def test_onnx_scorer_routes_cold_start_shoppers_like_the_torch_model(trained, tmp_path):
    # With cold_policy "fallback", the ONNX scorer returned the network's scores for cold
    # shoppers too, where the torch model serves the popularity fallback's.
    import json
    import shutil

    from components.models.preference.api import META_FILE

    data, models = trained
    model_dir = tmp_path / "deep"
    shutil.copytree(models["deep"], model_dir)
    meta = json.loads((model_dir / META_FILE).read_text(encoding="utf-8"))
    (model_dir / META_FILE).write_text(json.dumps({**meta, "cold_policy": "fallback"}), encoding="utf-8")
    model, scorer = load_preference(model_dir), OnnxPreferenceScorer(model_dir, threads=1)
    frame = data.test.frame
    cold = model.cold_mask(frame)
    assert 0 < cold.sum() < len(frame)  # both kinds of rows are scored
    assert not np.allclose(model.predict(frame)[cold], model.predict_model(frame)[cold], atol=1e-3)
    np.testing.assert_allclose(scorer.predict(frame), model.predict(frame), atol=1e-4)
