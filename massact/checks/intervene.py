"""A5: setting the massive activations to zero vs to their mean (Sun et al. 2024)."""
from __future__ import annotations

import math
from collections import Counter

import torch

from massact.checks.base import ClaimInvalid, Context, Measurement, check, emergence_layer
from massact.interventions import Intervention
from massact.metrics import activations as act


def massive_entries(ctx: Context, layer: int, p: dict) -> list[tuple[int, int, float]]:
    """(token, feature, mean signed value) of the massive top-k entries recurring in >= min_recur of samples."""
    r = ctx.run()
    vals, toks, feats = (r.stat(f"block.{layer}", k) for k in ("top_value", "top_token", "top_feature"))
    med = r.stat(f"block.{layer}", "median")
    massive = act.massive_mask(vals.abs(), med[:, None], min_abs=p["min_abs"], min_ratio=p["min_ratio"])  # (N, k)
    hits: Counter = Counter()
    sums: dict[tuple[int, int], float] = {}
    for i, j in massive.nonzero().tolist():
        t, f = int(toks[i, j]), int(feats[i, j])
        hits[(t, f)] += 1
        sums[(t, f)] = sums.get((t, f), 0.0) + float(vals[i, j])
    keep = [k for k, c in hits.items() if c >= p["min_recur"] * len(vals)]
    return [(t, f, sums[(t, f)] / hits[(t, f)]) for t, f in sorted(keep)]


def _ppl_ratio(ctx: Context, base: torch.Tensor, iv: Intervention) -> float:
    """exp(mean NLL under the intervention - mean NLL of the baseline) over this claim's samples."""
    return math.exp(float(ctx.run(iv).loss.mean() - base.mean()))


@check("min_abs", "min_ratio", "min_recur", "zero_min_ratio", "mean_max_ratio")
def zero_vs_mean(ctx: Context, p: dict) -> Measurement:
    full = ctx.full()  # the entries (and so the interventions) come from all samples, never a resample
    layer = emergence_layer(full, p)
    base = ctx.run().loss
    if base is None:
        raise ClaimInvalid(f"{ctx.lm.name} has no language-model head: perplexity is undefined")
    entries = massive_entries(full, layer, p)
    if not entries:
        raise ClaimInvalid(f"no massive entry at layer {layer} recurs in {p['min_recur']:.0%} of samples")
    zero = Intervention(kind="set_activations", entries=tuple((layer, t, f, 0.0) for t, f, _ in entries))
    mean = Intervention(kind="set_activations", entries=tuple((layer, t, f, round(v, 4)) for t, f, v in entries))
    # control: zero as many ordinary entries (tokens >= 1, other features) at the same layer
    g = torch.Generator().manual_seed(0)
    T, D = ctx.run().input_ids.shape[1], ctx.lm.hidden_size
    massive_feats = {f for _, f, _ in entries}
    others = [f for f in torch.randperm(D, generator=g).tolist() if f not in massive_feats][:len(entries)]
    rnd = Intervention(kind="set_activations", entries=tuple(
        (layer, int(t), f, 0.0) for t, f in zip(torch.randint(1, T, (len(others),), generator=g).tolist(), others)))
    z, m, c = _ppl_ratio(ctx, base, zero), _ppl_ratio(ctx, base, mean), _ppl_ratio(ctx, base, rnd)
    return Measurement(
        holds=z >= p["zero_min_ratio"] and m <= p["mean_max_ratio"], primary="zero_ppl_ratio",
        summary=f"layer {layer}, {len(entries)} entries {[(t, f) for t, f, _ in entries]}: perplexity x{z:.2f} set "
                f"to zero, x{m:.3f} set to their mean; x{c:.3f} zeroing as many ordinary entries "
                f"(baseline ppl {math.exp(float(base.mean())):.2f})",
        values={"zero_ppl_ratio": z, "mean_ppl_ratio": m, "control_ppl_ratio": c, "layer": layer},
        controls={"ordinary_entries": c >= p["zero_min_ratio"]},
        details={"layer": layer, "entries": [list(e) for e in entries]})
