"""Attention-head statistics, the six head types and a KV budget per head: pure, no model.

The statistics and rules are those of the head-classification document (002) and its code
(kvcompress): per query head, averaged over queries and then over chunks, with the thresholds
LOW_H 1.5, HIGH_H 3.0, DEAD_KL 0.1, HIGH_LOCAL 0.6, HIGH_SINK 0.3 checked in the document's order.
Field names follow its head_statistics.json / head_classifications.json, so the files this
writes can be compared with the document's own.
"""
from __future__ import annotations

import functools
import math
from collections import Counter
from dataclasses import dataclass

import torch

TYPES = ("sink_positional", "true_positional", "sink_mixed", "gathering", "mixed", "dead")
SINK_SIZE, LOCAL_WINDOW, RECENT_RATIO, REL_BINS = 4, 8, 0.1, 64
LOW_H, HIGH_H, DEAD_KL, HIGH_LOCAL, HIGH_SINK = 1.5, 3.0, 0.1, 0.6, 0.3
EPS = 1e-10
RANDOM_KEY_DRAWS = 20  # the sink statistic on random keys instead of the first: the sink share's control
QUERY_BLOCK = 256  # queries per block when summing a log a over the keys a causal query can see


@functools.lru_cache(maxsize=4)
def random_keys(T: int, *, sink: int = SINK_SIZE, draws: int = RANDOM_KEY_DRAWS) -> torch.Tensor:
    """(draws, T, sink) key positions: for each query q, ``sink`` keys drawn (seed 0) among the q + 1 it sees,
    all of them where it sees fewer (then padded with later keys, which a causal row gives no attention)."""
    g = torch.Generator().manual_seed(0)
    later = torch.ones(T, T, dtype=torch.bool).triu(1)
    return torch.stack([torch.rand(T, T, generator=g).masked_fill(later, 2.0).topk(min(sink, T), dim=-1,
                                                                                     largest=False).indices
                        for _ in range(draws)])


def attention_profile(a: torch.Tensor, *, sink: int = SINK_SIZE, local: int = LOCAL_WINDOW,
                      recent_ratio: float = RECENT_RATIO, bins: int = REL_BINS) -> dict[str, torch.Tensor]:
    """Per sample and head, the means over queries of causal attention probabilities a (B, H, T, T)
    (zero above the diagonal: a query reads no later key).

    entropy, max, sink (keys < sink), recent (keys >= int(0.9 T)), rel (B, H, bins): rel[d] the mean
    over queries of a[q, q - d]; local (keys q-local..q, the query included, as the document did and as a
    KV window keeps it); uniformity: mean over queries q >= 1 of KL(a[q, :q+1] || uniform);
    random_keys (B, H, draws): the sink statistic with each query's first ``sink`` keys replaced by
    ``sink`` keys drawn among those it sees (random_keys(T)): what a head gives any few keys it can read.
    """
    a = a.detach().float()
    B, H, T, K = a.shape
    # (B, H, T): sum_k a log a, zero where a is zero. The document writes a log(a + 1e-10); over a row
    # the two differ by at most T x 1e-10, below float32's resolution of sums of this size. Summed by
    # blocks of queries over the keys up to the block's last query: the keys above the diagonal hold
    # zeros, which add nothing, and skipping them roughly halves the cost of the costliest statistic
    plogp = torch.cat([-torch.special.entr(a[..., i:i + QUERY_BLOCK, :i + QUERY_BLOCK]).sum(-1)
                       for i in range(0, T, QUERY_BLOCK)], dim=-1)
    rel = torch.stack([torch.diagonal(a, offset=-d, dim1=-2, dim2=-1).sum(-1) if d < T else a.new_zeros(B, H)
                       for d in range(bins)], dim=-1) / T  # (B, H, bins)
    q = torch.arange(T, dtype=torch.float32, device=a.device)
    # KL from uniform over the q + 1 visible keys: a causal softmax row puts its whole mass (1) on them
    kl = plogp - (1.0 / (q + 1) + EPS).log()  # (B, H, T)
    entropy = -plogp
    sinks = a[..., :sink].sum(-1).mean(-1)
    local_incl = rel[..., :local + 1].sum(-1)
    drawn = random_keys(T, sink=sink).to(a.device)
    rand = torch.stack([a.gather(-1, keys.expand(B, H, T, -1)).sum(-1).mean(-1) for keys in drawn], dim=-1)
    return {
        "entropy": entropy.mean(-1),
        "max": a.amax(-1).mean(-1),
        "sink": sinks,
        "recent": a[..., max(0, int(K * (1 - recent_ratio))):].sum(-1).mean(-1),
        "local": local_incl,
        "global": (1 - sinks - local_incl).clamp(min=0),  # what sink and local leave, as the document computed it
        "uniformity": kl[..., 1:].mean(-1) if T > 1 else kl.new_zeros(B, H),
        "rel": rel,
        "random_keys": rand,
    }


@dataclass(frozen=True)
class HeadStats:
    """One query head's statistics, as the document's HeadStatistics (averaged over chunks)."""

    layer_idx: int
    head_idx: int
    mean_entropy: float
    std_entropy: float
    max_attention_mean: float
    position_preference: dict
    sink_ratio: float
    uniformity_score: float
    relative_position_dist: list


def head_stats(per: dict[str, torch.Tensor]) -> list[HeadStats]:
    """From per-sample statistics {name: (N, L, H[, bins])} to one HeadStats per (layer, head).

    Means over samples (the document's chunks); std_entropy is the population standard deviation
    of the per-sample entropies; global is what sink and local leave.
    """
    m = {k: v.double().mean(0) for k, v in per.items()}
    std = per["entropy"].double().std(0, correction=0)
    glob = m["global"]
    L, H = m["entropy"].shape
    return [HeadStats(l, h, float(m["entropy"][l, h]), float(std[l, h]), float(m["max"][l, h]),
                      {"sink": float(m["sink"][l, h]), "recent": float(m["recent"][l, h]),
                       "local": float(m["local"][l, h]), "global": float(glob[l, h])},
                      float(m["sink"][l, h]), float(m["uniformity"][l, h]), m["rel"][l, h].tolist())
            for l in range(L) for h in range(H)]


@dataclass(frozen=True)
class HeadClass:
    """The document's HeadClassification: a type and what the KV cache of that head may drop."""

    layer_idx: int
    head_idx: int
    head_type: str
    confidence: float
    can_prune: bool = False
    can_limit_window: bool = False
    recommended_window: int = -1
    keep_sinks: bool = False
    sink_size: int = SINK_SIZE
    use_full_cache: bool = True
    compression_strategy: str = "none"


def classify(s: HeadStats) -> HeadClass:
    """The document's rules, in its order: dead, then low entropy, medium entropy with sinks, high entropy."""
    base = dict(layer_idx=s.layer_idx, head_idx=s.head_idx)
    local = s.position_preference["local"]
    if s.uniformity_score < DEAD_KL:
        return HeadClass(**base, head_type="dead", confidence=1.0 - s.uniformity_score / DEAD_KL, can_prune=True,
                         use_full_cache=False, compression_strategy="prune")
    if s.mean_entropy < LOW_H:
        if s.sink_ratio > HIGH_SINK:
            return HeadClass(**base, head_type="sink_positional", confidence=s.sink_ratio, can_limit_window=True,
                             recommended_window=8, keep_sinks=True, use_full_cache=False,
                             compression_strategy="sink_window")
        if local > HIGH_LOCAL:
            window, cumsum = -1, 0.0
            for i, v in enumerate(s.relative_position_dist[:16]):  # where 80% of the attention lies
                cumsum += v
                if cumsum > 0.8:
                    window = max(8, i + 4)
                    break
            return HeadClass(**base, head_type="true_positional",
                             confidence=min(1.0, (1.0 - s.mean_entropy / LOW_H) * (local / HIGH_LOCAL)),
                             can_limit_window=True, recommended_window=16 if window == -1 else window,
                             use_full_cache=False, compression_strategy="window_only")
        return HeadClass(**base, head_type="mixed", confidence=0.5)
    if s.mean_entropy < HIGH_H and s.sink_ratio > HIGH_SINK:
        r = (s.mean_entropy - LOW_H) / (HIGH_H - LOW_H)
        return HeadClass(**base, head_type="sink_mixed", confidence=min(1.0, max(0.0, s.sink_ratio * (1.0 - r))),
                         can_limit_window=True, recommended_window=int(16 + r * 16), keep_sinks=True,
                         use_full_cache=False, compression_strategy="sink_window")
    if s.mean_entropy > HIGH_H:
        return HeadClass(**base, head_type="gathering", confidence=min(1.0, (s.mean_entropy - HIGH_H) / 2.0),
                         compression_strategy="full")
    return HeadClass(**base, head_type="mixed", confidence=0.5)


def keeps_sinks(entropy: torch.Tensor, uniformity: torch.Tensor, sink: torch.Tensor) -> torch.Tensor:
    """classify(...).keep_sinks on tensors of heads' mean statistics: not dead, entropy below HIGH_H
    (sink_positional below LOW_H, sink_mixed between) and more than HIGH_SINK of the attention on the sink."""
    return (uniformity >= DEAD_KL) & (entropy < HIGH_H) & (sink > HIGH_SINK)


def summary(classes: list[HeadClass]) -> dict:
    """The document's summary block, and the 'compression potential' lines of its report."""
    n = len(classes)
    types = Counter(c.head_type for c in classes)
    strategies = Counter(c.compression_strategy for c in classes)
    limitable = sum(c.can_limit_window for c in classes)
    sinks = sum(c.keep_sinks for c in classes)
    return {"total_heads": n, "type_distribution": {t: types.get(t, 0) for t in TYPES},
            "type_percentages": {t: 100 * types.get(t, 0) / n for t in TYPES},
            "prunable_heads": sum(c.can_prune for c in classes), "limitable_heads": limitable,
            "limitable_percentage": 100 * limitable / n,
            "compression_strategies": {s: strategies.get(s, 0) for s in ("none", "prune", "window_only",
                                                                          "sink_window", "full")},
            "sink_heads": sinks, "sink_heads_percentage": 100 * sinks / n,
            "full_cache_heads": sum(c.use_full_cache for c in classes)}


# ---------------------------------------------------------------- KV budgets

@dataclass(frozen=True)
class Budget:
    """What one head keeps of the KV cache: the first ``sink`` positions and the last ``window``
    (``window`` None: every position); ``prune``: nothing, the head writes zeros."""

    sink: int = 0
    window: int | None = None
    prune: bool = False

    @property
    def full(self) -> bool:
        return self.window is None and not self.prune

    def kept(self, seen: int) -> int:
        """Entries held after ``seen`` tokens."""
        if self.prune:
            return 0
        if self.window is None:
            return seen
        return min(seen, self.sink + self.window)

    def __or__(self, other: Budget) -> Budget:
        """What keeps every entry either keeps: a KV head read by several query heads."""
        if self.prune:
            return other
        if other.prune:
            return self
        if self.full or other.full:
            return Budget()
        return Budget(max(self.sink, other.sink), max(self.window, other.window))

    def label(self) -> str:
        if self.prune:
            return "pruned"
        if self.full:
            return "full"
        return f"sink {self.sink} + window {self.window}" if self.sink else f"window {self.window}"


FULL = Budget()
# the document's compressor (HeadAwareCompressor.from_classifications): a type's window unless the
# classification recommends one; gathering and mixed heads capped at sink + 256 and sink + 64
DOCUMENTED_WINDOWS = {"sink_positional": 8, "true_positional": 8, "sink_mixed": 24, "mixed": 64, "gathering": 256}


def budget(c: HeadClass, *, mapping: str) -> Budget:
    """A head's budget. ``documented``: the document's compressor as built (every head windowed,
    gathering at sink + 256, mixed at sink + 64); ``correct``: what the classification promises
    (gathering and mixed heads keep the full cache)."""
    if c.head_type == "dead":
        return Budget(prune=True)
    if mapping == "correct" and c.use_full_cache:
        return FULL
    window = c.recommended_window if c.recommended_window > 0 else DOCUMENTED_WINDOWS[c.head_type]
    sink = 0 if c.head_type == "true_positional" else c.sink_size
    return Budget(sink, window)


def uniform_window(total_entries: float, n_heads: int, sink: int) -> int:
    """The window of a uniform sink + window policy holding ``total_entries`` over ``n_heads`` heads."""
    return max(1, math.floor(total_entries / n_heads) - sink)
