"""Head claims (H1, H2, A3, A4) and the zero-vs-mean intervention (A5): metrics on hand-built
tensors, and each claim seen coming out the other way on a control model."""
from __future__ import annotations

import pytest
import torch

from builders import planted_gpt2, tiny_model
from massact.checks import ablate
from massact.claims import judge
from massact.metrics import heads as hm
from test_planted import context, record


def test_ranked_and_random_heads():
    s = torch.tensor([[0.1, 0.9, 0.3], [0.8, 0.0, 0.5]])
    assert hm.ranked(s, 2) == [(0, 1), (1, 0)]
    assert hm.ranked(s, 2, top=False) == [(1, 1), (0, 0)]
    r = hm.random_heads(2, 3, 3, seed=0, exclude=[(0, 1), (1, 0)])
    assert len(set(r)) == 3 and not {(0, 1), (1, 0)} & set(r)
    assert hm.random_heads(2, 3, 3, seed=0) == hm.random_heads(2, 3, 3, seed=0)


def test_split_half_agreement():
    stable = torch.tensor([[[0.9, 0.1, 0.5]]]).repeat(4, 1, 1)  # (N, L, H)
    assert hm.split_half_agreement(stable, 1) == 1.0
    flipped = torch.cat([stable[:2], stable[2:].flip(-1)])
    assert hm.split_half_agreement(flipped, 1) == 0.0


def sink_model(*, planted_head: bool = False) -> torch.nn.Module:
    """A planted GPT-2 where every query of head 0 in layer 1 attends to key 0.

    With planted_head the same head also carries the massive activation (written at token 0,
    read by every query), so pruning that one head removes it.
    """
    model = planted_gpt2(layer=1, feature=40, token=0, magnitude=1000.0, component="attn")
    attn = model.transformer.h[1].attn
    with torch.no_grad():
        attn.c_attn.weight[:, 0] = 0.0  # query head-dim 0: a constant instead of the position code
        attn.c_attn.bias[0] = 2.0
        if not planted_head:
            attn.c_proj.weight[0, :] = 0.0  # the head attends to key 0 but writes nothing
    return model


@pytest.mark.parametrize("arch", ["gpt2", "llama", "gemma3", "bert"])
def test_head_claims_refuted_on_random_init(arch):
    ctx = context(tiny_model(arch), f"tiny-{arch}")
    for variant in ("documented_method", "correct_method"):
        assert judge(record("heads.first_token_scores", variant), ctx).verdict == "refuted"
        assert judge(record("heads.specialization", variant), ctx).verdict == "refuted"


def test_first_token_scores_find_the_sink_head():
    ctx = context(sink_model(), "sink")
    v = judge(record("heads.first_token_scores", "correct_method"), ctx)
    assert v.details["top"][0] == (1, 0)
    assert v.values["score.1.0"] > 0.99
    # query 0 always attends to itself: the documented method gives every head at least 1/T
    incl = judge(record("heads.specialization", "documented_method"), ctx).values["min_score"]
    excl = judge(record("heads.specialization", "correct_method"), ctx).values["min_score"]
    assert incl >= 1 / 16 - 1e-6 and excl < incl


def test_single_head_claim_refuted_when_one_head_makes_the_massive_activation():
    ctx = context(sink_model(planted_head=True), "sink-writer")
    v = judge(record("ablate.single_head", "correct_method"), ctx)
    assert v.verdict == "refuted", v.summary
    assert v.values["change.1.0"] < -0.9
    # the documents' slice of the attention *output* misses the head: features 0..15 are
    # position dims, while the planted head writes feature 40
    doc = judge(record("ablate.single_head", "documented_method"), ctx)
    assert abs(doc.values["change.1.0"]) < 0.01, doc.summary


def test_top_vs_bottom_heads_runs_every_arm():
    ctx = context(sink_model(planted_head=True), "sink-writer")
    v = judge(record("ablate.top_vs_bottom_heads", "correct_method"), ctx, resamples=20)
    assert (1, 0) in [tuple(h) for h in v.details["top"]]
    # pruning the top heads removes the massive activation: the claim (bottom > top) fails
    assert v.verdict == "refuted" and v.values["impact.top"] > 0.5, v.summary
    assert ctx.engine.n_passes == 6  # baseline+attention, baseline, top, bottom, 2 random draws


@pytest.mark.parametrize("random_impact, verdict", [(0.001, "holds"), (0.5, "non-specific")])
def test_top_vs_bottom_heads_control_is_random_heads_against_the_bottom(monkeypatch, random_impact, verdict):
    """The claim is that the bottom heads matter: random heads that matter as much make it non-specific."""
    ctx = context(sink_model(), "sink")
    arms = iter(["top", "bottom", "random 0", "random 1"])  # the prune passes in order
    impact = {"top": 0.0, "bottom": 0.2, "random 0": random_impact, "random 1": random_impact}
    # stand-ins for one prune pass per head set, and for the per-layer change it makes
    monkeypatch.setattr(ablate, "_prune_profile", lambda ctx_, heads, method: next(arms))
    monkeypatch.setattr(ablate, "_change", lambda ctx_, base, arm, idx: torch.full((ctx_.lm.n_layers,), impact[arm]))
    v = judge(record("ablate.top_vs_bottom_heads", "correct_method"), ctx, resamples=20)
    assert v.verdict == verdict, v.summary
    assert v.values["impact.bottom"] == pytest.approx(0.2)


def test_zero_vs_mean_refuted_where_the_massive_activation_does_not_matter():
    ctx = context(planted_gpt2(layer=1, feature=40, token=0, magnitude=1000.0, component="mlp"), "planted")
    v = judge(record("intervene.zero_vs_mean"), ctx, resamples=20)
    assert v.details["entries"][0][:2] == [0, 40]
    assert v.verdict == "refuted", v.summary  # random weights: the entry barely moves the loss
    assert v.values["zero_ppl_ratio"] < 2


def test_zero_vs_mean_invalid_on_an_encoder():
    v = judge(record("intervene.zero_vs_mean"), context(tiny_model("bert"), "tiny-bert"))
    assert v.verdict == "invalid"
