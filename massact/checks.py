"""Measurements a claim record can name in its ``check`` field.

A check takes the session context (model, corpus, cached passes) and the record's params and
returns a Measurement: the general form's decision, a one-line summary, named values (what a
documented-value form compares with the document) and details for the report. A claim that
cannot be evaluated as written on this model raises ClaimInvalid with the reason.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from massact.corpus import Corpus
from massact.engine import BASELINE, Engine, PassResult
from massact.interventions import Intervention
from massact.metrics import activations as act
from massact.models import LoadedModel


class ClaimInvalid(Exception):
    """The claim cannot be evaluated as written on this model; the message says why."""


@dataclass
class Context:
    lm: LoadedModel
    corpus: Corpus
    engine: Engine

    def run(self, intervention: Intervention = BASELINE) -> PassResult:
        return self.engine.run(self.lm, self.corpus, intervention)


@dataclass
class Measurement:
    holds: bool
    summary: str
    values: dict[str, float] = field(default_factory=dict)
    details: dict = field(default_factory=dict)
    reason: str = ""


@dataclass(frozen=True)
class Check:
    fn: Callable[[Context | None, dict], Measurement]
    params: tuple[str, ...]
    needs_model: bool = True
    documented_only: bool = False  # gives values but no decision of its own


CHECKS: dict[str, Check] = {}


def check(*params: str, needs_model: bool = True, documented_only: bool = False):
    def register(fn):
        CHECKS[fn.__name__] = Check(fn, params, needs_model, documented_only)
        return fn
    return register


# ---------------------------------------------------------------- helpers

def profile(r: PassResult, n_layers: int) -> dict[str, torch.Tensor]:
    return act.layer_profile([r.stat(f"block.{l}", "top_abs") for l in range(n_layers)],
                             [r.stat(f"block.{l}", "median") for l in range(n_layers)])


def massive_layers(prof: dict[str, torch.Tensor], p: dict) -> list[int]:
    mask = act.massive_mask(prof["top1"], prof["median"], min_abs=p["min_abs"], min_ratio=p["min_ratio"])
    return mask.nonzero().flatten().tolist()


def profile_values(prof: dict[str, torch.Tensor]) -> dict[str, float]:
    return {f"{k}.{l}": float(v[l]) for k, v in prof.items() for l in range(len(v))}


def _layer(ctx: Context, p: dict) -> int:
    """The layer a per-layer claim looks at: a fixed one, or the first massive layer."""
    if "layer" in p:
        if p["layer"] >= ctx.lm.n_layers:
            raise ClaimInvalid(f"layer {p['layer']} does not exist: {ctx.lm.name} has {ctx.lm.n_layers} layers")
        return int(p["layer"])
    layers = massive_layers(profile(ctx.run(), ctx.lm.n_layers), p)
    if not layers:
        raise ClaimInvalid(f"no layer of {ctx.lm.name} has massive activations "
                           f"(top-1 >= {p['min_abs']:g} and >= {p['min_ratio']:g}x median): nothing to locate")
    return layers[0]


def _ckpt_max(r: PassResult, layer: int, role: str) -> float:
    return float(r.stat(f"mlp.{layer}.{role}", "top_abs")[:, 0].double().mean())


# ---------------------------------------------------------------- family L

@check("min_abs", "min_ratio")
def massive_exists(ctx: Context, p: dict) -> Measurement:
    prof = profile(ctx.run(), ctx.lm.n_layers)
    r = act.ratio(prof["top1"], prof["median"])
    best = int(r.argmax())
    layers = massive_layers(prof, p)
    values = {"best_layer": best, "best_ratio": float(r[best]), "best_top1": float(prof["top1"][best]),
              **{f"ratio.{l}": float(r[l]) for l in range(len(r))}}
    return Measurement(
        holds=bool(layers),
        summary=f"max top-1/median {float(r[best]):.0f}x at layer {best} (top-1 {float(prof['top1'][best]):.1f}); "
                f"massive layers: {_ranges(layers) or 'none'}",
        values=values, details={"profile": {k: v.tolist() for k, v in prof.items()}, "massive_layers": layers})


@check(documented_only=True)
def layer_profile(ctx: Context, p: dict) -> Measurement:
    prof = profile(ctx.run(), ctx.lm.n_layers)
    return Measurement(holds=True, summary=f"{ctx.lm.n_layers}-layer profile measured",
                       values=profile_values(prof), details={"profile": {k: v.tolist() for k, v in prof.items()}})


@check("table", needs_model=False)
def table_consistent(ctx: None, p: dict) -> Measurement:
    table = {int(k): v for k, v in p["table"].items()}
    bad = act.table_inconsistencies(table)
    return Measurement(holds=not bad, summary=f"{len(table)} rows read; {len(bad)} out of order",
                       reason="; ".join(bad), details={"inconsistencies": bad})


@check("jump", "early_frac", "plateau_band", "plateau_frac", "drop_max")
def emergence(ctx: Context, p: dict) -> Measurement:
    prof = profile(ctx.run(), ctx.lm.n_layers)
    e = act.emergence(prof["top1"], jump=p["jump"], early_frac=p["early_frac"], plateau_band=p["plateau_band"],
                      plateau_frac=p["plateau_frac"], drop_max=p["drop_max"])
    failed = [n for n in ("jump", "plateau", "drop") if not e[f"{n}_ok"]]
    return Measurement(
        holds=not failed,
        summary=f"jump x{e['jump']:.1f} at layer {e['layer']}; plateau {e['plateau_share']:.0%} of layers "
                f"{e['layer']}..{ctx.lm.n_layers - 2} within x{p['plateau_band']:g} of {e['plateau_level']:.1f}; "
                f"last layer x{e['drop']:.2f} of plateau; all >=x{p['jump']:g} jumps at {e['jumps_over_threshold']}",
        values={"layer": e["layer"], "jump": e["jump"], "plateau_share": e["plateau_share"], "drop": e["drop"]},
        reason=f"fails: {', '.join(failed)}" if failed else "", details=e)


def _dims(ctx: Context, p: dict):
    r = ctx.run()
    layers = massive_layers(profile(r, ctx.lm.n_layers), p)
    counts, pairs = act.massive_dims([r.stat(f"block.{l}", "feature_max") for l in layers],
                                     [r.stat(f"block.{l}", "median") for l in layers],
                                     min_abs=p["min_abs"], min_ratio=p["min_ratio"])
    return layers, counts, pairs


@check("min_abs", "min_ratio", "max_dims", "min_share")
def fixed_dims(ctx: Context, p: dict) -> Measurement:
    layers, counts, pairs = _dims(ctx, p)
    if not pairs:
        return Measurement(holds=False, summary="no massive activations", reason="no entry is massive in any layer")
    top_dim, top_n = counts.most_common(1)[0]
    share = top_n / pairs
    holds = len(counts) <= p["max_dims"] and share >= p["min_share"]
    return Measurement(
        holds=holds,
        summary=f"{len(counts)} dims host massive activations over {pairs} (sample, layer) pairs; "
                f"dim {top_dim} in {share:.0%}; dims {dict(counts.most_common(6))}",
        values={"n_dims": len(counts), "top_dim": top_dim, "top_share": share},
        reason="" if holds else f"needs <= {p['max_dims']} dims and the top one in >= {p['min_share']:.0%} of pairs",
        details={"dims": dict(counts), "pairs": pairs, "layers": layers})


@check("dims", "min_abs", "min_ratio")
def documented_dims(ctx: Context, p: dict) -> Measurement:
    out_of_range = [d for d in p["dims"] if d >= ctx.lm.hidden_size]
    if out_of_range:
        raise ClaimInvalid(f"dims {out_of_range} do not exist: {ctx.lm.name} has hidden size {ctx.lm.hidden_size}")
    layers, counts, pairs = _dims(ctx, p)
    shares = {d: counts.get(d, 0) / pairs if pairs else 0.0 for d in p["dims"]}
    absent = [d for d, s in shares.items() if s == 0]
    return Measurement(holds=not absent, summary="share of massive (sample, layer) pairs per dim: "
                       + ", ".join(f"{d}: {s:.0%}" for d, s in shares.items()),
                       values={f"dim.{d}.share": s for d, s in shares.items()},
                       reason=f"dims {absent} hold no massive activation" if absent else "",
                       details={"dims": dict(counts), "pairs": pairs})


# ---------------------------------------------------------------- family A

@check("intervention", "mode", "bound", "min_abs", "min_ratio")
def ablation(ctx: Context, p: dict) -> Measurement:
    """Per massive layer: relative change of the mean top-1 under the intervention.

    mode "unchanged": every |change| < bound; mode "drops": every change < -bound.
    """
    base = profile(ctx.run(), ctx.lm.n_layers)
    layers = massive_layers(base, p)
    if not layers:
        raise ClaimInvalid(f"no layer of {ctx.lm.name} has massive activations: nothing to ablate")
    new = profile(ctx.run(Intervention(kind=p["intervention"])), ctx.lm.n_layers)
    change = act.relative_change(base["top1"], new["top1"])
    ch = {l: float(change[l]) for l in layers}
    if p["mode"] == "unchanged":
        worst = max(ch, key=lambda l: abs(ch[l]))
        holds = abs(ch[worst]) < p["bound"]
    else:
        worst = max(ch, key=lambda l: ch[l])
        holds = ch[worst] < -p["bound"]
    return Measurement(
        holds=holds,
        summary=f"{p['intervention']}: top-1 change over massive layers {_ranges(layers)}: "
                f"worst {ch[worst]:+.2%} at layer {worst}; mean {sum(ch.values()) / len(ch):+.2%}",
        values={"worst_change": ch[worst], **{f"change.{l}": float(change[l]) for l in range(len(change))}},
        details={"layers": layers, "baseline_top1": base["top1"].tolist(), "ablated_top1": new["top1"].tolist()})


# ---------------------------------------------------------------- family M

@check("max_rel_diff", "min_abs", "min_ratio")
def mlp_act_preserves_max(ctx: Context, p: dict) -> Measurement:
    layer = _layer(ctx, p)
    r = ctx.run()
    pre, post = _ckpt_max(r, layer, "pre_act"), _ckpt_max(r, layer, "act")
    diff = abs(post - pre) / pre
    return Measurement(holds=diff < p["max_rel_diff"],
                       summary=f"layer {layer}: max |pre-activation| {pre:.2f}, max |activation| {post:.2f} ({diff:.2%})",
                       values={"layer": layer, "pre_act": pre, "act": post, "rel_diff": diff})


@check("min_factor", "min_abs", "min_ratio")
def mlp_down_amplifies(ctx: Context, p: dict) -> Measurement:
    layer = _layer(ctx, p)
    r = ctx.run()
    x, y = _ckpt_max(r, layer, "down_in"), _ckpt_max(r, layer, "output")
    return Measurement(holds=y >= p["min_factor"] * x,
                       summary=f"layer {layer}: down projection max |in| {x:.2f} -> max |out| {y:.2f} (x{y / x:.1f})",
                       values={"layer": layer, "down_in": x, "output": y, "factor": y / x})


def _ranges(layers: list[int]) -> str:
    """[1, 2, 3, 7] -> '1-3, 7'."""
    out, start = [], None
    for i, l in enumerate(layers):
        if start is None:
            start = l
        if i + 1 == len(layers) or layers[i + 1] != l + 1:
            out.append(f"{start}-{l}" if l != start else f"{l}")
            start = None
    return ", ".join(out)
