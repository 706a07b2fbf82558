"""Family M: where inside the MLP the massive activation is made."""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Literal

import torch

from massact import figures as fig
from massact.checks.base import (PROFILE, TOP_ENTRIES, TOP_FEATURE, AtLayer, ClaimInvalid, Condition, Context,
                                 Measurement, Outcome, check, check_layer, emergence_layer, emergence_of, fixed,
                                 massive_dim, profile)
from massact.engine import PassResult
from massact.metrics import activations as act
from massact.metrics import outliers as out
from massact.requests import want

MLP_TOP = want("mlp.*.*", "top_abs")


def ckpt_max(r: PassResult, layer: int, role: str) -> float:
    """Mean over samples of the max |a| at one MLP checkpoint."""
    return float(r.stat(f"mlp.{layer}.{role}", "top_abs")[:, 0].double().mean())


def _pair(ctx: Context, p: AtLayer, a: str, b: str):
    """(the pass, a decide-ready function giving (layer, mean max at checkpoint a, at b) on idx).

    The layer is ``p.layer``, else the emergence layer of the samples idx: found again in each
    resample, since every layer's checkpoint maxima are in the pass."""
    r, prof_r = ctx.run(MLP_TOP), ctx.run(PROFILE)

    def layer_of(idx):
        if p.layer is not None:
            return check_layer(ctx, p.layer)
        return emergence_of(profile(prof_r.select(idx), ctx.lm.n_layers), p, ctx.lm.name)

    layer_of(None)  # ClaimInvalid now, when the model has no massive layer

    def maxima(idx):
        layer = layer_of(idx)
        return layer, ckpt_max(r.select(idx), layer, a), ckpt_max(r.select(idx), layer, b)

    return r, maxima


@dataclass(frozen=True, kw_only=True)
class ActParams(AtLayer):
    max_rel_diff: float


@check(ActParams, needs=[PROFILE, MLP_TOP])
def mlp_act_preserves_max(ctx: Context, p: ActParams) -> Measurement:
    r, maxima = _pair(ctx, p, "pre_act", "act")

    def decide(idx):
        layer, pre, post = maxima(idx)
        diff = abs(post - pre) / pre
        return Outcome(holds=diff < p.max_rel_diff, primary="rel_diff",
                       summary=f"layer {layer}: max |pre-activation| {pre:.2f}, max |activation| {post:.2f} "
                               f"({diff:.2%})",
                       values={"layer": layer, "pre_act": pre, "act": post, "rel_diff": diff})

    return Measurement(decide, n=r.n, unit="%", bound={"op": "<", "value": p.max_rel_diff, "abs": False},
                       details={"layer": "as named" if p.layer is not None else "the emergence layer of each resample"})


@dataclass(frozen=True, kw_only=True)
class AmplifyParams(AtLayer):
    min_factor: float


@check(AmplifyParams, needs=[PROFILE, MLP_TOP])
def mlp_down_amplifies(ctx: Context, p: AmplifyParams) -> Measurement:
    r, maxima = _pair(ctx, p, "down_in", "output")

    def decide(idx):
        layer, x, y = maxima(idx)
        return Outcome(holds=y / x >= p.min_factor, primary="factor",
                       summary=f"layer {layer}: down projection max |in| {x:.2f} -> max |out| {y:.2f} (x{y / x:.1f})",
                       values={"layer": layer, "down_in": x, "output": y, "factor": y / x})

    layer, x, y = maxima(None)
    return Measurement(decide, n=r.n, unit="x", bound={"op": ">=", "value": p.min_factor, "abs": False},
                       details={"layer": "as named" if p.layer is not None else "the emergence layer of each resample"},
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
        conditions=[Condition("max_factor", ">=", p.min_factor), Condition("concentration", ">=", p.min_concentration)],
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
        w = a.weight(model, layer, a.down_proj)
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


@dataclass(frozen=True, kw_only=True)
class ContributionParams(AtLayer):
    top_k: int
    min_share: float


def massive_at(r: PassResult, layer: int, dim: int, p: AtLayer) -> list[tuple[int, int, float]]:
    """(sample, token, signed value) of every massive entry at ``dim`` among block ``layer``'s per-sample top-3."""
    vals, toks, feats = (r.stat(f"block.{layer}", k) for k in ("top_value", "top_token", "top_feature"))
    med = r.stat(f"block.{layer}", "median")
    hit = act.massive_mask(vals.abs(), med[:, None], min_abs=p.min_abs, min_ratio=p.min_ratio) & (feats == dim)
    return [(i, int(toks[i, j]), float(vals[i, j])) for i, j in hit.nonzero().tolist()]


@check(ContributionParams, needs=[PROFILE, TOP_FEATURE, TOP_ENTRIES])
def mlp_top_contributions(ctx: Context, p: ContributionParams) -> Measurement:
    """At the massive tokens, the share of the massive value a that the top_k intermediate units write.

    Unit j writes W[dim, j] h_j into the massive dim (W (out, in), h the down projection's input at
    that token); the top_k units by |W[dim, j] h_j| write sum_j W[dim, j] h_j / a of it. Averaged over
    the massive entries at the dim (a sample may hold several, or none).
    """
    layer = emergence_layer(ctx, p)
    dim = massive_dim(ctx, layer, p)
    entries = massive_at(ctx.run(TOP_ENTRIES), layer, dim, p)
    if not entries:
        raise ClaimInvalid(f"no massive entry at layer {layer}, dim {dim}: nothing written to attribute")
    # the pass the SVD claims keep (down projection input and output at the layer): one pass serves both
    r = ctx.run(want(f"mlp.{layer}.down_in", "full") | want(f"mlp.{layer}.output", "full"))
    h, y = r.stat(f"mlp.{layer}.down_in", "full"), r.stat(f"mlp.{layer}.output", "full")
    w = ctx.lm.adapter.down_weight(ctx.lm.model, layer)[dim].double()  # (I,): the weights into the dim
    contrib = torch.stack([w * h[i, t].double() for i, t, _ in entries])  # (E, I)
    top = contrib.abs().topk(min(p.top_k, contrib.shape[1]), dim=1).indices  # (E, k)
    a = torch.tensor([v for _, _, v in entries], dtype=torch.float64)
    share = contrib.gather(1, top).sum(1) / a  # (E,)
    mlp_share = torch.tensor([float(y[i, t, dim]) for i, t, _ in entries], dtype=torch.float64) / a
    sample = torch.tensor([i for i, _, _ in entries])

    def decide(idx):
        # each entry counted once per time its sample is drawn
        pick = torch.cat([(sample == int(i)).nonzero().flatten() for i in (range(r.n) if idx is None else idx)])
        if not len(pick):
            raise ClaimInvalid(f"no massive entry at layer {layer}, dim {dim} in these samples")
        s, m = float(share[pick].mean()), float(mlp_share[pick].mean())
        return Outcome(
            holds=s >= p.min_share, primary="share",
            summary=f"layer {layer}, dim {dim}, {len(pick)} massive entries: the top-{p.top_k} units by "
                    f"|W[dim, j] h_j| write {s:.1%} of the massive value; the whole MLP writes {m:.1%} of it",
            values={"share": s, "mlp_share": m, "entries": len(pick), "layer": layer, "dim": dim},
            reason="" if s >= p.min_share else f"the top-{p.top_k} units write {s:.1%} < {p.min_share:.0%}")

    units = Counter(u for row in top.tolist() for u in row)
    mean_c = contrib.mean(0)
    return Measurement(
        decide, n=r.n, unit="%", bound={"op": ">=", "value": p.min_share, "abs": False},
        selections={"layer": layer, "dim": dim, "massive entries": [[i, t] for i, t, _ in entries]},
        details={"layer": layer, "dim": dim, "top_units": {u: {"times_in_top": c, "mean_contribution": float(mean_c[u])}
                                                           for u, c in units.most_common(2 * p.top_k)},
                 "per_entry_share": share.tolist(), "per_entry_mlp_share": mlp_share.tolist()},
        figures=[fig.Bars(title=f"{ctx.lm.name}: what the units write into dim {dim} at the massive tokens "
                                f"(layer {layer})", categories=[str(u) for u, _ in units.most_common(p.top_k)],
                          series={"mean W[dim, j] h_j": [float(mean_c[u]) for u, _ in units.most_common(p.top_k)]},
                          x_label="intermediate unit", y_label="contribution",
                          caption=f"mean over {len(entries)} massive entries of each unit's contribution; the claim "
                                  f"needs the top-{p.top_k} to write >= {p.min_share:.0%} of the massive value")])
