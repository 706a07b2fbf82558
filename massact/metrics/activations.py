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


def emergence_layer(top1: torch.Tensor, median: torch.Tensor, *, min_abs: float, min_ratio: float) -> int | None:
    """The emergence layer: the first layer whose top-1 is massive (None when no layer is).

    The one definition every claim uses; on the document's gpt2 table (top-1/median 169x, 859x,
    2946x for layers 0-2) it gives layer 2, the layer the document names.
    """
    hit = massive_mask(top1, median, min_abs=min_abs, min_ratio=min_ratio).nonzero().flatten()
    return int(hit[0]) if len(hit) else None


def emergence(top1: torch.Tensor, median: torch.Tensor, *, min_abs: float, min_ratio: float, jump: float,
              plateau_band: float) -> dict:
    """The jump into the emergence layer, the plateau after it and the last layer's drop; top1, median (L,).

    ``layer`` is the emergence layer (None: no layer is massive, and only the largest jump is
    given); ``jump`` is top-1 there over top-1 of the layer before (absent at layer 0). The
    plateau is the layers from it to the second-to-last; ``plateau_share`` is the share of them
    within a factor ``plateau_band`` of their median, ``drop`` the last layer's top-1 over that median.
    """
    L = len(top1)
    steps = top1[1:] / top1[:-1].clamp(min=1e-12)  # steps[i] = top1[i+1] / top1[i]
    out = {"largest_jump": float(steps.max()), "largest_jump_layer": int(steps.argmax()) + 1,
           "jumps_over_threshold": [i + 1 for i, s in enumerate(steps.tolist()) if s >= jump]}
    j = emergence_layer(top1, median, min_abs=min_abs, min_ratio=min_ratio)
    out["layer"] = j
    if j is None:
        return out
    if j > 0:
        out["jump"] = float(steps[j - 1])
    plateau = top1[j:L - 1]
    if len(plateau):
        level = float(plateau.median())
        inside = (plateau <= level * plateau_band) & (plateau >= level / plateau_band)
        out.update(plateau_level=level, plateau_share=float(inside.double().mean()), drop=float(top1[-1] / level))
    return out


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
