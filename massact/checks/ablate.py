"""Family A: which component generates massive activations: whole blocks, and heads."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from massact import figures as fig
from massact.checks.base import (PROFILE, RESUME, ClaimInvalid, Context, MassiveDef, Measurement, Outcome, Params,
                                 check, massive_layers, massive_spans, profile, ranges)
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


def _change(ctx: Context, base_r, pruned_r, idx) -> torch.Tensor:
    """Per-layer relative change of the mean top-1 when heads are pruned, on samples idx; (L,)."""
    base, new = profile(base_r.select(idx), ctx.lm.n_layers), profile(pruned_r.select(idx), ctx.lm.n_layers)
    return act.relative_change(base["top1"], new["top1"])


CONTROLS = {"random": "random_heads", "layer_matched": "layer_matched_random_heads"}  # A3's, by draw kind


@dataclass(frozen=True, kw_only=True)
class TopBottomParams(PruneParams):
    k: int
    random_draws: int


@check(TopBottomParams, needs=[PROFILE, ATTENTION, RESUME])
def top_vs_bottom_heads(ctx: Context, p: TopBottomParams) -> Measurement:
    """Pruning the k bottom first-token heads moves top-1 more than pruning the k top ones.

    Controls: k random heads, and k random heads drawn from the bottom heads' own layers (when
    those layers have k other heads); either moving top-1 as much as the bottom heads means the
    ranking picks nothing out.
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
    base_r = ctx.run(PROFILE)
    pruned = {name: _prune_profile(ctx, heads, p.method) for name, heads in (("top", top), ("bottom", bottom))}
    pruned_draws = {k: [_prune_profile(ctx, h, p.method) for h in hs] for k, hs in draws.items() if hs}

    def decide(idx):
        impact = {name: _change(ctx, base_r, r, idx).abs().mean().item() for name, r in pruned.items()}
        for k, rs in pruned_draws.items():
            impact[k] = sum(_change(ctx, base_r, r, idx).abs().mean().item() for r in rs) / len(rs)
        ratio = impact["bottom"] / max(impact["top"], 1e-12)
        matched = (f"{p.k} random heads of the bottom heads' layers {impact['layer_matched']:.3%}"
                   if "layer_matched" in impact else "the bottom heads' layers hold no other heads to match them")
        return Outcome(
            holds=ratio > 1, primary="bottom_over_top",
            summary=f"{p.method}: mean |top-1 change| over layers: top {top} {impact['top']:.3%}, bottom {bottom} "
                    f"{impact['bottom']:.3%} (x{ratio:.1f}); {p.k} random heads {impact['random']:.3%}; {matched}",
            values={"bottom_over_top": ratio, **{f"impact.{k}": v for k, v in impact.items()}},
            # the claim is that the bottom heads matter: other heads that move top-1 as much, anywhere or
            # in the same layers, show that the ranking picks nothing out
            controls={CONTROLS[k]: impact[k] >= impact["bottom"] for k in pruned_draws})

    changes = {name: _change(ctx, base_r, r, None).tolist() for name, r in pruned.items()}
    if "layer_matched" in pruned_draws:
        changes["layer-matched"] = _change(ctx, base_r, pruned_draws["layer_matched"][0], None).tolist()
    return Measurement(
        decide, n=base_r.n, unit="x", bound={"op": ">", "value": 1.0, "abs": False},
        selections={"top heads": top, "bottom heads": bottom, "random heads": draws["random"],
                    "layer-matched heads": draws["layer_matched"] or "none: the bottom heads' layers have no others",
                    "ranked by": f"first-token attention ({p.rank_by}) over all {base_r.n} samples"},
        details={"top": top, "bottom": bottom, "draws": draws},
        figures=[fig.Bars(title=f"{ctx.lm.name}: top-1 change per layer when heads are pruned ({p.method})",
                          categories=[str(l) for l in range(L)],
                          series={f"{name} {p.k}": v for name, v in changes.items()}, x_label="layer",
                          y_label="relative change of mean top-1", unit="%",
                          caption=f"top heads {top}, bottom heads {bottom} by first-token attention; layer-matched: "
                                  f"the first draw of random heads of the bottom heads' layers")])


@dataclass(frozen=True, kw_only=True)
class SingleHeadParams(PruneParams, MassiveDef):
    n_heads: int
    bound: float


@check(SingleHeadParams, needs=[PROFILE, ATTENTION, RESUME])
def single_head(ctx: Context, p: SingleHeadParams) -> Measurement:
    """Pruning one of the top first-token heads leaves its own layer's top-1 within ``bound``.

    Control: as many heads of the emergence layer, each pruned alone; if they too leave their
    layer's top-1 within ``bound``, no single head matters and the claim picks nothing out.
    """
    heads = hm.ranked(scores(ctx, p.rank_by), p.n_heads)
    base_r = ctx.run(PROFILE)
    prof = profile(base_r, ctx.lm.n_layers)
    layer = act.emergence_layer(prof["top1"], prof["median"], min_abs=p.min_abs, min_ratio=p.min_ratio)
    H = ctx.lm.adapter.n_heads(ctx.lm.config)
    control = (None if layer is None else
               hm.layer_matched_heads([(layer, 0)] * p.n_heads, H, seed=0, exclude=heads)) or []
    no_control = "no massive layer" if layer is None else f"layer {layer} has no {p.n_heads} heads besides the top ones"
    pruned = {(l, h): _prune_profile(ctx, [(l, h)], p.method) for l, h in heads + control}

    def decide(idx):
        change = {(l, h): float(_change(ctx, base_r, pruned[(l, h)], idx)[l]) for l, h in heads}
        worst = max(change, key=lambda k: abs(change[k]))
        ctl = {(l, h): float(_change(ctx, base_r, pruned[(l, h)], idx)[l]) for l, h in control}
        values = {"worst_change": change[worst], **{f"change.{l}.{h}": v for (l, h), v in (change | ctl).items()}}
        summary = f"{p.method}: " + ", ".join(f"head {k}: layer {k[0]} top-1 {v:+.3%}" for k, v in change.items())
        controls = {}
        if ctl:
            values["control_worst_change"] = max(ctl.values(), key=abs)
            summary += (f"; control, heads of the emergence layer {layer} pruned alone: "
                        + ", ".join(f"{k} {v:+.3%}" for k, v in ctl.items()))
            controls["emergence_layer_heads"] = abs(values["control_worst_change"]) < p.bound
        else:
            summary += f"; {no_control}: no emergence-layer control"
        return Outcome(holds=abs(change[worst]) < p.bound, primary="worst_change", summary=summary, values=values,
                       controls=controls)

    full = decide(None)
    return Measurement(decide, n=base_r.n, unit="%", bound={"op": "<", "value": p.bound, "abs": True},
                       selections={"heads": heads, "ranked by": f"first-token attention ({p.rank_by}) over all "
                                                                 f"{base_r.n} samples",
                                   "control heads": control or f"none: {no_control}",
                                   "emergence layer": layer if layer is not None else "none"},
                       details={"heads": [list(k) for k in heads], "control_heads": [list(k) for k in control],
                                "change": [full.values[f"change.{l}.{h}"] for l, h in heads]})
