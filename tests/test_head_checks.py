"""Head claims (H1, H2, A3, A4) and the zero-vs-mean intervention (A5): metrics on hand-built
tensors, and each claim seen coming out the other way on a control model."""
from __future__ import annotations

import pytest
import torch

from builders import planted_gpt2, tiny_model
from massact.checks import ablate
from massact.claims import judge
from massact.metrics import heads as hm
from massact.verdict import DRAWS
from test_planted import context, record


def test_ranked_and_random_heads():
    s = torch.tensor([[0.1, 0.9, 0.3], [0.8, 0.0, 0.5]])
    assert hm.ranked(s, 2) == [(0, 1), (1, 0)]
    assert hm.ranked(s, 2, top=False) == [(1, 1), (0, 0)]
    r = hm.random_heads(2, 3, 3, seed=0, exclude=[(0, 1), (1, 0)])
    assert len(set(r)) == 3 and not {(0, 1), (1, 0)} & set(r)
    assert hm.random_heads(2, 3, 3, seed=0) == hm.random_heads(2, 3, 3, seed=0)


def test_too_few_heads_for_the_random_control_is_invalid_naming_both_numbers():
    """3 top and 3 bottom heads of a model with 8 leave 2 to draw 3 random heads from."""
    v = judge(record("ablate.top_vs_bottom_heads", "correct_method"), context(tiny_model("llama"), "tiny-llama"))
    assert v.verdict == "invalid"
    assert v.reason == ("the random-heads control cannot be drawn: 3 random heads asked for, but only 2 of the model's 8 "
                        "heads (2 layers x 4) lie outside the 6 excluded")


def test_layer_matched_heads():
    heads, exclude = [(1, 0), (3, 1), (3, 2)], [(1, 0), (3, 1), (3, 2), (1, 3)]
    got = hm.layer_matched_heads(heads, 4, seed=0, exclude=exclude)
    assert sorted(l for l, _ in got) == [1, 3, 3] and len(set(got)) == 3 and not set(got) & set(exclude)
    assert got == hm.layer_matched_heads(heads, 4, seed=0, exclude=exclude)
    # layer 3 keeps two heads outside the excluded ones: three cannot be matched there
    assert hm.layer_matched_heads([(3, 0)] * 3, 4, seed=0, exclude=exclude) is None


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
    # baseline+attention, baseline, top, bottom, then one pass per distinct head set of the 20 random and the
    # 20 layer-matched draws: a draw that repeats an earlier one reuses its pass (the bottom heads' layers
    # hold 1, 2 and 3 other heads here: the 20 layer-matched draws are 6 sets)
    drawn = v.details["draws"]["random"] + v.details["draws"]["layer_matched"]
    assert len(drawn) == 2 * DRAWS and v.bootstrap["draws"] == DRAWS
    assert ctx.engine.n_passes == 4 + len({tuple(h) for h in drawn}) < 4 + 2 * DRAWS
    bottom_layers = sorted(l for l, _ in v.details["bottom"])
    assert len(v.details["draws"]["layer_matched"]) == DRAWS
    for matched in v.details["draws"]["layer_matched"]:
        assert sorted(l for l, _ in matched) == bottom_layers
        assert not set(matched) & set(v.details["top"] + v.details["bottom"])


@pytest.mark.parametrize("random_impact, matched_impact, verdict", [
    (0.001, 0.001, "holds"), (0.5, 0.001, "non-specific"), (0.001, 0.3, "non-specific")])
def test_top_vs_bottom_heads_controls_are_random_and_layer_matched_heads(monkeypatch, random_impact, matched_impact,
                                                                          verdict):
    """The claim is that the bottom heads matter: other heads that matter as much, anywhere or in the
    bottom heads' own layers, make it non-specific."""
    ctx = context(sink_model(), "sink")
    # the prune passes in order: top, bottom, the random draws, the layer-matched draws
    arms = iter(["top", "bottom"] + ["random"] * DRAWS + ["layer-matched"] * DRAWS)
    impact = {"top": 0.0, "bottom": 0.2, "random": random_impact, "layer-matched": matched_impact}
    # stand-ins for one prune pass per head set, and for the per-sample top-1 it leaves (the baseline's: 1)
    monkeypatch.setattr(ablate, "_prune_profile", lambda ctx_, heads, method: next(arms))
    monkeypatch.setattr(ablate, "_top1", lambda ctx_, r: torch.full(
        (ctx.n, ctx_.lm.n_layers), 1.0 + impact[r] if isinstance(r, str) else 1.0, dtype=torch.float64))
    v = judge(record("ablate.top_vs_bottom_heads", "correct_method"), ctx, resamples=200)
    assert v.verdict == verdict, v.summary
    assert v.values["impact.bottom"] == pytest.approx(0.2)
    state = lambda x: "also holds" if x >= 0.2 else "ruled out"  # noqa: E731
    assert v.controls == {"random_heads": state(random_impact), "layer_matched_random_heads": state(matched_impact)}


def test_single_head_control_fires_where_no_head_of_the_emergence_layer_matters():
    """An MLP writes the massive activation: pruning any one head of its layer leaves top-1 alone, so
    the claim that the top heads do not matter picks nothing out."""
    ctx = context(planted_gpt2(layer=1, feature=40, token=0, magnitude=1000.0, component="mlp"), "planted-mlp")
    v = judge(record("ablate.single_head", "correct_method"), ctx, resamples=20)
    control = [tuple(h) for h in v.details["control_heads"]]  # every other head of the emergence layer
    assert len(control) >= 2 and {l for l, _ in control} == {1}
    assert not set(control) & set(map(tuple, v.details["heads"]))
    assert v.controls == {"emergence_layer_heads": "also holds"} and v.verdict == "non-specific", v.summary


def test_single_head_holds_where_the_emergence_layer_heads_matter(monkeypatch):
    ctx = context(planted_gpt2(layer=1, feature=40, token=0, magnitude=1000.0, component="mlp"), "planted-mlp")
    monkeypatch.setattr(ablate, "_prune_profile", lambda ctx_, heads, method: heads[0])
    rec = record("ablate.single_head", "correct_method")
    from massact.checks.heads import scores
    from massact.metrics import heads as hm
    top = hm.ranked(scores(ctx, rec.params.rank_by), rec.params.n_heads)
    # the top heads change nothing; every other head of the emergence layer 1 moves its top-1 by 5%
    top1 = ablate._top1
    monkeypatch.setattr(ablate, "_top1", lambda ctx_, r: top1(ctx_, r) if not isinstance(r, tuple) else torch.full(
        (ctx.n, ctx_.lm.n_layers), 1.05 if r[0] == 1 and r not in top else 1.0, dtype=torch.float64)
        * top1(ctx_, ctx_.run(ablate.PROFILE)).mean(0))
    v = judge(rec, ctx, resamples=200)
    assert v.verdict == "holds" and v.controls == {"emergence_layer_heads": "ruled out"}, v.summary
    assert v.values["control_worst_change"] == pytest.approx(0.05)


def test_zero_vs_mean_refuted_where_the_massive_activation_does_not_matter():
    ctx = context(planted_gpt2(layer=1, feature=40, token=0, magnitude=1000.0, component="mlp"), "planted")
    v = judge(record("intervene.zero_vs_mean"), ctx, resamples=20)
    assert v.details["entries"][0][:2] == [0, 40]
    assert v.verdict == "refuted", v.summary  # random weights: the entry barely moves the loss
    assert v.values["zero_ppl_ratio"] < 2


def test_zero_vs_mean_invalid_on_an_encoder():
    v = judge(record("intervene.zero_vs_mean"), context(tiny_model("bert"), "tiny-bert"))
    assert v.verdict == "invalid"


def test_first_token_scores_non_specific_when_every_head_attends_to_the_first_token():
    """The control of H1: the heads at large meet the bar too, so "a few heads" picks nothing out."""
    from builders import sink_heads_gpt2

    v = judge(record("heads.first_token_scores", "correct_method"), context(sink_heads_gpt2(), "sinks"), resamples=20)
    assert v.values["all_heads_mean"] > 0.9 and v.values["share_above"] == 1.0
    assert v.controls == {"all_heads": "also holds"} and v.verdict == "non-specific", v.summary
    assert v.values["seqlen"] == 16 and "at 16 tokens" in v.summary


def test_largest_ordinary_entries_skip_every_entry_massive_in_some_sample():
    from massact.checks.base import AtLayer
    from massact.checks.intervene import largest_ordinary

    a = torch.full((3, 4, 5), 0.1)  # (N, T, D): median 0.1
    a[:, 0, 1] = 500.0  # massive in every sample
    a[0, 2, 3] = -400.0  # massive in one sample only: its mean |a| is the largest, but it is no ordinary entry
    a[:, 1, 4] = -20.0  # the largest ordinary entry
    a[:, 3, 0] = 5.0  # the next
    assert [(t, f) for t, f, _ in largest_ordinary(a, 2, AtLayer())] == [(1, 4), (3, 0)]


@pytest.mark.parametrize("control_ratio, verdict", [(1.0, "holds"), (3.0, "non-specific")])
def test_zero_vs_mean_control_zeroes_the_largest_ordinary_entries(monkeypatch, control_ratio, verdict):
    """Stand-in losses: zeroing the massive entry costs 1 nat, setting it to its mean nothing; the
    control (as many of the largest ordinary entries zeroed) costs log(control_ratio)."""
    import dataclasses
    import math

    from massact.engine import Engine
    from massact.interventions import NONE, SetActivations
    from massact.requests import LOSS_POINT

    ctx = context(planted_gpt2(layer=1, feature=40, token=0, magnitude=1000.0, component="mlp"), "planted")
    run = Engine.run

    def with_losses(self, lm, corpus, request, *, n):
        r = run(self, lm, corpus, request, n=n)
        iv = request.intervention
        if not isinstance(iv, SetActivations):
            return r
        if any(v != 0 for *_, v in iv.entries):
            shift = 0.0
        else:
            shift = 1.0 if [(t, f) for _, t, f, _ in iv.entries] == [(0, 40)] else math.log(control_ratio)
        base = run(self, lm, corpus, request.under(NONE), n=n).loss  # (n,)
        return dataclasses.replace(r, points={**r.points, LOSS_POINT: {"loss": base + shift}}, idx=None,
                                   all_input_ids=r.input_ids)

    monkeypatch.setattr(Engine, "run", with_losses)
    v = judge(record("intervene.zero_vs_mean"), ctx, resamples=20)
    assert v.verdict == verdict, v.summary
    assert v.values["control_ppl_ratio"] == pytest.approx(control_ratio)
    assert v.controls == {"largest_ordinary_entries": "also holds" if control_ratio >= 2 else "ruled out"}
    control = v.selections["control entries"]
    assert len(control) == 1 and control != [[0, 40]]
