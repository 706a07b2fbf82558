"""Family L: massive activations exist and follow a layer profile."""
from __future__ import annotations

from dataclasses import dataclass

from massact import figures as fig
from massact.checks.base import (PROFILE, ClaimInvalid, Condition, Context, MassiveDef, Measurement, NoParams,
                                 Outcome, Params, check, fixed, massive_layers, massive_spans, profile, ranges)
from massact.metrics import activations as act
from massact.requests import Prompt, want

PROMPT = "Summer is warm. Winter is cold."  # the documents' example prompt for the 3D bar plot
N_FEATURES = 24  # features drawn in the 3D bars: the ones with the largest |a| on the prompt


def profile_figure(ctx: Context, prof: dict, layers: list[int], p: MassiveDef) -> fig.Lines:
    return fig.Lines(
        title=f"{ctx.lm.name}: |activation| per layer", x=list(range(len(prof["top1"]))),
        series={name: prof[k].tolist() for name, k in (("top-1", "top1"), ("top-2", "top2"), ("top-3", "top3"),
                                                       ("median", "median"))},
        y_label="|activation|", log_y=True, refs=[fig.Ref(p.min_abs, f"|a| = {p.min_abs:g}")],
        spans=massive_spans(layers),
        caption=f"mean over {ctx.n} samples of the three largest |activations| and the median per block output; "
                f"shaded: massive layers (top-1 >= {p.min_abs:g} and >= {p.min_ratio:g}x median)")


def prompt_figure(ctx: Context, layer: int, layer_from: str) -> fig.Bars3D:
    """|a| of block ``layer``'s output on the documents' prompt: tokens x the largest features."""
    r = ctx.run(want(f"block.{layer}", "full").on(Prompt(PROMPT)), n=1)
    a = r.stat(f"block.{layer}", "full")[0].abs()  # (T, D)
    feats = a.amax(dim=0).topk(min(N_FEATURES, a.shape[1])).indices.sort().values
    vals = a[:, feats]
    t, f = divmod(int(vals.argmax()), vals.shape[1])
    tokens = [ctx.lm.tokenizer.decode([int(i)]) for i in r.input_ids[0]]
    return fig.Bars3D(
        title=f"{ctx.lm.name}: |activation| at layer {layer}", values=[[float(f"{v:.4g}") for v in row]
                                                                     for row in vals.tolist()],
        rows=[repr(tok) for tok in tokens], cols=[str(c) for c in feats.tolist()],
        peak=f"dim {int(feats[f])} at {tokens[t]!r}: {float(vals[t, f]):.4g}",
        caption=f'"{PROMPT}": block {layer} output ({layer_from}), tokens x the {len(feats)} features with the '
                "largest |activation|")


@check(MassiveDef, needs=[PROFILE])
def massive_exists(ctx: Context, p: MassiveDef) -> Measurement:
    r = ctx.run(PROFILE)
    L = ctx.lm.n_layers

    def decide(idx):
        prof = profile(r.select(idx), L)
        ratio = act.ratio(prof["top1"], prof["median"])
        # margin >= 1 exactly when the layer is massive: both conditions scaled to their threshold
        margin = (prof["top1"] / p.min_abs).minimum(ratio / p.min_ratio)
        best = int(margin.argmax())
        layers = massive_layers(prof, p)
        return Outcome(
            holds=bool(layers), primary="margin",
            summary=f"top-1/median {float(ratio[best]):.0f}x at layer {best} (top-1 {float(prof['top1'][best]):.1f}); "
                    f"massive layers: {ranges(layers) or 'none'}",
            values={"margin": float(margin[best]), "best_layer": best, "best_ratio": float(ratio[best]),
                    "best_top1": float(prof["top1"][best]), **{f"ratio.{l}": float(ratio[l]) for l in range(L)}})

    prof = profile(r, L)
    layers = massive_layers(prof, p)
    figures = [profile_figure(ctx, prof, layers, p)]
    if ctx.lm.tokenizer is not None:
        ratio = act.ratio(prof["top1"], prof["median"])
        at, why = (layers[0], "the first massive layer") if layers else \
            (int(ratio.argmax()), "no layer is massive: the largest top-1/median")
        figures.append(prompt_figure(ctx, at, why))
    return Measurement(decide, n=r.n, bound={"op": ">=", "value": 1.0, "abs": False},
                       details={"profile": {k: v.tolist() for k, v in prof.items()}, "massive_layers": layers},
                       figures=figures)


@check(NoParams, needs=[PROFILE], documented_only=True)
def layer_profile(ctx: Context, p: NoParams) -> Measurement:
    r = ctx.run(PROFILE)

    def decide(idx):
        prof = profile(r.select(idx), ctx.lm.n_layers)
        return Outcome(holds=True, summary=f"{ctx.lm.n_layers}-layer profile measured",
                       values={f"{k}.{l}": float(v[l]) for k, v in prof.items() for l in range(len(v))})

    prof = profile(r, ctx.lm.n_layers)
    return Measurement(decide, n=r.n, details={"profile": {k: v.tolist() for k, v in prof.items()}},
                       figures=[profile_figure(ctx, prof, massive_layers(prof, MassiveDef()), MassiveDef())])


@dataclass(frozen=True, kw_only=True)
class TableParams(Params):
    table: dict[str, tuple[float, ...]]


@check(TableParams, needs_model=False)
def table_consistent(ctx: None, p: TableParams) -> Measurement:
    table = {int(k): v for k, v in p.table.items()}
    bad = act.table_inconsistencies(table)
    return fixed(Outcome(holds=not bad, summary=f"{len(table)} rows read; {len(bad)} out of order: {'; '.join(bad)}",
                         reason="; ".join(bad)), details={"inconsistencies": bad})


@dataclass(frozen=True, kw_only=True)
class EmergenceParams(MassiveDef):
    jump: float
    early_frac: float
    plateau_band: float
    plateau_frac: float
    drop_max: float


@check(EmergenceParams, needs=[PROFILE])
def emergence(ctx: Context, p: EmergenceParams) -> Measurement:
    """Top-1 jumps into the emergence layer (the first massive one, as every claim defines it), early
    in the model; a plateau follows; the last layer drops. The layer is found again in each resample."""
    r = ctx.run(PROFILE)
    L = ctx.lm.n_layers
    conditions = [Condition("layer", "<", p.early_frac * L), Condition("jump", ">=", p.jump),
                  Condition("plateau_share", ">=", p.plateau_frac), Condition("drop", "<=", p.drop_max)]

    def measure(idx):
        prof = profile(r.select(idx), L)
        return prof, act.emergence(prof["top1"], prof["median"], min_abs=p.min_abs, min_ratio=p.min_ratio,
                                   jump=p.jump, plateau_band=p.plateau_band)

    def decide(idx):
        _, e = measure(idx)
        values = {k: e[k] for k in ("layer", "jump", "plateau_share", "drop", "largest_jump", "largest_jump_layer")
                  if e.get(k) is not None}
        failed = [c.describe() for c in conditions if not c.holds(values)]
        if e["layer"] is None:
            summary = (f"no layer is massive (top-1 >= {p.min_abs:g} and >= {p.min_ratio:g}x median): nothing "
                       f"emerges; largest layer-on-layer jump x{e['largest_jump']:.1f} into layer "
                       f"{e['largest_jump_layer']}")
        else:
            summary = (f"emergence layer {e['layer']} (the first massive one) of {L}: jump "
                       + (f"x{e['jump']:.1f}" if "jump" in e else "unmeasured (layer 0)")
                       + (f"; plateau {e['plateau_share']:.0%} of layers {e['layer']}..{L - 2} within "
                          f"x{p.plateau_band:g} of {e['plateau_level']:.1f}; last layer x{e['drop']:.2f} of plateau"
                          if "plateau_share" in e else "; no plateau after it")
                       + f"; all >=x{p.jump:g} jumps into layers {e['jumps_over_threshold']}")
        return Outcome(holds=not failed, primary="jump", summary=summary, values=values,
                       reason=f"fails: {', '.join(failed)}" if failed else "")

    prof, e = measure(None)
    top1 = prof["top1"].tolist()
    refs, spans = [], []
    if e.get("plateau_level") is not None:
        refs = [fig.Ref(e["plateau_level"], "plateau level"),
                fig.Ref(e["plateau_level"] * p.drop_max, f"drop bound x{p.drop_max:g}")]
        spans = [fig.Span(e["layer"], L - 2, "plateau")]
    where = (f"emergence layer {e['layer']} (the first massive one), jump x{e['jump']:.1f} into it (needs "
             f"x{p.jump:g})" if e.get("jump") is not None else
             "no massive layer" if e["layer"] is None else f"emergence layer {e['layer']}, no layer before it")
    return Measurement(decide, n=r.n, unit="x", bound={"op": ">=", "value": p.jump, "abs": False},
                       conditions=conditions, details=e,
                       figures=[fig.Lines(
                           title=f"{ctx.lm.name}: top-1 |activation| per layer", x=list(range(len(top1))),
                           series={"top-1": top1}, y_label="|activation|", log_y=True, refs=refs, spans=spans,
                           caption=f"{where}; plateau within x{p.plateau_band:g} of its median; last layer at most "
                                   f"x{p.drop_max:g} of it")])


DIMS = PROFILE | want("block.*", "feature_max")


def _dims(r, n_layers: int, p: MassiveDef):
    layers = massive_layers(profile(r, n_layers), p)
    counts, pairs = act.massive_dims([r.stat(f"block.{l}", "feature_max") for l in layers],
                                     [r.stat(f"block.{l}", "median") for l in layers],
                                     min_abs=p.min_abs, min_ratio=p.min_ratio)
    return layers, counts, pairs


def _dims_figure(ctx: Context, counts, pairs: int, what: str) -> fig.Bars:
    top = counts.most_common(12)
    return fig.Bars(title=f"{ctx.lm.name}: dims holding massive activations", categories=[str(d) for d, _ in top],
                    series={"share of (sample, layer) pairs": [c / pairs for _, c in top]}, x_label="feature dim",
                    y_label="share", unit="%", caption=f"over {pairs} massive (sample, layer) pairs; {what}")


@dataclass(frozen=True, kw_only=True)
class FixedDimsParams(MassiveDef):
    max_dims: int
    min_share: float


@check(FixedDimsParams, needs=[DIMS])
def fixed_dims(ctx: Context, p: FixedDimsParams) -> Measurement:
    r = ctx.run(DIMS)

    def decide(idx):
        layers, counts, pairs = _dims(r.select(idx), ctx.lm.n_layers, p)
        if not pairs:
            return Outcome(holds=False, summary="no massive activations", reason="no entry is massive in any layer")
        top_dim, top_n = counts.most_common(1)[0]
        share = top_n / pairs
        holds = len(counts) <= p.max_dims and share >= p.min_share
        return Outcome(
            holds=holds, primary="top_share",
            summary=f"{len(counts)} dims host massive activations over {pairs} (sample, layer) pairs; "
                    f"dim {top_dim} in {share:.0%}; dims {dict(counts.most_common(6))}",
            values={"n_dims": len(counts), "top_dim": top_dim, "top_share": share},
            reason="" if holds else f"needs <= {p.max_dims} dims and the top one in >= {p.min_share:.0%} of pairs")

    layers, counts, pairs = _dims(r, ctx.lm.n_layers, p)
    return Measurement(decide, n=r.n, unit="%", bound={"op": ">=", "value": p.min_share, "abs": False},
                       conditions=[Condition("n_dims", "<=", p.max_dims), Condition("top_share", ">=", p.min_share)],
                       details={"dims": dict(counts), "pairs": pairs, "layers": layers},
                       figures=[_dims_figure(ctx, counts, pairs, f"the claim needs <= {p.max_dims} dims, the top "
                                                                 f"one in >= {p.min_share:.0%}")] if pairs else [])


@dataclass(frozen=True, kw_only=True)
class DocumentedDimsParams(MassiveDef):
    dims: tuple[int, ...]


@check(DocumentedDimsParams, needs=[DIMS])
def documented_dims(ctx: Context, p: DocumentedDimsParams) -> Measurement:
    out_of_range = [d for d in p.dims if d >= ctx.lm.hidden_size]
    if out_of_range:
        raise ClaimInvalid(f"dims {out_of_range} do not exist: {ctx.lm.name} has hidden size {ctx.lm.hidden_size}")
    r = ctx.run(DIMS)

    def decide(idx):
        _, counts, pairs = _dims(r.select(idx), ctx.lm.n_layers, p)
        shares = {d: counts.get(d, 0) / pairs if pairs else 0.0 for d in p.dims}
        absent = [d for d, s in shares.items() if s == 0]
        return Outcome(holds=not absent, summary="share of massive (sample, layer) pairs per dim: "
                       + ", ".join(f"{d}: {s:.0%}" for d, s in shares.items()),
                       values={f"dim.{d}.share": s for d, s in shares.items()},
                       reason=f"dims {absent} hold no massive activation" if absent else "")

    _, counts, pairs = _dims(r, ctx.lm.n_layers, p)
    return Measurement(decide, n=r.n, unit="%", conditions=[Condition(f"dim.{d}.share", ">", 0.0) for d in p.dims],
                       details={"dims": dict(counts), "pairs": pairs})
