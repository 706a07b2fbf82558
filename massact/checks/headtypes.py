"""Family H, H3-H4: every head's attention statistics, the six head types, and the sink share (002).

The statistics run over the first 2,048 tokens of the long documents' statistics part. The
documented method cuts them into 512-token chunks, each its own pass with no cache (so "sink" is
the first 4 tokens of every chunk); the correct method reads each 2,048-token sequence in one pass
(``chunk`` sets either apart from the method). Both count the query itself as "local", as the
document did and as a KV window of w keeps it (keys q-w..q).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from typing import Literal

import torch

from massact import figures as fig
from massact.checks.base import ClaimInvalid, Condition, Context, Measurement, Outcome, Params, check, fixed
from massact.reducers import HEAD_PROFILE
from massact.engine import PassResult
from massact.metrics import headtypes as ht
from massact.requests import LongText, Request, long_documents, want

METHOD = Literal["documented_method", "correct_method"]


@dataclass(frozen=True, kw_only=True)
class HeadParams(Params):
    method: METHOD
    length: int = 2048  # tokens of each statistics document read
    chunk: int | None = None  # tokens per pass: None, 512 for the documented method and ``length`` for the correct one

    @property
    def source(self) -> LongText:
        chunk = self.chunk or (512 if self.method == "documented_method" else self.length)
        return LongText("statistics", self.length, chunk)

    @property
    def samples(self) -> int:
        return len(long_documents("statistics")) * (self.length // self.source.chunk)

    @property
    def documents(self) -> list[int]:
        """The document of each sample: a document's chunks are not independent, the documents are."""
        return [i // (self.length // self.source.chunk) for i in range(self.samples)]


def statistics_request(p: HeadParams) -> Request:
    return want("attn.*", *HEAD_PROFILE).on(p.source)


def _needs(p: HeadParams) -> list[Request]:
    return [statistics_request(p)]


def per_sample(r: PassResult, n_layers: int) -> dict[str, torch.Tensor]:
    """{statistic: (N, L, H[, bins])} from a pass with the head profile of every layer."""
    return {k.removeprefix("hp_"): torch.stack([r.stat(f"attn.{l}", k) for l in range(n_layers)], dim=1)
            for k in HEAD_PROFILE}


def classified(per: dict[str, torch.Tensor], idx=None) -> tuple[list, list]:
    """(HeadStats, HeadClass) of every head, from the samples idx (None: all)."""
    pick = per if idx is None else {k: v[idx] for k, v in per.items()}
    stats = ht.head_stats(pick)
    return stats, [ht.classify(s) for s in stats]


def measure_heads(ctx: Context, p: HeadParams) -> dict[str, torch.Tensor]:
    """Per-sample head statistics of the model over the statistics documents."""
    if not ctx.lm.adapter.is_decoder:
        raise ClaimInvalid(f"{ctx.lm.name} attends in both directions: sinks, recent windows and a KV cache "
                           "that drops old tokens are notions of causal decoders")
    if p.length > ctx.lm.context:
        raise ClaimInvalid(f"{ctx.lm.name} reads at most {ctx.lm.context} tokens; the claim reads sequences of "
                           f"{p.length}")
    return per_sample(ctx.run(statistics_request(p), n=p.samples), ctx.lm.n_layers)


def artifacts(ctx: Context, stats: list, classes: list, p: HeadParams) -> dict:
    """The document's two files, in its schema (field names as in its code)."""
    info = {"num_layers": ctx.lm.n_layers, "num_heads": ctx.lm.adapter.n_heads(ctx.lm.config),
            "sink_size": ht.SINK_SIZE, "local_window": ht.LOCAL_WINDOW, "recent_ratio": ht.RECENT_RATIO,
            "method": p.method, "tokens": p.length, "chunk": p.source.chunk}
    return {"head_statistics.json": {"model_info": info, "head_statistics": [asdict(s) for s in stats]},
            "head_classifications.json": {"classifications": [asdict(c) for c in classes],
                                          "summary": ht.summary(classes)}}


def head_figures(ctx: Context, stats: list, classes: list, p: HeadParams) -> list[fig.Figure]:
    method = p.method
    L, H = ctx.lm.n_layers, ctx.lm.adapter.n_heads(ctx.lm.config)
    grid = lambda f: [[f(stats[l * H + h]) for h in range(H)] for l in range(L)]  # noqa: E731
    pref = {k: [sum(stats[l * H + h].position_preference[k] for h in range(H)) / H for l in range(L)]
            for k in ("sink", "local", "recent", "global")}
    types = {t: [sum(c.head_type == t for c in classes[l * H:(l + 1) * H]) for l in range(L)] for t in ht.TYPES}
    where = f"{p.length} tokens of {len(long_documents('statistics'))} documents, " + \
        (f"{p.source.chunk}-token chunks" if p.source.chunk < p.length else "one pass each") + \
        ", the query counted as local"
    return [
        fig.Heatmap(title=f"{ctx.lm.name}: attention entropy per head ({method})", matrix=grid(lambda s: s.mean_entropy),
                    value_label="mean entropy (nats)", caption=f"low: focused, high: spread; {where}"),
        fig.Bars(title=f"{ctx.lm.name}: where attention goes, per layer ({method})",
                 categories=[str(l) for l in range(L)], series=pref, stacked=True, x_label="layer",
                 y_label="share of attention", unit="%",
                 caption="mean over the layer's heads of the mass on the first 4 keys (sink), the 8 before the query "
                         "(local), the last 10% (recent; overlaps the others) and the rest (global)"),
        fig.Heatmap(title=f"{ctx.lm.name}: attention by distance ({method})",
                    matrix=[s.relative_position_dist for s in stats], row_label="head (layer-major)",
                    col_label="distance to the query", value_label="mean attention", log_color=True,
                    caption="each row one head (layer 0 first), each column how far back the key is"),
        fig.Bars(title=f"{ctx.lm.name}: head types per layer ({method})", categories=[str(l) for l in range(L)],
                 series={t: v for t, v in types.items() if any(v)}, stacked=True, x_label="layer", y_label="heads",
                 caption="the document's six types, by its rules and thresholds"),
    ]


@dataclass(frozen=True, kw_only=True)
class SinkShareParams(HeadParams):
    min_share: float  # the claim holds when more than this share of heads keeps sink tokens


def _shares(classes: list) -> dict[str, float]:
    n = len(classes)
    types = Counter(c.head_type for c in classes)
    return {"sink_share": sum(c.keep_sinks for c in classes) / n,
            "small_window_share": sum(c.can_limit_window for c in classes) / n,
            "full_cache_share": sum(c.use_full_cache for c in classes) / n,
            **{f"share.{t}": types.get(t, 0) / n for t in ht.TYPES}}


def sliding_note(lm, length: int) -> str:
    """What sliding-window layers hide on passes of ``length`` tokens: their queries from the window on
    cannot see the first tokens, so their heads cannot put attention there; '' when none does."""
    windows = {l: w for l in range(lm.n_layers) if (w := lm.adapter.attention_window(lm.config, l)) and w < length}
    if not windows:
        return ""
    sizes = sorted(set(windows.values()))
    return (f"; {len(windows)} of {lm.n_layers} layers slide (window {', '.join(map(str, sizes))}): on passes of "
            f"{length} tokens their queries from token {sizes[0]} on cannot see the first tokens")


def random_key_shares(per: dict[str, torch.Tensor], idx=None) -> torch.Tensor:
    """Per draw of random keys, the share of heads that would keep sinks were each query's sink the keys
    drawn among those it sees: the document's rule (ht.keeps_sinks) on the samples idx (None: all)."""
    m = {k: (per[k] if idx is None else per[k][idx]).double().mean(0)
         for k in ("entropy", "uniformity", "random_keys")}
    return ht.keeps_sinks(m["entropy"][..., None], m["uniformity"][..., None], m["random_keys"]).double().mean((0, 1))


@check(SinkShareParams, needs=_needs)
def heads_sink_share(ctx: Context, p: SinkShareParams) -> Measurement:
    """Most heads need the first tokens kept (sink_positional and sink_mixed heads); the same rule
    reading, for every query, as many keys drawn at random among those it sees must not say so."""
    per, n = measure_heads(ctx, p), p.samples
    blind = sliding_note(ctx.lm, p.source.chunk)

    def decide(idx, didx):
        _, classes = classified(per, idx)
        v = _shares(classes)
        rand = random_key_shares(per, idx)
        rv = float(rand.mean() if didx is None else rand[didx].mean())
        counts = Counter(c.head_type for c in classes)
        return Outcome(
            holds=v["sink_share"] > p.min_share, primary="sink_share",
            summary=f"{len(classes)} heads: " + ", ".join(f"{t} {counts.get(t, 0)}" for t in ht.TYPES)
                    + f"; keep sinks {v['sink_share']:.1%}, small window {v['small_window_share']:.1%}, full cache "
                      f"{v['full_cache_share']:.1%}; on {ht.SINK_SIZE} random keys instead of the first "
                      f"({ht.RANDOM_KEY_DRAWS} draws): keep sinks {rv:.1%}{blind}",
            values={**v, "random_keys.sink_share": rv, "heads": len(classes),
                    **{f"count.{t}": counts.get(t, 0) for t in ht.TYPES}},
            controls={"random_keys": Condition("random_keys.sink_share", ">", p.min_share)},
            reason="" if v["sink_share"] > p.min_share else
            f"{v['sink_share']:.1%} of heads keep sinks (needs > {p.min_share:.0%})")

    stats, classes = classified(per)
    return Measurement(
        decide, n=n, groups=p.documents, resampled="document", unit="%", draws=ht.RANDOM_KEY_DRAWS,
        bound={"op": ">", "value": p.min_share, "abs": False},
        details={"summary": ht.summary(classes), "samples": f"{n} samples of {p.source.chunk} tokens",
                 "random_keys": f"the control reads, for every query, {ht.SINK_SIZE} keys drawn among those it sees "
                                f"instead of the first {ht.SINK_SIZE} ({ht.RANDOM_KEY_DRAWS} draws, resampled with the "
                                "documents): a head that gives any few keys this much is no sink head"},
        figures=head_figures(ctx, stats, classes, p), artifacts=artifacts(ctx, stats, classes, p))


@dataclass(frozen=True, kw_only=True)
class SummaryParams(Params):
    distribution: dict[str, int]  # the document's head counts per type
    stated: dict[str, int]  # its summary: total_heads, limitable_heads, sink_heads, small_window, full_cache


@check(SummaryParams, needs_model=False)
def heads_summary_consistent(ctx: None, p: SummaryParams) -> Measurement:
    """The document's summary numbers against what its own distribution and rules give."""
    d = {t: p.distribution.get(t, 0) for t in ht.TYPES}
    unknown = sorted(set(p.distribution) - set(ht.TYPES))
    if unknown:
        raise ClaimInvalid(f"unknown head types {unknown}; the document's are {ht.TYPES}")
    # by the document's classifier: which types can limit their window, keep sinks, use the full cache
    derived = {"total_heads": sum(d.values()),
               "limitable_heads": d["sink_positional"] + d["true_positional"] + d["sink_mixed"],
               "small_window": d["sink_positional"] + d["true_positional"] + d["sink_mixed"],
               "sink_heads": d["sink_positional"] + d["sink_mixed"],
               "full_cache": d["gathering"] + d["mixed"]}
    # other rules in the document's own code that a stated number may follow: an earlier one (the summary
    # is stale: a real inconsistency) or another reading of the same word (not an inconsistency)
    other = {"limitable_heads": ("stale", "the first analyzer's rule, positional heads only (sink-positional + "
                                          "true-positional)", d["sink_positional"] + d["true_positional"]),
             "full_cache": ("reading", "the compressor's 'full' strategy, which gives mixed heads a window "
                                       "(gathering heads only)", d["gathering"])}
    off, notes = {}, []
    for k, v in p.stated.items():
        if k not in derived or v == derived[k]:
            continue
        kind, rule, alt = other.get(k, ("", "", None))
        if kind == "reading" and v == alt:
            notes.append(f"{k} stated {v}: a matter of reading, not an error: {rule} gives {alt}; the "
                         f"classification's own rule gives {derived[k]}")
            continue
        off[k] = (v, derived[k])
        notes.append(f"{k} stated {v}, but the distribution gives {derived[k]}"
                     + (f": a stale summary, {rule} gives {alt}" if kind == "stale" and v == alt else ""))
    return fixed(Outcome(
        holds=not off, primary="inconsistencies",
        summary="; ".join(f"{k}: stated {v}, its distribution gives {derived[k]}" for k, v in p.stated.items()
                          if k in derived),
        values={"inconsistencies": len(off), **{f"stated.{k}": v for k, v in p.stated.items()},
                **{f"derived.{k}": v for k, v in derived.items()}},
        reason="; ".join(notes)),
        details={"derived": derived, "stated": p.stated, "other_rules": {k: [r, a] for k, (_, r, a) in other.items()}})
