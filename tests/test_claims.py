"""judge(): BCa intervals from scipy, conditions judged on their own intervals, controls reported
whatever the verdict; Measurements built by hand stand in for the checks."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import torch

from massact import claims
from massact.checks.base import ClaimInvalid, Condition, Measurement, Outcome
from massact.claims import judge, validate

# ten samples of a skewed quantity: the mean's interval is lopsided
DATA = torch.tensor([0.1, 0.2, 0.2, 0.3, 0.3, 0.4, 0.5, 0.8, 1.5, 3.0], dtype=torch.float64)


def claim(**extra):
    return validate({"id": "test.claim", "version": 1, "source": "s", "statement": "s", "check": "massive_exists",
                     "threshold": "t", "documented": "d", **extra})


def judged(monkeypatch, m: Measurement, *, resamples: int = 200, **extra):
    monkeypatch.setattr(claims, "measure", lambda c, ctx: m)
    return judge(claim(**extra), None, resamples=resamples)


def mean_above(bound: float, *, controls=lambda x: {}, data=DATA) -> Measurement:
    def decide(idx):
        x = float((data if idx is None else data[idx]).mean())
        return Outcome(holds=x > bound, summary=f"mean {x:.3f}", values={"mean": x}, primary="mean",
                       controls=controls(x))
    return Measurement(decide, n=len(data), bound={"op": ">", "value": bound, "abs": False})


def test_intervals_are_scipys_bca_intervals_over_the_samples(monkeypatch) -> None:
    e = judged(monkeypatch, mean_above(0.1))
    ref = scipy.stats.bootstrap((np.arange(10),), lambda i: float(DATA[torch.as_tensor(i)].mean()), n_resamples=200,
                                method="BCa", vectorized=False, rng=np.random.default_rng(0)).confidence_interval
    assert e.intervals["mean"] == pytest.approx([ref.low, ref.high], rel=1e-9)
    assert e.bootstrap["method"] == "BCa" and "BCa 95% intervals" in e.summary
    assert e.verdict == "holds" and e.bootstrap["conditions"] == {"mean > 0.1": "holds"}


@pytest.mark.parametrize("bound, verdict", [(0.2, "holds"), (0.8, "inconclusive"), (2.0, "refuted")])
def test_the_verdict_follows_where_the_interval_lies(monkeypatch, bound, verdict) -> None:
    e = judged(monkeypatch, mean_above(bound))
    lo, hi = e.intervals["mean"]
    assert e.verdict == verdict, (lo, hi)
    if verdict == "inconclusive":
        assert lo < bound < hi and "straddles" in e.reason and "mean > 0.8" in e.reason


def test_each_condition_of_a_compound_claim_is_judged_on_its_own_interval(monkeypatch) -> None:
    """Holds needs every condition's interval on its side; refuted needs a failing one wholly off it."""
    def measurement(lo_bound, hi_bound):
        def decide(idx):
            x = DATA if idx is None else DATA[idx]
            v = {"mean": float(x.mean()), "max": float(x.max())}
            return Outcome(holds=v["mean"] > lo_bound and v["max"] < hi_bound, summary="", values=v, primary="mean")
        return Measurement(decide, n=len(DATA), bound={"op": ">", "value": lo_bound, "abs": False},
                           conditions=[Condition("mean", ">", lo_bound), Condition("max", "<", hi_bound)])

    assert judged(monkeypatch, measurement(0.1, 10.0)).verdict == "holds"
    e = judged(monkeypatch, measurement(0.1, 2.0))  # the max is 3.0, and 1.5 in resamples without it
    assert e.verdict == "inconclusive" and e.bootstrap["conditions"]["max < 2"] == "straddles", e.bootstrap
    e = judged(monkeypatch, measurement(0.1, 0.05))  # every resample's max exceeds 0.05
    assert e.verdict == "refuted" and e.bootstrap["conditions"] == {"mean > 0.1": "holds", "max < 0.05": "fails"}


def test_a_control_that_also_holds_is_reported_whatever_the_verdict(monkeypatch) -> None:
    also = lambda x: {"other": True}  # noqa: E731
    held = judged(monkeypatch, mean_above(0.1, controls=also))
    assert held.verdict == "non-specific" and "other (on all samples) also satisfy" in held.reason
    refuted = judged(monkeypatch, mean_above(2.0, controls=also))
    assert refuted.verdict == "refuted" and refuted.controls == {"other": True}
    assert "other (on all samples) also satisfy" in refuted.reason


def test_a_control_is_ruled_out_only_as_firmly_as_the_claim_is_established(monkeypatch) -> None:
    """A control that fails on all samples but holds in more than 2.5% of resamples is not ruled out."""
    e = judged(monkeypatch, mean_above(0.1, controls=lambda x: {"low": x < 0.6, "never": x > 5}))
    share = e.bootstrap["controls_also_holding"]
    assert share["never"] == 0 and 0.025 < share["low"] < 0.5, share
    assert e.controls == {"low": True, "never": False} and e.verdict == "non-specific"
    assert f"low (in {share['low']:.0%} of resamples) also satisfy" in e.reason


def test_a_value_missing_in_some_resamples_is_placed_by_the_share_holding(monkeypatch) -> None:
    """A resample on which the claim cannot be evaluated (ClaimInvalid) counts as not holding."""
    def decide(idx):
        if idx is not None and int(idx.max()) < 9:  # the resamples without sample 9
            raise ClaimInvalid("nothing to measure")
        return Outcome(holds=True, summary="", values={"v": 1.0}, primary="v")

    e = judged(monkeypatch, Measurement(decide, n=len(DATA), bound={"op": ">", "value": 0.5, "abs": False}))
    # about (9/10)^10 = 35% of resamples lack sample 9
    assert e.verdict == "inconclusive" and "v" not in e.intervals and 0.5 < e.bootstrap["share_holding"] < 0.8


def test_a_constant_value_has_a_point_interval(monkeypatch) -> None:
    m = Measurement(lambda idx: Outcome(holds=True, summary="", values={"v": 3.0}, primary="v"), n=10,
                    bound={"op": ">", "value": 1.0, "abs": False})
    e = judged(monkeypatch, m)
    assert e.intervals["v"] == [3.0, 3.0] and e.verdict == "holds"


def test_holds_that_disagrees_with_the_conditions_is_a_bug(monkeypatch) -> None:
    m = Measurement(lambda idx: Outcome(holds=True, summary="", values={"v": 0.0}, primary="v"), n=10,
                    bound={"op": ">", "value": 1.0, "abs": False})
    with pytest.raises(AssertionError, match="disagrees with its conditions"):
        judged(monkeypatch, m)


def test_documented_values_are_conditions_within_the_tolerance(monkeypatch) -> None:
    m = mean_above(0.0)
    e = judged(monkeypatch, m, documented_on="gpt2", documented_values={"mean": 0.73}, tolerance={"abs": 1.0})
    assert e.verdict == "holds" and set(e.bootstrap["conditions"]) == {"mean >= -0.27", "mean <= 1.73"}
    e = judged(monkeypatch, m, documented_on="gpt2", documented_values={"mean": 3.0}, tolerance={"rel": 0.1})
    assert e.verdict == "refuted" and "outside tolerance" in e.reason


@pytest.mark.parametrize("lo, hi, side", [(0.1, 0.3, "holds"), (0.6, 0.9, "fails"), (0.3, 0.6, "straddles")])
def test_condition_sides(lo, hi, side) -> None:
    assert Condition("x", "<", 0.5).side(lo, hi) == side


@pytest.mark.parametrize("size, verdict", [(0.6, "refuted"), (0.005, "holds")])
def test_a_condition_on_a_magnitude_is_judged_on_the_magnitudes_interval(monkeypatch, size, verdict) -> None:
    """The largest change may be up in one resample and down in another: its signed interval spans 0,
    while |change| stays far from (or well within) the bound in every resample."""
    up, down = torch.full((5,), size, dtype=torch.float64), torch.full((5,), -1.1 * size, dtype=torch.float64)
    changes = torch.stack([torch.cat([up, torch.zeros(5, dtype=torch.float64)]),
                           torch.cat([torch.zeros(5, dtype=torch.float64), down])], dim=1)  # (samples, layers)

    def decide(idx):
        mean = (changes if idx is None else changes[idx]).mean(0)
        worst = float(mean[mean.abs().argmax()])
        return Outcome(holds=abs(worst) < 0.02, summary="", values={"worst": worst}, primary="worst")

    e = judged(monkeypatch, Measurement(decide, n=10, bound={"op": "<", "value": 0.02, "abs": True}))
    lo, hi = e.intervals["worst"]
    assert lo < 0 < hi  # the signed value changes sign between resamples
    assert e.verdict == verdict and e.bootstrap["conditions"] == {"|worst| < 0.02": "fails" if size > 0.02 else "holds"}
    assert 0 < e.intervals["|worst|"][0]


def test_a_records_seqlen_reaches_the_check() -> None:
    from massact.checks.base import Context
    from massact.corpus import CorpusSettings, load_corpus

    corpus = load_corpus(CorpusSettings(seqlen=128))
    ctx = Context(lm=None, corpus=corpus, engine=None, n=10)
    at = ctx.at_seqlen(1024, n=3)
    assert (at.seqlen, at.n, ctx.seqlen) == (1024, 3, 128)
    assert "T1024" in at.corpus.key and at.corpus.key != ctx.corpus.key
    assert claim(seqlen=1024).seqlen == 1024
    with pytest.raises(Exception, match="seqlen"):
        claim(seqlen=1)
