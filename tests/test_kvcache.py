"""The head-aware KV cache: what each head reads, what the cache holds and frees, and that chunks,
single tokens and generate() all see the same keys."""
from __future__ import annotations

import pytest
import torch

from builders import SUPPORTED_ARCHS, tiny_model
from massact.arch import adapter_for
from massact.kvcache import GroupedKV, KVPlanError, KVPolicy, Plan, _Group, full_plan, grouped_attention
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
def test_chunks_and_single_tokens_read_the_same_keys(arch) -> None:
    model = tiny_model(arch)
    policy = KVPolicy(_mixed_plan(*_shape(model)))
    ids = _ids()
    whole, a = _logits(model, policy, ids, chunk=ids.shape[1])
    by_token, b = _logits(model, policy, ids, chunk=1)
    by_seven, c = _logits(model, policy, ids, chunk=7)
    assert torch.allclose(whole, by_token, atol=1e-5) and torch.allclose(whole, by_seven, atol=1e-5)
    a.compact(), b.compact(), c.compact()
    assert a.nbytes() == b.nbytes() == c.nbytes()


def test_each_query_head_reads_only_what_its_budget_keeps() -> None:
    """Against a hand-written reference: position-by-position masks per head, GQA with 2 query heads
    per KV head, one query head pruned."""
    torch.manual_seed(0)
    T, D = 12, 4
    budgets = (Budget(2, 3), Budget(0, 1), FULL, PRUNE)
    k, v, q = torch.randn(1, 2, T, D), torch.randn(1, 2, T, D), torch.randn(1, 4, T, D)
    pos = torch.arange(T)
    groups = [_Group(Budget(2, 3), [0], k[:, :1], v[:, :1], pos), _Group(FULL, [1], k[:, 1:], v[:, 1:], pos)]
    kv = GroupedKV(groups, budgets, rep=2, query_pos=pos)
    out, _ = grouped_attention(None, q, kv, kv, None, scaling=0.5)
    for h, b in enumerate(budgets):
        for t in range(T):
            if b.prune:
                assert (out[0, t, h] == 0).all()
                continue
            keys = [p for p in range(t + 1) if b.full or p < b.sink or p >= t - b.window]
            kh, vh = k[0, h // 2, keys], v[0, h // 2, keys]
            ref = torch.softmax(q[0, h, t] @ kh.T * 0.5, dim=-1) @ vh
            assert torch.allclose(out[0, t, h], ref, atol=1e-5), (h, t)


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
