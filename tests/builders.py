"""Tiny randomly initialised models for the engine's tests (no downloads).

``tiny_model`` builds a small model of a given architecture from a config.
``planted_gpt2`` builds a GPT-2 whose weights are random except for one
hand-wired component that writes a known massive activation into the
residual stream, so detectors can be checked against ground truth.
"""

from __future__ import annotations

import math

import torch
from transformers import (
    BertConfig,
    BertModel,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
)

SUPPORTED_ARCHS = ("gpt2", "gpt_neox", "llama", "gemma3", "bert")
VOCAB = 100
POS_SCALE = 10.0  # size of the one-hot position code written by wpe
_ON_PREACT = 10.0  # planted GELU unit's pre-activation at the planted token
_OFF_PREACT = -6.0  # ... and at every other token (GELU(-6) ~ -6e-9)
_ATTN_MARGIN = 20.0  # logit gap that makes the planted head attend to itself


def _finish(model: PreTrainedModel) -> PreTrainedModel:
    """Float32, eval mode, no grads needed by callers."""
    return model.to(torch.float32).eval()


def tiny_model(arch: str, *, seed: int = 0) -> PreTrainedModel:
    """A 2-layer, 32-wide, randomly initialised model of ``arch`` (eager attention)."""
    common = dict(vocab_size=VOCAB, attn_implementation="eager")
    if arch == "gpt2":
        config = GPT2Config(
            n_layer=2, n_embd=32, n_head=4, n_positions=64, bos_token_id=0, eos_token_id=0, **common,
        )
        cls = GPT2LMHeadModel
    elif arch == "gpt_neox":
        config = GPTNeoXConfig(
            num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=64, use_parallel_residual=True, **common,
        )
        cls = GPTNeoXForCausalLM
    elif arch == "llama":
        config = LlamaConfig(
            num_hidden_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=64, max_position_embeddings=64, **common,
        )
        cls = LlamaForCausalLM
    elif arch == "gemma3":
        # as Gemma 3 270M: one KV head, head_dim from the config (4 * 16 = 64, not hidden 32),
        # a sliding layer (window 8, shorter than the tests' sequences) before a global one
        config = Gemma3TextConfig(
            num_hidden_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=1, head_dim=16,
            intermediate_size=64, max_position_embeddings=64, sliding_window=8,
            layer_types=["sliding_attention", "full_attention"], pad_token_id=0, bos_token_id=0, eos_token_id=0,
            **common,
        )
        cls = Gemma3ForCausalLM
    elif arch == "bert":
        config = BertConfig(
            num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=64, **common,
        )
        cls = BertModel
    else:
        raise ValueError(f"unknown arch {arch!r}; supported: {', '.join(SUPPORTED_ARCHS)}")
    torch.manual_seed(seed)  # weights are drawn at construction: seed right before
    return _finish(cls(config))


def _check_range(name: str, value: int, lo: int, hi: int) -> None:
    """Raise ValueError unless lo <= value < hi."""
    if not (isinstance(value, int) and lo <= value < hi):
        raise ValueError(f"{name}={value!r} must be an int in [{lo}, {hi})")


@torch.no_grad()
def planted_gpt2(
    *,
    layer: int,
    feature: int,
    token: int,
    magnitude: float,
    component: str = "mlp",
    n_layer: int = 4,
    n_embd: int = 64,
    n_positions: int = 32,
    seed: int = 0,
    negative_unit: bool = False,
) -> GPT2LMHeadModel:
    """GPT-2 where block ``layer``'s ``component`` writes ~``magnitude`` into
    residual (position ``token``, dim ``feature``); everything else is random small.

    Residual dims 0..n_positions-1 hold a one-hot position code (wpe[p] = 10 e_p)
    that no component writes to, so after LayerNorm dim p of position p reads
    sqrt(n-1) and every other position reads -1/sqrt(n-1) (n = n_embd). The
    planted MLP unit / attention head keys on that code. ``negative_unit`` adds a
    second MLP unit with pre-activation -2x the planted one at ``token`` and zero
    output weights (GELU kills the largest |pre-activation|).
    """
    if component not in ("mlp", "attn"):
        raise ValueError(f"component={component!r} must be 'mlp' or 'attn'")
    if negative_unit and component != "mlp":
        raise ValueError("negative_unit=True needs component='mlp'")
    if n_embd % 4:
        raise ValueError(f"n_embd={n_embd} must be divisible by the 4 heads")
    _check_range("n_layer", n_layer, 1, 10**6)
    _check_range("n_positions", n_positions, 1, n_embd)  # need room for a feature dim
    _check_range("layer", layer, 0, n_layer)
    _check_range("token", token, 0, n_positions)
    _check_range("feature", feature, n_positions, n_embd)  # outside the position dims
    if not (math.isfinite(magnitude) and magnitude > 0):
        raise ValueError(f"magnitude={magnitude!r} must be a positive finite number")

    config = GPT2Config(
        vocab_size=VOCAB, n_layer=n_layer, n_embd=n_embd, n_head=4, n_positions=n_positions,
        bos_token_id=0, eos_token_id=0, attn_implementation="eager",  # default ids exceed vocab
    )
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config)
    tr = model.transformer
    n, npos = n_embd, n_positions

    # Position code: exact one-hot in dims [0, npos); token embeddings stay out of them.
    tr.wpe.weight.zero_()
    tr.wpe.weight[:, :npos] = POS_SCALE * torch.eye(npos)
    tr.wte.weight[:, :npos] = 0.0
    # Conv1D weights are (in, out): zero every writer's output columns on the position dims.
    for blk in tr.h:
        for proj in (blk.attn.c_proj, blk.mlp.c_proj):
            proj.weight[:, :npos] = 0.0
            proj.bias[:npos] = 0.0

    blk = tr.h[layer]
    for ln in (blk.ln_1, blk.ln_2):  # planted reads assume a plain LayerNorm
        ln.weight.fill_(1.0)
        ln.bias.zero_()
    on = math.sqrt(n - 1)  # normalised code at its own position
    off = -1.0 / math.sqrt(n - 1)  # ... at every other position

    if component == "mlp":
        # Unit 0: pre = w*x[token] + b is _ON_PREACT at `token`, _OFF_PREACT elsewhere.
        w = (_ON_PREACT - _OFF_PREACT) / (on - off)
        b = _ON_PREACT - w * on
        fc, proj = blk.mlp.c_fc, blk.mlp.c_proj  # fc.weight: (n, 4n), proj.weight: (4n, n)
        fc.weight[:, 0] = 0.0
        fc.weight[token, 0] = w
        fc.bias[0] = b
        act_on = float(blk.mlp.act(torch.tensor(_ON_PREACT)))
        proj.weight[0, :] = 0.0
        proj.weight[0, feature] = magnitude / act_on
        if negative_unit:
            # Unit 1: pre = -2*_ON_PREACT at `token`, small elsewhere; never written out.
            fc.weight[:, 1] = 0.0
            fc.weight[token, 1] = -2.0 * _ON_PREACT / on
            fc.bias[1] = 0.0
            proj.weight[1, :] = 0.0
    else:
        # Head 0, head dim 0. c_attn.weight: (n, 3n) = [q | k | v] columns.
        attn = blk.attn
        hd = attn.head_dim
        qk = attn.c_attn.weight
        for base in (0, n):  # clear head 0's query and key so its logits are exactly ours
            qk[:, base : base + hd] = 0.0
            attn.c_attn.bias[base : base + hd] = 0.0
        # logit(q, k) = c^2 * x_q[token] * x_k[token] / sqrt(hd): `token` attends to itself
        # (gap c^2 * n / sqrt(hd)); other queries avoid `token` (gap ~ c^2 / sqrt(hd)).
        c = math.sqrt(_ATTN_MARGIN * math.sqrt(hd))
        qk[token, 0] = c
        qk[token, n] = c
        # Value reads (x[token] - off): ~0 at other positions, on - off at `token`.
        attn.c_attn.weight[:, 2 * n] = 0.0
        attn.c_attn.weight[token, 2 * n] = 1.0
        attn.c_attn.bias[2 * n] = -off
        attn.c_proj.weight[0, :] = 0.0
        attn.c_proj.weight[0, feature] = magnitude / (on - off)
    return _finish(model)


@torch.no_grad()
def sink_heads_gpt2(*, n_layer: int = 2, n_embd: int = 64, n_positions: int = 32, seed: int = 0) -> GPT2LMHeadModel:
    """GPT-2 where every head of every layer puts nearly all its attention on the first token: the
    query is a constant and the key reads the position-0 code (the one-hot code of planted_gpt2)."""
    config = GPT2Config(vocab_size=VOCAB, n_layer=n_layer, n_embd=n_embd, n_head=4, n_positions=n_positions,
                        bos_token_id=0, eos_token_id=0, attn_implementation="eager")
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config)
    tr = model.transformer
    tr.wpe.weight.zero_()
    tr.wpe.weight[:, :n_positions] = POS_SCALE * torch.eye(n_positions)
    tr.wte.weight[:, :n_positions] = 0.0
    on, off = math.sqrt(n_embd - 1), -1.0 / math.sqrt(n_embd - 1)
    for blk in tr.h:
        for proj in (blk.attn.c_proj, blk.mlp.c_proj):  # nothing writes over the position code
            proj.weight[:, :n_positions] = 0.0
            proj.bias[:n_positions] = 0.0
        blk.ln_1.weight.fill_(1.0)
        blk.ln_1.bias.zero_()
        attn = blk.attn
        hd = attn.head_dim
        c = math.sqrt(_ATTN_MARGIN * math.sqrt(hd) / (on - off))  # logit gap of key 0 over the others
        w, b = attn.c_attn.weight, attn.c_attn.bias  # (n, 3n): [q | k | v]
        w[:, :2 * n_embd] = 0.0
        b[:2 * n_embd] = 0.0
        for h in range(config.n_head):
            b[h * hd] = c  # query: a constant
            w[0, n_embd + h * hd] = c  # key: the position-0 code
    return _finish(model)


@torch.no_grad()
def copy_head_gpt2(*, offset: int = 15, n_positions: int = 32, seed: int = 0) -> GPT2LMHeadModel:
    """One block of 4 heads: head 0 copies the token ``offset`` positions back (its prediction of the
    next token, on sequences that repeat with that period, needs the far key; before it, each
    query reads itself); heads 1-3 attend to
    the first token and write nothing. The MLP writes nothing.

    Token embeddings are +-1 codes in the dims past the one-hot position code, tied to the output,
    so the copied code makes its token the clear prediction.
    """
    n_embd, heads = 4 * n_positions, 4
    config = GPT2Config(vocab_size=VOCAB, n_layer=1, n_embd=n_embd, n_head=heads, n_positions=n_positions,
                        bos_token_id=0, eos_token_id=0, attn_implementation="eager")
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config)
    tr, blk = model.transformer, model.transformer.h[0]
    hd = n_embd // heads  # = n_positions: a head dim per position
    tr.wpe.weight.zero_()
    tr.wpe.weight[:, :n_positions] = POS_SCALE * torch.eye(n_positions)
    tr.wte.weight.zero_()
    tr.wte.weight[:, n_positions:] = (torch.randint(0, 2, (VOCAB, n_embd - n_positions)).float() * 2 - 1) * 0.1
    for ln in (blk.ln_1, blk.ln_2, tr.ln_f):
        ln.weight.fill_(1.0)
        ln.bias.zero_()
    blk.mlp.c_proj.weight.zero_()
    blk.mlp.c_proj.bias.zero_()
    w, b = blk.attn.c_attn.weight, blk.attn.c_attn.bias  # (n, 3n): [q | k | v]
    w.zero_()
    b.zero_()
    on, off = math.sqrt(n_embd - 1), -1.0 / math.sqrt(n_embd - 1)
    c = math.sqrt(_ATTN_MARGIN * math.sqrt(hd) / (on - off))
    for t in range(n_positions):  # head 0: the query at t reads head dim t - offset (itself while t < offset)
        w[t, t - offset if t >= offset else t] = c
    for s in range(n_positions):
        w[s, n_embd + s] = c
    for h in range(1, heads):  # heads 1-3: a constant query, the key reads the position-0 code
        b[h * hd] = c
        w[0, n_embd + h * hd] = c
    proj = blk.attn.c_proj
    proj.weight.zero_()
    proj.bias.zero_()
    for j in range(hd):  # head 0's value: the token code (dims n_positions.. of the residual), written back
        w[n_positions + j, 2 * n_embd + j] = 1.0
        proj.weight[j, n_positions + j] = 30.0
    return _finish(model)


def char_tokenizer():
    """A character-level tokenizer whose ids fit the tiny models' vocabulary of 100."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, **{chr(c): c - 31 for c in range(32, 127)}}  # ids 0..95
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", bos_token="[UNK]")


def save_tiny(model: PreTrainedModel, directory) -> None:
    """Save ``model`` with a character tokenizer, so ``--model DIRECTORY`` loads it."""
    model.save_pretrained(directory)
    char_tokenizer().save_pretrained(directory)


@torch.no_grad()
def value_sink_gpt2(*, token: int = 0, small: bool = True, every_head: bool = False, n_layer: int = 3,
                    magnitude: float = 1000.0, seed: int = 0) -> GPT2LMHeadModel:
    """planted_gpt2's MLP writes a massive activation at (``token``, feature 40) in block 0; in each later
    block head 0 (every head with ``every_head``) attends to that token and reads a value vector there that
    is ~0 (``small``) or ~3x the other tokens' (not ``small``).

    After ln_1 the massive token's dim 40 reads ~sqrt(n - 1) and every other token's ~0: the planted key
    reads dim 40 against a constant query, and the planted value is ``b + w x[40]`` with a bias b = 1 in
    every head dim and w = -b / sqrt(n - 1) (or +2b / sqrt(n - 1)), the head's other value weights zeroed.
    """
    model = planted_gpt2(layer=0, feature=40, token=token, magnitude=magnitude, component="mlp", n_layer=n_layer,
                         seed=seed)
    n = model.config.n_embd
    on = math.sqrt(n - 1)
    for blk in model.transformer.h[1:]:
        blk.ln_1.weight.fill_(1.0)
        blk.ln_1.bias.zero_()
        attn = blk.attn
        hd = attn.head_dim
        c = math.sqrt(_ATTN_MARGIN * math.sqrt(hd) / on)  # logit gap of the massive token over the others
        w, b = attn.c_attn.weight, attn.c_attn.bias  # (n, 3n): [q | k | v]
        for h in range(attn.num_heads if every_head else 1):
            q, k, v = h * hd, n + h * hd, 2 * n + h * hd
            w[:, q:q + hd], b[q:q + hd] = 0.0, 0.0
            w[:, k:k + hd], b[k:k + hd] = 0.0, 0.0
            w[:, v:v + hd], b[v:v + hd] = 0.0, 1.0
            b[q] = c  # query: a constant
            w[40, k] = c  # key: the massive dim
            w[40, v:v + hd] = (-1.0 if small else 2.0) / on
    return _finish(model)
