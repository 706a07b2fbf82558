"""A5: setting the massive activations to zero vs to their mean (Sun et al. 2024)."""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import torch

from massact import figures as fig
from massact.checks.base import (PROFILE, RESUME, TOP_ENTRIES, AtLayer, ClaimInvalid, Condition, Context, Measurement,
                                 Outcome, check, emergence_layer)
from massact.engine import PassResult
from massact.interventions import SetActivations
from massact.metrics import activations as act
from massact.requests import LOSS_POINT, want

LOSS = want(LOSS_POINT, "loss")


def massive_entries(r: PassResult, layer: int, p: AtLayer, min_recur: float) -> list[tuple[int, int, float]]:
    """(token, feature, mean signed value) of the massive top-k entries recurring in >= min_recur of samples."""
    vals, toks, feats = (r.stat(f"block.{layer}", k) for k in ("top_value", "top_token", "top_feature"))
    med = r.stat(f"block.{layer}", "median")
    massive = act.massive_mask(vals.abs(), med[:, None], min_abs=p.min_abs, min_ratio=p.min_ratio)  # (N, k)
    hits: Counter = Counter()
    sums: dict[tuple[int, int], float] = {}
    for i, j in massive.nonzero().tolist():
        t, f = int(toks[i, j]), int(feats[i, j])
        hits[(t, f)] += 1
        sums[(t, f)] = sums.get((t, f), 0.0) + float(vals[i, j])
    keep = [k for k, c in hits.items() if c >= min_recur * len(vals)]
    return [(t, f, sums[(t, f)] / hits[(t, f)]) for t, f in sorted(keep)]


def largest_ordinary(a: torch.Tensor, k: int, p: AtLayer) -> list[tuple[int, int, float]]:
    """(token, feature, mean |a|) of the k entries of a (N, T, D) with the largest mean |a| over samples
    among those massive in no sample: a control as strong as ordinary entries get."""
    absa = a.abs().double()
    med = absa.reshape(len(a), -1).median(dim=1).values  # (N,)
    massive = act.massive_mask(absa, med[:, None, None], min_abs=p.min_abs, min_ratio=p.min_ratio).any(0)  # (T, D)
    mean = absa.mean(0).masked_fill(massive, -1.0)
    top = mean.flatten().topk(k).indices.tolist()
    D = a.shape[2]
    return [(i // D, i % D, float(mean.flatten()[i])) for i in top]


@dataclass(frozen=True, kw_only=True)
class ZeroVsMeanParams(AtLayer):
    min_recur: float
    zero_min_ratio: float
    mean_max_ratio: float


@check(ZeroVsMeanParams, needs=[PROFILE, TOP_ENTRIES, LOSS, RESUME])
def zero_vs_mean(ctx: Context, p: ZeroVsMeanParams) -> Measurement:
    layer = emergence_layer(ctx, p)
    base_r = ctx.run(LOSS)
    if base_r.loss is None:
        raise ClaimInvalid(f"{ctx.lm.name} has no language-model head: perplexity is undefined")
    entries = massive_entries(ctx.run(TOP_ENTRIES), layer, p, p.min_recur)  # from all samples, never a resample
    if not entries:
        raise ClaimInvalid(f"no massive entry at layer {layer} recurs in {p.min_recur:.0%} of samples")
    zero = SetActivations(tuple((layer, t, f, 0.0) for t, f, _ in entries))
    mean = SetActivations(tuple((layer, t, f, round(v, 4)) for t, f, v in entries))
    ordinary = largest_ordinary(ctx.run(want(f"block.{layer}", "full")).stat(f"block.{layer}", "full"), len(entries), p)
    control = SetActivations(tuple((layer, t, f, 0.0) for t, f, _ in ordinary))
    runs = {name: ctx.run(LOSS.under(iv)) for name, iv in (("zero", zero), ("mean", mean), ("control", control))}

    def ratios(idx):
        """exp(mean NLL under each intervention - mean NLL of the baseline) over the samples idx."""
        base = base_r.select(idx).loss
        return {name: math.exp(float(r.select(idx).loss.mean() - base.mean())) for name, r in runs.items()}

    def decide(idx):
        x = ratios(idx)
        z, m, c = x["zero"], x["mean"], x["control"]
        return Outcome(
            holds=z >= p.zero_min_ratio and m <= p.mean_max_ratio, primary="zero_ppl_ratio",
            summary=f"layer {layer}, {len(entries)} entries {[(t, f) for t, f, _ in entries]}: perplexity x{z:.2f} "
                    f"set to zero, x{m:.3f} set to their mean; x{c:.3f} zeroing the {len(ordinary)} largest ordinary "
                    f"entries {[(t, f) for t, f, _ in ordinary]} (baseline ppl "
                    f"{math.exp(float(base_r.select(idx).loss.mean())):.2f})",
            values={"zero_ppl_ratio": z, "mean_ppl_ratio": m, "control_ppl_ratio": c, "layer": layer},
            controls={"largest_ordinary_entries": Condition("control_ppl_ratio", ">=", p.zero_min_ratio)})

    x = ratios(None)
    return Measurement(
        decide, n=base_r.n, unit="x", bound={"op": ">=", "value": p.zero_min_ratio, "abs": False},
        log_scale=frozenset({"zero_ppl_ratio", "mean_ppl_ratio", "control_ppl_ratio"}),
        conditions=[Condition("zero_ppl_ratio", ">=", p.zero_min_ratio),
                    Condition("mean_ppl_ratio", "<=", p.mean_max_ratio)],
        selections={"layer": f"{layer} (the emergence layer, from all samples)",
                    "entries": [[t, f] for t, f, _ in entries],
                    "control entries": [[t, f] for t, f, _ in ordinary]},
        details={"layer": layer, "entries": [list(e) for e in entries], "control_entries": [list(e) for e in ordinary]},
        figures=[fig.Bars(title=f"{ctx.lm.name}: perplexity when entries at layer {layer} are set",
                          categories=["set to zero", "set to mean", "control: largest ordinary entries zeroed"],
                          series={"perplexity / baseline": [x["zero"], x["mean"], x["control"]]}, unit="x",
                          log_y=True, refs=[fig.Ref(p.zero_min_ratio, f"zero needs >= x{p.zero_min_ratio:g}"),
                                            fig.Ref(p.mean_max_ratio, f"mean needs <= x{p.mean_max_ratio:g}")],
                          caption=f"{len(entries)} massive entries (token, dim) {[(t, f) for t, f, _ in entries]}")])
