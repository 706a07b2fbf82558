"""SVD geometry of a down projection and the regressions built on it: pure functions, float64.

Conventions: a weight is (out, in) = (hidden, intermediate), so W = U S V^T with the *right*
singular vectors V[:, k] in the intermediate space (where the down projection's input h lives)
and the left ones U[:, k] in the hidden space. Per-token inputs are (M, I), outputs (M,).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Singular:
    values: torch.Tensor  # (k,), descending
    left: torch.Tensor  # (out, k)
    right: torch.Tensor  # (in, k)


@dataclass(frozen=True)
class Fit:
    slope: float
    intercept: float
    r2: float
    n: int


def top_singular(w: torch.Tensor, k: int = 5) -> Singular:
    """The k largest singular values of w (out, in) and their vectors (float64)."""
    if w.ndim != 2:
        raise ValueError(f"expected a 2-d weight (out, in), got shape {tuple(w.shape)}")
    u, s, vh = torch.linalg.svd(w.detach().double(), full_matrices=False)
    k = min(k, len(s))
    return Singular(s[:k], u[:, :k], vh[:k].T)


def oriented(s: Singular, row: int) -> Singular:
    """``s`` with each pair's joint sign chosen so that u_k[row] >= 0.

    SVD fixes (u_k, v_k) only up to a joint sign; with this choice the projection h . v_k
    predicts output ``row`` with slope sigma_k * u_k[row] >= 0.
    """
    flip = torch.where(s.left[row] < 0, -1.0, 1.0).to(s.left)
    return Singular(s.values, s.left * flip, s.right * flip)


def singular_ratio(values: torch.Tensor) -> float:
    """sigma1 / sigma2 (inf when sigma2 is 0)."""
    s1, s2 = float(values[0]), float(values[1])
    return math.inf if s2 == 0 else s1 / s2


def linear_fit(x: torch.Tensor, y: torch.Tensor) -> Fit:
    """Ordinary least squares y = slope x + intercept, with R^2 (0 when x or y is constant)."""
    x, y = x.double().flatten(), y.double().flatten()
    if x.shape != y.shape or len(x) < 2:
        raise ValueError(f"need two equal-length series of >= 2 points, got {tuple(x.shape)} and {tuple(y.shape)}")
    dx, dy = x - x.mean(), y - y.mean()
    sxx, syy, sxy = float(dx @ dx), float(dy @ dy), float(dx @ dy)
    slope = sxy / sxx if sxx > 0 else 0.0
    r2 = sxy * sxy / (sxx * syy) if sxx > 0 and syy > 0 else 0.0
    return Fit(slope, float(y.mean()) - slope * float(x.mean()), min(r2, 1.0), len(x))


def r2_many(xs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """R^2 of y (M,) on each column of xs (M, K) separately; (K,)."""
    xs, y = xs.double(), y.double().flatten()
    dx, dy = xs - xs.mean(0), y - y.mean()
    sxx, syy, sxy = (dx * dx).sum(0), dy @ dy, dy @ dx
    ok = (sxx > 0) & (syy > 0)
    return torch.where(ok, sxy * sxy / (sxx * syy).clamp(min=torch.finfo(torch.float64).tiny), 0.0).clamp(max=1.0)


def leverage(x: torch.Tensor) -> torch.Tensor:
    """Hat-matrix diagonal of the simple regression on x: 1/n + (x - mean)^2 / Sxx; (M,)."""
    x = x.double().flatten()
    d = x - x.mean()
    sxx = float(d @ d)
    return torch.full_like(x, 1 / len(x)) + (d * d / sxx if sxx > 0 else 0.0)


def low_leverage(x: torch.Tensor, *, frac: float) -> torch.Tensor:
    """Indices of the points left after dropping the ceil(frac * M) highest-leverage ones of x (M,).

    A few huge tokens can make any direction that touches them score R^2 ~ 1; a relation that is
    real holds on the rest of the tokens too.
    """
    if not 0 <= frac < 1:
        raise ValueError(f"frac must be in [0, 1), not {frac}")
    x = x.double().flatten()
    return leverage(x).argsort(descending=True)[math.ceil(frac * len(x)):].sort().values


def drop_high_leverage(x: torch.Tensor, y: torch.Tensor, *, frac: float) -> tuple[Fit, int]:
    """The fit after dropping the ceil(frac * M) highest-leverage points, and how many were dropped."""
    keep = low_leverage(x, frac=frac)
    x, y = x.double().flatten(), y.double().flatten()
    return linear_fit(x[keep], y[keep]), len(x) - len(keep)


def random_unit_directions(dim: int, count: int, *, seed: int = 0) -> torch.Tensor:
    """count Gaussian directions normalised to unit length, seeded; (dim, count)."""
    g = torch.Generator().manual_seed(seed)
    d = torch.randn(dim, count, generator=g, dtype=torch.float64)
    return d / d.norm(dim=0, keepdim=True)


def cosine_to(h: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """cos(h_t, v) per row of h (M, I); 0 for an all-zero row; (M,)."""
    h, v = h.double(), v.double().flatten()
    norms = h.norm(dim=1) * v.norm()
    return torch.where(norms > 0, (h @ v) / norms.clamp(min=torch.finfo(torch.float64).tiny), 0.0)


def cohens_d(a: torch.Tensor, b: torch.Tensor) -> float:
    """(mean a - mean b) / pooled standard deviation; nan with fewer than 2 in a group."""
    a, b = a.double().flatten(), b.double().flatten()
    na, nb = len(a), len(b)
    if na < 2 or nb < 2:
        return math.nan
    pooled = ((na - 1) * float(a.var()) + (nb - 1) * float(b.var())) / (na + nb - 2)
    diff = float(a.mean() - b.mean())
    if pooled == 0:
        return 0.0 if diff == 0 else math.copysign(math.inf, diff)
    return diff / math.sqrt(pooled)


def compare_groups(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    """Means, standard deviations, counts, mean ratio and Cohen's d of group a vs group b."""
    a, b = a.double().flatten(), b.double().flatten()
    mean_a = float(a.mean()) if len(a) else math.nan
    mean_b = float(b.mean()) if len(b) else math.nan
    return {"mean_a": mean_a, "mean_b": mean_b,
            "std_a": float(a.std()) if len(a) > 1 else math.nan, "std_b": float(b.std()) if len(b) > 1 else math.nan,
            "n_a": len(a), "n_b": len(b), "ratio": mean_a / mean_b if mean_b else math.inf, "d": cohens_d(a, b)}


def scatter_sample(x: torch.Tensor, y: torch.Tensor, *, limit: int = 400, extremes: int = 40) -> dict[str, list]:
    """At most ``limit`` points for a figure, deterministically: the ``extremes`` highest-leverage
    points (a uniform pick would miss the few massive tokens) plus evenly spaced others."""
    x, y = x.double().flatten(), y.double().flatten()
    if len(x) <= limit:
        idx = torch.arange(len(x))
    else:
        top = leverage(x).argsort(descending=True)[:extremes]
        rest = torch.ones(len(x), dtype=torch.bool)
        rest[top] = False
        others = rest.nonzero().flatten()
        pick = others[torch.linspace(0, len(others) - 1, limit - len(top)).round().long()]
        idx = torch.cat([top, pick]).sort().values
    return {"x": [round(float(v), 6) for v in x[idx]], "y": [round(float(v), 6) for v in y[idx]]}
