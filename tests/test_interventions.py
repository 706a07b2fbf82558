"""Interventions: what each one changes, what it leaves alone, and that no hook outlives it."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
import torch

from builders import SUPPORTED_ARCHS, tiny_model
from massact.arch import adapter_for
from massact.capture import block_points, capture, collect
from massact.reducers import TokenMax
from massact.corpus import Corpus, CorpusSettings
from massact.engine import Engine, PassResult
from massact.requests import want
from massact.errors import MassactError
from massact.interventions import BY_NAME, NONE, Intervention, PruneHeads, SetActivations, ZeroAttention, ZeroMLP
from massact.models import LoadedModel

HD = 8  # head dim of every tiny model: 32 wide, 4 heads


def _ids(batch: int = 2, seq: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 100, (batch, seq), generator=torch.Generator().manual_seed(seed))


def _n_hooks(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _out(model, ids) -> torch.Tensor:
    """Logits for decoders, last hidden state for BERT."""
    with torch.no_grad():
        return model(input_ids=ids)[0]


def _run(model, adapter, iv: Intervention, ids) -> torch.Tensor:
    with iv.applied(model, adapter):
        return _out(model, ids)


@contextmanager
def _watch(module: torch.nn.Module, where: str, store: list) -> Iterator[None]:
    """Record module's input ("in") or output ("out") main tensor; hook removed in finally."""
    if where == "in":
        handle = module.register_forward_pre_hook(lambda m, args: store.append(args[0].detach().clone()))
    else:
        def grab(m, args, output):
            store.append((output[0] if isinstance(output, tuple) else output).detach().clone())
        handle = module.register_forward_hook(grab)
    try:
        yield
    finally:
        handle.remove()


def _seen(model, adapter, iv: Intervention, ids, module: torch.nn.Module, where: str) -> torch.Tensor:
    """What ``module`` receives or emits under ``iv``; our hook is added inside the intervention,
    so it runs after the intervention's own hook on the same module."""
    store: list[torch.Tensor] = []
    with iv.applied(model, adapter), _watch(module, where, store):
        _out(model, ids)
    assert len(store) == 1
    return store[0]


@pytest.fixture(scope="module", params=SUPPORTED_ARCHS)
def arch_model(request):
    model = tiny_model(request.param)
    return request.param, model, adapter_for(model.config)


def test_none_is_identity(arch_model) -> None:
    _, model, adapter = arch_model
    ids = _ids()
    assert torch.equal(_run(model, adapter, NONE, ids), _out(model, ids))


def test_prune_no_heads_is_identity(arch_model) -> None:
    _, model, adapter = arch_model
    ids = _ids()
    for method in ("correct", "documented"):
        iv = PruneHeads((), method)
        assert torch.equal(_run(model, adapter, iv, ids), _out(model, ids))


@pytest.mark.parametrize("kind", ["zero_attention", "zero_mlp"])
def test_zeroing_changes_output(arch_model, kind: str) -> None:
    _, model, adapter = arch_model
    ids = _ids()
    base = _out(model, ids)
    new = _run(model, adapter, BY_NAME[kind], ids)
    assert torch.isfinite(new).all()
    assert not torch.allclose(new, base, atol=1e-4)
    assert torch.equal(_out(model, ids), base)  # and the model is itself again afterwards


@pytest.mark.parametrize("kind", ["zero_attention", "zero_mlp"])
def test_zeroed_module_emits_zeros(arch_model, kind: str) -> None:
    _, model, adapter = arch_model
    path = adapter.attn_out if kind == "zero_attention" else adapter.mlp_out
    for layer in range(2):
        out = _seen(model, adapter, BY_NAME[kind], _ids(), adapter.block_module(model, layer, path), "out")
        assert (out == 0).all()


def test_zero_attention_gpt2_blocks_stay_finite() -> None:
    model = tiny_model("gpt2")
    adapter = adapter_for(model.config)
    ids = _ids()
    attn = _seen(model, adapter, ZeroAttention(), ids, model.transformer.h[0].attn, "out")
    assert attn.shape == (2, 8, 32) and (attn == 0).all()
    for layer in range(2):
        out = _seen(model, adapter, ZeroAttention(), ids, model.transformer.h[layer], "out")
        assert torch.isfinite(out).all() and out.abs().max() > 0
    # with no attention, block 0's output is embeddings + MLP(ln_2(embeddings)): per-token only
    block0 = _seen(model, adapter, ZeroAttention(), ids, model.transformer.h[0], "out")
    swapped = ids.clone()
    swapped[:, 0] = (ids[:, 0] + 1) % 100  # changing token 0 cannot reach later tokens
    block0_swapped = _seen(model, adapter, ZeroAttention(), swapped,
                           model.transformer.h[0], "out")
    assert torch.allclose(block0[:, 1:], block0_swapped[:, 1:])
    assert not torch.allclose(block0[:, 0], block0_swapped[:, 0])


def test_prune_correct_zeroes_the_heads_input_slice() -> None:
    model = tiny_model("gpt2")
    adapter = adapter_for(model.config)
    ids, layer, head = _ids(), 1, 2
    proj = adapter.block_module(model, layer, adapter.out_proj)
    base = _seen(model, adapter, NONE, ids, proj, "in")
    iv = PruneHeads(((layer, head),), "correct")
    pruned = _seen(model, adapter, iv, ids, proj, "in")
    lo, hi = head * HD, (head + 1) * HD
    assert base[..., lo:hi].abs().max() > 0
    assert (pruned[..., lo:hi] == 0).all()
    assert torch.equal(pruned[..., :lo], base[..., :lo]) and torch.equal(pruned[..., hi:], base[..., hi:])
    # the attention block's output is then the projection of the remaining heads
    attn = _seen(model, adapter, iv, ids, adapter.block_module(model, layer, adapter.attn_out), "out")
    with torch.no_grad():
        assert torch.allclose(attn, proj(pruned), atol=1e-6)


def test_prune_documented_zeroes_an_output_slice() -> None:
    model = tiny_model("gpt2")
    adapter = adapter_for(model.config)
    ids, layer, head = _ids(), 1, 2
    attn_mod = adapter.block_module(model, layer, adapter.attn_out)
    proj = adapter.block_module(model, layer, adapter.out_proj)
    iv = PruneHeads(((layer, head),), "documented")
    base_out = _seen(model, adapter, NONE, ids, attn_mod, "out")
    base_in = _seen(model, adapter, NONE, ids, proj, "in")
    out = _seen(model, adapter, iv, ids, attn_mod, "out")
    lo, hi = head * HD, (head + 1) * HD
    assert (out[..., lo:hi] == 0).all() and base_out[..., lo:hi].abs().max() > 0
    assert torch.equal(out[..., :lo], base_out[..., :lo]) and torch.equal(out[..., hi:], base_out[..., hi:])
    # the projection's input, where the head actually lives, is untouched
    assert torch.equal(_seen(model, adapter, iv, ids, proj, "in"), base_in)


def test_prune_methods_give_different_logits() -> None:
    model = tiny_model("gpt2")
    adapter = adapter_for(model.config)
    ids = _ids()
    base = _out(model, ids)
    heads = ((0, 1), (1, 3))
    correct = _run(model, adapter, PruneHeads(heads, "correct"), ids)
    documented = _run(model, adapter, PruneHeads(heads, "documented"), ids)
    assert not torch.allclose(correct, base, atol=1e-4)
    assert not torch.allclose(documented, base, atol=1e-4)
    assert not torch.allclose(correct, documented, atol=1e-4)


def test_prune_several_heads_in_one_layer() -> None:
    model = tiny_model("gpt_neox")
    adapter = adapter_for(model.config)
    proj = adapter.block_module(model, 0, adapter.out_proj)
    base = _seen(model, adapter, NONE, _ids(), proj, "in")
    pruned = _seen(model, adapter, PruneHeads(((0, 0), (0, 3))), _ids(), proj, "in")
    assert (pruned[..., 0:HD] == 0).all() and (pruned[..., 3 * HD:4 * HD] == 0).all()
    assert torch.equal(pruned[..., HD:3 * HD], base[..., HD:3 * HD])


def test_prune_query_head_with_gqa() -> None:
    """Llama tiny: 4 query heads share 2 KV heads; a query head is an o_proj input slice."""
    model = tiny_model("llama")
    adapter = adapter_for(model.config)
    assert adapter.n_kv_heads(model.config) < adapter.n_heads(model.config)
    ids = _ids()
    proj = adapter.block_module(model, 1, adapter.out_proj)
    base = _seen(model, adapter, NONE, ids, proj, "in")
    assert base.shape[-1] == 4 * HD
    outs = {}
    for head in (2, 3):  # both read KV head 1
        iv = PruneHeads(((1, head),))
        pruned = _seen(model, adapter, iv, ids, proj, "in")
        keep = torch.ones(4 * HD, dtype=torch.bool)
        keep[head * HD:(head + 1) * HD] = False
        assert (pruned[..., ~keep] == 0).all()
        assert torch.equal(pruned[..., keep], base[..., keep])
        outs[head] = _run(model, adapter, iv, ids)
    assert not torch.allclose(outs[2], _out(model, ids), atol=1e-5)
    assert not torch.allclose(outs[2], outs[3], atol=1e-5)  # distinct query heads, not the shared KV head


def test_set_activations_writes_block_output(arch_model) -> None:
    _, model, adapter = arch_model
    ids = _ids()
    layer, token, feature, value = 0, 3, 5, 123.5
    block = adapter.block_module(model, layer)
    base = _seen(model, adapter, NONE, ids, block, "out")
    iv = SetActivations(((layer, token, feature, value),))
    out = _seen(model, adapter, iv, ids, block, "out")
    assert (out[:, token, feature] == value).all()
    changed = torch.zeros_like(out, dtype=torch.bool)
    changed[:, token, feature] = True
    assert torch.equal(out[~changed], base[~changed])
    assert not torch.allclose(_run(model, adapter, iv, ids), _out(model, ids))


def test_set_activations_several_layers() -> None:
    model = tiny_model("llama")
    adapter = adapter_for(model.config)
    iv = SetActivations(((0, 1, 2, -7.0), (1, 4, 9, 300.0), (1, 0, 0, 1.0)))
    ids = _ids()
    b0 = _seen(model, adapter, iv, ids, adapter.block_module(model, 0), "out")
    b1 = _seen(model, adapter, iv, ids, adapter.block_module(model, 1), "out")
    assert (b0[:, 1, 2] == -7.0).all()
    assert (b1[:, 4, 9] == 300.0).all() and (b1[:, 0, 0] == 1.0).all()


def test_keys_distinguish_interventions() -> None:
    ivs = [
        NONE,
        ZeroAttention(),
        ZeroMLP(),
        PruneHeads(((0, 1),), "correct"),
        PruneHeads(((0, 1),), "documented"),
        PruneHeads(((0, 2),)),
        SetActivations(((0, 1, 2, 3.0),)),
        SetActivations(((0, 1, 2, 4.0),)),
    ]
    assert len({iv.key for iv in ivs}) == len(ivs)
    assert hash(ZeroMLP()) == hash(ZeroMLP())  # usable as a cache key


ALL_KINDS = [
    NONE,
    ZeroAttention(),
    ZeroMLP(),
    PruneHeads(((0, 1), (1, 0)), "correct"),
    PruneHeads(((0, 1), (1, 0)), "documented"),
    SetActivations(((0, 1, 2, 50.0), (1, 0, 0, 1.0))),
]


@pytest.mark.parametrize("iv", ALL_KINDS, ids=lambda iv: iv.key)
def test_no_hooks_remain(arch_model, iv: Intervention) -> None:
    _, model, adapter = arch_model
    assert _n_hooks(model) == 0
    with iv.applied(model, adapter):
        assert _n_hooks(model) > 0 or iv == NONE
        _out(model, _ids())
    assert _n_hooks(model) == 0
    with pytest.raises(RuntimeError, match="boom"):
        with iv.applied(model, adapter):
            raise RuntimeError("boom")
    assert _n_hooks(model) == 0
    with pytest.raises(IndexError):  # the model itself raises: token id outside the vocabulary
        with iv.applied(model, adapter):
            _out(model, torch.full((1, 4), 10_000))
    assert _n_hooks(model) == 0


def test_bad_method_raises_without_hooks() -> None:
    model = tiny_model("gpt2")
    adapter = adapter_for(model.config)
    with pytest.raises(ValueError, match="prune method"):
        with PruneHeads(((0, 1),), "nearby").applied(model, adapter):
            pass
    assert _n_hooks(model) == 0


def test_prune_out_of_range_head_is_rejected() -> None:
    model = tiny_model("gpt2")
    adapter = adapter_for(model.config)
    with pytest.raises((ValueError, MassactError), match="head"):
        with PruneHeads(((0, 7),)).applied(model, adapter):
            _out(model, _ids())


# ------------------------------------------------ interventions composed with capture

class _CharTokenizer:
    """Stand-in tokenizer: one id per character, inside the tiny models' vocabulary of 100."""

    bos_token_id = 0

    def __call__(self, text: str, add_special_tokens: bool = False, verbose: bool = True) -> dict:
        return {"input_ids": [ord(c) % 100 for c in text]}


def _block0_token_max(model, adapter, iv: Intervention, ids, *, capture_outside: bool) -> torch.Tensor:
    mask_ref = {"mask": torch.ones_like(ids)}
    cap = lambda: capture(model, adapter, block_points(adapter, 2), mask_ref=mask_ref,  # noqa: E731
                          make_reducers=lambda p: [TokenMax()])
    with torch.no_grad():
        if capture_outside:
            with cap() as red, iv.applied(model, adapter):
                model(input_ids=ids)
        else:
            with iv.applied(model, adapter), cap() as red:
                model(input_ids=ids)
    return collect(red)["block.0"]["token_max"]


SET = SetActivations(((0, 2, 5, 500.0),))


def test_capture_inside_intervention_sees_set_value() -> None:
    """Hooks on one module run in registration order: capture must be registered after the intervention."""
    model = tiny_model("gpt2")
    adapter = adapter_for(model.config)
    ids = _ids()
    inside = _block0_token_max(model, adapter, SET, ids, capture_outside=False)
    outside = _block0_token_max(model, adapter, SET, ids, capture_outside=True)
    assert (inside[:, 2] == 500.0).all()
    assert (outside[:, 2] < 500.0).all()  # registered first, capture reads the value before it is set


@pytest.mark.parametrize("arch, iv, point, check", [
    ("gpt2", SET, "block.0", lambda r: (r.stat("block.0", "token_max")[:, 2] == 500.0).all()),
    ("bert", ZeroMLP(), "mlp.0.output", lambda r: (r.stat("mlp.0.output", "top_abs") == 0).all()),
], ids=["gpt2-set_activations", "bert-zero_mlp"])
def test_engine_records_what_the_intervention_left(arch: str, iv: Intervention, point: str,
                                                   check: Callable[[PassResult], torch.Tensor]) -> None:
    model = tiny_model(arch)
    adapter = adapter_for(model.config)
    lm = LoadedModel(spec=f"tiny-{arch}", name=f"tiny-{arch}", model=model, tokenizer=_CharTokenizer(),
                     adapter=adapter, dtype="float32", device="cpu")
    text = "the quick brown fox jumps over the lazy dog " * 4
    corpus = Corpus(CorpusSettings(seqlen=16), "chars", text, "0" * 64)
    result = Engine(batch_size=2).run(lm, corpus, want(point, "token_max", "top_abs").under(iv), n=2)
    assert point in result.points and check(result)
