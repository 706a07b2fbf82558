"""Planted models: the harness must find exactly what was planted, and the component claims
must come out one way on an MLP planting and the other way on an attention planting.

The claims judged here are the registry's own records (claims/*.toml), so these tests are
the controls that show each claim test can fail.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from builders import SUPPORTED_ARCHS, planted_gpt2, tiny_model
from massact.arch import adapter_for
from massact.checks import Context
from massact.claims import Claim, judge, load_records
from massact.corpus import CorpusSettings, load_corpus
from massact.engine import Engine
from massact.models import LoadedModel
from massact.requests import want

CLAIMS = Path(__file__).resolve().parent.parent / "claims"
N_LAYER, SEQLEN = 4, 16
SAMPLES = 12  # at least massact.verdict.MIN_UNITS: fewer independent samples decide nothing


def record(claim_id: str, variant: str = "general") -> Claim:
    family = claim_id.split(".")[0]
    for rec in load_records(CLAIMS / f"{family}.toml"):
        if isinstance(rec, Claim) and rec.id == claim_id and rec.variant == variant:
            return rec
    raise LookupError(f"{claim_id}/{variant} not in {family}.toml")


def context(model: torch.nn.Module, name: str, *, seed: int = 0) -> Context:
    """A Context over random token ids (planted models need no tokenizer)."""
    return loaded_context(LoadedModel(spec=name, name=name, model=model, tokenizer=None,
                                      adapter=adapter_for(model.config), dtype="float32", device="cpu"), seed=seed)


def loaded_context(lm: LoadedModel, *, seed: int = 0) -> Context:
    """A Context for a loaded model over random token ids."""
    model = lm.model
    corpus = load_corpus(CorpusSettings(seqlen=SEQLEN, seed=seed))
    engine = Engine(batch_size=4)
    g = torch.Generator().manual_seed(seed)
    # as many samples as an interval needs to decide (massact.verdict.MIN_UNITS), and a few more
    engine.inputs[(lm.spec, corpus.key)] = torch.randint(0, model.config.vocab_size, (SAMPLES, SEQLEN), generator=g)
    return Context(lm, corpus, engine, n=SAMPLES)


plantings = st.fixed_dictionaries({
    "layer": st.integers(0, N_LAYER - 1),
    "feature": st.integers(32, 63),
    "token": st.integers(0, SEQLEN - 1),
    "magnitude": st.floats(200, 5000),
})
fast = settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@fast
@given(p=plantings)
def test_finds_the_planted_layer_feature_and_token(p):
    ctx = context(planted_gpt2(**p, component="mlp", n_layer=N_LAYER), "planted-mlp")
    v = judge(record("massive.exists"), ctx)
    assert v.verdict == "holds", v.summary
    assert v.details["massive_layers"] == list(range(p["layer"], N_LAYER))
    r = ctx.run(want("block.*", "top_token", "top_feature"))
    for l in range(p["layer"], N_LAYER):
        assert r.stat(f"block.{l}", "top_token")[:, 0].tolist() == [p["token"]] * SAMPLES
        assert r.stat(f"block.{l}", "top_feature")[:, 0].tolist() == [p["feature"]] * SAMPLES
    dims = judge(record("massive.fixed_dims"), ctx)
    assert dims.verdict == "holds" and dims.values["top_dim"] == p["feature"], dims.summary


@fast
@given(p=plantings)
def test_component_claims_follow_the_planting(p):
    mlp = context(planted_gpt2(**p, component="mlp", n_layer=N_LAYER), "planted-mlp")
    attn = context(planted_gpt2(**p, component="attn", n_layer=N_LAYER), "planted-attn")
    expected = {  # claim -> (verdict on the MLP planting, verdict on the attention planting)
        ("ablate.attention_all", "general"): ("holds", "refuted"),
        ("ablate.attention_all", "directional"): ("holds", "refuted"),  # zeroing attention removes it
        ("ablate.mlp_all", "general"): ("holds", "refuted"),
        ("mlp.down_proj_amplifies", "general"): ("holds", "refuted"),
    }
    for (claim_id, variant), (on_mlp, on_attn) in expected.items():
        rec = record(claim_id, variant)
        got_mlp, got_attn = judge(rec, mlp), judge(rec, attn)
        assert got_mlp.verdict == on_mlp, f"{claim_id}/{variant} on MLP planting: {got_mlp.summary}"
        assert got_attn.verdict == on_attn, f"{claim_id}/{variant} on attention planting: {got_attn.summary}"


def test_activation_claim_fails_when_the_largest_preactivation_is_negative():
    rec = record("mlp.act_preserves_max")
    plain = planted_gpt2(layer=1, feature=40, token=3, magnitude=1000.0, component="mlp", n_layer=N_LAYER)
    negative = planted_gpt2(layer=1, feature=40, token=3, magnitude=1000.0, component="mlp", n_layer=N_LAYER,
                            negative_unit=True)
    assert judge(rec, context(plain, "plain")).verdict == "holds"
    v = judge(rec, context(negative, "negative-unit"))
    assert v.verdict == "refuted", v.summary
    assert v.values["pre_act"] > 1.5 * v.values["act"]


@pytest.mark.parametrize("arch", SUPPORTED_ARCHS)
def test_random_init_models_have_no_massive_activations(arch):
    """The L1 control: random weights give no massive activations, so the claim is refuted."""
    v = judge(record("massive.exists"), context(tiny_model(arch), f"tiny-{arch}"))
    assert v.verdict == "refuted", v.summary
    for claim_id in ("ablate.attention_all", "mlp.act_preserves_max"):
        assert judge(record(claim_id), context(tiny_model(arch), f"tiny-{arch}")).verdict == "invalid"


def test_emergence_is_found_at_the_planted_layer():
    ctx = context(planted_gpt2(layer=1, feature=40, token=0, magnitude=3000.0, n_layer=N_LAYER), "planted")
    v = judge(record("massive.emergence"), ctx)
    assert v.values["layer"] == 1 and v.values["jump"] > 3, v.summary
    # the planted activation persists through the last layer: no drop there
    assert v.verdict == "refuted" and v.bootstrap["conditions"]["drop <= 0.5"] == "fails", v.bootstrap


def test_emergence_refuted_without_a_massive_layer():
    v = judge(record("massive.emergence"), context(tiny_model("llama"), "tiny-llama"))
    assert v.verdict == "refuted" and "layer" not in v.values and "nothing emerges" in v.summary, v.summary


def test_a_records_seqlen_cuts_the_samples_the_check_reads():
    """A documented-value form runs at its record's length: the pass reads samples of that many tokens."""
    from dataclasses import replace

    ctx = context(planted_gpt2(layer=1, feature=40, token=0, magnitude=3000.0, n_layer=N_LAYER), "planted")
    at = ctx.at_seqlen(12)
    ctx.engine.inputs[(ctx.lm.spec, at.corpus.key)] = ctx.engine.inputs[(ctx.lm.spec, ctx.corpus.key)][:, :12]
    judge(replace(record("massive.exists"), seqlen=12), ctx, resamples=0)
    kinds = {kind[1][0] for kind in ctx.engine.passes}
    assert kinds == {at.corpus.key}, kinds


def test_a_fixed_dims_claim_naming_dims_beyond_the_hidden_size_is_invalid():
    """2533 and 1415 are LLaMA2-7B's dims: on a gpt2-shaped model (hidden 768) they do not exist."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    gpt2_shaped = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=768, n_head=12, vocab_size=100, n_positions=64)).eval()
    v = judge(record("massive.fixed_dims", "gpt2_dims_2533_1415"), context(gpt2_shaped, "gpt2"))
    assert v.verdict == "invalid"
    assert "2533" in v.reason and "768" in v.reason
