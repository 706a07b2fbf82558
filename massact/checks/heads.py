"""Family H: attention heads and the first token (H1, H2)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from massact import figures as fig
from massact.checks.base import (ClaimInvalid, Condition, Context, MassiveDef, Measurement, Outcome, Params, check,
                                 emergence_of, profile)
from massact.engine import PassResult
from massact.errors import CorpusError, SequenceTooLong
from massact.metrics import heads as hm
from massact.requests import Request, want

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


# ---------------------------------------------------------------- sink tokens carry small values

RECEIVED = want("attn.*", "received")  # (N, H, T) per layer: attention each key gets from later queries
VALUE_NORMS = want("attn.*.v", "norm")  # (N, KV, T) per layer: each value vector's L2 norm
SINK_VALUES = RECEIVED | VALUE_NORMS  # one eager pass: the probabilities need eager attention, the values do not
MASSIVE_TOKEN = want("block.*", "top_abs", "top_token", "median")  # the profile, and where each top-1 sits


@dataclass(frozen=True, kw_only=True)
class SinkValueParams(MassiveDef):
    token: Literal["massive", "first"]  # the token carrying the massive activation, or position 0
    k: int  # the heads that attend most to the token
    max_ratio: float  # its value norm over the median of the other tokens' value norms, below this
    draws: int = 20  # random tokens and random head sets drawn for the reference and the control
    seed: int = 0


def sink_request(p: SinkValueParams) -> Request:
    return SINK_VALUES | MASSIVE_TOKEN if p.token == "massive" else SINK_VALUES


@check(SinkValueParams, needs=lambda p: [sink_request(p)])
def sink_values_small(ctx: Context, p: SinkValueParams) -> Measurement:
    """The heads that attend most to the sink token read a small value vector there (Sun et al. 2024).

    Per sample the sink token is the one carrying the massive activation (the top-1 |activation| of the
    emergence layer's output) or position 0. The k heads with the most attention on it (``received``,
    averaged over samples) are ranked; each reads its KV head's value vectors, and the value is that
    vector's norm at the sink token over the median norm of the other tokens, averaged over samples and
    the k heads. Controls, each the claim with one part swapped (``draws`` draws each, every draw's value
    kept): a random other token instead of the sink token (its own top-k heads), and k random heads
    instead of the top ones. Either reading a value below ``max_ratio`` makes the claim non-specific.
    """
    r = ctx.run(sink_request(p))
    lm, L = ctx.lm, ctx.lm.n_layers
    H, kv_of = lm.adapter.n_heads(lm.config), list(lm.adapter.kv_heads_of(lm.config))
    received = torch.stack([r.stat(f"attn.{l}", "received") for l in range(L)], dim=1)  # (N, L, H, T)
    norms = torch.stack([r.stat(f"attn.{l}.v", "norm") for l in range(L)], dim=1)  # (N, L, KV, T)
    N, T = received.shape[0], received.shape[-1]
    if T < 2:
        raise ClaimInvalid(f"samples of {T} token have no other tokens to compare the sink token's values with")
    if 2 * p.k > L * H:
        raise ClaimInvalid(f"k = {p.k} heads and {p.k} random heads outside them need {2 * p.k} heads; "
                           f"{lm.name} has {L * H} ({L} layers x {H})")
    ratio = hm.norm_vs_others(norms.double())[:, :, kv_of]  # (N, L, H, T): each query head reads its KV head
    g = torch.Generator().manual_seed(p.seed)
    others = torch.randint(0, T - 1, (p.draws, N), generator=g)  # per draw and sample, one of the T - 1 others

    def sink_tokens(idx) -> tuple[torch.Tensor, int | None]:
        """(n,) the sink token of each sample of ``idx``, and the emergence layer it was read at."""
        sel = r.select(idx)
        if p.token == "first":
            return torch.zeros(sel.n, dtype=torch.long), None
        layer = emergence_of(profile(sel, L), p, lm.name)
        return sel.stat(f"block.{layer}", "top_token")[:, 0], layer

    def decide(idx, didx):
        rows = slice(None) if idx is None else idx
        picked = range(p.draws) if didx is None else didx.tolist()  # the draws, resampled with the samples
        tok, layer = sink_tokens(idx)
        ratios = ratio[rows]  # (n, L, H, T)
        scores = hm.at_token(received[rows], tok).double().mean(0)  # (L, H) attention on the sink token
        top = hm.ranked(scores, p.k)
        per_head = hm.at_token(ratios, tok).mean(0)  # (L, H)

        def over(heads, x=per_head) -> float:
            return float(torch.stack([x[l, h] for l, h in heads]).mean())

        u = others[:, rows]
        tokens = [u[d] + (u[d] >= tok).long() for d in picked]  # a random token other than the sink
        # the claim about a random token: the heads attending most to it, and the value norm they read there
        rand_tok = [over(hm.ranked(hm.at_token(received[rows], t_).double().mean(0), p.k),
                         hm.at_token(ratios, t_).mean(0)) for t_ in tokens]
        rand_heads = [over(hm.random_heads(L, H, p.k, seed=p.seed + d, exclude=top)) for d in picked]
        value, rt, rh = over(top), sum(rand_tok) / len(picked), sum(rand_heads) / len(picked)
        shown = f"{top[:4]}"[:-1] + (", ...]" if p.k > 4 else "]")
        where = ("position 0" if layer is None else f"the massive token (top-1 of block {layer}'s output; position 0 "
                 f"in {int((tok == 0).sum())} of {len(tok)} samples)")
        values = {"value_ratio": value, "attention": over(top, scores), "random_heads": rh, "random_token": rt,
                  "over_random_heads": value / rh,  # how much smaller than random heads' the top heads' values are
                  "share_at_0": float((tok == 0).double().mean())}
        if didx is None:  # each draw's own value, reported (a resample's draws have no names of their own)
            values |= {f"random_heads.{d}": v for d, v in enumerate(rand_heads)}
            values |= {f"random_token.{d}": v for d, v in enumerate(rand_tok)}
        if layer is not None:
            values["layer"] = layer
        return Outcome(
            holds=value < p.max_ratio, primary="value_ratio", values=values,
            summary=f"sink token: {where}; the {p.k} heads attending most to it {shown} put "
                    f"{values['attention']:.3f} of their attention on it and read a value norm {value:.3f}x the "
                    f"median of the other tokens'; controls ({p.draws} draws each): {p.k} random heads {rh:.3f}x, a "
                    f"random other token (the {p.k} heads attending most to it) {rt:.3f}x",
            controls={"random_heads": Condition("random_heads", "<", p.max_ratio),
                      "random_token": Condition("random_token", "<", p.max_ratio)})

    full = decide(None, None)
    tok, _ = sink_tokens(None)
    per_head = hm.at_token(ratio, tok).mean(0)
    top = hm.ranked(hm.at_token(received, tok).double().mean(0), p.k)
    what = "the massive token" if p.token == "massive" else "position 0"
    return Measurement(
        decide, n=r.n, draws=p.draws, unit="x", bound={"op": "<", "value": p.max_ratio, "abs": False},
        details={"top": top, "value_ratio_per_head": per_head.tolist(), "kv_heads_of": kv_of},
        figures=[fig.Heatmap(title=f"{lm.name}: value norm at {what} over the median of the other tokens",
                             matrix=per_head.tolist(), value_label="value norm ratio", vmin=0.0, vmax=2.0,
                             marks=[(l, h, "top") for l, h in top],
                             caption=f"per layer (rows) and query head (columns; each reads its KV head's values), "
                                     f"mean over {r.n} samples of {ctx.seqlen} tokens; marked: the {p.k} heads with "
                                     f"the most attention on {what}"),
                 fig.Bars(title=f"{lm.name}: value norm ratio at {what}", unit="x", y_label="value norm ratio",
                          categories=[f"top-{p.k} heads", f"{p.k} random heads", "random token, its top heads"],
                          series={"mean over samples": [full.values["value_ratio"], full.values["random_heads"],
                                                        full.values["random_token"]]},
                          refs=[fig.Ref(p.max_ratio, f"claim: < {p.max_ratio:g}x")],
                          caption=f"random heads and random tokens: means over {p.draws} draws (each draw's value "
                                  "is in the values table)")])
