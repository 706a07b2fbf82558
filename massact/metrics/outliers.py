"""Pure statistics of outliers in weights and activations: no model, no hooks, no I/O.

Tail statistics are computed in float64 and in chunks, so an embedding matrix of tens of
millions of entries costs a few hundred MB at most, never a float64 copy of every temporary.
"""
from __future__ import annotations

import math

import torch

_CHUNK = 1 << 22  # entries per float64 chunk


def _chunks(x: torch.Tensor):
    flat = x.detach().reshape(-1)
    for i in range(0, flat.numel(), _CHUNK):
        yield flat[i:i + _CHUNK].double()


def moments(x: torch.Tensor) -> dict[str, float]:
    """Mean, std (population), excess kurtosis and max |x - mean| / std of every entry of ``x``."""
    n = x.numel()
    if n < 2:
        raise ValueError(f"need at least 2 entries, got {n}")
    mean = sum(float(c.sum()) for c in _chunks(x)) / n
    m2 = m4 = 0.0
    dev = 0.0
    for c in _chunks(x):
        d2 = (c - mean).square()
        m2 += float(d2.sum())
        m4 += float(d2.square().sum())
        dev = max(dev, float(d2.max()))
    m2, m4 = m2 / n, m4 / n
    if m2 == 0:
        raise ValueError("all entries are equal: the tails are undefined")
    std = math.sqrt(m2)
    return {"mean": mean, "std": std, "excess_kurtosis": m4 / m2**2 - 3.0, "max_z": math.sqrt(dev) / std, "n": n}


def block_sums(w: torch.Tensor, blocks: int) -> torch.Tensor:
    """A matrix's rows in ``blocks`` consecutive runs, per run: entries, the sums of d, d^2, d^3, d^4,
    and the max and min of d, where d = w - the matrix's mean; (blocks, 7) float64. The moments of
    any multiset of runs follow from them (moments_of_blocks) without touching the weights again."""
    rows = w.detach().reshape(w.shape[0], -1)
    if not 1 <= blocks <= rows.shape[0]:
        raise ValueError(f"{blocks} blocks of a matrix with {rows.shape[0]} rows")
    center = moments(rows)["mean"]
    edges = [b * rows.shape[0] // blocks for b in range(blocks + 1)]
    out = torch.empty(blocks, 7, dtype=torch.float64)
    for b in range(blocks):
        d = rows[edges[b]:edges[b + 1]].double() - center
        out[b] = torch.stack([torch.tensor(float(d.numel()), dtype=torch.float64), d.sum(), d.square().sum(),
                              d.pow(3).sum(), d.square().square().sum(), d.max(), d.min()])
    return out


def moments_of_blocks(sums: torch.Tensor) -> dict[str, float]:
    """moments() of the entries of the runs whose block_sums are the rows of ``sums`` (repeats count)."""
    n, s1, s2, s3, s4 = (float(sums[:, i].sum()) for i in range(5))
    d = s1 / n  # the mean's offset from the matrix's
    m2 = s2 / n - d * d
    m4 = s4 / n - 4 * d * s3 / n + 6 * d * d * s2 / n - 3 * d ** 4
    if m2 <= 0:
        raise ValueError("all entries are equal: the tails are undefined")
    std = math.sqrt(m2)
    far = max(float(sums[:, 5].max()) - d, d - float(sums[:, 6].min()))
    return {"std": std, "excess_kurtosis": m4 / m2**2 - 3.0, "max_z": far / std, "n": int(n)}


def excess_kurtosis(x: torch.Tensor) -> float:
    """E[(x - mean)^4] / var^2 - 3 over every entry: 0 for a Gaussian, > 0 for heavy tails."""
    return moments(x)["excess_kurtosis"]


def kurtosis_se(n: int) -> float:
    """Standard error of a Gaussian sample's excess kurtosis, sqrt(24 / n) (large-n)."""
    return math.sqrt(24.0 / n)


def tail_share(x: torch.Tensor, *, k: float) -> float:
    """Share of entries farther than ``k`` standard deviations from the mean."""
    m = moments(x)
    far = sum(int(((c - m["mean"]).abs() > k * m["std"]).sum()) for c in _chunks(x))
    return far / m["n"]


def top_count(m: int, frac: float) -> int:
    """How many of ``m`` entries are the top ``frac``: ceil(frac * m), at least 1."""
    if not 0 < frac <= 1:
        raise ValueError(f"frac must lie in (0, 1], not {frac}")
    return max(1, math.ceil(frac * m - 1e-9))


def energy_share(a: torch.Tensor, *, frac: float) -> torch.Tensor:
    """Per sample (first dim): share of sum(a^2) carried by the top ``frac`` of entries by |a|; (N,)."""
    sq = a.detach().double().reshape(len(a), -1).square()  # (N, M)
    k = top_count(sq.shape[1], frac)
    total = sq.sum(1)
    return sq.topk(k, dim=1).values.sum(1) / total.clamp(min=torch.finfo(torch.float64).tiny)


def top_energy_share(w: torch.Tensor, *, k: int) -> float:
    """Share of sum(w^2) carried by the ``k`` entries of largest |w|; w any shape."""
    sq = w.detach().double().reshape(-1).square()
    if not 1 <= k <= sq.numel():
        raise ValueError(f"k must lie in [1, {sq.numel()}], not {k}")
    return float(sq.topk(k).values.sum() / sq.sum())


def softmax_mass(scores: torch.Tensor, idx: torch.Tensor | list[int]) -> float:
    """Probability mass softmax(scores) puts on the entries ``idx``; scores (M,)."""
    p = torch.softmax(scores.double(), dim=0)
    return float(p[torch.as_tensor(idx, dtype=torch.long)].sum())


def scores_with_outliers(*, n: int, mean: float, std: float, outliers: list[float], seed: int) -> torch.Tensor:
    """n scores ~ N(mean, std) (seeded) followed by ``outliers``: the document's softmax demo; (n + k,)."""
    g = torch.Generator().manual_seed(seed)
    bulk = torch.randn(n, generator=g, dtype=torch.float64) * std + mean
    return torch.cat([bulk, torch.tensor(outliers, dtype=torch.float64)])
