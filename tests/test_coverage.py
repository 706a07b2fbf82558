"""The interval procedure covers what it claims: benchmarks/coverage.py's cells on a small grid.

Seeded (each cell's data and resamples), so the test gives the same numbers on every run; the full
grid with 1,000 data sets per cell is the benchmark's, its table in the README.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from massact import verdict

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import coverage  # noqa: E402

GRID = [("mean", "normal", 10), ("mean", "lognormal(0.5)", verdict.MIN_UNITS), ("ratio", "t3", 16),
        ("share", "rates Beta(0.6,1.4)", 10), ("median", "beta(2,5)", 10)]


@pytest.mark.parametrize("stat, dist, n", GRID)
def test_the_harness_intervals_cover_at_least_93_percent(stat, dist, n) -> None:
    got = coverage.cell((stat, dist, n, 300, verdict.RESAMPLES, 0))
    assert got["t/BCa"] >= 0.93, got
    # the procedure the harness used before, on the same data, did not
    assert got["BCa-200"] < got["t/BCa"]


def test_the_benchmark_counts_a_miss() -> None:
    """An interval that cannot hold the truth is counted as one: a lognormal mean from 4 units falls short."""
    got = coverage.cell(("mean", "lognormal(1) stress", 4, 300, 200, 0))
    assert got["t/BCa"] < 0.9
