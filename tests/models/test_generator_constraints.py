"""A decoder pushed hard toward a banned word or a contradicting value never emits it."""

import re

import numpy as np
import pytest
import torch

from components.evaluation import text_metrics as tm
from components.models.generator.api import Generator, TorchBackend, score_copies
from components.models.generator.constraints import GARMENT_WORDS, LatinLexicon, TokenBlocker, ValueVocabulary, build_value_vocabulary, load_ad_law_words, load_latin_words
from components.models.generator.decoding import DecodingSettings
from components.models.generator.evaluate import summarize
from tests.models.generator_fixtures import ROOT, tiny_parts

AD_LAW = ROOT / "components/resources/ad_law_words.txt"
LATIN = ROOT / "components/resources/latin_words.txt"
WHITE_DRESS = {"类型": ["裙"], "颜色": ["白色"], "裙长": ["连衣裙"]}


class ForcedBackend(TorchBackend):
    """The real tiny model with a huge bonus on chosen tokens: after token a (or at the start)
    push b, otherwise push a, so an unconstrained decoder spells a+b over and over."""

    def __init__(self, net, pushes: list[tuple[int, int]]):
        super().__init__(net)
        self.pushes = pushes

    def step(self, tokens, state):
        logprobs, state = super().step(tokens, state)
        logprobs = logprobs.clone()
        for first, second in self.pushes:
            after_first = torch.from_numpy(tokens == first)
            logprobs[after_first, second] += 100.0
            logprobs[~after_first, first] += 100.0
        return logprobs, state


@pytest.fixture(scope="module")
def parts():
    return tiny_parts()


COLOURS = ValueVocabulary({"颜色": ["白色", "黑色", "红色", "粉红色"]}, ["颜色"])
SHAPES = ValueVocabulary({"裙款式": ["不对称", "对称", "荷叶边"]}, ["裙款式"])
ASYMMETRIC_DRESS = {"类型": ["裙"], "裙款式": ["不对称"]}
COATS = ValueVocabulary({"衣样式": ["外套", "西装", "风衣"], "衣领型": ["西装领", "圆领"]}, ["衣样式", "衣领型"])
SUIT_COLLAR_COAT = {"类型": ["上衣"], "衣样式": ["外套"], "衣领型": ["西装领"]}


# characters each length control aims at (a real bundle takes them from its training copies)
TYPICAL = {"any": 10, "short": 6, "medium": 10, "long": 16}


def make_generator(parts, pushes, ad_law_words, faithful=True, vocab=COLOURS, latin=None, doubles=None, **settings_overrides):
    tokenizer, net = parts[0], parts[4]
    vocab = vocab if faithful else ValueVocabulary(vocab.values_by_key, [])
    settings = DecodingSettings(max_len=24, no_repeat_ngram=0, num_candidates=3, **settings_overrides)
    return Generator(tokenizer, ForcedBackend(net, pushes), vocab, ad_law_words, settings, 64, known_latin_words=latin, known_doubles=doubles, typical_lengths=TYPICAL)


def piece(tokenizer, text):
    return tokenizer.token_id(text)


@pytest.mark.parametrize("method", ["greedy", "beam", "top_p"])
def test_forced_ad_law_words_are_never_emitted(parts, method):
    tokenizer = parts[0]
    words = load_ad_law_words(AD_LAW)
    assert "最" in words and "第一" in words
    # 第 then 一 as separate tokens: the banned word straddles a token boundary.
    pushes = [(piece(tokenizer, "第"), piece(tokenizer, "一")), (piece(tokenizer, "最"), piece(tokenizer, "好"))]
    free = make_generator(parts, pushes, [], faithful=False)
    free_copy = free.generate(WHITE_DRESS, decoding=method)[0]
    assert "第一" in free_copy or "最" in free_copy  # the push works when nothing blocks it
    guarded = make_generator(parts, pushes, words)
    for copy in guarded.generate(WHITE_DRESS, decoding=method, n=3):
        assert "第一" not in copy and "最" not in copy, copy
        assert copy  # it still writes something


@pytest.mark.parametrize("method", ["greedy", "beam", "top_p"])
def test_forced_contradicting_value_is_never_emitted(parts, method):
    tokenizer = parts[0]
    black = piece(tokenizer, "黑色")  # a value: one token
    pushes = [(black, black), (piece(tokenizer, "黑"), piece(tokenizer, "色"))]
    free = make_generator(parts, pushes, [], faithful=False)
    assert "黑色" in free.generate(WHITE_DRESS, decoding=method)[0]
    guarded = make_generator(parts, pushes, [])
    for copy in guarded.generate(WHITE_DRESS, decoding=method, n=3):
        assert "黑色" not in copy, copy
    # the same push is fine for a black product: only contradictions are blocked
    black_dress = {"类型": ["裙"], "颜色": ["黑色"]}
    assert "黑色" in guarded.generate(black_dress, decoding=method)[0]


@pytest.mark.parametrize("method", ["greedy", "beam", "top_p"])
def test_forced_unlisted_value_is_never_emitted(parts, method):
    # A dress whose catalog lists no colour: 黑色 contradicts nothing, but the copy would be
    # guessing a fact. Banned by default; allowed (only contradictions banned) when turned off.
    tokenizer = parts[0]
    black = piece(tokenizer, "黑色")
    pushes = [(black, black), (piece(tokenizer, "黑"), piece(tokenizer, "色"))]
    no_colour_dress = {"类型": ["裙"], "裙长": ["连衣裙"]}
    guarded = make_generator(parts, pushes, [])
    assert "黑色" in guarded.generate(no_colour_dress, decoding={"method": method, "forbid_unlisted": False})[0]
    for copy in guarded.generate(no_colour_dress, decoding=method, n=3):
        assert COLOURS.unlisted(copy, no_colour_dress) == [], copy
        assert copy
    assert "黑色" in guarded.generate({"类型": ["裙"], "颜色": ["黑色"]}, decoding=method)[0]  # listed: fine


def test_only_copies_that_break_no_hard_rule_may_be_served(parts):
    """`servable` judges with the decoder's own rules (rerank only puts a breaking copy last):
    ad-law words, contradicting values, and unlisted ones where the bundle's defaults forbid them."""
    words = load_ad_law_words(AD_LAW)
    texts = ["白色连衣裙", "最好的白色连衣裙", "黑色连衣裙", "白色连衣裙，第 一 眼就心动"]
    generator = make_generator(parts, [], words)
    servable, withheld = generator.servable(texts, WHITE_DRESS)
    assert servable == ["白色连衣裙"]
    assert withheld["最好的白色连衣裙"] == {"values": [], "ad_law": ["最"]}
    assert withheld["黑色连衣裙"]["values"] == ["黑色"]
    assert withheld["白色连衣裙，第 一 眼就心动"]["ad_law"] == ["第一"]  # matched as the gate matches: spaces ignored
    no_colour_dress = {"类型": ["裙"], "裙长": ["连衣裙"]}
    assert generator.servable(["黑色连衣裙"], no_colour_dress)[0] == []  # unlisted: forbidden by default
    lenient = make_generator(parts, [], words, forbid_unlisted=False)
    assert lenient.servable(["黑色连衣裙", "黑色连衣裙"], no_colour_dress) == (["黑色连衣裙", "黑色连衣裙"], {})
    assert lenient.servable(["黑色连衣裙"], WHITE_DRESS)[0] == []  # a contradiction never is
    # an empty copy breaks no rule, yet a shopper must not be shown one: it is no candidate
    assert generator.servable(["", " \n", "白色连衣裙"], WHITE_DRESS) == (["白色连衣裙"], {})


@pytest.mark.parametrize("method", ["greedy", "beam", "top_p"])
def test_a_copy_never_names_a_garment_of_another_type(parts, method):
    # Pushed toward 牛仔 + 裤 (这款牛仔裤…, the full model's slip for denim skirts): a 类型#裙
    # product never gets 牛仔裤, trousers still do, and a skirt can still say 牛仔裙.
    tokenizer = parts[0]
    pushes = [(piece(tokenizer, "牛仔"), piece(tokenizer, "裤"))]
    guarded = make_generator(parts, pushes, [])
    jeans = {"类型": ["裤"], "材质": ["牛仔布"]}
    assert "牛仔裤" in guarded.generate(jeans, decoding=method)[0]
    denim_skirt = {"类型": ["裙"], "材质": ["牛仔布"], "裙型": ["牛仔裙"]}
    for copy in guarded.generate(denim_skirt, decoding=method, n=3):
        assert "牛仔裤" not in copy and COLOURS.contradictions(copy, denim_skirt) == [], copy
    skirt_push = make_generator(parts, [(piece(tokenizer, "牛仔"), piece(tokenizer, "裙"))], [])
    assert "牛仔裙" in skirt_push.generate(denim_skirt, decoding=method)[0]


FABRICS = ValueVocabulary({"材质": ["牛仔布", "亚麻", "棉"], "裙型": ["牛仔裙", "a字"]}, ["材质", "裙型"], aliases={"牛仔": ["材质", "裙型"]})
LINEN_TROUSERS = {"类型": ["裤"], "材质": ["亚麻"]}


def test_value_aliases_are_the_short_forms_human_copies_use_as_the_value():
    # 牛仔 is said by every copy of a denim product and by no other: an alias of 牛仔布 / 牛仔裙.
    # 直筒 (of 直筒裤) is said of many products without it (直筒版型 for a dress): not one.
    denim = [({"类型": ["裤"], "材质": ["牛仔布"], "裤型": ["直筒裤"]}, "这款牛仔裤采用直筒版型，百搭")] * 6
    skirts = [({"类型": ["裙"], "材质": ["牛仔布"], "裙型": ["牛仔裙"]}, "牛仔裙，复古")] * 2
    others = [({"类型": ["裙"], "材质": ["亚麻"], "裤型": ["阔腿裤"]}, "亚麻面料，直筒版型，清爽")] * 100
    rows = denim + skirts + others

    def aliases(rows, **kw):
        kw = {"alias_max_human_rate": 0.01, "alias_min_uses": 5} | kw
        return build_value_vocabulary([a for a, _ in rows], [t for _, t in rows], 0.05, **kw).aliases

    assert aliases(rows) == {"牛仔": ["材质", "裙型"]}
    # two other products saying 牛仔 among 102 is above 1%: no longer an alias; nor below min_uses
    assert aliases(rows + [({"类型": ["裙"], "材质": ["亚麻"]}, "牛仔风")] * 2) == {}
    assert aliases(rows, alias_min_uses=9) == {}
    # 40 other copies cannot show a rate under 1% (a zero there is no evidence): no alias at all
    assert aliases(denim + skirts + others[:40]) == {}
    vocab = build_value_vocabulary([a for a, _ in rows], [t for _, t in rows], 0.05, alias_max_human_rate=0.01)
    # the vocabulary round-trips with its aliases; one saved before them reads as "unknown"
    assert ValueVocabulary.from_dict(vocab.to_dict()).aliases == vocab.aliases
    assert ValueVocabulary.from_dict({"values_by_key": {}, "factual_keys": []}).aliases is None


def test_an_alias_counts_as_its_value():
    # 亚麻牛仔面料 for linen trousers: 牛仔 is no catalog value, but it states denim.
    assert FABRICS.contradictions("亚麻牛仔面料，清爽", LINEN_TROUSERS) == ["牛仔"]
    assert FABRICS.unlisted("这款牛仔阔腿裤", {"类型": ["裤"]}) == ["牛仔"]  # no material listed
    assert FABRICS.contradictions("这款牛仔阔腿裤", {"类型": ["裤"]}) == []  # nor contradicted
    # a product with a value that holds the alias may say it anywhere (牛仔裤 of 牛仔布)
    assert FABRICS.unlisted("这款牛仔裤，复古牛仔", {"类型": ["裤"], "材质": ["牛仔布"]}) == []


@pytest.mark.parametrize("method", ["greedy", "beam", "top_p"])
def test_a_forced_alias_is_never_emitted(parts, method):
    tokenizer = parts[0]
    pushes = [(piece(tokenizer, "牛仔"), piece(tokenizer, "裤"))]
    free = make_generator(parts, pushes, [], vocab=ValueVocabulary(FABRICS.values_by_key, FABRICS.factual_keys, aliases={}))
    assert "牛仔" in free.generate(LINEN_TROUSERS, decoding=method)[0]  # without the alias, the push wins
    guarded = make_generator(parts, pushes, [], vocab=FABRICS)
    for copy in guarded.generate(LINEN_TROUSERS, decoding=method, n=3):
        assert "牛仔" not in copy and copy, copy
    assert "牛仔裤" in guarded.generate({"类型": ["裤"], "材质": ["牛仔布"]}, decoding=method)[0]


def test_garment_words_of_another_type_count_as_contradictions():
    skirt, jeans, shoe = {"类型": ["裙"]}, {"类型": ["裤"]}, {"类型": ["鞋"]}
    assert COLOURS.contradictions("这款牛仔裤，搭配裙子", skirt) == ["牛仔裤"]
    assert COLOURS.contradictions("这款牛仔裤，搭配裙子", jeans) == ["裙子"]
    assert COLOURS.unlisted("这款牛仔裤，搭配裙子", shoe) == []  # not a type the list knows
    assert COLOURS.unlisted("搭配裤子", {"颜色": ["白色"]}) == []  # no type listed: unknown
    # a catalog value that holds the word is the product's own (裤装 in a listed 裤装连体)
    assert COLOURS.contradictions("这款裤装连体", {"类型": ["裙"], "款式": ["裤装连体"]}) == []


@pytest.mark.parametrize("method", ["greedy", "beam", "top_p"])
def test_contradicting_value_inside_an_own_value_is_written_only_as_part_of_it(parts, method):
    tokenizer = parts[0]
    symmetric, negation = piece(tokenizer, "对称"), piece(tokenizer, "不")
    free = make_generator(parts, [(symmetric, symmetric)], [], faithful=False, vocab=SHAPES)
    assert SHAPES.contradictions(free.generate(ASYMMETRIC_DRESS, decoding=method)[0], ASYMMETRIC_DRESS) == ["对称"]
    guarded = make_generator(parts, [(symmetric, symmetric)], [], vocab=SHAPES)
    for copy in guarded.generate(ASYMMETRIC_DRESS, decoding=method, n=3):
        assert SHAPES.contradictions(copy, ASYMMETRIC_DRESS) == [], copy
    # the product's own 不对称, spelled 不 + 对称, stays writable
    spelled = make_generator(parts, [(negation, symmetric)], [], vocab=SHAPES)
    assert "不对称" in spelled.generate(ASYMMETRIC_DRESS, decoding=method)[0]


@pytest.mark.parametrize("method", ["greedy", "beam", "top_p"])
def test_contradicting_value_opening_an_own_value_must_go_on_as_that_value(parts, method):
    # 西装 (a suit) contradicts 衣样式#外套, but opens the product's own 西装领 (suit collar):
    # pushed toward 西装外套, the decoder may write 西装 only if 领 follows.
    tokenizer = parts[0]
    pushes = [(piece(tokenizer, "西装"), piece(tokenizer, "外套"))]
    free = make_generator(parts, pushes, [], faithful=False, vocab=COATS)
    assert "西装外套" in free.generate(SUIT_COLLAR_COAT, decoding=method)[0]
    guarded = make_generator(parts, pushes, [], vocab=COATS)
    copies = guarded.generate(SUIT_COLLAR_COAT, decoding=method, n=3)
    for copy in copies:
        assert COATS.contradictions(copy, SUIT_COLLAR_COAT) == [], copy
    assert any("西装领" in copy for copy in copies)  # the own value stays writable


@pytest.mark.parametrize("method", ["greedy", "beam", "top_p"])
def test_forced_doubling_is_never_emitted(parts, method):
    # A push to write 黑色 again right after 黑色 (the 字母字母 glitch): off, the decoder
    # doubles it; on (the default), no run of Chinese characters comes twice in a row.
    tokenizer = parts[0]
    black = piece(tokenizer, "黑色")
    black_dress = {"类型": ["裙"], "颜色": ["黑色"]}
    free = make_generator(parts, [(black, black)], [])
    assert "黑色黑色" in free.generate(black_dress, decoding={"method": method, "no_doubling": 0})[0]
    for copy in free.generate(black_dress, decoding=method, n=3):
        assert tm.doubled_runs(copy) == [], copy
        assert "黑色" in copy


@pytest.mark.parametrize("method", ["greedy", "beam", "top_p"])
def test_latin_letters_only_spell_known_words(parts, method):
    # Pushed o, l, o, l, ...: without a lexicon the copy is letter salad (ololol); with one,
    # every run of letters is a known word or one of the product's own values.
    tokenizer = parts[0]
    pushes = [(piece(tokenizer, "o"), piece(tokenizer, "l"))]
    assert "olol" in make_generator(parts, pushes, []).generate(WHITE_DRESS, decoding=method)[0]
    guarded = make_generator(parts, pushes, [], latin=["polo", "logo"])
    ol_dress = {**WHITE_DRESS, "风格": ["ol"]}
    for attributes, allowed in ((WHITE_DRESS, {"polo", "logo"}), (ol_dress, {"polo", "logo", "ol"})):
        for copy in guarded.generate(attributes, decoding=method, n=3):
            runs = set(re.findall(r"[a-z]+", copy.lower()))
            assert runs <= allowed, copy
    assert "ol" in guarded.generate(ol_dress, decoding=method)[0]  # its own value stays writable


@pytest.mark.parametrize("method", ["greedy", "beam", "top_p"])
def test_a_known_word_that_repeats_a_token_pair_is_finished_not_dropped(parts, method):
    # icicle spells i-c-i-c: the bigram blocking bans the second c, so the lexicon's only
    # continuation is blocked. Releasing every soft rule there (the old fallback) let the
    # pushed letters run on (icicicic…); only the repetition rule gives way now.
    tokenizer = parts[0]
    pushes = [(piece(tokenizer, "i"), piece(tokenizer, "c"))]
    guarded = make_generator(parts, pushes, [], latin=["icicle"])
    for copy in guarded.generate(WHITE_DRESS, decoding={"method": method, "no_repeat_ngram": 2}, n=3):
        assert set(re.findall(r"[a-z]+", copy.lower())) <= {"icicle"}, copy


@pytest.mark.parametrize("method", ["greedy", "beam", "top_p"])
def test_a_character_comes_twice_only_where_the_human_copy_doubles_it(parts, method):
    # Pushed 更 after 更 (更更加, 性感感: 3-6% of sampled copies): without the rule the copy
    # stutters; with it, never, while a character the training copies double (满满) or one
    # doubled in the product's own value (泡泡袖) stays writable.
    tokenizer = parts[0]
    more, full = piece(tokenizer, "更"), piece(tokenizer, "满")
    assert "更更" in make_generator(parts, [(more, more)], []).generate(WHITE_DRESS, decoding=method)[0]
    guarded = make_generator(parts, [(more, more), (full, full)], [], doubles={"满"})
    for copy in guarded.generate(WHITE_DRESS, decoding=method, n=3):
        assert "更更" not in copy and "更" in copy, copy
    assert "满满" in guarded.generate(WHITE_DRESS, decoding=method)[0]
    puffed = make_generator(parts, [(more, more)], [], doubles=set())
    assert "更更" in puffed.generate({**WHITE_DRESS, "衣样式": ["更更袖"]}, decoding=method)[0]


# Latin words of the bundled corpus's human copies that a generated copy must not write:
# brands (a false product fact), pinyin (zui 最, jue 绝: ad-law words past the filter) and
# words that state a product fact (logo, oversize).
BRANDS_AND_PINYIN = {"veromoda", "pawinpaw", "levi", "arcteryx", "misssixty", "uo", "ur", "ykk", "white", "zui", "jue", "ji", "geng", "logo", "oversize", "slogan"}


def test_the_generic_latin_word_list_names_no_brand_pinyin_or_fact(tmp_path):
    words = load_latin_words(LATIN)
    assert {"feel", "look", "nice", "hold"} <= words
    assert not words & BRANDS_AND_PINYIN
    assert all(re.fullmatch(r"[a-z]+", w) for w in words)
    with pytest.raises(FileNotFoundError, match="Latin word list not found"):
        load_latin_words(tmp_path / "nowhere.txt")
    (tmp_path / "empty.txt").write_text("# a comment only\n", encoding="utf-8")
    with pytest.raises(ValueError, match="Latin word list .* has no words"):
        load_latin_words(tmp_path / "empty.txt")


@pytest.mark.parametrize("method", ["greedy", "beam", "top_p"])
def test_a_brand_or_pinyin_from_the_training_copies_is_never_written(parts, method):
    # The training copies name brands and spell 最 as zui; the lexicon built from them keeps
    # only the generic words, so a decoder pushed toward z, u (zuzu…, zui) writes no letters.
    from components.models.generator.api import copy_lexicon

    copies = ["这款来自zu的卫衣", "仔里面属于zui耐看的颜色", "上身look也很nice", "撞色的logo"]
    lexicon = copy_lexicon(copies, COLOURS, load_latin_words(LATIN))
    assert lexicon == {"look", "nice"}
    tokenizer = parts[0]
    pushes = [(piece(tokenizer, "z"), piece(tokenizer, "u"))]
    assert "zu" in make_generator(parts, pushes, []).generate(WHITE_DRESS, decoding=method)[0]
    guarded = make_generator(parts, pushes, [], latin=lexicon)
    for copy in guarded.generate(WHITE_DRESS, decoding=method, n=3):
        assert not re.search(r"[a-z]", copy.lower()), copy
    # a shop's own brand, listed as a value, stays writable
    assert "zu" in guarded.generate({**WHITE_DRESS, "品牌": ["zu"]}, decoding=method)[0]


@pytest.mark.parametrize("method", ["greedy", "beam", "top_p"])
def test_the_letters_of_a_factual_value_are_the_products_own(parts, method):
    # v of v领 (a collar) for a dress that lists no collar would state a fact the catalog does
    # not (v字领 slips past the value ban); ol of 风格#ol states none and stays writable.
    from components.models.generator.api import copy_lexicon

    collars = ValueVocabulary({"颜色": ["白色", "黑色"], "衣领型": ["v领", "圆领"], "风格": ["ol", "简约"]}, ["颜色", "衣领型"])
    lexicon = copy_lexicon(["v领的设计", "通勤ol风"], collars, ["look"])
    assert lexicon == {"ol"}
    tokenizer = parts[0]
    pushes = [(piece(tokenizer, "v"), piece(tokenizer, "字"))]
    guarded = make_generator(parts, pushes, [], vocab=collars, latin=lexicon)
    for copy in guarded.generate(WHITE_DRESS, decoding=method, n=3):
        assert "v" not in copy.lower(), copy
    assert "v" in guarded.generate({**WHITE_DRESS, "衣领型": ["v领"]}, decoding=method)[0]
    assert "v" in guarded.generate(WHITE_DRESS, decoding={"method": method, "forbid_unlisted": False})[0]


@pytest.mark.parametrize("method", ["greedy", "beam", "top_p"])
def test_a_copy_opens_no_brand_slot(parts, method):
    # 这款来自<UNK>的: the corpus names a (masked) brand after 来自, which a copy cannot fill
    # truthfully. Pushed toward 来 then 自, the decoder writes 来 again and again but never
    # 来自; pushed toward 起 before 来, it may write 起来自 (看起来自然).
    tokenizer = parts[0]
    rise, come, self_ = piece(tokenizer, "起"), piece(tokenizer, "来"), piece(tokenizer, "自")
    pushed = make_generator(parts, [(come, self_)], [])
    for copy in pushed.generate(WHITE_DRESS, decoding=method, n=3):
        assert copy.count("来") >= 3 and "来自" not in copy, copy
    natural = make_generator(parts, [(rise, come), (come, self_)], [])
    copies = natural.generate(WHITE_DRESS, decoding=method, n=3)
    assert any("起来自" in copy for copy in copies), copies
    for copy in copies:
        assert "来自" not in copy.replace("起来自", ""), copy


@pytest.mark.parametrize("method", ["greedy", "beam", "top_p"])
def test_a_copy_states_no_number_the_catalog_does_not_give(parts, method):
    # 采用10%纯蓝色, 2018新款: a number is a product fact. Pushed toward 1, 0 the decoder writes no
    # digit; a product whose own value has the number may write it, and only as that value.
    tokenizer = parts[0]
    one, zero = piece(tokenizer, "1"), piece(tokenizer, "0")
    pushed = make_generator(parts, [(one, zero)], [])
    for copy in pushed.generate(WHITE_DRESS, decoding=method, n=3):
        assert not re.search(r"[0-9]", copy), copy
    measured = {**WHITE_DRESS, "衣长": ["10cm"]}
    copy = pushed.generate(measured, decoding={"method": method, "no_repeat_ngram": 0})[0]
    assert "10" in copy and re.sub("10cm", "", copy).count("1") == 0, copy


def test_foreign_word_rate_counts_copies_with_a_latin_word_outside_the_list(parts):
    generator = make_generator(parts, [], [], latin={"look", "nice"})
    rows = [{"content": "类型#裙*颜色#白色", "summary": "白色的裙子"}, {"content": "类型#裙*风格#ol", "summary": "ol风的裙子"}]
    scores = score_copies(generator, rows, ["来自veromoda的白色裙子，很nice", "ol风，look很好"], [[], []])
    assert scores["foreign_words"].tolist() == ["veromoda", ""]  # ol: the product's own value
    assert summarize(scores)["foreign_word_rate"] == 0.5
    numbers = score_copies(generator, rows, ["采用10%棉的白色裙子", "2018新款ol风"], [[], []])
    assert numbers["foreign_words"].tolist() == ["10", "2018"]
    measured = [{"content": "类型#裙*衣长#80cm", "summary": "裙"}] * 2
    assert score_copies(generator, measured, ["80cm的长度", "8分长"], [[], []])["foreign_words"].tolist() == ["", "8"]
    unguarded = make_generator(parts, [], [])
    assert np.isnan(summarize(score_copies(unguarded, rows, ["veromoda", "ol"], [[], []]))["foreign_word_rate"])


def test_copy_doubles_needs_two_training_copies_or_a_known_value():
    from components.models.generator.api import copy_doubles

    copies = ["满满的少女心", "满满当当", "看起来更更加好看", "层层叠叠"]  # 更更 once: a typo
    assert copy_doubles(copies, ValueVocabulary({"衣袖型": ["泡泡袖"]}, [])) == {"满", "泡"}


def test_latin_lexicon_grows_runs_only_along_known_words():
    lexicon = LatinLexicon(["polo", "ol"], ["", "p", "o", "l", "po", "lo", "a字", "，", "ol字"])
    def allowed(text):
        banned = set(lexicon.banned(text).tolist())
        return [p for i, p in enumerate(["", "p", "o", "l", "po", "lo", "a字", "，", "ol字"]) if i not in banned]
    assert allowed("这款") == ["", "p", "o", "po", "，", "ol字"]  # a字: "a" is no known word
    assert allowed("这款po") == ["", "l", "lo"]  # half a word must go on (or the copy ends)
    assert allowed("这款polo") == ["", "，"]
    assert allowed("通勤ol") == ["", "，"]
    assert lexicon.unfinished("这款po") and not lexicon.unfinished("这款polo") and not lexicon.unfinished("这款")


def test_contradictions_ignore_values_inside_the_products_own():
    vocab = ValueVocabulary({"颜色": ["白色", "黑色", "红色", "粉红色"]}, ["颜色"])
    pink = {"颜色": ["粉红色"]}
    assert vocab.contradictions("粉红色的裙子", pink) == []
    assert vocab.contradictions("粉红色配红色腰带", pink) == ["红色"]
    assert vocab.contradictions("黑色的连衣裙", {"颜色": ["白色"]}) == ["黑色"]
    assert vocab.contradictions("黑色的连衣裙", {"类型": ["裙"]}) == []  # no colour stated: nothing to contradict


RUFFLES = ValueVocabulary({"颜色": ["白色", "黑色", "红色", "粉红色", "黑白"], "衣款式": ["木耳", "木耳边", "荷叶边"], "裙下摆": ["花边", "开叉"]},
                          ["颜色", "衣款式", "裙下摆"])


def test_an_own_value_written_with_one_character_inserted_is_still_its_own():
    # 木耳花边 (20 human copies of 木耳边 products) is 木耳边 with 花 inserted: its 木耳 is the
    # product's own, not the other value 木耳.
    ruffled = {"类型": ["上衣"], "衣款式": ["木耳边"]}
    assert RUFFLES.contradictions("木耳花边的领口，甜美", ruffled) == []
    assert RUFFLES.unlisted("木耳花边的领口", ruffled) == ["花边"]  # (no 裙下摆 listed: 花边 is a guess)
    # the word must stand before the inserted character, in the same place: anything else is a claim
    assert RUFFLES.contradictions("木耳的领口", ruffled) == ["木耳"]
    assert RUFFLES.contradictions("木耳，边", ruffled) == ["木耳"]  # no Chinese character between
    assert RUFFLES.contradictions("木耳花花边", ruffled) == ["木耳"]  # two inserted
    # the inserted character's own word is not covered: 花边 is another product's 裙下摆
    assert RUFFLES.contradictions("木耳花边", ruffled | {"裙下摆": ["开叉"]}) == ["花边"]
    # nor a word cut off its modifier by the insertion (粉和红色: pink and red), nor a new word
    assert RUFFLES.contradictions("粉和红色", {"颜色": ["粉红色"]}) == ["红色"]
    assert RUFFLES.contradictions("白红色", {"颜色": ["白色"]}) == ["红色"]
    assert RUFFLES.contradictions("黑白色的条纹", {"颜色": ["白色"]}) == ["黑白"]
    assert RUFFLES.contradictions("黑色的连衣裙", {"颜色": ["白色"]}) == ["黑色"]
    assert RUFFLES.contradictions("粉红色配红色腰带", {"颜色": ["粉红色"]}) == ["红色"]


PATTERNS = ValueVocabulary({"图案": ["格子", "条纹", "复古"], "风格": ["复古", "简约"]}, ["图案"])
CHECKED_SHIRT = {"类型": ["上衣"], "图案": ["格子"]}


def test_a_value_a_mood_key_has_too_is_no_fact():
    # 图案#复古 comes with 风格#复古 (all 638 corpus products): a copy's 复古 is 复古风, the mood,
    # which no catalog fact contradicts. Another pattern still does.
    assert PATTERNS.contradictions("复古风的格子衬衫", CHECKED_SHIRT) == []
    assert PATTERNS.unlisted("复古风的衬衫", {"类型": ["上衣"]}) == []
    assert PATTERNS.contradictions("复古风的条纹衬衫", CHECKED_SHIRT) == ["条纹"]
    assert PATTERNS.unlisted("复古风的条纹衬衫", {"类型": ["上衣"]}) == ["条纹"]
    assert "复古" not in PATTERNS.unlisted_values(CHECKED_SHIRT)


@pytest.mark.parametrize("method", ["greedy", "beam", "top_p"])
def test_a_mood_value_is_writable_and_another_fact_is_not(parts, method):
    tokenizer = parts[0]
    retro, stripes = piece(tokenizer, "复古"), piece(tokenizer, "条纹")
    assert "复古" in make_generator(parts, [(retro, retro)], [], vocab=PATTERNS).generate(CHECKED_SHIRT, decoding=method)[0]
    guarded = make_generator(parts, [(stripes, stripes)], [], vocab=PATTERNS)
    for copy in guarded.generate(CHECKED_SHIRT, decoding=method, n=3):
        assert "条纹" not in copy and PATTERNS.unlisted(copy, CHECKED_SHIRT) == [] and copy, copy


def test_unlisted_values_are_every_factual_value_the_product_does_not_list():
    vocab = ValueVocabulary({"颜色": ["白色", "黑色", "红色", "粉红色"], "材质": ["雪纺", "牛仔布"], "风格": ["简约"]}, ["颜色", "材质"])
    no_colour = {"类型": ["裙"], "材质": ["雪纺"]}
    # contradictions first, then the keys it lacks, then the garment words of the other types
    assert vocab.unlisted_values(no_colour) == ["牛仔布", "白色", "黑色", "红色", "粉红色", *GARMENT_WORDS["裤"]]
    assert vocab.unlisted("黑色雪纺连衣裙，简约", no_colour) == ["黑色"]  # 风格 is no factual key
    assert vocab.contradictions("黑色雪纺连衣裙", no_colour) == []  # a guess, not a contradiction
    assert vocab.unlisted("粉红色的雪纺裙", {"颜色": ["粉红色"], "材质": ["雪纺"]}) == []  # 红色 inside its own 粉红色
    assert vocab.unlisted("牛仔布的裙子", no_colour) == ["牛仔布"]


def test_unlisted_rate_counts_copies_that_name_an_unlisted_value(parts):
    generator = make_generator(parts, [], [])
    rows = [{"content": "类型#裙*颜色#白色", "summary": "白色的裙子"}, {"content": "类型#裙*裙长#连衣裙", "summary": "一条连衣裙"}]
    scores = score_copies(generator, rows, ["白色的裙子", "黑色的连衣裙"], [[], []])
    assert scores["unlisted"].tolist() == ["", "黑色"]
    assert scores["hallucinated"].tolist() == [False, False]  # no colour listed: a guess, not a contradiction
    assert summarize(scores)["unlisted_rate"] == 0.5
    assert summarize(score_copies(generator, rows, ["黑色的裙子", "红色连衣裙"], [[], []]))["unlisted_rate"] == 1.0


def test_token_blocker_handles_words_across_tokens():
    blocker = TokenBlocker(["", "百", "分", "之", "百分", "之百", "好", "最好"], always_banned_ids=[0])
    plan = blocker.plan(["百分之百", "最"])
    assert plan.banned("")[7] and plan.banned("")[0]  # 最好 contains a banned word; id 0 always
    assert not plan.banned("今天")[5]
    banned = plan.banned("他说百分")
    assert banned[5] and not banned[3]  # 之百 completes the word; 之 alone does not yet
    assert plan.banned("他说百分之")[1] and plan.banned("他说百分之")[4]


def test_token_blocker_bans_a_word_only_outside_its_allowed_prefixes():
    blocker = TokenBlocker(["", "不", "对称", "不对称", "称", "对", "对称的"])
    plan = blocker.plan([], inside={"对称": ["不对称"]})
    opening = plan.banned("")
    assert opening[2] and opening[6] and not opening[3] and not opening[5]  # 对 alone states nothing yet
    assert not plan.banned("裙摆不")[2]  # 不 + 对称 is the product's own 不对称
    assert plan.banned("裙摆对")[4] and not plan.banned("裙摆不对")[4]  # across a token boundary too
    assert plan.banned("不对称，两侧")[2]  # an earlier own value does not license a later claim


def test_token_blocker_makes_a_word_that_opens_an_allowed_value_go_on_as_it():
    pieces = ["", "西装", "领", "外套", "西装外套", "西", "装", "装领", "领口", "西装领", "的"]
    plan = TokenBlocker(pieces, always_banned_ids=[0]).plan([], inside={"西装": ["西装领"]})
    ids = {p: i for i, p in enumerate(pieces)}
    opening = plan.banned("这款")
    assert opening[ids["西装外套"]] and not opening[ids["西装"]] and not opening[ids["西装领"]]
    after = plan.banned("这款西装")  # written 西装: only 领... may follow (not 外套, not the end)
    assert set(np.flatnonzero(~after)) == {ids["领"], ids["领口"]}
    assert not plan.banned("这款西装领")[ids["外套"]]  # 西装领 is finished: anything may follow
    across = plan.banned("这款西")  # across a token boundary
    assert not across[ids["装"]] and not across[ids["装领"]]
    assert not plan.banned("这款西装领的西装领")[ids["外套"]]
    assert plan.banned("西装领，西装")[ids["外套"]]  # an earlier 西装领 does not license a later 西装


def test_ad_law_word_list_errors(tmp_path):
    empty = tmp_path / "words.txt"
    empty.write_text("# only a comment\n", encoding="utf-8")
    with pytest.raises(ValueError, match="has no words"):
        load_ad_law_words(empty)
    with pytest.raises(FileNotFoundError):
        load_ad_law_words(tmp_path / "missing.txt")


@pytest.mark.parametrize("method", ["greedy", "beam", "top_p"])
def test_the_length_control_sets_where_a_copy_ends(parts, method):
    # Pushed to write 好。好。… for ever: the copy ends at the first sentence end at or past its
    # length control's typical length, whatever the exemplar or the model would do.
    tokenizer = parts[0]
    generator = make_generator(parts, [(piece(tokenizer, "好"), piece(tokenizer, "。"))], [], length_budget=1.0)
    for length, aim in TYPICAL.items():
        best, *others = generator.generate(WHITE_DRESS, length=length, decoding=method, n=2)
        assert best == "好。" * (aim // 2), (length, best)
        for copy in others:  # a beam's runner-up may wander, but it too ends at the first 。 past the aim
            first_end = min(i for i, c in enumerate(copy) if c == "。" and i + 1 >= aim)
            assert len(copy) == first_end + 1, (length, copy)
