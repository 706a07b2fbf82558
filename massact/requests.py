"""What a check asks of the engine: a pass is a hashable Request.

A request names the statistics it wants at which points, the input it runs on, the run mode
and the intervention. Point names may use ``*`` for "every": ``block.*`` (every block output),
``mlp.*.pre_act``, ``mlp.11.*`` (every checkpoint of one MLP), ``attn.*.v`` (every layer's
values), and ``output`` (the next-token loss). A pattern takes the points it matches that its
statistic applies to (massact.reducers: ``want("attn.*", "first_excl")`` reads the attention
probabilities ``attn.{l}``, which need eager attention; ``want("attn.*", "norm")`` the per-head
q, k and v). Requests that differ only in their statistics are one pass, and so are an
eager-attention request and one without: ``|`` merges them into one eager pass. The engine
serves a request from any pass of its kind that computed a superset of what it asks for.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from fnmatch import fnmatchcase
from importlib.resources import files
from pathlib import Path
from typing import Protocol

import torch

from massact.corpus import Corpus, bos_id, first, samples
from massact.reducers import PROBS, STATISTICS, applies
from massact.errors import CorpusError
from massact.interventions import NONE, Intervention
from massact.models import LoadedModel

LOSS_POINT = "output"  # pseudo-point: statistic "loss" is the mean next-token NLL per sample
KV_POINT = "kv"  # pseudo-point of the decode runners: what the KV cache held, and how fast it ran


class Source(Protocol):
    """Where a pass's token ids come from; frozen, so it can key caches."""

    def key(self, corpus: Corpus) -> str: ...

    def tokens(self, lm: LoadedModel, corpus: Corpus) -> torch.Tensor:
        """Every sample this source gives, (N, T); a claim reads a prefix of them."""

    def take(self, ids: torch.Tensor, n: int, corpus: Corpus) -> torch.Tensor:
        """The first n of ``ids``; a CorpusError saying what to change when there are fewer."""


@dataclass(frozen=True)
class Text:
    """The session's corpus (--corpus, --seqlen, --seed, --bos), in its seeded sample order."""

    def key(self, corpus: Corpus) -> str:
        return corpus.key

    def tokens(self, lm, corpus):
        return samples(corpus, lm.tokenizer, context=lm.context)

    def take(self, ids, n, corpus):
        return first(ids, n, corpus)


class _Generated:
    def take(self, ids, n, corpus):
        if n > len(ids):
            raise CorpusError(f"{self.key(corpus)} gives {len(ids)} samples, fewer than the {n} asked for")
        return ids[:n]


@dataclass(frozen=True)
class Prompt(_Generated):
    """One sample: ``text`` tokenized as the corpus is (no special tokens; BOS when --bos)."""

    text: str

    def key(self, corpus: Corpus) -> str:
        return f"prompt:{self.text!r}:bos{int(corpus.settings.bos)}"

    def tokens(self, lm, corpus):
        if lm.tokenizer is None:
            raise CorpusError(f"{lm.name} has no tokenizer: the prompt {self.text!r} cannot be tokenized")
        ids = lm.tokenizer(self.text, add_special_tokens=False, return_tensors="pt")["input_ids"]  # (1, T)
        if corpus.settings.bos:
            ids = torch.cat([torch.tensor([[bos_id(lm.tokenizer)]]), ids], dim=1)
        return ids


@dataclass(frozen=True)
class RepeatedRandom(_Generated):
    """``samples`` sequences of ``length`` uniform random token ids, each repeated ``repeats`` times:
    no text at all, so what a head does on it is positional or copying."""

    length: int
    repeats: int = 2
    samples: int = 50
    seed: int = 0

    def key(self, corpus: Corpus) -> str:
        return f"random:{self.length}x{self.repeats}:n{self.samples}:seed{self.seed}"

    def tokens(self, lm, corpus):
        if self.length * self.repeats > lm.context:
            raise CorpusError(f"{self.length} random tokens x {self.repeats} exceed {lm.name}'s context of "
                              f"{lm.context}")
        g = torch.Generator().manual_seed(self.seed)
        vocab = int(lm.config.vocab_size)
        return torch.randint(0, vocab, (self.samples, self.length), generator=g).repeat(1, self.repeats)


LONG_TEXT = Path(str(files("massact.fixtures") / "long"))  # original long documents (package data)
LONG_PARTS = ("statistics", "held_out")  # the first half of the documents, and the second


def long_documents(part: str) -> list[Path]:
    """The documents of one part: the first half of fixtures/long/*.txt (sorted) or the second."""
    docs = sorted(LONG_TEXT.glob("*.txt"))
    if part not in LONG_PARTS:
        raise ValueError(f"part must be one of {LONG_PARTS}, not {part!r}")
    return docs[:len(docs) // 2] if part == "statistics" else docs[len(docs) // 2:]


def _document_ids(lm, corpus: Corpus, path: Path, tokens: int) -> list[int]:
    ids = lm.tokenizer(path.read_text(encoding="utf-8"), add_special_tokens=False)["input_ids"]
    if corpus.settings.bos:
        ids = [bos_id(lm.tokenizer)] + ids
    if len(ids) < tokens:
        raise CorpusError(f"{path.name} has {len(ids)} tokens, fewer than the {tokens} a long sample needs")
    return ids


@dataclass(frozen=True)
class LongText(_Generated):
    """The first ``length`` tokens of each long document of ``part``, cut into samples of ``chunk``
    tokens (the head-classification document ran 2,048 tokens in chunks of 512, each its own pass)."""

    part: str = "statistics"
    length: int = 2048
    chunk: int = 2048

    def key(self, corpus: Corpus) -> str:
        return f"long:{self.part}:{self.length}/{self.chunk}:bos{int(corpus.settings.bos)}"

    def tokens(self, lm, corpus):
        if self.length % self.chunk:
            raise CorpusError(f"{self.length} tokens do not split into chunks of {self.chunk}")
        if self.length > lm.context:
            raise CorpusError(f"long samples of {self.length} tokens exceed {lm.name}'s context of {lm.context}")
        if not corpus.settings.bos:
            rows = [_document_ids(lm, corpus, p, self.length)[:self.length] for p in long_documents(self.part)]
            return torch.tensor(rows).reshape(-1, self.chunk)
        # with BOS, every chunk is a pass of its own that starts with it: BOS + chunk - 1 tokens of text
        body, start = self.chunk - 1, bos_id(lm.tokenizer)
        per = self.length // self.chunk
        rows = []
        for p in long_documents(self.part):
            ids = _document_ids(lm, corpus, p, self.length)[1:]  # the text after the BOS _document_ids puts first
            rows += [[start] + ids[k * body:(k + 1) * body] for k in range(per)]
        return torch.tensor(rows)


@dataclass(frozen=True)
class Needle:
    """One passkey prompt: its token ids, the key, and where the needle and the question lie."""

    document: int  # index into long_documents("held_out")
    depth: float  # the fraction of the document's part of the prompt aimed at
    key: str
    ids: list[int]
    needle: tuple[int, int]  # token positions [start, end) of the needle
    question: int  # token position of the question's first token


SENTENCE_END = (".", "!", "?")


def sentence_starts(tok, ids: list[int]) -> list[int]:
    """Positions i where a sentence ends with token i - 1 and token i opens with white space: where a
    sentence inserted at i reads as one of the text's own."""
    pieces = tok.batch_decode([[i] for i in ids])
    return [i for i in range(1, len(ids))
            if pieces[i - 1].rstrip("\"')]").endswith(SENTENCE_END) and pieces[i][:1].isspace()]


@dataclass(frozen=True)
class Passkey(_Generated):
    """Retrieval prompts of exactly ``length`` tokens: a five-digit key stated in a held-out long
    document and asked for at the end. Each document gets the needle at as many depths as give at
    least ``prompts`` prompts, spread evenly from ``lo`` to ``hi`` of the document's part of the prompt,
    each at the sentence boundary nearest it. ``only``: the prompts this source gives, by index."""

    length: int = 2048
    prompts: int = 50
    lo: float = 0.05
    hi: float = 0.95
    seed: int = 0
    only: tuple[int, ...] | None = None

    NEEDLE = " The secret pass key is {key}. Remember it: {key} is the pass key."
    QUESTION = "\n\nWhat is the secret pass key? The secret pass key is"

    def key(self, corpus: Corpus) -> str:
        picked = "" if self.only is None else ":only" + ",".join(map(str, self.only))
        return (f"passkey:{self.length}:{self.prompts}:{self.lo:g}-{self.hi:g}:seed{self.seed}"
                f":bos{int(corpus.settings.bos)}{picked}")

    def depths(self) -> list[float]:
        n = -(-self.prompts // len(long_documents("held_out")))
        return [round(self.lo + (self.hi - self.lo) * i / (n - 1), 6) for i in range(n)] if n > 1 else \
            [(self.lo + self.hi) / 2]

    def layout(self, lm, corpus: Corpus) -> list[Needle]:
        """Every prompt (``only`` aside), document by document, depth by depth."""
        if lm.tokenizer is None:
            raise CorpusError(f"{lm.name} has no tokenizer: the passkey prompts cannot be written")
        tok, out = lm.tokenizer, []
        question = tok(self.QUESTION, add_special_tokens=False)["input_ids"]
        depths = self.depths()
        g = torch.Generator().manual_seed(self.seed)
        n = len(long_documents("held_out")) * len(depths)
        keys = iter([str(int(k)) for k in torch.randint(10000, 100000, (n,), generator=g)])
        for d, path in enumerate(long_documents("held_out")):
            filler = _document_ids(lm, corpus, path, self.length)
            for depth in depths:
                secret = next(keys)
                needle = tok(self.NEEDLE.format(key=secret), add_special_tokens=False)["input_ids"]
                room = self.length - len(needle) - len(question)
                # the nearest sentence boundary; mid-sentence only where the text has none
                starts = sentence_starts(tok, filler[:room]) or [round(depth * room)]
                at = min(starts, key=lambda i: abs(i - depth * room))
                out.append(Needle(d, depth, secret, filler[:at] + needle + filler[at:room] + question,
                                  (at, at + len(needle)), room + len(needle)))
        return out

    def tokens(self, lm, corpus):
        prompts = self.layout(lm, corpus)
        picked = range(len(prompts)) if self.only is None else self.only
        return torch.tensor([prompts[i].ids for i in picked], dtype=torch.long).reshape(len(picked), self.length)


TEXT = Text()


@dataclass(frozen=True)
class Request:
    """One pass: statistics (point pattern, statistic name) over ``source``, run by ``mode``, under
    ``intervention``. The sample count is not part of it: claims read prefixes of one order."""

    stats: frozenset[tuple[str, str]] = field(default_factory=frozenset)
    source: Source = TEXT
    mode: str = "forward"
    intervention: Intervention = NONE
    options: tuple[tuple[str, object], ...] = ()  # the runner's settings (chunk size, positions to measure)

    @property
    def eager(self) -> bool:
        """Attention probabilities are asked for: the pass runs eager attention, which also changes the
        float rounding of everything else, so the engine keeps it apart from passes without."""
        return any(stat in STATISTICS and PROBS in STATISTICS[stat].kinds for _, stat in self.stats)

    def same_pass(self, corpus: Corpus) -> tuple:
        """What a pass is, apart from its statistics: requests with equal ``same_pass`` merge."""
        return self.source.key(corpus), self.mode, self.intervention.key, self.eager, self.options

    def __or__(self, other: Request) -> Request:
        """The union of two requests' statistics, one pass: eager when either is (every statistic can be
        taken under eager attention). Both must have the same input, run mode and intervention."""
        if (self.source, self.mode, self.intervention.key, self.options) != \
                (other.source, other.mode, other.intervention.key, other.options):
            raise ValueError(f"cannot merge passes {self.describe()} and {other.describe()}: they differ in their "
                             "input, run mode or intervention")
        return replace(self, stats=self.stats | other.stats)

    def under(self, intervention: Intervention) -> Request:
        return replace(self, intervention=intervention)

    def on(self, source: Source) -> Request:
        return replace(self, source=source)

    def describe(self) -> str:
        src = "" if self.source == TEXT else f" on {type(self.source).__name__}"
        return (f"{self.intervention.key}{src}" + (" +attention" if self.eager else "")
                + ("" if self.mode == "forward" else f" [{self.mode}]"))


def want(point: str, *stats: str) -> Request:
    """A request for ``stats`` at the points matching ``point``, on the corpus, no intervention."""
    return Request(stats=frozenset((point, s) for s in stats))


def expand(stats: frozenset[tuple[str, str]], points: dict[str, str]) -> dict[str, frozenset[str]]:
    """Point patterns resolved against a model's points (name -> kind): point -> statistics. A pattern
    takes the points it matches whose kind its statistic applies to.

    A pattern that takes no point is an error that lists the model's points: a check asking for a point
    the model does not have is a bug, not an empty result.
    """
    out: dict[str, set[str]] = {}
    for pattern, stat in sorted(stats):
        hits = [n for n in points if fnmatchcase(n, pattern)]
        fit = [n for n in hits if applies(stat, points[n])]
        if not fit:
            where = ("" if stat not in STATISTICS else
                     f"; statistic {stat!r} applies to {' and '.join(sorted(STATISTICS[stat].kinds))} points")
            found = f" only {pattern_list(hits)}, of another kind" if hits else ""
            raise ValueError(f"no capture point matches {pattern!r} for statistic {stat!r}{found}{where}. "
                             f"This model's points: {pattern_list(list(points))} (`python -m massact points MODEL` "
                             "lists them with their shapes and statistics)")
        for n in fit:
            out.setdefault(n, set()).add(stat)
    return {k: frozenset(v) for k, v in out.items()}


def pattern_list(names: list[str]) -> str:
    """Point names folded by layer, in their order: ``block.{l}, mlp.{l}.{input,output}, attn.{l}, attn.{l}.{q,k,v}
    (l = 0..29), output``."""
    by: dict[str, dict[str, None]] = {}  # "kind.{l}" -> the roles after it, in order ("" for none)
    layers: set[int] = set()
    other = []
    for n in names:
        kind, _, rest = n.partition(".")
        layer, _, role = rest.partition(".")
        if not layer.isdigit():
            other.append(n)
            continue
        layers.add(int(layer))
        by.setdefault(f"{kind}.{{l}}", {})[role] = None
    parts = []
    for stem, roles in by.items():
        named = [r for r in roles if r]
        if "" in roles:
            parts.append(stem)
        if named:
            parts.append(f"{stem}.{named[0]}" if len(named) == 1 else f"{stem}.{{{','.join(named)}}}")
    span = f" (l = {min(layers)}..{max(layers)})" if layers else ""
    return ", ".join(parts) + span + "".join(f", {n}" for n in other)
