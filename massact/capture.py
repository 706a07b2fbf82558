"""Hooks and streaming reducers.

The only place hooks are registered is ``hooked()``, which removes every handle in
``finally``: hooks are global state on the model and must never outlive a pass.
A capture hands each hooked tensor (B, T, D) with its attention mask (B, T) to reducers,
which keep per-sample statistics, never the full activation unless asked.
"""
from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from massact.arch import Adapter
from massact.errors import ActivationOverflow, AttentionUnavailable
from massact.metrics.headtypes import attention_profile
from massact.metrics.outliers import energy_share

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


# ---------------------------------------------------------------- reducers

class Reducer:
    """Streaming per-sample statistic: update() per batch, result() at the end."""

    def update(self, a: torch.Tensor, mask: torch.Tensor, absa: torch.Tensor,
               token_max: torch.Tensor | None = None) -> None:
        """a (B, T, D), mask (B, T), absa = masked_abs(a, mask) and token_max = absa.amax(2) (B, T),
        computed once for all reducers of a point (attention points: absa is a itself, token_max None)."""
        raise NotImplementedError

    def result(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError


def masked_abs(a: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """|a| in float32 with padded tokens set to 0; (B, T, D)."""
    out = a.detach().float().abs()
    return out if mask.bool().all() else out.masked_fill(~mask.bool()[..., None], 0.0)


class TopK(Reducer):
    """Per sample: the k largest |a| over (token, feature), signed values and positions."""

    def __init__(self, k: int = 3):
        self.k = k
        self.parts: dict[str, list[torch.Tensor]] = {"top_abs": [], "top_value": [], "top_token": [], "top_feature": []}

    def update(self, a, mask, absa, token_max=None):
        B, T, D = a.shape
        k = min(self.k, T * D)
        tmax = absa.amax(dim=2) if token_max is None else token_max
        if not mask.bool().all():  # a padded token is never picked, not even among zeros
            tmax = tmax.masked_fill(~mask.bool(), -1.0)
        # the k largest entries lie in the k tokens with the largest maxima: search those alone
        toks = tmax.topk(min(k, T), dim=1).indices  # (B, <=k)
        sub = absa.gather(1, toks[..., None].expand(-1, -1, D))  # (B, <=k, D)
        vals, j = sub.reshape(B, -1).topk(k, dim=1)  # (B, k)
        idx = toks.gather(1, j // D) * D + j % D  # positions in the (T * D) entries of a sample
        signed = a.detach().float().reshape(B, T * D).gather(1, idx)
        self.parts["top_abs"].append(vals)
        self.parts["top_value"].append(signed)
        self.parts["top_token"].append(idx // D)
        self.parts["top_feature"].append(idx % D)

    def result(self):
        return {k: torch.cat(v) for k, v in self.parts.items()}


def lower_median(x: torch.Tensor) -> torch.Tensor:
    """Per row of x (B, n): the lower of the two middle values, as torch.median gives it. On the CPU by
    numpy's introselect, ~6x faster there than torch.median (the capture pass's costliest statistic)."""
    if x.device.type != "cpu" or x.shape[1] == 0:  # torch says an empty row has no median
        return x.median(dim=1).values
    k = (x.shape[1] - 1) // 2
    return torch.from_numpy(np.partition(x.numpy(), k, axis=1)[:, k].copy())


class Median(Reducer):
    """Per sample: the median |a| over every unpadded (token, feature) entry (the lower of two middles)."""

    def __init__(self):
        self.parts: list[torch.Tensor] = []

    def update(self, a, mask, absa, token_max=None):
        if mask.bool().all():  # one call for the batch
            self.parts.append(lower_median(absa.reshape(a.shape[0], -1)))
            return
        for b in range(a.shape[0]):
            self.parts.append(lower_median(absa[b][mask[b].bool()].reshape(1, -1)))

    def result(self):
        return {"median": torch.cat(self.parts)}


class FeatureMax(Reducer):
    """Per sample and feature: max |a| over tokens; (N, D)."""

    def __init__(self):
        self.parts: list[torch.Tensor] = []

    def update(self, a, mask, absa, token_max=None):
        self.parts.append(absa.amax(dim=1))

    def result(self):
        return {"feature_max": torch.cat(self.parts)}


class TokenMax(Reducer):
    """Per sample and token: max |a| over features; (N, T), padded tokens 0."""

    def __init__(self):
        self.parts: list[torch.Tensor] = []

    def update(self, a, mask, absa, token_max=None):
        self.parts.append(absa.amax(dim=2) if token_max is None else token_max)

    def result(self):
        return {"token_max": torch.cat(self.parts)}


ENERGY_FRACS = (0.0005, 0.001)  # the outlier document's "0.05%-0.1% of entries"


class EnergyShare(Reducer):
    """Per sample: the share of sum(a^2) over its unpadded entries that the top ENERGY_FRACS of them
    by |a| carry, one column per fraction; (N, len(ENERGY_FRACS))."""

    def __init__(self):
        self.parts: list[torch.Tensor] = []

    def update(self, a, mask, absa, token_max=None):
        rows = [absa] if mask.bool().all() else [absa[b][mask[b].bool()][None] for b in range(a.shape[0])]
        for x in rows:  # (B or 1, T, D)
            self.parts.append(torch.stack([energy_share(x, frac=f) for f in ENERGY_FRACS], dim=1))

    def result(self):
        return {"energy_share": torch.cat(self.parts)}


class Keep(Reducer):
    """The full tensor, (N, T, D): only for the few points a claim asks for by name."""

    def __init__(self):
        self.parts: list[torch.Tensor] = []

    def update(self, a, mask, absa, token_max=None):
        self.parts.append(a.detach().float().masked_fill(~mask.bool()[..., None], 0.0))

    def result(self):
        return {"full": torch.cat(self.parts)}


class Spill(Reducer):
    """The full tensor in the model's own dtype, (N, T, D), bit for bit, kept off the heap: written to an
    unnamed temporary file as it comes and read back memory-mapped. The residual stream that passes
    resuming at the next block start from (the engine's prefix reuse); a read copies only what it takes."""

    def __init__(self):
        self.file = tempfile.TemporaryFile(prefix="massact-resume-")
        self.shape: tuple[int, ...] | None = None
        self.dtype: torch.dtype | None = None

    def update(self, a, mask, absa, token_max=None):
        if not mask.bool().all():
            raise ValueError("a pass resumes from whole samples: padding is not supported")
        x = a.detach().cpu().contiguous()
        self.file.write(x.view(torch.uint8).numpy().data)
        self.shape = (len(x) + (self.shape[0] if self.shape else 0), *x.shape[1:])
        self.dtype = x.dtype

    def result(self):
        if self.shape is None:
            return {"resume": torch.empty(0)}
        self.file.flush()
        raw = np.memmap(self.file, dtype=np.uint8, mode="c")  # copy-on-write: the file is never changed
        return {"resume": torch.from_numpy(raw).view(self.dtype).reshape(self.shape)}


class HeadStats(Reducer):
    """Per sample and head, means over (unpadded) queries of attention probabilities (B, H, T, T).

    first_incl: mass on key 0 with query 0 included (it always gives 1.0: the documents' method);
    first_excl: the same over queries >= 1; sink: mass on the first ``sink`` keys; entropy (nats).
    """

    def __init__(self, sink: int = 4):
        self.sink = sink
        self.parts: dict[str, list[torch.Tensor]] = {"first_incl": [], "first_excl": [], "sink": [], "entropy": []}

    def update(self, a, mask, absa, token_max=None):
        a = a.detach().float()  # (B, H, T, T)
        q = mask.float()[:, None, :]  # (B, 1, T): which queries count
        q1 = q.clone()
        q1[..., 0] = 0

        def mean_q(x, w):  # x (B, H, T) averaged over the queries weighted by w
            return (x * w).sum(-1) / w.sum(-1).clamp(min=1)

        self.parts["first_incl"].append(mean_q(a[..., 0], q))
        self.parts["first_excl"].append(mean_q(a[..., 0], q1))
        self.parts["sink"].append(mean_q(a[..., : self.sink].sum(-1), q))
        self.parts["entropy"].append(mean_q(-(a * (a + 1e-10).log()).sum(-1), q))

    def result(self):
        return {k: torch.cat(v) for k, v in self.parts.items()}


class HeadProfile(Reducer):
    """Per sample and head, the head-classification statistics of attention probabilities (B, H, T, T)
    (massact.metrics.headtypes.attention_profile), named ``hp_<statistic>``. Whole samples only:
    reduced inside the hook, so no layer's (H, T, T) outlives its own pass through the layer."""

    def __init__(self):
        self.parts: dict[str, list[torch.Tensor]] = {}

    def update(self, a, mask, absa, token_max=None):
        if not mask.bool().all():
            raise ValueError("head profiles are taken over whole samples: padding is not supported")
        for k, v in attention_profile(a).items():
            self.parts.setdefault(f"hp_{k}", []).append(v)

    def result(self):
        return {k: torch.cat(v) for k, v in self.parts.items()}


HEAD_PROFILE = tuple(f"hp_{k}" for k in ("entropy", "max", "sink", "recent", "local", "global", "uniformity", "rel"))

# statistic name -> the reducer that makes it; a pass builds each reducer a point needs once
STATISTICS: dict[str, type[Reducer]] = {
    **{name: TopK for name in ("top_abs", "top_value", "top_token", "top_feature")},
    "median": Median,
    "feature_max": FeatureMax,
    "token_max": TokenMax,
    "energy_share": EnergyShare,
    "full": Keep,
    "resume": Spill,
    **{name: HeadStats for name in ("first_incl", "first_excl", "sink", "entropy")},
    **{name: HeadProfile for name in HEAD_PROFILE},
}


def produced(stats: set[str] | frozenset[str]) -> frozenset[str]:
    """Every statistic the reducers that make ``stats`` give (one TopK gives all four top_* at once)."""
    kinds = {STATISTICS[s] for s in stats}
    return frozenset(name for name, kind in STATISTICS.items() if kind in kinds)


def reducers_for(stats: set[str] | frozenset[str]) -> list[Reducer]:
    """One reducer per kind that the statistics ``stats`` need, in a fixed order."""
    unknown = set(stats) - set(STATISTICS)
    if unknown:
        raise ValueError(f"unknown statistic(s) {sorted(unknown)}; known: {sorted(STATISTICS)}")
    kinds = list(dict.fromkeys(STATISTICS[s] for s in sorted(stats, key=list(STATISTICS).index)))
    return [k() for k in kinds]


# ---------------------------------------------------------------- points

@dataclass(frozen=True)
class Point:
    """A named hook point: ``block.{l}`` (block output), ``mlp.{l}.{role}`` or ``attn.{l}``."""

    name: str
    layer: int
    path: str  # module path within the block; "" is the block itself
    where: str  # "in" | "out"
    item: int = 0  # which element of a tuple the module takes or returns


def block_points(adapter: Adapter, n_layers: int) -> list[Point]:
    return [Point(f"block.{l}", l, "", "out") for l in range(n_layers)]


def mlp_points(adapter: Adapter, n_layers: int) -> list[Point]:
    return [
        Point(f"mlp.{l}.{role}", l, path, where)
        for l in range(n_layers)
        for role, path, where in adapter.mlp_checkpoints
    ]


def attention_points(adapter: Adapter, n_layers: int) -> list[Point]:
    """Attention probabilities, (B, H, T, T): present only in eager attention."""
    return [Point(f"attn.{l}", l, adapter.attn_probs, "out", item=1) for l in range(n_layers)]


def all_points(adapter: Adapter, n_layers: int) -> dict[str, Point]:
    """Every capture point of a model by name: block outputs, MLP checkpoints, attention."""
    pts = block_points(adapter, n_layers) + mlp_points(adapter, n_layers) + attention_points(adapter, n_layers)
    return {p.name: p for p in pts}


@contextmanager
def capture(
    model: nn.Module,
    adapter: Adapter,
    points: Sequence[Point],
    *,
    mask_ref: dict[str, torch.Tensor],
    make_reducers: Callable[[Point], list[Reducer]],
) -> Iterator[dict[str, list[Reducer]]]:
    """Hook ``points``; yields name -> reducers. ``mask_ref["mask"]`` is the current batch's mask.

    The caller sets ``mask_ref["mask"]`` before each forward pass, so the hooks can honour
    padding without holding on to the batch.
    """
    reducers = {p.name: make_reducers(p) for p in points}

    def make_fn(p: Point):
        def feed(t: torch.Tensor | None) -> None:
            if t is None:
                raise AttentionUnavailable(
                    f"{p.name}: the attention module returned no probabilities; massact runs these passes with "
                    "eager attention, and this model's attention gives none there: its head statistics cannot be read")
            mask = mask_ref["mask"]
            if t.dim() != 3:  # attention probabilities (B, H, T, T): non-negative, masked by their reducers
                for r in reducers[p.name]:
                    r.update(t, mask, t.detach().float())
                return
            absa = masked_abs(t, mask)
            token_max = absa.amax(dim=2)  # (B, T): shared by the reducers, and inf or nan where any entry is
            if not torch.isfinite(token_max).all():
                hint = ("massive activations can pass float16's 65504: run with --dtype float32 or --dtype bfloat16"
                        if t.dtype == torch.float16 else
                        "that is beyond this dtype's range, not a massive activation: check the model's weights")
                raise ActivationOverflow(f"activations at {p.name} reached inf/nan in {t.dtype}; {hint}")
            for r in reducers[p.name]:
                r.update(t, mask, absa, token_max)

        def pick(x):
            return x[p.item] if isinstance(x, (tuple, list)) else x

        if p.where == "out":
            return lambda module, args, output: feed(pick(output))
        return lambda module, args: feed(pick(args))

    regs = [(adapter.block_module(model, p.layer, p.path), p.where, make_fn(p)) for p in points]
    with hooked(regs):
        yield reducers


def collect(reducers: dict[str, list[Reducer]]) -> dict[str, dict[str, torch.Tensor]]:
    """name -> merged result dict of that point's reducers."""
    out = {}
    for name, rs in reducers.items():
        merged: dict[str, torch.Tensor] = {}
        for r in rs:
            merged.update(r.result())
        out[name] = merged
    return out
