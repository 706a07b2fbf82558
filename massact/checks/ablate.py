"""Family A: which component generates massive activations: whole blocks, and heads."""
from __future__ import annotations

import torch

from massact.checks.base import ClaimInvalid, Context, Measurement, check, massive_layers, profile, ranges
from massact.checks.heads import scores
from massact.interventions import Intervention
from massact.metrics import activations as act
from massact.metrics import heads as hm


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
        holds=holds, primary="worst_change",
        summary=f"{p['intervention']}: top-1 change over massive layers {ranges(layers)}: "
                f"worst {ch[worst]:+.2%} at layer {worst}; mean {sum(ch.values()) / len(ch):+.2%}",
        values={"worst_change": ch[worst], **{f"change.{l}": float(change[l]) for l in range(len(change))}},
        details={"layers": layers, "baseline_top1": base["top1"].tolist(), "ablated_top1": new["top1"].tolist()})


PRUNE = {"documented_method": "documented", "correct_method": "correct"}


def _ranking(ctx: Context, p: dict) -> torch.Tensor:
    """First-token attention per head (L, H), on all of the claim's samples (never a resample)."""
    return scores(ctx.full(), p["rank_by"])


def _prune_change(ctx: Context, base, heads: list[tuple[int, int]], method: str) -> torch.Tensor:
    """Per-layer relative change of the mean top-1 when ``heads`` are pruned; (L,)."""
    new = profile(ctx.run(Intervention(kind="prune_heads", heads=tuple(heads), method=PRUNE[method])), ctx.lm.n_layers)
    return act.relative_change(base["top1"], new["top1"])


@check("method", "rank_by", "k", "random_draws")
def top_vs_bottom_heads(ctx: Context, p: dict) -> Measurement:
    """Pruning the k bottom first-token heads moves top-1 more than pruning the k top ones."""
    s = _ranking(ctx, p)
    L, H = s.shape
    top, bottom = hm.ranked(s, p["k"]), hm.ranked(s, p["k"], top=False)
    base = profile(ctx.run(), ctx.lm.n_layers)
    impact = {}
    for name, heads in (("top", top), ("bottom", bottom)):
        impact[name] = _prune_change(ctx, base, heads, p["method"]).abs().mean().item()
    rnd = [hm.random_heads(L, H, p["k"], seed=d, exclude=top + bottom) for d in range(p["random_draws"])]
    impact["random"] = sum(_prune_change(ctx, base, h, p["method"]).abs().mean().item() for h in rnd) / len(rnd)
    ratio = impact["bottom"] / max(impact["top"], 1e-12)
    return Measurement(
        holds=impact["bottom"] > impact["top"], primary="bottom_over_top",
        summary=f"{p['method']}: mean |top-1 change| over layers: top {top} {impact['top']:.3%}, bottom {bottom} "
                f"{impact['bottom']:.3%} (x{ratio:.1f}), {p['k']} random heads {impact['random']:.3%}",
        values={"bottom_over_top": ratio, **{f"impact.{k}": v for k, v in impact.items()}},
        # the claim is that the bottom heads matter: random heads that move top-1 as much pick nothing out
        controls={"random_heads": impact["random"] >= impact["bottom"]},
        details={"top": top, "bottom": bottom, "random": rnd, "impact": impact})


@check("method", "rank_by", "n_heads", "bound")
def single_head(ctx: Context, p: dict) -> Measurement:
    """Pruning one of the top first-token heads leaves its own layer's top-1 within ``bound``."""
    s = _ranking(ctx, p)
    base = profile(ctx.run(), ctx.lm.n_layers)
    change = {}
    for l, h in hm.ranked(s, p["n_heads"]):
        change[(l, h)] = float(_prune_change(ctx, base, [(l, h)], p["method"])[l])
    worst = max(change, key=lambda k: abs(change[k]))
    return Measurement(
        holds=abs(change[worst]) < p["bound"], primary="worst_change",
        summary=f"{p['method']}: " + ", ".join(f"head {k}: layer {k[0]} top-1 {v:+.3%}" for k, v in change.items()),
        values={"worst_change": change[worst], **{f"change.{l}.{h}": v for (l, h), v in change.items()}},
        details={"heads": [list(k) for k in change], "change": list(change.values())})
