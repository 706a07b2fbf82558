"""Forward passes over a corpus, one per (model, corpus, intervention), cached for the session.

A claim reads the first n samples of the corpus's sample order. A pass covers the longest
prefix asked for so far; a later claim that needs more samples runs only the missing ones.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch

from massact.capture import HeadStats, Keep, Median, TopK, attention_points, block_points, capture, collect, default_reducers, mlp_points
from massact.corpus import Corpus, first, samples
from massact.interventions import Intervention
from massact.models import LoadedModel

BASELINE = Intervention(kind="none")


@dataclass(frozen=True)
class PassResult:
    """Per-sample reductions of one pass. points: name -> {statistic: tensor with samples first}.

    ``idx`` selects samples lazily (a prefix, or a bootstrap resample): a statistic is indexed
    only when read, so a resample costs nothing for the hundreds of points a check never reads.
    """

    model: str
    corpus_key: str
    intervention: str
    points: dict[str, dict[str, torch.Tensor]]
    all_input_ids: torch.Tensor  # (N_all, T)
    all_loss: torch.Tensor | None  # (N_all,) mean next-token NLL per sample; None for encoders
    idx: torch.Tensor | None = None

    def _pick(self, t: torch.Tensor) -> torch.Tensor:
        return t if self.idx is None else t[self.idx]

    @property
    def n(self) -> int:
        return len(self.all_input_ids) if self.idx is None else len(self.idx)

    @property
    def input_ids(self) -> torch.Tensor:  # (N, T)
        return self._pick(self.all_input_ids)

    @property
    def loss(self) -> torch.Tensor | None:  # (N,)
        return None if self.all_loss is None else self._pick(self.all_loss)

    def stat(self, point: str, name: str) -> torch.Tensor:
        return self._pick(self.points[point][name])

    def select(self, idx: torch.Tensor) -> PassResult:
        """The same statistics for the samples ``idx`` of this result."""
        return replace(self, idx=idx if self.idx is None else self.idx[idx])

    def extend(self, more: PassResult) -> PassResult:
        """This (unselected) pass followed by the samples of ``more``."""
        assert self.idx is None and more.idx is None
        return replace(self, points={p: {k: torch.cat([v, more.points[p][k]]) for k, v in s.items()}
                                     for p, s in self.points.items()},
                       all_input_ids=torch.cat([self.all_input_ids, more.all_input_ids]),
                       all_loss=None if self.all_loss is None else torch.cat([self.all_loss, more.all_loss]))


class Engine:
    """Runs and caches passes; ``progress`` receives a line now and then, and one per pass."""

    def __init__(self, *, batch_size: int = 4, progress: Callable[..., None] | None = None):
        self.batch_size = batch_size
        self.progress = progress or (lambda line, final=False: None)
        self.cache: dict[tuple[str, str, str], PassResult] = {}
        self.inputs: dict[tuple[str, str], torch.Tensor] = {}
        self.n_passes = 0
        self.samples_run = 0
        self.seconds = 0.0
        self.frozen = False  # set while bootstrapping: every pass a replicate reads must be cached

    def tokens(self, lm: LoadedModel, corpus: Corpus, n: int) -> torch.Tensor:
        key = (lm.spec, corpus.key)
        if key not in self.inputs:
            self.inputs[key] = samples(corpus, lm.tokenizer, context=lm.context)
        return first(self.inputs[key], n, corpus)

    def run(self, lm: LoadedModel, corpus: Corpus, intervention: Intervention = BASELINE, *, n: int,
            keep: tuple[str, ...] = (), attention: bool = False) -> PassResult:
        """The first n samples under ``intervention``.

        keep: points whose full tensors (N, T, D) are kept (``stat(point, "full")``; a kept MLP checkpoint
              also gets its per-sample median);
        attention: run with eager attention and add per-head statistics at ``attn.{l}``.
        """
        key = (lm.spec, corpus.key, intervention.key, tuple(sorted(keep)), attention)
        have = self.cache.get(key)
        if have is None or have.n < n:
            if self.frozen:
                raise RuntimeError(f"a bootstrap replicate asked for a pass not run on the full samples: {key}; "
                                   "choose interventions from ctx.full()")
            ids = self.tokens(lm, corpus, n)[have.n if have else 0:]
            new = self._run(lm, corpus, intervention, ids, keep=key[3], attention=attention)
            self.cache[key] = have.extend(new) if have else new
        r = self.cache[key]
        return r if r.n == n else r.select(torch.arange(n))

    def _run(self, lm: LoadedModel, corpus: Corpus, intervention: Intervention, ids: torch.Tensor, *,
             keep: tuple[str, ...], attention: bool) -> PassResult:
        points = block_points(lm.adapter, lm.n_layers) + mlp_points(lm.adapter, lm.n_layers)
        if attention:
            points += attention_points(lm.adapter, lm.n_layers)
        unknown = set(keep) - {p.name for p in points}
        if unknown:
            raise ValueError(f"cannot keep {sorted(unknown)}: not a capture point")

        def reducers_for(p):
            if p.name.startswith("attn."):
                return [HeadStats()]
            if p.name.startswith("block."):
                return default_reducers() + ([Keep()] if p.name in keep else [])
            # MLP checkpoints: only the top entries; a median over every entry is the costliest
            # statistic, taken only where a claim keeps the checkpoint
            return [TopK(3)] + ([Keep(), Median()] if p.name in keep else [])

        mask = torch.ones_like(ids)  # samples are whole chunks: no padding
        mask_ref: dict[str, torch.Tensor] = {}
        losses = []
        label = intervention.key + (" +attention" if attention else "") + (f" +keep {','.join(keep)}" if keep else "")
        start = time.perf_counter()
        # the intervention's hooks first: hooks on one module run in registration order, and a
        # point on an intervened module must record what the intervention left there
        with torch.no_grad(), intervention.applied(lm.model, lm.adapter), _eager(lm.model, attention):
            with capture(lm.model, lm.adapter, points, mask_ref=mask_ref, make_reducers=reducers_for) as reducers:
                for i in range(0, len(ids), self.batch_size):
                    b_ids, b_mask = ids[i:i + self.batch_size].to(lm.device), mask[i:i + self.batch_size].to(lm.device)
                    mask_ref["mask"] = b_mask
                    out = lm.model(input_ids=b_ids, attention_mask=b_mask, output_attentions=attention)
                    if lm.adapter.is_decoder:
                        losses.append(next_token_nll(out.logits, b_ids, b_mask).cpu())
                    done = min(i + self.batch_size, len(ids))
                    rate = done * ids.shape[1] / (time.perf_counter() - start)
                    self.progress(f"{lm.name} / {label}: {done}/{len(ids)} samples, {rate:.0f} tok/s")
        seconds = time.perf_counter() - start
        self.progress(f"pass {lm.name} / {label}: {len(ids)} samples x {ids.shape[1]} tokens in "
                      f"{seconds:.1f} s ({ids.numel() / seconds:.0f} tok/s)", final=True)
        self.n_passes += 1
        self.samples_run += len(ids)
        self.seconds += seconds
        return PassResult(model=lm.spec, corpus_key=corpus.key, intervention=intervention.key,
                          points={k: {s: v.cpu() for s, v in d.items()} for k, d in collect(reducers).items()},
                          all_input_ids=ids, all_loss=torch.cat(losses) if losses else None)


@contextmanager
def _eager(model, on: bool):
    """Eager attention for the block (SDPA returns no probabilities); the previous one after."""
    if not on:
        yield
        return
    before = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(before)


def next_token_nll(logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean next-token negative log-likelihood per sample; logits (B, T, V), ids/mask (B, T)."""
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    nll = -logp.gather(2, ids[:, 1:, None]).squeeze(2)  # (B, T-1)
    m = mask[:, 1:].float()
    return ((nll * m).sum(1) / m.sum(1).clamp(min=1)).double()
