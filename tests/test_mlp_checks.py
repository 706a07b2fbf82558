"""Family M, M3 and M4: the registry's records judged on planted and random models (their controls)."""
from __future__ import annotations

import tomllib
from dataclasses import replace

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from builders import planted_gpt2, tiny_model
from massact.claims import judge, validate
from massact.errors import ClaimRecordError
from test_planted import CLAIMS, N_LAYER, SAMPLES, context, record

# 256 wide: a row of the narrow default (64, half of it the zeroed position code) puts any 5
# random entries near 50% of its sum of squares
PLANT = dict(layer=1, feature=40, token=3, magnitude=1000.0, n_layer=N_LAYER, n_embd=256)
DOC_UNITS = {496: -0.2986, 681: -0.2295, 732: -0.2231, 21: -0.2190, 231: 0.2190}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def planted_mlp():
    return context(planted_gpt2(**PLANT, component="mlp"), "planted-mlp")


@pytest.fixture(scope="module")
def planted_attn():
    return context(planted_gpt2(**PLANT, component="attn"), "planted-attn")


# ---------------------------------------------------------------- M3 mlp.checkpoints

def test_checkpoints_hold_where_the_mlp_writes_the_outlier(planted_mlp) -> None:
    v = judge(record("mlp.checkpoints"), planted_mlp)
    assert v.verdict == "holds", v.summary
    assert v.details["layer"] == PLANT["layer"]
    assert list(v.details["checkpoints"]) == list(planted_mlp.lm.adapter.checkpoint_roles())
    # the planted unit writes `magnitude` at one entry: the output max is it, the median is not
    assert v.values["output.max"] == pytest.approx(PLANT["magnitude"], rel=0.05)
    assert v.values["output.median"] < 1.0
    assert v.values["concentration"] >= 10


def test_checkpoints_refuted_where_attention_writes_the_outlier(planted_attn) -> None:
    v = judge(record("mlp.checkpoints"), planted_attn)
    assert v.verdict == "refuted", v.summary
    assert v.values["max_factor"] < 10


@pytest.mark.parametrize("arch", ["gpt2", "llama", "gemma3"])
def test_checkpoints_invalid_without_massive_activations(arch: str) -> None:
    v = judge(record("mlp.checkpoints"), context(tiny_model(arch), f"tiny-{arch}"))
    assert v.verdict == "invalid" and "massive" in v.reason


def test_documented_checkpoints_are_all_measured_on_a_gpt2_architecture(planted_mlp) -> None:
    """Every documented name is a value the check gives, so a gpt2 run compares, never reports 'invalid'."""
    rec = record("mlp.checkpoints", "gpt2")
    v = judge(replace(rec, params=replace(rec.params, layer=PLANT["layer"]), seqlen=None), planted_mlp)  # 16 tokens
    assert set(rec.documented_values) <= set(v.values)
    assert v.verdict == "refuted" and "output.max" in v.reason  # a planted 1000 is not gpt2's 2342


# ---------------------------------------------------------------- M4 mlp.top_contributors: weights

def test_contributors_find_the_planted_unit_by_the_correct_axis_only(planted_mlp) -> None:
    right = judge(record("mlp.top_contributors", "correct_method"), planted_mlp)
    assert right.verdict == "holds", right.summary
    assert right.values["dim"] == PLANT["feature"]
    assert right.details["top"][0][0] == 0  # the planted unit
    assert right.values["share"] > 0.99
    # GPT-2's Conv1D stores (in, out): row 40 is unit 40's outgoing weights, random ones
    wrong = judge(record("mlp.top_contributors", "documented_method"), planted_mlp)
    assert wrong.verdict == "refuted", wrong.summary
    assert wrong.values["share"] < 0.2


def test_contributors_refuted_where_attention_writes_the_outlier(planted_attn) -> None:
    v = judge(record("mlp.top_contributors", "correct_method"), planted_attn)
    assert v.verdict == "refuted", v.summary


def test_contributors_invalid_without_massive_activations() -> None:
    v = judge(record("mlp.top_contributors", "correct_method"), context(tiny_model("llama"), "tiny-llama"))
    assert v.verdict == "invalid"


# ---------------------------------------------------------------- M4 mlp.top_contributors: contributions

def test_contributions_find_the_planted_unit_writing_the_massive_value(planted_mlp) -> None:
    """The general form measures what the units write at the massive token: the planted unit writes it all."""
    v = judge(record("mlp.top_contributors"), planted_mlp, resamples=20)
    assert v.verdict == "holds", v.summary
    assert (v.values["layer"], v.values["dim"]) == (PLANT["layer"], PLANT["feature"])
    assert v.values["share"] > 0.95 and v.values["entries"] == SAMPLES  # one massive entry per sample
    assert next(iter(v.details["top_units"])) == 0  # the planted unit
    assert v.selections["massive entries"] == [[i, PLANT["token"]] for i in range(SAMPLES)]


def test_contributions_refuted_where_attention_writes_the_massive_value(planted_attn) -> None:
    v = judge(record("mlp.top_contributors"), planted_attn, resamples=20)
    assert v.verdict == "refuted", v.summary
    assert abs(v.values["share"]) < 0.05 and abs(v.values["mlp_share"]) < 0.05


def test_contributions_invalid_without_massive_activations() -> None:
    assert judge(record("mlp.top_contributors"), context(tiny_model("llama"), "tiny-llama")).verdict == "invalid"


def test_the_two_methods_read_the_same_row_of_an_out_in_weight() -> None:
    """nn.Linear stores (out, in): the document's indexing happens to be right there."""
    ctx = context(tiny_model("llama"), "tiny-llama")
    rec = record("mlp.top_contributors", "correct_method")
    got = {m: judge(replace(rec, params=replace(rec.params, layer=0, dim=5, top_k=3, method=m)), ctx)
           for m in ("correct", "documented")}
    assert got["correct"].details["top"] == got["documented"].details["top"]


def _gpt2_shaped(*, stored_row: bool) -> GPT2LMHeadModel:
    """gpt2's shapes (768 wide, 3072 inner), random weights, and the document's five numbers put in
    layer 2's c_proj either where its code read them (stored row 447) or where the claim says they are."""
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=3, n_embd=768, n_head=12, vocab_size=100, n_positions=32)).eval()
    w = model.transformer.h[2].mlp.c_proj.weight  # stored (in 3072, out 768)
    with torch.no_grad():
        for unit, value in DOC_UNITS.items():
            if stored_row:
                w[447, unit] = value
            else:
                w[unit, 447] = value  # unit -> output dim 447: the weight into dim 447
    return model


@pytest.mark.parametrize("stored_row", [True, False])
def test_documented_numbers_distinguish_the_two_readings(stored_row: bool) -> None:
    ctx = context(_gpt2_shaped(stored_row=stored_row), "gpt2")
    doc = judge(record("mlp.top_contributors", "gpt2_documented_method"), ctx)
    right = judge(record("mlp.top_contributors", "gpt2_correct_method"), ctx)
    assert (doc.verdict, right.verdict) == (("holds", "refuted") if stored_row else ("refuted", "holds"))
    if stored_row:
        assert {u for u, _ in doc.details["top"]} == set(DOC_UNITS)


def test_documented_dim_beyond_the_hidden_size_is_invalid() -> None:
    torch.manual_seed(0)
    narrow = GPT2LMHeadModel(GPT2Config(n_layer=3, n_embd=32, n_head=4, vocab_size=100, n_positions=32)).eval()
    v = judge(record("mlp.top_contributors", "gpt2_correct_method"), context(narrow, "gpt2"))
    assert v.verdict == "invalid" and "447" in v.reason and "32" in v.reason


def test_an_unknown_method_is_a_record_error() -> None:
    raw = next(r for r in tomllib.loads((CLAIMS / "mlp.toml").read_text())["claim"]
               if r["id"] == "mlp.top_contributors" and r.get("variant") == "correct_method")
    with pytest.raises(ClaimRecordError, match="params.method' must be one of 'correct', 'documented'"):
        validate({**raw, "params": {**raw["params"], "method": "sideways"}})
