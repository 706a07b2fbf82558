"""Family H: attention heads and the first token (H1, H2)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from massact import figures as fig
from massact.checks.base import Context, Measurement, Outcome, Params, check
from massact.engine import PassResult
from massact.metrics import heads as hm
from massact.requests import want

# documented_method: query 0 included (it always puts 1.0 on key 0); correct_method: excluded
METHOD = Literal["documented_method", "correct_method"]
STAT = {"documented_method": "first_incl", "correct_method": "first_excl"}
ATTENTION = want("attn.*", "first_incl", "first_excl")


def first_token(r: PassResult, n_layers: int, method: str) -> torch.Tensor:
    """Per-sample first-token attention of every head, (N, L, H)."""
    return torch.stack([r.stat(f"attn.{l}", STAT[method]) for l in range(n_layers)], dim=1)


def scores(ctx: Context, method: str) -> torch.Tensor:
    """(L, H) mean first-token attention over this claim's samples."""
    return hm.head_scores(first_token(ctx.run(ATTENTION), ctx.lm.n_layers, method))


def heatmap(ctx: Context, s: torch.Tensor, method: str, marks=()) -> fig.Heatmap:
    return fig.Heatmap(title=f"{ctx.lm.name}: attention on the first token ({method})", matrix=s.tolist(),
                       value_label="mean attention on token 0", vmin=0.0, vmax=1.0, marks=list(marks),
                       caption=f"mean attention probability on token 0 per layer (rows) and query head (columns), "
                               f"over {ctx.n} samples; query 0 {'in' if method == 'documented_method' else 'ex'}cluded")


@dataclass(frozen=True, kw_only=True)
class FirstTokenParams(Params):
    method: METHOD
    k: int
    min_top_mean: float
    margin: float


@check(FirstTokenParams, needs=[ATTENTION])
def first_token_scores(ctx: Context, p: FirstTokenParams) -> Measurement:
    """The top-k heads by first-token attention pay it >= min_top_mean; k random heads must not."""
    r = ctx.run(ATTENTION)
    per_all = first_token(r, ctx.lm.n_layers, p.method)  # (N, L, H)

    def decide(idx):
        per = per_all if idx is None else per_all[idx]
        s = hm.head_scores(per)
        L, H = s.shape
        top = hm.ranked(s, p.k)
        top_mean = float(torch.stack([s[l, h] for l, h in top]).mean())
        rnd = hm.random_heads(L, H, p.k, seed=0)
        rnd_mean = float(torch.stack([s[l, h] for l, h in rnd]).mean())
        values = {"top_mean": top_mean, "random_mean": rnd_mean,
                  **{f"score.{l}.{h}": float(s[l, h]) for l in range(L) for h in range(H)}}
        if per.shape[0] >= 4:
            values["split_half_agreement"] = hm.split_half_agreement(per, p.k)
        return Outcome(
            holds=top_mean >= p.min_top_mean, primary="top_mean",
            summary=f"top-{p.k} heads {top[:5]}...: mean first-token attention {top_mean:.3f}; "
                    f"{p.k} random heads {rnd_mean:.3f}",
            values=values, controls={"random_heads": rnd_mean >= top_mean - p.margin})

    s = hm.head_scores(per_all)
    top, bottom = hm.ranked(s, p.k), hm.ranked(s, p.k, top=False)
    return Measurement(decide, n=r.n, bound={"op": ">=", "value": p.min_top_mean, "abs": False},
                       details={"scores": s.tolist(), "top": top, "bottom": bottom, "method": p.method},
                       figures=[heatmap(ctx, s, p.method, [(l, h, "top") for l, h in top]
                                        + [(l, h, "bottom") for l, h in bottom])])


@dataclass(frozen=True, kw_only=True)
class SpecializationParams(Params):
    method: METHOD
    high: float
    low: float


@check(SpecializationParams, needs=[ATTENTION])
def specialization(ctx: Context, p: SpecializationParams) -> Measurement:
    """Some head puts more than ``high`` of its attention on the first token, another less than ``low``."""
    r = ctx.run(ATTENTION)
    per_all = first_token(r, ctx.lm.n_layers, p.method)

    def decide(idx):
        s = hm.head_scores(per_all if idx is None else per_all[idx])
        hi, lo = float(s.max()), float(s.min())
        top, bottom = hm.ranked(s, 1)[0], hm.ranked(s, 1, top=False)[0]
        n_high, n_low = int((s > p.high).sum()), int((s < p.low).sum())
        return Outcome(
            holds=hi > p.high and lo < p.low, primary="min_score",
            summary=f"max {hi:.3f} at head {top}, min {lo:.4f} at head {bottom}; {n_high} heads > {p.high:g}, "
                    f"{n_low} heads < {p.low:g} of {s.numel()}",
            values={"max_score": hi, "min_score": lo, "n_high": n_high, "n_low": n_low})

    s = hm.head_scores(per_all)
    return Measurement(decide, n=r.n, bound={"op": "<", "value": p.low, "abs": False},
                       details={"scores": s.tolist(), "method": p.method})
