"""Cost of the harness as ratios against plain forward passes of the same tokens.

Run: scripts/setup && .venv/bin/python -m pytest benchmarks/ --model smollm2-135m
Each benchmark stores ``ratio_to_plain`` in its extra_info (see --benchmark-json).
"""
from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from massact.checks import CHECKS, Context
from massact.checks.base import PROFILE
from massact.claims import Claim, judge, load_records
from massact.corpus import CorpusSettings, load_corpus, samples
from massact.engine import Engine
from massact.models import load
from massact.requests import want
from replay import replay

CLAIMS = Path(__file__).resolve().parent.parent / "claims"
# targets: a capture pass within 1.5x of a plain pass; every model claim, checks and bootstrap
# included, within 1.2x the plain loops of the passes it ran (the passes themselves are what the
# claims need: one per intervention, eager attention for the head statistics, decoding for the KV cache)
CAPTURE_TARGET, RUN_TARGET = 1.5, 1.2
N = 10  # samples of 128 tokens: the plain pass and every claim read the same ones


@pytest.fixture(scope="module")
def setup(request):
    spec = (request.config.getoption("model") or ["smollm2-135m"])[0]
    lm = load(spec)
    corpus = load_corpus(CorpusSettings(seqlen=128))
    ids = samples(corpus, lm.tokenizer, context=lm.context)[:N]

    def plain() -> None:
        with torch.no_grad():
            for i in range(0, len(ids), 4):
                lm.model(input_ids=ids[i:i + 4])

    times = []
    for _ in range(3):
        t = time.perf_counter()
        plain()
        times.append(time.perf_counter() - t)
    return lm, corpus, plain, min(times)


def test_plain_forward(benchmark, setup):
    lm, corpus, plain, _ = setup
    benchmark.pedantic(plain, rounds=3, iterations=1)


def test_capture_pass(benchmark, setup):
    """The layer profile: top-3 and the median of every block output."""
    lm, corpus, _, plain_s = setup
    benchmark.pedantic(lambda: Engine().run(lm, corpus, PROFILE, n=N), rounds=3, iterations=1)
    ratio = benchmark.stats.stats.min / plain_s
    benchmark.extra_info["ratio_to_plain"] = round(ratio, 2)
    assert ratio < CAPTURE_TARGET


def test_a_statistic_costs_only_the_passes_that_ask_for_it(benchmark, setup):
    """The median of every MLP checkpoint is the costliest statistic: the profile pass that does
    not ask for it costs what it cost before, while one that asks pays for it."""
    lm, corpus, _, plain_s = setup
    costly = PROFILE | want("mlp.*.*", "median")

    def timed(request) -> float:
        t = time.perf_counter()
        Engine().run(lm, corpus, request, n=N)
        return time.perf_counter() - t

    profile = min(timed(PROFILE) for _ in range(3))
    asking = min(timed(costly) for _ in range(3))
    benchmark.pedantic(lambda: Engine().run(lm, corpus, PROFILE, n=N), rounds=3, iterations=1)
    after = benchmark.stats.stats.min
    benchmark.extra_info.update(profile_ratio=round(profile / plain_s, 2), asking_ratio=round(asking / plain_s, 2),
                                profile_after_ratio=round(after / plain_s, 2))
    assert asking > 1.2 * profile and after < 1.1 * profile


def test_all_model_claims(benchmark, setup):
    """Every general claim of the registry on one model, from a cold pass cache and planned as a run plans
    them, against the passes it made replayed as plain loops (benchmarks/replay.py): what is left is the
    hooks, the checks and the bootstrap."""
    lm, corpus, _, _ = setup
    records = [r for f in sorted(CLAIMS.glob("*.toml")) for r in load_records(f)
               if isinstance(r, Claim) and r.needs_model and r.documented_on is None]
    engines = []

    def run_all():
        engine = Engine()
        engine.plan(lm, corpus, [(req, N) for r in records for req in CHECKS[r.check].needs(r.params)])
        for r in records:
            judge(r, Context(lm, corpus, engine, n=N))
        engines.append(engine)

    benchmark.pedantic(run_all, rounds=1, iterations=1)
    engine = engines[-1]
    got = replay({"passes": engine.log, "wall_seconds": benchmark.stats.stats.min, "pass_seconds": engine.seconds},
                 models={lm.spec: lm})
    benchmark.extra_info.update(run_to_plain=got["wall_to_plain"], passes_to_plain=got["passes_to_plain"],
                                forward_passes=engine.n_passes, claims=len(records))
    assert got["wall_to_plain"] < RUN_TARGET
