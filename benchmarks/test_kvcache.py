"""The head statistics pass and decoding with the head-aware cache, as ratios on one model.

Run: scripts/setup && .venv/bin/python -m pytest benchmarks/test_kvcache.py --model smollm2-135m
Each benchmark stores its ratios in extra_info (see --benchmark-json).
"""
from __future__ import annotations

import time

import pytest
import torch

from massact.checks.headtypes import HeadParams, classified, per_sample, statistics_request
from massact.checks.kv import head_aware, streaming
from massact.corpus import CorpusSettings, load_corpus
from massact.engine import Engine
from massact.kvcache import KVPolicy, full_plan
from massact.models import load
from massact.requests import LongText
from massact.runners.decode import run_generate
from massact.runners.forward import eager_attention

STATS_TARGET, DECODE_TARGET = 1.5, 0.8  # x an eager forward; x the full cache's tokens per second
LENGTH, NEW = 2048, 32


@pytest.fixture(scope="module")
def setup(request):
    spec = (request.config.getoption("model") or ["smollm2-135m"])[0]
    lm = load(spec)
    corpus = load_corpus(CorpusSettings())
    return lm, corpus


def _best(fn, rounds: int = 3) -> float:
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def test_head_statistics_pass(benchmark, setup):
    """Every head's statistics over one 2,048-token sequence against an eager forward of it."""
    lm, corpus = setup
    p = HeadParams(method="correct_method")
    ids = LongText("statistics", LENGTH, LENGTH).tokens(lm, corpus)[:1]

    def eager():
        with eager_attention(lm.model, True), torch.no_grad():
            lm.model.base_model(input_ids=ids)

    plain = _best(eager)
    benchmark.pedantic(lambda: Engine(batch_size=1).run(lm, corpus, statistics_request(p), n=1), rounds=3,
                       iterations=1)
    ratio = benchmark.stats.stats.min / plain
    benchmark.extra_info["ratio_to_eager_forward"] = round(ratio, 2)
    assert ratio < STATS_TARGET


def test_head_aware_decoding(benchmark, setup):
    """Greedy decoding after a 2,048-token prompt: the head-aware cache (documented mapping) against
    the full cache, and the KV bytes each holds."""
    lm, corpus = setup
    p = HeadParams(method="documented_method")
    engine = Engine(batch_size=4)
    per = per_sample(engine.run(lm, corpus, statistics_request(p), n=p.samples), lm.n_layers)
    _, classes = classified(per, p.method)

    plan = head_aware(lm, classes, "documented")
    L, H, K = lm.n_layers, lm.adapter.n_heads(lm.config), lm.adapter.n_kv_heads(lm.config)
    prompt = LongText("held_out", LENGTH, LENGTH).tokens(lm, corpus)[:1]
    wants = {"output": frozenset({"generated"}), "kv": frozenset({"tokens_per_second"})}
    rate = {}
    for name, pl in (("full", full_plan(layers=L, heads=H, kv_heads=K)), ("head-aware", plan),
                     ("streaming", streaming(lm, plan.entries(LENGTH), 4))):
        out = run_generate(lm, prompt, wants, KVPolicy(pl), eager=False, batch_size=1, progress=lambda s: None,
                           new_tokens=NEW)
        rate[name] = float(out["kv"]["tokens_per_second"][0])
    benchmark.pedantic(lambda: run_generate(lm, prompt, wants, KVPolicy(plan), eager=False, batch_size=1,
                                            progress=lambda s: None, new_tokens=NEW), rounds=1, iterations=1)
    benchmark.extra_info.update(tokens_per_second={k: round(v, 1) for k, v in rate.items()},
                                ratio_to_full=round(rate["head-aware"] / rate["full"], 2),
                                entries_at_2048={"head-aware": plan.entries(LENGTH), "full": L * K * LENGTH})
    assert rate["head-aware"] >= DECODE_TARGET * rate["full"]
