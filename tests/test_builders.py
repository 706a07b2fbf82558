"""Checks that tests/builders.py plants exactly the mechanism it claims."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parent))  # tests/ is not a package
from builders import SUPPORTED_ARCHS, planted_gpt2, tiny_model  # noqa: E402

N_LAYER, N_EMBD, N_POS, SEQ = 4, 64, 32, 16

plant_params = dict(
    layer=st.integers(0, N_LAYER - 1),
    feature=st.integers(N_POS, N_EMBD - 1),
    token=st.integers(0, SEQ - 1),
    magnitude=st.floats(200.0, 5000.0),
    component=st.sampled_from(["mlp", "attn"]),
    ids_seed=st.integers(0, 2**16),
)
fast = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _zero_output(module: torch.nn.Module, args: tuple, output: object) -> object:
    """Forward hook: replace the module's (first) output with zeros."""
    if isinstance(output, tuple):
        return (torch.zeros_like(output[0]), *output[1:])
    return torch.zeros_like(output)


def block_outputs(model, ids: torch.Tensor, *, zero: str | None = None) -> list[torch.Tensor]:
    """Residual stream after each block, (batch, seq, n_embd) each; ``zero`` in
    {None, "attn", "mlp"} ablates that sublayer in every block."""
    outs: list[torch.Tensor] = []

    def grab(module: torch.nn.Module, args: tuple, output: object) -> None:
        outs.append((output[0] if isinstance(output, tuple) else output).detach())

    handles = []
    try:
        for blk in model.transformer.h:
            handles.append(blk.register_forward_hook(grab))
            if zero is not None:
                handles.append(getattr(blk, zero).register_forward_hook(_zero_output))
        with torch.no_grad():
            model(input_ids=ids)
    finally:
        for h in handles:
            h.remove()
    return outs


def _ids(seed: int) -> torch.Tensor:
    """Random token ids, (2, SEQ)."""
    return torch.randint(0, 100, (2, SEQ), generator=torch.Generator().manual_seed(seed))


def _top1(x: torch.Tensor) -> float:
    return float(x.abs().max())


@fast
@given(**plant_params)
def test_planted_location_and_size(layer, feature, token, magnitude, component, ids_seed) -> None:
    model = planted_gpt2(layer=layer, feature=feature, token=token, magnitude=magnitude,
                         component=component, n_layer=N_LAYER, n_embd=N_EMBD, n_positions=N_POS)
    outs = block_outputs(model, _ids(ids_seed))
    for i, out in enumerate(outs):
        if i < layer:
            assert _top1(out) < 100, (i, _top1(out))
            continue
        for b in range(out.shape[0]):
            a = out[b].abs()  # (seq, n_embd)
            pos, dim = divmod(int(a.argmax()), a.shape[-1])
            assert (pos, dim) == (token, feature), (i, b, pos, dim)
            value = float(out[b, token, feature])
            assert abs(value - magnitude) <= 0.1 * magnitude, (i, b, value)
            assert value >= 1000 * float(a.median()), (i, b, float(a.median()))


@fast
@given(**plant_params)
def test_planted_component_ablation(layer, feature, token, magnitude, component, ids_seed) -> None:
    model = planted_gpt2(layer=layer, feature=feature, token=token, magnitude=magnitude,
                         component=component, n_layer=N_LAYER, n_embd=N_EMBD, n_positions=N_POS)
    ids = _ids(ids_seed)
    base = block_outputs(model, ids)
    other = "attn" if component == "mlp" else "mlp"
    kept = block_outputs(model, ids, zero=other)  # ablate the innocent sublayer
    killed = block_outputs(model, ids, zero=component)  # ablate the planted sublayer
    for i in range(layer, N_LAYER):
        t0, t_kept, t_killed = _top1(base[i]), _top1(kept[i]), _top1(killed[i])
        assert abs(t_kept - t0) < 0.02 * t0, (i, t0, t_kept)
        assert t_killed < 0.4 * t0, (i, t0, t_killed)


@fast
@given(layer=st.integers(0, N_LAYER - 1), feature=st.integers(N_POS, N_EMBD - 1),
       token=st.integers(0, SEQ - 1), magnitude=st.floats(200.0, 5000.0))
def test_negative_unit_killed_by_gelu(layer, feature, token, magnitude) -> None:
    model = planted_gpt2(layer=layer, feature=feature, token=token, magnitude=magnitude,
                         negative_unit=True, n_layer=N_LAYER, n_embd=N_EMBD, n_positions=N_POS)
    mlp = model.transformer.h[layer].mlp
    got: dict[str, torch.Tensor] = {}

    def grab(name: str) -> Callable:
        def hook(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> None:
            got[name] = output.detach()
        return hook

    handles = [mlp.c_fc.register_forward_hook(grab("pre")), mlp.act.register_forward_hook(grab("post"))]
    try:
        with torch.no_grad():
            model(input_ids=_ids(0))
    finally:
        for h in handles:
            h.remove()
    assert _top1(got["pre"]) > 1.5 * _top1(got["post"])
    # the planted massive activation is still there
    outs = block_outputs(model, _ids(0))
    assert abs(float(outs[layer][0, token, feature]) - magnitude) <= 0.1 * magnitude


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(layer=4),  # layer out of range
        dict(layer=-1),
        dict(token=32),  # token out of range
        dict(feature=31),  # feature inside the position dims
        dict(feature=64),
        dict(component="ln"),
        dict(component="attn", negative_unit=True),
        dict(magnitude=-5.0),
    ],
)
def test_planted_rejects_bad_arguments(kwargs: dict) -> None:
    args = dict(layer=0, feature=40, token=3, magnitude=1000.0) | kwargs
    with pytest.raises(ValueError):
        planted_gpt2(**args)


def test_planted_is_deterministic() -> None:
    a = planted_gpt2(layer=1, feature=40, token=3, magnitude=1000.0, seed=7)
    b = planted_gpt2(layer=1, feature=40, token=3, magnitude=1000.0, seed=7)
    for (k, v), (_, w) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(v, w), k


@pytest.mark.parametrize("arch", SUPPORTED_ARCHS)
def test_tiny_model_runs_and_is_deterministic(arch: str) -> None:
    ids = torch.randint(0, 100, (2, 8), generator=torch.Generator().manual_seed(0))
    m1, m2, m3 = tiny_model(arch, seed=3), tiny_model(arch, seed=3), tiny_model(arch, seed=4)
    assert not m1.training
    assert m1.config._attn_implementation == "eager"
    assert all(p.dtype == torch.float32 for p in m1.parameters())
    with torch.no_grad():
        y1, y2, y3 = (m(input_ids=ids)[0] for m in (m1, m2, m3))
    assert y1.shape[:2] == (2, 8) and torch.isfinite(y1).all()
    assert torch.equal(y1, y2)
    assert not torch.equal(y1, y3)


def test_tiny_model_rejects_unknown_arch() -> None:
    with pytest.raises(ValueError, match="gpt2.*gpt_neox.*llama.*bert"):
        tiny_model("t5")
