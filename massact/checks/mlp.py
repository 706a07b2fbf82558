"""Family M: where inside the MLP the massive activation is made."""
from __future__ import annotations

from massact.checks.base import Context, Measurement, check, emergence_layer
from massact.engine import PassResult


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
