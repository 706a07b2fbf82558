"""Coverage of the harness's interval procedure (massact.verdict.bootstrap) on simulated data.

    python benchmarks/coverage.py                     # the full grid: 1,000 data sets per cell
    python benchmarks/coverage.py --reps 200 --n 10   # a quick look

For each distribution, number of independent units n and kind of statistic the claims use, draw
``--reps`` data sets of n units, compute the 95% interval of the statistic exactly as a claim's
is computed (the same function, the same resamples), and count how often it holds the true value.
The same data go through the procedure the harness used before (BCa alone, 200 resamples) for
comparison. Writes benchmarks/results/coverage.json and prints the table the README shows.

The statistics, each of units drawn from the distribution:
- mean: the mean of the units;
- ratio: the ratio of two means, of x and of y = x / 2 + an independent draw (a relative change,
  a value over a control's);
- share: units of 16 yes/no events each, with a unit's own rate drawn from Beta(3, 7), or from
  Beta(0.6, 1.4) (units that differ much more), both of mean 0.3: the share of all events that are
  yes (the share of heads, of massive pairs on the first token);
- median: the median of the units.
The distributions: normal (5, 1); lognormal (0, 0.5), skewness 1.75; Student's t with 3 degrees of
freedom, shifted by 5 (heavy tails); beta (2, 5) (bounded); and lognormal (0, 1), skewness 6.2, as a
stress case past what the claims' per-unit values show (see the README).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import scipy.stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from massact import verdict  # noqa: E402

EVENTS = 16  # yes/no events per unit of a share


def _lognormal(s: float):
    return lambda rng, n: rng.lognormal(0.0, s, n)


DISTRIBUTIONS = {  # name -> (draw(rng, n), population of a million draws for the true values)
    "normal": lambda rng, n: rng.normal(5.0, 1.0, n),
    "lognormal(0.5)": _lognormal(0.5),
    "t3": lambda rng, n: 5.0 + rng.standard_t(3, n),
    "beta(2,5)": lambda rng, n: rng.beta(2.0, 5.0, n),
    "lognormal(1) stress": _lognormal(1.0),
}
TRUE_MEDIAN = {"normal": 5.0, "lognormal(0.5)": 1.0, "t3": 5.0, "beta(2,5)": float(scipy.stats.beta(2, 5).median()),
               "lognormal(1) stress": 1.0}
TRUE_MEAN = {"normal": 5.0, "lognormal(0.5)": math.exp(0.125), "t3": 5.0, "beta(2,5)": 2 / 7,
             "lognormal(1) stress": math.exp(0.5)}
SHARES = {"rates Beta(3,7)": (3.0, 7.0), "rates Beta(0.6,1.4)": (0.6, 1.4)}  # a share's units, by how they differ
STATISTICS = ("mean", "ratio", "share", "median")


def cases() -> list[tuple[str, str]]:
    """(statistic, distribution) of every row: a share's units are events, not draws of a distribution."""
    return [(s, d) for s in STATISTICS for d in (SHARES if s == "share" else DISTRIBUTIONS)]


def units(stat: str, dist: str, rng: np.random.Generator, n: int) -> tuple[np.ndarray, float]:
    """n units for ``stat`` (rows) and the statistic's true value."""
    if stat == "share":
        rate = rng.beta(*SHARES[dist], n)
        return rng.binomial(EVENTS, rate)[:, None].astype(float), 0.3
    draw = DISTRIBUTIONS[dist]
    if stat == "mean":
        return draw(rng, n)[:, None], TRUE_MEAN[dist]
    if stat == "median":
        return draw(rng, n)[:, None], TRUE_MEDIAN[dist]
    x = draw(rng, n)  # the ratio's
    return np.stack([x, x / 2 + draw(rng, n)], axis=1), TRUE_MEAN[dist] / (1.5 * TRUE_MEAN[dist])


def statistic(stat: str, rows: np.ndarray):
    """The statistic of the units idx, vectorized over resamples (idx (..., n))."""
    if stat == "mean":
        return lambda idx, axis=-1: rows[idx, 0].mean(-1)
    if stat == "median":
        return lambda idx, axis=-1: np.median(rows[idx, 0], axis=-1)
    if stat == "ratio":
        return lambda idx, axis=-1: rows[idx, 0].mean(-1) / rows[idx, 1].mean(-1)
    return lambda idx, axis=-1: rows[idx, 0].mean(-1) / EVENTS


def cell(args: tuple[str, str, int, int, int, int]) -> dict:
    """Coverage of the harness's procedure and of the previous one (BCa, 200 resamples) in one cell."""
    stat, dist, n, reps, resamples, seed = args
    rng = np.random.default_rng([seed, n, cases().index((stat, dist))])
    hits = {"t/BCa": 0, "BCa-200": 0}
    for rep in range(reps):
        rows, truth = units(stat, dist, rng, n)
        f = statistic(stat, rows)
        point = f(np.arange(n))
        _, (ours,) = verdict.bootstrap((np.arange(n),), f, point, resamples=resamples, seed=rep, vectorized=True)
        if ours is not None and ours[0] <= truth <= ours[1]:
            hits["t/BCa"] += 1
        with warnings.catch_warnings():  # BCa undefined on a degenerate resample: nan, counted as a miss
            warnings.simplefilter("ignore")
            res = scipy.stats.bootstrap((np.arange(n),), f, n_resamples=200, method="BCa", vectorized=True,
                                        rng=np.random.default_rng(rep))
        lo, hi = res.confidence_interval
        if lo <= truth <= hi or (math.isnan(lo) and point == truth):
            hits["BCa-200"] += 1
    return {"statistic": stat, "distribution": dist, "n": n, "reps": reps,
            **{k: v / reps for k, v in hits.items()}}


def table(cells: list[dict], *, key: str = "t/BCa") -> list[str]:
    """Markdown: one row per statistic and distribution, one column per n; previous method in brackets."""
    ns = sorted({c["n"] for c in cells})
    out = ["| statistic | distribution | " + " | ".join(f"n = {n}" for n in ns) + " |",
           "|---|---|" + "---|" * len(ns)]
    for stat, dist in cases():
        row = {c["n"]: c for c in cells if c["statistic"] == stat and c["distribution"] == dist}
        if row:
            out.append(f"| {stat} | {dist} | " + " | ".join(
                f"{row[n][key]:.1%} ({row[n]['BCa-200']:.0%})" if n in row else "" for n in ns) + " |")
    return out


def min_units(cells: list[dict], *, target: float = 0.93) -> int | None:
    """The fewest units from which every cell but the stress case reaches ``target``, at that n and above."""
    ns = sorted({c["n"] for c in cells})
    ok = [n for n in ns if all(c["t/BCa"] >= target for c in cells if c["n"] >= n and "stress" not in c["distribution"])]
    return ok[0] if ok else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=1000, help="simulated data sets per cell (default: 1000)")
    p.add_argument("--n", type=int, nargs="+", default=[4, 5, 6, 8, 10, 16, 30, 50], help="units per data set")
    p.add_argument("--resamples", type=int, default=verdict.RESAMPLES, help="bootstrap resamples (the harness's)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "coverage.json")
    args = p.parse_args(argv)
    jobs = [(s, d, n, args.reps, args.resamples, 0) for s, d in cases() for n in args.n]
    start = time.perf_counter()
    with ProcessPoolExecutor(args.workers) as pool:
        cells = list(pool.map(cell, jobs))
    fewest = min_units(cells)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"method": verdict.METHOD, "confidence": verdict.CONFIDENCE,
                                    "resamples": args.resamples, "reps": args.reps, "min_units": fewest,
                                    "cells": cells}, indent=1) + "\n")
    print("\n".join(table(cells)))
    print(f"\ncoverage >= 93% in every cell (stress case aside) from n = {fewest}; "
          f"{len(cells)} cells x {args.reps} data sets in {time.perf_counter() - start:.0f} s -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
