"""Tokenizer, focus controls, retrieval baseline, decoding and the api functions (tiny, untrained)."""

import json
import shutil
from collections import Counter

import numpy as np
import pytest
import torch

from components.evaluation.text_metrics import bleu4
from components.models.generator import api
from components.models.generator.constraints import TokenBlocker, latin_words, load_latin_words
from components.models.generator.decoding import SENTENCE_ENDS, DecodingSettings, _doubling_bans, _nucleus, _repeat_bans
from components.models.generator.focus import length_bucket, mentioned_values, normalize_focus, sample_training_focus, tone_of, typical_lengths
from components.models.generator.retrieval import RetrievalGenerator, substitute_values
from components.models.generator.tokenizer import EOS, CopyTokenizer
from tests.models.generator_fixtures import ROOT, WrappedBackend, assert_beams_share_sources, tiny_parts


@pytest.fixture(scope="module")
def parts():
    return tiny_parts()


@pytest.fixture(scope="module")
def model_dir(parts, tmp_path_factory):
    tokenizer, vocabulary, edges, baseline, net, _ = parts
    directory = tmp_path_factory.mktemp("gen") / "model"
    return api.save_model_dir(directory, net, tokenizer, vocabulary, ROOT / "components/resources/ad_law_words.txt", baseline, DecodingSettings(method="greedy", max_len=16))


def test_tokenizer_round_trip_values_and_controls(parts, tmp_path):
    tokenizer, corpus = parts[0], parts[5]
    text = corpus.loc[0, "summary"]
    assert tokenizer.decode(tokenizer.encode_text(text)) == text  # lossless, full-width punctuation kept
    assert [tokenizer.pieces[i] for i in tokenizer.encode_text("白色的阔腿裤")][0] == "白色"  # a value is one token
    src = tokenizer.encode_source({"类型": ["裤"], "颜色": ["白色"]}, ["白色"], "lively", "long", 64)
    pieces = [tokenizer.pieces[i] for i in src]
    assert pieces == ["<tone:lively>", "<len:long>", "<k:类型>", "裤", "<k:颜色>", "<focus>", "白色", "</s>"]
    tokenizer.save(tmp_path)
    again = CopyTokenizer.load(tmp_path)
    assert again.encode_text(text) == tokenizer.encode_text(text)
    assert len(tokenizer.encode_source({"类型": ["裤"] * 1, "颜色": [f"色{i}" for i in range(80)]}, [], "any", "any", 20)) == 20


def test_focus_controls():
    attrs = {"类型": ["裙"], "颜色": ["白色"], "图案": ["<UNK>", "条纹"]}
    assert mentioned_values("这条白色裙子", attrs) == ["白色", "裙"]  # in order of first mention
    assert normalize_focus(["颜色#白色", "黑色", "条纹"], attrs) == ["白色", "条纹"]
    assert tone_of("好看哦！") == "lively" and tone_of("优雅知性") == "elegant" and tone_of("简约") == "plain"
    assert [length_bucket(n, [90, 120]) for n in (50, 100, 150)] == ["short", "medium", "long"]
    rng = np.random.default_rng(0)
    draws = [sample_training_focus(["a", "b", "c", "d"], rng, 0.3, 3) for _ in range(300)]
    assert all(d in ([], ["a"], ["a", "b"], ["a", "b", "c"]) for d in draws)  # the values the copy leads with
    assert 0.2 < np.mean([not d for d in draws]) < 0.4


def test_typical_lengths_are_the_median_copy_of_each_length_bucket():
    lengths = [60, 80, 100, 105, 110, 112, 150, 170, 190]
    assert typical_lengths(lengths, [100, 120]) == {"any": 110, "short": 80, "medium": 110, "long": 170}
    # a bucket no copy falls in: the overall median, moved into the bucket
    assert typical_lengths([60, 80, 100], [100, 120]) == {"any": 80, "short": 80, "medium": 101, "long": 121}


def test_a_bundle_aims_each_length_control_at_its_median_training_copy(model_dir):
    generator, index = api.load_generator(model_dir), api.load_baseline(model_dir)
    expected = typical_lengths([len(t) for t in index.texts], index.length_edges)
    product = {"类型": ["裙"], "颜色": ["白色"]}
    aims = {length: generator.expected_length(generator.request(product, None, "any", length)) for length in ("any", "short", "medium", "long")}
    assert aims == expected
    assert aims["short"] < aims["medium"] < aims["long"]


def test_retrieval_baseline_substitutes_own_values():
    texts = ["这款黑色连衣裙很显瘦。", "宽松的阔腿裤。"]
    attrs = [{"类型": ["裙"], "颜色": ["黑色"]}, {"类型": ["裤"], "裤型": ["阔腿裤"]}]
    baseline = RetrievalGenerator(attrs, texts, [5, 10])
    assert baseline.generate({"类型": ["裙"], "颜色": ["白色"]}) == ["这款白色连衣裙很显瘦。"]
    assert baseline.generate({"类型": ["裤"], "裤型": ["阔腿裤"]}, n=2) == ["宽松的阔腿裤。", "这款黑色连衣裙很显瘦。"]
    assert substitute_values("黑色好看", {"颜色": ["黑色"]}, {"颜色": ["黑色"]}) == "黑色好看"


def test_repeat_blocking():
    assert _repeat_bans([5, 6, 7, 5, 6], 3) == [7]
    assert _repeat_bans([5, 6], 3) == []


def test_nucleus_samples_the_exact_nucleus_whatever_the_sorted_width():
    torch = pytest.importorskip("torch")
    logprobs = torch.log_softmax(torch.randn(3, 50, generator=torch.Generator().manual_seed(0)) * 2, -1)
    logprobs[0] = float("-inf")
    logprobs[0, 7] = 0.0  # only one token possible
    draws = {}
    uniforms = torch.rand((4000, 3), generator=torch.Generator().manual_seed(1))
    for width in (2, 50):  # 2 is narrower than every nucleus here, so it must widen
        draws[width] = torch.stack([_nucleus(logprobs, 0.9, 0.7, u, widths=(width,)) for u in uniforms])
    assert torch.equal(draws[2], draws[50])  # one uniform draw per row: the width changes nothing
    probs = torch.softmax(logprobs / 0.7, -1)
    for row in range(3):
        ranked, order = probs[row].sort(descending=True)
        keep = ranked.cumsum(0) - ranked < 0.9
        expected = dict(zip(order[keep].tolist(), (ranked[keep] / ranked[keep].sum()).tolist()))
        counts = torch.bincount(draws[50][:, row], minlength=50)
        assert set(torch.nonzero(counts).flatten().tolist()) <= set(expected)  # never outside the nucleus
        for token, p in expected.items():
            assert abs(counts[token].item() / 4000 - p) < 0.03
    assert set(draws[50][:, 0].tolist()) == {7}


def test_doubling_bans_cover_a_run_begun_across_tokens():
    blocker = TokenBlocker(["休", "闲", "休闲", "休闲风", "闲适", "的", "up", "显瘦", "又显瘦", "又", "瘦"])
    names = lambda text: sorted({blocker.piece_texts[i] for ids in _doubling_bans(text, blocker, 4) for i in ids})
    assert names("这款休闲") == ["休闲", "休闲风"]
    assert names("这款休闲休") == ["休闲", "休闲风", "闲", "闲适"]  # 休闲 half repeated, or after 休
    assert names("休闲风") == ["休闲", "休闲风"]  # 休闲风 again, or 休闲 after 风
    assert names("的的") == [] and names("up") == []  # one character twice; Latin runs
    # with one character between (显瘦又显瘦), also when one token writes both (又显瘦)
    assert names("宽松显瘦") == ["又显瘦", "显瘦"]
    assert names("宽松显瘦又") == ["显瘦"]
    assert names("宽松显瘦又显") == ["又显瘦", "瘦"]  # 又显瘦 would double 又显


@pytest.mark.parametrize("method", ["greedy", "beam", "top_p"])
def test_generate_n_distinct_copies(model_dir, method):
    generator = api.load_generator(model_dir)
    copies = generator.generate({"类型": ["裙"], "颜色": ["白色"]}, focus=["白色"], decoding=method, n=2)
    assert 1 <= len(copies) <= 2 and len(set(copies)) == len(copies) and all(copies)
    with pytest.raises(api.GenerationInputError, match="unknown tone"):
        generator.generate({"类型": ["裙"]}, tone="angry")
    with pytest.raises(api.GenerationInputError, match="unknown decoding"):
        generator.generate({"类型": ["裙"]}, decoding="sampling")


class _OddSourcesStopEarly(WrappedBackend):
    """Rows of odd-numbered sources must write a full stop at step 4 (their length budget is
    then spent, so they end at step 5); records how many rows each step carries."""

    def __init__(self, backend, full_stop: int):
        super().__init__(backend)
        self.full_stop, self.rows_per_step, self.sources = full_stop, [], None

    def start(self, src):
        self.sources = np.arange(len(src))
        return self.backend.start(src)

    def select(self, state, rows, same_source=False):
        self.sources = self.sources[rows]
        return self.backend.select(state, rows, same_source)

    def step(self, tokens, state):
        logprobs, state = self.backend.step(tokens, state)
        self.rows_per_step.append(len(tokens))
        if len(self.rows_per_step) == 4:
            logprobs = logprobs.clone()  # an inference-mode tensor from the torch backend
            odd = torch.from_numpy(self.sources % 2 == 1)
            logprobs[odd] = -1e4  # finite like the model's own: the constraints still apply
            logprobs[odd, self.full_stop] = 0.0
        return logprobs, state


@pytest.mark.parametrize("method", ["greedy", "top_p"])
def test_finished_rows_leave_the_state_without_changing_any_copy(model_dir, method, monkeypatch):
    from components.models.generator import decoding

    generator = api.load_generator(model_dir)
    products = [{"类型": ["裙"], "颜色": ["白色"]}, {"类型": ["裤"]}, {"类型": ["上衣"], "颜色": ["黑色"]}, {"类型": ["裙"], "风格": ["简约"]}]
    requests = [generator.request(p, None, "any", "any") for p in products]
    settings = DecodingSettings(method=method, max_len=12, num_candidates=3, length_budget=1.0)
    full_stop = generator.tokenizer.piece_texts.index("。")
    copies = {}
    for compact_at in (0.0, 0.75):
        monkeypatch.setattr(decoding, "COMPACT_AT", compact_at)
        spy = _OddSourcesStopEarly(generator.backend, full_stop)
        plans = [generator.ban_plan(p, True) for p in products]
        found = decoding.search(spy, generator.encode_sources(requests), plans, generator.tokenizer.piece_texts, settings, expected=[1000, 1, 1000, 1])
        copies[compact_at] = [[c.text for c in cands] for cands in found]
        rows = 4 * (3 if method == "top_p" else 1)
        if compact_at:  # about half the rows end at step 5: the state shrinks after it
            assert spy.rows_per_step[:5] == [rows] * 5 and max(spy.rows_per_step[5:]) <= 0.75 * rows
        else:
            assert spy.rows_per_step == [rows] * 12
    assert copies[0.0] == copies[0.75]
    # (a row part-way through a Latin word may not stop, so not every odd row ends)
    assert sum(t.endswith("。") for cands in copies[0.75][1::2] for t in cands) >= len(copies[0.75][1::2])
    assert all(not t.endswith("。") for cands in copies[0.75][::2] for t in cands)


def test_beam_moves_only_the_self_attention_cache_between_beams(model_dir):
    assert_beams_share_sources(api.load_generator(model_dir))


class _EosFirst(WrappedBackend):
    """EOS made the likeliest next token at every step. Tokens ending a sentence are never
    drawn, so a copy cut off by the length limit keeps all its tokens (none is trimmed back
    to a sentence end) and its length tells whether EOS was taken."""

    def __init__(self, backend, piece_texts):
        super().__init__(backend)
        self.sentence_ends = [i for i, p in enumerate(piece_texts) if p.rstrip().endswith(SENTENCE_ENDS)]

    def step(self, tokens, state):
        logprobs, state = self.backend.step(tokens, state)
        logprobs = logprobs.clone()
        logprobs[:, EOS] = 0.0
        logprobs[:, self.sentence_ends] = -float("inf")
        return logprobs, state


@pytest.mark.parametrize("method", ["greedy", "beam", "top_p"])
def test_a_copy_ends_by_the_length_rule_not_the_models_eos(model_dir, method):
    from components.models.generator.decoding import search

    generator = api.load_generator(model_dir)
    product = {"类型": ["裙"], "颜色": ["白色"]}
    src = generator.encode_sources([generator.request(product, None, "any", "any")])
    settings = DecodingSettings(method=method, max_len=10, beam_size=2, num_candidates=2)
    for candidate in search(_EosFirst(generator.backend, generator.tokenizer.piece_texts), src, [generator.ban_plan(product, True)], generator.tokenizer.piece_texts, settings)[0]:
        assert len(candidate.tokens) == 10  # ran to max_len: the pushed EOS was never taken


def test_beam_scores_are_sorted(model_dir):
    from components.models.generator.decoding import search

    generator = api.load_generator(model_dir)
    requests = [generator.request({"类型": ["裤"]}, None, "any", "any")]
    plans = [generator.blocker.plan([])]
    candidates = search(generator.backend, generator.encode_sources(requests), plans, generator.tokenizer.piece_texts, DecodingSettings(method="beam", beam_size=3, max_len=10))[0]
    assert len(candidates) == 3
    assert [c.score for c in candidates] == sorted((c.score for c in candidates), reverse=True)
    assert all(EOS not in c.tokens for c in candidates)


def test_generate_batch_bans_the_words_it_is_given_beside_the_bundles(model_dir, tmp_path):
    """The CLI passes the maintained ad-law list: a word the bundle's own list lacks is banned too."""
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_text(json.dumps({"content": "类型#裙*颜色#白色"}, ensure_ascii=False) + "\n", encoding="utf-8")
    api.generate_batch(source, out, model_dir, decoding="greedy")
    plain = json.loads(out.read_text(encoding="utf-8"))["copy"]
    word = next(c for c in plain if c not in "类型裙颜色白")  # a character the bundle's list allows
    report = api.generate_batch(source, out, model_dir, decoding="greedy", overwrite=True, extra_ad_law_words=[word])
    banned = json.loads(out.read_text(encoding="utf-8"))["copy"]
    assert word not in banned and banned and report.withheld == 0 and report.warnings() == []
    assert api.BatchReport(3, withheld=2).warnings()[0].startswith("2 row(s) have an empty copy")


def test_generate_batch_and_errors(model_dir, tmp_path):
    source = tmp_path / "in.jsonl"
    rows = [{"content": "类型#裙*颜色#白色"}, {"content": "类型#裤*裤型#阔腿裤"}]
    source.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    report = api.generate_batch(source, out, model_dir, focus=["白色"], decoding="greedy")
    assert report.written == 2 and report.warnings() == []  # known keys and values only
    written = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [w["content"] for w in written] == [r["content"] for r in rows] and all(w["copy"] for w in written)
    # a catalog from outside the corpus: the rows are still written, and the report says what
    # the copies cannot be trusted to reflect
    odd = ["品牌#Nike*类型#运动鞋*颜色#黑色", "风格#最顶级*类型#裤", "品牌#Nike*类型#裤"]
    source.write_text("".join(json.dumps({"content": c}, ensure_ascii=False) + "\n" for c in odd), encoding="utf-8")
    with pytest.raises(api.GenerationInputError, match="out.jsonl exists: --overwrite replaces it"):
        api.generate_batch(source, out, model_dir, decoding="greedy")  # the first job's copies are not lost unasked
    report = api.generate_batch(source, out, model_dir, decoding="greedy", overwrite=True)
    assert report.written == 3 and len(out.read_text(encoding="utf-8").splitlines()) == 3
    assert report.unseen_keys == {"品牌": 2}
    assert report.unseen_values == {"品牌#Nike": 2, "类型#运动鞋": 1, "风格#最顶级": 1}
    assert report.ad_law_values == {"风格#最顶级": 1}
    assert [w.split(" (rows)")[0] for w in report.warnings()] == [
        "keys no training product had, which copies may ignore",
        "values no training product had, which copies may garble or leave out",
        "values with advertising-law words, which no copy states",
    ]
    assert "品牌 (2)" in report.warnings()[0]
    source.write_text('{"content": "类型#裙"}\n{"text": "no content"}\n', encoding="utf-8")
    with pytest.raises(api.GenerationInputError, match=r"in.jsonl:2: expected an object with a string 'content'"):
        api.generate_batch(source, out, model_dir)
    # every bad row is named in one error (up to ten, then a count), and nothing is written
    out.unlink()
    bad = ['{"content": "类型#裙"}', "not json", '{"content": ""}', "[1]"] + ['{"content": "类型"}'] * 11
    source.write_text("\n".join(bad) + "\n", encoding="utf-8")
    with pytest.raises(api.GenerationInputError) as caught:
        api.generate_batch(source, out, model_dir)
    message = str(caught.value)
    assert message.startswith("14 bad row(s), nothing written")
    assert "in.jsonl:2: not valid JSON" in message and "in.jsonl:3: bad 'content'" in message
    assert "in.jsonl:4: expected an object" in message and "in.jsonl:11: bad" in message
    assert "in.jsonl:12:" not in message and message.endswith("... and 4 more")
    assert not out.exists() and not api.partial_path(out).exists()
    source.write_text('{"content": "类型裙"}\n', encoding="utf-8")
    with pytest.raises(api.GenerationInputError, match=r"in.jsonl:1: bad 'content'"):
        api.generate_batch(source, out, model_dir)
    source.write_bytes('{"content": "类型#裙"}\n'.encode() + b'{"content": "\xc0\xc1"}\n')
    with pytest.raises(api.GenerationInputError, match=r"in.jsonl:2: not UTF-8"):
        api.generate_batch(source, out, model_dir)
    source.write_bytes("\ufeff".encode() + '{"content": "类型#裙*颜色#白色"}\r\n'.encode())  # a spreadsheet export
    assert api.generate_batch(source, out, model_dir, decoding="greedy").written == 1
    with pytest.raises(api.GenerationInputError, match="is a directory"):
        api.generate_batch(source, tmp_path, model_dir)
    with pytest.raises(FileNotFoundError):
        api.load_generator(tmp_path / "nowhere")


def test_generate_batch_refuses_paths_and_text_it_cannot_use_before_writing(model_dir, tmp_path):
    """Each is refused before the model runs, with the input file as it was."""
    source = tmp_path / "in.jsonl"
    catalog = '{"id": 7, "content": "类型#裙*颜色#白色"}\n'
    source.write_text(catalog, encoding="utf-8")
    with pytest.raises(api.GenerationInputError, match="is the input file"):
        api.generate_batch(source, tmp_path / "." / "in.jsonl", model_dir, decoding="greedy")
    assert source.read_text(encoding="utf-8") == catalog  # the id survives
    with pytest.raises(api.GenerationInputError, match="cannot create the output's folder"):
        api.generate_batch(source, source / "out.jsonl", model_dir, decoding="greedy")
    with pytest.raises(api.GenerationInputError, match="is not a file"):
        api.generate_batch(tmp_path, tmp_path / "out.jsonl", model_dir, decoding="greedy")
    # valid JSON, but a lone surrogate (a string cut mid-emoji) is not text: named up front
    source.write_text(catalog + '{"content": "类型#裙*颜色#白\\ud800色"}\n', encoding="utf-8")
    with pytest.raises(api.GenerationInputError, match=r"in.jsonl:2: 'content' is not valid Unicode"):
        api.generate_batch(source, tmp_path / "out.jsonl", model_dir, decoding="greedy")
    assert not (tmp_path / "out.jsonl").exists() and not api.partial_path(tmp_path / "out.jsonl").exists()
    with pytest.raises(api.GenerationInputError, match="n must be at least 1"):
        api.load_generator(model_dir).generate("类型#裙*颜色#白色", decoding="greedy", n=0)


def test_generate_batch_applies_tone_and_length_and_refuses_unknown_ones(model_dir, tmp_path):
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_text(json.dumps({"content": "类型#裙*颜色#白色"}, ensure_ascii=False) + "\n", encoding="utf-8")
    for bad in ({"tone": "funny"}, {"length": "tiny"}):
        with pytest.raises(api.GenerationInputError, match="unknown (tone 'funny'|length 'tiny'); expected one of"):
            api.generate_batch(source, out, model_dir, decoding="greedy", **bad)
        assert not out.exists() and not api.partial_path(out).exists() and not api.job_path(out).exists()
    generator = api.load_generator(model_dir)
    uncontrolled = generator.generate("类型#裙*颜色#白色", decoding="greedy")[0]
    api.generate_batch(source, out, model_dir, decoding="greedy", tone="lively", length="short")
    controlled = generator.generate("类型#裙*颜色#白色", tone="lively", length="short", decoding="greedy")[0]
    assert json.loads(out.read_text(encoding="utf-8"))["copy"] == controlled != uncontrolled


def test_a_sampled_copy_depends_on_its_product_and_the_seed_not_on_its_batch(model_dir):
    # One random stream per batch made every copy depend on the rows before it: adding a row
    # to a catalog job, or a batch of 1 against 64, changed copies that were not touched.
    generator = api.load_generator(model_dir, batch_size=2)
    products = ["类型#裙*颜色#白色", "类型#裤*裤型#阔腿裤", "类型#上衣*颜色#黑色*衣样式#卫衣", "类型#裙*风格#简约*裙长#连衣裙"]
    requests = [generator.request(p, None, "any", "any") for p in products]
    decoding = {"method": "top_p", "temperature": 1.5, "num_candidates": 3}
    together = generator.generate_many(requests, decoding, n=3)
    alone = [generator.generate_many([r], decoding, n=3)[0] for r in requests]
    reordered = generator.generate_many(requests[::-1], decoding, n=3)[::-1]
    assert together == alone == reordered
    other_seed = generator.generate_many(requests, {**decoding, "seed": 7}, n=3)
    assert other_seed != together  # the seed still matters
    twins = generator.generate_many([requests[0], requests[1], requests[0]], decoding, n=3)
    assert twins[0] == together[0] and twins[2] != twins[0]  # a catalog's twin products get two copies


def test_decoding_overrides_a_search_cannot_run_with_are_refused(model_dir):
    generator = api.load_generator(model_dir)
    for overrides, message in [
        ({"method": "top_p", "temperature": 0}, "temperature 0 is not above 0"),
        ({"method": "top_p", "top_p": 0}, r"top_p 0 is not in \(0, 1\]"),
        ({"beam_size": 0}, "beam_size 0"),
        ({"max_len": 0}, "max_len"),
        ({"method": "sample"}, "method 'sample'"),
        ({"max_len": 10_000}, "beyond this model's"),
    ]:
        with pytest.raises(api.GenerationInputError, match=message):
            generator.generate("类型#裙*颜色#白色", decoding=overrides)
    with pytest.raises(api.GenerationInputError, match=r"a list of string values; not so for \['颜色'\]"):
        generator.generate({"类型": ["裙"], "颜色": "白色"})  # a bare string, not ['白色']
    with pytest.raises(api.GenerationInputError, match="not valid Unicode"):
        generator.generate({"类型": ["裙"], "颜色": ["白\ud800色"]})


def test_a_damaged_bundle_is_named_not_a_traceback(model_dir, tmp_path):
    import shutil

    from typer.testing import CliRunner

    from components.models.generator.model import BrokenModel
    from flows.cli import app

    damaged = tmp_path / "model"
    shutil.copytree(model_dir, damaged)
    (damaged / api.ONNX_DIR).mkdir(exist_ok=True)
    for name in ("encoder.onnx", "decoder_step.onnx"):  # cut off mid-copy
        (damaged / api.ONNX_DIR / name).write_bytes(b"\x08\x07\x12\x05torch\x3a")
    with pytest.raises(BrokenModel, match=r"encoder.onnx cannot be loaded by ONNX Runtime .*torch backend"):
        api.load_generator(damaged, backend="onnx")
    weights = damaged / api.WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(BrokenModel, match=r"weights.pt cannot be loaded .*the bundle is damaged"):
        api.load_generator(damaged)
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps({"content": "类型#裙*颜色#白色"}, ensure_ascii=False) + "\n", encoding="utf-8")
    result = CliRunner().invoke(app, ["generate-batch", "--input", str(source), "--output", str(tmp_path / "out.jsonl"), "--model", str(damaged)])
    assert result.exit_code == 2 and "weights.pt cannot be loaded" in result.output and "Traceback" not in result.output


def test_a_second_batch_job_on_the_same_output_is_refused(model_dir, tmp_path):
    # Two jobs on one output interleaved their rows in the partial file and both said "wrote".
    import fcntl
    import subprocess
    import sys
    import textwrap

    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_text(json.dumps({"content": "类型#裙*颜色#白色"}, ensure_ascii=False) + "\n", encoding="utf-8")
    holder = textwrap.dedent(f"""
        import fcntl, sys, time
        handle = open({str(api.lock_path(out))!r}, "a")
        fcntl.flock(handle, fcntl.LOCK_EX)
        print("held", flush=True)
        sys.stdin.readline()
    """)
    job = subprocess.Popen([sys.executable, "-c", holder], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert job.stdout.readline().strip() == "held"  # another process is writing out.jsonl
        with pytest.raises(api.GenerationInputError, match="another generate-batch job is writing"):
            api.generate_batch(source, out, model_dir, decoding="greedy")
        assert not out.exists() and not api.partial_path(out).exists() and not api.job_path(out).exists()
    finally:
        job.communicate("\n")  # the holder ends, and its lock with it
    api.generate_batch(source, out, model_dir, decoding="greedy")
    assert json.loads(out.read_text(encoding="utf-8"))["copy"]
    with api.lock_path(out).open("a") as handle:  # released after the job
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_a_resumed_sampled_job_writes_what_an_uninterrupted_one_would(model_dir, tmp_path):
    # Twin products on both sides of the stop: each keeps its own random stream.
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    contents = ["类型#裙*颜色#白色", "类型#裤*裤型#阔腿裤", "类型#裙*颜色#白色", "类型#裤*裤型#阔腿裤", "类型#裙*颜色#白色"]
    source.write_text("".join(json.dumps({"content": c}, ensure_ascii=False) + "\n" for c in contents), encoding="utf-8")
    decoding = {"method": "top_p", "temperature": 1.5}
    api.generate_batch(source, out, model_dir, decoding=decoding, batch_size=2)
    complete = out.read_text(encoding="utf-8")
    assert len({json.loads(line)["copy"] for line in complete.splitlines()[::2]}) == 3  # three white dresses, three copies
    out.unlink()

    def stop_after_first_chunk(done, total):
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        api.generate_batch(source, out, model_dir, decoding=decoding, batch_size=2, progress=stop_after_first_chunk)
    api.generate_batch(source, out, model_dir, decoding=decoding, batch_size=3, resume=True)
    assert out.read_text(encoding="utf-8") == complete


def test_generate_batch_writes_as_it_goes_and_resumes_after_a_stop(model_dir, tmp_path):
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    contents = ["类型#裙*颜色#白色", "类型#裤*裤型#阔腿裤", "类型#上衣*颜色#黑色", "类型#裙*风格#简约", "类型#裤*颜色#白色"]
    source.write_text("".join(json.dumps({"content": c}, ensure_ascii=False) + "\n" for c in contents), encoding="utf-8")
    calls = []
    api.generate_batch(source, out, model_dir, decoding="greedy", batch_size=2, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(0, 5), (2, 5), (4, 5), (5, 5)]
    complete = out.read_text(encoding="utf-8")
    assert not api.partial_path(out).exists()
    out.unlink()

    def stop_after_first_chunk(done, total):
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        api.generate_batch(source, out, model_dir, decoding="greedy", batch_size=2, progress=stop_after_first_chunk)
    partial = api.partial_path(out)
    assert not out.exists() and len(partial.read_text(encoding="utf-8").splitlines()) == 2
    job = api.job_path(out).read_text(encoding="utf-8")
    assert json.loads(job)["decoding"]["method"] == "greedy"
    with partial.open("a", encoding="utf-8") as handle:
        handle.write('{"content": "类型#上')  # the job died in the middle of a line
    written = partial.read_bytes()
    # Only the same model, focus and decoding may carry on: one output, one way of writing it.
    with pytest.raises(api.GenerationInputError, match=r"other decoding settings \(method 'greedy' -> 'beam'\)"):
        api.generate_batch(source, out, model_dir, decoding="beam", resume=True)
    with pytest.raises(api.GenerationInputError, match="written with focus"):
        api.generate_batch(source, out, model_dir, decoding="greedy", focus=["白色"], resume=True)
    with pytest.raises(api.GenerationInputError, match="written with length any, not short"):
        api.generate_batch(source, out, model_dir, decoding="greedy", length="short", resume=True)
    retrained = tmp_path / "retrained"
    shutil.copytree(model_dir, retrained)
    weights = torch.load(retrained / api.WEIGHTS_FILE, weights_only=True)
    torch.save({k: v + 1e-3 if v.is_floating_point() else v for k, v in weights.items()}, retrained / api.WEIGHTS_FILE)
    with pytest.raises(api.GenerationInputError, match="written by another model"):
        api.generate_batch(source, out, retrained, decoding="greedy", resume=True)
    assert partial.read_bytes() == written and not out.exists()  # refused: nothing touched
    api.generate_batch(source, out, model_dir, decoding="greedy", batch_size=2, resume=True, progress=lambda done, total: calls.append((done, total)))
    assert calls[-3:] == [(2, 5), (4, 5), (5, 5)]  # the first chunk was not generated again
    assert out.read_text(encoding="utf-8") == complete and not partial.exists() and not api.job_path(out).exists()
    # died after a whole row but before its newline: that row is written again, on a line of its own
    lines = complete.splitlines(keepends=True)
    partial.write_text(lines[0] + json.dumps({"content": contents[1], "copy": "半行"}, ensure_ascii=False), encoding="utf-8")
    out.unlink()
    # a partial file without its job record (deleted, or copied alone) cannot be checked
    with pytest.raises(api.GenerationInputError, match="no readable record of the model and settings"):
        api.generate_batch(source, out, model_dir, decoding="greedy", resume=True)
    api.job_path(out).write_text(job, encoding="utf-8")
    api.generate_batch(source, out, model_dir, decoding="greedy", batch_size=2, resume=True)
    assert out.read_text(encoding="utf-8") == complete
    # a finished output is not replaced unasked, even by a resume
    with pytest.raises(api.GenerationInputError, match="exists: --overwrite replaces it"):
        api.generate_batch(source, out, model_dir, decoding="greedy", resume=True)
    out.unlink()
    # a partial file from another input is not resumed, and nothing is lost
    partial.write_text(json.dumps({"content": "类型#裙*颜色#黑色", "copy": "黑色连衣裙。"}, ensure_ascii=False) + "\n", encoding="utf-8")
    with pytest.raises(api.GenerationInputError, match="is not for row 1 of this input"):
        api.generate_batch(source, out, model_dir, decoding="greedy", resume=True)
    assert "黑色连衣裙" in partial.read_text(encoding="utf-8")
    # a run without --resume does not throw a stopped job's copies away either
    with pytest.raises(api.GenerationInputError, match=r"a stopped job left 1 copies in .*out.jsonl.partial: --resume carries on"):
        api.generate_batch(source, out, model_dir, decoding="greedy")
    with pytest.raises(api.GenerationInputError, match="is where the unfinished rows of output"):
        api.generate_batch(partial, out, model_dir, decoding="greedy")  # nor is the partial file read as an input
    assert "黑色连衣裙" in partial.read_text(encoding="utf-8")
    api.generate_batch(source, out, model_dir, decoding="greedy", overwrite=True)  # asked: starts over
    assert out.read_text(encoding="utf-8") == complete and not partial.exists()
    out.unlink()
    with pytest.raises(api.GenerationInputError, match="nothing to resume"):
        api.generate_batch(source, out, model_dir, decoding="greedy", resume=True)


def test_the_latin_word_list_travels_with_the_bundle(model_dir, tmp_path):
    # The bundle carries the list it was trained with; a bundle saved before it had one gets
    # the packaged list, never the raw words of the training copies (brands, pinyin).
    packaged = load_latin_words(api.DEFAULT_LATIN_WORDS)
    assert load_latin_words(model_dir / api.LATIN_FILE) == packaged
    generator = api.load_generator(model_dir)
    copies_words = latin_words(api.RetrievalGenerator.load(model_dir).texts)
    value_words = latin_words(v for vs in generator.vocabulary.values_by_key.values() for v in vs)
    assert generator.known_latin_words - value_words <= packaged & copies_words
    older = tmp_path / "older"
    shutil.copytree(model_dir, older)
    (older / api.LATIN_FILE).unlink()
    assert api.load_generator(older).known_latin_words == generator.known_latin_words
    brand = sorted(copies_words - packaged - value_words)[0]  # a brand or pinyin of the training copies
    assert brand not in generator.known_latin_words
    (older / api.LATIN_FILE).write_text(f"# a shop's own list\n{brand}\nzzz\n", encoding="utf-8")
    own_list = api.load_generator(older).known_latin_words
    assert brand in own_list and "zzz" not in own_list  # the bundle's list, of words the copies use


def test_evaluate_examples_per_example_columns(model_dir, parts):
    generator = api.load_generator(model_dir)
    corpus = parts[5]
    rows = [{"content": c, "summary": s} for c, s in zip(corpus["content"][:3], corpus["summary"][:3])]
    rows[0]["focus"] = ["裤"]
    frame = api.evaluate_examples(generator, rows, decoding="greedy")
    assert len(frame) == 3
    for column in ("reference", "copy", "bleu4", "rougeL", "hallucinated", "ad_law_violations", "attr_coverage", "focus_coverage"):
        assert column in frame.columns
    assert frame["reference"].tolist() == [r["summary"] for r in rows]
    perfect = api.score_copies(generator, rows, [r["summary"] for r in rows], [[] for _ in rows])
    assert (perfect["bleu4"] > 99).all()
    with pytest.raises(api.GenerationInputError, match="row 0"):
        api.evaluate_examples(generator, [{"content": "类型#裙"}])


def test_focus_from_affinities_picks_the_products_liked_values():
    from components.models.generator.focus import focus_from_affinities

    attrs = {"类型": ["裙"], "颜色": ["白色"], "图案": ["条纹"]}
    affinities = {"颜色#白色": 0.2, "图案#条纹": 0.7, "颜色#黑色": 0.9, "类型#裙": -0.1}
    assert focus_from_affinities(affinities, attrs, k=2) == ["条纹", "白色"]
    assert focus_from_affinities({}, attrs) == []


def test_exemplar_in_source_and_training_neighbors(parts):
    tokenizer = parts[0]
    src = tokenizer.encode_source({"类型": ["裤"]}, [], "any", "any", 64, exemplar="白色的阔腿裤很显瘦", max_exemplar_len=3)
    pieces = [tokenizer.pieces[i] for i in src]
    assert pieces[:4] == ["<tone:any>", "<len:any>", "<k:类型>", "裤"]
    assert pieces[4] == "<exemplar>" and pieces[-1] == "</s>" and len(pieces) == 9  # 3 exemplar tokens
    many = {f"属性{i}": [f"值{i}"] for i in range(12)}  # a rich catalog: the exemplar gives way, no attribute does
    plain = tokenizer.encode_source(many, [], "any", "any", 64)
    squeezed = tokenizer.encode_source(many, [], "any", "any", len(plain) + 4, exemplar="白色的阔腿裤很显瘦", max_exemplar_len=30)
    assert squeezed[: len(plain) - 1] == plain[:-1] and tokenizer.pieces[squeezed[len(plain) - 1]] == "<exemplar>" and len(squeezed) == len(plain) + 4
    assert tokenizer.encode_source(many, [], "any", "any", len(plain) + 1, exemplar="白色的阔腿裤很显瘦", max_exemplar_len=30) == plain
    texts = ["黑色连衣裙", "白色连衣裙", "宽松阔腿裤", "宽松阔腿裤"]
    attrs = [{"类型": ["裙"], "颜色": ["黑色"]}, {"类型": ["裙"], "颜色": ["白色"]}, {"类型": ["裤"]}, {"类型": ["裤"]}]
    neighbors = RetrievalGenerator(attrs, texts, [3, 4]).training_neighbors(1)
    assert neighbors[0] == [1] and neighbors[1] == [0]
    assert neighbors[2] != [3] and 2 not in neighbors[2]  # never itself, never a copy of its own text


def test_training_draws_shuffle_the_attribute_order_and_validation_keeps_it(parts):
    """A catalog may list attributes in any order: training sees many, validation one."""
    from components.data.attributes import shuffled_attributes as shuffled
    from components.models.generator.dataset import BucketedBatches, ControlSampling, build_examples

    attributes = {"类型": ["裙"], "颜色": ["白色", "黑色"], "材质": ["牛仔布"], "风格": ["简约"]}
    orders = {tuple((k, tuple(v)) for k, v in shuffled(attributes, np.random.default_rng(seed)).items()) for seed in range(20)}
    assert all(sorted((k, sorted(v)) for k, v in order) == sorted((k, sorted(v)) for k, v in attributes.items()) for order in orders)
    assert len({tuple(k for k, _ in order) for order in orders}) > 5  # the keys move
    assert len({dict(order)["颜色"] for order in orders}) == 2  # and the values within a key

    tokenizer = parts[0]
    examples = build_examples([attributes] * 4, ["白色的牛仔布连衣裙"] * 4, tokenizer, parts[2], 32)
    plain = ControlSampling(1.0, 1.0, 3, max_exemplar_len=0)  # no focus, tone and length "any"
    shuffling = ControlSampling(1.0, 1.0, 3, max_exemplar_len=0, shuffle_attributes=True)

    def sources(sampling, resample, epochs=6):
        batches = BucketedBatches(examples, tokenizer, 4, 64, sampling, seed=0, resample=resample)
        drawn = set()
        for epoch in range(epochs):
            batches.set_epoch(epoch)
            drawn.add(tuple(batches[0]["src"][0].tolist()))
        return drawn

    corpus_order = tokenizer.encode_source(attributes, [], "any", "any", 64)
    assert sources(plain, resample=True) == {tuple(corpus_order)}
    assert len(sources(shuffling, resample=True)) > 1
    assert sources(shuffling, resample=False) == {tuple(corpus_order)}  # comparable validation losses


@pytest.mark.parametrize("workers", [0, 2])
def test_each_epoch_draws_new_controls_also_in_dataloader_workers(parts, workers):
    """Workers get a fresh copy of the dataset every epoch: the draws must follow the epoch
    Lightning is in, not a counter that restarts in every copy."""
    import lightning.pytorch as pl
    import torch
    from torch.utils.data import DataLoader

    from components.models.generator.dataset import BucketedBatches, ControlSampling, build_examples
    from components.training.generator import EpochControls

    tokenizer, corpus = parts[0], parts[5].head(16)
    examples = build_examples(list(corpus["attributes"]), list(corpus["summary"]), tokenizer, parts[2], 32)
    dataset = BucketedBatches(examples, tokenizer, 4, 64, ControlSampling(0.3, 0.3, 3, max_exemplar_len=0, shuffle_attributes=True), seed=0, resample=True)

    class Recorder(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))
            self.seen: dict[int, list] = {}

        def training_step(self, batch, batch_idx):
            self.seen.setdefault(self.current_epoch, []).append(batch["src"].tolist())
            return (self.weight * 0).sum() + self.weight.sum() ** 2

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

    module = Recorder()
    trainer = pl.Trainer(max_epochs=3, callbacks=[EpochControls(dataset)], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", devices=1)
    trainer.fit(module, DataLoader(dataset, batch_size=None, shuffle=False, num_workers=workers))
    epochs = [module.seen[e] for e in range(3)]
    assert epochs[0] != epochs[1] and epochs[1] != epochs[2] and epochs[0] != epochs[2]
    dataset.set_epoch(1)
    assert [dataset[i]["src"].tolist() for i in range(len(dataset))] == epochs[1]  # reproducible per epoch


def test_cached_decoder_steps_match_teacher_forcing(parts):
    """KV cache + copy attention: stepwise log-probs equal the teacher-forced ones."""
    import torch

    tokenizer, net, corpus = parts[0], parts[4], parts[5]
    src = torch.tensor([tokenizer.encode_source(corpus.loc[0, "attributes"], [], "any", "any", 64, corpus.loc[1, "summary"], 20)])
    tgt = torch.tensor([tokenizer.encode_target(corpus.loc[0, "summary"], 12)])
    with torch.no_grad():
        forced, _ = net(src, tgt[:, :-1], tgt[:, 1:])
        cross_k, cross_v, copy_keys = net.cross_cache(src)
        past_k, past_v = net.empty_cache(1)
        stepped = []
        for t in range(tgt.shape[1] - 1):
            logprobs, past_k, past_v = net.decoder_step(tgt[:, t], past_k, past_v, cross_k, cross_v, copy_keys, src)
            assert torch.allclose(logprobs.exp().sum(-1), torch.ones(1), atol=1e-4)  # a distribution
            stepped.append(logprobs[0, tgt[0, t + 1]])
    assert torch.allclose(torch.stack(stepped), forced[0], atol=1e-4)


def test_cpu_dropout_keeps_the_rate_and_the_expectation():
    """The uniform-draw mask drops a share p and scales the rest by 1/(1-p), like nn.Dropout."""
    from components.models.generator.model import uniform_dropout

    torch.manual_seed(0)
    x = torch.ones(400_000, requires_grad=True)
    y = uniform_dropout(x, 0.2, True)
    dropped = (y == 0).float().mean().item()
    assert abs(dropped - 0.2) < 0.005
    assert abs(y.mean().item() - 1.0) < 0.01
    assert torch.allclose(y[y != 0], torch.tensor(1.25))
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())  # the gradient goes through the kept units only, scaled alike
    assert uniform_dropout(x, 0.2, False) is x and uniform_dropout(x, 0.0, True) is x


@pytest.mark.parametrize("causal", [False, True])
def test_training_attention_is_the_library_attention_without_its_dropout(causal):
    """The CPU training path computes what scaled_dot_product_attention computes; with dropout on,
    every attention row is still a (rescaled) share of the values."""
    import torch.nn.functional as F

    from components.models.generator.model import attention_with_dropout

    torch.manual_seed(0)
    q, k, v = torch.randn(2, 4, 6, 8), torch.randn(2, 4, 6, 8), torch.randn(2, 4, 6, 8)
    mask = None if causal else torch.tensor([[True] * 6, [True] * 4 + [False] * 2])[:, None, None, :]
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
    assert torch.allclose(attention_with_dropout(q, k, v, mask, causal, 0.0), expected, atol=1e-6)
    ones = torch.ones_like(v)
    weights_sum = attention_with_dropout(q, k, ones, mask, causal, 0.5)
    assert not torch.allclose(weights_sum, ones)  # dropout is on
    assert abs(weights_sum.mean().item() - 1.0) < 0.1


def test_length_budget_ends_at_the_next_sentence_end():
    import torch

    from components.models.generator.constraints import TokenBlocker
    from components.models.generator.decoding import _masked, _Row

    plan = TokenBlocker(["", "", "", "", "好", "。"]).plan([])
    rows = [_Row([4, 5], "好好。"), _Row([4, 4], "好好好"), _Row([4, 5], "好。")]
    settings = DecodingSettings(length_budget=1.0, no_repeat_ngram=0, no_doubling=0)
    masked = _masked(torch.zeros(3, 6), rows, [plan] * 3, settings, step=2, budgets=[3, 3, 3])
    assert torch.isinf(masked[0]).sum() == 5 and masked[0, EOS] == 0  # past budget, sentence ended: EOS only
    assert not torch.isinf(masked[1]).any()  # past budget but mid-sentence: keep writing
    assert torch.isinf(masked[2]).nonzero().flatten().tolist() == [5]  # under budget: write on, but no 。 after 。


def test_a_copy_cut_off_by_the_length_limit_ends_at_its_last_full_sentence():
    from components.models.generator.constraints import TokenBlocker
    from components.models.generator.decoding import _Row, _settled

    pieces = ["", "", "", "", "好看", "。", "口袋", "显瘦"]
    plan = TokenBlocker(pieces).plan([])
    assert _settled(_Row([4, 4, 5, 6], "好看好看。口袋"), plan, pieces) == _Row([4, 4, 5], "好看好看。")
    # a full sentence that would keep less than half of the copy: keep the copy as it is
    assert _settled(_Row([4, 5, 6, 7, 6], "好看。口袋显瘦口袋"), plan, pieces) == _Row([4, 5, 6, 7, 6], "好看。口袋显瘦口袋")
    assert _settled(_Row([6, 7], "口袋显瘦"), plan, pieces) == _Row([6, 7], "口袋显瘦")  # no sentence end at all


def test_no_punctuation_mark_right_after_a_pause_and_no_doubled_de():
    import torch

    from components.models.generator.constraints import TokenBlocker
    from components.models.generator.decoding import _masked, _Row

    plan = TokenBlocker(["", "", "", "", "好", "。", "，", "！", "，好"]).plan([])
    settings = DecodingSettings(no_repeat_ngram=0)
    rows = [_Row([4, 5], "好。"), _Row([4, 6], "好，"), _Row([4], "好")]
    masked = torch.isinf(_masked(torch.zeros(3, 9), rows, [plan] * 3, settings, step=2))
    assert masked[0].nonzero().flatten().tolist() == [5, 6, 7, 8]  # 。 then any mark (，好 too); EOS stays
    assert masked[1].nonzero().flatten().tolist() == [5, 6, 7, 8]
    assert not masked[2].any()  # after a word, punctuation is fine
    plan = TokenBlocker(["", "", "", "", "的", "的确", "好"]).plan([])
    masked = torch.isinf(_masked(torch.zeros(1, 7), [_Row([6, 4], "好的")], [plan], settings, step=2))
    assert masked[0].nonzero().flatten().tolist() == [4, 5]  # no 的的


def test_a_row_left_with_no_token_keeps_only_the_hard_constraints():
    import torch

    from components.models.generator.constraints import TokenBlocker
    from components.models.generator.decoding import _masked, _Row

    plan = TokenBlocker(["", "", "", "", "好", "。", "最"]).plan(["最"])
    # Past its budget at a sentence end (EOS only) but under min_len (no EOS): nothing is left.
    settings = DecodingSettings(length_budget=1.0, no_repeat_ngram=0, min_len=5)
    masked = _masked(torch.zeros(1, 7), [_Row([4, 5], "好。")], [plan], settings, step=2, budgets=[1])
    assert not torch.isinf(masked[0, 4]) and torch.isinf(masked[0, 6])  # writable again; the banned word stays banned


def test_phrase_memory_penalizes_only_bigrams_already_used():
    import torch

    from components.models.generator.decoding import PhraseMemory

    memory = PhraseMemory()
    memory.add([5, 6])
    memory.add([5, 6, 7])  # (BOS,5) and (5,6) twice, (6,7) once
    logprobs = torch.log_softmax(torch.zeros(3, 8), dim=-1)
    penalized = memory.penalize(logprobs, np.array([5, 6, 4]), weight=1.0)
    assert torch.allclose(penalized.exp().sum(-1), torch.ones(3))  # still distributions
    assert penalized[0].argmin() == 6 and penalized[1].argmin() == 7  # the used continuations
    assert penalized[0, 6] < penalized[1, 7]  # used twice costs more than once
    assert torch.allclose(penalized[2], logprobs[2])  # token 4 was never followed by anything
    assert torch.equal(memory.penalize(logprobs, np.array([5, 6, 4]), weight=0.0), logprobs)


@pytest.mark.parametrize("method", ["greedy", "beam"])
def test_catalog_penalty_keeps_the_copies_of_one_job_from_reading_alike(model_dir, method):
    generator = api.load_generator(model_dir, batch_size=1)
    requests = [generator.request({"类型": ["裙"], "颜色": ["白色"]}, None, "any", "any")] * 4
    plain = [c[0] for c in generator.generate_many(requests, {"method": method})]
    assert len(set(plain)) == 1  # deterministic search: one product, one copy
    varied = [c[0] for c in generator.generate_many(requests, {"method": method, "catalog_penalty": 2.0})]
    assert varied[0] == plain[0]  # the job's first copy has nothing to avoid yet
    assert len(set(varied)) == len(requests)
    # A new call is a new job: its memory starts empty.
    assert generator.generate_many(requests[:1], {"method": method, "catalog_penalty": 2.0})[0][0] == plain[0]
    # A resumed job counts the copies it wrote before it stopped.
    resumed = [c[0] for chunk in generator.generate_chunks(requests[2:], {"method": method, "catalog_penalty": 2.0}, earlier=varied[:2]) for c in chunk]
    assert resumed == varied[2:]


def test_rerank_prefers_copies_that_lead_with_the_focus(model_dir):
    from components.models.generator.decoding import Candidate

    from components.models.generator.constraints import ValueVocabulary

    generator = api.load_generator(model_dir)
    generator.vocabulary = ValueVocabulary({"颜色": ["白色", "黑色"]}, ["颜色"])
    request = generator.request({"类型": ["裙"], "颜色": ["白色"], "图案": ["条纹"]}, ["条纹"], "any", "any")
    late = Candidate([], "这条裙子很好看，穿上很舒服，适合夏天，搭配条纹", -1.0, -1.0)
    early = Candidate([], "条纹的裙子很好看，穿上很舒服，适合夏天，随意搭配", -1.2, -1.2)
    contradicting = Candidate([], "条纹黑色裙子", 0.0, 0.0)
    plain = DecodingSettings(rerank_coverage=0.0)
    assert generator.rerank(request, [late, early, contradicting], plain, 3) == [late.text, early.text, contradicting.text]
    focused = DecodingSettings(rerank_coverage=1.0)
    assert generator.rerank(request, [late, early, contradicting], focused, 3) == [early.text, late.text, contradicting.text]


class FocusEcho:
    """A system that writes exactly the requested focus values (nothing without a focus): its
    focus metrics are known, which pins down what each one measures."""

    def generate(self, attributes, focus=None, tone="any", length="any", decoding=None, n=1):
        return ["，".join(focus or [])]


def test_focus_metrics_compare_requested_values_with_the_no_focus_rate(model_dir, parts):
    from components.models.generator.evaluate import focus_metrics

    generator = api.load_generator(model_dir)
    corpus = parts[5].head(6)
    rows = [{"attributes": a, "summary": s} for a, s in zip(corpus["attributes"], corpus["summary"])]
    metrics, copies, focus_sets = focus_metrics(FocusEcho(), generator, rows, ["" for _ in rows], rng_seed=0)
    assert all(focus_sets) and copies == ["，".join(f) for f in focus_sets]
    assert metrics["random_focus_coverage"] == 1.0 and metrics["short_random_focus_coverage"] == 1.0
    assert metrics["no_focus_mention_rate"] == 0.0 and metrics["short_no_focus_mention_rate"] == 0.0


class LengthEcho:
    """A system that writes exactly as long as it is asked to (a middling copy when not asked)."""

    CHARS = {"short": 40, "long": 200, "any": 110}

    def generate(self, attributes, focus=None, tone="any", length="any", decoding=None, n=1):
        return ["好" * self.CHARS[length]]


def test_length_metrics_compare_requested_lengths_with_unrequested_ones(model_dir, parts):
    from components.models.generator.evaluate import length_metrics

    generator = api.load_generator(model_dir)
    corpus = parts[5].head(4)
    rows = [{"attributes": a, "summary": s} for a, s in zip(corpus["attributes"], corpus["summary"])]
    plain = ["好" * 40, "好" * 110, "好" * 110, "好" * 200]
    metrics, short_copies = length_metrics(LengthEcho(), generator, rows, plain, [100, 120], prefix="x_")
    assert short_copies == ["好" * 40] * 4
    assert metrics == {"x_short_length_rate": 1.0, "x_long_length_rate": 1.0, "x_no_length_short_rate": 0.25, "x_no_length_long_rate": 0.25}


class FirstTwoValues:
    """A system that writes the first two attribute values it is given: order-dependent."""

    def generate(self, attributes, focus=None, tone="any", length="any", decoding=None, n=1):
        return ["，".join([v for vs in attributes.values() for v in vs][:2])]


class SortedValues:
    """A system that writes every value in sorted order: it reads the attributes as a set."""

    def generate(self, attributes, focus=None, tone="any", length="any", decoding=None, n=1):
        return ["，".join(sorted(v for vs in attributes.values() for v in vs))]


def test_order_metrics_tell_a_set_reader_from_an_order_dependent_system(model_dir, parts):
    from components.models.generator.evaluate import order_metrics

    generator = api.load_generator(model_dir)
    corpus = parts[5].head(12)
    rows = [{"attributes": a, "summary": s} for a, s in zip(corpus["attributes"], corpus["summary"])]
    set_reader = order_metrics(SortedValues(), generator, rows, [SortedValues().generate(r["attributes"])[0] for r in rows], rng_seed=0)
    assert set_reader["order_shift_bleu4"] == 0.0 and set_reader["order_shift_attr_coverage"] == 0.0
    order_bound = order_metrics(FirstTwoValues(), generator, rows, [FirstTwoValues().generate(r["attributes"])[0] for r in rows], rng_seed=0)
    assert order_bound["order_shift_bleu4"] != 0.0  # other values come first, so other copies
    assert order_bound["shuffled_order_bleu4"] - order_bound["order_shift_bleu4"] == pytest.approx(float(np.mean([bleu4(c, r["summary"]) for c, r in zip([FirstTwoValues().generate(r["attributes"])[0] for r in rows], rows)])))



def test_generate_batch_says_what_it_could_not_use(model_dir, tmp_path):
    # Everything past the model's input length was dropped without a word (the product type
    # included, when it came last), and a mistyped focus value was ignored just as quietly.
    generator = api.load_generator(model_dir)
    many = "*".join(f"图案#花纹{i}" for i in range(generator.max_source_len)) + "*类型#裙"
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_text(json.dumps({"content": many}, ensure_ascii=False) + "\n" + '{"content": "类型#裙*颜色#白色"}\n', encoding="utf-8")

    report = api.generate_batch(source, out, model_dir, decoding="greedy", focus=["白色", "白邑"])

    assert report.cut_off["类型#裙"] == 1 and "图案#花纹0" not in report.cut_off
    assert report.focus_unused == ["白邑"]
    notes = report.warnings()
    assert any(n.startswith("values past the model's input length, which it never saw (rows): ") for n in notes)
    assert "focus values no row has, so no copy foregrounds them: 白邑" in notes
    assert generator.unfamiliar({"类型": ["裙"], "颜色": ["白色"]})["cut_off"] == []


def test_generate_batch_on_a_full_disk_says_so_in_two_lines(model_dir, tmp_path):
    # A full disk ended in three chained OSError tracebacks after the "--resume" hint.
    import resource
    import signal
    import subprocess
    import sys

    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_text("".join(json.dumps({"content": "类型#裙*颜色#白色"}, ensure_ascii=False) + "\n" for _ in range(64)), encoding="utf-8")

    def small_files():  # as if the disk filled up: writing past 2 kB fails with EFBIG
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (2048, 2048))

    result = subprocess.run(
        [sys.executable, "-m", "flows.cli", "generate-batch", "--input", str(source), "--output", str(out),
         "--model", str(model_dir), "--decoding", "greedy", "--params", str(ROOT / "params.yaml")],
        cwd=ROOT, capture_output=True, text=True, timeout=300, preexec_fn=small_files,
    )

    assert result.returncode == 1, result.stdout + result.stderr
    assert "run again with --resume" in result.stderr and "error: OSError: [Errno 27] File too large" in result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists() and api.partial_path(out).exists()  # the rows written so far are kept


def test_batch_warnings_escape_control_characters_from_the_input():
    report = api.BatchReport(1, unseen_values=Counter({"颜色#白\t色\x1b[31m": 1}), focus_unused=["a\x00b"])
    notes = " ".join(report.warnings())
    assert "颜色#白\\t色\\x1b[31m (1)" in notes and "a\\x00b" in notes
    assert not any(not c.isprintable() for c in notes)


def test_a_stopped_job_that_replaces_an_output_resumes_with_resume_and_overwrite(model_dir, tmp_path):
    # The one case the two flags go together: OUTPUT is a finished earlier job, and the job
    # replacing it stopped; --resume alone is refused (OUTPUT exists), so both are needed.
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    contents = ["类型#裙*颜色#白色", "类型#裤*裤型#阔腿裤", "类型#上衣*颜色#黑色"]
    source.write_text("".join(json.dumps({"content": c}, ensure_ascii=False) + "\n" for c in contents), encoding="utf-8")
    api.generate_batch(source, out, model_dir, decoding="greedy", batch_size=2)
    complete = out.read_text(encoding="utf-8")

    def stop_after_first_chunk(done, total):
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        api.generate_batch(source, out, model_dir, decoding="greedy", batch_size=2, overwrite=True, progress=stop_after_first_chunk)
    with pytest.raises(api.GenerationInputError, match="exists: --overwrite replaces it"):
        api.generate_batch(source, out, model_dir, decoding="greedy", batch_size=2, resume=True)
    api.generate_batch(source, out, model_dir, decoding="greedy", batch_size=2, resume=True, overwrite=True)
    assert out.read_text(encoding="utf-8") == complete and not api.partial_path(out).exists()


def test_generate_batch_counts_no_empty_copy_as_one_that_broke_a_hard_rule(model_dir, tmp_path, monkeypatch):
    """`servable` drops an empty copy without a rule broken: its row is written empty, but the
    report's `withheld` (every candidate broke a hard rule) must not count it."""
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_text(json.dumps({"content": "类型#裙*颜色#白色"}, ensure_ascii=False) + "\n", encoding="utf-8")
    real = api.Generator.generate_chunks

    def writing_an_empty_copy(self, *args, **kwargs):  # the model's copy trimmed to nothing
        for chunk in real(self, *args, **kwargs):
            yield [[""] for _ in chunk]

    monkeypatch.setattr(api.Generator, "generate_chunks", writing_an_empty_copy)
    report = api.generate_batch(source, out, model_dir, decoding="greedy")
    assert json.loads(out.read_text(encoding="utf-8"))["copy"] == ""
    assert report.withheld == 0 and report.warnings() == []
