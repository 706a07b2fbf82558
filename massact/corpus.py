"""The text the passes run on: deterministic chunks of consecutive tokens.

Every result carries the corpus settings (name, text hash, seed, nsamples, seqlen, bos), so a
number can always be traced to the exact tokens it was measured on.
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, replace
from importlib.resources import files
from pathlib import Path

import torch

from massact.errors import CorpusError, SequenceTooLong

DEFAULT_CORPUS = Path(str(files("massact.fixtures") / "corpus"))  # package data: installed with massact


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

    @property
    def key(self) -> str:
        """Identifies the sample order; a claim reads a prefix of it, so nsamples is not part of it."""
        s = self.settings
        if s.bos is None:
            raise ValueError("the corpus's BOS is decided per model: use Corpus.for_model first")
        return f"{self.name}:{self.sha256[:12]}:T{s.seqlen}:seed{s.seed}:bos{int(s.bos)}"

    def describe(self) -> dict:
        d = {"name": self.name, "sha256": self.sha256, **asdict(self.settings)}
        d["bos"] = {None: "auto", True: "on", False: "off"}[self.settings.bos]
        return d

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


def load_corpus(settings: CorpusSettings) -> Corpus:
    """Read a .txt file or every .txt file of a directory (sorted, joined by blank lines)."""
    path = Path(settings.path)
    if not path.exists():
        raise CorpusError(f"corpus {path} does not exist; pass --corpus FILE_OR_DIR with .txt files")
    files = sorted(path.glob("*.txt")) if path.is_dir() else [path]
    text = "\n\n".join(_read_text(f) for f in files)
    if not text.strip():
        raise CorpusError(f"corpus {path} is empty (no text in {len(files)} .txt files); "
                          "point --corpus at a file or directory of plain text")
    return Corpus(settings, path.stem if path.is_file() else path.name, text,
                  hashlib.sha256(text.encode()).hexdigest())


def _read_text(f: Path) -> str:
    try:
        text = f.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise CorpusError(f"corpus file {f} is not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}); "
                          "pass plain text files, or convert this one to UTF-8") from None
    except OSError as e:
        raise CorpusError(f"cannot read corpus file {f}: {e.strerror or e}") from None
    if "\x00" in text:
        raise CorpusError(f"corpus file {f} holds NUL bytes: it is binary, not text; pass plain text files")
    return text.strip()


def samples(corpus: Corpus, tokenizer, *, context: int) -> torch.Tensor:
    """Every chunk of seqlen consecutive tokens, in the seeded sample order; (chunks, seqlen).

    The first n rows are the n samples of any claim, so claims with different sample counts
    share one pass over the longest prefix.
    """
    s = corpus.settings
    if s.seqlen > context:
        raise SequenceTooLong(f"--seqlen {s.seqlen} exceeds the model's context of {context} tokens; "
                              f"use --seqlen {context} or less")
    # the whole text at once, chunked below: longer than the model's context on purpose, so
    # transformers' warning about it (verbose) would only mislead
    ids = tokenizer(corpus.text, add_special_tokens=False, verbose=False)["input_ids"]
    start = bos_id(tokenizer) if s.bos else None
    body = s.seqlen - (start is not None)
    n_chunks = len(ids) // body
    if n_chunks == 0:
        raise CorpusError(f"the corpus {corpus.settings.path} has {len(ids)} tokens, fewer than one sample of {body}; "
                          "lower --seqlen or add text")
    order = torch.randperm(n_chunks, generator=torch.Generator().manual_seed(s.seed))
    chunks = torch.tensor([ids[i * body:(i + 1) * body] for i in order.tolist()])
    if start is not None:
        chunks = torch.cat([torch.full((len(chunks), 1), start), chunks], dim=1)
    return chunks


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
