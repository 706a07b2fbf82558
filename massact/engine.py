"""Serves requests with as few passes as possible, cached for the session.

A request is served by any cached pass of the same kind (model, source, mode, intervention,
attention) whose statistics include the ones asked for. ``plan()`` announces the requests of
every claim about to run, so the first pass of each kind computes what all of them need.
Claims read prefixes of one sample order: a pass covers the longest prefix asked for so far,
and a later claim that needs more samples runs only the missing ones.
A teacher-forced pass under an intervention that first changes block l starts at block l from the
baseline's block l - 1 output, when a cached baseline pass kept it (statistic ``resume``): the blocks
before l compute the same under the intervention, bit for bit (tests/test_engine.py).

Progress goes to ``progress(line, level=...)``: ``"plan"`` once per model, at the first batch of its
first pass (the planned passes and roughly how long they take), ``"update"`` after every batch (the
caller decides how often to show one) and ``"pass"`` once per pass, when it is done.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

import torch

from massact.capture import all_points
from massact.reducers import produced
from massact.corpus import Corpus
from massact.errors import MassactError
from massact.models import LoadedModel
from massact.requests import KV_POINT, LOSS_POINT, Request, expand
from massact.runners import RUNNERS


@dataclass(frozen=True)
class PassResult:
    """Per-sample reductions of one pass. points: name -> {statistic: tensor with samples first}.

    ``idx`` selects samples lazily (a prefix, or a bootstrap resample): a statistic is indexed
    only when read, so a resample costs nothing for the hundreds of points a check never reads.
    """

    request: Request
    points: dict[str, dict[str, torch.Tensor]]
    all_input_ids: torch.Tensor  # (N_all, T)
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
    def loss(self) -> torch.Tensor | None:
        """(N,) mean next-token NLL per sample; None where the model has no language-model head."""
        got = self.points.get(LOSS_POINT, {}).get("loss")
        return None if got is None else self._pick(got)

    def stat(self, point: str, name: str) -> torch.Tensor:
        try:
            return self._pick(self.points[point][name])
        except KeyError:
            raise KeyError(f"the pass {self.request.describe()} has no statistic {name!r} at {point!r}: "
                           "the check must ask for it in its request") from None

    def select(self, idx: torch.Tensor | None) -> PassResult:
        """The same statistics for the samples ``idx`` of this result (None: all of them)."""
        if idx is None:
            return self
        return replace(self, idx=idx if self.idx is None else self.idx[idx])

    def extend(self, more: PassResult) -> PassResult:
        """This (unselected) pass followed by the samples of ``more``."""
        assert self.idx is None and more.idx is None
        return replace(self, points={p: {k: torch.cat([v, more.points[p][k]]) for k, v in s.items()}
                                     for p, s in self.points.items()},
                       all_input_ids=torch.cat([self.all_input_ids, more.all_input_ids]))


@dataclass
class _Cached:
    wants: dict[str, frozenset[str]]  # point -> statistics this pass computes
    result: PassResult

    def covers(self, wants: dict[str, frozenset[str]]) -> bool:
        return all(p in self.wants and s <= self.wants[p] for p, s in wants.items())


@dataclass(frozen=True)
class Outlook:
    """What the planned passes of one model add up to, said once its first batch gives a rate."""

    passes: int
    samples: int
    tokens: int
    flops: float


class Engine:
    """Runs and caches passes; ``progress`` receives lines while they run (see the module's note)."""

    def __init__(self, *, batch_size: int = 4, progress: Callable[..., None] | None = None):
        self.batch_size = batch_size
        self.progress = progress or (lambda line, *, level="update": None)
        self.passes: dict[tuple, list[_Cached]] = {}  # (model, same_pass) -> passes
        self.planned: dict[tuple, tuple[Request, int]] = {}  # (model, same_pass) -> merged request, samples
        self.inputs: dict[tuple[str, str], torch.Tensor] = {}  # (model, source key) -> every sample's ids
        self.log: list[dict] = []  # one record per pass run: what it ran and how long it took
        self.outlook: dict[str, Outlook] = {}  # model -> its planned passes, until its first batch has run

    @property
    def n_passes(self) -> int:
        return len(self.log)

    @property
    def samples_run(self) -> int:
        return sum(p["samples"] for p in self.log)

    @property
    def seconds(self) -> float:
        return sum(p["seconds"] for p in self.log)

    def plan(self, lm: LoadedModel, corpus: Corpus, requests: Iterable[tuple[Request, int]]) -> None:
        """Announce requests (with their sample counts) that claims will make: the first pass of
        each kind then computes the union of their statistics over the most samples asked."""
        names = self._point_names(lm)
        for req, n in requests:
            try:
                expand(req.stats, names)
            except ValueError:
                continue  # a point this model lacks: the check says so itself when it runs
            kind = (lm.spec, req.same_pass(corpus))
            have = self.planned.get(kind)
            self.planned[kind] = (have[0] | req, max(have[1], n)) if have else (req, n)
        self.outlook[lm.spec] = self._outlook(lm, corpus)

    def _outlook(self, lm: LoadedModel, corpus: Corpus) -> Outlook:
        passes = samples = tokens = flops = 0
        for (spec, _), (req, n) in self.planned.items():
            if spec != lm.spec:
                continue
            try:
                ids = self._all_ids(lm, corpus, req)
            except MassactError:
                continue  # a source this model cannot give: the check says so when it runs
            n = min(n, len(ids))
            passes, samples, tokens = passes + 1, samples + n, tokens + n * ids.shape[1]
            flops += pass_flops(lm, req, n, ids.shape[1])
        return Outlook(passes, samples, tokens, flops)

    def run(self, lm: LoadedModel, corpus: Corpus, request: Request, *, n: int) -> PassResult:
        """The first n samples of ``request``'s source, with at least the statistics it asks for."""
        kind = (lm.spec, request.same_pass(corpus))
        names = self._point_names(lm)
        wants = expand(request.stats, names)
        cached = next((c for c in self.passes.get(kind, []) if c.covers(wants)), None)
        if cached is None:
            planned, planned_n = self.planned.pop(kind, (None, 0))
            if planned is not None:  # a planned count past what the source gives is a hint, not a demand
                request, n_run = planned | request, max(n, min(planned_n, len(self._all_ids(lm, corpus, request))))
                wants = expand(request.stats, names)
            else:
                n_run = n
            cached = _Cached(wants, self._run(lm, corpus, request, wants, 0, n_run))
            self.passes.setdefault(kind, []).append(cached)
        elif cached.result.n < n:
            cached.result = cached.result.extend(self._run(lm, corpus, cached.result.request, cached.wants,
                                                           cached.result.n, n))
        r = cached.result
        return r if r.n == n else r.select(torch.arange(n))

    def _point_names(self, lm: LoadedModel) -> dict[str, str]:
        """Every point a request may name, with its kind: the capture points and the runners' own."""
        return {**{n: p.shape.kind for n, p in all_points(lm.adapter, lm.n_layers, lm.config).items()},
                LOSS_POINT: "runner", KV_POINT: "runner"}

    def _all_ids(self, lm: LoadedModel, corpus: Corpus, request: Request) -> torch.Tensor:
        key = (lm.spec, request.source.key(corpus))
        if key not in self.inputs:
            self.inputs[key] = request.source.tokens(lm, corpus)
        return self.inputs[key]

    def _ids(self, lm: LoadedModel, corpus: Corpus, request: Request, n: int) -> torch.Tensor:
        return request.source.take(self._all_ids(lm, corpus, request), n, corpus)

    def _prefix(self, lm: LoadedModel, corpus: Corpus, request: Request, wants: dict[str, frozenset[str]],
                start: int, n: int) -> tuple[int, torch.Tensor, dict[str, dict[str, torch.Tensor]]] | None:
        """Where a teacher-forced pass under an intervention can start from a cached baseline pass:
        (l, the baseline's block l - 1 output for samples [start, n), the statistics asked for before
        block l, which the intervention cannot change). None when no cached pass of the same input kept
        that output (checks that intervene announce ``block.*: resume``) or held those statistics."""
        layer = request.intervention.first_layer
        if request.mode != "forward" or layer <= 0:
            return None
        points = all_points(lm.adapter, lm.n_layers, lm.config)
        early = {p: s for p, s in wants.items() if p in points and points[p].layer < layer}
        kept = f"block.{layer - 1}"
        need = early | {kept: early.get(kept, frozenset()) | {"resume"}}
        base = Request(stats=frozenset((p, s) for p, ss in need.items() for s in ss), source=request.source,
                       mode=request.mode, options=request.options)
        if base.eager != request.eager or not any(c.covers(need) for c in self.passes.get(
                (lm.spec, base.same_pass(corpus)), [])):
            return None
        got = self.run(lm, corpus, base, n=n).select(torch.arange(start, n))  # extended when it holds fewer
        early_stats = {p: {s: got.stat(p, s) for s in produced(ss)} for p, ss in early.items()}
        return layer, got.stat(kept, "resume"), early_stats

    def _run(self, lm: LoadedModel, corpus: Corpus, request: Request, wants: dict[str, frozenset[str]],
             start: int, n: int) -> PassResult:
        """Samples [start, n) of ``request``; from a kept residual stream where ``_prefix`` finds one."""
        ids = self._ids(lm, corpus, request, n)[start:]
        prefix = self._prefix(lm, corpus, request, wants, start, n)
        label = f"{lm.name} / {request.describe()}"
        extra = {}
        if prefix is not None:
            layer, states, early = prefix
            wants = {p: s for p, s in wants.items() if p not in early}
            extra["resume"] = (layer, states)
            label += f" (resumed at block {layer})"
        t0 = time.perf_counter()
        noun = "prompt" if request.mode == "generate" else "sample"

        def tick(done: int) -> None:
            """After each batch: samples done, the rate, and the time this pass has left at that rate."""
            spent = time.perf_counter() - t0
            if lm.spec in self.outlook:
                self._announce(lm, pass_flops(lm, request, done, ids.shape[1]) / max(spent, 1e-9))
            if done < len(ids):  # the last batch's news is the pass line
                self.progress(f"{label}: {done}/{len(ids)} {noun}s, {done * ids.shape[1] / spent:.0f} tok/s, "
                              f"{duration(spent / done * (len(ids) - done))} left", level="update")

        points = RUNNERS[request.mode](lm, ids, wants, request.intervention, eager=request.eager,
                                       batch_size=self.batch_size, progress=tick, **extra, **dict(request.options))
        if prefix is not None:
            points |= prefix[2]
        seconds = time.perf_counter() - t0
        self.progress(f"pass {self.n_passes + 1}, {label}: {len(ids)} {noun}{'s' * (len(ids) > 1)} x {ids.shape[1]} "
                      f"tokens in {seconds:.1f} s ({ids.numel() / seconds:.0f} tok/s)", level="pass")
        self.log.append({"model": lm.spec, "pass": request.describe(), "mode": request.mode,
                         "intervention": request.intervention.key, "eager": request.eager,
                         "loss": "loss" in wants.get(LOSS_POINT, ()), "samples": len(ids), "tokens": ids.shape[1],
                         "batch_size": self.batch_size, "resumed_at": prefix[0] if prefix else None,
                         "options": dict(request.options), "seconds": round(seconds, 3)})
        return PassResult(request=request, points=points, all_input_ids=ids)

    def _announce(self, lm: LoadedModel, flops_per_second: float) -> None:
        """The model's planned passes and roughly how long they take, at the rate of its first batch."""
        o = self.outlook.pop(lm.spec)
        if o.passes:
            passes = f"{o.passes} pass{'es' * (o.passes > 1)}"
            self.progress(f"{lm.name}: {passes} planned ({o.samples:,} samples, {o.tokens:,} tokens), roughly "
                          f"{duration(o.flops / flops_per_second)}; passes that claims choose from the data (heads to "
                          "prune, entries to set, cache plans) come on top", level="plan")


def pass_flops(lm: LoadedModel, request: Request, samples: int, tokens: int) -> float:
    """A pass's cost in FLOPs: 2 per block weight per token, attention's 4 x width x sequence length per
    layer and token (the kernels compute the masked half of the scores too), and the output head where
    a pass reads it. A rough time, not a bound: eager attention and KV plans change what a FLOP costs."""
    blocks = sum(p.numel() for p in lm.adapter.block_list(lm.model).parameters())
    width = lm.adapter.n_heads(lm.config) * lm.adapter.head_dim(lm.config)
    flops = samples * tokens * (2 * blocks + 4 * width * tokens * lm.n_layers)
    head = lm.model.get_output_embeddings() if lm.adapter.is_decoder else None
    if head is not None and (request.mode != "forward" or (LOSS_POINT, "loss") in request.stats):
        positions = dict(request.options).get("new_tokens", 1) if request.mode == "generate" else tokens
        flops += samples * positions * 2 * head.weight.numel()
    return float(flops)


def duration(seconds: float) -> str:
    """Seconds as people say them: "40 s", "3 min", "1.5 h" (never under "1 s")."""
    if seconds < 90:
        return f"{max(seconds, 1):.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
