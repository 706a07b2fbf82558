"""Family H: attention heads and the first token (H1, H2)."""
from __future__ import annotations

import torch

from massact.checks.base import Context, Measurement, check
from massact.engine import PassResult
from massact.metrics import heads as hm

# documented_method: query 0 included (it always puts 1.0 on key 0); correct_method: excluded
STAT = {"documented_method": "first_incl", "correct_method": "first_excl"}


def first_token(r: PassResult, n_layers: int, method: str) -> torch.Tensor:
    """Per-sample first-token attention of every head, (N, L, H)."""
    return torch.stack([r.stat(f"attn.{l}", STAT[method]) for l in range(n_layers)], dim=1)


def scores(ctx: Context, method: str) -> torch.Tensor:
    """(L, H) mean first-token attention over this claim's samples."""
    return hm.head_scores(first_token(ctx.run(attention=True), ctx.lm.n_layers, method))


@check("method", "k", "min_top_mean", "margin")
def first_token_scores(ctx: Context, p: dict) -> Measurement:
    """The top-k heads by first-token attention pay it >= min_top_mean; k random heads must not."""
    per = first_token(ctx.run(attention=True), ctx.lm.n_layers, p["method"])
    s = hm.head_scores(per)
    L, H = s.shape
    top = hm.ranked(s, p["k"])
    top_mean = float(torch.stack([s[l, h] for l, h in top]).mean())
    rnd = hm.random_heads(L, H, p["k"], seed=0)
    rnd_mean = float(torch.stack([s[l, h] for l, h in rnd]).mean())
    values = {"top_mean": top_mean, "random_mean": rnd_mean,
              **{f"score.{l}.{h}": float(s[l, h]) for l in range(L) for h in range(H)}}
    if per.shape[0] >= 4:
        values["split_half_agreement"] = hm.split_half_agreement(per, p["k"])
    return Measurement(
        holds=top_mean >= p["min_top_mean"], primary="top_mean",
        summary=f"top-{p['k']} heads {top[:5]}...: mean first-token attention {top_mean:.3f}; "
                f"{p['k']} random heads {rnd_mean:.3f}",
        values=values,
        controls={"random_heads": rnd_mean >= top_mean - p["margin"]},
        details={"scores": s.tolist(), "top": top, "bottom": hm.ranked(s, p["k"], top=False), "method": p["method"]})


@check("method", "high", "low")
def specialization(ctx: Context, p: dict) -> Measurement:
    """Some head puts more than ``high`` of its attention on the first token, another less than ``low``."""
    s = scores(ctx, p["method"])
    hi, lo = float(s.max()), float(s.min())
    top, bottom = hm.ranked(s, 1)[0], hm.ranked(s, 1, top=False)[0]
    n_high, n_low = int((s > p["high"]).sum()), int((s < p["low"]).sum())
    return Measurement(
        holds=hi > p["high"] and lo < p["low"], primary="min_score",
        summary=f"max {hi:.3f} at head {top}, min {lo:.4f} at head {bottom}; {n_high} heads > {p['high']:g}, "
                f"{n_low} heads < {p['low']:g} of {s.numel()}",
        values={"max_score": hi, "min_score": lo, "n_high": n_high, "n_low": n_low},
        details={"scores": s.tolist(), "method": p["method"]})
