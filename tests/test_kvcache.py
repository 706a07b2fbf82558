"""The head-aware KV cache: what each head reads, what the cache holds and frees, and that chunks,
single tokens and generate() all see the same keys."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from builders import SUPPORTED_ARCHS, tiny_model
from massact.arch import adapter_for
from massact.kvcache import (GroupedKV, KVPlanError, KVPolicy, Plan, _Group, full_plan, grouped_attention, model_reach,
                             readable)
from massact.metrics.headtypes import FULL, Budget
from massact.models import LoadedModel
from massact.runners.decode import run_decode

DECODERS = [a for a in SUPPORTED_ARCHS if a != "bert"]
PRUNE = Budget(prune=True)


def _ids(batch: int = 2, seq: int = 40) -> torch.Tensor:
    return torch.randint(0, 100, (batch, seq), generator=torch.Generator().manual_seed(0))


def _shape(model) -> tuple[int, int, int]:
    a = adapter_for(model.config)
    return len(a.block_list(model)), a.n_heads(model.config), a.n_kv_heads(model.config)


def _logits(model, policy: KVPolicy, ids: torch.Tensor, chunk: int):
    cache = policy.cache()
    with torch.no_grad(), policy.applied(model, adapter_for(model.config)):
        out = [model(input_ids=ids[:, i:i + chunk], past_key_values=cache, use_cache=True).logits
               for i in range(0, ids.shape[1], chunk)]
    return torch.cat(out, dim=1), cache


@pytest.mark.parametrize("arch", DECODERS)
def test_a_plan_keeping_everything_gives_the_models_own_logits(arch) -> None:
    model = tiny_model(arch)
    L, H, K = _shape(model)
    ids = _ids()
    with torch.no_grad():
        plain = model(input_ids=ids).logits
    got, _ = _logits(model, KVPolicy(full_plan(layers=L, heads=H, kv_heads=K)), ids, chunk=ids.shape[1])
    assert torch.allclose(got, plain, atol=1e-5)
    assert model.config._attn_implementation == "eager"  # the policy put the model's attention back


def _mixed_plan(L: int, H: int, K: int) -> Plan:
    row = [Budget(2, 5), Budget(0, 3), PRUNE, FULL] * (H // 4) + [FULL] * (H % 4)
    return Plan("mixed", tuple(tuple(row) for _ in range(L)), K)


@pytest.mark.parametrize("arch", DECODERS)
@pytest.mark.parametrize("kind", ["budgets", "growing window"])
def test_chunks_and_single_tokens_read_the_same_keys(arch, kind) -> None:
    model = tiny_model(arch)
    L, H, K = _shape(model)
    plan = replace(_mixed_plan(L, H, K), reach=model_reach(adapter_for(model.config), model.config, L))
    policy = KVPolicy(plan if kind == "budgets" else Plan.matched("m", plan, sink=2, length=40))
    ids = _ids()
    whole, a = _logits(model, policy, ids, chunk=ids.shape[1])
    by_token, b = _logits(model, policy, ids, chunk=1)
    by_seven, c = _logits(model, policy, ids, chunk=7)
    assert torch.allclose(whole, by_token, atol=1e-5) and torch.allclose(whole, by_seven, atol=1e-5)
    a.compact(), b.compact(), c.compact()
    assert a.nbytes() == b.nbytes() == c.nbytes()


def test_each_query_head_reads_all_its_kv_head_holds() -> None:
    """Against a hand-written reference: position-by-position masks per KV head, GQA with 2 query heads
    per KV head; query head 1 (window 1) reads its KV head's union (sink 2 + window 3); head 3 is pruned."""
    torch.manual_seed(0)
    T, D = 12, 4
    budgets = (Budget(2, 3), Budget(0, 1), FULL, PRUNE)
    reads = [Budget(2, 3), Budget(2, 3), FULL, PRUNE]  # what each query head reads: its KV head's union
    k, v, q = torch.randn(1, 2, T, D), torch.randn(1, 2, T, D), torch.randn(1, 4, T, D)
    pos = torch.arange(T)
    groups = [_Group(Budget(2, 3), [0], k[:, :1], v[:, :1], pos), _Group(FULL, [1], k[:, 1:], v[:, 1:], pos)]
    kv = GroupedKV(groups, budgets, rep=2, query_pos=pos)
    out, _ = grouped_attention(None, q, kv, kv, None, scaling=0.5)
    for h, b in enumerate(reads):
        for t in range(T):
            if b.prune:
                assert (out[0, t, h] == 0).all()
                continue
            keys = [p for p in range(t + 1) if b.full or p < b.sink or p >= t - b.window]
            kh, vh = k[0, h // 2, keys], v[0, h // 2, keys]
            ref = torch.softmax(q[0, h, t] @ kh.T * 0.5, dim=-1) @ vh
            assert torch.allclose(out[0, t, h], ref, atol=1e-5), (h, t)


def _masked_logits(model, ids: torch.Tensor, reads: list[Budget]) -> torch.Tensor:
    """The model's logits with query head h reading, at each position t, the keys ``reads[h]`` lets it
    (every key when full; none, writing zeros, when pruned): a mask built key by key, no cache."""
    from transformers import AttentionInterface

    T = ids.shape[1]
    masks = torch.tensor([[[b.window is None or k < b.sink or t - b.window <= k for k in range(T)] for t in range(T)]
                          for b in reads]) & torch.ones(T, T, dtype=torch.bool).tril()  # (H, query, key)
    live = torch.tensor([not b.prune for b in reads])[None, :, None, None]

    def attend(module, query, key, value, attention_mask, *, scaling, **kwargs):
        rep = query.shape[1] // key.shape[1]
        key, value = key.repeat_interleave(rep, dim=1), value.repeat_interleave(rep, dim=1)
        scores = (query @ key.transpose(2, 3) * scaling).masked_fill(~masks[None], float("-inf"))
        return (torch.softmax(scores, dim=-1) @ value * live).transpose(1, 2), None

    AttentionInterface.register("test_masked", attend)
    before = model.config._attn_implementation
    model.set_attn_implementation("test_masked")
    try:
        with torch.no_grad():
            return model(input_ids=ids).logits
    finally:
        model.set_attn_implementation(before)


def test_under_grouped_query_attention_the_union_decides_what_a_query_head_reads() -> None:
    """A tiny Llama (4 query heads on 2 KV heads): query heads 0 and 3 keep sink 2 + window 3, head 1
    the current token and the one before, head 2 is pruned. KV head 0 holds the union of heads 0 and 1
    (sink 2 + window 3), and head 1 reads all of it; head 2 writes nothing. Against the model with
    those masks built key by key; masked to its own budget, head 1 would give other logits."""
    model = tiny_model("llama")
    L, H, K = _shape(model)
    wide, narrow = Budget(2, 3), Budget(0, 1)
    plan = Plan("mixed", tuple((wide, narrow, PRUNE, wide) for _ in range(L)), K)
    assert plan.kv_budgets(0) == [wide, wide]
    ids = _ids(batch=1, seq=24)
    union = _masked_logits(model, ids, [wide, wide, PRUNE, wide])
    own = _masked_logits(model, ids, [wide, narrow, PRUNE, wide])
    got, _ = _logits(model, KVPolicy(plan), ids, chunk=5)
    assert torch.allclose(got, union, atol=1e-5)
    assert not torch.allclose(got, own, atol=1e-3)
    with torch.no_grad():  # the reference itself: reading every key, it is the model
        assert torch.allclose(_masked_logits(model, ids, [FULL] * H), model(input_ids=ids).logits, atol=1e-5)


def test_a_kv_head_keeps_what_any_of_its_query_heads_needs() -> None:
    plan = Plan("gqa", ((Budget(4, 8), Budget(0, 30), PRUNE, PRUNE, FULL, Budget(4, 2)),), kv_heads=3)
    assert plan.kv_budgets(0) == [Budget(4, 30), PRUNE, FULL]
    assert [(b.label(), kv) for b, kv in plan.groups(0)] == [("sink 4 + window 30", [0]), ("full", [2])]
    assert plan.entries(100) == 34 + 0 + 100
    assert plan.describe()["kv_heads"] == [["sink 4 + window 30", "pruned", "full"]]


def test_the_cache_holds_and_frees_what_the_plan_says() -> None:
    model = tiny_model("llama")  # 2 layers, 4 query heads, 2 KV heads of dim 8
    L, H, K = _shape(model)
    plan = Plan("w", tuple((Budget(2, 5),) * 2 + (FULL,) * 2 for _ in range(L)), K)
    _, cache = _logits(model, KVPolicy(plan), _ids(batch=3, seq=30), chunk=4)
    cache.compact()
    per_entry = 3 * 8 * 4 * 2  # batch x head dim x float32 x (key, value)
    assert cache.nbytes() == L * (7 + 30) * per_entry == plan.entries(30) * per_entry
    layer = cache.layers[0]
    assert [g.keys.shape[2] for g in layer.groups] == [7, 30]
    assert layer.groups[0].pos.tolist() == [0, 1, 25, 26, 27, 28, 29]


def test_generate_runs_on_the_cache_and_matches_the_full_cache_when_nothing_is_dropped() -> None:
    model = tiny_model("llama")
    L, H, K = _shape(model)
    roomy = KVPolicy(Plan.uniform("roomy", Budget(4, 100), layers=L, heads=H, kv_heads=K))
    tight = KVPolicy(Plan.uniform("tight", Budget(1, 2), layers=L, heads=H, kv_heads=K))
    ids = _ids(batch=1, seq=20)
    a = adapter_for(model.config)
    with torch.no_grad():
        plain = model.generate(ids, max_new_tokens=6, do_sample=False)
        with roomy.applied(model, a):
            same = model.generate(ids, past_key_values=roomy.cache(), max_new_tokens=6, do_sample=False)
        with tight.applied(model, a):
            cache = tight.cache()
            model.generate(ids, past_key_values=cache, max_new_tokens=6, do_sample=False)
    assert torch.equal(plain, same)
    cache.compact()
    assert all(g.keys.shape[2] == 3 for layer in cache.layers for g in layer.groups)


def test_bad_budgets_and_plans_are_named() -> None:
    with pytest.raises(KVPlanError, match="window 0"):
        Plan.uniform("zero", Budget(4, 0), layers=1, heads=2, kv_heads=1)
    with pytest.raises(KVPlanError, match="sink -1"):
        Plan.uniform("neg", Budget(-1, 4), layers=1, heads=2, kv_heads=1)
    model = tiny_model("llama")
    wrong = KVPolicy(Plan.uniform("wrong", FULL, layers=3, heads=4, kv_heads=2))
    with pytest.raises(KVPlanError, match="3 layers x 4 heads; the model has 2 x 4"):
        with wrong.applied(model, adapter_for(model.config)):
            pass
    bert = tiny_model("bert")
    with pytest.raises(KVPlanError, match="attends in both directions"):
        with KVPolicy(full_plan(layers=2, heads=4, kv_heads=4)).applied(bert, adapter_for(bert.config)):
            pass


def test_decode_runner_reads_loss_bytes_and_time() -> None:
    model = tiny_model("gpt2")
    lm = LoadedModel(spec="t", name="t", model=model, tokenizer=None, adapter=adapter_for(model.config),
                     dtype="float32", device="cpu")
    L, H, K = _shape(model)
    wants = {"output": frozenset({"loss"}), "kv": frozenset({"bytes", "seconds"})}
    ids = _ids(batch=3, seq=32)
    run = lambda plan, chunk: run_decode(lm, ids, wants, KVPolicy(plan), eager=False, batch_size=2,  # noqa: E731
                                         progress=lambda s: None, chunk=chunk, start=8, checkpoints=(8, 16, 32))
    full = run(full_plan(layers=L, heads=H, kv_heads=K), 32)
    small = run(Plan.uniform("small", Budget(1, 3), layers=L, heads=H, kv_heads=K), 5)
    assert full["output"]["loss"].shape == (3,) and torch.isfinite(full["output"]["loss"]).all()
    per_entry = 8 * 4 * 2 * K * L
    assert full["kv"]["bytes"][0].tolist() == [8 * per_entry, 16 * per_entry, 32 * per_entry]  # per sequence
    assert small["kv"]["bytes"][2].tolist() == [4 * per_entry] * 3  # the last batch holds one sample
    assert not torch.allclose(full["output"]["loss"], small["output"]["loss"])
    with pytest.raises(KVPlanError, match="starts at position 40"):
        run_decode(lm, ids, wants, KVPolicy(full_plan(layers=L, heads=H, kv_heads=K)), eager=False, batch_size=2,
                   progress=lambda s: None, start=40)


def _decode(model, plan: Plan, ids: torch.Tensor, *, chunk: int, checkpoints: tuple[int, ...]) -> dict:
    lm = LoadedModel(spec="t", name="t", model=model, tokenizer=None, adapter=adapter_for(model.config),
                     dtype="float32", device="cpu")
    wants = {"output": frozenset({"loss", "token_nll"}), "kv": frozenset({"bytes"})}
    return run_decode(lm, ids, wants, KVPolicy(plan), eager=False, batch_size=4, progress=lambda s: None,
                      chunk=chunk, start=1, checkpoints=checkpoints)


def test_a_matched_uniform_cache_holds_the_plans_bytes_at_every_step() -> None:
    """The window grows with the position: at every step the uniform cache holds as many entries as the
    plan (floor(entries / (layers x KV heads)) - sink; at most one entry fewer per KV head), a query
    never reads a key evicted before it, and the real cache's bytes are those counts."""
    model = tiny_model("llama")  # 2 layers, 4 query heads, 2 KV heads of dim 8
    L, H, K = _shape(model)
    plan = Plan("p", ((Budget(2, 5), Budget(0, 3), FULL, PRUNE), (Budget(4, 12), PRUNE, Budget(0, 2), Budget(1, 9))), K)
    T = 40
    uniform = Plan.matched("u", plan, sink=2, length=T)
    t = np.arange(T + 1)
    mine, theirs = uniform.entries(t), plan.entries(t)
    assert (mine <= theirs).all() and (theirs < mine + L * K).all()
    late = t[theirs < L * K * t]  # where the plan holds less than everything
    assert (np.array(uniform.schedule)[late] == theirs[late] // (L * K) - 2).all()
    assert (np.diff(t - np.array(uniform.schedule)) >= 0).all()  # what a query reads only moves forward
    ids = _ids(batch=3, seq=T)
    every = tuple(range(4, T + 1, 4))
    per_entry = 8 * 4 * 2  # head dim x float32 x (key, value)
    for p in (plan, uniform):
        got = _decode(model, p, ids, chunk=7, checkpoints=every)["kv"]["bytes"][0]
        assert got.tolist() == [p.entries(c) * per_entry for c in every], p.name


def test_a_window_may_not_grow_faster_than_the_position() -> None:
    with pytest.raises(KVPlanError, match="grows from 3 at position 5 to 5 at 6"):
        Plan("fast", ((Budget(1, 3),) * 2,), 1, schedule=(1, 1, 2, 3, 3, 3, 5))
    with pytest.raises(KVPlanError, match="window at position 0 is 0"):
        Plan("zero", ((Budget(1, 3),) * 2,), 1, schedule=(0, 1))


def test_a_matched_window_gives_the_full_caches_loss_where_the_plan_keeps_everything() -> None:
    """Up to position 16 the plan (windows of 15 and more) keeps every entry, so the matched uniform
    cache reads every key there: its per-token losses are the full cache's; later they differ."""
    model = tiny_model("llama")
    L, H, K = _shape(model)
    plan = Plan("p", tuple((Budget(1, 15), Budget(1, 15), Budget(0, 30), FULL) for _ in range(L)), K)
    T = 40
    uniform = Plan.matched("u", plan, sink=1, length=T)
    assert uniform.schedule[:17] == tuple(max(1, t) for t in range(17))  # every earlier key
    ids = _ids(batch=2, seq=T)
    full = _decode(model, full_plan(layers=L, heads=H, kv_heads=K), ids, chunk=8, checkpoints=())
    mine = _decode(model, uniform, ids, chunk=8, checkpoints=())
    a, b = full["output"]["token_nll"], mine["output"]["token_nll"]  # (N, T - 1), token 1 first
    assert torch.allclose(a[:, :17], b[:, :17], atol=1e-5)
    assert not torch.allclose(a[:, 17:], b[:, 17:], atol=1e-3)
    keeps_all = Plan("roomy", tuple((Budget(1, 60),) * H for _ in range(L)), K)
    same = _decode(model, Plan.matched("u2", keeps_all, sink=4, length=T), ids, chunk=8, checkpoints=(T,))
    assert torch.allclose(same["output"]["token_nll"], a, atol=1e-5)


def test_sliding_layers_hold_only_what_their_window_still_sees() -> None:
    """Gemma 3 (layer 0 slides with a window of 8, layer 1 is global): with the model's reach the full
    cache holds 7 + 40 entries per KV head after 40 tokens, not 2 x 40, and the logits are the same."""
    model = tiny_model("gemma3")
    L, H, K = _shape(model)
    reach = model_reach(adapter_for(model.config), model.config, L)
    assert reach == (8, None)
    ids = _ids(batch=2, seq=40)
    kept = full_plan(layers=L, heads=H, kv_heads=K, reach=reach)
    plain = full_plan(layers=L, heads=H, kv_heads=K)
    assert (kept.entries(40), plain.entries(40)) == (7 + 40, 80)
    a = _decode(model, kept, ids, chunk=8, checkpoints=(4, 8, 9, 40))
    b = _decode(model, plain, ids, chunk=8, checkpoints=(4, 8, 9, 40))
    assert torch.allclose(a["output"]["token_nll"], b["output"]["token_nll"], atol=1e-6)  # the same loss
    per_entry = 16 * 4 * 2 * K  # head dim x float32 x (key, value) x KV heads
    assert a["kv"]["bytes"][0].tolist() == [e * per_entry for e in (4 + 4, 7 + 8, 7 + 9, 7 + 40)]
    assert b["kv"]["bytes"][0].tolist() == [e * per_entry for e in (8, 16, 18, 80)]
    windowed = Plan("w", ((Budget(2, 3),) * H, (Budget(2, 3),) * H), K, reach)
    assert windowed.entries(40) == 3 + 5  # the sliding layer's sinks are out of its reach
    with pytest.raises(KVPlanError, match=r"attention windows \[4, None\] per layer; the model's are \[8, None\]"):
        with KVPolicy(replace(kept, reach=(4, None))).applied(model, adapter_for(model.config)):
            pass


def test_what_a_query_reads_and_whether_a_needle_is_in_reach() -> None:
    assert readable(Budget(4, 8), 20, window=8, reach=None) == [(0, 4), (12, 20)]
    assert readable(Budget(4, 8), 10, window=8, reach=None) == [(0, 10)]
    assert readable(FULL, 20, window=None, reach=8) == [(13, 20)]
    assert readable(Budget(4, 8), 20, window=8, reach=10) == [(12, 20)]
    assert readable(PRUNE, 20, window=None, reach=None) == []
    plan = Plan("p", ((Budget(4, 8), Budget(0, 2), PRUNE, Budget(0, 30)),), kv_heads=2)
    assert plan.reads(10, 15, at=20)  # in head 0's window
    assert plan.reads(0, 1, at=500)  # a sink
    assert not plan.reads(5, 10, at=500)  # neither a sink nor in any window: head 3 is pruned
    assert not Plan("p", ((Budget(0, 8),) * 4,), kv_heads=2).reads(0, 11, at=20)


def test_prompts_sharing_their_first_tokens_generate_as_when_fed_whole() -> None:
    """Prompts 0 and 1 share 20 tokens, 1 and 2 only 5 (the cache of 1's first 20 is no start for 2: it
    starts afresh), 2 and 3 share 28: fed once and copied, the shared tokens give the same greedy tokens
    as each prompt fed whole, through a cache that drops keys."""
    from massact.runners.decode import run_generate, shared_tokens

    model = tiny_model("llama")
    lm = LoadedModel(spec="t", name="t", model=model, tokenizer=None, adapter=adapter_for(model.config),
                     dtype="float32", device="cpu")
    L, H, K = _shape(model)
    base = _ids(batch=1, seq=32)[0]
    rows = torch.stack([base] * 4)
    rows[0, 20:] = (rows[0, 20:] + 1) % 100
    rows[1, 25:] = (rows[1, 25:] + 2) % 100
    rows[2, 5:] = (rows[2, 5:] + 3) % 100
    rows[3] = rows[2]
    rows[3, 28:] = (rows[3, 28:] + 4) % 100
    assert [shared_tokens(rows[i], rows[i + 1]) for i in range(3)] == [20, 5, 28]
    plan = Plan.uniform("tight", Budget(2, 6), layers=L, heads=H, kv_heads=K)
    wants = {"output": frozenset({"generated"})}
    gen = lambda shared: run_generate(lm, rows, wants, KVPolicy(plan), eager=False, batch_size=4,  # noqa: E731
                                      progress=lambda s: None, chunk=8, new_tokens=5,
                                      shared_prefix=shared)["output"]["generated"]
    assert torch.equal(gen(True), gen(False))
