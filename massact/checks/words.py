"""Claims about which tokens: S3/S4 (function vs content words along v1) and L5 (massive tokens).

Tokens are classed by massact.metrics.words from the tokenizer's own token strings: a word's
first token carries its class (function, content, delimiter, other), continuation pieces are
"other". Position 0 is left out of the S3/S4 comparison: its activation is positional (L5
reports it), and keeping it would mix a position effect into a word-class effect.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Literal

import torch

from massact import figures as fig
from massact.checks.base import (PROFILE, TOP_FEATURE, AtLayer, ClaimInvalid, Condition, Context, MassiveDef,
                                 Measurement, Outcome, check, massive_layers, profile, ranges)
from massact.checks.svd import projection
from massact.metrics import activations as act
from massact.metrics import svd, words
from massact.requests import want

CODE = {c: i for i, c in enumerate(words.CLASSES)}


def token_classes(ctx: Context, ids: torch.Tensor) -> tuple[torch.Tensor, list[list[str]]]:
    """Class codes (N, T) (indices into words.CLASSES) and readable token texts for ids (N, T)."""
    tok = ctx.lm.tokenizer
    if tok is None:
        raise ClaimInvalid(f"{ctx.lm.name} has no tokenizer: tokens cannot be classed as function or content words")
    scheme, specials, fw = words.detect_scheme(tok.get_vocab()), frozenset(tok.all_special_tokens), \
        words.load_function_words()
    codes, texts = [], []
    for row in ids.tolist():
        toks = tok.convert_ids_to_tokens(row)
        codes.append([CODE[c] for c in words.classify(toks, scheme=scheme, function_words=fw, specials=specials)])
        texts.append([words.word_text(t, scheme) for t in toks])
    return torch.tensor(codes, dtype=torch.long).reshape(ids.shape), texts


def _top(texts: list[list[str]], mask: torch.Tensor, k: int = 20) -> dict[str, int]:
    counts = Counter(texts[n][t] for n, t in mask.nonzero().tolist())
    return {repr(w) if w.strip() != w or not w else w: c for w, c in counts.most_common(k)}


def _pick(texts: list, idx) -> list:
    return texts if idx is None else [texts[i] for i in idx.tolist()]


@dataclass(frozen=True, kw_only=True)
class AlignParams(AtLayer):
    alignment: Literal["abs", "signed"] = "abs"


def alignment(ctx: Context, p: AlignParams):
    """A function idx -> (values, details): cos(h, v1) of function vs content words (position 0 out)."""
    d = projection(ctx, p)
    N, T = d.out.shape
    cos = svd.cosine_to(d.h_rows, d.sing.right[:, 0]).reshape(N, T)
    codes_all, texts_all = token_classes(ctx, d.input_ids)
    not_first = torch.arange(T) > 0

    def measure(idx):
        a, codes = (cos, codes_all) if idx is None else (cos[idx], codes_all[idx])
        f, c = (codes == CODE["function"]) & not_first, (codes == CODE["content"]) & not_first
        if int(f.sum()) < 2 or int(c.sum()) < 2:
            raise ClaimInvalid(f"too few classed tokens to compare: {int(f.sum())} function, {int(c.sum())} content")
        ab, sg = svd.compare_groups(a.abs()[f], a.abs()[c]), svd.compare_groups(a[f], a[c])
        values = {"layer": d.layer, "n_function": ab["n_a"], "n_content": ab["n_b"],
                  "function_mean_abs": ab["mean_a"], "content_mean_abs": ab["mean_b"], "mean_ratio": ab["ratio"],
                  "d_abs": ab["d"], "function_mean": sg["mean_a"], "content_mean": sg["mean_b"], "d_signed": sg["d"],
                  "pos0_mean_abs": float(a[:, 0].abs().mean())}
        values["d"] = values["d_abs"] if p.alignment == "abs" else values["d_signed"]
        return values, (a, codes, f, c, ab, sg)

    def details():
        values, (a, codes, f, c, ab, sg) = measure(None)
        return ({"counts": {k: int((codes == i).sum()) for k, i in CODE.items()},
                 "top_function": _top(texts_all, f), "top_content": _top(texts_all, c),
                 "abs": ab, "signed": sg, "alignment": p.alignment},
                _cos_figure(ctx, a, f, c, d.layer, p.alignment))

    return measure, details, N, d.layer


def _cos_figure(ctx: Context, a: torch.Tensor, f: torch.Tensor, c: torch.Tensor, layer: int, kind: str):
    vals = {"function words": a[f], "content words": a[c]}
    if kind == "abs":
        vals = {k: v.abs() for k, v in vals.items()}
    lo, hi = min(float(v.min()) for v in vals.values()), max(float(v.max()) for v in vals.values())
    edges = torch.linspace(lo, hi if hi > lo else lo + 1e-9, 41, dtype=torch.float64)
    return fig.Histogram(
        title=f"{ctx.lm.name}: {'|cos|' if kind == 'abs' else 'cos'}(h, v1) at layer {layer}", edges=edges.tolist(),
        counts={k: torch.histogram(v.double(), bins=edges).hist.tolist() for k, v in vals.items()},
        x_label=f"{'|cos|' if kind == 'abs' else 'cos'}(h, v1)", density=True,
        caption="distribution over tokens (position 0 left out) of the cosine between the down projection's input "
                "and its top right-singular vector")


def _alignment_summary(v: dict, kind: str) -> str:
    return (f"layer {v['layer']}: mean |cos(h, v1)| function {v['function_mean_abs']:.4f} (n={v['n_function']}) vs "
            f"content {v['content_mean_abs']:.4f} (n={v['n_content']}), ratio {v['mean_ratio']:.2f}; "
            f"Cohen's d {kind} {v['d']:.3f} (signed means {v['function_mean']:.4f} vs {v['content_mean']:.4f})")


@dataclass(frozen=True, kw_only=True)
class AlignsParams(AlignParams):
    min_d: float
    min_mean_ratio: float


NEEDS_PROJECTION = [PROFILE, TOP_FEATURE]


@check(AlignsParams, needs=NEEDS_PROJECTION)
def svd_function_words_align(ctx: Context, p: AlignsParams) -> Measurement:
    measure, details, n, layer = alignment(ctx, p)

    def decide(idx):
        v, _ = measure(idx)
        holds = v["d"] >= p.min_d and v["mean_ratio"] >= p.min_mean_ratio
        return Outcome(holds=holds, primary="d", summary=_alignment_summary(v, p.alignment), values=v,
                       reason="" if holds else f"needs d >= {p.min_d:g} and mean ratio >= {p.min_mean_ratio:g}: "
                                               f"d {v['d']:.3f}, ratio {v['mean_ratio']:.2f}")

    det, figure = details()
    return Measurement(decide, n=n, bound={"op": ">=", "value": p.min_d, "abs": False},
                       conditions=[Condition("d", ">=", p.min_d), Condition("mean_ratio", ">=", p.min_mean_ratio)],
                       selections={"layer": layer}, details=det, figures=[figure])


@dataclass(frozen=True, kw_only=True)
class NoDifferenceParams(AlignParams):
    max_abs_d: float


@check(NoDifferenceParams, needs=NEEDS_PROJECTION)
def svd_function_words_no_difference(ctx: Context, p: NoDifferenceParams) -> Measurement:
    measure, details, n, layer = alignment(ctx, p)

    def decide(idx):
        v, _ = measure(idx)
        holds = abs(v["d"]) < p.max_abs_d
        return Outcome(holds=holds, primary="d", summary=_alignment_summary(v, p.alignment), values=v,
                       reason="" if holds else f"|d| {abs(v['d']):.3f} >= {p.max_abs_d:g}: the groups differ")

    det, figure = details()
    return Measurement(decide, n=n, bound={"op": "<", "value": p.max_abs_d, "abs": True}, selections={"layer": layer},
                       details=det, figures=[figure])


TOKENS = PROFILE | want("block.*", "token_max")


@dataclass(frozen=True, kw_only=True)
class TokensParams(MassiveDef):
    min_share: float


@check(TokensParams, needs=[TOKENS])
def massive_tokens(ctx: Context, p: TokensParams) -> Measurement:
    """The claim's two halves, judged apart: the first token carries a massive activation (in >=
    min_share of the (sample, massive layer) pairs); and the massive positions other than the first
    sit on function words / delimiters (>= min_share of them, above the corpus's base rate of those
    tokens). With no massive position but the first, the second half has nothing to stand on: it fails."""
    r_all = ctx.run(TOKENS)
    if not massive_layers(profile(r_all, ctx.lm.n_layers), p):
        raise ClaimInvalid(f"no layer of {ctx.lm.name} has massive activations: no token to locate")
    codes_all, texts_all = token_classes(ctx, r_all.input_ids)
    fd_all = (codes_all == CODE["function"]) | (codes_all == CODE["delimiter"])  # (N, T)
    conditions = [Condition("pos0_pair_share", ">=", p.min_share), Condition("fd_share_rest", ">=", p.min_share),
                  Condition("fd_enrichment", ">", 1.0)]

    def measure(idx):
        r = r_all.select(idx)
        layers = massive_layers(profile(r, ctx.lm.n_layers), p)
        if not layers:
            raise ClaimInvalid(f"no layer of {ctx.lm.name} has massive activations: no token to locate")
        hit = torch.zeros_like(r.input_ids, dtype=torch.bool)  # (N, T): massive at some massive layer
        pos0_pairs = 0
        for l in layers:
            tm, med = r.stat(f"block.{l}", "token_max"), r.stat(f"block.{l}", "median")
            m = act.massive_mask(tm, med[:, None], min_abs=p.min_abs, min_ratio=p.min_ratio)
            hit |= m
            pos0_pairs += int(m[:, 0].sum())
        codes, fd = (codes_all, fd_all) if idx is None else (codes_all[idx], fd_all[idx])
        rest = hit.clone()
        rest[:, 0] = False
        return layers, hit, pos0_pairs, codes, fd, rest

    def decide(idx):
        layers, hit, pos0_pairs, codes, fd, rest = measure(idx)
        n_rest, fd_rest = int(rest.sum()), int((rest & fd).sum())
        base = float(fd[:, 1:].double().mean())  # function words / delimiters among positions >= 1
        values = {"pos0_pair_share": pos0_pairs / (len(layers) * len(hit)), "n_positions": int(hit.sum()),
                  "n_rest": n_rest, "fd_base_rate": base}
        if n_rest:  # absent when no position but the first is massive: that half cannot pass
            values["fd_share_rest"] = fd_rest / n_rest
            values["fd_enrichment"] = values["fd_share_rest"] / base if base else float("inf")
        failed = [c.describe() for c in conditions if not c.holds(values)]
        by_class = {k: int((rest & (codes == i)).sum()) for k, i in CODE.items()}
        first = (f"first token massive in {values['pos0_pair_share']:.0%} of {len(layers) * len(hit)} (sample, "
                 f"massive layer) pairs (layers {ranges(layers)})")
        if n_rest:
            words_half = (f"{n_rest} massive positions besides the first: {by_class}; on a function word/delimiter "
                          f"{values['fd_share_rest']:.0%} against a base rate of {base:.0%} "
                          f"(x{values['fd_enrichment']:.2f})")
        else:
            words_half = (f"no massive position besides the first: none of the {int(fd[:, 1:].sum())} function "
                          f"words/delimiters carries one, so the function-word half is not borne out")
        return Outcome(holds=not failed, primary="fd_share_rest", summary=f"{first}; {words_half}",
                       values=values, reason=f"fails: {', '.join(failed)}" if failed else "")

    layers, hit, _, codes, fd, rest = measure(None)
    return Measurement(decide, n=r_all.n, unit="%", bound={"op": ">=", "value": p.min_share, "abs": False},
                       conditions=conditions,
                       details={"layers": layers, "rest_by_class": {k: int((rest & (codes == i)).sum())
                                                                    for k, i in CODE.items()},
                                "top_rest": _top(texts_all, rest), "top_rest_unexplained": _top(texts_all, rest & ~fd)})
