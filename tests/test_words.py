"""Token classes on hand-built token lists and the real tokenizers; S3, S4 and L5 on planted models."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from builders import char_tokenizer, planted_gpt2
from massact.arch import adapter_for
from massact.checks import Context
from massact.claims import judge
from massact.corpus import CorpusSettings, load_corpus
from massact.engine import Engine
from massact.metrics.words import classify, detect_scheme, load_function_words, word_class
from massact.models import LoadedModel
from test_planted import record

FW = load_function_words()


def _classes(tokens, scheme, specials=()):
    return classify(tokens, scheme=scheme, function_words=FW, specials=specials)


# ---------------------------------------------------------------- the list and the classifier

def test_function_word_list_skips_headers_and_keeps_punctuation(tmp_path) -> None:
    assert {"the", "of", "and", ",", ".", "n't", "'s"} <= FW
    assert not any(w.startswith("# ") for w in FW) and "determiners" not in FW
    f = tmp_path / "fw.txt"
    f.write_text("# group\nThe\n\n#\n")  # "#" alone is a word, "# group" a header
    assert load_function_words(f) == {"the", "#"}
    f.write_text("# only a header\n")
    with pytest.raises(ValueError, match="no function words"):
        load_function_words(f)


def test_word_class() -> None:
    assert [word_class(w, FW) for w in (" The", "cat", "\n\n", "“", "2024", "")] == \
        ["function", "content", "delimiter", "delimiter", "other", "other"]


def test_detect_scheme_counts_markers() -> None:
    assert detect_scheme(["Ġthe", "Ġa", "##", "##s", "x"]) == "bytelevel"  # a stray "##s" is outvoted
    assert detect_scheme(["▁the", "▁a", "<0x0A>"]) == "sentencepiece"
    assert detect_scheme(["the", "##s", "##ing"]) == "wordpiece"
    assert detect_scheme(["a", "b", " "]) == "plain"


def test_bytelevel_words_are_whole_words() -> None:
    toks = ["The", "Ġthe", "ory", "Ġof", "Ġit", "'s", "Ġ(", "the", ")", "Ċ", "Ġna", "Ã¯ve", ",", "Ġ2", "0"]
    assert _classes(toks, "bytelevel") == [
        "function", "content", "other", "function", "function", "function", "function", "function",
        "function", "delimiter", "content", "other", "function", "other", "other"]


def test_sentencepiece_and_wordpiece_markers() -> None:
    assert _classes(["▁the", "▁cat", "<0x0A>", "▁and", "▁the", "ory"], "sentencepiece") == \
        ["function", "content", "delimiter", "function", "content", "other"]
    assert _classes(["[CLS]", "the", "the", "##ory", "and", "'", "s", "[SEP]"], "wordpiece",
                    specials={"[CLS]", "[SEP]"}) == \
        ["other", "function", "content", "other", "function", "function", "content", "other"]


def test_position_zero_is_word_initial_even_mid_word() -> None:
    assert _classes(["ory", "Ġof"], "bytelevel") == ["content", "function"]
    assert _classes(["##ory", "of"], "wordpiece") == ["content", "function"]


def _tokenizer(spec: str):
    """A built-in model's tokenizer, loaded as the harness loads it; skips where its package is absent."""
    from massact import models
    from massact.errors import ModelUnavailable

    try:
        return models.load(spec).tokenizer
    except ModelUnavailable as e:
        pytest.skip(str(e))


SENTENCE = "The theory of the cat, and\n\nthe dog's naïve “quote” 2024."


@pytest.mark.parametrize("spec, scheme, expected", [
    ("smollm2-135m", "bytelevel", {
        "The": "function", " theory": "content", " of": "function", " the": "function", " cat": "content",
        ",": "function", " and": "function", "\n": "delimiter", "the": "function", " dog": "content",
        "'s": "function", " na": "content", "ïve": "other", " “": "delimiter", "quote": "content",
        "”": "delimiter", ".": "function"}),
    ("minilm-l6", "wordpiece", {
        "the": "function", "theory": "content", "of": "function", "cat": "content", ",": "function",
        "and": "function", "dog": "content", "'": "function", "naive": "content", "“": "delimiter",
        "quote": "content", ".": "function"}),
], ids=["smollm2-135m", "minilm-l6"])
def test_real_tokenizers(spec, scheme, expected) -> None:
    from massact.metrics.words import word_text

    tok = _tokenizer(spec)
    assert detect_scheme(tok.get_vocab()) == scheme
    toks = tok.convert_ids_to_tokens(tok(SENTENCE, add_special_tokens=False)["input_ids"])
    got = dict(zip([word_text(t, scheme) for t in toks], _classes(toks, scheme, tok.all_special_tokens)))
    assert {k: got.get(k) for k in expected} == expected


# ---------------------------------------------------------------- S3, S4, L5 on planted models

TEXT = "the dog and a cat sat on my mat."  # 32 characters = 32 tokens of the char tokenizer
FUNCTION_POS = [8, 12, 22, 25, 31]  # and, a, on, my, "." (the at 0 is left out of S3/S4)
CONTENT_POS = [4, 14, 18, 28]  # dog, cat, sat, mat
SEQ = len(TEXT)
RESAMPLES = 10  # the samples are identical copies: resampling only exercises the bootstrap path
COPIES = 12  # as many samples as a decided verdict needs (massact.verdict.MIN_UNITS), and a few more


def planted_at(positions: list[int]):
    """GPT-2 whose layer-1 MLP unit 0 fires (and writes ~1000 into dim 40) at every given position."""
    model = planted_gpt2(layer=1, feature=40, token=positions[0], magnitude=1000.0, n_layer=3, n_positions=SEQ)
    fc = model.transformer.h[1].mlp.c_fc
    with torch.no_grad():
        for p in positions[1:]:  # the unit reads the one-hot position code: add the other positions
            fc.weight[p, 0] = fc.weight[positions[0], 0]
    return model


def text_context(model, name: str, n: int = COPIES) -> Context:
    tok = char_tokenizer()
    lm = LoadedModel(spec=name, name=name, model=model, tokenizer=tok, adapter=adapter_for(model.config),
                     dtype="float32", device="cpu")
    corpus = load_corpus(CorpusSettings(seqlen=SEQ))
    engine = Engine(batch_size=4)
    ids = torch.tensor(tok(TEXT, add_special_tokens=False)["input_ids"])
    assert ids.shape == (SEQ,)
    engine.inputs[(lm.spec, corpus.key)] = ids.repeat(n, 1)
    return Context(lm, corpus, engine, n=n)


def test_the_planted_text_is_classed_as_intended() -> None:
    from massact.checks.words import CODE, token_classes

    ctx = text_context(planted_at([8]), "planted")
    codes, _ = token_classes(ctx, ctx.engine.inputs[(ctx.lm.spec, ctx.corpus.key)][:1])
    assert (codes[0] == CODE["function"]).nonzero().flatten().tolist() == [0, *FUNCTION_POS]
    assert (codes[0] == CODE["content"]).nonzero().flatten().tolist() == CONTENT_POS


@pytest.mark.parametrize("positions, align, no_diff", [
    (FUNCTION_POS, "holds", "refuted"),  # function words drive the massive unit
    (CONTENT_POS, "refuted", "refuted"),  # content words do
    ([8, 4], "refuted", "holds"),  # one of each: no difference
], ids=["function", "content", "mixed"])
def test_word_claims_follow_the_planting(positions, align, no_diff) -> None:
    ctx = text_context(planted_at(positions), "planted")
    s3, s4 = (judge(record(c), ctx, resamples=RESAMPLES)
              for c in ("svd.function_words_align", "svd.function_words_no_difference"))
    assert not (s3.verdict == "holds" and s4.verdict == "holds"), "S3 and S4 contradict each other"
    assert (s3.verdict, s4.verdict) == (align, no_diff), f"{s3.summary} / {s4.summary}"
    # the document's own measure, signed cos: the planted unit's input has one sign, so the same verdict
    signed = judge(record("svd.function_words_no_difference", "signed"), ctx, resamples=RESAMPLES)
    assert signed.verdict == no_diff and signed.values["d"] == signed.values["d_signed"], signed.summary
    assert s3.values["n_function"] == COPIES * len(FUNCTION_POS) and s3.values["n_content"] == COPIES * len(CONTENT_POS)
    assert set(s3.details["top_function"]) >= {"a", "o", "m"}


@pytest.mark.parametrize("positions, verdict, failing", [
    ([0, *FUNCTION_POS], "holds", []),  # the first token and function words
    (FUNCTION_POS, "refuted", ["pos0_pair_share >= 0.9"]),  # function words, but not the first token
    ([0, *CONTENT_POS], "refuted", ["fd_share_rest >= 0.9", "fd_enrichment > 1"]),  # the first token and content words
    ([0], "refuted", ["fd_share_rest >= 0.9", "fd_enrichment > 1"]),  # the first token only: the word half fails
], ids=["first-and-function", "function-only", "first-and-content", "first-only"])
def test_massive_tokens_judges_the_first_token_and_the_words_apart(positions, verdict, failing) -> None:
    """L5 is a conjunction: each half is seen failing alone, and with no massive position but the
    first the function-word half fails instead of passing for want of a counter-example."""
    l5 = judge(record("massive.tokens"), text_context(planted_at(positions), "planted"), resamples=RESAMPLES)
    assert l5.verdict == verdict, l5.summary
    assert l5.values["n_positions"] == COPIES * len(positions)
    assert [c for c, side in l5.bootstrap["conditions"].items() if side == "fails"] == failing, l5.bootstrap
    if positions == [0]:
        assert "fd_share_rest" not in l5.values and "not borne out" in l5.summary
    else:
        assert 0 < l5.values["fd_base_rate"] < 1


def test_word_claims_are_invalid_without_a_tokenizer_or_a_massive_layer() -> None:
    from builders import tiny_model
    from test_planted import context

    no_tok = context(planted_at([8]), "no-tokenizer")
    assert judge(record("massive.tokens"), no_tok, resamples=0).verdict == "invalid"
    assert "tokenizer" in judge(record("svd.function_words_align"), no_tok, resamples=0).reason
    random = text_context(tiny_model("gpt2"), "tiny-gpt2")
    for claim in ("massive.tokens", "svd.function_words_align", "svd.function_words_no_difference"):
        v = judge(record(claim), random, resamples=0)
        assert v.verdict == "invalid" and "no layer" in v.reason, v.summary


@pytest.mark.parametrize("claim", ["svd.function_words_align", "svd.function_words_no_difference", "massive.tokens"])
def test_documented_forms_measure_every_documented_value(claim) -> None:
    rec = record(claim, "gpt2")
    v = judge(replace(rec, seqlen=None), text_context(planted_at(FUNCTION_POS), "gpt2"), resamples=0)  # 32 tokens
    assert v.verdict in ("holds", "refuted") and set(rec.documented_values) <= set(v.values), v.summary
