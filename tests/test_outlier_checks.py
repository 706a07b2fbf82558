"""Family O: outlier metrics on hand-built tensors, softmax properties, and the claims failing on controls."""
from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from builders import planted_gpt2, tiny_model
from massact.claims import judge
from massact.metrics import outliers as out
from test_planted import N_LAYER, context, record

T = torch.tensor
DOC = dict(n=1000, mean=2.0, std=0.5, outliers=[15.2, 12.8, 18.3, 9.7, 20.5])


pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------- moments and tails

def test_kurtosis_of_a_two_point_distribution_is_minus_two() -> None:
    # +-1 with equal weight: m4 / m2^2 = 1
    assert out.excess_kurtosis(T([1.0, -1.0] * 50)) == pytest.approx(-2.0)


def test_kurtosis_of_a_sparse_spike() -> None:
    # one entry x among n zeros: m2 = x^2 (n-1)/n^2, m4 ~ x^4 (n-1)((n-1)^3 + 1)/n^5 -> kurtosis ~ n - 3
    x = torch.zeros(1000)
    x[0] = 5.0
    n = 1000
    m2 = 25 * (n - 1) / n**2
    m4 = (5 * (n - 1) / n) ** 4 / n + (n - 1) * (5 / n) ** 4 / n
    assert out.excess_kurtosis(x) == pytest.approx(m4 / m2**2 - 3, rel=1e-9)
    assert out.moments(x)["max_z"] == pytest.approx((5 - 5 / n) / math.sqrt(m2), rel=1e-9)


def test_gaussian_kurtosis_is_within_its_standard_error() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(200_000, generator=g)
    assert abs(out.excess_kurtosis(x)) < 3 * out.kurtosis_se(x.numel())
    assert out.excess_kurtosis(x * 7 + 3) == pytest.approx(out.excess_kurtosis(x), rel=1e-6)  # scale/shift free


def test_moments_read_in_chunks_match_one_pass(monkeypatch) -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.distributions.StudentT(5.0).sample((5000,))
    whole = out.moments(x)
    monkeypatch.setattr(out, "_CHUNK", 333)
    assert out.moments(x) == pytest.approx(whole, rel=1e-9)


def test_tail_share_counts_entries_beyond_k_std() -> None:
    x = torch.zeros(10_000)
    x[:3] = 1000.0  # std ~ 1000 * sqrt(3e-4) = 17.3: the 3 spikes sit ~58 std out
    assert out.tail_share(x, k=6) == pytest.approx(3 / 10_000)
    assert out.tail_share(T([1.0, -1.0] * 10), k=1) == 0.0


def test_moments_reject_constant_and_tiny_inputs() -> None:
    with pytest.raises(ValueError, match="equal"):
        out.moments(torch.ones(10))
    with pytest.raises(ValueError, match="2 entries"):
        out.moments(T([1.0]))


# ---------------------------------------------------------------- energy shares

def test_energy_share_per_sample() -> None:
    a = torch.ones(2, 10, 100)  # 1000 entries per sample, energy 1 each
    a[0, 3, 7] = math.sqrt(999.0)  # sample 0: one entry holds half the energy
    share = out.energy_share(a, frac=0.001)  # top 1 entry
    assert share.tolist() == pytest.approx([0.5, 1 / 1000])
    assert out.energy_share(a, frac=0.002).tolist() == pytest.approx([1000 / 1998, 2 / 1000])


def test_top_count_rounds_up_and_keeps_one() -> None:
    assert out.top_count(1000, 0.001) == 1
    assert out.top_count(73728, 0.001) == 74
    assert out.top_count(10, 0.001) == 1
    assert out.top_count(2000, 0.001) == 2  # 0.001 * 2000 is 2 in float, not 3
    with pytest.raises(ValueError):
        out.top_count(10, 0.0)


def test_top_energy_share_of_a_row() -> None:
    assert out.top_energy_share(T([3.0, -4.0, 0.0, 0.0]), k=1) == pytest.approx(16 / 25)
    assert out.top_energy_share(T([1.0, 1.0, 1.0, 1.0]), k=2) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        out.top_energy_share(T([1.0]), k=2)


# ---------------------------------------------------------------- softmax

def test_softmax_mass_known_answer() -> None:
    scores = T([0.0, 0.0, math.log(2.0)])  # weights 1, 1, 2
    assert out.softmax_mass(scores, [2]) == pytest.approx(0.5)
    assert out.softmax_mass(scores, [0, 1, 2]) == pytest.approx(1.0)


def test_the_documents_simulation_cannot_print_99_7_percent() -> None:
    """e^20.5 alone outweighs 1000 e^N(2, 0.5) (~ 1000 e^2.125 ~ 8.4e3) by 1e5: the mass is ~99.999%."""
    for seed in range(20):
        scores = out.scores_with_outliers(**DOC, seed=seed)
        mass = out.softmax_mass(scores, range(1000, 1005))
        assert 0.9999 < mass < 1.0


margins = st.lists(st.floats(0.0, 30.0), min_size=1, max_size=8)


@settings(max_examples=60, deadline=None)
@given(offsets=margins, seed=st.integers(0, 2**16), extra=st.floats(0.1, 5.0))
def test_outlier_mass_grows_with_the_margin(offsets: list[float], seed: int, extra: float) -> None:
    bulk = out.scores_with_outliers(n=200, mean=0.0, std=1.0, outliers=[], seed=seed)
    idx = range(200, 200 + len(offsets))
    low = out.softmax_mass(torch.cat([bulk, T(offsets, dtype=torch.float64)]), idx)
    high = out.softmax_mass(torch.cat([bulk, T(offsets, dtype=torch.float64) + extra]), idx)
    assert high > low or low > 1 - 1e-12


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**16))
def test_without_outliers_five_entries_take_about_their_count_share(seed: int) -> None:
    """The claim's control: no outliers, so 5 of 1005 entries get ~5/1005, far below the claim's 99%."""
    scores = out.scores_with_outliers(n=1005, mean=2.0, std=0.5, outliers=[], seed=seed)
    mass = out.softmax_mass(scores, range(1000, 1005))
    assert mass < 0.02  # e^(0.5 z) spread: 5 draws cannot beat ~4x their fair share 5/1005


def test_softmax_claim_is_refuted_when_the_outliers_are_ordinary_scores() -> None:
    rec = record("outliers.softmax_amplification")
    plain = judge(replace(rec, params=replace(rec.params, outliers=(2.0,) * 5)), None)
    assert plain.verdict == "refuted", plain.summary
    assert plain.values["mass"] == pytest.approx(5 / 1005, rel=0.3)


def test_softmax_claim_holds_and_the_printed_value_is_refuted() -> None:
    general = judge(record("outliers.softmax_amplification"), None)
    assert general.verdict == "holds" and general.values["mass"] > 0.9999
    assert general.values["control_mass"] < 0.02
    doc = judge(record("outliers.softmax_amplification", "documented_value"), None)
    assert doc.verdict == "refuted" and "mass" in doc.reason


# ---------------------------------------------------------------- claims on controls

@pytest.mark.parametrize("arch", ["gpt2", "llama", "gemma3", "bert"])
def test_gaussian_weights_are_not_heavy_tailed(arch: str) -> None:
    v = judge(record("outliers.weights_heavy_tailed"), context(tiny_model(arch), f"tiny-{arch}"))
    assert v.verdict == "refuted", v.summary
    assert abs(v.values["kurtosis.embeddings"]) < 0.5


def test_planted_heavy_tails_are_found() -> None:
    """The same tiny model with a few weights set far from the bulk: the claim holds.

    The interval resamples runs of rows, so the few far weights lie in 8 rows spread over each matrix: in
    one row alone they would be missing from a third of the resamples, and the claim rightly undecided."""
    model = tiny_model("gpt2")
    with torch.no_grad():
        for p in (model.transformer.wte.weight, model.transformer.h[0].mlp.c_fc.weight,
                  model.transformer.h[0].attn.c_proj.weight, model.transformer.h[1].mlp.c_fc.weight,
                  model.transformer.h[1].attn.c_proj.weight):
            p[torch.linspace(0, p.shape[0] - 1, 8).long(), 0] = 0.5  # std 0.02: 25 std out
    v = judge(record("outliers.weights_heavy_tailed"), context(model, "tiny-gpt2-spiked"))
    assert v.verdict == "holds", v.summary
    assert v.values["min_max_z"] > 6


def test_random_init_activations_carry_no_concentrated_energy() -> None:
    ctx = context(tiny_model("llama"), "tiny-llama")
    v = judge(record("outliers.energy_concentration", "documented_method"), ctx)
    assert v.verdict == "refuted", v.summary
    assert v.values["share"] < 0.2
    # the general form is decided at the massive layers: a random model has none
    general = judge(record("outliers.energy_concentration"), ctx)
    assert general.verdict == "invalid" and "no layer" in general.reason, general.summary


def _massive_dim_on(every_token: bool) -> torch.nn.Module:
    """A planted MLP writing ~1000 into dim 40 at token 3, or (every_token) at every token."""
    model = planted_gpt2(layer=1, feature=40, token=3, magnitude=1000.0, n_layer=N_LAYER)
    if every_token:
        fc = model.transformer.h[1].mlp.c_fc
        with torch.no_grad():
            fc.weight[:, 0] = 0.0
            fc.bias[0] = 10.0  # the pre-activation the planted unit has at its token, now at all of them
    return model


@pytest.mark.parametrize("every_token, verdict", [(False, "holds"), (True, "refuted")])
def test_energy_concentration_at_the_massive_layers_follows_the_planting(every_token: bool, verdict: str) -> None:
    """One massive entry per sample carries nearly all the energy; a dim massive on all 16 tokens
    spreads it over 16 entries, of which the top 0.1% (2 of 1024) carry an eighth."""
    v = judge(record("outliers.energy_concentration"), context(_massive_dim_on(every_token), "planted"),
              resamples=20)
    assert v.verdict == verdict, v.summary
    assert v.details["massive_layers"] == list(range(1, N_LAYER))
    assert (v.values["least_share"] > 0.9) if verdict == "holds" else (v.values["least_share"] < 0.2)
    assert {f"{k}.{l}" for k in ("block", "mlp_input", "pre_act") for l in range(N_LAYER)} <= set(v.values)
