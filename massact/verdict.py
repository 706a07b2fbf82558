"""How a measurement becomes a verdict: the whole statistics of a claim, read top to bottom.

1. A check measures once and hands over a Measurement: ``decide(idx)`` evaluates the claim on the
   samples ``idx`` (None: all of them) and returns an Outcome, the named values and the decision.
   The claim's comparisons are Conditions on those values; a control is a Condition too, the one
   under which the control *also* satisfies the claim.
2. Units. What is resampled is what is independent: a sample, or, where samples share a source
   (chunks of one long document), the source with all its samples. A control drawn at random
   (random heads, directions, tokens) is drawn many times; its draws are resampled too, so the
   spread between draws is in its interval.
3. Intervals. ``RESAMPLES`` bootstrap resamples of the units (scipy.stats.bootstrap; the draws, when
   there are any, resampled independently of them). Each value's 95% interval is the wider of two
   from the same resamples: Student's t on the bootstrap standard error (units - 1 degrees of
   freedom, the error scaled by sqrt(n / (n - 1)), so a mean's interval is the classical t
   interval), and BCa at the level whose normal quantile equals that t quantile (the expanded BCa
   interval, which follows the skew of the statistic). benchmarks/coverage.py measures the pair's
   coverage on simulated data; from ``MIN_UNITS`` independent units on it covers at least 93% in
   every cell of its grid (the table is in the README). Fewer units decide nothing. A value that is
   the exponential of a mean (a perplexity ratio, exp of a mean NLL difference) gets its interval on
   the log scale, where the mean is, mapped back (``Measurement.log_scale``): Student's t on the
   ratio itself reaches far below a ratio of 10^5 whose log spreads by a few nats (to under 2 for
   smollm2-135m's x138,041 under one bootstrap seed in five).
4. Sides. A condition's interval lies on its holding side, its failing side, or straddles.
   holds: every condition holds and every control is ruled out (fails). refuted: a condition that
   fails on all samples has its interval wholly on the failing side. non-specific: the claim holds
   and so does a control. inconclusive: anything else; the reason names the interval that decides
   nothing. A measurement with nothing to resample (weights, a document's own numbers) is decided
   on its point values.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import scipy.stats
import torch

from massact.figures import Figure

VERDICTS = ("holds", "refuted", "inconclusive", "non-specific", "invalid")
RESAMPLES = 1000  # bootstrap resamples behind each interval (--resamples)
CONFIDENCE = 0.95
METHOD = "t/BCa"  # the wider of the Student-t and the expanded BCa interval (module docstring, 3.)
MIN_UNITS = 10  # the fewest independent units whose intervals cover >= 93% (benchmarks/coverage.py)
DRAWS = 20  # the fewest random draws of a control


class ClaimInvalid(Exception):
    """The claim cannot be evaluated as written on this model; the message says why."""


# ---------------------------------------------------------------- what a check says

@dataclass
class Outcome:
    """The claim evaluated on one set of samples (all of them, or a bootstrap resample)."""

    holds: bool
    summary: str
    values: dict[str, float] = field(default_factory=dict)
    primary: str | None = None  # the value the threshold applies to; reported with its interval
    # control name -> the condition under which the control *also* satisfies the claim (on ``values``)
    controls: dict[str, Condition] = field(default_factory=dict)
    reason: str = ""


OPS: dict[str, Callable[[float, float], bool]] = {
    ">": lambda x, t: x > t, ">=": lambda x, t: x >= t, "<": lambda x, t: x < t, "<=": lambda x, t: x <= t}


@dataclass(frozen=True)
class Condition:
    """One comparison: ``values[value] op threshold`` (``|value|`` when ``abs``).

    A value that is missing or nan fails: a claim that cannot be measured is not borne out.
    """

    value: str
    op: str
    threshold: float
    abs: bool = False

    def __post_init__(self):
        if self.op not in OPS:
            raise ValueError(f"op must be one of {sorted(OPS)}, not {self.op!r}")

    @classmethod
    def on(cls, value: str, bound: dict) -> Condition:
        """The condition a primary value and a report bound ``{"op", "value", "abs"}`` state."""
        return cls(value, bound["op"], float(bound["value"]), bool(bound.get("abs", False)))

    @property
    def compared(self) -> str:
        """The name of the compared quantity: the value, or its magnitude."""
        return f"|{self.value}|" if self.abs else self.value

    def holds(self, values: dict) -> bool:
        x = values.get(self.value)
        if not _number(x) or math.isnan(x):
            return False
        return OPS[self.op](abs(x) if self.abs else x, self.threshold)

    def side(self, lo: float, hi: float) -> str:
        """Where an interval [lo, hi] of the compared quantity lies: "holds" (all of it satisfies
        the condition), "fails" (none of it does) or "straddles"."""
        ok = OPS[self.op]
        if ok(lo, self.threshold) and ok(hi, self.threshold):
            return "holds"
        if not ok(lo, self.threshold) and not ok(hi, self.threshold):
            return "fails"
        return "straddles"

    def describe(self) -> str:
        return f"{self.compared} {self.op} {self.threshold:g}"


@dataclass
class Measurement:
    """What a check hands the judge: measured once, ``decide`` evaluated on resamples.

    ``n``: the samples ``decide`` indexes (0: nothing to resample: weights, a document's numbers).
    ``groups``: the independent unit of each sample (None: every sample its own); ``resampled`` names it.
    ``draws``: random draws of a control; when set, ``decide(idx, draws)`` also takes the draws to use.
    ``conditions``: the comparisons the claim makes, all of which Outcome.holds says hold; none
    given, the primary against ``bound``.
    """

    decide: Callable[..., Outcome]
    n: int = 0
    groups: Sequence[int] | None = None
    resampled: str = "sample"
    draws: int = 0
    unit: str = ""  # how the primary is shown: "%" (a fraction), "x" (a factor), "" (plain)
    bound: dict | None = None  # the threshold on the primary as a number: {"op", "value", "abs"}
    conditions: list[Condition] = field(default_factory=list)
    log_scale: frozenset[str] = frozenset()  # positive values (exp of a mean) whose interval is taken on their log
    selections: dict = field(default_factory=dict)  # made once from all samples: intervals are conditional on them
    details: dict = field(default_factory=dict)
    figures: list[Figure] = field(default_factory=list)
    artifacts: dict = field(default_factory=dict)  # file name -> JSON content, written beside results.json

    def members(self) -> list[list[int]]:
        """The samples of each unit, units in order of first appearance."""
        if self.groups is None:
            return [[i] for i in range(self.n)]
        if len(self.groups) != self.n:
            raise ValueError(f"groups names the unit of {len(self.groups)} samples, not of the {self.n} measured")
        out: dict[int, list[int]] = {}
        for i, g in enumerate(self.groups):
            out.setdefault(int(g), []).append(i)
        return list(out.values())


def fixed(outcome: Outcome, **kw) -> Measurement:
    """A Measurement with nothing to resample: the same outcome whatever the samples."""
    return Measurement(decide=lambda idx: outcome, **kw)


# ---------------------------------------------------------------- intervals

def expanded_level(units: int, confidence: float = CONFIDENCE) -> float:
    """The confidence level whose two-sided normal quantile equals Student's t quantile on units - 1
    degrees of freedom times sqrt(n / (n - 1)) (the bootstrap's small-sample variance)."""
    t = scipy.stats.t.ppf((1 + confidence) / 2, units - 1) * math.sqrt(units / (units - 1))
    return float(1 - 2 * scipy.stats.norm.sf(t))


def t_bca(point: float, dist: np.ndarray, bca: tuple[float, float], units: int) -> list[float]:
    """The wider of the Student-t interval on the bootstrap standard error and the expanded BCa
    interval ``bca`` (nan where BCa is undefined: a jackknife without spread)."""
    if dist.min() == dist.max():
        return [float(dist[0]), float(dist[0])]
    t = scipy.stats.t.ppf((1 + CONFIDENCE) / 2, units - 1)
    se = float(dist.std(ddof=1)) * math.sqrt(units / (units - 1))
    ends = [point - t * se, point + t * se] + [b for b in bca if math.isfinite(b)]
    return [float(min(ends)), float(max(ends))]


def bootstrap(data: tuple[np.ndarray, ...], statistic: Callable, point: np.ndarray, *, resamples: int, seed: int,
              vectorized: bool = False) -> tuple[np.ndarray, list[list[float] | None]]:
    """Resample ``data`` (the units, then any draws, each resampled on its own) and give the bootstrap
    distribution of ``statistic`` (quantities, resamples) and each quantity's interval (None where
    it is nan in some resample). The one interval procedure: the claims use it through resample(),
    benchmarks/coverage.py measures its coverage on simulated data."""
    units = len(data[0])
    with warnings.catch_warnings():  # degenerate columns (constant values, indicators) give nan: handled below
        warnings.simplefilter("ignore")
        res = scipy.stats.bootstrap(data, statistic, n_resamples=resamples, method="BCa", paired=False,
                                    confidence_level=expanded_level(units), vectorized=vectorized,
                                    rng=np.random.default_rng(seed))
    dist = np.atleast_2d(res.bootstrap_distribution)  # (quantities, resamples)
    lo, hi = np.atleast_1d(res.confidence_interval.low), np.atleast_1d(res.confidence_interval.high)
    point = np.atleast_1d(point)
    return dist, [None if np.isnan(dist[i]).any() or math.isnan(point[i]) else
                  t_bca(float(point[i]), dist[i], (float(lo[i]), float(hi[i])), units) for i in range(len(dist))]


@dataclass(frozen=True)
class Resampled:
    intervals: dict[str, list[float]]  # quantity -> 95% interval (none where it is missing in some resample)
    held: list[float]  # per condition: the share of resamples it holds in
    share: float  # of resamples on which the claim's conditions (the first ``claim`` of them) all hold


def resample(m: Measurement, names: list[str], read: Callable[[Outcome], list[float]], conds: list[Condition], *,
             claim: int, resamples: int, seed: int) -> Resampled:
    """Bootstrap the quantities ``read`` takes from an Outcome (named ``names``) and whether each
    condition holds, over the units of ``m`` (and its draws, resampled independently of them).

    A resample on which the claim cannot be evaluated (ClaimInvalid) has no quantities and holds nothing.
    """
    members = m.members()

    def row(out: Outcome) -> np.ndarray:
        return np.array(read(out) + [float(c.holds(out.values)) for c in conds])

    def statistic(uidx: np.ndarray, didx: np.ndarray | None = None) -> np.ndarray:
        idx = torch.as_tensor([i for u in uidx for i in members[int(u)]], dtype=torch.long)
        try:
            return row(m.decide(idx) if didx is None else m.decide(idx, torch.as_tensor(didx, dtype=torch.long)))
        except ClaimInvalid:
            return np.array([math.nan] * len(names) + [0.0] * len(conds))

    data = (np.arange(len(members)),) + ((np.arange(m.draws),) if m.draws else ())
    point = row(m.decide(None, None) if m.draws else m.decide(None))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a resample indexes small tensors: other threads only add their start-up
    try:
        dist, ints = bootstrap(data, statistic, point, resamples=resamples, seed=seed)
    finally:
        torch.set_num_threads(threads)
    held = dist[len(names):]
    return Resampled({k: v for k, v in zip(names, ints) if v is not None}, [float(h.mean()) for h in held],
                     float(held[:claim].min(axis=0).mean()) if claim else 1.0)


# ---------------------------------------------------------------- the verdict

@dataclass
class Judgement:
    verdict: str
    reason: str  # why, where the statistics decide it ("" when the point values do)
    intervals: dict[str, list[float]] = field(default_factory=dict)
    controls: dict[str, str] = field(default_factory=dict)  # name -> "ruled out", "also holds", "not ruled out"
    bootstrap: dict = field(default_factory=dict)  # what the intervals rest on, for results.json


def judge(m: Measurement, o: Outcome, conds: list[Condition], *, point: bool, resamples: int = RESAMPLES,
          seed: int = 0) -> Judgement:
    """The verdict on ``conds`` (the claim's comparisons; ``point``: whether they hold on all
    samples) and on the controls of ``o``, from where their intervals lie."""
    controls = dict(o.controls)
    units = len(m.members()) if m.n else 0
    if not m.n or resamples <= 0:  # nothing to resample, or the user turned it off: the point values decide
        also = [k for k, c in controls.items() if c.holds(o.values)]
        states = {k: "also holds" if k in also else "ruled out" for k in controls}
        verdict = "holds" if point else "refuted"
        if also and point:
            return Judgement("non-specific", _also(also), controls=states)
        return Judgement(verdict, _also(also) if also else "", controls=states)
    if not conds:
        raise AssertionError(f"a measurement over {m.n} samples states no condition to judge")
    numeric = [k for k, v in o.values.items() if _number(v)]
    magnitudes = sorted({c.value for c in [*conds, *controls.values()] if c.abs and c.value in numeric})
    names = numeric + [f"|{k}|" for k in magnitudes]

    def read(out: Outcome) -> list[float]:
        vals = [float(out.values[k]) if _number(out.values.get(k)) else math.nan for k in numeric]
        vals = [_log(v) if k in m.log_scale else v for k, v in zip(numeric, vals)]
        return vals + [abs(float(out.values[k])) if _number(out.values.get(k)) else math.nan for k in magnitudes]

    every = [*conds, *controls.values()]
    if units < 3:  # no interval: Student's t needs two degrees of freedom, BCa a jackknife with spread
        return Judgement("inconclusive", _too_few(units, m.resampled), controls={k: "not ruled out" for k in controls},
                         bootstrap={"unit": m.resampled, "units": units, "samples": m.n, "min_units": MIN_UNITS})
    rs = resample(m, names, read, every, claim=len(conds), resamples=resamples, seed=seed)
    intervals = {k: [math.exp(x) for x in v] if k in m.log_scale else v for k, v in rs.intervals.items()}
    sides = [_side(c, intervals, held) for c, held in zip(every, rs.held)]
    claim_sides, control_sides = sides[:len(conds)], dict(zip(controls, sides[len(conds):]))
    states = {k: {"fails": "ruled out", "holds": "also holds", "straddles": "not ruled out"}[s]
              for k, s in control_sides.items()}
    boot = {"unit": m.resampled, "units": units, "samples": m.n, "resamples": resamples, "seed": seed,
            "confidence": CONFIDENCE, "method": METHOD, "min_units": MIN_UNITS, "share_holding": rs.share,
            "conditions": {c.describe(): s for c, s in zip(conds, claim_sides)}}
    if m.draws:
        boot["draws"] = m.draws
    if controls:
        boot["controls"] = {k: f"{c.describe()}: {s}" for (k, c), s in zip(controls.items(), control_sides.values())}
    if m.log_scale:
        boot["log_scale"] = sorted(m.log_scale)
    j = Judgement("", "", intervals, states, boot)
    if units < MIN_UNITS:
        j.verdict, j.reason = "inconclusive", _too_few(units, m.resampled)
        return j
    if not point:
        failing = [s for c, s in zip(conds, claim_sides) if not c.holds(o.values)]
        j.verdict = "refuted" if "fails" in failing else "inconclusive"
    elif any(s != "holds" for s in claim_sides):
        j.verdict = "inconclusive"
    elif "holds" in control_sides.values():
        j.verdict = "non-specific"
    elif "straddles" in control_sides.values():
        j.verdict = "inconclusive"
    else:
        j.verdict = "holds"
    if j.verdict == "inconclusive":
        open_ = [c.describe() for c, s in zip(conds, claim_sides) if s == "straddles"]
        if open_ or not point:
            j.reason = (f"the {CONFIDENCE:.0%} interval of {', '.join(open_) or 'the deciding value'} straddles the "
                        f"threshold ({rs.share:.0%} of {resamples} resamples of {units} {m.resampled}s hold); more "
                        f"{m.resampled}s may decide it")
    loose = [k for k, s in control_sides.items() if s == "straddles"]
    also = [k for k, s in control_sides.items() if s == "holds"]
    parts = [j.reason] if j.reason else []
    if also:
        parts.append(_also(also))
    if loose:
        parts.append(f"the control(s) {', '.join(f'{k} ({controls[k].describe()})' for k in loose)} are not ruled "
                     f"out: their {CONFIDENCE:.0%} interval straddles the claim's threshold")
    j.reason = "; ".join(parts)
    return j


def _side(c: Condition, intervals: dict[str, list[float]], held: float) -> str:
    """Where the interval of the quantity ``c`` compares lies; placed by the share of resamples it
    holds in (all but 2.5% either way) when the quantity has no interval."""
    if c.compared in intervals:
        return c.side(*intervals[c.compared])
    tail = (1 - CONFIDENCE) / 2
    return "holds" if held >= 1 - tail else "fails" if held <= tail else "straddles"


def _log(v: float) -> float:
    return math.log(v) if v > 0 else math.nan


def _too_few(units: int, unit: str) -> str:
    return (f"too few independent {unit}s: {units}; the intervals cover 95% only from {MIN_UNITS} "
            "(benchmarks/coverage.py)")


def _also(names: list[str]) -> str:
    return f"the control(s) {', '.join(names)} also satisfy the claim"


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)
