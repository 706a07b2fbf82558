"""A head-aware KV cache that frees memory: heads with one budget are stored together, densely.

A Plan gives every (layer, query head) a Budget (sink + window, full, or pruned). A KV head read
by several query heads (grouped-query attention) keeps what any of them needs; the KV heads of
a layer with equal budgets form one group, held as one (batch, heads, entries, head_dim) tensor,
so nothing is zero-padded and no dropped key can be attended. The attention function registered
here reads those groups and masks each query head to its own budget by absolute position, so a
sequence fed in chunks (or at once) gives what token-by-token decoding with the cache would.

GroupedCache is a transformers Cache: it serves model(...) and generate() alike. The KV bytes
reported are the nbytes of the tensors the cache holds.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers.cache_utils import Cache, CacheLayerMixin

from massact.arch import Adapter
from massact.errors import MassactError
from massact.metrics.headtypes import FULL, Budget

ATTENTION = "massact_grouped"


class KVPlanError(MassactError):
    """A KV budget that cannot be applied as given; the message names the value."""


@dataclass(frozen=True)
class Plan:
    """Budgets per layer and query head, and how many KV heads a layer has."""

    name: str
    budgets: tuple[tuple[Budget, ...], ...]  # [layer][query head]
    kv_heads: int

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

    @classmethod
    def uniform(cls, name: str, budget: Budget, *, layers: int, heads: int, kv_heads: int) -> Plan:
        return cls(name, tuple((budget,) * heads for _ in range(layers)), kv_heads)

    @property
    def rep(self) -> int:
        """Query heads per KV head."""
        return len(self.budgets[0]) // self.kv_heads

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

    def entries(self, seen: int) -> int:
        """KV entries (per KV head and position) the plan holds after ``seen`` tokens."""
        return sum(b.kept(seen) for l in range(len(self.budgets)) for b in self.kv_budgets(l))

    def describe(self) -> dict:
        """The plan per query head and per KV head, by budget label."""
        return {"query_heads": [[b.label() for b in row] for row in self.budgets],
                "kv_heads": [[b.label() for b in self.kv_budgets(l)] for l in range(len(self.budgets))]}


@dataclass
class _Group:
    budget: Budget
    kv: list[int]  # KV head indices
    keys: torch.Tensor | None = None  # (B, len(kv), n, D)
    values: torch.Tensor | None = None
    pos: torch.Tensor | None = None  # (n,) absolute positions of the entries
    _heads: dict = field(default_factory=dict)  # device -> the query heads' budgets as tensors

    def evict(self, seen: int) -> None:
        """Keep what the next query (at position ``seen``) may read: sinks and the last window.

        The entries held are always the first positions (up to ``sink``) and then a contiguous run
        ending at the newest, so what to keep is counted, not searched (no device sync).
        """
        b = self.budget
        if self.keys is None or b.full:
            return
        head, tail = min(b.sink, seen), max(0, min(b.window, seen - b.sink))
        n = self.keys.shape[2]
        if head + tail < n:
            keep = lambda t: torch.cat([t[..., :head, :], t[..., n - tail:, :]], dim=-2)  # noqa: E731
            self.keys, self.values = keep(self.keys), keep(self.values)
            self.pos = torch.cat([self.pos[:head], self.pos[n - tail:]])

    def head_tensors(self, budgets: list[Budget], device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(sink, window, live) of the group's query heads, (n_q, 1, 1) each, made once per device."""
        if device not in self._heads:
            col = lambda xs, dtype: torch.tensor(xs, dtype=dtype, device=device)[:, None, None]  # noqa: E731
            self._heads[device] = (col([b.sink for b in budgets], torch.long),
                                   col([b.window if b.window is not None else 1 << 40 for b in budgets], torch.long),
                                   col([not b.prune for b in budgets], torch.bool))
        return self._heads[device]

    def append(self, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor) -> None:
        k, v = k[:, self.kv], v[:, self.kv]
        if self.keys is None:
            self.keys, self.values, self.pos = k, v, pos
        else:
            self.keys = torch.cat([self.keys, k], dim=2)
            self.values = torch.cat([self.values, v], dim=2)
            self.pos = torch.cat([self.pos, pos])


@dataclass(frozen=True)
class GroupedKV:
    """What one layer's cache hands the attention function: its groups after the newest tokens."""

    groups: list[_Group]
    budgets: tuple[Budget, ...]  # per query head
    rep: int
    query_pos: torch.Tensor  # (q,) absolute positions of the queries


class GroupedLayer(CacheLayerMixin):
    """One layer of a GroupedCache."""

    is_sliding = False
    supports_early_init = False

    def __init__(self, plan: Plan, layer: int):
        super().__init__()
        self.groups = [_Group(b, kv) for b, kv in plan.groups(layer)]
        self.budgets, self.rep = plan.budgets[layer], plan.rep
        self.seen = 0
        self.is_initialized = True  # the groups hold the tensors; transformers' keys/values stay None

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        pass

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        q = key_states.shape[2]
        pos = torch.arange(self.seen, self.seen + q, device=key_states.device)
        for g in self.groups:
            g.evict(self.seen)
            g.append(key_states, value_states, pos)
        self.seen += q
        kv = GroupedKV(self.groups, self.budgets, self.rep, pos)
        return kv, kv

    def compact(self) -> None:
        for g in self.groups:
            g.evict(self.seen)

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
    """Attention over a GroupedKV: query (B, H, q, D) -> (B, q, H, D), each query head masked to its budget."""
    B, H, q, D = query.shape
    qp = key.query_pos[:, None]  # (q, 1) absolute positions
    out = query.new_zeros(B, q, H, D)
    for g in key.groups:
        heads = [h for k in g.kv for h in range(k * key.rep, (k + 1) * key.rep)]
        sink, window, live = g.head_tensors([key.budgets[h] for h in heads], query.device)
        kp = g.pos[None, :]  # (1, n)
        visible = (kp <= qp) & ((kp < sink) | (kp >= qp - window))  # (n_q, q, n)
        if sliding_window is not None:
            visible = visible & (qp - kp < sliding_window)
        if softcap is None:  # each query head reads its KV head (grouped-query attention, no copy)
            o = torch.nn.functional.scaled_dot_product_attention(query[:, heads], g.keys, g.values,
                                                                 attn_mask=visible[None], scale=scaling,
                                                                 enable_gqa=key.rep > 1)
        else:  # logits capped before the softmax (Gemma 2): by hand
            k_, v_ = g.keys.repeat_interleave(key.rep, dim=1), g.values.repeat_interleave(key.rep, dim=1)
            scores = torch.tanh(torch.matmul(query[:, heads], k_.transpose(2, 3)) * scaling / softcap) * softcap
            scores = scores.masked_fill(~visible[None], torch.finfo(scores.dtype).min)
            o = torch.matmul(torch.softmax(scores.float(), dim=-1).to(query.dtype), v_)
        out[:, :, heads] = (o * live[None]).transpose(1, 2)  # a pruned query head writes nothing
    return out, None


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
        AttentionInterface.register(ATTENTION, grouped_attention)
        before = model.config._attn_implementation
        model.set_attn_implementation(ATTENTION)
        try:
            yield
        finally:
            model.set_attn_implementation(before)


def full_plan(*, layers: int, heads: int, kv_heads: int) -> Plan:
    return Plan.uniform("full", FULL, layers=layers, heads=heads, kv_heads=kv_heads)
