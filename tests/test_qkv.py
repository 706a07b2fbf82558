"""Per-head queries, keys and values (attn.{l}.q/k/v): what the model's own KV cache holds, and what
reproduces its attention output; the per-head reducers; one eager pass for mixed requests."""
from __future__ import annotations

import pytest
import torch
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from builders import SUPPORTED_ARCHS, tiny_model
from massact.arch import adapter_for
from massact.capture import capture, collect, hooked, qkv_points
from massact.errors import AttentionUnavailable
from massact.reducers import HEADS, HeadStats, Keep, Norm, Received, Shape, reducers_for
from test_capture import _ids, _n_hooks

B, T = 3, 12


def _qkv_and_heads_out(model, implementation: str, *, use_cache: bool):
    """q/k/v of every layer (kept whole), the input of every attention output projection (the heads'
    output, (B, T, H*hd)), and the model's output, from one forward pass of ``implementation``."""
    adapter = adapter_for(model.config)
    L = model.config.num_hidden_layers
    points = qkv_points(adapter, L, model.config)
    heads_out: dict[int, torch.Tensor] = {}
    regs = [(adapter.block_module(model, l, adapter.out_proj), "in",
             lambda m, args, l=l: heads_out.__setitem__(l, args[0].detach().clone())) for l in range(L)]
    model.set_attn_implementation(implementation)
    ids = _ids(B, T, 1)
    kw = {"use_cache": True} if use_cache else {}
    with torch.no_grad(), hooked(regs), capture(model, adapter, points, mask_ref={"mask": torch.ones(B, T)},
                                                make_reducers=lambda p: [Keep(shape=p.shape)]) as red:
        out = model(input_ids=ids, **kw)
    got = {name: r["full"] for name, r in collect(red).items()}
    return adapter, got, heads_out, out


def _visible(adapter, config, layer: int) -> torch.Tensor:
    """(T, T) bool: which keys (columns) each query (rows) of ``layer`` may read."""
    if not adapter.is_decoder:
        return torch.ones(T, T, dtype=torch.bool)
    q, k = torch.arange(T)[:, None], torch.arange(T)[None, :]
    ok = k <= q
    window = adapter.attention_window(config, layer)
    return ok & (k > q - window) if window else ok


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("arch", SUPPORTED_ARCHS)
def test_qkv_reproduce_the_attention_output_and_fill_the_models_kv_cache(arch, implementation) -> None:
    model = tiny_model(arch)
    decoder = adapter_for(model.config).is_decoder
    adapter, got, heads_out, out = _qkv_and_heads_out(model, implementation, use_cache=decoder)
    config = model.config
    H, KV, hd = adapter.n_heads(config), adapter.n_kv_heads(config), adapter.head_dim(config)
    kv_of = adapter.kv_heads_of(config)
    assert len(kv_of) == H and sorted(set(kv_of)) == list(range(KV))
    for l in range(config.num_hidden_layers):
        q, k, v = (got[f"attn.{l}.{x}"] for x in "qkv")
        assert q.shape == (B, H, T, hd) and k.shape == v.shape == (B, KV, T, hd)
        if decoder:  # the keys (rotated, where the model rotates them) and values the model caches
            cache = out.past_key_values.layers[l]
            kept = cache.keys.shape[2]  # a sliding layer's cache keeps only the last window - 1 tokens
            assert kept == (T if adapter.attention_window(config, l) is None else adapter.attention_window(config, l) - 1)
            torch.testing.assert_close(k[:, :, T - kept:], cache.keys, rtol=0, atol=0)
            torch.testing.assert_close(v[:, :, T - kept:], cache.values, rtol=0, atol=0)
        # softmax(q k^T * scaling + mask) v, each query head reading its KV head: the heads' output
        logits = q @ k[:, list(kv_of)].transpose(-1, -2) * adapter.attention_scaling(model, l)
        logits = logits.masked_fill(~_visible(adapter, config, l), float("-inf"))
        heads = torch.softmax(logits, dim=-1) @ v[:, list(kv_of)]  # (B, H, T, hd)
        torch.testing.assert_close(heads.transpose(1, 2).reshape(B, T, H * hd), heads_out[l], rtol=1e-4, atol=1e-5)
    assert _n_hooks(model) == 0 and "get_interface" not in vars(ALL_ATTENTION_FUNCTIONS)


def test_the_attention_function_is_restored_after_an_error_and_in_nested_captures() -> None:
    model = tiny_model("llama")
    adapter = adapter_for(model.config)
    points = qkv_points(adapter, 2, model.config)
    make = lambda p: [Norm(shape=p.shape)]  # noqa: E731
    with pytest.raises(RuntimeError, match="boom"):
        with capture(model, adapter, points, mask_ref={}, make_reducers=make):
            raise RuntimeError("boom")
    assert "get_interface" not in vars(ALL_ATTENTION_FUNCTIONS) and _n_hooks(model) == 0
    mask = {"mask": torch.ones(1, 4)}
    with torch.no_grad(), capture(model, adapter, points[:3], mask_ref=mask, make_reducers=make) as outer:
        with capture(model, adapter, points[3:], mask_ref=mask, make_reducers=make) as inner:
            model(input_ids=_ids(1, 4, 0))
        model(input_ids=_ids(1, 4, 0))
    assert "get_interface" not in vars(ALL_ATTENTION_FUNCTIONS) and _n_hooks(model) == 0
    assert collect(outer)["attn.0.q"]["norm"].shape == (2, 4, 4) and collect(inner)["attn.1.q"]["norm"].shape == (1, 4, 4)


def test_attention_computed_past_the_attention_function_is_named() -> None:
    model = tiny_model("gpt2")
    model.config.reorder_and_upcast_attn = True
    for block in model.transformer.h:
        block.attn.reorder_and_upcast_attn = True  # eager GPT-2 then computes attention itself
    adapter = adapter_for(model.config)
    with pytest.raises(AttentionUnavailable, match="attn.0.q: GPT2Attention computed its attention without"):
        with torch.no_grad(), capture(model, adapter, qkv_points(adapter, 2, model.config),
                                      mask_ref={"mask": torch.ones(1, 4)}, make_reducers=lambda p: [Norm(shape=p.shape)]):
            model(input_ids=_ids(1, 4, 0))
    assert _n_hooks(model) == 0 and "get_interface" not in vars(ALL_ATTENTION_FUNCTIONS)


def test_per_head_reducers_on_hand_built_tensors() -> None:
    shape = Shape(HEADS, heads=2, head_dim=3)
    a = torch.zeros(1, 2, 4, 3)  # (B, H, T, hd)
    a[0, 0, 1] = torch.tensor([3.0, 4.0, 0.0])
    a[0, 1, 3] = torch.tensor([0.0, -1.0, 0.0])
    mask = torch.tensor([[1, 1, 1, 0]])  # the last token is padding
    norm, keep = Norm(shape=shape), Keep(shape=shape)
    for r in (norm, keep):
        r.update(a, mask, a.abs().masked_fill(~mask.bool()[:, None, :, None], 0.0))
    assert norm.result()["norm"].tolist() == [[[0.0, 5.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]]
    assert keep.result()["full"][0, 1, 3].abs().sum() == 0 and keep.result()["full"][0, 0, 1, 1] == 4.0
    with pytest.raises(ValueError, match="HeadStats reduces"):
        reducers_for({"first_excl"}, shape)


def test_received_is_the_mean_attention_from_later_queries() -> None:
    g = torch.Generator().manual_seed(0)
    T_ = 5
    logits = torch.randn(2, 3, T_, T_, generator=g).masked_fill(~torch.ones(T_, T_, dtype=torch.bool).tril(),
                                                                 float("-inf"))
    a = torch.softmax(logits, dim=-1)  # (B, H, T, T), causal
    mask = torch.ones(2, T_)
    got, first = Received(), HeadStats()
    got.update(a, mask, a)
    first.update(a, mask, a)
    r = got.result()["received"]  # (B, H, T)
    assert r.shape == (2, 3, T_) and torch.allclose(r[..., 0], first.result()["first_excl"])
    assert torch.allclose(r[..., 2], a[:, :, 3:, 2].mean(-1)) and (r[..., -1] == 0).all()


def test_an_eager_statistic_and_a_non_eager_one_are_one_eager_pass() -> None:
    from test_engine import _engine_on
    from massact.requests import want

    lm, corpus, engine, _ = _engine_on("llama")
    probs, values = want("attn.*", "first_excl"), want("attn.*.v", "norm", "full")
    both = probs | values
    assert both.eager and not values.eager and both.stats == probs.stats | values.stats
    r = engine.run(lm, corpus, both, n=4)
    assert engine.n_passes == 1 and engine.log[0]["eager"]
    assert r.stat("attn.1.v", "full").shape == (4, 2, 16, 8) and r.stat("attn.1", "first_excl").shape == (4, 4)
    torch.testing.assert_close(r.stat("attn.1.v", "norm"), r.stat("attn.1.v", "full").norm(dim=-1))
    alone = engine.run(lm, corpus, values, n=4)  # without eager attention: a pass of its own, the same values
    assert engine.n_passes == 2
    torch.testing.assert_close(alone.stat("attn.1.v", "full"), r.stat("attn.1.v", "full"))


def test_a_pattern_takes_only_the_points_its_statistic_applies_to() -> None:
    from test_engine import _engine_on
    from massact.requests import want

    lm, corpus, engine, _ = _engine_on("llama")
    r = engine.run(lm, corpus, want("attn.*", "norm"), n=2)  # the q, k and v points, not the probabilities
    assert {p for p in r.points} == {f"attn.{l}.{x}" for l in range(2) for x in "qkv"}
    with pytest.raises(ValueError) as info:
        engine.run(lm, corpus, want("attn.*.v_proj", "full"), n=2)
    msg = str(info.value)
    assert "no capture point matches 'attn.*.v_proj'" in msg
    assert ("block.{l}, mlp.{l}.{input,pre_act,act,up,down_in,output}, attn.{l}, attn.{l}.{q,k,v} (l = 0..1), output, "
            "kv") in msg and "python -m massact points MODEL" in msg
    with pytest.raises(ValueError, match=r"matches 'attn.0' for statistic 'norm' only attn.\{l\} \(l = 0..0\), of "
                                         r"another kind; statistic 'norm' applies to activation and heads points"):
        engine.run(lm, corpus, want("attn.0", "norm"), n=2)


def test_points_lists_every_point_with_its_measured_shape_and_every_statistic() -> None:
    from massact.models import LoadedModel
    from massact.points import listing
    from massact.reducers import STATISTICS

    for arch, heads, kv, hd, note in (("llama", 4, 2, 8, "query head h reads KV head h // 2"),
                                      ("gemma3", 4, 1, 16, "query head h reads KV head h // 4"), ("bert", 4, 4, 8, "")):
        model = tiny_model(arch)
        lm = LoadedModel(spec=arch, name=f"tiny-{arch}", model=model, tokenizer=None,
                         adapter=adapter_for(model.config), dtype="float32", device="cpu")
        text = "\n".join(listing(lm))
        assert f"{heads} query heads, {kv} KV heads" in text and note in text
        assert "\n  block.{l}" in text and "(B, T, 32)" in text
        assert f"  attn.{{l}}.q" in text and f"(B, {heads}, T, {hd})" in text and f"(B, {kv}, T, {hd})" in text
        assert f"(B, {heads}, T, T)" in text
        up = "(B, T, 64)" if arch != "bert" else "(B, T, 64)"
        assert up in text  # the MLP's inner width
        for stat in STATISTICS:
            assert f"\n  {stat} " in text
        assert "get_interface" not in vars(ALL_ATTENTION_FUNCTIONS) and _n_hooks(model) == 0


def test_points_command_on_a_saved_model(tmp_path, capsys) -> None:
    from builders import save_tiny
    from massact.__main__ import USAGE_ERROR, main

    save_tiny(tiny_model("gpt2"), tmp_path / "gpt2")
    assert main(["points", str(tmp_path / "gpt2")]) == 0
    out = capsys.readouterr().out
    assert "attn.{l}.v" in out and "(B, 4, T, 8)" in out and "received" in out
    assert main(["points", "./nowhere"]) == USAGE_ERROR
    assert "error:" in capsys.readouterr().err
