"""What a check is: the session context it reads, the Measurement it returns, the registry.

A check takes the context (model, corpus, cached passes) and a claim record's params and
returns a Measurement: the general form's decision, a one-line summary, named values (what a
documented-value form compares with the document), the outcome of its controls, and details
for the report. A claim that cannot be evaluated as written on this model raises ClaimInvalid.
Checks read passes only through ``ctx.run()``, so the judge can bootstrap them over samples.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch

from massact.corpus import Corpus
from massact.engine import BASELINE, Engine, PassResult
from massact.interventions import Intervention
from massact.metrics import activations as act
from massact.models import LoadedModel


class ClaimInvalid(Exception):
    """The claim cannot be evaluated as written on this model; the message says why."""


@dataclass(frozen=True)
class Context:
    lm: LoadedModel
    corpus: Corpus
    engine: Engine
    n: int  # samples this claim reads: the first n of the corpus's sample order
    idx: torch.Tensor | None = None  # a bootstrap resample of range(n), or None for all

    def run(self, intervention: Intervention = BASELINE, *, keep: tuple[str, ...] = (),
            attention: bool = False) -> PassResult:
        """A cached pass over this claim's samples (see Engine.run for keep and attention)."""
        r = self.engine.run(self.lm, self.corpus, intervention, n=self.n, keep=keep, attention=attention)
        return r if self.idx is None else r.select(self.idx)

    def resampled(self, idx: torch.Tensor) -> Context:
        return replace(self, idx=idx)

    def full(self) -> Context:
        """All of this claim's samples, resampled or not: for choices that pick an intervention
        (which heads to prune, which entries to set), so a bootstrap replicate never needs a new pass."""
        return replace(self, idx=None)


@dataclass
class Measurement:
    holds: bool
    summary: str
    values: dict[str, float] = field(default_factory=dict)
    primary: str | None = None  # the value the threshold applies to; reported with its interval
    # control name -> True when the control *also* satisfies the claim (the claim is non-specific)
    controls: dict[str, bool] = field(default_factory=dict)
    details: dict = field(default_factory=dict)
    reason: str = ""


@dataclass(frozen=True)
class Check:
    fn: Callable[[Context | None, dict], Measurement]
    params: tuple[str, ...]
    needs_model: bool = True
    documented_only: bool = False  # gives values but no decision of its own
    resamplable: bool = True  # reads per-sample passes, so it can be bootstrapped


CHECKS: dict[str, Check] = {}


def check(*params: str, needs_model: bool = True, documented_only: bool = False, resamplable: bool = True):
    """Register a check under its function name; ``params`` are the record params it requires."""
    def register(fn):
        CHECKS[fn.__name__] = Check(fn, params, needs_model, documented_only, resamplable and needs_model)
        return fn
    return register


# ---------------------------------------------------------------- helpers shared by the families

def profile(r: PassResult, n_layers: int) -> dict[str, torch.Tensor]:
    return act.layer_profile([r.stat(f"block.{l}", "top_abs") for l in range(n_layers)],
                             [r.stat(f"block.{l}", "median") for l in range(n_layers)])


def massive_layers(prof: dict[str, torch.Tensor], p: dict) -> list[int]:
    mask = act.massive_mask(prof["top1"], prof["median"], min_abs=p["min_abs"], min_ratio=p["min_ratio"])
    return mask.nonzero().flatten().tolist()


def emergence_layer(ctx: Context, p: dict) -> int:
    """The layer a per-layer claim looks at: ``params.layer``, or the first massive layer."""
    if "layer" in p:
        if p["layer"] >= ctx.lm.n_layers:
            raise ClaimInvalid(f"layer {p['layer']} does not exist: {ctx.lm.name} has {ctx.lm.n_layers} layers")
        return int(p["layer"])
    layers = massive_layers(profile(ctx.run(), ctx.lm.n_layers), p)
    if not layers:
        raise ClaimInvalid(f"no layer of {ctx.lm.name} has massive activations "
                           f"(top-1 >= {p['min_abs']:g} and >= {p['min_ratio']:g}x median): nothing to locate")
    return layers[0]


def massive_dim(ctx: Context, r: PassResult, layer: int, p: dict) -> int:
    """``params.dim``, or the feature that is most often the per-sample top-1 of block ``layer``'s output."""
    if "dim" in p:
        if p["dim"] >= ctx.lm.hidden_size:
            raise ClaimInvalid(f"dim {p['dim']} does not exist: {ctx.lm.name} has hidden size {ctx.lm.hidden_size}")
        return int(p["dim"])
    return Counter(r.stat(f"block.{layer}", "top_feature")[:, 0].tolist()).most_common(1)[0][0]


def ranges(layers: list[int]) -> str:
    """[1, 2, 3, 7] -> '1-3, 7'."""
    out, start = [], None
    for i, l in enumerate(layers):
        if start is None:
            start = l
        if i + 1 == len(layers) or layers[i + 1] != l + 1:
            out.append(f"{start}-{l}" if l != start else f"{l}")
            start = None
    return ", ".join(out)
