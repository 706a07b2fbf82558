"""Family A: which component generates massive activations."""
from __future__ import annotations

from massact.checks.base import ClaimInvalid, Context, Measurement, check, massive_layers, profile, ranges
from massact.interventions import Intervention
from massact.metrics import activations as act


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
