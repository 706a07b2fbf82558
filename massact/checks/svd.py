"""Family S: SVD geometry of the down projection (seed 001 Exp3, 003 section 3).

W is the down projection at the layer, (out = hidden, in = intermediate); v_k are its right
singular vectors (the intermediate space, where the down projection's input h lives) and u_k
the left ones. The layer is ``params.layer`` or the emergence layer (the first massive one);
the massive dim is ``params.dim`` or the most frequent top-1 feature of that layer's block output.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from massact import figures as fig
from massact.checks.base import (PROFILE, TOP_FEATURE, AtLayer, Context, Measurement, Outcome, check,
                                 emergence_layer, fixed, massive_dim)
from massact.metrics import svd
from massact.requests import want

N_DIRECTIONS = 5  # v1..v5: v2..v5 are the other-singular-direction controls


def down_singular(ctx: Context, layer: int, *, k: int = N_DIRECTIONS) -> svd.Singular:
    """Top-k singular triplets of the layer's down projection (out, in), unoriented."""
    return svd.top_singular(ctx.lm.adapter.down_weight(ctx.lm.model, layer).cpu(), k)


@dataclass(frozen=True, kw_only=True)
class DominantParams(AtLayer):
    min_sv_ratio: float


@check(DominantParams, needs=[PROFILE])
def svd_dominant_direction(ctx: Context, p: DominantParams) -> Measurement:
    layer = emergence_layer(ctx, p)
    sing = [down_singular(ctx, l) for l in range(ctx.lm.n_layers)]
    ratios = [svd.singular_ratio(s.values) for s in sing]
    s = sing[layer].values
    ratio = ratios[layer]
    median_all = float(torch.tensor(ratios).median())
    rank = sorted(ratios, reverse=True).index(ratio) + 1
    holds = ratio >= p.min_sv_ratio
    return fixed(Outcome(
        holds=holds, primary="ratio",
        summary=f"layer {layer}: sigma1 {float(s[0]):.2f}, sigma2 {float(s[1]):.2f}, ratio {ratio:.2f} "
                f"(rank {rank} of {len(ratios)} layers; median over all layers {median_all:.2f})",
        values={"layer": layer, "sigma1": float(s[0]), "sigma2": float(s[1]), "ratio": ratio,
                "median_ratio_all_layers": median_all, "rank": rank},
        # the massive layer is not special when the typical layer also has a dominant direction
        controls={"other_layers_median": median_all >= p.min_sv_ratio},
        reason="" if holds else f"sigma1/sigma2 {ratio:.2f} < {p.min_sv_ratio:g} at layer {layer}"),
        unit="x", bound={"op": ">=", "value": p.min_sv_ratio, "abs": False}, selections={"layer": layer},
        details={"ratios_by_layer": ratios, "singular_values": s.tolist()},
        figures=[fig.Lines(title=f"{ctx.lm.name}: sigma1/sigma2 of the down projection per layer",
                           x=list(range(len(ratios))), series={"sigma1/sigma2": ratios}, y_label="sigma1/sigma2",
                           unit="x", refs=[fig.Ref(p.min_sv_ratio, f"claim: >= {p.min_sv_ratio:g}")],
                           spans=[fig.Span(layer, layer, "claim's layer")],
                           caption=f"ratio of the two largest singular values of W (out, in); layer {layer}: "
                                   f"{ratio:.2f}, median over layers {median_all:.2f}")])


@dataclass(frozen=True)
class Projection:
    """Per sample and token: h . v_k (N, T, k), the output at the massive dim (N, T), cos(h, v1) (N, T)."""

    layer: int
    dim: int
    sing: svd.Singular  # oriented so that u_k[dim] >= 0
    xs: torch.Tensor  # (N, T, k) float64
    out: torch.Tensor  # (N, T) float64
    h_rows: torch.Tensor  # (N*T, I) float64: h itself, for directions other than v_k
    input_ids: torch.Tensor  # (N, T)


def projection(ctx: Context, p: AtLayer) -> Projection:
    """The pass keeping the layer's down-projection input and output, projected once.

    S2, S3 and S4 keep the same two points, so one pass serves all three.
    """
    layer = emergence_layer(ctx, p)
    dim = massive_dim(ctx, layer, p)
    r = ctx.run(want(f"mlp.{layer}.down_in", "full") | want(f"mlp.{layer}.output", "full"))
    h = r.stat(f"mlp.{layer}.down_in", "full")  # (N, T, I)
    N, T, I = h.shape
    rows = h.reshape(-1, I).double()
    sing = svd.oriented(down_singular(ctx, layer), dim)
    return Projection(layer, dim, sing, (rows @ sing.right).reshape(N, T, -1),
                      r.stat(f"mlp.{layer}.output", "full")[..., dim].double(), rows, r.input_ids)


def _rows(t: torch.Tensor, idx) -> torch.Tensor:
    """The samples idx of a per-sample tensor (N, T, ...), flattened to tokens (M, ...)."""
    t = t if idx is None else t[idx]
    return t.reshape(-1, *t.shape[2:])


@dataclass(frozen=True, kw_only=True)
class ProjectionParams(AtLayer):
    method: Literal["documented", "correct"]  # documented: |y|, as the document's code regressed
    min_r2: float
    margin: float
    n_random: int
    leverage_frac: float


@check(ProjectionParams, needs=[PROFILE, TOP_FEATURE])
def svd_projection_r2(ctx: Context, p: ProjectionParams) -> Measurement:
    d = projection(ctx, p)
    N, T = d.out.shape
    y_all = d.out.abs() if p.method == "documented" else d.out
    rand_all = (d.h_rows @ svd.random_unit_directions(d.h_rows.shape[1], p.n_random, seed=0)).reshape(N, T, -1)
    sigma1, u1 = float(d.sing.values[0]), float(d.sing.left[d.dim, 0])

    def measure(idx):
        xs, y = _rows(d.xs, idx), _rows(y_all, idx)
        robust, dropped = svd.drop_high_leverage(xs[:, 0], y, frac=p.leverage_frac)
        return (xs, y, svd.r2_many(xs, y), svd.r2_many(_rows(rand_all, idx), y), svd.linear_fit(xs[:, 0], y),
                robust, dropped)

    def decide(idx):
        _, _, r2, rand, fit, robust, dropped = measure(idx)
        others = float(r2[1:].max()) if len(r2) > 1 else float("nan")
        rand_max = float(rand.max())
        collapsed = robust.r2 <= p.min_r2
        holds = fit.r2 > p.min_r2 and not collapsed
        reason = ""
        if fit.r2 <= p.min_r2:
            reason = f"R^2 {fit.r2:.4f} <= {p.min_r2:g}"
        elif collapsed:
            reason = (f"R^2 {fit.r2:.4f} rests on {dropped} high-leverage tokens: without them it is "
                      f"{robust.r2:.4f} <= {p.min_r2:g}")
        k = len(r2)
        return Outcome(
            holds=holds, primary="r2_min",
            summary=f"layer {d.layer} dim {d.dim} ({p.method} method, {fit.n} tokens): R^2 on v1 {fit.r2:.4f}, "
                    f"y = {fit.slope:.2f} x + {fit.intercept:.2f} (sigma1 {sigma1:.2f}, u1[dim] {u1:.2f}); "
                    f"{robust.r2:.4f} without the {dropped} highest-leverage tokens; "
                    f"v2..v{k} max {others:.4f}; {p.n_random} random directions max {rand_max:.4f}",
            # r2_min: the threshold applies to both fits, so to the smaller
            values={"r2_min": min(fit.r2, robust.r2), "r2": fit.r2, "r2_robust": robust.r2, "slope": fit.slope,
                    "intercept": fit.intercept, "sigma1": sigma1, "slope_over_sigma1": fit.slope / sigma1,
                    "u1_dim": u1, "r2_other_max": others, "r2_random_max": rand_max, "layer": d.layer, "dim": d.dim,
                    "n_tokens": fit.n},
            # True: the control scores within ``margin`` of v1, so v1 is not what explains y
            controls={"other_singular_directions": others >= fit.r2 - p.margin,
                      "random_directions": rand_max >= fit.r2 - p.margin},
            reason=reason)

    xs, y, r2, rand, fit, robust, dropped = measure(None)
    k = len(r2)
    sc = svd.scatter_sample(xs[:, 0], y)
    return Measurement(
        decide, n=N, bound={"op": ">", "value": p.min_r2, "abs": False},
        selections={"layer": d.layer, "dim": d.dim},
        details={"r2": {**{f"v{i + 1}": float(r2[i]) for i in range(k)}, "random_max": float(rand.max()),
                        "random": [round(float(v), 6) for v in rand], "v1_without_high_leverage": robust.r2},
                 "slope": fit.slope, "intercept": fit.intercept, "sigma1": sigma1, "u1_dim": u1,
                 "dropped": dropped, "layer": d.layer, "dim": d.dim, "method": p.method},
        figures=[fig.Scatter(
            title=f"{ctx.lm.name}: projection on v1 against the output at dim {d.dim} (layer {d.layer})",
            panels=[fig.ScatterPanel("all tokens", sc["x"], sc["y"], fig.Fit(fit.slope, fit.intercept, fit.r2),
                                     note=f"v2..v{k} max R^2 {float(r2[1:].max()):.4f}; random max "
                                          f"{float(rand.max()):.4f}")],
            x_label="h . v1", y_label=f"{'|y|' if p.method == 'documented' else 'y'} at dim {d.dim}",
            caption=f"{fit.n} tokens ({len(sc['x'])} drawn, the high-leverage ones included); without the {dropped} "
                    f"highest-leverage tokens R^2 is {robust.r2:.4f}")])
