"""Family O: outliers in weights and activations (seed 004)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from massact import figures as fig
from massact.arch import read_weight
from massact.checks.base import (PROFILE, ClaimInvalid, Condition, Context, MassiveDef, Measurement, Outcome, Params,
                                 check, check_layer, fixed, massive_layers, massive_spans, profile, ranges)
from massact.reducers import ENERGY_FRACS
from massact.metrics import outliers as out
from massact.requests import want


def _layers(names: tuple, n_layers: int) -> list[int]:
    """Record layer names -> indices: ints as given, "middle" = L // 2, "last" = L - 1."""
    named = {"middle": n_layers // 2, "last": n_layers - 1}
    layers = []
    for x in names:
        l = named.get(x, x)
        if not isinstance(l, int):
            raise ClaimInvalid(f"layer {x!r} is neither an index nor one of {sorted(named)}")
        if not 0 <= l < n_layers:
            raise ClaimInvalid(f"layer {l} does not exist: the model has {n_layers} layers")
        if l not in layers:
            layers.append(l)
    return layers


def weight_matrices(ctx: Context, layer: int) -> dict[str, torch.Tensor]:
    """The document's three kinds, per layer: FFN up (for gated MLPs gate and up), attention output."""
    a, model = ctx.lm.adapter, ctx.lm.model
    paths = dict((role, path) for role, path, _ in a.mlp_checkpoints)
    mats = {"ffn_up": a.weight(model, layer, paths["pre_act"])}
    if "up" in paths:  # gated MLP: gate_proj sits at pre_act, up_proj is the second up projection
        mats["ffn_up.up_proj"] = a.weight(model, layer, paths["up"])
    mats["attn_output"] = a.weight(model, layer, a.out_proj)
    return mats


@dataclass(frozen=True, kw_only=True)
class HeavyParams(Params):
    layers: tuple[int | str, ...]
    min_kurtosis_se: float
    min_max_z: float


def _margin(m: dict, p: HeavyParams) -> float:
    """Both tests scaled to their threshold: > 1 exactly when the matrix is heavy tailed."""
    return min(m["excess_kurtosis"] / (p.min_kurtosis_se * out.kurtosis_se(m["n"])), m["max_z"] / p.min_max_z)


def _heavy(m: dict, p: HeavyParams) -> bool:
    return _margin(m, p) > 1


def _histogram(w: torch.Tensor) -> tuple[list[float], list[float]]:
    """Counts of the weights in 60 bins between their extremes."""
    h = torch.histogram(w.detach().float().flatten(), bins=60)
    return h.bin_edges.tolist(), h.hist.tolist()


@check(HeavyParams)
def weights_heavy_tailed(ctx: Context, p: HeavyParams) -> Measurement:
    """Every named matrix: excess kurtosis significantly > 0 and its farthest entry > min_max_z std out.

    The interval resamples the matrices' rows: each unit is one row of the smallest matrix and the
    matching run of rows of every larger one, so it says how firmly the few farthest weights decide."""
    mats = {"embeddings": read_weight(ctx.lm.model.get_input_embeddings())}
    for l in _layers(p.layers, ctx.lm.n_layers):
        mats.update({f"{k}.{l}": w for k, w in weight_matrices(ctx, l).items()})
    units = min(w.shape[0] for w in mats.values())
    sums = {k: out.block_sums(w, units) for k, w in mats.items()}
    # control: a Gaussian matrix of each size, which must not pass (max |z| grows ~ sqrt(2 ln n))
    g = torch.Generator().manual_seed(0)
    gauss = [k for k, w in mats.items() if _heavy(out.moments(torch.randn(w.numel(), generator=g)), p)]

    def decide(idx):
        stats = {k: out.moments_of_blocks(s if idx is None else s[idx]) for k, s in sums.items()}
        light = [k for k, m in stats.items() if not _heavy(m, p)]
        values = {"margin": min(_margin(m, p) for m in stats.values()), "gaussian_passing": len(gauss),
                  "min_kurtosis": min(m["excess_kurtosis"] for m in stats.values()),
                  "min_max_z": min(m["max_z"] for m in stats.values())}
        for k, m in stats.items():
            values[f"kurtosis.{k}"], values[f"max_z.{k}"] = m["excess_kurtosis"], m["max_z"]
        return Outcome(
            holds=not light, primary="margin",
            summary="; ".join(f"{k}: kurtosis {m['excess_kurtosis']:.2f}, max {m['max_z']:.1f} std"
                              for k, m in stats.items()),
            values=values, controls={"gaussian_same_size": Condition("gaussian_passing", ">=", len(mats))},
            reason=f"not heavy tailed: {', '.join(light)}" if light else "")

    stats = {k: out.moments(w) for k, w in mats.items()}
    # every layer's kurtosis, for the report: cheap next to a forward pass
    per_layer = {}
    for l in range(ctx.lm.n_layers):
        for k, w in weight_matrices(ctx, l).items():
            per_layer.setdefault(k, []).append(out.excess_kurtosis(w))
    figures = []
    for k, w in mats.items():
        edges, counts = _histogram(w)
        figures.append(fig.Histogram(title=f"{ctx.lm.name}: {k} weights", edges=edges, counts={k: counts},
                                     x_label="weight", log_y=True,
                                     caption=f"excess kurtosis {stats[k]['excess_kurtosis']:.2f}, farthest entry "
                                             f"{stats[k]['max_z']:.1f} std from the mean (log-scale counts, as "
                                             "document 004 draws them)"))
    figures.append(fig.Lines(title=f"{ctx.lm.name}: excess kurtosis of the weights per layer",
                             x=list(range(ctx.lm.n_layers)), series=per_layer, y_label="excess kurtosis",
                             refs=[fig.Ref(0.0, "Gaussian")], caption="0 for a Gaussian; > 0 for heavy tails"))
    return Measurement(decide, n=units, resampled="row", bound={"op": ">", "value": 1.0, "abs": False},
                       details={"matrices": stats, "per_layer_kurtosis": per_layer, "gaussian_passing": gauss},
                       figures=figures)


@dataclass(frozen=True, kw_only=True)
class EnergyParams(Params):
    layer: int
    role: Literal["input", "pre_act"]
    frac: float
    min_share: float


def _energy_needs(p: EnergyParams):
    return [want(f"mlp.{p.layer}.{p.role}", "full")]


@check(EnergyParams, needs=_energy_needs)
def energy_concentration(ctx: Context, p: EnergyParams) -> Measurement:
    """Per sample: share of the sum of squares at one MLP checkpoint carried by its top ``frac`` entries."""
    l, role = check_layer(ctx, p.layer), p.role
    if role not in ctx.lm.adapter.checkpoint_roles():
        raise ClaimInvalid(f"no MLP checkpoint {role!r}: {ctx.lm.adapter.name} has "
                           f"{ctx.lm.adapter.checkpoint_roles()}")
    full = ctx.run(_energy_needs(p)[0]).stat(f"mlp.{l}.{role}", "full")  # (N, T, D)
    share_all, half_all = out.energy_share(full, frac=p.frac), out.energy_share(full, frac=p.frac / 2)
    k = out.top_count(full[0].numel(), p.frac)

    def decide(idx):
        share, half = (share_all, half_all) if idx is None else (share_all[idx], half_all[idx])
        mean = float(share.mean())
        return Outcome(
            holds=mean > p.min_share, primary="share",
            summary=f"mlp.{l}.{role}: top {p.frac:.2%} of entries ({k} of {full[0].numel()}) carry "
                    f"{mean:.1%} of the energy (top {p.frac / 2:.3%}: {float(half.mean()):.1%}), "
                    f"mean over {len(share)} samples",
            values={"share": mean, "share_half_frac": float(half.mean()), "entries": k})

    return Measurement(decide, n=len(full), unit="%", bound={"op": ">", "value": p.min_share, "abs": False},
                       details={"per_sample": share_all.tolist()})


ENERGY = PROFILE | want("block.*", "energy_share") | want("mlp.*.input", "energy_share") \
    | want("mlp.*.pre_act", "energy_share")
PLACES = {"block": "block output", "mlp_input": "MLP input", "pre_act": "MLP pre-activation"}


@dataclass(frozen=True, kw_only=True)
class EnergyProfileParams(MassiveDef):
    frac: Literal[0.0005, 0.001]  # one of capture.ENERGY_FRACS
    min_share: float


@check(EnergyProfileParams, needs=[ENERGY])
def energy_profile(ctx: Context, p: EnergyProfileParams) -> Measurement:
    """Per layer, the share of the energy (sum a^2) the top ``frac`` of entries carry, at block outputs,
    MLP inputs and MLP pre-activations; the claim is decided on the block outputs of the massive layers
    (found again in each resample): the smallest share there must exceed ``min_share``."""
    r = ctx.run(ENERGY)
    L, j = ctx.lm.n_layers, ENERGY_FRACS.index(p.frac)
    points = {"block": "block.{}", "mlp_input": "mlp.{}.input", "pre_act": "mlp.{}.pre_act"}
    per = {k: torch.stack([r.stat(pt.format(l), "energy_share")[:, j] for l in range(L)], dim=1)  # (N, L)
           for k, pt in points.items()}

    def measure(idx):
        prof = {k: (v if idx is None else v[idx]).mean(0) for k, v in per.items()}  # (L,) each
        return prof, massive_layers(profile(r.select(idx), L), p)

    prof, layers = measure(None)
    if not layers:
        peak = int(prof["block"].argmax())
        raise ClaimInvalid(f"no layer of {ctx.lm.name} has massive activations, the layers the claim is decided at; "
                           f"the top {p.frac:.2%} of block-output entries carry at most "
                           f"{float(prof['block'][peak]):.1%} of the energy (layer {peak}), "
                           f"{float(prof['block'].min()):.1%} at the least")

    def decide(idx):
        prof, layers = measure(idx)
        if not layers:
            raise ClaimInvalid("no massive layer in this resample")
        worst = min(layers, key=lambda l: float(prof["block"][l]))
        least = float(prof["block"][worst])
        above = int((prof["block"] > p.min_share).sum())
        return Outcome(
            holds=least > p.min_share, primary="least_share",
            summary=f"top {p.frac:.2%} of entries: block outputs of the massive layers {ranges(layers)} carry "
                    f"{least:.1%} of the energy at the least (layer {worst}); {above} of {L} layers above "
                    f"{p.min_share:.0%}; layer 0: block {float(prof['block'][0]):.1%}, MLP input "
                    f"{float(prof['mlp_input'][0]):.1%}, pre-activation {float(prof['pre_act'][0]):.1%}",
            values={"least_share": least, "least_layer": worst, "layers_above": above,
                    **{f"{k}.{l}": float(v[l]) for k, v in prof.items() for l in range(L)}},
            reason="" if least > p.min_share else f"layer {worst}: {least:.1%} <= {p.min_share:.0%}")

    return Measurement(
        decide, n=r.n, unit="%", bound={"op": ">", "value": p.min_share, "abs": False},
        details={"massive_layers": layers, **{k: v.tolist() for k, v in prof.items()}},
        figures=[fig.Lines(title=f"{ctx.lm.name}: energy share of the top {p.frac:.2%} of entries per layer",
                           x=list(range(L)), series={PLACES[k]: v.tolist() for k, v in prof.items()},
                           y_label="share of sum a^2", unit="%", refs=[fig.Ref(p.min_share, "claim")],
                           spans=massive_spans(layers),
                           caption=f"mean over {r.n} samples of each sample's share of the sum of squares carried "
                                   f"by its top {p.frac:.2%} entries by |a|; shaded: the massive layers, where the "
                                   "claim is decided")])


@dataclass(frozen=True, kw_only=True)
class SoftmaxParams(Params):
    n: int
    mean: float
    std: float
    outliers: tuple[float, ...]
    seed: int
    min_mass: float


@check(SoftmaxParams, needs_model=False)
def softmax_amplification(ctx: None, p: SoftmaxParams) -> Measurement:
    """The document's demo: softmax mass of the outlier scores among n Gaussian ones."""
    k = len(p.outliers)
    scores = out.scores_with_outliers(n=p.n, mean=p.mean, std=p.std, outliers=list(p.outliers), seed=p.seed)
    idx = list(range(p.n, p.n + k))
    mass = out.softmax_mass(scores, idx)
    # control: the same k positions holding ordinary draws instead of outliers
    plain = out.scores_with_outliers(n=p.n + k, mean=p.mean, std=p.std, outliers=[], seed=p.seed)
    control = out.softmax_mass(plain, idx)
    return fixed(Outcome(
        holds=mass >= p.min_mass, primary="mass",
        summary=f"{k} outliers {list(p.outliers)} take {mass:.5%} of the softmax mass over {p.n} scores "
                f"~ N({p.mean:g}, {p.std:g}); without outliers those {k} entries take {control:.3%}",
        values={"mass": mass, "control_mass": control},
        controls={"no_outliers": Condition("control_mass", ">=", p.min_mass)}), unit="%", bound={"op": ">=", "value": p.min_mass,
                                                                          "abs": False})
