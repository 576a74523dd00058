"""ONNX export of the generator: identical greedy copies under ONNX Runtime and torch."""

import copy

import numpy as np
import pytest
import torch

from components.models.generator import api
from components.models.generator.decoding import DecodingSettings
from components.serving.generator_onnx import ExportParityError, OnnxBackend, export_onnx, parity, require_parity
from tests.models.generator_fixtures import ROOT, assert_beams_share_sources, tiny_parts


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tokenizer, vocabulary, edges, baseline, net, corpus = tiny_parts(seed=3)
    directory = tmp_path_factory.mktemp("onnx") / "model"
    api.save_model_dir(directory, net, tokenizer, vocabulary, ROOT / "components/resources/ad_law_words.txt", baseline, DecodingSettings(method="greedy", max_len=20))
    export_onnx(net, directory / api.ONNX_DIR)
    return directory, corpus


def test_step_outputs_match_torch(exported):
    directory, corpus = exported
    torch_gen, onnx_gen = api.load_generator(directory), api.load_generator(directory, backend="onnx")
    requests = [torch_gen.request(a, None, "any", "any") for a in corpus["attributes"][:4]]
    src = torch_gen.encode_sources(requests)  # padded: rows of different lengths
    assert (src == 0).any()
    state_t, state_o = torch_gen.backend.start(src), onnx_gen.backend.start(src)
    tokens = np.full(len(requests), 2, dtype=np.int64)
    for _ in range(5):  # cache grows from the dummy slot: dynamic time axis
        lp_t, state_t = torch_gen.backend.step(tokens, state_t)
        lp_o, state_o = onnx_gen.backend.step(tokens, state_o)
        assert torch.allclose(lp_t, lp_o, atol=1e-4)
        tokens = lp_t.argmax(-1).numpy()
    assert state_o[0].shape[3] == 6


def test_greedy_parity_and_batch_sizes(exported):
    directory, corpus = exported
    torch_gen, onnx_gen = api.load_generator(directory), api.load_generator(directory, backend="onnx")
    requests = [torch_gen.request(a, None, tone, "any") for a, tone in zip(corpus["attributes"][:6], ["any", "lively", "plain"] * 2)]
    result = parity(torch_gen, onnx_gen, requests)
    assert result["onnx_parity_exact"] == result["onnx_parity_beam"] == 1.0 and result["onnx_parity_inputs"] == 6.0
    assert 0 <= result["onnx_max_logprob_diff"] < 1e-4
    require_parity(result)
    one = requests[:1]
    assert onnx_gen.generate_many(one, "beam", n=2) == torch_gen.generate_many(one, "beam", n=2)


def test_torch_and_onnx_ban_the_same_added_words(exported):
    """The maintained ad-law list reaches both runtimes through the one ban plan the search
    shares: with a word added beside the bundle's list, they still write identical copies."""
    directory, corpus = exported
    products = list(corpus["attributes"][:4])
    plain = [api.load_generator(directory).generate(a, decoding="greedy")[0] for a in products]
    word = max(set("".join(plain)), key="".join(plain).count)  # the character the model writes most
    torch_gen, onnx_gen = (api.load_generator(directory, backend=b, extra_ad_law_words=[word]) for b in ("torch", "onnx"))
    assert word in torch_gen.ad_law_words and torch_gen.ad_law_words == onnx_gen.ad_law_words
    requests = [torch_gen.request(a, None, "any", "any") for a in products]
    for method, n in (("greedy", 1), ("beam", 2)):
        copies = torch_gen.generate_many(requests, method, n=n)
        assert onnx_gen.generate_many(requests, method, n=n) == copies
        assert not any(word in text for texts in copies for text in texts), copies


def test_an_export_of_other_weights_fails_the_parity_check(exported, tmp_path):
    """The check must be able to fail: an exporter that wrote different weights (here, the
    output projection nudged) is caught, and training raises instead of shipping it."""
    _, corpus = exported
    tokenizer, vocabulary, edges, baseline, net, _ = tiny_parts(seed=3)
    directory = tmp_path / "model"
    api.save_model_dir(directory, net, tokenizer, vocabulary, ROOT / "components/resources/ad_law_words.txt", baseline, DecodingSettings(method="greedy", max_len=20))
    other = copy.deepcopy(net)
    with torch.no_grad():
        for parameter in other.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    export_onnx(other, directory / api.ONNX_DIR)
    torch_gen, onnx_gen = api.load_generator(directory), api.load_generator(directory, backend="onnx")
    requests = [torch_gen.request(a, None, "any", "any") for a in corpus["attributes"][:6]]
    result = parity(torch_gen, onnx_gen, requests)
    assert result["onnx_max_logprob_diff"] > 1e-3
    with pytest.raises(ExportParityError, match="does not reproduce the torch generator"):
        require_parity(result)


def test_beam_moves_only_the_self_attention_cache_between_beams(exported):
    assert_beams_share_sources(api.load_generator(exported[0], backend="onnx"))


def test_missing_export_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="export the model first"):
        OnnxBackend(tmp_path)
