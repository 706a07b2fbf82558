"""Streaming reducers: per-sample statistics of what a capture point hands over, batch by batch.

A reducer is built for one point and knows the shape of what it reduces (``Shape``): block
outputs and MLP checkpoints are activations (B, T, D); ``attn.{l}`` is attention probabilities
(B, H, T, T); ``attn.{l}.q/k/v`` are per-head vectors (B, heads, T, head_dim). Each reducer says
which of these kinds it applies to and, in ``gives``, the statistics it makes with their
per-sample shapes; ``STATISTICS`` is built from those, and ``python -m massact points MODEL``
lists them. A reducer keeps per-sample results, never the full tensor unless asked (``full``).
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from massact.metrics.headtypes import attention_profile
from massact.metrics.outliers import energy_share

ACTIVATION, PROBS, HEADS = "activation", "probs", "heads"  # the kinds of capture point
LAYOUT = {ACTIVATION: "(samples, tokens, features)", PROBS: "(samples, heads, queries, keys)",
          HEADS: "(samples, heads, tokens, head_dim)"}


@dataclass(frozen=True)
class Shape:
    """What a point hands its reducers each batch: its kind and, for per-head points, the sizes."""

    kind: str = ACTIVATION
    heads: int | None = None  # query heads (probabilities, q) or KV heads (k, v)
    head_dim: int | None = None

    def describe(self) -> str:
        if self.kind == HEADS:
            return f"(samples, {self.heads} heads, tokens, {self.head_dim})"
        if self.kind == PROBS:
            return f"(samples, {self.heads} heads, queries, keys)"
        return LAYOUT[self.kind]


class Reducer:
    """Streaming per-sample statistic: update() per batch, result() at the end.

    ``kinds``: the kinds of point it applies to; ``gives``: statistic name -> per-sample shape and
    meaning (what ``result()`` returns, samples first).
    """

    kinds: ClassVar[frozenset[str]] = frozenset({ACTIVATION})
    gives: ClassVar[dict[str, str]] = {}

    def __init__(self, shape: Shape = Shape()):
        if shape.kind not in self.kinds:
            raise ValueError(f"{type(self).__name__} reduces {sorted(self.kinds)} points, not {shape.kind}")
        self.shape = shape

    def update(self, a: torch.Tensor, mask: torch.Tensor | None, absa: torch.Tensor,
               token_max: torch.Tensor | None = None) -> None:
        """a as ``self.shape`` says, mask (B, T) or None where the batch has no padding; absa =
        masked_abs(a, mask) and, for activations, token_max = absa.amax(2) (B, T), computed once for
        all reducers of a point (attention probabilities: absa is a itself). An update never waits for
        the device (no .item(), no test of a tensor's value): what it keeps stays where ``a`` is."""
        raise NotImplementedError

    def result(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError


def token_mask(mask: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """The (B, T) mask as a bool that broadcasts over ``a``: (B, T, 1) for activations (B, T, D),
    (B, 1, T, 1) for per-head vectors (B, H, T, hd)."""
    m = mask.bool()
    return m[:, None, :, None] if a.dim() == 4 else m[..., None]


def masked_abs(a: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """|a| in float32 with padded tokens set to 0 (mask None: no padding); the shape of a."""
    out = a.detach().float().abs()
    return out if mask is None else out.masked_fill(~token_mask(mask, a), 0.0)


class TopK(Reducer):
    """Per sample: the k largest |a| over (token, feature), signed values and positions."""

    gives = {"top_abs": "(samples, 3): the 3 largest |a|", "top_value": "(samples, 3): their signed values",
             "top_token": "(samples, 3): their tokens", "top_feature": "(samples, 3): their features"}

    def __init__(self, k: int = 3, shape: Shape = Shape()):
        super().__init__(shape)
        self.k = k
        self.parts: dict[str, list[torch.Tensor]] = {"top_abs": [], "top_value": [], "top_token": [], "top_feature": []}

    def update(self, a, mask, absa, token_max=None):
        B, T, D = a.shape
        k = min(self.k, T * D)
        tmax = absa.amax(dim=2) if token_max is None else token_max
        if mask is not None:  # a padded token is never picked, not even among zeros
            tmax = tmax.masked_fill(~mask.bool(), -1.0)
        # the k largest entries lie in the k tokens with the largest maxima: search those alone
        toks = tmax.topk(min(k, T), dim=1).indices  # (B, <=k)
        sub = absa.gather(1, toks[..., None].expand(-1, -1, D))  # (B, <=k, D)
        vals, j = sub.reshape(B, -1).topk(k, dim=1)  # (B, k)
        token, feature = toks.gather(1, j // D), j % D
        # the signed values picked in a's own dtype, then widened: no float32 copy of all of a
        signed = a.detach().reshape(B, T * D).gather(1, token * D + feature).float()
        self.parts["top_abs"].append(vals)
        self.parts["top_value"].append(signed)
        self.parts["top_token"].append(token)
        self.parts["top_feature"].append(feature)

    def result(self):
        return {k: torch.cat(v) for k, v in self.parts.items()}


def lower_median(x: torch.Tensor) -> torch.Tensor:
    """Per row of x (B, n), non-negative float32 (|a|): the lower of the two middle values, as torch.median
    gives it. On the CPU by numpy's introselect, ~6x faster there than torch.median (the capture pass's
    costliest statistic); elsewhere by radix_lower_median, which spreads a row over the whole device
    where torch.median and torch.kthvalue select each row within one block of threads."""
    if x.shape[1] == 0:  # torch says an empty row has no median
        return x.median(dim=1).values
    if x.device.type != "cpu":
        return radix_lower_median(x)
    k = (x.shape[1] - 1) // 2
    return torch.from_numpy(np.partition(x.numpy(), k, axis=1)[:, k].copy())


# the 31 bits of a non-negative float32 below the sign, high first, in digits of these widths
RADIX_DIGITS = ((21, 10), (11, 10), (0, 11))


def radix_lower_median(x: torch.Tensor) -> torch.Tensor:
    """torch.median(x, dim=1).values for x (B, n) of non-negative float32 (inf included; a NaN fails the pass's
    finite check anyway), exactly, in a few kernels over all
    of x and none that waits for the host: the bits of a non-negative float order as integers do, so the
    median's bits are found a digit at a time (RADIX_DIGITS), each digit from a histogram of that digit
    among the entries that share the digits found so far."""
    B, n = x.shape
    bits = x.contiguous().view(torch.int32)
    rank = torch.full((B, 1), (n - 1) // 2, dtype=torch.long, device=x.device)  # rank among those still in
    prefix = torch.zeros(B, 1, dtype=torch.int32, device=x.device)  # the digits found so far
    for shift, width in RADIX_DIGITS:
        digit = ((bits >> shift) & ((1 << width) - 1)).long()
        still = ((bits >> (shift + width)) == prefix).long()  # the entries whose higher digits are the median's
        counts = torch.zeros(B, 1 << width, dtype=torch.long, device=x.device).scatter_add_(1, digit, still)
        below = counts.cumsum(1)
        d = torch.searchsorted(below, rank, right=True)  # the first digit whose running count passes rank
        rank = rank - torch.where(d > 0, below.gather(1, (d - 1).clamp(min=0)), 0)
        prefix = (prefix << width) | d.int()
    return prefix.view(torch.float32)[:, 0]


class Median(Reducer):
    """Per sample: the median |a| over every unpadded (token, feature) entry (the lower of two middles)."""

    gives = {"median": "(samples,): the median |a| over tokens and features"}

    def __init__(self, shape: Shape = Shape()):
        super().__init__(shape)
        self.parts: list[torch.Tensor] = []

    def update(self, a, mask, absa, token_max=None):
        if mask is None:  # one call for the batch
            self.parts.append(lower_median(absa.reshape(a.shape[0], -1)))
            return
        for b in range(a.shape[0]):
            self.parts.append(lower_median(absa[b][mask[b].bool()].reshape(1, -1)))

    def result(self):
        return {"median": torch.cat(self.parts)}


class FeatureMax(Reducer):
    """Per sample and feature: max |a| over tokens; (N, D)."""

    gives = {"feature_max": "(samples, features): max |a| over tokens"}

    def __init__(self, shape: Shape = Shape()):
        super().__init__(shape)
        self.parts: list[torch.Tensor] = []

    def update(self, a, mask, absa, token_max=None):
        self.parts.append(absa.amax(dim=1))

    def result(self):
        return {"feature_max": torch.cat(self.parts)}


class TokenMax(Reducer):
    """Per sample and token: max |a| over features; (N, T), padded tokens 0."""

    gives = {"token_max": "(samples, tokens): max |a| over features"}

    def __init__(self, shape: Shape = Shape()):
        super().__init__(shape)
        self.parts: list[torch.Tensor] = []

    def update(self, a, mask, absa, token_max=None):
        self.parts.append(absa.amax(dim=2) if token_max is None else token_max)

    def result(self):
        return {"token_max": torch.cat(self.parts)}


class Norm(Reducer):
    """Per sample and token (and head): the L2 norm of the vector, over features or head_dim; padded
    tokens 0. Activations give (N, T), per-head points (N, H, T)."""

    kinds = frozenset({ACTIVATION, HEADS})
    gives = {"norm": "(samples, tokens), or (samples, heads, tokens) at attn.{l}.q/k/v: the L2 norm of each "
                     "token's vector (of each head's)"}

    def __init__(self, shape: Shape = Shape()):
        super().__init__(shape)
        self.parts: list[torch.Tensor] = []

    def update(self, a, mask, absa, token_max=None):
        self.parts.append(absa.norm(dim=-1))  # |a| has a's norm, and padded tokens are 0 in it

    def result(self):
        return {"norm": torch.cat(self.parts)}


ENERGY_FRACS = (0.0005, 0.001)  # the outlier document's "0.05%-0.1% of entries"


class EnergyShare(Reducer):
    """Per sample: the share of sum(a^2) over its unpadded entries that the top ENERGY_FRACS of them
    by |a| carry, one column per fraction; (N, len(ENERGY_FRACS))."""

    gives = {"energy_share": "(samples, 2): the share of sum(a^2) the largest 0.05% and 0.1% of entries carry"}

    def __init__(self, shape: Shape = Shape()):
        super().__init__(shape)
        self.parts: list[torch.Tensor] = []

    def update(self, a, mask, absa, token_max=None):
        rows = [absa] if mask is None else [absa[b][mask[b].bool()][None] for b in range(a.shape[0])]
        for x in rows:  # (B or 1, T, D)
            self.parts.append(torch.stack([energy_share(x, frac=f) for f in ENERGY_FRACS], dim=1))

    def result(self):
        return {"energy_share": torch.cat(self.parts)}


class Keep(Reducer):
    """The full tensor, padded tokens 0: only for the few points a claim asks for by name."""

    kinds = frozenset({ACTIVATION, HEADS})
    gives = {"full": "the whole tensor, samples first: (samples, tokens, features) or (samples, heads, tokens, "
                     "head_dim); kept in memory, so ask for it at a few points only"}

    def __init__(self, shape: Shape = Shape()):
        super().__init__(shape)
        self.parts: list[torch.Tensor] = []

    def update(self, a, mask, absa, token_max=None):
        full = a.detach().float()
        self.parts.append(full if mask is None else full.masked_fill(~token_mask(mask, a), 0.0))

    def result(self):
        return {"full": torch.cat(self.parts)}


class Spill(Reducer):
    """The full tensor in the model's own dtype, (N, T, D), bit for bit, kept off the heap: written to an
    unnamed temporary file as it comes and read back memory-mapped. The residual stream that passes
    resuming at the next block start from (the engine's prefix reuse); a read copies only what it takes."""

    gives = {"resume": "(samples, tokens, features) in the model's dtype, on disk: what a resumed pass starts from"}

    def __init__(self, shape: Shape = Shape()):
        super().__init__(shape)
        self.file = tempfile.TemporaryFile(prefix="massact-resume-")
        self.dims: tuple[int, ...] | None = None
        self.dtype: torch.dtype | None = None

    def update(self, a, mask, absa, token_max=None):
        if mask is not None:
            raise ValueError("a pass resumes from whole samples: padding is not supported")
        x = a.detach().cpu().contiguous()
        self.file.write(x.view(torch.uint8).numpy().data)
        self.dims = (len(x) + (self.dims[0] if self.dims else 0), *x.shape[1:])
        self.dtype = x.dtype

    def result(self):
        if self.dims is None:
            return {"resume": torch.empty(0)}
        self.file.flush()
        raw = np.memmap(self.file, dtype=np.uint8, mode="c")  # copy-on-write: the file is never changed
        return {"resume": torch.from_numpy(raw).view(self.dtype).reshape(self.dims)}


class HeadStats(Reducer):
    """Per sample and head, means over (unpadded) queries of attention probabilities (B, H, T, T).

    first_incl: mass on key 0 with query 0 included (it always gives 1.0: the documents' method);
    first_excl: the same over queries >= 1; sink: mass on the first ``sink`` keys; entropy (nats).
    """

    kinds = frozenset({PROBS})
    gives = {"first_incl": "(samples, heads): mean attention on key 0 over every query (query 0 gives 1.0)",
             "first_excl": "(samples, heads): mean attention on key 0 over queries >= 1",
             "sink": "(samples, heads): mean attention on the first 4 keys",
             "entropy": "(samples, heads): mean entropy of a query's attention (nats)"}

    def __init__(self, sink: int = 4, shape: Shape = Shape(PROBS)):
        super().__init__(shape)
        self.sink = sink
        self.parts: dict[str, list[torch.Tensor]] = {"first_incl": [], "first_excl": [], "sink": [], "entropy": []}

    def update(self, a, mask, absa, token_max=None):
        a = a.detach().float()  # (B, H, T, T)
        counted = torch.ones(a.shape[0], a.shape[2], device=a.device) if mask is None else mask.float()
        q = counted[:, None, :]  # (B, 1, T): which queries count
        q1 = q.clone()
        q1[..., 0] = 0

        def mean_q(x, w):  # x (B, H, T) averaged over the queries weighted by w
            return (x * w).sum(-1) / w.sum(-1).clamp(min=1)

        self.parts["first_incl"].append(mean_q(a[..., 0], q))
        self.parts["first_excl"].append(mean_q(a[..., 0], q1))
        self.parts["sink"].append(mean_q(a[..., : self.sink].sum(-1), q))
        self.parts["entropy"].append(mean_q(-(a * (a + 1e-10).log()).sum(-1), q))

    def result(self):
        return {k: torch.cat(v) for k, v in self.parts.items()}


class Received(Reducer):
    """Per sample, head and key: the mean attention probability the key receives from the (unpadded)
    queries after it, q > k; the last key has none and gets 0. For key 0 this is ``first_excl``."""

    kinds = frozenset({PROBS})
    gives = {"received": "(samples, heads, keys): mean attention each key gets from the queries after it"}

    def __init__(self, shape: Shape = Shape(PROBS)):
        super().__init__(shape)
        self.parts: list[torch.Tensor] = []

    def update(self, a, mask, absa, token_max=None):
        T = a.shape[-1]
        later = torch.ones(T, T, dtype=torch.bool, device=a.device).tril(-1)  # [q, k]: q > k
        # (B, T, T): query q counts for key k
        w = later.expand(a.shape[0], T, T) if mask is None else later[None] & mask.bool()[:, :, None]
        got = torch.einsum("bhqk,bqk->bhk", a.detach().float(), w.float())
        self.parts.append(got / w.sum(1).clamp(min=1)[:, None, :])

    def result(self):
        return {"received": torch.cat(self.parts)}


class HeadProfile(Reducer):
    """Per sample and head, the head-classification statistics of attention probabilities (B, H, T, T)
    (massact.metrics.headtypes.attention_profile), named ``hp_<statistic>``. Whole samples only:
    reduced inside the hook, so no layer's (H, T, T) outlives its own pass through the layer."""

    kinds = frozenset({PROBS})
    gives = {f"hp_{k}": f"(samples, heads{dims}): the head-classification statistic {k} (massact/metrics/headtypes.py)"
             for k, dims in (("entropy", ""), ("max", ""), ("sink", ""), ("recent", ""), ("local", ""), ("global", ""),
                             ("uniformity", ""), ("rel", ", 64"), ("random_keys", ", 20"))}

    def __init__(self, shape: Shape = Shape(PROBS)):
        super().__init__(shape)
        self.parts: dict[str, list[torch.Tensor]] = {}

    def update(self, a, mask, absa, token_max=None):
        if mask is not None:
            raise ValueError("head profiles are taken over whole samples: padding is not supported")
        for k, v in attention_profile(a).items():
            self.parts.setdefault(f"hp_{k}", []).append(v)

    def result(self):
        return {k: torch.cat(v) for k, v in self.parts.items()}


HEAD_PROFILE = tuple(HeadProfile.gives)

REDUCERS: tuple[type[Reducer], ...] = (TopK, Median, FeatureMax, TokenMax, Norm, EnergyShare, Keep, Spill,
                                       HeadStats, Received, HeadProfile)
# statistic name -> the reducer that makes it; a pass builds each reducer a point needs once
STATISTICS: dict[str, type[Reducer]] = {name: cls for cls in REDUCERS for name in cls.gives}


def applies(stat: str, kind: str) -> bool:
    """Whether statistic ``stat`` can be taken at a point of ``kind``; a name not in STATISTICS (a runner's
    own: ``loss``, the KV cache's) only at the runners' pseudo-points."""
    return kind in STATISTICS[stat].kinds if stat in STATISTICS else kind not in LAYOUT


def produced(stats: set[str] | frozenset[str]) -> frozenset[str]:
    """Every statistic the reducers that make ``stats`` give (one TopK gives all four top_* at once)."""
    kinds = {STATISTICS[s] for s in stats}
    return frozenset(name for name, kind in STATISTICS.items() if kind in kinds)


def reducers_for(stats: set[str] | frozenset[str], shape: Shape = Shape()) -> list[Reducer]:
    """One reducer per kind that the statistics ``stats`` need, in a fixed order, built for ``shape``."""
    unknown = set(stats) - set(STATISTICS)
    if unknown:
        raise ValueError(f"unknown statistic(s) {sorted(unknown)}; known: {sorted(STATISTICS)}")
    kinds = list(dict.fromkeys(STATISTICS[s] for s in sorted(stats, key=list(STATISTICS).index)))
    return [k(shape=shape) for k in kinds]
