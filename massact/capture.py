"""Hooks, capture points, and the capture that hands each point's tensors to its reducers.

The only places hooks are registered are ``hooked()``, which removes every handle in ``finally``,
and ``attention_calls()``, which taps transformers' attention function and puts it back in
``finally``: both are global state on the model and must never outlive a pass. A capture hands
each point's tensor with its attention mask (B, T) to reducers (massact.reducers), which keep
per-sample statistics, never the full tensor unless asked.

Points (``python -m massact points MODEL`` lists them with their shapes):
    block.{l}           block l's output, before any final norm          (B, T, D)
    mlp.{l}.{role}      MLP checkpoints (Adapter.mlp_checkpoints)         (B, T, width)
    attn.{l}            attention probabilities; eager attention only     (B, H, T, T)
    attn.{l}.q          queries as the attention function gets them      (B, H, T, head_dim)
    attn.{l}.k, .v      keys (after the rotary embedding, where the model
                        applies one) and values, one per KV head          (B, KV, T, head_dim)
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from massact.arch import Adapter
from massact.errors import ActivationOverflow, AttentionUnavailable
from massact.reducers import ACTIVATION, HEADS, PROBS, Reducer, Shape, masked_abs

# (module, "in" | "out", fn). "out" fns get (module, args, output) and may return a new output;
# "in" fns get (module, args) and may return new args.
Registration = tuple[nn.Module, str, Callable]


@contextmanager
def hooked(registrations: Sequence[Registration]) -> Iterator[None]:
    """Register forward (pre-)hooks for the duration of the block; always remove them."""
    handles = []
    try:
        for module, where, fn in registrations:
            if where == "out":
                handles.append(module.register_forward_hook(fn))
            elif where == "in":
                handles.append(module.register_forward_pre_hook(fn))
            else:
                raise ValueError(f"hook position must be 'in' or 'out', not {where!r}")
        yield
    finally:
        for h in handles:
            h.remove()


def first_tensor(x) -> torch.Tensor:
    """A module's main tensor: blocks and attention modules may return tuples."""
    return x[0] if isinstance(x, (tuple, list)) else x


def replace_first(x, new: torch.Tensor):
    """``x`` with its main tensor replaced, keeping the tuple shape a module returned."""
    if isinstance(x, tuple):
        return (new, *x[1:])
    if isinstance(x, list):
        return [new, *x[1:]]
    return new


# ---------------------------------------------------------------- points

QKV = ("q", "k", "v")  # the order the attention function takes them in


@dataclass(frozen=True)
class Point:
    """A named capture point: ``block.{l}``, ``mlp.{l}.{role}``, ``attn.{l}`` or ``attn.{l}.q/k/v``."""

    name: str
    layer: int
    path: str  # module path within the block; "" is the block itself
    where: str  # "in" | "out" (a hook), or "call": the module's call of transformers' attention function
    item: int = 0  # which element of a tuple the module takes or returns (of (q, k, v) for "call")
    shape: Shape = Shape()  # what its reducers get


def block_points(adapter: Adapter, n_layers: int) -> list[Point]:
    return [Point(f"block.{l}", l, "", "out") for l in range(n_layers)]


def mlp_points(adapter: Adapter, n_layers: int) -> list[Point]:
    return [
        Point(f"mlp.{l}.{role}", l, path, where)
        for l in range(n_layers)
        for role, path, where in adapter.mlp_checkpoints
    ]


def attention_points(adapter: Adapter, n_layers: int, config=None) -> list[Point]:
    """Attention probabilities, (B, H, T, T): present only in eager attention."""
    heads = adapter.n_heads(config) if config is not None else None
    return [Point(f"attn.{l}", l, adapter.attn_probs, "out", item=1, shape=Shape(PROBS, heads))
            for l in range(n_layers)]


def qkv_points(adapter: Adapter, n_layers: int, config) -> list[Point]:
    """Per-head queries (B, H, T, head_dim), keys and values (B, KV, T, head_dim), as the attention module
    hands them to transformers' attention function: after any norm and rotary embedding, keys and values
    before they are repeated for grouped queries (Adapter.kv_heads_of maps a query head to its KV head)."""
    hd, heads = adapter.head_dim(config), {"q": adapter.n_heads(config), "k": adapter.n_kv_heads(config)}
    heads["v"] = heads["k"]
    return [Point(f"attn.{l}.{x}", l, adapter.attn_probs, "call", item=i, shape=Shape(HEADS, heads[x], hd))
            for l in range(n_layers) for i, x in enumerate(QKV)]


def all_points(adapter: Adapter, n_layers: int, config) -> dict[str, Point]:
    """Every capture point of a model by name: block outputs, MLP checkpoints, attention, q/k/v."""
    pts = (block_points(adapter, n_layers) + mlp_points(adapter, n_layers)
           + attention_points(adapter, n_layers, config) + qkv_points(adapter, n_layers, config))
    return {p.name: p for p in pts}


@contextmanager
def attention_calls(taps: dict[nn.Module, Callable[..., None]]) -> Iterator[None]:
    """While inside, an attention module in ``taps`` hands its (query, key, value) to its tap before
    transformers' attention function (whichever the model uses: eager, SDPA, ...) gets them.

    Every supported model looks its attention function up with ``ALL_ATTENTION_FUNCTIONS.get_interface``
    at each call; the lookup is wrapped for the block and put back in ``finally``.
    """
    if not taps:
        yield
        return
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS as registry

    before = vars(registry).get("get_interface")  # an enclosing capture's wrapper, if any
    lookup = registry.get_interface

    def get_interface(name, default):
        fn = lookup(name, default)

        def tapped(module, query, key, value, *args, **kwargs):
            if module in taps:
                taps[module](query, key, value)
            return fn(module, query, key, value, *args, **kwargs)
        return tapped

    registry.get_interface = get_interface
    try:
        yield
    finally:
        if before is None:
            del registry.get_interface
        else:
            registry.get_interface = before


def _overflow(name: str, dtype: torch.dtype) -> ActivationOverflow:
    hint = ("massive activations can pass float16's 65504: run with --dtype float32 or --dtype bfloat16"
            if dtype == torch.float16 else
            "that is beyond this dtype's range, not a massive activation: check the model's weights")
    return ActivationOverflow(f"activations at {name} reached inf/nan in {dtype}; {hint}")


@contextmanager
def capture(
    model: nn.Module,
    adapter: Adapter,
    points: Sequence[Point],
    *,
    mask_ref: dict[str, torch.Tensor | None],
    make_reducers: Callable[[Point], list[Reducer]],
) -> Iterator[dict[str, list[Reducer]]]:
    """Hook ``points``; yields name -> reducers. ``mask_ref["mask"]`` is the current batch's mask (B, T),
    or None when every token of the batch counts (no padding).

    The caller sets ``mask_ref["mask"]`` before each forward pass, so the hooks can honour
    padding without holding on to the batch. Nothing in the hooks waits for the device: the reducers
    keep their results where the model runs, a mask is read once per batch (none at all when it is
    None), and whether every activation was finite is checked once, when the pass ends (an
    ActivationOverflow naming the first point, in the order of ``points``, that reached inf or nan).
    """
    reducers = {p.name: make_reducers(p) for p in points}
    finite: dict[str, tuple[torch.Tensor, torch.dtype]] = {}  # point -> (all finite so far, on the device; dtype)
    seen: list[torch.Tensor | None] = [None, None]  # the last mask handed over, and what the reducers get for it

    def batch_mask() -> torch.Tensor | None:
        """The batch's mask for the reducers: None where it masks nothing (one read per batch, not per point)."""
        mask = mask_ref["mask"]
        if mask is not None and mask is not seen[0]:
            seen[:] = [mask, None if bool(mask.all()) else mask]
        return None if mask is None else seen[1]

    def feed(p: Point, t: torch.Tensor | None) -> None:
        if t is None:
            raise AttentionUnavailable(
                f"{p.name}: the attention module returned no probabilities; massact runs these passes with "
                "eager attention, and this model's attention gives none there: its head statistics cannot be read")
        mask = batch_mask()
        if p.shape.kind == PROBS:  # attention probabilities (B, H, T, T): non-negative, masked by their reducers
            for r in reducers[p.name]:
                r.update(t, mask, t.detach().float())
            return
        absa = masked_abs(t, mask)
        token_max = None
        if p.shape.kind == ACTIVATION:
            token_max = absa.amax(dim=2)  # (B, T): shared by the reducers, and inf or nan where any entry is
        ok = torch.isfinite(absa if token_max is None else token_max).all()
        if p.name in finite:
            ok = ok & finite[p.name][0]
        finite[p.name] = (ok, t.dtype)
        for r in reducers[p.name]:
            r.update(t, mask, absa, token_max)

    def hook(p: Point):
        def pick(x):
            return x[p.item] if isinstance(x, (tuple, list)) else x

        if p.where == "out":
            return lambda module, args, output: feed(p, pick(output))
        return lambda module, args: feed(p, pick(args))

    regs: list[Registration] = []
    fed: dict[nn.Module, list[Point]] = {}  # attention module -> its q/k/v points
    called: set[nn.Module] = set()  # the attention modules whose attention function ran in this forward

    def tap(module: nn.Module):
        def take(*qkv):
            called.add(module)
            for q in fed[module]:
                feed(q, qkv[q.item])
        return take

    def check(module, args, output):
        if module not in called:
            raise AttentionUnavailable(
                f"{fed[module][0].name}: {type(module).__name__} computed its attention without transformers' "
                "attention function, so its queries, keys and values cannot be read (GPT-2 does so with "
                "reorder_and_upcast_attn set in its config)")
        called.discard(module)

    for p in points:
        module = adapter.block_module(model, p.layer, p.path)
        if p.where != "call":
            regs.append((module, p.where, hook(p)))
        elif module not in fed:
            fed[module] = [p]
            regs.append((module, "out", check))
        else:
            fed[module].append(p)
    taps = {module: tap(module) for module in fed}
    with hooked(regs), attention_calls(taps):
        yield reducers
    if finite:  # one wait for the device per pass
        names = [p.name for p in points if p.name in finite]
        ok = torch.stack([finite[n][0] for n in names]).tolist()
        if not all(ok):
            name = names[ok.index(False)]
            raise _overflow(name, finite[name][1])


def collect(reducers: dict[str, list[Reducer]]) -> dict[str, dict[str, torch.Tensor]]:
    """name -> merged result dict of that point's reducers."""
    out = {}
    for name, rs in reducers.items():
        merged: dict[str, torch.Tensor] = {}
        for r in rs:
            merged.update(r.result())
        out[name] = merged
    return out
