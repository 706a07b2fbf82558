"""capture(): reducers agree with a direct computation, honour padding, and never leak hooks."""
from __future__ import annotations

import pytest
import torch

from builders import SUPPORTED_ARCHS, tiny_model
from massact.arch import adapter_for
from massact.capture import block_points, capture, collect, hooked, mlp_points
from massact.reducers import ENERGY_FRACS, EnergyShare, FeatureMax, Median, TokenMax, TopK, masked_abs
from massact.errors import ActivationOverflow, MassactError

K = 3


def _reducers(point=None):
    return [TopK(K), Median(), FeatureMax(), TokenMax()]


def _ids(batch: int, seq: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 100, (batch, seq), generator=torch.Generator().manual_seed(seed))


def _n_hooks(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _block_outputs(model, adapter, ids, mask) -> list[torch.Tensor]:
    """Each block's output (B, T, D), grabbed with our own hooks (removed in finally)."""
    outs: dict[int, torch.Tensor] = {}
    handles = []
    try:
        for layer, block in enumerate(adapter.block_list(model)):
            def grab(module, args, output, layer=layer):
                outs[layer] = (output[0] if isinstance(output, tuple) else output).detach().clone()
            handles.append(block.register_forward_hook(grab))
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask)
    finally:
        for h in handles:
            h.remove()
    return [outs[l] for l in range(len(outs))]


def _expected(a: torch.Tensor) -> dict[str, torch.Tensor]:
    """The reducers' statistics computed directly from a full activation (N, T, D)."""
    N, T, D = a.shape
    flat = a.abs().reshape(N, T * D)
    top_abs, idx = flat.topk(K, dim=1)
    return {
        "top_abs": top_abs,
        "top_value": a.reshape(N, T * D).gather(1, idx),
        "top_token": idx // D,
        "top_feature": idx % D,
        "median": flat.median(dim=1).values,
        "feature_max": a.abs().amax(dim=1),
        "token_max": a.abs().amax(dim=2),
    }


@pytest.fixture(scope="module", params=SUPPORTED_ARCHS)
def arch_model(request):
    return request.param, tiny_model(request.param)


def _capture_two_batches(model, adapter, points, batches):
    """Run each (ids, mask) batch inside one capture; the reducers stream over all of them."""
    mask_ref: dict[str, torch.Tensor] = {}
    with torch.no_grad(), capture(model, adapter, points, mask_ref=mask_ref, make_reducers=_reducers) as red:
        for ids, mask in batches:
            mask_ref["mask"] = mask
            model(input_ids=ids, attention_mask=mask)
    return collect(red)


def test_block_stats_match_hidden_states(arch_model) -> None:
    """Streaming over two batches (3 + 2 samples) equals the statistics of output_hidden_states."""
    arch, model = arch_model
    adapter = adapter_for(model.config)
    L = model.config.num_hidden_layers
    batches = [(_ids(3, 10, 1), torch.ones(3, 10, dtype=torch.long)),
               (_ids(2, 10, 2), torch.ones(2, 10, dtype=torch.long))]
    got = _capture_two_batches(model, adapter, block_points(adapter, L), batches)

    hidden = []
    for ids, mask in batches:
        with torch.no_grad():
            hidden.append(model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states)
    # hidden_states[0] is the embedding output; hidden_states[l + 1] is block l's output, except
    # that decoders apply the final norm to the last entry: there we use our own block hook.
    own_last = torch.cat([_block_outputs(model, adapter, ids, mask)[L - 1] for ids, mask in batches])
    for layer in range(L):
        from_hf = torch.cat([h[layer + 1] for h in hidden])
        if layer == L - 1 and arch != "bert":
            assert not torch.allclose(from_hf, own_last)  # the final norm really is there
            ref = own_last
        else:
            ref = from_hf
            if layer == L - 1:
                assert torch.allclose(from_hf, own_last)  # BERT: every hidden state is a block output
        want = _expected(ref)
        have = got[f"block.{layer}"]
        for stat, value in want.items():  # bit for bit: every statistic is an entry of |a| or a, picked
            assert have[stat].shape == value.shape, (layer, stat)
            assert torch.equal(have[stat], value), (layer, stat)


def test_mlp_points_capture_module_tensors(arch_model) -> None:
    """Every MLP checkpoint feeds its reducers: down_in is intermediate-wide, output hidden-wide."""
    arch, model = arch_model
    adapter = adapter_for(model.config)
    L = model.config.num_hidden_layers
    ids, mask = _ids(2, 6, 3), torch.ones(2, 6, dtype=torch.long)
    got = _capture_two_batches(model, adapter, mlp_points(adapter, L), [(ids, mask)])
    assert set(got) == {f"mlp.{l}.{r}" for l in range(L) for r in adapter.checkpoint_roles()}
    inter = adapter.down_weight(model, 0).shape[1]
    hidden = model.config.hidden_size
    for layer in range(L):
        assert got[f"mlp.{layer}.down_in"]["feature_max"].shape == (2, inter)
        assert got[f"mlp.{layer}.output"]["feature_max"].shape == (2, hidden)
        assert got[f"mlp.{layer}.input"]["feature_max"].shape == (2, hidden)
        # the down projection's input is what the activation (times up, for gated MLPs) gives
        if arch not in ("llama", "gemma3"):
            assert torch.allclose(got[f"mlp.{layer}.act"]["feature_max"], got[f"mlp.{layer}.down_in"]["feature_max"])
    # the output of the down projection: check against the module itself
    down = adapter.block_module(model, 0, adapter.down_proj)
    seen = {}
    handle = down.register_forward_hook(lambda m, a, o: seen.setdefault("out", o.detach()))
    try:
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask)
    finally:
        handle.remove()
    assert torch.allclose(got["mlp.0.output"]["feature_max"], seen["out"].abs().amax(dim=1))


@pytest.mark.parametrize("arch", SUPPORTED_ARCHS)
def test_padding_is_ignored(arch: str) -> None:
    """A huge value planted at a padded position never reaches any reducer."""
    model = tiny_model(arch)
    adapter = adapter_for(model.config)
    T, n_pad = 10, 3
    ids = _ids(2, T, 4)
    mask = torch.ones(2, T, dtype=torch.long)
    mask[1, T - n_pad:] = 0

    def plant(module, args, output):  # registered before capture's hooks, so they see it
        x = (output[0] if isinstance(output, tuple) else output).clone()
        x[1, T - 1, 3] = 1e4
        x[1, T - 2, 5] = -2e4
        return (x, *output[1:]) if isinstance(output, tuple) else x

    block0 = adapter.block_module(model, 0)
    handle = block0.register_forward_hook(plant)
    try:
        full = _block_outputs(model, adapter, ids, mask)[0]
        assert full[1, T - 2, 5] == -2e4  # the plant is there
        got = _capture_two_batches(model, adapter, block_points(adapter, 1), [(ids, mask)])["block.0"]
    finally:
        handle.remove()

    assert (got["top_token"][1] < T - n_pad).all()
    assert (got["top_abs"] < 1e3).all()
    kept = full[1, : T - n_pad].abs()  # (T - n_pad, D)
    assert torch.allclose(got["median"][1], kept.flatten().median())
    assert torch.allclose(got["feature_max"][1], kept.amax(dim=0))
    assert torch.allclose(got["token_max"][1, : T - n_pad], kept.amax(dim=1))
    assert (got["token_max"][1, T - n_pad:] == 0).all()
    # the unpadded sample is untouched by the mask of the other
    assert torch.allclose(got["median"][0], full[0].abs().flatten().median())
    top_abs, _ = kept.flatten().topk(K)
    assert torch.allclose(got["top_abs"][1], top_abs)


def test_topk_values_sit_at_reported_positions() -> None:
    model = tiny_model("llama")
    adapter = adapter_for(model.config)
    ids, mask = _ids(3, 7, 5), torch.ones(3, 7, dtype=torch.long)
    got = _capture_two_batches(model, adapter, block_points(adapter, 2), [(ids, mask)])
    outs = _block_outputs(model, adapter, ids, mask)
    for layer, out in enumerate(outs):
        s = got[f"block.{layer}"]
        for b in range(3):
            for j in range(K):
                v = out[b, s["top_token"][b, j], s["top_feature"][b, j]]
                assert torch.isclose(v, s["top_value"][b, j]) and torch.isclose(v.abs(), s["top_abs"][b, j])
        assert (s["top_abs"][:, :-1] >= s["top_abs"][:, 1:]).all()  # sorted, largest first


def test_median_of_a_batch_without_padding_is_each_samples_lower_median() -> None:
    a = torch.randn(3, 5, 4)  # 20 entries: the lower of the two middle values, as torch.median
    whole, ones = Median(), Median()
    whole.update(a, None, masked_abs(a, None))
    ones.update(a, torch.ones(3, 5), masked_abs(a, torch.ones(3, 5)))  # sample by sample, as with padding
    assert whole.result()["median"].tolist() == [a[b].abs().flatten().sort().values[9].item() for b in range(3)]
    assert torch.equal(ones.result()["median"], whole.result()["median"])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_topk_of_a_batch_is_the_plain_topk_bit_for_bit(dtype) -> None:
    """The top-k searched in the tokens with the largest maxima is the top-k over all entries; the signed values
    in float32, as a.float() holds them; padded and unpadded alike."""
    a = torch.randn(4, 33, 17, generator=torch.Generator().manual_seed(3)).to(dtype)
    ref = _expected(a.float())
    for mask in (None, torch.ones(4, 33)):
        absa = masked_abs(a, mask)
        top = TopK(K)
        top.update(a, mask, absa, absa.amax(dim=2))
        got = top.result()
        for stat in ("top_abs", "top_value", "top_token", "top_feature"):
            assert torch.equal(got[stat], ref[stat]), (stat, mask is None)


def test_a_capture_pass_never_waits_for_the_device() -> None:
    """On the meta device a tensor has no data, so anything that reads one on the host (.item(), .tolist(),
    a tensor's truth, .cpu()) fails: a whole forward of block outputs, MLP checkpoints, queries, keys,
    values and eager attention probabilities through every reducer that keeps statistics runs there; the
    pass's one read, whether every activation was finite, comes when it ends."""
    from massact.capture import attention_points, qkv_points
    from massact.reducers import STATISTICS, Spill, reducers_for

    model = tiny_model("llama")
    model.set_attn_implementation("eager")
    model = model.to("meta")
    adapter = adapter_for(model.config)
    L = model.config.num_hidden_layers
    points = (block_points(adapter, L) + mlp_points(adapter, L) + attention_points(adapter, L, model.config)
              + qkv_points(adapter, L, model.config))
    stats = {name for name, cls in STATISTICS.items() if cls is not Spill}  # Spill writes to disk: a copy by design
    make = lambda p: reducers_for({s for s in stats if p.shape.kind in STATISTICS[s].kinds}, p.shape)  # noqa: E731
    forwarded = False
    with pytest.raises(NotImplementedError, match="meta tensor"):
        with torch.no_grad(), capture(model, adapter, points, mask_ref={"mask": None}, make_reducers=make) as red:
            model(input_ids=_ids(2, 6, 0).to("meta"))
            forwarded = True
            assert all(r.result() for rs in red.values() for r in rs)  # each kept what it reduced, on the device
    assert forwarded and _n_hooks(model) == 0


def test_reducers_on_hand_built_tensor() -> None:
    """Reducers alone, with a tensor whose answer is known."""
    a = torch.zeros(2, 3, 4)
    a[0, 1, 2] = -9.0
    a[0, 2, 0] = 5.0
    a[1, 0, 3] = 7.0
    a[1, 2, 1] = 100.0  # padded below
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    top, med, fmax, tmax = TopK(2), Median(), FeatureMax(), TokenMax()
    for r in (top, med, fmax, tmax):
        r.update(a, mask, masked_abs(a, mask))
    t = top.result()
    assert t["top_abs"].tolist() == [[9.0, 5.0], [7.0, 0.0]]
    assert t["top_value"][0].tolist() == [-9.0, 5.0]
    assert t["top_token"][0].tolist() == [1, 2] and t["top_feature"][0].tolist() == [2, 0]
    assert (t["top_token"][1] < 2).all()
    assert med.result()["median"].tolist() == [0.0, 0.0]
    assert fmax.result()["feature_max"].tolist() == [[5.0, 0.0, 9.0, 0.0], [0.0, 0.0, 0.0, 7.0]]
    assert tmax.result()["token_max"].tolist() == [[0.0, 9.0, 5.0], [7.0, 0.0, 0.0]]


def test_energy_share_per_sample_and_fraction_honours_padding() -> None:
    """ENERGY_FRACS of 2000 entries are the top 1 and 2: shares of sum a^2 known by construction."""
    a = torch.ones(2, 500, 4)  # 2000 entries of 1 per sample
    a[0, 3, 1] = 30.0  # 900 + 1999 = 2899 in all: the top entry 900 / 2899
    a[0, 7, 2] = -20.0  # the top two: (900 + 400) / (2899 + 399)
    a[1, 499, 0] = 1e4  # padded: sample 1 keeps 1996 ones, its top 1 and 2 entries are 1 / 1996, 2 / 1996
    mask = torch.ones(2, 500)
    mask[1, 499] = 0
    r = EnergyShare()
    r.update(a, mask, masked_abs(a, mask))
    got = r.result()["energy_share"]
    assert ENERGY_FRACS == (0.0005, 0.001) and got.shape == (2, 2)
    assert got[0].tolist() == pytest.approx([900 / 3298, 1300 / 3298])
    assert got[1].tolist() == pytest.approx([1 / 1996, 2 / 1996])


def _top3(point):
    return [TopK(3)]


def test_no_hooks_remain_after_capture(arch_model) -> None:
    arch, _ = arch_model
    model = tiny_model(arch)  # fresh: transformers adds its own hooks on output_hidden_states
    adapter = adapter_for(model.config)
    L = model.config.num_hidden_layers
    assert _n_hooks(model) == 0
    points = block_points(adapter, L) + mlp_points(adapter, L)
    mask_ref = {"mask": torch.ones(1, 4, dtype=torch.long)}
    with torch.no_grad(), capture(model, adapter, points, mask_ref=mask_ref, make_reducers=_top3):
        assert _n_hooks(model) == len(points)
        model(input_ids=_ids(1, 4, 0))
    assert _n_hooks(model) == 0


def test_no_hooks_remain_after_error_in_block() -> None:
    model = tiny_model("gpt2")
    adapter = adapter_for(model.config)
    points = block_points(adapter, 2) + mlp_points(adapter, 2)
    with pytest.raises(KeyError):  # forward without a mask set: the first hook raises mid-pass
        with torch.no_grad(), capture(model, adapter, points, mask_ref={}, make_reducers=_top3):
            model(input_ids=_ids(1, 4, 0))
    assert _n_hooks(model) == 0
    with pytest.raises(RuntimeError, match="boom"):
        with capture(model, adapter, points, mask_ref={}, make_reducers=_top3):
            assert _n_hooks(model) > 0
            raise RuntimeError("boom")
    assert _n_hooks(model) == 0
    with pytest.raises(IndexError):  # a token id outside the vocabulary: the model raises
        with torch.no_grad(), capture(model, adapter, points, mask_ref={"mask": torch.ones(1, 4)}, make_reducers=_top3):
            model(input_ids=torch.full((1, 4), 10_000))
    assert _n_hooks(model) == 0


def test_hooked_rejects_bad_position_and_removes_earlier_hooks() -> None:
    model = tiny_model("gpt2")
    blocks = model.transformer.h
    noop = lambda *a: None  # noqa: E731
    with pytest.raises(ValueError, match="'in' or 'out'"):
        with hooked([(blocks[0], "out", noop), (blocks[1], "in", noop), (blocks[1], "sideways", noop)]):
            pass
    assert _n_hooks(model) == 0


def _overflowing_gpt2(dtype=torch.float16):
    model = tiny_model("gpt2").to(dtype)
    adapter = adapter_for(model.config)

    def to_inf(module, args, output):  # an attention output past float16's range
        return (torch.full_like(output[0], float("inf")), *output[1:])

    return model, adapter, to_inf


@pytest.mark.parametrize("dtype, hint", [(torch.float16, "--dtype float32"), (torch.float32, "check the model's weights")])
def test_overflow_raises_naming_point_and_dtype(dtype, hint) -> None:
    model, adapter, to_inf = _overflowing_gpt2(dtype)
    handle = model.transformer.h[1].attn.register_forward_hook(to_inf)
    try:
        mask_ref = {"mask": torch.ones(1, 4, dtype=torch.long)}
        with pytest.raises(ActivationOverflow) as info:
            with torch.no_grad(), capture(model, adapter, block_points(adapter, 2), mask_ref=mask_ref, make_reducers=_top3):
                model(input_ids=_ids(1, 4, 0))
    finally:
        handle.remove()
    assert isinstance(info.value, MassactError)
    message = str(info.value)
    assert "block.1" in message and str(dtype) in message and hint in message
    assert "block.0" not in message  # block 0 was finite: the first bad point is named
    assert _n_hooks(model) == 0


def test_finite_fp16_pass_does_not_raise() -> None:
    model = tiny_model("gpt2").half()
    adapter = adapter_for(model.config)
    mask_ref = {"mask": torch.ones(1, 4, dtype=torch.long)}
    with torch.no_grad(), capture(model, adapter, block_points(adapter, 2), mask_ref=mask_ref, make_reducers=_top3) as red:
        model(input_ids=_ids(1, 4, 0))
    top = collect(red)["block.1"]["top_abs"]
    assert top.dtype == torch.float32 and torch.isfinite(top).all()


def test_attention_without_probabilities_is_named() -> None:
    from massact.capture import attention_points
    from massact.reducers import HeadProfile
    from massact.errors import AttentionUnavailable

    model = tiny_model("llama")
    model.set_attn_implementation("sdpa")  # SDPA returns no probabilities
    adapter = adapter_for(model.config)
    with pytest.raises(AttentionUnavailable, match="attn.0: the attention module returned no probabilities"):
        with torch.no_grad(), capture(model, adapter, attention_points(adapter, 2), mask_ref={"mask": torch.ones(1, 4)},
                                      make_reducers=lambda p: [HeadProfile()]):
            model(input_ids=_ids(1, 4, 0))
    assert _n_hooks(model) == 0


@pytest.mark.parametrize("n", [1, 2, 7, 20, 73728])
def test_lower_median_is_torch_median_exactly(n) -> None:
    from massact.reducers import lower_median

    g = torch.Generator().manual_seed(n)
    x = torch.randn(3, n, generator=g).abs()
    x[1] = x[1].round(decimals=1)  # ties
    assert torch.equal(lower_median(x), x.median(dim=1).values)


@pytest.mark.parametrize("n", [1, 2, 3, 20, 1001, 73728])
def test_radix_median_is_torch_median_exactly(n) -> None:
    """The median the GPU takes (radix_lower_median), here on the CPU: ties, zeros, inf, subnormals."""
    from massact.reducers import radix_lower_median

    g = torch.Generator().manual_seed(n)
    x = torch.randn(5, n, generator=g).abs()
    x[1] = x[1].round(decimals=1)
    x[2] = 0.0
    x[3, : (n + 1) // 2] = float("inf")
    x[4] = x[4] * 1e-40  # subnormal
    assert torch.equal(radix_lower_median(x), x.median(dim=1).values)
