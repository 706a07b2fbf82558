"""massact.verdict through claims.judge(): intervals (the wider of Student's t on the bootstrap SE and
the expanded BCa, from scipy), conditions and controls judged on their own intervals, units and
random draws resampled as independent; Measurements built by hand stand in for the checks."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import torch

from massact import claims, verdict
from massact.claims import judge, validate
from massact.verdict import ClaimInvalid, Condition, Measurement, Outcome

# ten samples of a skewed quantity: the mean's interval is lopsided
DATA = torch.tensor([0.1, 0.2, 0.2, 0.3, 0.3, 0.4, 0.5, 0.8, 1.5, 3.0], dtype=torch.float64)


def claim(**extra):
    return validate({"id": "test.claim", "version": 1, "source": "s", "statement": "s", "check": "massive_exists",
                     "threshold": "t", "documented": "d", **extra})


def judged(monkeypatch, m: Measurement, *, resamples: int = 200, **extra):
    monkeypatch.setattr(claims, "measure", lambda c, ctx: m)
    return judge(claim(**extra), None, resamples=resamples)


def mean_above(bound: float, *, controls=None, data=DATA, **kw) -> Measurement:
    def decide(idx):
        x = float((data if idx is None else data[idx]).mean())
        return Outcome(holds=x > bound, summary=f"mean {x:.3f}", values={"mean": x, "double": 2 * x},
                       primary="mean", controls=controls or {})
    return Measurement(decide, n=len(data), bound={"op": ">", "value": bound, "abs": False}, **kw)


def test_an_interval_is_the_wider_of_student_t_on_the_bootstrap_se_and_the_expanded_bca(monkeypatch) -> None:
    e = judged(monkeypatch, mean_above(0.05), resamples=1000)
    stat = lambda i: float(DATA[torch.as_tensor(i)].mean())  # noqa: E731
    n = len(DATA)
    t = scipy.stats.t.ppf(0.975, n - 1)
    level = 1 - 2 * scipy.stats.norm.sf(t * np.sqrt(n / (n - 1)))  # the normal level of t * sqrt(n / (n - 1))
    res = scipy.stats.bootstrap((np.arange(n),), stat, n_resamples=1000, method="BCa", confidence_level=level,
                                vectorized=False, rng=np.random.default_rng(0))
    se = res.bootstrap_distribution.std(ddof=1) * np.sqrt(n / (n - 1))
    mean = float(DATA.mean())
    want = [min(mean - t * se, res.confidence_interval.low), max(mean + t * se, res.confidence_interval.high)]
    assert e.intervals["mean"] == pytest.approx(want, rel=1e-9)
    # the data are skewed to the right: BCa sets the upper end, Student's t the lower
    assert want[1] == pytest.approx(res.confidence_interval.high) and want[0] == pytest.approx(mean - t * se)
    # for a mean, the t part is the classical t interval up to the bootstrap's noise in the SE
    sd = float(DATA.std()) / np.sqrt(n)
    assert se == pytest.approx(sd, rel=0.1)
    assert e.bootstrap["method"] == "t/BCa" and "t/BCa 95% intervals over 10 samples" in e.summary
    assert e.verdict == "holds" and e.bootstrap["conditions"] == {"mean > 0.05": "holds"}
    assert (e.bootstrap["unit"], e.bootstrap["units"], e.bootstrap["resamples"]) == ("sample", 10, 1000)


@pytest.mark.parametrize("bound, verdict", [(0.05, "holds"), (0.8, "inconclusive"), (2.0, "refuted")])
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


def test_a_control_is_a_condition_judged_on_its_own_interval(monkeypatch) -> None:
    """A control states when it *also* satisfies the claim: ruled out when its interval lies on the
    failing side, non-specific when on the holding side, inconclusive when it straddles."""
    def with_control(threshold):
        return mean_above(0.05, controls={"other": Condition("double", ">", threshold)})

    e = judged(monkeypatch, with_control(100.0))
    assert e.verdict == "holds" and e.controls == {"other": "ruled out"}
    e = judged(monkeypatch, with_control(0.05))
    assert e.verdict == "non-specific" and e.controls == {"other": "also holds"}
    assert "other also satisfy the claim" in e.reason
    e = judged(monkeypatch, with_control(2 * float(DATA.mean()) - 0.1))  # just below the control's own value
    assert e.verdict == "inconclusive" and e.controls == {"other": "not ruled out"}
    assert "not ruled out" in e.reason and "double > " in e.reason


def test_a_control_that_also_holds_is_reported_whatever_the_verdict(monkeypatch) -> None:
    e = judged(monkeypatch, mean_above(2.0, controls={"other": Condition("double", ">", 0.05)}))
    assert e.verdict == "refuted" and e.controls == {"other": "also holds"}
    assert "other also satisfy the claim" in e.reason


def test_samples_of_one_source_are_resampled_together(monkeypatch) -> None:
    """Four chunks each of a few documents: the documents are the units, not the chunks."""
    docs = torch.tensor([0.9, 1.1, 1.4, 0.7, 1.2, 1.0, 0.8, 1.3, 1.05, 0.95], dtype=torch.float64)
    chunks = docs.repeat_interleave(4)  # 40 samples, 4 of each document

    def measured(n_docs):
        data = chunks[:4 * n_docs]
        return mean_above(0.5, data=data, groups=[i // 4 for i in range(len(data))], resampled="document")

    few = judged(monkeypatch, measured(4))
    assert few.verdict == "inconclusive" and "too few independent documents: 4" in few.reason
    assert (few.bootstrap["unit"], few.bootstrap["units"], few.bootstrap["samples"]) == ("document", 4, 16)
    e = judged(monkeypatch, measured(10), resamples=1000)
    assert e.verdict == "holds" and (e.bootstrap["units"], e.bootstrap["samples"]) == (10, 40)
    # chunks taken as independent would claim a narrower interval than the ten documents give
    flat = judged(monkeypatch, mean_above(0.5, data=chunks), resamples=1000)
    width = lambda x: x.intervals["mean"][1] - x.intervals["mean"][0]  # noqa: E731
    assert width(e) > 1.5 * width(flat)


def test_random_draws_of_a_control_are_resampled_so_their_spread_is_in_its_interval(monkeypatch) -> None:
    """Every sample gives the same value; the control's draws differ: its interval is the draws' spread."""
    draws = torch.tensor([0.2, 0.9, 0.4, 0.7, 0.3, 0.8, 0.5, 0.6, 0.1, 1.0] * 2, dtype=torch.float64)

    def decide(idx, didx):
        ctl = float((draws if didx is None else draws[didx]).mean())
        return Outcome(holds=True, summary="", values={"v": 3.0, "control": ctl}, primary="v",
                       controls={"random": Condition("control", ">=", 0.5)})

    m = Measurement(decide, n=10, draws=len(draws), bound={"op": ">", "value": 1.0, "abs": False})
    e = judged(monkeypatch, m, resamples=1000)
    lo, hi = e.intervals["control"]
    assert lo < 0.55 < hi and e.intervals["v"] == [3.0, 3.0] and e.bootstrap["draws"] == 20
    assert e.verdict == "inconclusive" and e.controls == {"random": "not ruled out"}


def test_fewer_units_than_the_intervals_need_decide_nothing(monkeypatch) -> None:
    e = judged(monkeypatch, mean_above(0.1, data=DATA[:verdict.MIN_UNITS - 1]))
    assert e.verdict == "inconclusive" and f"too few independent samples: {verdict.MIN_UNITS - 1}" in e.reason
    assert judged(monkeypatch, mean_above(0.1, data=DATA[:2])).verdict == "inconclusive"


def test_the_verdict_does_not_move_with_the_bootstrap_seed(monkeypatch) -> None:
    monkeypatch.setattr(claims, "measure", lambda c, ctx: mean_above(0.05))
    seen = {judge(claim(), None, seed=s).verdict for s in range(5)}
    assert seen == {"holds"}
    assert judge(claim(), None, seed=3).bootstrap["seed"] == 3


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
