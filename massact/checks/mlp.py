"""Family M: where inside the MLP the massive activation is made."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from massact import figures as fig
from massact.checks.base import (PROFILE, TOP_FEATURE, AtLayer, ClaimInvalid, Context, Measurement, Outcome, check,
                                 emergence_layer, fixed, massive_dim)
from massact.engine import PassResult
from massact.metrics import outliers as out
from massact.requests import want

MLP_TOP = want("mlp.*.*", "top_abs")


def ckpt_max(r: PassResult, layer: int, role: str) -> float:
    """Mean over samples of the max |a| at one MLP checkpoint."""
    return float(r.stat(f"mlp.{layer}.{role}", "top_abs")[:, 0].double().mean())


def _pair(ctx: Context, p: AtLayer, a: str, b: str):
    """(layer, the pass, decide-ready function giving the mean max at checkpoints a and b on idx)."""
    layer = emergence_layer(ctx, p)
    r = ctx.run(MLP_TOP)
    return layer, r, lambda idx: (ckpt_max(r.select(idx), layer, a), ckpt_max(r.select(idx), layer, b))


@dataclass(frozen=True, kw_only=True)
class ActParams(AtLayer):
    max_rel_diff: float


@check(ActParams, needs=[PROFILE, MLP_TOP])
def mlp_act_preserves_max(ctx: Context, p: ActParams) -> Measurement:
    layer, r, maxima = _pair(ctx, p, "pre_act", "act")

    def decide(idx):
        pre, post = maxima(idx)
        diff = abs(post - pre) / pre
        return Outcome(holds=diff < p.max_rel_diff, primary="rel_diff",
                       summary=f"layer {layer}: max |pre-activation| {pre:.2f}, max |activation| {post:.2f} "
                               f"({diff:.2%})",
                       values={"layer": layer, "pre_act": pre, "act": post, "rel_diff": diff})

    return Measurement(decide, n=r.n, unit="%", bound={"op": "<", "value": p.max_rel_diff, "abs": False},
                       selections={"layer": layer})


@dataclass(frozen=True, kw_only=True)
class AmplifyParams(AtLayer):
    min_factor: float


@check(AmplifyParams, needs=[PROFILE, MLP_TOP])
def mlp_down_amplifies(ctx: Context, p: AmplifyParams) -> Measurement:
    layer, r, maxima = _pair(ctx, p, "down_in", "output")

    def decide(idx):
        x, y = maxima(idx)
        return Outcome(holds=y >= p.min_factor * x, primary="factor",
                       summary=f"layer {layer}: down projection max |in| {x:.2f} -> max |out| {y:.2f} (x{y / x:.1f})",
                       values={"layer": layer, "down_in": x, "output": y, "factor": y / x})

    x, y = maxima(None)
    return Measurement(decide, n=r.n, unit="x", bound={"op": ">=", "value": p.min_factor, "abs": False},
                       selections={"layer": layer},
                       figures=[fig.Bars(title=f"{ctx.lm.name}: the down projection at layer {layer}",
                                         categories=["max |input|", "max |output|"], series={"mean max": [x, y]},
                                         log_y=True, refs=[fig.Ref(p.min_factor * x, f"{p.min_factor:g}x the input")],
                                         caption=f"mean over samples of the largest |a| entering and leaving the "
                                                 f"down projection; the claim needs the output >= {p.min_factor:g}x")])


def ckpt_median(r: PassResult, layer: int, role: str) -> float:
    """Mean over samples of the median |a| at one MLP checkpoint; ``r`` must keep that checkpoint."""
    return float(r.stat(f"mlp.{layer}.{role}", "median").double().mean())


def _growth(new: float, old: float) -> float:
    """new / old; a zero old gives inf, or 1 when new is zero too (nothing grew)."""
    if old == 0:
        return 1.0 if new == 0 else math.inf
    return new / old


@dataclass(frozen=True, kw_only=True)
class CheckpointParams(AtLayer):
    min_factor: float
    min_concentration: float


@check(CheckpointParams, needs=[PROFILE, MLP_TOP])
def mlp_checkpoints(ctx: Context, p: CheckpointParams) -> Measurement:
    """Max and median |a| at every MLP checkpoint of the emergence layer.

    Holds when the max grows >= min_factor from the MLP's input to its output and that growth
    exceeds the median's by >= min_concentration: a uniform rescale of every entry is no outlier.
    """
    layer = emergence_layer(ctx, p)
    roles = ctx.lm.adapter.checkpoint_roles()
    tops = ctx.run(MLP_TOP)
    # a median over every entry is the costliest statistic: only this layer's checkpoints pay for it
    meds = ctx.run(want(f"mlp.{layer}.*", "median"))

    def flow(idx):
        t, m = tops.select(idx), meds.select(idx)
        return {role: {"max": ckpt_max(t, layer, role), "median": ckpt_median(m, layer, role)} for role in roles}

    def decide(idx):
        cps = flow(idx)
        max_f = _growth(cps["output"]["max"], cps["input"]["max"])
        med_f = _growth(cps["output"]["median"], cps["input"]["median"])
        conc = _growth(max_f, med_f)
        holds = max_f >= p.min_factor and conc >= p.min_concentration
        flow_s = " -> ".join(f"{role} {c['max']:.2f} ({c['median']:.2f})" for role, c in cps.items())
        return Outcome(
            holds=holds, primary="max_factor",
            summary=f"layer {layer} max (median): {flow_s}; max x{max_f:.1f}, median x{med_f:.2f}, "
                    f"top/median concentration x{conc:.1f}",
            values={"layer": layer, "max_factor": max_f, "median_factor": med_f, "concentration": conc,
                    **{f"{role}.{k}": v for role, c in cps.items() for k, v in c.items()}},
            reason="" if holds else f"needs max x>={p.min_factor:g} and concentration x>={p.min_concentration:g}")

    cps = flow(None)
    return Measurement(
        decide, n=tops.n, unit="x", bound={"op": ">=", "value": p.min_factor, "abs": False},
        selections={"layer": layer}, details={"layer": layer, "checkpoints": cps},
        figures=[fig.Bars(title=f"{ctx.lm.name}: MLP checkpoints at layer {layer}", categories=list(roles),
                          series={s: [cps[r][s] for r in roles] for s in ("max", "median")},
                          x_label="checkpoint, input to output", y_label="|activation|", log_y=True,
                          caption="mean over samples of the max and the median |a| at each checkpoint of the MLP")])


def contributor_row(ctx: Context, layer: int, dim: int, method: str) -> tuple[torch.Tensor, str]:
    """The down projection weights a method reads for ``dim``, and what they are.

    correct: row ``dim`` of W (out, in), the weights from every intermediate unit into output dim.
    documented: row ``dim`` of the weight as stored, as the document's code indexed it; GPT-2's
    Conv1D stores (in, out), so there it is unit ``dim``'s outgoing weights to every output dim.
    """
    a, model = ctx.lm.adapter, ctx.lm.model
    if method == "correct":
        w, what = a.down_weight(model, layer), f"weights into output dim {dim} (row of W (out, in))"
    else:
        w = a.block_module(model, layer, a.down_proj).weight.detach()
        what = (f"row {dim} of the stored (in, out) weight: unit {dim}'s outgoing weights, indexed by output dim"
                if a.down_weight_in_out else f"row {dim} of the stored (out, in) weight: same as the correct method")
    if dim >= w.shape[0]:
        raise ClaimInvalid(f"dim {dim} does not exist: the stored down projection of {ctx.lm.name} "
                           f"has {w.shape[0]} rows")
    return w[dim].double(), what


@dataclass(frozen=True, kw_only=True)
class ContributorParams(AtLayer):
    method: Literal["correct", "documented"]
    top_k: int
    min_share: float
    units: tuple[int, ...] = ()  # documented units whose weights are reported as values


@check(ContributorParams, needs=[PROFILE, TOP_FEATURE])
def mlp_top_contributors(ctx: Context, p: ContributorParams) -> Measurement:
    """The intermediate units with the largest |weight| into the massive dim, and whether a few dominate.

    Holds when the top_k entries carry >= min_share of the row's squared weight (sum w^2): the
    massive output is then mostly written by those units; a Gaussian row of 1536-3072 entries
    puts ~2-4% there.
    """
    layer = emergence_layer(ctx, p)
    dim = massive_dim(ctx, layer, p)
    row, what = contributor_row(ctx, layer, dim, p.method)
    units = [u for u in p.units if u >= len(row)]
    if units:
        raise ClaimInvalid(f"units {units} do not exist: the row read has {len(row)} entries")
    k = p.top_k
    top = row.abs().topk(k).indices.tolist()
    share = out.top_energy_share(row, k=k)
    spread = float(row.abs().max() / row.abs().median())
    return fixed(Outcome(
        holds=share >= p.min_share, primary="share",
        summary=f"layer {layer}, dim {dim}, {what}: top-{k} "
                + ", ".join(f"{u}: {float(row[u]):+.4f}" for u in top)
                + f"; they carry {share:.1%} of the row's sum of squares; top-1 |w| = {spread:.1f}x median |w|",
        values={"layer": layer, "dim": dim, "share": share, "top1_over_median": spread,
                **{f"w.{u}": float(row[u]) for u in p.units}},
        reason="" if share >= p.min_share else f"top-{k} share {share:.1%} < {p.min_share:.0%}"),
        unit="%", bound={"op": ">=", "value": p.min_share, "abs": False}, selections={"layer": layer, "dim": dim},
        details={"layer": layer, "dim": dim, "method": p.method, "read": what,
                 "top": [[u, float(row[u])] for u in top]})
