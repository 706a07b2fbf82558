"""A head-aware KV cache that frees memory: heads with one budget are stored together, densely.

A Plan gives every (layer, query head) a Budget (sink + window, full, or pruned). A KV head read
by several query heads (grouped-query attention) keeps what any of them needs, the union of their
budgets, and each of those query heads reads all of it: what the cache holds is read; a pruned
query head still writes nothing. The KV heads of a layer with equal budgets form one group, held
as one (batch, heads, entries, head_dim) tensor, so nothing is zero-padded and no dropped key can
be attended.

Two things besides the budgets decide what a KV head holds:
- ``reach``, per layer: the model's own attention window (Gemma 3's and Mistral's sliding layers).
  A key no later query of the layer can see is dropped, whatever the budget says, as the model's
  own cache drops it.
- ``schedule``, per position: the window of every windowed head at that query position, for a
  uniform plan that holds as many entries as another at every step (``Plan.matched``). What a
  query reads may only move forward (position minus window never decreases), so no evicted key is
  ever needed again.

The attention function registered here masks each query by absolute position to what its KV
head's budget lets it read there, so a sequence fed in chunks (or at once) gives what
token-by-token decoding with the cache would. GroupedCache is a transformers Cache: it serves
model(...) and generate() alike. The KV bytes reported are the nbytes of the tensors it holds.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from transformers.cache_utils import Cache, CacheLayerMixin

from massact.arch import Adapter
from massact.errors import MassactError
from massact.metrics.headtypes import FULL, Budget

ATTENTION = "massact_grouped"


class KVPlanError(MassactError):
    """A KV budget that cannot be applied as given; the message names the value."""


def _bounds(budget: Budget, t, window, reach: int | None):
    """(lower, sink_end, tail): the query at position t reads the earlier keys [lower, sink_end) and
    [max(tail, lower), t). Ints, or numpy arrays of positions and windows; ``window`` None: every key."""
    lower = np.maximum(0, t - reach + 1) if reach else np.zeros_like(t)
    if window is None:
        return lower, t, t
    sink_end = np.minimum(budget.sink, t)
    return lower, sink_end, np.maximum(t - window, sink_end)


def held(budget: Budget, t, *, window, reach: int | None):
    """How many earlier keys a query at position t reads (what a KV head holds after t tokens) under
    ``budget`` with ``window`` there (Plan.window), in a layer whose queries see ``reach`` keys."""
    if budget.prune:
        return np.zeros_like(t)
    lower, sink_end, tail = _bounds(budget, t, window, reach)
    return np.maximum(0, sink_end - lower) + t - np.maximum(tail, lower)


def readable(budget: Budget, t: int, *, window: int | None, reach: int | None) -> list[tuple[int, int]]:
    """The earlier keys a query at position t reads, as runs [a, z), oldest first (adjacent ones joined)."""
    if budget.prune:
        return []
    lower, sink_end, tail = (int(x) for x in _bounds(budget, t, window, reach))
    return _joined([(a, z) for a, z in ((lower, sink_end), (max(tail, lower), t)) if a < z])


def _joined(runs: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, z in runs:
        if out and out[-1][1] == a:
            out[-1] = (out[-1][0], z)
        else:
            out.append((a, z))
    return out


@dataclass(frozen=True)
class Plan:
    """Budgets per layer and query head, how many KV heads a layer has, and what else bounds them:
    ``reach`` per layer (the model's own attention window; empty: every layer sees every key) and a
    window ``schedule`` per query position (the last entry beyond; empty: each budget's own window)."""

    name: str
    budgets: tuple[tuple[Budget, ...], ...]  # [layer][query head]
    kv_heads: int
    reach: tuple[int | None, ...] = ()  # [layer] keys a query sees, itself included; None: all
    schedule: tuple[int, ...] = ()  # [position] the window of every windowed head at that query position

    def __post_init__(self):
        for l, row in enumerate(self.budgets):
            if len(row) % self.kv_heads:
                raise KVPlanError(f"plan {self.name}: layer {l} has {len(row)} query heads, not a multiple of "
                                  f"{self.kv_heads} KV heads")
            for h, b in enumerate(row):
                if b.window is not None and b.window < 1 and not b.prune:
                    raise KVPlanError(f"plan {self.name}: head ({l}, {h}) has window {b.window}; a window keeps at "
                                      "least the current token: use 1 or more, or prune the head")
                if b.sink < 0:
                    raise KVPlanError(f"plan {self.name}: head ({l}, {h}) has sink {b.sink}; use 0 or more")
        if self.reach and len(self.reach) != len(self.budgets):
            raise KVPlanError(f"plan {self.name}: reach names {len(self.reach)} layers, the budgets {len(self.budgets)}")
        for t, w in enumerate(self.schedule):
            if w < 1:
                raise KVPlanError(f"plan {self.name}: the window at position {t} is {w}; use 1 or more")
            if t and w > self.schedule[t - 1] + 1:
                raise KVPlanError(f"plan {self.name}: the window grows from {self.schedule[t - 1]} at position "
                                  f"{t - 1} to {w} at {t}: the query at {t} would read a key evicted before it; a "
                                  "window may grow by at most one per position")

    @classmethod
    def uniform(cls, name: str, budget: Budget, *, layers: int, heads: int, kv_heads: int,
                reach: tuple[int | None, ...] = ()) -> Plan:
        return cls(name, tuple((budget,) * heads for _ in range(layers)), kv_heads, reach)

    @classmethod
    def matched(cls, name: str, other: Plan, *, sink: int, length: int) -> Plan:
        """Sink + one window for every head, the window growing with the position so that the plan
        holds as many KV entries as ``other`` after every number of tokens up to ``length``: at each
        position the largest window that holds no more (floor(other's entries / (layers x KV heads))
        - sink where no layer slides). Where even a window of 1 holds more (a plan that prunes whole
        KV heads, over its first tokens) the window is 1. The heads per layer are ``other``'s."""
        L, K = len(other.budgets), other.kv_heads
        t = np.arange(length + 1)
        target = other.entries(t)
        unit = Budget(sink, 1)  # the window comes from the search

        def entries(w: np.ndarray) -> np.ndarray:
            return K * sum(held(unit, t, window=w, reach=other.layer_reach(l)) for l in range(L))

        lo, hi = np.ones_like(t), np.maximum(t, 1)
        while (lo < hi).any():  # bisection at every position at once: entries grow with the window
            mid = (lo + hi + 1) // 2
            ok = entries(mid) <= target
            lo, hi = np.where(ok, mid, lo), np.where(ok, hi, mid - 1)
        heads = len(other.budgets[0])
        return cls(name, tuple((Budget(sink, int(lo[-1])),) * heads for _ in range(L)), K, other.reach,
                   tuple(int(w) for w in lo))

    @property
    def rep(self) -> int:
        """Query heads per KV head."""
        return len(self.budgets[0]) // self.kv_heads

    def layer_reach(self, layer: int) -> int | None:
        return self.reach[layer] if self.reach else None

    def window(self, budget: Budget, t):
        """``budget``'s window at query position t (an int or an array of positions): None for a full
        or pruned budget, the schedule's where the plan has one."""
        if budget.window is None:
            return None
        if self.schedule:
            return np.asarray(self.schedule)[np.minimum(t, len(self.schedule) - 1)]
        return budget.window

    def kv_budgets(self, layer: int) -> list[Budget]:
        """Per KV head: the union of its query heads' budgets (an entry goes only when all allow it)."""
        row, r = self.budgets[layer], self.rep
        out = []
        for k in range(self.kv_heads):
            b = Budget(prune=True)
            for h in range(k * r, (k + 1) * r):
                b = b | row[h]
            out.append(b)
        return out

    def groups(self, layer: int) -> list[tuple[Budget, list[int]]]:
        """(budget, KV heads) per group of one layer; pruned KV heads hold nothing and form no group."""
        by: dict[Budget, list[int]] = {}
        for k, b in enumerate(self.kv_budgets(layer)):
            if not b.prune:
                by.setdefault(b, []).append(k)
        return list(by.items())

    def entries(self, seen):
        """KV entries (per KV head and position) the plan holds after ``seen`` tokens; an array of
        counts for an array of ``seen``."""
        t = np.asarray(seen)
        total = sum(held(b, t, window=self.window(b, t), reach=self.layer_reach(l))
                    for l in range(len(self.budgets)) for b in self.kv_budgets(l))
        return int(total) if t.ndim == 0 else np.asarray(total)

    def reads(self, lo: int, hi: int, at: int) -> bool:
        """Whether some query head reads a key in [lo, hi) from position ``at`` on: its KV head still
        holds one when the query at ``at`` comes (what a query reads only moves forward)."""
        return any(a < hi and lo < z for l in range(len(self.budgets)) for b, _ in self.groups(l)
                   for a, z in readable(b, at, window=self.window(b, at), reach=self.layer_reach(l)))

    def describe(self) -> dict:
        """The plan per query head and per KV head, by budget label."""
        out = {"query_heads": [[b.label() for b in row] for row in self.budgets],
               "kv_heads": [[b.label() for b in self.kv_budgets(l)] for l in range(len(self.budgets))]}
        if self.schedule:
            out["window"] = f"grows with the position, {self.schedule[0]} to {self.schedule[-1]}"
        return out


@dataclass
class _Group:
    budget: Budget
    kv: list[int]  # KV head indices
    keys: torch.Tensor | None = None  # (B, len(kv), n, D)
    values: torch.Tensor | None = None
    pos: torch.Tensor | None = None  # (n,) absolute positions of the entries
    runs: list[tuple[int, int]] = field(default_factory=list)  # the same positions as runs [a, z), on the host
    _live: dict = field(default_factory=dict)  # device -> which of the group's query heads write, (n_q, 1, 1)

    def evict(self, seen: int, *, window: int | None, reach: int | None) -> None:
        """Keep what the next query (at position ``seen``) may read; counted on the host from the runs
        held, not searched on the device (no sync)."""
        if self.keys is None:
            return
        keep = readable(self.budget, seen, window=window, reach=reach)
        if keep == self.runs:
            return
        parts, start = [], 0
        for a, z in self.runs:  # each kept run lies in one held run: what a query reads only moves forward
            parts += [(start + max(a, ka) - a, start + min(z, kz) - a) for ka, kz in keep if ka < z and a < kz]
            start += z - a
        assert len(parts) == len(keep), (self.runs, keep)
        cut = lambda t, d: torch.cat([t.narrow(d, i, j - i) for i, j in parts], dim=d)  # noqa: E731
        self.keys, self.values, self.pos = cut(self.keys, 2), cut(self.values, 2), cut(self.pos, 0)
        self.runs = keep

    def live(self, budgets: tuple[Budget, ...], rep: int, device) -> torch.Tensor:
        """Whether each of the group's query heads writes (a pruned one writes nothing), made once per device."""
        if device not in self._live:
            heads = [h for k in self.kv for h in range(k * rep, (k + 1) * rep)]
            self._live[device] = torch.tensor([not budgets[h].prune for h in heads], device=device)[:, None, None]
        return self._live[device]

    def append(self, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor, first: int) -> None:
        k, v = k[:, self.kv], v[:, self.kv]
        if self.keys is None:
            self.keys, self.values, self.pos = k, v, pos
        else:
            self.keys = torch.cat([self.keys, k], dim=2)
            self.values = torch.cat([self.values, v], dim=2)
            self.pos = torch.cat([self.pos, pos])
        self.runs = _joined(self.runs + [(first, first + len(pos))])


@dataclass(frozen=True)
class GroupedKV:
    """What one layer's cache hands the attention function: its groups after the newest tokens."""

    groups: list[_Group]
    budgets: tuple[Budget, ...]  # per query head
    rep: int
    query_pos: torch.Tensor  # (q,) absolute positions of the queries
    windows: torch.Tensor | None = None  # (q,) every windowed head's window at each query (a scheduled plan)


class GroupedLayer(CacheLayerMixin):
    """One layer of a GroupedCache."""

    is_sliding = False
    supports_early_init = False

    def __init__(self, plan: Plan, layer: int):
        super().__init__()
        self.plan, self.reach = plan, plan.layer_reach(layer)
        self.groups = [_Group(b, kv) for b, kv in plan.groups(layer)]
        self.budgets, self.rep = plan.budgets[layer], plan.rep
        self.seen = 0
        self._schedule: dict = {}  # device -> the plan's schedule as a tensor
        self.is_initialized = True  # the groups hold the tensors; transformers' keys/values stay None

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        pass

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        q, device = key_states.shape[2], key_states.device
        pos = torch.arange(self.seen, self.seen + q, device=device)
        self.compact()
        for g in self.groups:
            g.append(key_states, value_states, pos, self.seen)
        windows = None
        if self.plan.schedule:
            if device not in self._schedule:
                self._schedule[device] = torch.tensor(self.plan.schedule, device=device)
            sched = self._schedule[device]
            windows = sched[pos.clamp(max=len(sched) - 1)]
        self.seen += q
        kv = GroupedKV(self.groups, self.budgets, self.rep, pos, windows)
        return kv, kv

    def compact(self) -> None:
        for g in self.groups:
            g.evict(self.seen, window=self.plan.window(g.budget, self.seen), reach=self.reach)

    def nbytes(self) -> int:
        return sum(t.nbytes for g in self.groups for t in (g.keys, g.values) if t is not None)

    def get_seq_length(self) -> int:
        return self.seen

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.seen + query_length, 0

    def get_max_length(self) -> int:
        return -1

    def reset(self) -> None:
        for g in self.groups:
            g.keys = g.values = g.pos = None
            g.runs = []
        self.seen = 0


class GroupedCache(Cache):
    """A transformers Cache holding a Plan: pass it as ``past_key_values``."""

    def __init__(self, plan: Plan):
        super().__init__(layers=[GroupedLayer(plan, l) for l in range(len(plan.budgets))])
        self.plan = plan

    def compact(self) -> None:
        """Drop what no later query may read (the newest tokens are kept until the next step)."""
        for layer in self.layers:
            layer.compact()

    def nbytes(self) -> int:
        """Bytes of the key and value tensors held (the entries' positions, 8 bytes each, not counted)."""
        return sum(layer.nbytes() for layer in self.layers)


def grouped_attention(module: nn.Module, query: torch.Tensor, key: GroupedKV, value: GroupedKV,
                      attention_mask, *, scaling: float, dropout: float = 0.0, sliding_window: int | None = None,
                      softcap: float | None = None, **kwargs):
    """Attention over a GroupedKV: query (B, H, q, D) -> (B, q, H, D). Every query head reads what its
    KV head holds (its budget at the query's position); a pruned query head writes nothing."""
    B, H, q, D = query.shape
    qp = key.query_pos[:, None]  # (q, 1) absolute positions
    out = query.new_zeros(B, q, H, D)
    for g in key.groups:
        heads = [h for k in g.kv for h in range(k * key.rep, (k + 1) * key.rep)]
        kp = g.pos[None, :]  # (1, n)
        visible = kp <= qp  # (q, n), the same for every query head of the group
        if g.budget.window is not None:
            window = g.budget.window if key.windows is None else key.windows[:, None]
            visible = visible & ((kp < g.budget.sink) | (kp >= qp - window))
        if sliding_window is not None:
            visible = visible & (qp - kp < sliding_window)
        if softcap is None:  # each query head reads its KV head (grouped-query attention, no copy)
            o = torch.nn.functional.scaled_dot_product_attention(query[:, heads], g.keys, g.values,
                                                                 attn_mask=visible[None, None], scale=scaling,
                                                                 enable_gqa=key.rep > 1)
        else:  # logits capped before the softmax (Gemma 2): by hand
            k_, v_ = g.keys.repeat_interleave(key.rep, dim=1), g.values.repeat_interleave(key.rep, dim=1)
            scores = torch.tanh(torch.matmul(query[:, heads], k_.transpose(2, 3)) * scaling / softcap) * softcap
            scores = scores.masked_fill(~visible[None, None], torch.finfo(scores.dtype).min)
            o = torch.matmul(torch.softmax(scores.float(), dim=-1).to(query.dtype), v_)
        out[:, :, heads] = (o * g.live(key.budgets, key.rep, query.device)[None]).transpose(1, 2)
    return out, None


def model_reach(adapter: Adapter, config, layers: int) -> tuple[int | None, ...]:
    """Per layer, the keys a query of the model sees (its sliding window), or None for all of them."""
    return tuple(adapter.attention_window(config, l) for l in range(layers))


@dataclass(frozen=True)
class KVPolicy:
    """An intervention: attention reads a GroupedCache holding ``plan``; the decode runner makes the cache."""

    plan: Plan
    first_layer = 0  # every layer's attention reads the policy's cache

    @property
    def key(self) -> str:
        return f"kv[{self.plan.name}]"

    def cache(self) -> GroupedCache:
        return GroupedCache(self.plan)

    @contextmanager
    def applied(self, model: nn.Module, adapter: Adapter) -> Iterator[None]:
        from transformers import AttentionInterface

        if not adapter.is_decoder:
            raise KVPlanError(f"a KV cache policy needs a decoder; {adapter.name} attends in both directions")
        layers, heads = len(adapter.block_list(model)), adapter.n_heads(model.config)
        if len(self.plan.budgets) != layers or any(len(row) != heads for row in self.plan.budgets):
            raise KVPlanError(f"plan {self.plan.name} is for {len(self.plan.budgets)} layers x "
                              f"{len(self.plan.budgets[0])} heads; the model has {layers} x {heads}")
        if self.plan.kv_heads != adapter.n_kv_heads(model.config):
            raise KVPlanError(f"plan {self.plan.name} has {self.plan.kv_heads} KV heads per layer; the model has "
                              f"{adapter.n_kv_heads(model.config)}")
        reach = model_reach(adapter, model.config, layers)
        if self.plan.reach and self.plan.reach != reach:
            raise KVPlanError(f"plan {self.plan.name} drops the keys out of reach of attention windows "
                              f"{list(self.plan.reach)} per layer; the model's are {list(reach)} (None: every key): "
                              "build the plan with reach=model_reach(adapter, config, layers)")
        AttentionInterface.register(ATTENTION, grouped_attention)
        before = model.config._attn_implementation
        model.set_attn_implementation(ATTENTION)
        try:
            yield
        finally:
            model.set_attn_implementation(before)


def full_plan(*, layers: int, heads: int, kv_heads: int, reach: tuple[int | None, ...] = ()) -> Plan:
    """Every entry kept; with ``reach``, as the model's own cache keeps them (none its sliding layers
    can no longer see)."""
    return Plan.uniform("full", FULL, layers=layers, heads=heads, kv_heads=kv_heads, reach=reach)
