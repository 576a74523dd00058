"""`copyflow generate`, `generate-batch` and `fetch-obd` refuse what they cannot do in one line."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from flows.cli import MAX_COPIES_PER_REQUEST, app
from tests.conftest import params_file


def test_generate_refuses_more_copies_than_one_request_holds(make_cfg, tmp_path):
    # decoded as one batch: 20,000 copies ran out of memory with a 150-line traceback
    result = CliRunner().invoke(app, ["generate", "--user", "u", "--product", "p", "--n", str(MAX_COPIES_PER_REQUEST + 1),
                                      "--params", str(params_file(make_cfg(), tmp_path))])
    assert result.exit_code == 2 and "less than or equal to 50" in result.output


def test_fetch_obd_without_a_package_index_is_one_line(make_cfg, tmp_path, monkeypatch):
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # as on a machine without the network
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    result = CliRunner().invoke(app, ["fetch-obd", "--params", str(params_file(make_cfg(profile="obd"), tmp_path))])
    assert result.exit_code == 1 and "error:" in result.output and "obp==0.4.1" in result.output
    assert "Traceback" not in result.output


def test_generate_batch_with_a_mistyped_model_path_creates_no_tracking_store(make_cfg, tmp_path):
    # A --model path that does not exist was taken for an MLflow URI: the project's store was
    # created empty, and `copyflow status` then reported "no registered models" instead of no store.
    cfg = make_cfg()
    params = params_file(cfg, tmp_path)
    source = tmp_path / "in.jsonl"
    source.write_text('{"content": "类型#裙*颜色#白色"}\n', encoding="utf-8")
    store = Path(cfg.tracking.uri.removeprefix("sqlite:///"))

    for model, says in ((str(tmp_path / "modle"), "generator model not found"), ("models:/copyflow-generator/1", "no MLflow tracking store")):
        result = CliRunner().invoke(app, ["generate-batch", "--input", str(source), "--output", str(tmp_path / "out.jsonl"),
                                          "--model", model, "--params", str(params)])
        assert result.exit_code == 2 and says in result.output, result.output
        assert not store.exists() and not (tmp_path / "out.jsonl").exists()


def test_generate_batch_bans_the_maintained_ad_law_words_the_bundle_lacks(make_cfg, tmp_path):
    """A bundle built before the profile's list grew: `generate-batch` bans the profile's words
    (and the statutory ones) beside the bundle's, as the copy server does."""
    import json

    from components.models.generator import api
    from components.models.generator.decoding import DecodingSettings
    from tests.models.generator_fixtures import ROOT, tiny_parts

    tokenizer, vocabulary, _, baseline, net, _ = tiny_parts()
    statutory = ROOT / "components/resources/ad_law_words.txt"
    bundle = api.save_model_dir(tmp_path / "bundle", net, tokenizer, vocabulary, statutory, baseline, DecodingSettings(method="greedy", max_len=16))
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_text(json.dumps({"content": "类型#裙*颜色#白色"}, ensure_ascii=False) + "\n", encoding="utf-8")
    plain = api.load_generator(bundle).generate("类型#裙*颜色#白色", decoding="greedy")[0]
    word = next(c for c in plain if c not in "类型裙颜色白")  # written by the model, allowed by the bundle's list
    grown = tmp_path / "ad_law_words.txt"
    grown.write_text(statutory.read_text(encoding="utf-8") + word + "\n", encoding="utf-8")
    params = params_file(make_cfg(paths={"ad_law_words": str(grown)}), tmp_path)
    result = CliRunner().invoke(app, ["generate-batch", "--input", str(source), "--output", str(out), "--model", str(bundle),
                                      "--decoding", "greedy", "--params", str(params)])
    assert result.exit_code == 0, result.output
    copy = json.loads(out.read_text(encoding="utf-8"))["copy"]
    assert copy and word not in copy, (word, copy)


def test_generate_batch_with_resume_and_overwrite_and_no_stopped_job_is_a_usage_error(make_cfg, tmp_path):
    # It answered "nothing to resume" (or, with no --model, that there is no champion) without
    # saying that --overwrite contradicts --resume when there is no stopped job to carry on.
    params = params_file(make_cfg(), tmp_path)
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_text('{"content": "类型#裙*颜色#白色"}\n', encoding="utf-8")
    for model in ([], ["--model", str(tmp_path / "bundle")]):
        result = CliRunner().invoke(app, ["generate-batch", "--input", str(source), "--output", str(out), *model,
                                          "--resume", "--overwrite", "--params", str(params)])
        assert result.exit_code == 2, result.output
        assert result.output.strip() == (f"error: --resume and --overwrite conflict: there is no stopped job to resume "
                                         f"({out}.partial does not exist); --overwrite alone starts over"), result.output
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("out")) == []
