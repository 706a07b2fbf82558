"""The text the passes run on: deterministic chunks of consecutive tokens.

Every result carries the corpus settings (name, text hash, seed, nsamples, seqlen, bos), so a
number can always be traced to the exact tokens it was measured on.

A corpus is read in blocks, regular files only, up to ``CAP_BYTES``; its text is tokenized a window
at a time, each seam checked, into the ids that tokenizing it as one string gives: memory stays
bounded by the cap, not by the size of what --corpus points at.
"""
from __future__ import annotations

import bisect
import codecs
import hashlib
import io
import os
import stat
from dataclasses import asdict, dataclass, replace
from importlib.resources import files
from pathlib import Path
from typing import BinaryIO

import torch

from massact.errors import CorpusError, SequenceTooLong

DEFAULT_CORPUS = Path(str(files("massact.fixtures") / "corpus"))  # package data: installed with massact
# what a corpus is read up to: ~1M tokens, thousands of samples; claims read 10-50 of them
CAP_BYTES = 4 * 2**20
BLOCK = 2**20  # bytes read at a time
WINDOW = 2**16  # characters tokenized at a time
AGREE = 32  # tokens two overlapping windows must agree on for their seam to be taken


@dataclass(frozen=True)
class CorpusSettings:
    path: str = str(DEFAULT_CORPUS)
    nsamples: int | None = None  # None: each claim reads its record's sample count
    seqlen: int = 128
    seed: int = 0
    # prepend the BOS (or CLS) token to every sample; None (--bos auto): as each model's tokenizer does
    bos: bool | None = False

    def __post_init__(self):
        if self.nsamples is not None and self.nsamples < 1:
            raise CorpusError(f"--nsamples must be at least 1, not {self.nsamples}")
        if self.seqlen < 2:
            raise CorpusError(f"--seqlen must be at least 2, not {self.seqlen}")


@dataclass(frozen=True)
class Corpus:
    """Loaded text plus its settings; ``key`` identifies it in the pass cache."""

    settings: CorpusSettings
    name: str
    text: str
    sha256: str
    truncated: dict | None = None  # over the cap: cap_bytes, bytes_read, bytes_total, files_read, files

    @property
    def key(self) -> str:
        """Identifies the sample order; a claim reads a prefix of it, so nsamples is not part of it."""
        s = self.settings
        if s.bos is None:
            raise ValueError("the corpus's BOS is decided per model: use Corpus.for_model first")
        return f"{self.name}:{self.sha256[:12]}:T{s.seqlen}:seed{s.seed}:bos{int(s.bos)}"

    def describe(self) -> dict:
        out = {"name": self.name, "sha256": self.sha256, **asdict(self.settings)}
        out["bos"] = {None: "auto", True: "on", False: "off"}[self.settings.bos]
        return {**out, "truncated": self.truncated} if self.truncated else out

    def for_model(self, tokenizer) -> tuple[Corpus, str]:
        """This corpus with its BOS decided for a model's tokenizer, and why: prepended exactly when
        the tokenizer adds one by default (--bos auto), or as --bos / --no-bos force it."""
        if self.settings.bos is not None:
            why = "--bos" if self.settings.bos else "--no-bos"
            return self, f"{'prepended' if self.settings.bos else 'not prepended'} ({why})"
        adds = adds_bos(tokenizer)
        why = ("prepended: the model's tokenizer adds it by default (--bos auto)" if adds else
               "not prepended: the model's tokenizer adds none (--bos auto)")
        return replace(self, settings=replace(self.settings, bos=adds)), why

    def note(self) -> str | None:
        """What a corpus over the cap says: how much of it was read."""
        t = self.truncated
        if not t:
            return None
        return (f"corpus {self.settings.path} holds {t['bytes_total'] / 2**20:.1f} MiB, over the cap of "
                f"{t['cap_bytes'] / 2**20:.1f} MiB: read the first {t['bytes_read'] / 2**20:.1f} MiB "
                f"({t['files_read']} of {t['files']} files); the samples are drawn from that")


def load_corpus(settings: CorpusSettings, *, cap: int | None = None) -> Corpus:
    """Read a .txt file or every .txt file of a directory (sorted, joined by blank lines), in blocks,
    up to ``cap`` bytes (default ``CAP_BYTES``): a larger corpus is read to the cap (cut at a word)
    and says so (``Corpus.truncated``, ``Corpus.note``)."""
    cap = CAP_BYTES if cap is None else cap
    path = Path(settings.path)
    if not path.exists():
        raise CorpusError(f"corpus {path} does not exist; pass --corpus FILE_OR_DIR with .txt files")
    files = sorted(path.glob("*.txt")) if path.is_dir() else [path]
    texts, total, left = [], 0, cap
    for f in files:
        with _open_regular(f) as fh:
            total += os.fstat(fh.fileno()).st_size
            if left > 0:  # every file is checked to be a regular one; only those under the cap are read
                text, got = _read_text(fh, f, limit=left)
                texts.append(text)
                left -= got
    text = "\n\n".join(texts)
    if not text.strip():
        raise CorpusError(f"corpus {path} is empty (no text in {len(files)} .txt files); "
                          "point --corpus at a file or directory of plain text")
    truncated = None
    if left <= 0 and total > cap:
        truncated = {"cap_bytes": cap, "bytes_read": cap - left, "bytes_total": total, "files_read": len(texts),
                     "files": len(files)}
    return Corpus(settings, path.stem if path.is_file() else path.name, text,
                  hashlib.sha256(text.encode()).hexdigest(), truncated)


def _open_regular(f: Path) -> BinaryIO:
    """``f`` opened for reading if it is a regular file (or a link to one); a FIFO, device or directory
    is refused without blocking on it (O_NONBLOCK: opening a FIFO with no writer would wait forever)."""
    try:
        fd = os.open(f, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        raise CorpusError(f"cannot read corpus file {f}: {e.strerror or e}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = {stat.S_IFIFO: "a FIFO", stat.S_IFDIR: "a directory", stat.S_IFCHR: "a character device",
                stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket"}.get(stat.S_IFMT(mode), "not a file")
        raise CorpusError(f"corpus file {f} is {kind}, not a regular file: only regular .txt files are read; "
                          "remove it from the corpus directory or pass --corpus a plain text file")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def _read_text(fh: BinaryIO, f: Path, *, limit: int) -> tuple[str, int]:
    """The text of an open file as ``Path.read_text`` gives it (UTF-8, universal newlines), stripped,
    read in blocks up to ``limit`` bytes (cut after the last whitespace when the file is longer),
    and the bytes read."""
    decoder = io.IncrementalNewlineDecoder(codecs.getincrementaldecoder("utf-8")(), translate=True)
    parts, got = [], 0
    while got < limit:
        block = fh.read(min(BLOCK, limit - got))
        if not block:
            break
        if b"\x00" in block:
            raise CorpusError(f"corpus file {f} holds NUL bytes: it is binary, not text; pass plain text files")
        parts.append(_decode(decoder, block, f, offset=got))
        got += len(block)
    cut = got >= limit and fh.read(1) != b""
    if not cut:
        parts.append(_decode(decoder, b"", f, offset=got, final=True))
    text = "".join(parts)
    if cut:  # not in the middle of a word: after the last whitespace of the last block, if it has one
        end = max(text.rfind(c, max(0, len(text) - BLOCK)) for c in " \n\t")
        text = text[:end] if end > 0 else text
    return text.strip(), got


def _decode(decoder, block: bytes, f: Path, *, offset: int, final: bool = False) -> str:
    pending = len(decoder.getstate()[0])  # bytes of a character the last block cut
    try:
        return decoder.decode(block, final=final)
    except UnicodeDecodeError as e:
        at = offset - pending + e.start
        raise CorpusError(f"corpus file {f} is not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {at}); "
                          "pass plain text files, or convert this one to UTF-8") from None


def samples(corpus: Corpus, tokenizer, *, context: int) -> torch.Tensor:
    """Every chunk of seqlen consecutive tokens, in the seeded sample order; (chunks, seqlen).

    The first n rows are the n samples of any claim, so claims with different sample counts
    share one pass over the longest prefix.
    """
    s = corpus.settings
    if s.seqlen > context:
        raise SequenceTooLong(f"--seqlen {s.seqlen} exceeds the model's context of {context} tokens; "
                              f"use --seqlen {context} or less")
    ids = token_ids(corpus.text, tokenizer)
    start = bos_id(tokenizer) if s.bos else None
    body = s.seqlen - (start is not None)
    n_chunks = len(ids) // body
    if n_chunks == 0:
        raise CorpusError(f"the corpus {corpus.settings.path} has {len(ids)} tokens, fewer than one sample of {body}; "
                          "lower --seqlen or add text")
    order = torch.randperm(n_chunks, generator=torch.Generator().manual_seed(s.seed))
    chunks = ids[:n_chunks * body].view(n_chunks, body)[order]
    if start is not None:
        chunks = torch.cat([torch.full((len(chunks), 1), start), chunks], dim=1)
    return chunks


def token_ids(text: str, tokenizer) -> torch.Tensor:
    """The ids of ``text`` tokenized as one string, without special tokens; (N,) int64.

    A fast tokenizer is run one window of ``WINDOW`` characters at a time. A window's tokens are
    taken up to a seam late in it, where the next window starts; the seam is taken only where the
    next window's first ``AGREE`` tokens are the ones this window has there, so no token changes
    at a seam (a window whose seams all disagree grows, up to the rest of the text).
    """
    if not getattr(tokenizer, "is_fast", False) or len(text) <= 2 * WINDOW:
        return torch.tensor(_encode(tokenizer, text)[0], dtype=torch.long)
    out: list[torch.Tensor] = []
    start, width = 0, WINDOW
    ids, offsets = _encode(tokenizer, text[:width])
    while start + width < len(text):
        seam = _seam(tokenizer, text, start=start, width=width, ids=ids, offsets=offsets)
        if seam is None:  # no seam held: a longer window moves the candidates away from its end
            width *= 2
            ids, offsets = _encode(tokenizer, text[start:start + width])
            continue
        k, at, ids_next, offsets_next = seam
        out.append(torch.tensor(ids[:k], dtype=torch.long))
        start, width, ids, offsets = start + at, WINDOW, ids_next, offsets_next
    out.append(torch.tensor(ids, dtype=torch.long))
    return torch.cat(out)


def _encode(tokenizer, text: str) -> tuple[list[int], list[tuple[int, int]] | None]:
    """Ids (as the corpus is always tokenized: no special tokens) and, from a fast tokenizer, each
    token's character span. The text is longer than the model's context on purpose: it is cut into
    samples after, so transformers' warning about its length (verbose) would only mislead."""
    fast = getattr(tokenizer, "is_fast", False)
    enc = tokenizer(text, add_special_tokens=False, verbose=False, **({"return_offsets_mapping": True} if fast else {}))
    return enc["input_ids"], enc["offset_mapping"] if fast else None


def _seam(tokenizer, text: str, *, start: int, width: int, ids: list[int], offsets: list[tuple[int, int]]):
    """Where to cut the window ``text[start:start + width]`` (its ``ids`` and ``offsets``): token k,
    at character ``start + at``, whose next window ``text[start + at:...]`` begins with the window's own
    tokens k, k+1, ... for ``AGREE`` tokens. Returns (k, at, the next window's ids and offsets), or
    None when no candidate in the window's last quarter but one eighth holds."""
    lo, hi = width * 3 // 4, width * 7 // 8  # far enough from the window's end to be past its effects
    tries = 0
    for k in range(max(1, bisect.bisect_left(offsets, lo, key=lambda o: o[0])), len(ids) - AGREE):
        if offsets[k - 1][1] > offsets[k][0]:
            continue  # inside a character that several tokens share
        if offsets[k][0] >= hi or tries == 8:
            return None
        tries += 1
        # where the token starts, or where the last one ended (a token's span may leave out its leading space)
        for at in dict.fromkeys((offsets[k - 1][1], offsets[k][0])):
            nxt, nxt_offsets = _encode(tokenizer, text[start + at:start + at + WINDOW])
            if nxt[:AGREE] == ids[k:k + AGREE]:
                return k, at, nxt, nxt_offsets
    return None


def first(chunks: torch.Tensor, n: int, corpus: Corpus) -> torch.Tensor:
    """The first n samples; a clear error when the corpus has fewer."""
    if n > len(chunks):
        raise CorpusError(f"the corpus {corpus.settings.path} gives {len(chunks)} samples of "
                          f"{corpus.settings.seqlen} tokens, fewer than the {n} asked for; lower --nsamples or "
                          "--seqlen, or add text")
    return chunks[:n]


def adds_bos(tokenizer) -> bool:
    """Whether the tokenizer puts a BOS (or CLS) token before a text by default."""
    if tokenizer is None:
        return False
    try:
        start = bos_id(tokenizer)
    except CorpusError:
        return False
    ids = tokenizer("a", verbose=False)["input_ids"]
    return bool(ids) and ids[0] == start and ids[1:2] != [start]


def bos_id(tokenizer) -> int:
    """The BOS token, else the CLS token (encoders), that --bos prepends."""
    for attr in ("bos_token_id", "cls_token_id"):
        tid = getattr(tokenizer, attr, None)
        if tid is not None:
            return int(tid)
    raise CorpusError("--bos was asked for but the tokenizer has no BOS or CLS token")
