"""Family M: where inside the MLP the massive activation is made."""
from __future__ import annotations

import math

import torch

from massact.checks.base import ClaimInvalid, Context, Measurement, check, emergence_layer, massive_dim
from massact.engine import PassResult
from massact.errors import ClaimRecordError
from massact.metrics import outliers as out


def ckpt_max(r: PassResult, layer: int, role: str) -> float:
    """Mean over samples of the max |a| at one MLP checkpoint."""
    return float(r.stat(f"mlp.{layer}.{role}", "top_abs")[:, 0].double().mean())


@check("max_rel_diff", "min_abs", "min_ratio")
def mlp_act_preserves_max(ctx: Context, p: dict) -> Measurement:
    layer = emergence_layer(ctx, p)
    r = ctx.run()
    pre, post = ckpt_max(r, layer, "pre_act"), ckpt_max(r, layer, "act")
    diff = abs(post - pre) / pre
    return Measurement(holds=diff < p["max_rel_diff"], primary="rel_diff",
                       summary=f"layer {layer}: max |pre-activation| {pre:.2f}, max |activation| {post:.2f} ({diff:.2%})",
                       values={"layer": layer, "pre_act": pre, "act": post, "rel_diff": diff})


@check("min_factor", "min_abs", "min_ratio")
def mlp_down_amplifies(ctx: Context, p: dict) -> Measurement:
    layer = emergence_layer(ctx, p)
    r = ctx.run()
    x, y = ckpt_max(r, layer, "down_in"), ckpt_max(r, layer, "output")
    return Measurement(holds=y >= p["min_factor"] * x, primary="factor",
                       summary=f"layer {layer}: down projection max |in| {x:.2f} -> max |out| {y:.2f} (x{y / x:.1f})",
                       values={"layer": layer, "down_in": x, "output": y, "factor": y / x})


def ckpt_median(r: PassResult, layer: int, role: str) -> float:
    """Mean over samples of the median |a| at one MLP checkpoint; ``r`` must keep that checkpoint."""
    return float(r.stat(f"mlp.{layer}.{role}", "median").double().mean())


def _growth(new: float, old: float) -> float:
    """new / old; a zero old gives inf, or 1 when new is zero too (nothing grew)."""
    if old == 0:
        return 1.0 if new == 0 else math.inf
    return new / old


@check("min_factor", "min_concentration", "min_abs", "min_ratio")
def mlp_checkpoints(ctx: Context, p: dict) -> Measurement:
    """Max and median |a| at every MLP checkpoint of the emergence layer.

    Holds when the max grows >= min_factor from the MLP's input to its output and that growth
    exceeds the median's by >= min_concentration: a uniform rescale of every entry is no outlier.
    """
    layer = emergence_layer(ctx.full(), p)  # every resample reads the same kept layer
    roles = ctx.lm.adapter.checkpoint_roles()
    r = ctx.run(keep=tuple(f"mlp.{layer}.{role}" for role in roles))
    cps = {role: {"max": ckpt_max(r, layer, role), "median": ckpt_median(r, layer, role)} for role in roles}
    max_f = _growth(cps["output"]["max"], cps["input"]["max"])
    med_f = _growth(cps["output"]["median"], cps["input"]["median"])
    conc = _growth(max_f, med_f)
    holds = max_f >= p["min_factor"] and conc >= p["min_concentration"]
    flow = " -> ".join(f"{role} {c['max']:.2f} ({c['median']:.2f})" for role, c in cps.items())
    return Measurement(
        holds=holds, primary="max_factor",
        summary=f"layer {layer} max (median): {flow}; max x{max_f:.1f}, median x{med_f:.2f}, "
                f"top/median concentration x{conc:.1f}",
        values={"layer": layer, "max_factor": max_f, "median_factor": med_f, "concentration": conc,
                **{f"{role}.{k}": v for role, c in cps.items() for k, v in c.items()}},
        reason="" if holds else f"needs max x>={p['min_factor']:g} and concentration x>={p['min_concentration']:g}",
        details={"layer": layer, "checkpoints": cps})


def contributor_row(ctx: Context, layer: int, dim: int, method: str) -> tuple[torch.Tensor, str]:
    """The down projection weights a method reads for ``dim``, and what they are.

    correct: row ``dim`` of W (out, in), the weights from every intermediate unit into output dim.
    documented: row ``dim`` of the weight as stored, as the document's code indexed it; GPT-2's
    Conv1D stores (in, out), so there it is unit ``dim``'s outgoing weights to every output dim.
    """
    a, model = ctx.lm.adapter, ctx.lm.model
    if method == "correct":
        w, what = a.down_weight(model, layer), f"weights into output dim {dim} (row of W (out, in))"
    elif method == "documented":
        w = a.block_module(model, layer, a.down_proj).weight.detach()
        what = (f"row {dim} of the stored (in, out) weight: unit {dim}'s outgoing weights, indexed by output dim"
                if a.down_weight_in_out else f"row {dim} of the stored (out, in) weight: same as the correct method")
    else:
        raise ClaimRecordError(f"field 'params.method' must be 'correct' or 'documented', not {method!r}")
    if dim >= w.shape[0]:
        raise ClaimInvalid(f"dim {dim} does not exist: the stored down projection of {ctx.lm.name} "
                           f"has {w.shape[0]} rows")
    return w[dim].double(), what


@check("method", "top_k", "min_share", "min_abs", "min_ratio", resamplable=False)
def mlp_top_contributors(ctx: Context, p: dict) -> Measurement:
    """The intermediate units with the largest |weight| into the massive dim, and whether a few dominate.

    Holds when the top_k entries carry >= min_share of the row's squared weight (sum w^2): the
    massive output is then mostly written by those units; a Gaussian row of 1536-3072 entries
    puts ~2-4% there.
    """
    layer = emergence_layer(ctx, p)
    dim = massive_dim(ctx, ctx.run(), layer, p)
    row, what = contributor_row(ctx, layer, dim, p["method"])
    units = [u for u in p.get("units", []) if u >= len(row)]
    if units:
        raise ClaimInvalid(f"units {units} do not exist: the row read has {len(row)} entries")
    k = int(p["top_k"])
    top = row.abs().topk(k).indices.tolist()
    share = out.top_energy_share(row, k=k)
    spread = float(row.abs().max() / row.abs().median())
    return Measurement(
        holds=share >= p["min_share"], primary="share",
        summary=f"layer {layer}, dim {dim}, {what}: top-{k} "
                + ", ".join(f"{u}: {float(row[u]):+.4f}" for u in top)
                + f"; they carry {share:.1%} of the row's sum of squares; top-1 |w| = {spread:.1f}x median |w|",
        values={"layer": layer, "dim": dim, "share": share, "top1_over_median": spread,
                **{f"w.{u}": float(row[u]) for u in p.get("units", [])}},
        reason="" if share >= p["min_share"] else f"top-{k} share {share:.1%} < {p['min_share']:.0%}",
        details={"layer": layer, "dim": dim, "method": p["method"], "read": what,
                 "top": [[u, float(row[u])] for u in top]})
