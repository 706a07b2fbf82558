"""Interventions as records with an ``applied()`` context manager built on ``capture.hooked``.

Every intervention keeps the residual stream and the layer norms: it only replaces what one
component writes. An intervention is a frozen record, so it can key the pass cache.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from massact.arch import Adapter
from massact.capture import first_tensor, hooked, replace_first


@dataclass(frozen=True)
class Intervention:
    """kind: none | zero_attention | zero_mlp | prune_heads | set_activations.

    prune_heads: ``heads`` = ((layer, head), ...); ``method`` "correct" zeroes the head's slice of
    the output projection's input; "documented" zeroes a head-sized slice of the attention block's
    *output* (what the documents' code did; not a head ablation).
    set_activations: ``entries`` = ((layer, token, feature, value), ...): the block output of
    ``layer`` at (token, feature) is overwritten with ``value`` in every sample.
    """

    kind: str
    heads: tuple[tuple[int, int], ...] = ()
    method: str = "correct"
    entries: tuple[tuple[int, int, int, float], ...] = ()

    @property
    def key(self) -> str:
        if self.kind in ("none", "zero_attention", "zero_mlp"):
            return self.kind
        if self.kind == "prune_heads":
            return f"prune_heads[{self.method}]" + "".join(f"({l},{h})" for l, h in self.heads)
        return "set_activations" + "".join(f"({l},{t},{f}={v:.6g})" for l, t, f, v in self.entries)

    @contextmanager
    def applied(self, model: nn.Module, adapter: Adapter) -> Iterator[None]:
        n_layers = len(adapter.block_list(model))
        if self.kind == "none":
            regs = []
        elif self.kind == "zero_attention":
            regs = [(adapter.block_module(model, l, adapter.attn_out), "out", _zero_output) for l in range(n_layers)]
        elif self.kind == "zero_mlp":
            regs = [(adapter.block_module(model, l, adapter.mlp_out), "out", _zero_output) for l in range(n_layers)]
        elif self.kind == "prune_heads":
            regs = self._prune_regs(model, adapter)
        elif self.kind == "set_activations":
            regs = self._set_regs(model, adapter)
        else:
            raise ValueError(f"unknown intervention kind {self.kind!r}")
        with hooked(regs):
            yield

    def _prune_regs(self, model, adapter):
        hd = adapter.head_dim(model.config)
        n_layers, n_heads = len(adapter.block_list(model)), adapter.n_heads(model.config)
        by_layer: dict[int, list[int]] = {}
        for l, h in self.heads:
            if not (0 <= l < n_layers and 0 <= h < n_heads):
                raise ValueError(f"prune_heads: head ({l}, {h}) does not exist; the model has "
                                 f"{n_layers} layers of {n_heads} query heads")
            by_layer.setdefault(l, []).append(h)
        regs = []
        for l, hs in sorted(by_layer.items()):
            if self.method == "correct":
                # the out projection's input is the concatenation of heads: (B, T, H * hd)
                regs.append((adapter.block_module(model, l, adapter.out_proj), "in", _zero_slices_in(hs, hd)))
            elif self.method == "documented":
                regs.append((adapter.block_module(model, l, adapter.attn_out), "out", _zero_slices_out(hs, hd)))
            else:
                raise ValueError(f"prune method must be 'correct' or 'documented', not {self.method!r}")
        return regs

    def _set_regs(self, model, adapter):
        n_layers, hidden = len(adapter.block_list(model)), model.config.hidden_size
        by_layer: dict[int, list[tuple[int, int, float]]] = {}
        for l, t, f, v in self.entries:
            if not (0 <= l < n_layers and 0 <= f < hidden and t >= 0):
                raise ValueError(f"set_activations: entry (layer {l}, token {t}, feature {f}) is outside the "
                                 f"model's {n_layers} layers x {hidden} features")
            by_layer.setdefault(l, []).append((t, f, v))
        return [(adapter.block_module(model, l, ""), "out", _set_entries(es)) for l, es in sorted(by_layer.items())]


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
