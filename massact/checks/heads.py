"""Family H: attention heads and the first token (H1, H2)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from massact import figures as fig
from massact.checks.base import Condition, Context, Measurement, Outcome, Params, check
from massact.engine import PassResult
from massact.errors import CorpusError, SequenceTooLong
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
    return fig.Heatmap(title=f"{ctx.lm.name}: attention on the first token ({method}, {ctx.seqlen} tokens)",
                       matrix=s.tolist(),
                       value_label="mean attention on token 0", vmin=0.0, vmax=1.0, marks=list(marks),
                       caption=f"mean attention probability on token 0 per layer (rows) and query head (columns), "
                               f"over {ctx.n} samples of {ctx.seqlen} tokens; query 0 "
                               f"{'in' if method == 'documented_method' else 'ex'}cluded")


@dataclass(frozen=True, kw_only=True)
class FirstTokenParams(Params):
    method: METHOD
    k: int
    min_top_mean: float
    seqlens: tuple[int, ...] = (32, 128, 512, 1024)  # the dependence on sequence length, drawn for the report
    seqlen_samples: int = 10  # samples per length of that figure


def by_seqlen(ctx: Context, p: FirstTokenParams) -> dict[int, dict[str, float]]:
    """At each of ``p.seqlens`` that the model's context and the corpus allow, on ``p.seqlen_samples``
    samples: the top-k mean, the all-heads mean and the share of heads >= the bar. First-token
    attention falls as sequences grow, so a score means little without its length."""
    out = {}
    if ctx.lm.tokenizer is None:  # the corpus cannot be cut at another length
        return out
    for t in p.seqlens:
        try:
            at = ctx.at_seqlen(t, n=p.seqlen_samples)
            s = hm.head_scores(first_token(at.run(ATTENTION), ctx.lm.n_layers, p.method))
        except (CorpusError, SequenceTooLong):
            continue  # longer than the context, or than the corpus gives samples for
        out[t] = {"top_mean": float(s.flatten().topk(min(p.k, s.numel())).values.mean()),
                  "all_heads_mean": float(s.mean()),
                  "share_above": float((s >= p.min_top_mean).double().mean())}
    return out


def seqlen_figure(ctx: Context, curve: dict[int, dict[str, float]], p: FirstTokenParams) -> fig.Lines:
    lengths = sorted(curve)
    names = {"top_mean": f"top-{p.k} mean", "all_heads_mean": "all heads mean",
             "share_above": f"share of heads >= {p.min_top_mean:g}"}
    return fig.Lines(title=f"{ctx.lm.name}: first-token attention against sequence length ({p.method})",
                     x=lengths, series={name: [curve[t][k] for t in lengths] for k, name in names.items()},
                     x_label="tokens per sample", y_label="attention on token 0, or share of heads",
                     refs=[fig.Ref(p.min_top_mean, f"claim: >= {p.min_top_mean:g}")],
                     caption=f"{p.seqlen_samples} samples per length (the claim reads {ctx.n} of {ctx.seqlen} "
                             "tokens); lengths past the model's context or the corpus are left out")


@check(FirstTokenParams, needs=[ATTENTION])
def first_token_scores(ctx: Context, p: FirstTokenParams) -> Measurement:
    """The top-k heads by first-token attention pay it >= min_top_mean; the heads at large must not.

    Control: the mean over all heads, which k random heads give on average; when it too reaches
    min_top_mean, "a few heads" picks nothing out. Every number is at this run's sequence length,
    which the figure shows the scores depend on.
    """
    r = ctx.run(ATTENTION)
    per_all = first_token(r, ctx.lm.n_layers, p.method)  # (N, L, H)

    def decide(idx):
        per = per_all if idx is None else per_all[idx]
        s = hm.head_scores(per)
        L, H = s.shape
        top = hm.ranked(s, p.k)
        top_mean = float(torch.stack([s[l, h] for l, h in top]).mean())
        all_mean, above = float(s.mean()), float((s >= p.min_top_mean).double().mean())
        values = {"top_mean": top_mean, "all_heads_mean": all_mean, "share_above": above, "seqlen": ctx.seqlen,
                  **{f"score.{l}.{h}": float(s[l, h]) for l in range(L) for h in range(H)}}
        if per.shape[0] >= 4:
            values["split_half_agreement"] = hm.split_half_agreement(per, p.k)
        return Outcome(
            holds=top_mean >= p.min_top_mean, primary="top_mean",
            summary=f"at {ctx.seqlen} tokens: top-{p.k} heads {top[:5]}...: mean first-token attention "
                    f"{top_mean:.3f}; all {L * H} heads {all_mean:.3f} (what {p.k} random heads give on average); "
                    f"{above:.0%} of heads >= {p.min_top_mean:g}",
            values=values, controls={"all_heads": Condition("all_heads_mean", ">=", p.min_top_mean)})

    s = hm.head_scores(per_all)
    top, bottom = hm.ranked(s, p.k), hm.ranked(s, p.k, top=False)
    curve = by_seqlen(ctx, p)
    return Measurement(decide, n=r.n, bound={"op": ">=", "value": p.min_top_mean, "abs": False},
                       details={"scores": s.tolist(), "top": top, "bottom": bottom, "method": p.method,
                                "seqlen": ctx.seqlen, "by_seqlen": {str(t): v for t, v in curve.items()}},
                       figures=[heatmap(ctx, s, p.method, [(l, h, "top") for l, h in top]
                                        + [(l, h, "bottom") for l, h in bottom])]
                       + ([seqlen_figure(ctx, curve, p)] if curve else []))


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
            summary=f"at {ctx.seqlen} tokens: max {hi:.3f} at head {top}, min {lo:.4f} at head {bottom}; "
                    f"{n_high} heads > {p.high:g}, {n_low} heads < {p.low:g} of {s.numel()}",
            values={"max_score": hi, "min_score": lo, "n_high": n_high, "n_low": n_low, "seqlen": ctx.seqlen})

    s = hm.head_scores(per_all)
    return Measurement(decide, n=r.n, bound={"op": "<", "value": p.low, "abs": False},
                       conditions=[Condition("max_score", ">", p.high), Condition("min_score", "<", p.low)],
                       details={"scores": s.tolist(), "method": p.method, "seqlen": ctx.seqlen})
