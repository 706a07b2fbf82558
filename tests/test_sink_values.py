"""heads.sink_values_small: the value-norm ratio on hand-built tensors, and the claim coming out each way on
planted models (the sink heads read small values, large values, or every head does) and on random ones."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from builders import SUPPORTED_ARCHS, tiny_model, value_sink_gpt2
from massact.claims import judge
from massact.metrics import heads as hm
from test_planted import context, record


def sink_record(variant: str = "general", **params):
    """The registry's record with ``params`` changed: the tiny models have 8-12 heads, not the 20 that k = 10
    and 10 random heads need."""
    rec = record("heads.sink_values_small", variant)
    return dataclasses.replace(rec, params=dataclasses.replace(rec.params, **params))


def test_norm_vs_others_divides_by_the_median_of_the_other_tokens() -> None:
    norms = torch.tensor([[1.0, 4.0, 2.0, 8.0, 3.0]])
    want = [n / torch.tensor([x for j, x in enumerate(norms[0].tolist()) if j != i]).median() for i, n in
            enumerate(norms[0].tolist())]
    assert torch.allclose(hm.norm_vs_others(norms), torch.tensor([want]))
    ties = torch.tensor([2.0, 2.0, 1.0, 2.0])
    assert hm.norm_vs_others(ties).tolist() == [1.0, 1.0, 0.5, 1.0]
    with pytest.raises(ValueError, match="2 tokens"):
        hm.norm_vs_others(torch.ones(3, 1))


def test_at_token_reads_one_token_per_sample() -> None:
    x = torch.arange(2 * 3 * 4).reshape(2, 3, 4)  # (N, H, T)
    assert hm.at_token(x, torch.tensor([1, 3])).tolist() == [[1, 5, 9], [15, 19, 23]]


def test_random_heads_says_how_many_there_are_to_draw_from() -> None:
    with pytest.raises(hm.TooFewHeads, match=r"5 random heads asked for, but only 4 of the model's 6 heads \(2 layers x 3\) "
                                             r"lie outside the 2 excluded"):
        hm.random_heads(2, 3, 5, seed=0, exclude=[(0, 0), (1, 1)])


@pytest.mark.parametrize("token", [0, 5])
def test_holds_where_the_sink_heads_read_small_values(token) -> None:
    ctx = context(value_sink_gpt2(token=token), "value-sink")
    v = judge(sink_record(k=2), ctx, resamples=50)
    assert v.verdict == "holds", v.summary
    assert sorted(map(tuple, v.details["top"])) == [(1, 0), (2, 0)]
    assert v.values["value_ratio"] < 0.1 and v.values["attention"] > 0.9
    assert v.values["layer"] == 0 and v.values["share_at_0"] == (1.0 if token == 0 else 0.0)
    # the controls: other heads at the sink, and the heads attending most to another token there, read ordinary values
    assert 0.7 < v.values["random_token"] < 1.5 and v.values["random_heads"] > 0.5
    assert len([k for k in v.values if k.startswith("random_heads.")]) == 20 == len(
        [k for k in v.values if k.startswith("random_token.")])
    assert v.controls == {"random_heads": "ruled out", "random_token": "ruled out"}
    first = judge(sink_record("first_token", k=2), ctx, resamples=0)
    assert (first.verdict == "holds") == (token == 0), first.summary


def test_refuted_where_the_sink_heads_read_large_values() -> None:
    v = judge(sink_record(k=2), context(value_sink_gpt2(small=False), "value-source"), resamples=50)
    assert v.verdict == "refuted" and v.values["value_ratio"] > 2, v.summary


def test_non_specific_where_every_head_reads_small_values_at_the_sink() -> None:
    # every head of blocks 1-4 (block 0's attention runs before its MLP writes the massive activation)
    v = judge(sink_record(k=2), context(value_sink_gpt2(every_head=True, n_layer=5), "all-heads"), resamples=50)
    assert v.controls == {"random_heads": "also holds", "random_token": "ruled out"} and v.verdict == "non-specific", \
        v.summary
    assert "the control(s) random_heads also satisfy the claim" in v.reason


def test_non_specific_where_any_token_reads_small_values(monkeypatch) -> None:
    """Stand-in ratios, small at every token: a random token in the sink's place satisfies the claim too."""
    monkeypatch.setattr(hm, "norm_vs_others", lambda norms: torch.full_like(norms, 0.1))
    v = judge(sink_record(k=2), context(value_sink_gpt2(), "small-everywhere"), resamples=20)
    assert v.verdict == "non-specific" and v.controls == {"random_heads": "also holds", "random_token": "also holds"}, \
        v.summary
    assert v.values["random_token"] == pytest.approx(0.1) and v.values["random_token.7"] == pytest.approx(0.1)


@pytest.mark.parametrize("arch", SUPPORTED_ARCHS)
def test_random_init_models(arch) -> None:
    """No massive activation: the general form cannot be evaluated; position 0 holds nothing special."""
    ctx = context(tiny_model(arch), f"tiny-{arch}")
    v = judge(sink_record(k=2), ctx)
    assert v.verdict == "invalid" and "no layer of tiny-" in v.reason
    first = judge(sink_record("first_token", k=2), ctx, resamples=50)
    assert first.verdict == "refuted" and 0.5 < first.values["value_ratio"] < 2, first.summary


def test_too_many_heads_asked_for_is_invalid_naming_both_numbers() -> None:
    v = judge(sink_record("first_token"), context(tiny_model("llama"), "tiny-llama"))
    assert v.verdict == "invalid"
    assert v.reason == "k = 10 heads and 10 random heads outside them need 20 heads; tiny-llama has 8 (2 layers x 4)"
