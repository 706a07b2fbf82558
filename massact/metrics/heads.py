"""Pure functions over per-head attention statistics: no model, no hooks, no I/O.

Per-sample head statistics come as (N, L, H): samples, layers, query heads.
"""
from __future__ import annotations

import torch


def head_scores(per_sample: torch.Tensor) -> torch.Tensor:
    """Mean over samples; (N, L, H) -> (L, H)."""
    return per_sample.double().mean(0)


def ranked(scores: torch.Tensor, k: int, *, top: bool = True) -> list[tuple[int, int]]:
    """The k (layer, head) pairs with the highest (top) or lowest scores, best first."""
    L, H = scores.shape
    order = scores.flatten().argsort(descending=top)[:k].tolist()
    return [(i // H, i % H) for i in order]


def random_heads(L: int, H: int, k: int, *, seed: int, exclude: list[tuple[int, int]] = ()) -> list[tuple[int, int]]:
    """k distinct (layer, head) pairs drawn with ``seed``, none of them in ``exclude``."""
    g = torch.Generator().manual_seed(seed)
    pool = [(i // H, i % H) for i in torch.randperm(L * H, generator=g).tolist()]
    return [p for p in pool if p not in set(exclude)][:k]


def split_half_agreement(per_sample: torch.Tensor, k: int) -> float:
    """Share of the top-k heads ranked on the first half of samples that are top-k on the second."""
    n = per_sample.shape[0] // 2
    a, b = ranked(head_scores(per_sample[:n]), k), ranked(head_scores(per_sample[n:]), k)
    return len(set(a) & set(b)) / k
