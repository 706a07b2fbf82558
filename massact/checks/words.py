"""Claims about which tokens: S3/S4 (function vs content words along v1) and L5 (massive tokens).

Tokens are classed by massact.metrics.words from the tokenizer's own token strings: a word's
first token carries its class (function, content, delimiter, other), continuation pieces are
"other". Position 0 is left out of the S3/S4 comparison: its activation is positional (L5
reports it), and keeping it would mix a position effect into a word-class effect.
"""
from __future__ import annotations

import weakref
from collections import Counter

import torch

from massact.checks.base import ClaimInvalid, Context, Measurement, check, massive_layers, profile
from massact.checks.svd import projection_data
from massact.metrics import activations as act
from massact.metrics import svd, words

CODE = {c: i for i, c in enumerate(words.CLASSES)}
_TOKENIZERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tokenizer -> scheme, specials, rows


def token_classes(ctx: Context, ids: torch.Tensor) -> tuple[torch.Tensor, list[list[str]]]:
    """Class codes (N, T) (indices into words.CLASSES) and readable token texts for ids (N, T)."""
    tok = ctx.lm.tokenizer
    if tok is None:
        raise ClaimInvalid(f"{ctx.lm.name} has no tokenizer: tokens cannot be classed as function or content words")
    try:
        entry = _TOKENIZERS.get(tok)
    except TypeError:  # not weak-referenceable: no cache
        entry = None
    if entry is None:
        entry = {"scheme": words.detect_scheme(tok.get_vocab()), "specials": frozenset(tok.all_special_tokens),
                 "rows": {}, "fw": words.load_function_words()}
        try:
            _TOKENIZERS[tok] = entry
        except TypeError:
            pass
    codes, texts = [], []
    for row in ids.tolist():
        key = tuple(row)
        if key not in entry["rows"]:  # a bootstrap re-reads the same rows 200 times
            toks = tok.convert_ids_to_tokens(row)
            cls = words.classify(toks, scheme=entry["scheme"], function_words=entry["fw"], specials=entry["specials"])
            entry["rows"][key] = ([CODE[c] for c in cls], [words.word_text(t, entry["scheme"]) for t in toks])
        c, t = entry["rows"][key]
        codes.append(c)
        texts.append(t)
    return torch.tensor(codes, dtype=torch.long).reshape(ids.shape), texts


def _top(texts: list[list[str]], mask: torch.Tensor, k: int = 20) -> dict[str, int]:
    counts = Counter(texts[n][t] for n, t in mask.nonzero().tolist())
    return {repr(w) if w.strip() != w or not w else w: c for w, c in counts.most_common(k)}


def alignment(ctx: Context, p: dict) -> dict:
    """cos(h_t, v1) for function- vs content-word tokens (position 0 left out), both |.| and signed."""
    if p.get("alignment", "abs") not in ("abs", "signed"):
        raise ClaimInvalid(f"params.alignment must be 'abs' or 'signed', not {p['alignment']!r}")
    d = projection_data(ctx, p)
    ids = d["input_ids"]
    a = svd.cosine_to(d["h"], d["sing"].right[:, 0]).reshape(ids.shape)  # (N, T)
    codes, texts = token_classes(ctx, ids)
    not_first = torch.arange(ids.shape[1]) > 0
    f, c = (codes == CODE["function"]) & not_first, (codes == CODE["content"]) & not_first
    if int(f.sum()) < 2 or int(c.sum()) < 2:
        raise ClaimInvalid(f"too few classed tokens to compare: {int(f.sum())} function, {int(c.sum())} content")
    ab, sg = svd.compare_groups(a.abs()[f], a.abs()[c]), svd.compare_groups(a[f], a[c])
    values = {"layer": d["layer"], "n_function": ab["n_a"], "n_content": ab["n_b"],
              "function_mean_abs": ab["mean_a"], "content_mean_abs": ab["mean_b"], "mean_ratio": ab["ratio"],
              "d_abs": ab["d"], "function_mean": sg["mean_a"], "content_mean": sg["mean_b"], "d_signed": sg["d"],
              "pos0_mean_abs": float(a[:, 0].abs().mean())}
    values["d"] = values["d_abs"] if p.get("alignment", "abs") == "abs" else values["d_signed"]
    details = {"counts": {k: int((codes == i).sum()) for k, i in CODE.items()},
               "top_function": _top(texts, f), "top_content": _top(texts, c),
               "abs": ab, "signed": sg, "alignment": p.get("alignment", "abs")}
    return {"values": values, "details": details}


def _alignment_summary(v: dict, kind: str) -> str:
    return (f"layer {v['layer']}: mean |cos(h, v1)| function {v['function_mean_abs']:.4f} (n={v['n_function']}) vs "
            f"content {v['content_mean_abs']:.4f} (n={v['n_content']}), ratio {v['mean_ratio']:.2f}; "
            f"Cohen's d {kind} {v['d']:.3f} (signed means {v['function_mean']:.4f} vs {v['content_mean']:.4f})")


@check("min_d", "min_mean_ratio", "min_abs", "min_ratio")
def svd_function_words_align(ctx: Context, p: dict) -> Measurement:
    m = alignment(ctx, p)
    v = m["values"]
    holds = v["d"] >= p["min_d"] and v["mean_ratio"] >= p["min_mean_ratio"]
    return Measurement(holds=holds, primary="d", summary=_alignment_summary(v, p.get("alignment", "abs")),
                       values=v, details=m["details"],
                       reason="" if holds else f"needs d >= {p['min_d']:g} and mean ratio >= {p['min_mean_ratio']:g}: "
                                               f"d {v['d']:.3f}, ratio {v['mean_ratio']:.2f}")


@check("max_abs_d", "min_abs", "min_ratio")
def svd_function_words_no_difference(ctx: Context, p: dict) -> Measurement:
    m = alignment(ctx, p)
    v = m["values"]
    holds = abs(v["d"]) < p["max_abs_d"]
    return Measurement(holds=holds, primary="d", summary=_alignment_summary(v, p.get("alignment", "abs")),
                       values=v, details=m["details"],
                       reason="" if holds else f"|d| {abs(v['d']):.3f} >= {p['max_abs_d']:g}: the groups differ")


@check("min_abs", "min_ratio", "min_share")
def massive_tokens(ctx: Context, p: dict) -> Measurement:
    r = ctx.run()
    layers = massive_layers(profile(r, ctx.lm.n_layers), p)
    if not layers:
        raise ClaimInvalid(f"no layer of {ctx.lm.name} has massive activations: no token to locate")
    hit = torch.zeros_like(r.input_ids, dtype=torch.bool)  # (N, T): massive at some massive layer
    pos0_pairs = 0
    for l in layers:
        tm, med = r.stat(f"block.{l}", "token_max"), r.stat(f"block.{l}", "median")
        m = act.massive_mask(tm, med[:, None], min_abs=p["min_abs"], min_ratio=p["min_ratio"])
        hit |= m
        pos0_pairs += int(m[:, 0].sum())
    n = int(hit.sum())
    if n == 0:
        raise ClaimInvalid(f"layers {layers} are massive on average but no single token reaches the threshold")
    codes, texts = token_classes(ctx, r.input_ids)
    rest = hit.clone()
    rest[:, 0] = False
    at0, n_rest = n - int(rest.sum()), int(rest.sum())
    fd = rest & ((codes == CODE["function"]) | (codes == CODE["delimiter"]))
    explained = (at0 + int(fd.sum())) / n
    holds = explained >= p["min_share"]
    by_class = {k: int((rest & (codes == i)).sum()) for k, i in CODE.items()}
    return Measurement(
        holds=holds, primary="explained",
        summary=f"{n} massive token positions over layers {layers[0]}-{layers[-1]}: {at0} at position 0; of the "
                f"other {n_rest}: {by_class}; on position 0 or a function word/delimiter: {explained:.0%}",
        values={"explained": explained, "n_positions": n, "share_pos0": at0 / n,
                "pos0_pair_share": pos0_pairs / (len(layers) * len(hit)),
                # among the positions other than 0 (absent when there are none)
                **({"share_function_rest": int(fd.sum()) / n_rest} if n_rest else {})},
        reason="" if holds else f"{1 - explained:.0%} of massive positions are neither position 0 nor a function "
                                f"word/delimiter (needs >= {p['min_share']:.0%})",
        details={"layers": layers, "rest_by_class": by_class, "top_rest": _top(texts, rest),
                 "top_rest_unexplained": _top(texts, rest & ~fd)})
