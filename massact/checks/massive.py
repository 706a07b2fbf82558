"""Family L: massive activations exist and follow a layer profile."""
from __future__ import annotations

from massact.checks.base import ClaimInvalid, Context, Measurement, check, massive_layers, profile, ranges
from massact.metrics import activations as act


@check("min_abs", "min_ratio")
def massive_exists(ctx: Context, p: dict) -> Measurement:
    prof = profile(ctx.run(), ctx.lm.n_layers)
    r = act.ratio(prof["top1"], prof["median"])
    # margin >= 1 exactly when the layer is massive: both conditions scaled to their threshold
    margin = ((prof["top1"] / p["min_abs"]).minimum(r / p["min_ratio"]))
    best = int(margin.argmax())
    layers = massive_layers(prof, p)
    values = {"margin": float(margin[best]), "best_layer": best, "best_ratio": float(r[best]),
              "best_top1": float(prof["top1"][best]), **{f"ratio.{l}": float(r[l]) for l in range(len(r))}}
    return Measurement(
        holds=bool(layers), primary="margin",
        summary=f"top-1/median {float(r[best]):.0f}x at layer {best} (top-1 {float(prof['top1'][best]):.1f}); "
                f"massive layers: {ranges(layers) or 'none'}",
        values=values, details={"profile": {k: v.tolist() for k, v in prof.items()}, "massive_layers": layers})


@check(documented_only=True)
def layer_profile(ctx: Context, p: dict) -> Measurement:
    prof = profile(ctx.run(), ctx.lm.n_layers)
    return Measurement(holds=True, summary=f"{ctx.lm.n_layers}-layer profile measured",
                       values={f"{k}.{l}": float(v[l]) for k, v in prof.items() for l in range(len(v))},
                       details={"profile": {k: v.tolist() for k, v in prof.items()}})


@check("table", needs_model=False)
def table_consistent(ctx: None, p: dict) -> Measurement:
    table = {int(k): v for k, v in p["table"].items()}
    bad = act.table_inconsistencies(table)
    return Measurement(holds=not bad, summary=f"{len(table)} rows read; {len(bad)} out of order: {'; '.join(bad)}",
                       reason="; ".join(bad), details={"inconsistencies": bad})


@check("jump", "early_frac", "plateau_band", "plateau_frac", "drop_max")
def emergence(ctx: Context, p: dict) -> Measurement:
    prof = profile(ctx.run(), ctx.lm.n_layers)
    e = act.emergence(prof["top1"], jump=p["jump"], early_frac=p["early_frac"], plateau_band=p["plateau_band"],
                      plateau_frac=p["plateau_frac"], drop_max=p["drop_max"])
    failed = [n for n in ("jump", "plateau", "drop") if not e[f"{n}_ok"]]
    return Measurement(
        holds=not failed, primary="jump",
        summary=f"jump x{e['jump']:.1f} at layer {e['layer']}; plateau {e['plateau_share']:.0%} of layers "
                f"{e['layer']}..{ctx.lm.n_layers - 2} within x{p['plateau_band']:g} of {e['plateau_level']:.1f}; "
                f"last layer x{e['drop']:.2f} of plateau; all >=x{p['jump']:g} jumps at {e['jumps_over_threshold']}",
        values={"layer": e["layer"], "jump": e["jump"], "plateau_share": e["plateau_share"], "drop": e["drop"]},
        reason=f"fails: {', '.join(failed)}" if failed else "", details=e)


def _dims(ctx: Context, p: dict):
    r = ctx.run()
    layers = massive_layers(profile(r, ctx.lm.n_layers), p)
    counts, pairs = act.massive_dims([r.stat(f"block.{l}", "feature_max") for l in layers],
                                     [r.stat(f"block.{l}", "median") for l in layers],
                                     min_abs=p["min_abs"], min_ratio=p["min_ratio"])
    return layers, counts, pairs


@check("min_abs", "min_ratio", "max_dims", "min_share")
def fixed_dims(ctx: Context, p: dict) -> Measurement:
    layers, counts, pairs = _dims(ctx, p)
    if not pairs:
        return Measurement(holds=False, summary="no massive activations", reason="no entry is massive in any layer")
    top_dim, top_n = counts.most_common(1)[0]
    share = top_n / pairs
    holds = len(counts) <= p["max_dims"] and share >= p["min_share"]
    return Measurement(
        holds=holds, primary="top_share",
        summary=f"{len(counts)} dims host massive activations over {pairs} (sample, layer) pairs; "
                f"dim {top_dim} in {share:.0%}; dims {dict(counts.most_common(6))}",
        values={"n_dims": len(counts), "top_dim": top_dim, "top_share": share},
        reason="" if holds else f"needs <= {p['max_dims']} dims and the top one in >= {p['min_share']:.0%} of pairs",
        details={"dims": dict(counts), "pairs": pairs, "layers": layers})


@check("dims", "min_abs", "min_ratio")
def documented_dims(ctx: Context, p: dict) -> Measurement:
    out_of_range = [d for d in p["dims"] if d >= ctx.lm.hidden_size]
    if out_of_range:
        raise ClaimInvalid(f"dims {out_of_range} do not exist: {ctx.lm.name} has hidden size {ctx.lm.hidden_size}")
    layers, counts, pairs = _dims(ctx, p)
    shares = {d: counts.get(d, 0) / pairs if pairs else 0.0 for d in p["dims"]}
    absent = [d for d, s in shares.items() if s == 0]
    return Measurement(holds=not absent, summary="share of massive (sample, layer) pairs per dim: "
                       + ", ".join(f"{d}: {s:.0%}" for d, s in shares.items()),
                       values={f"dim.{d}.share": s for d, s in shares.items()},
                       reason=f"dims {absent} hold no massive activation" if absent else "",
                       details={"dims": dict(counts), "pairs": pairs})
