"""Pure functions over reduced activation statistics: no model, no hooks, no I/O.

Inputs are per-sample tensors with samples first, as the capture reducers produce them:
top_abs (N, k), median (N,), feature_max (N, D). Per-layer quantities are the mean over samples,
as in the documents (per-sample top-k and median, then averaged).
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import torch


def layer_profile(top_abs: Sequence[torch.Tensor], median: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per layer: mean over samples of top-1/2/3 |a| and of the median |a|; each (L,)."""
    tops = torch.stack([t.double().mean(0) for t in top_abs])  # (L, k)
    return {
        "top1": tops[:, 0],
        "top2": tops[:, 1] if tops.shape[1] > 1 else tops[:, 0],
        "top3": tops[:, 2] if tops.shape[1] > 2 else tops[:, -1],
        "median": torch.stack([m.double().mean() for m in median]),
    }


def massive_mask(top1: torch.Tensor, median: torch.Tensor, *, min_abs: float, min_ratio: float) -> torch.Tensor:
    """Which entries are massive: |a| >= min_abs and |a| >= min_ratio x median (broadcasts)."""
    return (top1 >= min_abs) & (top1 >= min_ratio * median)


def ratio(top1: torch.Tensor, median: torch.Tensor) -> torch.Tensor:
    return top1 / median.clamp(min=torch.finfo(torch.float64).tiny)


def relative_change(base: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """(new - base) / base, elementwise; base must be non-zero."""
    return (new - base) / base


def emergence(
    top1: torch.Tensor, *, jump: float, early_frac: float, plateau_band: float, plateau_frac: float, drop_max: float
) -> dict:
    """Locate the jump, plateau and final drop of the per-layer top-1 profile (L,).

    The emergence layer is the largest layer-on-layer jump within the first ``early_frac`` of
    the layers. The plateau is the layers from it to the second-to-last; it holds when at least
    ``plateau_frac`` of them lie within a factor ``plateau_band`` of their median. The drop holds
    when the last layer is at most ``drop_max`` x that median.
    """
    L = len(top1)
    steps = top1[1:] / top1[:-1].clamp(min=1e-12)  # steps[i] = top1[i+1] / top1[i]
    n_early = max(1, int(L * early_frac))
    j = int(steps[: n_early - 1].argmax()) + 1 if n_early > 1 else 1
    jump_factor = float(steps[j - 1])
    plateau = top1[j:L - 1]
    level = float(plateau.median()) if len(plateau) else float("nan")
    inside = ((plateau <= level * plateau_band) & (plateau >= level / plateau_band)).double()
    share = float(inside.mean()) if len(plateau) else 0.0
    drop = float(top1[-1] / level) if len(plateau) else float("nan")
    return {
        "layer": j,
        "jump": jump_factor,
        "jumps_over_threshold": [i + 1 for i, s in enumerate(steps.tolist()) if s >= jump],
        "plateau_level": level,
        "plateau_share": share,
        "drop": drop,
        "jump_ok": jump_factor >= jump,
        "plateau_ok": share >= plateau_frac,
        "drop_ok": drop <= drop_max,
    }


def massive_dims(
    feature_max: Sequence[torch.Tensor], median: Sequence[torch.Tensor], *, min_abs: float, min_ratio: float
) -> tuple[Counter, int]:
    """Count, over (sample, layer) pairs, the feature dims holding a massive activation.

    feature_max[l] is (N, D) max |a| over tokens, median[l] is (N,). Returns the dim counter and
    the number of (sample, layer) pairs that had any massive entry.
    """
    counts: Counter = Counter()
    pairs = 0
    for fm, med in zip(feature_max, median):
        hit = massive_mask(fm.double(), med.double()[:, None], min_abs=min_abs, min_ratio=min_ratio)  # (N, D)
        for row in hit:
            dims = row.nonzero().flatten().tolist()
            if dims:
                pairs += 1
                counts.update(dims)
    return counts, pairs


def table_inconsistencies(table: dict[int, Sequence[float]]) -> list[str]:
    """Rows of a documented (top1, top2, top3, median) table that are not in decreasing order."""
    names = ("top-1", "top-2", "top-3", "median")
    out = []
    for layer, row in sorted(table.items()):
        for a in range(len(row) - 1):
            if row[a + 1] > row[a]:
                out.append(f"layer {layer}: {names[a + 1]} {row[a + 1]} > {names[a]} {row[a]}")
    return out
