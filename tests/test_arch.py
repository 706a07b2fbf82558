"""Architecture adapters: lookup by model_type, module paths, weight orientation, head counts."""
from __future__ import annotations

import types

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from builders import SUPPORTED_ARCHS, tiny_model
from massact.arch import ADAPTERS, Adapter, adapter_for
from massact.errors import MassactError, UnsupportedArchitecture

# arch -> (adapter name, n_heads, n_kv_heads, head_dim, hidden, intermediate) of builders.tiny_model
TINY = {
    "gpt2": ("gpt2", 4, 4, 8, 32, 128),  # GPT-2's n_inner defaults to 4 * n_embd
    "gpt_neox": ("gpt_neox", 4, 4, 8, 32, 64),
    "llama": ("llama", 4, 2, 8, 32, 64),  # grouped-query attention: 2 query heads per KV head
    "gemma3": ("gemma3", 4, 1, 16, 32, 64),  # multi-query; 4 heads x head_dim 16 = 64, wider than hidden
    "bert": ("bert", 4, 4, 8, 32, 64),
}


@pytest.fixture(scope="module", params=SUPPORTED_ARCHS)
def arch_model(request):
    return request.param, tiny_model(request.param)


def _all_paths(adapter: Adapter) -> list[str]:
    """Every module path an adapter names below one block."""
    return [adapter.attn_out, adapter.out_proj, adapter.mlp_out, adapter.down_proj,
            *(path for _, path, _ in adapter.mlp_checkpoints)]


def test_adapter_for_picks_the_arch(arch_model) -> None:
    arch, model = arch_model
    adapter = adapter_for(model.config)
    assert adapter.name == TINY[arch][0]
    assert model.config.model_type in adapter.model_types


def test_model_types_are_registered_once() -> None:
    types_ = [t for a in ADAPTERS for t in a.model_types]
    assert len(types_) == len(set(types_))


@pytest.mark.parametrize("config", [types.SimpleNamespace(model_type="t5"), types.SimpleNamespace()],
                         ids=["t5", "no_model_type"])
def test_unknown_model_type_names_supported_ones(config) -> None:
    with pytest.raises(UnsupportedArchitecture) as info:
        adapter_for(config)
    message = str(info.value)
    assert isinstance(info.value, MassactError)
    for t in (t for a in ADAPTERS for t in a.model_types):
        assert t in message, t
    assert repr(getattr(config, "model_type", None)) in message


def test_real_unsupported_config_is_rejected() -> None:
    with pytest.raises(UnsupportedArchitecture, match="'t5'.*gpt2"):
        adapter_for(AutoConfig.for_model("t5"))


def test_module_paths_resolve_on_every_layer(arch_model) -> None:
    arch, model = arch_model
    adapter = adapter_for(model.config)
    blocks = adapter.block_list(model)
    assert isinstance(blocks, torch.nn.ModuleList)
    assert len(blocks) == model.config.num_hidden_layers
    for layer in range(len(blocks)):
        assert adapter.block_module(model, layer) is blocks[layer]
        for path in _all_paths(adapter):
            assert isinstance(adapter.block_module(model, layer, path), torch.nn.Module), path


def test_mlp_checkpoint_roles(arch_model) -> None:
    arch, model = arch_model
    adapter = adapter_for(model.config)
    roles = adapter.checkpoint_roles()
    assert {"input", "pre_act", "act", "down_in", "output"} <= set(roles)
    assert ("up" in roles) == (arch in ("llama", "gemma3"))  # only the gated MLPs have an up projection
    assert ("post_norm" in roles) == (arch == "gemma3")  # a norm between the MLP and the residual
    assert all(where in ("in", "out") for _, _, where in adapter.mlp_checkpoints)
    # down_in is the down projection's input
    assert ("down_in", adapter.down_proj, "in") in adapter.mlp_checkpoints


def test_down_weight_is_hidden_by_intermediate(arch_model) -> None:
    arch, model = arch_model
    adapter = adapter_for(model.config)
    _, _, _, _, hidden, inter = TINY[arch]
    for layer in range(model.config.num_hidden_layers):
        w = adapter.down_weight(model, layer)
        assert w.shape == (hidden, inter)


def test_down_weight_orientation_matches_the_module(arch_model) -> None:
    """y = x @ W.T + b with W from down_weight() reproduces the down projection itself."""
    arch, model = arch_model
    adapter = adapter_for(model.config)
    proj = adapter.block_module(model, 1, adapter.down_proj)
    w = adapter.down_weight(model, 1)
    x = torch.randn(3, w.shape[1], generator=torch.Generator().manual_seed(0))
    bias = proj.bias if getattr(proj, "bias", None) is not None else torch.zeros(w.shape[0])
    with torch.no_grad():
        assert torch.allclose(proj(x), x @ w.T + bias, atol=1e-5)


def test_gpt2_conv1d_is_transposed() -> None:
    model = tiny_model("gpt2")
    adapter = adapter_for(model.config)
    stored = model.transformer.h[0].mlp.c_proj.weight
    assert stored.shape == (128, 32)  # Conv1D: (in, out)
    assert torch.equal(adapter.down_weight(model, 0), stored.T)


def test_head_counts_match_config(arch_model) -> None:
    arch, model = arch_model
    adapter = adapter_for(model.config)
    _, heads, kv_heads, head_dim, hidden, _ = TINY[arch]
    assert adapter.n_heads(model.config) == heads
    assert adapter.n_kv_heads(model.config) == kv_heads
    assert adapter.head_dim(model.config) == head_dim
    assert adapter.context(model.config) == 64


def test_out_proj_input_is_heads_times_head_dim(arch_model) -> None:
    """A head is a slice of out_proj's input: its width must be n_heads * head_dim."""
    arch, model = arch_model
    adapter = adapter_for(model.config)
    seen = []
    proj = adapter.block_module(model, 0, adapter.out_proj)
    handle = proj.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape))
    try:
        with torch.no_grad():
            model(input_ids=torch.zeros(1, 5, dtype=torch.long))
    finally:
        handle.remove()
    assert seen and seen[0][-1] == adapter.n_heads(model.config) * adapter.head_dim(model.config)


@torch.no_grad()
def test_residual_receives_attn_out_and_mlp_out(arch_model) -> None:
    """A decoder block's output is its input plus what attn_out and mlp_out emit, so zeroing those
    modules' outputs removes exactly the component (Gemma 3: the post-norms, not self_attn / mlp)."""
    arch, model = arch_model
    adapter = adapter_for(model.config)
    if not adapter.is_decoder:
        pytest.skip("BERT is post-layer-norm: the block output is LayerNorm(input + component)")
    seen = {}

    def grab(name, where):  # the hooks return None: a value returned would replace the input or output
        def keep(x):
            seen[name] = (x[0] if isinstance(x, tuple) else x).clone()
        if where == "in":
            return lambda m, args: keep(args)
        return lambda m, args, out: keep(out)

    block = adapter.block_module(model, 1)
    hooks = [(block, "in", "block_in"), (block, "out", "block_out"),
             (adapter.block_module(model, 1, adapter.attn_out), "out", "attn"),
             (adapter.block_module(model, 1, adapter.mlp_out), "out", "mlp")]
    handles = [m.register_forward_pre_hook(grab(n, w)) if w == "in" else m.register_forward_hook(grab(n, w))
               for m, w, n in hooks]
    try:
        model(input_ids=torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(0)))
    finally:
        for h in handles:
            h.remove()
    assert seen["attn"].shape == seen["mlp"].shape == seen["block_in"].shape
    assert torch.allclose(seen["block_out"], seen["block_in"] + seen["attn"] + seen["mlp"], atol=1e-5)


def test_attention_windows() -> None:
    """Which layers slide, and how far back: from layer_types and sliding_window."""
    gemma = tiny_model("gemma3").config
    adapter = adapter_for(gemma)
    assert [adapter.attention_window(gemma, l) for l in range(2)] == [8, None]
    for arch in ("gpt2", "gpt_neox", "llama", "bert"):
        config = tiny_model(arch).config
        assert adapter_for(config).attention_window(config, 0) is None, arch
    mistral = AutoConfig.for_model("mistral", sliding_window=16, num_hidden_layers=2)  # no layer_types
    assert [adapter_for(mistral).attention_window(mistral, l) for l in range(2)] == [16, 16]
    qwen2 = AutoConfig.for_model("qwen2", num_hidden_layers=2)  # use_sliding_window=False
    assert adapter_for(qwen2).attention_window(qwen2, 0) is None


@torch.no_grad()
def test_first_token_is_masked_beyond_the_window() -> None:
    """Query q of a sliding layer with window w sees key 0 only while q < w: its probability on the
    first token is exactly 0 from q = w on; the global layer still attends to it."""
    model = tiny_model("gemma3")
    adapter = adapter_for(model.config)
    probs = model(input_ids=torch.randint(1, 100, (1, 12), generator=torch.Generator().manual_seed(0)),
                  output_attentions=True).attentions  # per layer (B, H, T, T)
    w = adapter.attention_window(model.config, 0)
    assert (probs[0][0, :, :w, 0] > 0).all() and (probs[0][0, :, w:, 0] == 0).all()
    assert adapter.attention_window(model.config, 1) is None and (probs[1][0, :, :, 0] > 0).all()


def test_structure_flags(arch_model) -> None:
    arch, model = arch_model
    adapter = adapter_for(model.config)
    assert adapter.is_decoder == (arch != "bert")


def test_missing_head_attribute_raises() -> None:
    adapter = adapter_for(types.SimpleNamespace(model_type="gpt2"))
    with pytest.raises(UnsupportedArchitecture, match="num_attention_heads"):
        adapter.n_heads(types.SimpleNamespace(model_type="gpt2", hidden_size=32))


@pytest.mark.parametrize("model_type", ["mistral", "qwen2", "qwen3", "smollm3"])
def test_llama_family_paths_resolve(model_type: str) -> None:
    """The llama record also claims these model types: its paths must exist on each."""
    config = AutoConfig.for_model(
        model_type, vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=64,
        pad_token_id=0, bos_token_id=0, eos_token_id=0,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    adapter = adapter_for(model.config)
    assert adapter.name == "llama"
    assert (adapter.n_heads(config), adapter.n_kv_heads(config), adapter.head_dim(config)) == (4, 2, 8)
    for layer in range(2):
        for path in _all_paths(adapter):
            adapter.block_module(model, layer, path)
        assert adapter.down_weight(model, layer).shape == (32, 64)
