"""Architecture adapters: declarative maps from canonical names to a model's modules.

One record per architecture, registered by transformers' ``config.model_type``. Module paths
are relative to the base model (``model.base_model``) and, below ``blocks``, to one block.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from massact.errors import UnsupportedArchitecture


@dataclass(frozen=True)
class Adapter:
    """Where the canonical hook points of one architecture live."""

    name: str
    model_types: tuple[str, ...]
    blocks: str  # ModuleList of blocks, relative to the base model
    attn_out: str  # module whose output[0] is the attention block's contribution, (B, T, D)
    # the attention module: its output[1] is the attention probabilities (B, H, T, T) when eager, and it
    # hands per-head queries, keys and values to transformers' attention function (points attn.{l}.q/k/v)
    attn_probs: str
    out_proj: str  # attention output projection; a head is a slice of its *input*, (B, T, H*hd)
    mlp_out: str  # module whose output is the MLP's contribution to the residual, (B, T, D)
    # MLP checkpoints: role -> (module path, "in" | "out"); roles: input, pre_act, act, up,
    # down_in, output, post_norm. down_in is the down projection's input, (B, T, I); post_norm is
    # a norm between the MLP's output and the residual add, where there is one.
    mlp_checkpoints: tuple[tuple[str, str, str], ...]
    down_proj: str
    down_weight_in_out: bool  # GPT-2's Conv1D stores (in, out); nn.Linear stores (out, in)
    heads_attr: tuple[str, ...] = ("num_attention_heads", "n_head")
    kv_heads_attr: tuple[str, ...] = ("num_key_value_heads",)
    context_attr: tuple[str, ...] = ("max_position_embeddings", "n_positions")
    is_decoder: bool = True

    def n_heads(self, config) -> int:
        return _first_attr(config, self.heads_attr)

    def n_kv_heads(self, config) -> int:
        return _first_attr(config, self.kv_heads_attr, default=self.n_heads(config))

    def kv_heads_of(self, config) -> tuple[int, ...]:
        """Per query head, the KV head whose keys and values it reads: transformers' repeat_kv hands KV head
        j to query heads j*r .. (j+1)*r - 1, r = heads / KV heads (r = 1 without grouped-query attention)."""
        heads, kv = self.n_heads(config), self.n_kv_heads(config)
        return tuple(h // (heads // kv) for h in range(heads))

    def attention_scaling(self, model: nn.Module, layer: int) -> float:
        """What layer ``layer``'s attention multiplies q . k by before the softmax: head_dim ** -0.5 in most
        models, query_pre_attn_scalar ** -0.5 in Gemma 3, also / (layer + 1) in a GPT-2 configured so."""
        return float(self.block_module(model, layer, self.attn_probs).scaling)

    def head_dim(self, config) -> int:
        hd = getattr(config, "head_dim", None)
        return int(hd) if hd else config.hidden_size // self.n_heads(config)

    def context(self, config) -> int:
        return _first_attr(config, self.context_attr)

    def attention_window(self, config, layer: int) -> int | None:
        """Keys a query of ``layer`` sees: itself and the w - 1 before it; None for all earlier keys.

        transformers masks key k from query q unless k > q - w, so the first token is out of reach
        of every query q >= w in a sliding layer. Sliding layers are those ``config.layer_types``
        marks "sliding_attention" (Gemma 3, Qwen2); without layer_types a set
        ``config.sliding_window`` applies to every layer (Mistral).
        """
        window = getattr(config, "sliding_window", None)
        types = getattr(config, "layer_types", None)
        if not window or (types is not None and types[layer] != "sliding_attention"):
            return None
        return int(window)

    def block_list(self, model: nn.Module) -> nn.ModuleList:
        return model.base_model.get_submodule(self.blocks)

    def block_module(self, model: nn.Module, layer: int, path: str = "") -> nn.Module:
        block = self.block_list(model)[layer]
        return block.get_submodule(path) if path else block

    def weight(self, model: nn.Module, layer: int, path: str) -> torch.Tensor:
        """The weight of module ``path`` of block ``layer`` as stored (read_weight)."""
        return read_weight(self.block_module(model, layer, path))

    def down_weight(self, model: nn.Module, layer: int) -> torch.Tensor:
        """The down projection weight as (out = hidden, in = intermediate)."""
        w = self.weight(model, layer, self.down_proj)
        return w.T if self.down_weight_in_out else w

    def checkpoint_roles(self) -> tuple[str, ...]:
        return tuple(role for role, _, _ in self.mlp_checkpoints)


def read_weight(module: nn.Module) -> torch.Tensor:
    """``module.weight``, detached; read back for the moment when accelerate offloaded it (--device-map)."""
    if module.weight.device.type != "meta":
        return module.weight.detach()
    from accelerate.utils import align_module_device

    with align_module_device(module, "cpu"):  # the offloaded weight, on the CPU while inside
        return module.weight.detach().clone()


def _first_attr(config, names: tuple[str, ...], default: int | None = None) -> int:
    for n in names:
        v = getattr(config, n, None)
        if v is not None:
            return int(v)
    if default is None:
        raise UnsupportedArchitecture(f"config {type(config).__name__} has none of {names}")
    return default


ADAPTERS: tuple[Adapter, ...] = (
    Adapter(
        name="gpt2",
        model_types=("gpt2",),
        blocks="h",
        attn_out="attn",
        attn_probs="attn",
        out_proj="attn.c_proj",
        mlp_out="mlp",
        mlp_checkpoints=(
            ("input", "mlp", "in"),
            ("pre_act", "mlp.c_fc", "out"),
            ("act", "mlp.act", "out"),
            ("down_in", "mlp.c_proj", "in"),
            ("output", "mlp.c_proj", "out"),
        ),
        down_proj="mlp.c_proj",
        down_weight_in_out=True,
    ),
    Adapter(
        name="gpt_neox",
        model_types=("gpt_neox",),
        blocks="layers",
        attn_out="attention",
        attn_probs="attention",
        out_proj="attention.dense",
        mlp_out="mlp",
        mlp_checkpoints=(
            ("input", "mlp", "in"),
            ("pre_act", "mlp.dense_h_to_4h", "out"),
            ("act", "mlp.act", "out"),
            ("down_in", "mlp.dense_4h_to_h", "in"),
            ("output", "mlp.dense_4h_to_h", "out"),
        ),
        down_proj="mlp.dense_4h_to_h",
        down_weight_in_out=False,
    ),
    Adapter(
        name="llama",
        model_types=("llama", "mistral", "qwen2", "qwen3", "smollm3"),
        blocks="layers",
        attn_out="self_attn",
        attn_probs="self_attn",
        out_proj="self_attn.o_proj",
        mlp_out="mlp",
        # gated MLP: down(act(gate(x)) * up(x))
        mlp_checkpoints=(
            ("input", "mlp", "in"),
            ("pre_act", "mlp.gate_proj", "out"),
            ("act", "mlp.act_fn", "out"),
            ("up", "mlp.up_proj", "out"),
            ("down_in", "mlp.down_proj", "in"),
            ("output", "mlp.down_proj", "out"),
        ),
        down_proj="mlp.down_proj",
        down_weight_in_out=False,
    ),
    Adapter(
        name="gemma3",
        model_types=("gemma3_text",),
        blocks="layers",
        # norms on both sides of each component: x + post_attention_layernorm(self_attn(
        # input_layernorm(x))), then x + post_feedforward_layernorm(mlp(pre_feedforward_layernorm(x))).
        # What the residual receives is the post-norm's output, so that is what zeroing a
        # component zeroes. Pruning a head (a slice of o_proj's input) leaves the post-norm to
        # rescale what the other heads write back to the same RMS.
        # Block 0's input is the output of base_model.embed_tokens, already multiplied by
        # sqrt(hidden) (25.3 at hidden 640) inside Gemma3TextScaledWordEmbedding.forward; no
        # capture point reads it (block points are block outputs).
        attn_out="post_attention_layernorm",
        attn_probs="self_attn",
        out_proj="self_attn.o_proj",  # input (B, T, 4 * 256): wider than hidden 640
        mlp_out="post_feedforward_layernorm",
        # gated GELU MLP: down(gelu_tanh(gate(x)) * up(x)), x = pre_feedforward_layernorm's output
        mlp_checkpoints=(
            ("input", "mlp", "in"),
            ("pre_act", "mlp.gate_proj", "out"),
            ("act", "mlp.act_fn", "out"),
            ("up", "mlp.up_proj", "out"),
            ("down_in", "mlp.down_proj", "in"),
            ("output", "mlp.down_proj", "out"),
            ("post_norm", "post_feedforward_layernorm", "out"),
        ),
        down_proj="mlp.down_proj",
        down_weight_in_out=False,
    ),
    Adapter(
        name="bert",
        model_types=("bert",),
        blocks="encoder.layer",
        # post-layer-norm: zeroing the dense output keeps LayerNorm(0 + residual)
        attn_out="attention.output.dense",
        attn_probs="attention.self",
        out_proj="attention.output.dense",
        mlp_out="output.dense",
        mlp_checkpoints=(
            ("input", "intermediate", "in"),
            ("pre_act", "intermediate.dense", "out"),
            ("act", "intermediate.intermediate_act_fn", "out"),
            ("down_in", "output.dense", "in"),
            ("output", "output.dense", "out"),
        ),
        down_proj="output.dense",
        down_weight_in_out=False,
        is_decoder=False,
    ),
)


def adapter_for(config) -> Adapter:
    """The adapter registered for ``config.model_type``; an error names the supported ones."""
    model_type = getattr(config, "model_type", None)
    for a in ADAPTERS:
        if model_type in a.model_types:
            return a
    supported = ", ".join(t for a in ADAPTERS for t in a.model_types)
    raise UnsupportedArchitecture(
        f"architecture {model_type!r} has no adapter; supported model types: {supported}. "
        "Add an Adapter record to massact/arch.py to support it."
    )
