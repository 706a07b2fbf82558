"""Family S: SVD geometry of the down projection (seed 001 Exp3, 003 section 3).

W is the down projection at the layer, (out = hidden, in = intermediate); v_k are its right
singular vectors (the intermediate space, where the down projection's input h lives) and u_k
the left ones. The layer is ``params.layer`` or the emergence layer (the first massive one);
the massive dim is ``params.dim`` or the most frequent top-1 feature of that layer's block output.
"""
from __future__ import annotations

import weakref

import torch

from massact.checks.base import ClaimInvalid, Context, Measurement, check, emergence_layer, massive_dim
from massact.engine import PassResult
from massact.metrics import svd

N_DIRECTIONS = 5  # v1..v5: v2..v5 are the other-singular-direction controls
# module -> (weight version, Singular): a bootstrap re-runs a check 200 times on the same weight
_SVD_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def down_singular(ctx: Context, layer: int, *, k: int = N_DIRECTIONS) -> svd.Singular:
    """Top-k singular triplets of the layer's down projection (out, in), unoriented, cached."""
    module = ctx.lm.adapter.block_module(ctx.lm.model, layer, ctx.lm.adapter.down_proj)
    stamp = (module.weight.data_ptr(), module.weight._version, k)
    hit = _SVD_CACHE.get(module)
    if hit is None or hit[0] != stamp:
        hit = (stamp, svd.top_singular(ctx.lm.adapter.down_weight(ctx.lm.model, layer), k))
        _SVD_CACHE[module] = hit
    return hit[1]


def svd_pass(ctx: Context, p: dict) -> tuple[int, int, PassResult]:
    """(layer, massive dim, the pass keeping the layer's down-projection input and output).

    S2, S3 and S4 keep the same two points, so one pass serves all three.
    """
    layer = emergence_layer(ctx, p)
    r = ctx.run(keep=(f"mlp.{layer}.down_in", f"mlp.{layer}.output"))
    return layer, massive_dim(ctx, r, layer, p), r


@check("min_sv_ratio", "min_abs", "min_ratio", resamplable=False)
def svd_dominant_direction(ctx: Context, p: dict) -> Measurement:
    layer = emergence_layer(ctx, p)
    ratios = [svd.singular_ratio(down_singular(ctx, l).values) for l in range(ctx.lm.n_layers)]
    s = down_singular(ctx, layer).values
    ratio = ratios[layer]
    median_all = float(torch.tensor(ratios).median())
    rank = sorted(ratios, reverse=True).index(ratio) + 1
    holds = ratio >= p["min_sv_ratio"]
    return Measurement(
        holds=holds, primary="ratio",
        summary=f"layer {layer}: sigma1 {float(s[0]):.2f}, sigma2 {float(s[1]):.2f}, ratio {ratio:.2f} "
                f"(rank {rank} of {len(ratios)} layers; median over all layers {median_all:.2f})",
        values={"layer": layer, "sigma1": float(s[0]), "sigma2": float(s[1]), "ratio": ratio,
                "median_ratio_all_layers": median_all, "rank": rank},
        # the massive layer is not special when the typical layer also has a dominant direction
        controls={"other_layers_median": median_all >= p["min_sv_ratio"]},
        reason="" if holds else f"sigma1/sigma2 {ratio:.2f} < {p['min_sv_ratio']:g} at layer {layer}",
        details={"ratios_by_layer": ratios, "singular_values": s.tolist()})


def projection_data(ctx: Context, p: dict) -> dict:
    """Per token: h (M, I) at the down projection's input and its output at the massive dim (M,)."""
    layer, dim, r = svd_pass(ctx, p)
    h = r.stat(f"mlp.{layer}.down_in", "full")
    out = r.stat(f"mlp.{layer}.output", "full")[..., dim]
    return {"layer": layer, "dim": dim, "h": h.reshape(-1, h.shape[-1]).double(), "out": out.reshape(-1).double(),
            "sing": svd.oriented(down_singular(ctx, layer), dim), "input_ids": r.input_ids}


@check("method", "min_r2", "margin", "n_random", "leverage_frac", "min_abs", "min_ratio")
def svd_projection_r2(ctx: Context, p: dict) -> Measurement:
    if p["method"] not in ("documented", "correct"):
        raise ClaimInvalid(f"params.method must be 'documented' (|y|, as the document's code) or 'correct', "
                           f"not {p['method']!r}")
    d = projection_data(ctx, p)
    sing, h = d["sing"], d["h"]
    # documented: their code regressed |c_proj output| on the signed projection
    y = d["out"].abs() if p["method"] == "documented" else d["out"]
    xs = h @ sing.right  # (M, k): projections on v1..vk
    r2 = svd.r2_many(xs, y)
    rand = svd.r2_many(h @ svd.random_unit_directions(h.shape[1], p["n_random"], seed=0), y)
    fit = svd.linear_fit(xs[:, 0], y)
    robust, dropped = svd.drop_high_leverage(xs[:, 0], y, frac=p["leverage_frac"])
    sigma1, u1 = float(sing.values[0]), float(sing.left[d["dim"], 0])
    others = float(r2[1:].max()) if len(r2) > 1 else float("nan")
    rand_max = float(rand.max())
    collapsed = robust.r2 <= p["min_r2"]
    holds = fit.r2 > p["min_r2"] and not collapsed
    reason = ""
    if fit.r2 <= p["min_r2"]:
        reason = f"R^2 {fit.r2:.4f} <= {p['min_r2']:g}"
    elif collapsed:
        reason = (f"R^2 {fit.r2:.4f} rests on {dropped} high-leverage tokens: without them it is "
                  f"{robust.r2:.4f} <= {p['min_r2']:g}")
    k = len(r2)
    return Measurement(
        holds=holds, primary="r2_min",
        summary=f"layer {d['layer']} dim {d['dim']} ({p['method']} method, {fit.n} tokens): R^2 on v1 {fit.r2:.4f}, "
                f"y = {fit.slope:.2f} x + {fit.intercept:.2f} (sigma1 {sigma1:.2f}, u1[dim] {u1:.2f}); "
                f"{robust.r2:.4f} without the {dropped} highest-leverage tokens; "
                f"v2..v{k} max {others:.4f}; {p['n_random']} random directions max {rand_max:.4f}",
        # r2_min: the threshold applies to both fits, so to the smaller
        values={"r2_min": min(fit.r2, robust.r2), "r2": fit.r2, "r2_robust": robust.r2, "slope": fit.slope,
                "intercept": fit.intercept, "sigma1": sigma1, "slope_over_sigma1": fit.slope / sigma1, "u1_dim": u1,
                "r2_other_max": others, "r2_random_max": rand_max, "layer": d["layer"], "dim": d["dim"],
                "n_tokens": fit.n},
        # True: the control scores within ``margin`` of v1, so v1 is not what explains y
        controls={"other_singular_directions": others >= fit.r2 - p["margin"],
                  "random_directions": rand_max >= fit.r2 - p["margin"]},
        reason=reason,
        details={"scatter": svd.scatter_sample(xs[:, 0], y),
                 "r2": {**{f"v{i + 1}": float(r2[i]) for i in range(k)}, "random_max": rand_max,
                        "random": [round(float(v), 6) for v in rand], "v1_without_high_leverage": robust.r2},
                 "slope": fit.slope, "intercept": fit.intercept, "sigma1": sigma1, "u1_dim": u1,
                 "dropped": dropped, "layer": d["layer"], "dim": d["dim"], "method": p["method"]})
