"""Pure functions over per-head attention statistics: no model, no hooks, no I/O.

Per-sample head statistics come as (N, L, H): samples, layers, query heads.
"""
from __future__ import annotations

from collections import Counter

import torch


def head_scores(per_sample: torch.Tensor) -> torch.Tensor:
    """Mean over samples; (N, L, H) -> (L, H)."""
    return per_sample.double().mean(0)


def ranked(scores: torch.Tensor, k: int, *, top: bool = True) -> list[tuple[int, int]]:
    """The k (layer, head) pairs with the highest (top) or lowest scores, best first."""
    L, H = scores.shape
    order = scores.flatten().argsort(descending=top)[:k].tolist()
    return [(i // H, i % H) for i in order]


class TooFewHeads(ValueError):
    """A random draw asked for more heads than the model has to draw from."""


def random_heads(L: int, H: int, k: int, *, seed: int, exclude: list[tuple[int, int]] = ()) -> list[tuple[int, int]]:
    """k distinct (layer, head) pairs drawn with ``seed``, none of them in ``exclude``; TooFewHeads, naming
    both numbers, when fewer than k heads lie outside ``exclude``."""
    g = torch.Generator().manual_seed(seed)
    pool = [(i // H, i % H) for i in torch.randperm(L * H, generator=g).tolist()]
    pool = [p for p in pool if p not in set(exclude)]
    if len(pool) < k:
        raise TooFewHeads(f"{k} random heads asked for, but only {len(pool)} of the model's {L * H} heads "
                          f"({L} layers x {H}) lie outside the {L * H - len(pool)} excluded")
    return pool[:k]


def layer_matched_heads(heads: list[tuple[int, int]], H: int, *, seed: int,
                        exclude: list[tuple[int, int]] = ()) -> list[tuple[int, int]] | None:
    """As many distinct heads as ``heads``, each drawn (with ``seed``) from the layer of one of them,
    none of them in ``exclude``: a random control that differs from ``heads`` only in the head.
    None when a layer has too few heads outside ``exclude``."""
    g = torch.Generator().manual_seed(seed)
    out: list[tuple[int, int]] = []
    for layer, count in sorted(Counter(l for l, _ in heads).items()):
        pool = [(layer, h) for h in torch.randperm(H, generator=g).tolist() if (layer, h) not in set(exclude)]
        if len(pool) < count:
            return None
        out += pool[:count]
    return out


def split_half_agreement(per_sample: torch.Tensor, k: int) -> float:
    """Share of the top-k heads ranked on the first half of samples that are top-k on the second."""
    n = per_sample.shape[0] // 2
    a, b = ranked(head_scores(per_sample[:n]), k), ranked(head_scores(per_sample[n:]), k)
    return len(set(a) & set(b)) / k


def norm_vs_others(norms: torch.Tensor) -> torch.Tensor:
    """Each token's norm over the median norm of the other tokens (the lower of the two middles, as
    torch.median gives it); norms (..., T) with T >= 2 -> (..., T)."""
    T = norms.shape[-1]
    if T < 2:
        raise ValueError(f"a token's norm against the other tokens' needs 2 tokens or more, not {T}")
    s, order = norms.sort(dim=-1)
    rank = order.argsort(dim=-1)  # where each token sits among them
    k = (T - 2) // 2  # the lower median of the T - 1 others: s[k] if the token sits above it, else s[k + 1]
    return norms / torch.where(rank > k, s[..., k:k + 1], s[..., k + 1:k + 2])


def at_token(x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """x (N, ..., T) read at one token per sample, tokens (N,) -> (N, ...)."""
    index = tokens.reshape(-1, *([1] * (x.dim() - 1))).expand(*x.shape[:-1], 1)
    return x.gather(-1, index).squeeze(-1)
