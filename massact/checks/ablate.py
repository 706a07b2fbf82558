"""Family A: which component generates massive activations: whole blocks, and heads."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from massact import figures as fig
from massact.checks.base import (DRAWS, PROFILE, RESUME, ClaimInvalid, Condition, Context, MassiveDef, Measurement,
                                 Outcome, Params, check, massive_layers, massive_spans, profile, ranges)
from massact.checks.heads import ATTENTION, METHOD, scores
from massact.interventions import BY_NAME, PruneHeads
from massact.metrics import activations as act
from massact.metrics import heads as hm


@dataclass(frozen=True, kw_only=True)
class AblationParams(MassiveDef):
    intervention: Literal["zero_attention", "zero_mlp"]
    mode: Literal["unchanged", "drops", "not_lowered"]
    bound: float


def _ablation_needs(p: AblationParams):
    return [PROFILE, PROFILE.under(BY_NAME[p.intervention])]


@check(AblationParams, needs=_ablation_needs)
def ablation(ctx: Context, p: AblationParams) -> Measurement:
    """Per massive layer: relative change of the mean top-1 under the intervention.

    mode "unchanged": every |change| < bound; "drops": every change < -bound; "not_lowered":
    every change > -bound (the component does not make the top-1, whatever else it does to it).
    """
    base_r = ctx.run(PROFILE)
    if not massive_layers(profile(base_r, ctx.lm.n_layers), p):
        raise ClaimInvalid(f"no layer of {ctx.lm.name} has massive activations: nothing to ablate")
    new_r = ctx.run(PROFILE.under(BY_NAME[p.intervention]))

    def measure(idx):
        base, new = profile(base_r.select(idx), ctx.lm.n_layers), profile(new_r.select(idx), ctx.lm.n_layers)
        layers = massive_layers(base, p)
        if not layers:
            raise ClaimInvalid(f"no layer of {ctx.lm.name} has massive activations: nothing to ablate")
        return base, new, layers, act.relative_change(base["top1"], new["top1"])

    def decide(idx):
        _, _, layers, change = measure(idx)
        ch = {l: float(change[l]) for l in layers}
        if p.mode == "unchanged":
            worst = max(ch, key=lambda l: abs(ch[l]))
            holds = abs(ch[worst]) < p.bound
        elif p.mode == "drops":
            worst = max(ch, key=lambda l: ch[l])
            holds = ch[worst] < -p.bound
        else:
            worst = min(ch, key=lambda l: ch[l])
            holds = ch[worst] > -p.bound
        return Outcome(
            holds=holds, primary="worst_change",
            summary=f"{p.intervention}: top-1 change over massive layers {ranges(layers)}: "
                    f"worst {ch[worst]:+.2%} at layer {worst}; mean {sum(ch.values()) / len(ch):+.2%}",
            values={"worst_change": ch[worst], **{f"change.{l}": float(change[l]) for l in range(len(change))}})

    base, new, layers, change = measure(None)
    bound, band = {
        "unchanged": ({"op": "<", "value": p.bound, "abs": True}, fig.Band(-p.bound, p.bound, f"+-{p.bound:.0%}")),
        "drops": ({"op": "<", "value": -p.bound, "abs": False}, fig.Band(-1.0, -p.bound, f"drop > {p.bound:.0%}")),
        "not_lowered": ({"op": ">", "value": -p.bound, "abs": False},
                        fig.Band(-p.bound, max(p.bound, float(change.max())), f"no drop > {p.bound:.0%}")),
    }[p.mode]
    label = {"zero_attention": "attention zeroed", "zero_mlp": "MLPs zeroed"}[p.intervention]
    return Measurement(
        decide, n=base_r.n, unit="%", bound=bound,
        details={"layers": layers, "baseline_top1": base["top1"].tolist(), "ablated_top1": new["top1"].tolist()},
        figures=[fig.Bars(title=f"{ctx.lm.name}: top-1 change per layer, {label}",
                          categories=[str(l) for l in range(len(change))], series={label: change.tolist()},
                          x_label="layer", y_label="relative change of mean top-1", unit="%", bands=[band],
                          spans=massive_spans(layers),
                          caption=f"(ablated - baseline) / baseline mean top-1 |activation| per block output; "
                                  f"the claim reads the massive layers {ranges(layers)}"),
                 fig.Lines(title=f"{ctx.lm.name}: top-1 |activation|, baseline and {label}",
                           x=list(range(len(change))), series={"baseline": base["top1"].tolist(),
                                                               label: new["top1"].tolist()},
                           y_label="mean top-1 |activation|", log_y=True,
                           caption="mean over samples of the largest |activation| per block output")])


@dataclass(frozen=True, kw_only=True)
class PruneParams(Params):
    method: METHOD  # documented_method prunes a slice of the attention output, correct_method a head
    rank_by: METHOD  # which first-token score ranks the heads


PRUNE = {"documented_method": "documented", "correct_method": "correct"}


def _prune_profile(ctx: Context, heads: list[tuple[int, int]], method: str):
    return ctx.run(PROFILE.under(PruneHeads(tuple(heads), PRUNE[method])))


def _top1(ctx: Context, r) -> torch.Tensor:
    """Per-sample top-1 |activation| of every block output; (N, L)."""
    return torch.stack([r.stat(f"block.{l}", "top_abs")[:, 0].double() for l in range(ctx.lm.n_layers)], dim=1)


def _change(base: torch.Tensor, pruned: torch.Tensor, idx) -> torch.Tensor:
    """Per-layer relative change of the mean top-1 over samples idx: base (N, L), pruned (..., N, L) -> (..., L)."""
    pick = slice(None) if idx is None else idx
    return act.relative_change(base[pick].mean(0), pruned[..., pick, :].mean(-2))


CONTROLS = {"random": "random_heads", "layer_matched": "layer_matched_random_heads"}  # A3's, by draw kind


@dataclass(frozen=True, kw_only=True)
class TopBottomParams(PruneParams):
    k: int
    random_draws: int = DRAWS


@check(TopBottomParams, needs=[PROFILE, ATTENTION, RESUME])
def top_vs_bottom_heads(ctx: Context, p: TopBottomParams) -> Measurement:
    """Pruning the k bottom first-token heads moves top-1 more than pruning the k top ones.

    Controls: k random heads, and k random heads drawn from the bottom heads' own layers (when
    those layers have k other heads), each drawn ``random_draws`` times; either moving top-1 as much
    as the bottom heads means the ranking picks nothing out. The draws are resampled with the
    samples, so the spread between draws is in the controls' intervals.
    """
    s = scores(ctx, p.rank_by)  # the ranking, from all of the claim's samples
    L, H = s.shape
    top, bottom = hm.ranked(s, p.k), hm.ranked(s, p.k, top=False)
    try:
        rand = [hm.random_heads(L, H, p.k, seed=d, exclude=top + bottom) for d in range(p.random_draws)]
    except hm.TooFewHeads as e:
        raise ClaimInvalid(f"the random-heads control cannot be drawn: {e}") from None
    draws = {"random": rand,
             "layer_matched": [h for d in range(p.random_draws)
                               if (h := hm.layer_matched_heads(bottom, H, seed=d, exclude=top + bottom))]}
    base = _top1(ctx, ctx.run(PROFILE))
    pruned = {name: _top1(ctx, _prune_profile(ctx, heads, p.method)) for name, heads in (("top", top),
                                                                                          ("bottom", bottom))}
    # (draws, N, L) per kind of draw
    pruned_draws = {k: torch.stack([_top1(ctx, _prune_profile(ctx, h, p.method)) for h in hs])
                    for k, hs in draws.items() if hs}

    def decide(idx, didx):
        impact = {name: float(_change(base, r, idx).abs().mean()) for name, r in pruned.items()}
        for k, r in pruned_draws.items():  # each draw's mean |change| over layers, averaged over the draws
            impact[k] = float(_change(base, r if didx is None else r[didx], idx).abs().mean())
        ratio = impact["bottom"] / max(impact["top"], 1e-12)
        matched = (f"{p.k} random heads of the bottom heads' layers {impact['layer_matched']:.3%}"
                   if "layer_matched" in impact else "the bottom heads' layers hold no other heads to match them")
        return Outcome(
            holds=ratio > 1, primary="bottom_over_top",
            summary=f"{p.method}: mean |top-1 change| over layers: top {top} {impact['top']:.3%}, bottom {bottom} "
                    f"{impact['bottom']:.3%} (x{ratio:.1f}); {p.k} random heads {impact['random']:.3%} "
                    f"(mean of {p.random_draws} draws); {matched}",
            values={"bottom_over_top": ratio, **{f"impact.{k}": v for k, v in impact.items()},
                    **{f"{k}_over_bottom": impact[k] / max(impact["bottom"], 1e-12) for k in pruned_draws}},
            # the claim is that the bottom heads matter: other heads that move top-1 as much, anywhere or
            # in the same layers, show that the ranking picks nothing out
            controls={CONTROLS[k]: Condition(f"{k}_over_bottom", ">=", 1.0) for k in pruned_draws})

    changes = {name: _change(base, r, None).tolist() for name, r in pruned.items()}
    if "layer_matched" in pruned_draws:
        changes["layer-matched"] = _change(base, pruned_draws["layer_matched"], None).mean(0).tolist()
    return Measurement(
        decide, n=len(base), draws=p.random_draws, unit="x", bound={"op": ">", "value": 1.0, "abs": False},
        selections={"top heads": top, "bottom heads": bottom, "random heads": draws["random"],
                    "layer-matched heads": draws["layer_matched"] or "none: the bottom heads' layers have no others",
                    "ranked by": f"first-token attention ({p.rank_by}) over all {len(base)} samples"},
        details={"top": top, "bottom": bottom, "draws": draws},
        figures=[fig.Bars(title=f"{ctx.lm.name}: top-1 change per layer when heads are pruned ({p.method})",
                          categories=[str(l) for l in range(L)],
                          series={f"{name} {p.k}": v for name, v in changes.items()}, x_label="layer",
                          y_label="relative change of mean top-1", unit="%",
                          caption=f"top heads {top}, bottom heads {bottom} by first-token attention; layer-matched: "
                                  f"the mean over {p.random_draws} draws of random heads of the bottom heads' layers")])


@dataclass(frozen=True, kw_only=True)
class SingleHeadParams(PruneParams, MassiveDef):
    n_heads: int
    bound: float
    random_draws: int = DRAWS


@check(SingleHeadParams, needs=[PROFILE, ATTENTION, RESUME])
def single_head(ctx: Context, p: SingleHeadParams) -> Measurement:
    """Pruning one of the top first-token heads leaves its own layer's top-1 within ``bound``.

    Control: ``n_heads`` other heads of the emergence layer, each pruned alone, drawn ``random_draws``
    times from that layer's heads; if they too leave their layer's top-1 within ``bound``, no single
    head matters and the claim picks nothing out.
    """
    heads = hm.ranked(scores(ctx, p.rank_by), p.n_heads)
    base_r = ctx.run(PROFILE)
    base = _top1(ctx, base_r)
    prof = profile(base_r, ctx.lm.n_layers)
    layer = act.emergence_layer(prof["top1"], prof["median"], min_abs=p.min_abs, min_ratio=p.min_ratio)
    if layer is None:  # the claim is that a single head does not make the massive activation
        raise ClaimInvalid(f"no layer of {ctx.lm.name} has massive activations: no top-1 for a head to make")
    H = ctx.lm.adapter.n_heads(ctx.lm.config)
    pool = [(layer, h) for h in range(H) if (layer, h) not in heads]
    if len(pool) < p.n_heads:
        pool = []
    no_control = f"layer {layer} has no {p.n_heads} heads besides the top ones"
    draws = [hm.layer_matched_heads([(layer, 0)] * p.n_heads, H, seed=d, exclude=heads) for d in range(p.random_draws)
             ] if pool else []
    # one pass per head pruned alone, its own layer's top-1: (N,)
    alone = {(l, h): _top1(ctx, _prune_profile(ctx, [(l, h)], p.method))[:, l] for l, h in heads + pool}

    def change(head, idx) -> float:
        pick = slice(None) if idx is None else idx
        return float(act.relative_change(base[pick, head[0]].mean(), alone[head][pick].mean()))

    def decide(idx, didx):
        ch = {k: change(k, idx) for k in heads}
        worst = max(ch, key=lambda k: abs(ch[k]))
        values = {"worst_change": ch[worst], **{f"change.{l}.{h}": v for (l, h), v in ch.items()}}
        summary = f"{p.method}: " + ", ".join(f"head {k}: layer {k[0]} top-1 {v:+.3%}" for k, v in ch.items())
        controls = {}
        if draws:
            ctl = {k: change(k, idx) for k in pool}
            picked = draws if didx is None else [draws[int(d)] for d in didx]
            # each draw's worst |change| among its heads, averaged over the draws
            values["control_worst_change"] = sum(max(abs(ctl[k]) for k in d) for d in picked) / len(picked)
            values |= {f"change.{l}.{h}": v for (l, h), v in ctl.items()}
            summary += (f"; control, {p.n_heads} other heads of the emergence layer {layer} pruned alone "
                        f"({len(draws)} draws): worst |change| {values['control_worst_change']:.3%} on average")
            controls["emergence_layer_heads"] = Condition("control_worst_change", "<", p.bound)
        else:
            summary += f"; {no_control}: no emergence-layer control"
        return Outcome(holds=abs(ch[worst]) < p.bound, primary="worst_change", summary=summary, values=values,
                       controls=controls)

    full = decide(None, None)
    return Measurement(decide, n=len(base), draws=len(draws), unit="%",
                       bound={"op": "<", "value": p.bound, "abs": True},
                       selections={"heads": heads, "ranked by": f"first-token attention ({p.rank_by}) over all "
                                                                 f"{len(base)} samples",
                                   "control heads": draws or f"none: {no_control}",
                                   "emergence layer": layer},
                       details={"heads": [list(k) for k in heads], "control_heads": [list(k) for k in pool],
                                "change": [full.values[f"change.{l}.{h}"] for l, h in heads]})
