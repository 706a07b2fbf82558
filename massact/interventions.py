"""Interventions: an open protocol, a ``key`` and an ``applied()`` context manager.

An intervention is a frozen record, so it can key the pass cache; a new kind is a new class,
never a branch here. The ones below replace what one component writes and keep the residual
stream and the layer norms; their hooks come from ``capture.hooked`` and never outlive the block.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from massact.arch import Adapter
from massact.capture import Registration, first_tensor, hooked, replace_first


class Intervention(Protocol):
    """What a pass changes in the model: ``key`` names it in caches and reports."""

    @property
    def key(self) -> str: ...

    @property
    def first_layer(self) -> int:
        """The first block whose computation the intervention changes: every block before it computes
        what the model as it is computes, so a teacher-forced pass may resume at this block from the
        baseline's residual stream (0: from the start)."""

    def applied(self, model: nn.Module, adapter: Adapter) -> AbstractContextManager[None]: ...


class HookIntervention:
    """An intervention made of forward (pre-)hooks: subclasses give ``registrations``."""

    first_layer = 0

    def registrations(self, model: nn.Module, adapter: Adapter) -> list[Registration]:
        raise NotImplementedError

    @contextmanager
    def applied(self, model: nn.Module, adapter: Adapter) -> Iterator[None]:
        with hooked(self.registrations(model, adapter)):  # registrations validate before any hook is added
            yield


@dataclass(frozen=True)
class Baseline(HookIntervention):
    """The model as it is."""

    key = "none"

    def registrations(self, model, adapter):
        return []


@dataclass(frozen=True)
class ZeroAttention(HookIntervention):
    """Every attention block writes zeros to the residual stream."""

    key = "zero_attention"

    def registrations(self, model, adapter):
        return [(adapter.block_module(model, l, adapter.attn_out), "out", _zero_output)
                for l in range(len(adapter.block_list(model)))]


@dataclass(frozen=True)
class ZeroMLP(HookIntervention):
    """Every MLP writes zeros to the residual stream."""

    key = "zero_mlp"

    def registrations(self, model, adapter):
        return [(adapter.block_module(model, l, adapter.mlp_out), "out", _zero_output)
                for l in range(len(adapter.block_list(model)))]


PRUNE_METHODS = ("correct", "documented")


@dataclass(frozen=True)
class PruneHeads(HookIntervention):
    """Zero query heads ``((layer, head), ...)``.

    method "correct" zeroes the head's slice of the output projection's input; "documented"
    zeroes a head-sized slice of the attention block's *output* (what the documents' code did;
    not a head ablation).
    """

    heads: tuple[tuple[int, int], ...]
    method: str = "correct"

    @property
    def first_layer(self) -> int:
        return min((l for l, _ in self.heads), default=0)

    @property
    def key(self) -> str:
        return f"prune_heads[{self.method}]" + "".join(f"({l},{h})" for l, h in self.heads)

    def registrations(self, model, adapter):
        if self.method not in PRUNE_METHODS:
            raise ValueError(f"prune method must be one of {PRUNE_METHODS}, not {self.method!r}")
        hd = adapter.head_dim(model.config)
        n_layers, n_heads = len(adapter.block_list(model)), adapter.n_heads(model.config)
        by_layer: dict[int, list[int]] = {}
        for l, h in self.heads:
            if not (0 <= l < n_layers and 0 <= h < n_heads):
                raise ValueError(f"prune_heads: head ({l}, {h}) does not exist; the model has "
                                 f"{n_layers} layers of {n_heads} query heads")
            by_layer.setdefault(l, []).append(h)
        if self.method == "correct":
            # the out projection's input is the concatenation of heads: (B, T, H * hd)
            return [(adapter.block_module(model, l, adapter.out_proj), "in", _zero_slices_in(hs, hd))
                    for l, hs in sorted(by_layer.items())]
        return [(adapter.block_module(model, l, adapter.attn_out), "out", _zero_slices_out(hs, hd))
                for l, hs in sorted(by_layer.items())]


@dataclass(frozen=True)
class SetActivations(HookIntervention):
    """``entries`` = ((layer, token, feature, value), ...): block ``layer``'s output at
    (token, feature) is overwritten with ``value`` in every sample."""

    entries: tuple[tuple[int, int, int, float], ...]

    @property
    def first_layer(self) -> int:
        return min((l for l, *_ in self.entries), default=0)

    @property
    def key(self) -> str:
        return "set_activations" + "".join(f"({l},{t},{f}={v:.6g})" for l, t, f, v in self.entries)

    def registrations(self, model, adapter):
        n_layers, hidden = len(adapter.block_list(model)), model.config.hidden_size
        by_layer: dict[int, list[tuple[int, int, float]]] = {}
        for l, t, f, v in self.entries:
            if not (0 <= l < n_layers and 0 <= f < hidden and t >= 0):
                raise ValueError(f"set_activations: entry (layer {l}, token {t}, feature {f}) is outside the "
                                 f"model's {n_layers} layers x {hidden} features")
            by_layer.setdefault(l, []).append((t, f, v))
        return [(adapter.block_module(model, l, ""), "out", _set_entries(es)) for l, es in sorted(by_layer.items())]


NONE = Baseline()
# the whole-component ablations a claim record can name in its params
BY_NAME: dict[str, Intervention] = {"zero_attention": ZeroAttention(), "zero_mlp": ZeroMLP()}


def _zero_output(module, args, output):
    return replace_first(output, torch.zeros_like(first_tensor(output)))


def _zero_slices_in(heads: list[int], hd: int):
    def fn(module, args):
        x = args[0].clone()
        for h in heads:
            x[..., h * hd:(h + 1) * hd] = 0
        return (x, *args[1:])
    return fn


def _zero_slices_out(heads: list[int], hd: int):
    def fn(module, args, output):
        x = first_tensor(output).clone()
        for h in heads:
            x[..., h * hd:(h + 1) * hd] = 0
        return replace_first(output, x)
    return fn


def _set_entries(entries: list[tuple[int, int, float]]):
    def fn(module, args, output):
        x = first_tensor(output).clone()
        for t, f, v in entries:
            x[:, t, f] = v  # a token past the sequence raises IndexError: no silent no-op
        return replace_first(output, x)
    return fn
