"""``python -m massact points MODEL``: every capture point of a model with its shape, and every statistic.

The shapes are measured, not assumed: one forward pass over a few random tokens, eager attention on,
with every point hooked.
"""
from __future__ import annotations

import torch

from massact.capture import all_points, capture
from massact.models import LoadedModel
from massact.reducers import ACTIVATION, HEADS, LAYOUT, PROBS, STATISTICS, Reducer, Shape
from massact.requests import KV_POINT, LOSS_POINT
from massact.runners.forward import eager_attention

PROBE_TOKENS = 7
ROLES = {  # MLP checkpoints (Adapter.mlp_checkpoints)
    "input": "the MLP's input", "pre_act": "before the activation function (the gate, in a gated MLP)",
    "act": "after the activation function", "up": "the up projection (gated MLPs)",
    "down_in": "the down projection's input", "output": "the down projection's output",
    "post_norm": "the norm between the MLP and the residual (Gemma 3)"}
KINDS = {
    ACTIVATION: "", PROBS: "attention probabilities; a pass asking for them runs eager attention",
    HEADS: "as the attention function gets them"}


ATTENTION = {"": KINDS[PROBS], "q": f"queries, {KINDS[HEADS]}",
             "k": f"keys, after the rotary embedding where the model applies one; {KINDS[HEADS]}",
             "v": f"values, {KINDS[HEADS]}"}


class _Probe(Reducer):
    """Keeps the shape of what it is handed."""

    kinds = frozenset(LAYOUT)

    def __init__(self, shape: Shape = Shape()):
        super().__init__(shape)
        self.seen: tuple[int, ...] = ()

    def update(self, a, mask, absa, token_max=None):
        self.seen = tuple(a.shape)

    def result(self):
        return {}


def measured_shapes(lm: LoadedModel) -> dict[str, tuple[int, ...]]:
    """Point name -> the shape it hands its reducers, from one sample of PROBE_TOKENS random tokens."""
    points = all_points(lm.adapter, lm.n_layers, lm.config)
    ids = torch.randint(0, int(lm.config.vocab_size), (1, PROBE_TOKENS), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    with torch.no_grad(), eager_attention(lm.model, True), capture(
            lm.model, lm.adapter, list(points.values()), mask_ref={"mask": mask.to(lm.device)},
            make_reducers=lambda p: [_Probe(p.shape)]) as reducers:
        lm.model.base_model(input_ids=ids.to(lm.device), attention_mask=mask.to(lm.device))
    return {name: rs[0].seen for name, rs in reducers.items()}


def _shape_text(kind: str, dims: tuple[int, ...]) -> str:
    if kind == ACTIVATION:
        return f"(B, T, {dims[2]})"
    if kind == PROBS:
        return f"(B, {dims[1]}, T, T)"
    return f"(B, {dims[1]}, T, {dims[3]})"


def listing(lm: LoadedModel) -> list[str]:
    """The lines ``python -m massact points`` prints."""
    a, config = lm.adapter, lm.config
    heads, kv = a.n_heads(config), a.n_kv_heads(config)
    shapes = measured_shapes(lm)
    points = all_points(a, lm.n_layers, config)
    groups: dict[str, tuple[str, str, set[str]]] = {}  # pattern -> (kind, what, shapes over the layers)
    for name, p in points.items():
        kind, _, rest = name.partition(".")
        role = rest.partition(".")[2]
        pattern = f"{kind}.{{l}}" + (f".{role}" if role else "")
        what = ("block l's output, before any final norm" if kind == "block" else ROLES.get(role, role)
                if kind == "mlp" else ATTENTION[role])
        groups.setdefault(pattern, (p.shape.kind, what, set()))[2].add(_shape_text(p.shape.kind, shapes[name]))
    grouped = "" if heads == kv else f", query head h reads KV head h // {heads // kv} (Adapter.kv_heads_of)"
    lines = [f"{lm.name} ({a.name}): {lm.n_layers} layers, hidden {lm.hidden_size}, {heads} query heads, {kv} KV "
             f"heads{grouped}, head_dim {a.head_dim(config)}",
             "",
             f"capture points, l = 0..{lm.n_layers - 1}; each hands its reducers a tensor of B samples x T tokens:"]
    width = max(len(k) for k in groups) + 2
    for pattern, (kind, what, dims) in groups.items():
        lines.append(f"  {pattern:<{width}}{' or '.join(sorted(dims)):<20}{what}")
    lines += [f"  {LOSS_POINT:<{width}}{'':<20}the runners' own: loss (next-token NLL per sample; decoders)",
              f"  {KV_POINT:<{width}}{'':<20}the decode runners' own: bytes, seconds, tokens_per_second",
              "",
              "statistics, asked for as want(POINT_PATTERN, STATISTIC); results are per sample, samples first:"]
    width = max(len(s) for s in STATISTICS) + 2
    where = {ACTIVATION: "block, mlp", PROBS: "attn.{l}", HEADS: "attn.{l}.q/k/v"}
    for name, cls in STATISTICS.items():
        kinds = ", ".join(where[k] for k in (ACTIVATION, PROBS, HEADS) if k in cls.kinds)
        lines.append(f"  {name:<{width}}{kinds:<28}{cls.gives[name]}")
    return lines
