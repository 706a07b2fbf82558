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
from massact.checks.base import (PROFILE, TOP_FEATURE, AtLayer, Condition, Context, Measurement, Outcome, check,
                                 emergence_layer, fixed, massive_dim)
from massact.metrics import svd
from massact.requests import want

N_DIRECTIONS = 5  # v1..v5: v2..v5 are the other-singular-direction controls
TOKEN_SETS = {"all": "all_tokens", "robust": "without_high_leverage"}  # the two token sets S2's controls run on


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
        controls={"other_layers_median": Condition("median_ratio_all_layers", ">=", p.min_sv_ratio)},
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
    slope_tol: float  # the slope must lie within this fraction of sigma1


@check(ProjectionParams, needs=[PROFILE, TOP_FEATURE])
def svd_projection_r2(ctx: Context, p: ProjectionParams) -> Measurement:
    """R^2 of the massive dim's output on h . v1, on all tokens and without the highest-leverage
    ones, each against v2..v5 and random directions on the same tokens; and the slope against sigma1."""
    d = projection(ctx, p)
    N, T = d.out.shape
    y_all = d.out.abs() if p.method == "documented" else d.out
    rand_all = (d.h_rows @ svd.random_unit_directions(d.h_rows.shape[1], p.n_random, seed=0)).reshape(N, T, -1)
    sigma1, u1 = float(d.sing.values[0]), float(d.sing.left[d.dim, 0])
    conditions = [Condition("r2", ">", p.min_r2), Condition("r2_robust", ">", p.min_r2),
                  Condition("slope_over_sigma1", ">=", 1 - p.slope_tol),
                  Condition("slope_over_sigma1", "<=", 1 + p.slope_tol)]

    def measure(idx):
        xs, y, rand = _rows(d.xs, idx), _rows(y_all, idx), _rows(rand_all, idx)
        keep = svd.low_leverage(xs[:, 0], frac=p.leverage_frac)
        sets = {"all": (xs, y, rand), "robust": (xs[keep], y[keep], rand[keep])}
        r2 = {k: (svd.r2_many(a, b), svd.r2_many(c, b)) for k, (a, b, c) in sets.items()}
        fits = {k: svd.linear_fit(a[:, 0], b) for k, (a, b, _) in sets.items()}
        return xs, y, keep, r2, fits

    def decide(idx):
        xs, _, keep, r2, fits = measure(idx)
        fit, robust = fits["all"], fits["robust"]
        k = r2["all"][0].shape[0]
        v = {"r2_min": min(fit.r2, robust.r2), "r2": fit.r2, "r2_robust": robust.r2, "slope": fit.slope,
             "intercept": fit.intercept, "slope_robust": robust.slope, "sigma1": sigma1,
             "slope_over_sigma1": fit.slope / sigma1, "u1_dim": u1, "layer": d.layer, "dim": d.dim,
             "n_tokens": fit.n, "dropped": fit.n - robust.n}
        controls, parts = {}, []
        for name, tokens in (("all", "all tokens"), ("robust", f"without the {v['dropped']} highest-leverage tokens")):
            sing, rand = r2[name]
            suffix = "" if name == "all" else "_robust"
            other, rand_max = float(sing[1:].max()), float(rand.max())
            v[f"r2_other_max{suffix}"], v[f"r2_random_max{suffix}"] = other, rand_max
            v[f"r2_v1_minus_other{suffix}"], v[f"r2_v1_minus_random{suffix}"] = float(sing[0]) - other, float(sing[0]) - rand_max
            # the control also satisfies the claim when it scores within ``margin`` of v1 on the same tokens
            on = {f"other_singular_directions.{TOKEN_SETS[name]}": Condition(f"r2_v1_minus_other{suffix}", "<=", p.margin),
                  f"random_directions.{TOKEN_SETS[name]}": Condition(f"r2_v1_minus_random{suffix}", "<=", p.margin)}
            controls |= on
            parts.append(f"{tokens}: R^2 on v1 {float(sing[0]):.4f}, v2..v{k} max {other:.4f}, {p.n_random} random "
                         f"directions max {rand_max:.4f}: {'non-specific' if any(c.holds(v) for c in on.values()) else 'specific to v1'}")
        failed = [c.describe() for c in conditions if not c.holds(v)]
        return Outcome(
            holds=not failed, primary="r2_min",
            summary=f"layer {d.layer} dim {d.dim} ({p.method} method, {fit.n} tokens): " + "; ".join(parts)
                    + f"; y = {fit.slope:.2f} x + {fit.intercept:.2f}: slope {v['slope_over_sigma1']:.2f} x sigma1 "
                      f"({sigma1:.2f}; u1[dim] {u1:.2f})",
            values=v, controls=controls, reason=f"fails: {', '.join(failed)}" if failed else "")

    xs, y, keep, r2, fits = measure(None)
    fit, robust = fits["all"], fits["robust"]
    k = r2["all"][0].shape[0]
    sc, sc_kept = svd.scatter_sample(xs[:, 0], y), svd.scatter_sample(xs[keep, 0], y[keep])
    dropped = fit.n - robust.n
    note = lambda s: (f"v2..v{k} max R^2 {float(r2[s][0][1:].max()):.4f}; "  # noqa: E731
                      f"random max {float(r2[s][1].max()):.4f}")
    return Measurement(
        decide, n=N, bound={"op": ">", "value": p.min_r2, "abs": False}, conditions=conditions,
        selections={"layer": d.layer, "dim": d.dim},
        details={"r2": {**{f"v{i + 1}": float(r2["all"][0][i]) for i in range(k)},
                        "random_max": float(r2["all"][1].max()), "random": [round(float(x), 6) for x in r2["all"][1]]},
                 "r2_without_high_leverage": {**{f"v{i + 1}": float(r2["robust"][0][i]) for i in range(k)},
                                              "random_max": float(r2["robust"][1].max())},
                 "slope": fit.slope, "intercept": fit.intercept, "sigma1": sigma1, "u1_dim": u1,
                 "dropped": dropped, "layer": d.layer, "dim": d.dim, "method": p.method},
        figures=[fig.Scatter(
            title=f"{ctx.lm.name}: projection on v1 against the output at dim {d.dim} (layer {d.layer})",
            panels=[fig.ScatterPanel("all tokens", sc["x"], sc["y"], fig.Fit(fit.slope, fit.intercept, fit.r2),
                                     note=note("all")),
                    fig.ScatterPanel(f"without the {dropped} highest-leverage tokens", sc_kept["x"], sc_kept["y"],
                                     fig.Fit(robust.slope, robust.intercept, robust.r2), note=note("robust"))],
            x_label="h . v1", y_label=f"{'|y|' if p.method == 'documented' else 'y'} at dim {d.dim}",
            caption=f"{fit.n} tokens ({len(sc['x'])} drawn, the high-leverage ones included); the claim needs R^2 "
                    f"> {p.min_r2:g} on both panels and a slope within {p.slope_tol:.0%} of sigma1 {sigma1:.2f}")])
