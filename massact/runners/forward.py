"""The teacher-forced pass: batches of whole samples through the model, hooks reducing as they go."""
from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager

import torch
from torch import nn

from massact.arch import Adapter
from massact.capture import all_points, capture, collect, hooked
from massact.reducers import reducers_for
from massact.interventions import Intervention
from massact.models import LoadedModel
from massact.requests import LOSS_POINT


def run_forward(lm: LoadedModel, ids: torch.Tensor, wants: dict[str, frozenset[str]], intervention: Intervention, *,
                eager: bool, batch_size: int, progress: Callable[[int], None],
                resume: tuple[int, torch.Tensor] | None = None) -> dict[str, dict[str, torch.Tensor]]:
    """Per-sample statistics ``wants`` (point -> statistic names) of ``ids`` (N, T) under ``intervention``.

    The output head runs only when the loss is asked for: nothing else reads the logits.
    ``resume=(l, states)``: run blocks l.. only, block l reading ``states`` (N, T, D), the output of
    block l - 1 for these samples; no point before block l may be asked for.
    """
    points = all_points(lm.adapter, lm.n_layers, lm.config)
    hooked = [points[name] for name in wants if name != LOSS_POINT]
    if resume is not None and (early := [p.name for p in hooked if p.layer < resume[0]]):
        raise ValueError(f"a pass resuming at block {resume[0]} does not compute {early}")
    loss = "loss" in wants.get(LOSS_POINT, ()) and lm.adapter.is_decoder
    model = lm.model if loss else lm.model.base_model
    # samples are whole chunks: no padding. The ids go to the device once: a copy from the host per batch
    # would wait for the batch before it; nothing else in the loop waits for the device
    ids = ids.to(lm.device)
    mask = torch.ones_like(ids)
    mask_ref: dict[str, torch.Tensor | None] = {"mask": None}
    state_ref: dict[str, torch.Tensor] = {}
    losses = []
    # the resumed block's input first, then the intervention's hooks: hooks on one module run in
    # registration order, and a point on an intervened module must record what the intervention left there
    with torch.no_grad(), resumed(lm.model, lm.adapter, resume[0] if resume else None, state_ref), \
            intervention.applied(lm.model, lm.adapter), eager_attention(lm.model, eager):
        with capture(lm.model, lm.adapter, hooked, mask_ref=mask_ref,
                     make_reducers=lambda p: reducers_for(wants[p.name], p.shape)) as reducers:
            for i in range(0, len(ids), batch_size):
                b_ids, b_mask = ids[i:i + batch_size], mask[i:i + batch_size]
                if resume is not None:
                    state_ref["states"] = resume[1][i:i + batch_size].to(lm.device)
                out = model(input_ids=b_ids, attention_mask=b_mask)
                if loss:
                    losses.append(next_token_nll(out.logits, b_ids, b_mask))
                progress(min(i + batch_size, len(ids)))  # samples done
    got = {k: {s: v.cpu() for s, v in d.items()} for k, d in collect(reducers).items()}
    if loss:
        got[LOSS_POINT] = {"loss": torch.cat(losses).cpu()}
    return got


class _Skipped(nn.Module):
    """Stands in for a block that a resumed pass does not run: hands its input on unread (the block
    the pass resumes at replaces it with the kept residual stream)."""

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


@contextmanager
def resumed(model: nn.Module, adapter: Adapter, layer: int | None, state_ref: dict[str, torch.Tensor]):
    """Blocks before ``layer`` skipped and block ``layer`` fed ``state_ref["states"]`` for the block;
    the blocks put back after, whatever happens. None or 0: the model as it is.

    Masks and position embeddings are made before the first block from the input ids, as in a full pass.
    """
    if not layer:
        yield
        return
    blocks = adapter.block_list(model)
    kept = [blocks[l] for l in range(layer)]

    def feed(module, args):
        if not args:
            raise ValueError(f"{adapter.name}: block {layer} takes its hidden states by keyword; a pass cannot "
                             "resume there")
        states = state_ref["states"]
        if states.shape != args[0].shape:
            raise ValueError(f"resuming at block {layer}: kept states {tuple(states.shape)} for input "
                             f"{tuple(args[0].shape)}")
        return (states, *args[1:])

    try:
        for l in range(layer):
            blocks[l] = _Skipped()
        with hooked([(blocks[layer], "in", feed)]):
            yield
    finally:
        for l, block in enumerate(kept):
            blocks[l] = block


@contextmanager
def eager_attention(model, on: bool):
    """Eager attention for the block (SDPA gives no probabilities); the previous one after."""
    if not on:
        yield
        return
    before = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(before)


def token_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood of each target under the logits before it; logits (B, t, V), targets (B, t)."""
    return -torch.log_softmax(logits.float(), dim=-1).gather(2, targets[..., None]).squeeze(2)


def next_token_nll(logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean next-token negative log-likelihood per sample; logits (B, T, V), ids/mask (B, T)."""
    nll = token_nll(logits[:, :-1], ids[:, 1:])  # (B, T-1)
    m = mask[:, 1:].float()
    return ((nll * m).sum(1) / m.sum(1).clamp(min=1)).double()
