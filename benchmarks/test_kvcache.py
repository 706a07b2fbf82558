"""The head statistics pass, decoding with the head-aware cache, the growing-window uniform cache and
the passkey prompts' shared prefixes, as ratios on one model.

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
from massact.kvcache import KVPolicy, Plan, full_plan, model_reach
from massact.metrics.headtypes import Budget
from massact.models import load
from massact.requests import LongText, Passkey
from massact.runners.decode import run_decode, run_generate
from massact.runners.forward import eager_attention

STATS_TARGET, DECODE_TARGET = 1.5, 0.8  # x an eager forward; x the full cache's tokens per second
GROWING_TARGET = 1.15  # x the decode pass of a fixed sink + window cache of the same final size
SHARED_TARGET = 0.75  # x the passkey prompts of one document each fed whole
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
    reach = model_reach(lm.adapter, lm.config, L)
    for name, pl in (("full", full_plan(layers=L, heads=H, kv_heads=K, reach=reach)), ("head-aware", plan),
                     ("streaming", streaming(lm, plan, sink=4, length=LENGTH))):
        out = run_generate(lm, prompt, wants, KVPolicy(pl), eager=False, batch_size=1, progress=lambda s: None,
                           new_tokens=NEW)
        rate[name] = float(out["kv"]["tokens_per_second"][0])
    benchmark.pedantic(lambda: run_generate(lm, prompt, wants, KVPolicy(plan), eager=False, batch_size=1,
                                            progress=lambda s: None, new_tokens=NEW), rounds=1, iterations=1)
    benchmark.extra_info.update(tokens_per_second={k: round(v, 1) for k, v in rate.items()},
                                ratio_to_full=round(rate["head-aware"] / rate["full"], 2),
                                entries_at_2048={"head-aware": plan.entries(LENGTH),
                                                 "full": full_plan(layers=L, heads=H, kv_heads=K,
                                                                   reach=reach).entries(LENGTH)})
    assert rate["head-aware"] >= DECODE_TARGET * rate["full"]


def test_growing_window_decoding(benchmark, setup):
    """The loss pass of one 2,048-token document through a uniform cache whose window grows with the
    position (matched to a plan's bytes at every step) against one whose window is fixed at the size
    the growing one reaches: the per-position window costs a lookup, not a pass."""
    lm, corpus = setup
    L, H, K = lm.n_layers, lm.adapter.n_heads(lm.config), lm.adapter.n_kv_heads(lm.config)
    ids = LongText("held_out", LENGTH, LENGTH).tokens(lm, corpus)[:1]
    target = Plan.uniform("target", Budget(4, 256), layers=L, heads=H, kv_heads=K)
    growing = Plan.matched("growing", target, sink=4, length=LENGTH)
    fixed = Plan.uniform("fixed", Budget(4, growing.schedule[-1]), layers=L, heads=H, kv_heads=K)
    wants = {"output": frozenset({"token_nll"})}
    run = lambda plan: run_decode(lm, ids, wants, KVPolicy(plan), eager=False, batch_size=1,  # noqa: E731
                                  progress=lambda s: None, chunk=512, start=1)
    base = _best(lambda: run(fixed), rounds=2)
    benchmark.pedantic(lambda: run(growing), rounds=2, iterations=1)
    ratio = benchmark.stats.stats.min / base
    benchmark.extra_info["ratio_to_fixed_window"] = round(ratio, 2)
    assert ratio < GROWING_TARGET


def test_passkey_prompts_share_their_prefix(benchmark, setup):
    """One held-out document's passkey prompts (13 depths), the tokens each shares with the next fed
    once, against each prompt fed whole: about half the tokens."""
    lm, corpus = setup
    L, H, K = lm.n_layers, lm.adapter.n_heads(lm.config), lm.adapter.n_kv_heads(lm.config)
    source = Passkey(LENGTH, prompts=50)
    per = len(source.depths())
    prompts = source.tokens(lm, corpus)[:per]
    policy = KVPolicy(full_plan(layers=L, heads=H, kv_heads=K, reach=model_reach(lm.adapter, lm.config, L)))
    wants = {"output": frozenset({"generated"})}
    run = lambda shared: run_generate(lm, prompts, wants, policy, eager=False, batch_size=4,  # noqa: E731
                                      progress=lambda s: None, new_tokens=8, shared_prefix=shared)
    whole = _best(lambda: run(False), rounds=1)
    benchmark.pedantic(lambda: run(True), rounds=1, iterations=1)
    ratio = benchmark.stats.stats.min / whole
    benchmark.extra_info["ratio_to_whole_prompts"] = round(ratio, 2)
    assert ratio < SHARED_TARGET
