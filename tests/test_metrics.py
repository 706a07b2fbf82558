"""Pure activation metrics on hand-built tensors whose answers are known."""
from __future__ import annotations

import math
import tomllib
from collections import Counter
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from massact.metrics.activations import (
    emergence,
    emergence_layer,
    layer_profile,
    massive_dims,
    massive_mask,
    ratio,
    relative_change,
    table_inconsistencies,
)

T = torch.tensor
CLAIMS = Path(__file__).resolve().parent.parent / "claims"


# ---------------------------------------------------------------- layer_profile

def test_layer_profile_means_over_samples() -> None:
    top_abs = [T([[10.0, 4.0, 2.0], [20.0, 6.0, 4.0]]),  # layer 0: 2 samples, k = 3
               T([[1.0, 1.0, 1.0], [3.0, 2.0, 0.0]])]
    median = [T([0.5, 1.5]), T([2.0, 4.0])]
    p = layer_profile(top_abs, median)
    assert p["top1"].tolist() == [15.0, 2.0]
    assert p["top2"].tolist() == [5.0, 1.5]
    assert p["top3"].tolist() == [3.0, 0.5]
    assert p["median"].tolist() == [1.0, 3.0]
    assert all(v.dtype == torch.float64 and v.shape == (2,) for v in p.values())


def test_layer_profile_with_k1_repeats_top1() -> None:
    p = layer_profile([T([[4.0], [6.0]])], [T([1.0, 1.0])])
    assert p["top1"].tolist() == p["top2"].tolist() == p["top3"].tolist() == [5.0]


def test_layer_profile_is_mean_of_tops_not_top_of_means() -> None:
    # per-sample top-1 then mean: (100 + 0) / 2, not max over the pooled samples
    p = layer_profile([T([[100.0, 1.0], [0.0, 0.0]])], [T([1.0, 1.0])])
    assert p["top1"].item() == 50.0


# ---------------------------------------------------------------- massive_mask, ratio

@pytest.mark.parametrize("top1, median, want", [
    (100.0, 0.1, True),     # exactly min_abs, exactly 1000x
    (99.999, 0.0, False),   # just under min_abs
    (100.0, 0.1001, False), # just under 1000x
    (1000.0, 1.0, True),    # exactly 1000x
    (999.0, 1.0, False),
    (1e6, 2.0, True),
])
def test_massive_mask_boundaries(top1: float, median: float, want: bool) -> None:
    got = massive_mask(T(top1, dtype=torch.float64), T(median, dtype=torch.float64),
                       min_abs=100.0, min_ratio=1000.0)
    assert bool(got) is want


def test_massive_mask_exactly_100x_ratio() -> None:
    m = massive_mask(T([300.0, 299.0]), T([3.0, 3.0]), min_abs=0.0, min_ratio=100.0)
    assert m.tolist() == [True, False]


def test_massive_mask_broadcasts_median_per_row() -> None:
    fm = T([[500.0, 50.0, 2000.0], [500.0, 50.0, 2000.0]])
    med = T([[0.1], [1.0]])
    assert massive_mask(fm, med, min_abs=100.0, min_ratio=1000.0).tolist() == [
        [True, False, True], [False, False, True]]


def test_ratio() -> None:
    r = ratio(T([100.0, 5.0], dtype=torch.float64), T([0.5, 5.0], dtype=torch.float64))
    assert r.tolist() == [200.0, 1.0]
    zero = ratio(T([3.0], dtype=torch.float64), T([0.0], dtype=torch.float64))
    assert torch.isfinite(zero).all() and zero.item() > 1e300  # a zero median gives a huge, finite ratio


def test_relative_change() -> None:
    got = relative_change(T([100.0, 10.0, 4.0]), T([50.0, 10.0, 5.0]))
    assert got.tolist() == [-0.5, 0.0, 0.25]


# ---------------------------------------------------------------- emergence

def _profile(values: list[float]) -> torch.Tensor:
    return T(values, dtype=torch.float64)


def _emerge(top1: list[float], median: float = 0.1) -> dict:
    return emergence(_profile(top1), _profile([median] * len(top1)), min_abs=100.0, min_ratio=1000.0, jump=10.0,
                     plateau_band=2.0)


def test_emergence_finds_jump_plateau_drop() -> None:
    e = _emerge([2.0, 3.0, 300.0, 310.0, 290.0, 305.0, 300.0, 30.0])
    assert e["layer"] == 2
    assert e["jump"] == pytest.approx(100.0)
    assert e["jumps_over_threshold"] == [2]
    assert e["plateau_level"] == pytest.approx(300.0)
    assert e["plateau_share"] == 1.0
    assert e["drop"] == pytest.approx(0.1)


def test_emergence_layer_is_the_first_massive_one_not_the_largest_jump() -> None:
    """Layer 1 jumps x50 but reaches only 50 (< 100): the first massive layer is 2, after a x4 jump."""
    e = _emerge([1.0, 50.0, 200.0, 210.0, 205.0, 20.0])
    assert (e["layer"], e["largest_jump_layer"]) == (2, 1)
    assert e["jump"] == pytest.approx(4.0)
    assert emergence_layer(_profile([1.0, 50.0, 200.0]), _profile([0.1] * 3), min_abs=100.0, min_ratio=1000.0) == 2


def test_emergence_without_a_massive_layer_gives_only_the_largest_jump() -> None:
    e = _emerge([5.0] * 8)
    assert e["layer"] is None and e["largest_jump"] == pytest.approx(1.0)
    assert e["jumps_over_threshold"] == [] and "jump" not in e and "plateau_share" not in e
    assert _emerge([500.0, 500.0], median=1.0)["layer"] is None  # 500x the median: not massive


def test_emergence_at_layer_0_has_no_jump_into_it() -> None:
    e = _emerge([300.0, 310.0, 290.0, 30.0])
    assert e["layer"] == 0 and "jump" not in e and e["plateau_share"] == 1.0


def test_emergence_without_final_drop() -> None:
    e = _emerge([2.0, 3.0, 300.0, 310.0, 290.0, 305.0, 300.0, 300.0])
    assert e["layer"] == 2 and e["drop"] == pytest.approx(1.0)


def test_emergence_plateau_outlier_share() -> None:
    # plateau layers 2..6: one of five (layer 4) is far outside the band -> share 0.8
    assert _emerge([1.0, 1.0, 100.0, 100.0, 1000.0, 100.0, 100.0, 5.0])["plateau_share"] == pytest.approx(0.8)
    assert _emerge([1.0, 1.0, 100.0, 1000.0, 1000.0, 100.0, 100.0, 5.0])["plateau_share"] == pytest.approx(0.6)


def test_the_emergence_rule_on_the_documents_own_table_gives_its_layer_2() -> None:
    """000's gpt2 table (the layer_profile record): top-1/median is 169x, 859x, 2946x in layers 0-2,
    so the first massive layer is 2, the document's; the largest jump is into layer 1 (x6.0)."""
    record = next(r for r in tomllib.loads((CLAIMS / "massive.toml").read_text())["claim"]
                  if r["id"] == "massive.layer_profile" and r.get("variant") == "gpt2")
    doc = record["documented_values"]
    top1 = _profile([doc[f"top1.{l}"] for l in range(12)])
    median = _profile([doc[f"median.{l}"] for l in range(12)])
    assert emergence_layer(top1, median, min_abs=100.0, min_ratio=1000.0) == 2
    e = emergence(top1, median, min_abs=100.0, min_ratio=1000.0, jump=3.0, plateau_band=2.0)
    assert e["layer"] == 2 and e["largest_jump_layer"] == 1 and e["largest_jump"] == pytest.approx(6.01, abs=0.01)
    # the rest of the documented pattern holds there too: x4.06 jump, plateau 2-10, drop at 11
    assert e["jump"] == pytest.approx(4.06, abs=0.01) and e["plateau_share"] == 1.0 and e["drop"] < 0.5


# ---------------------------------------------------------------- massive_dims

def test_massive_dims_counts_dims_and_pairs() -> None:
    # 2 layers x 2 samples x 4 dims; median 0.1 -> threshold max(100, 1000 * 0.1) = 100
    fm0 = T([[500.0, 1.0, 1.0, 200.0],   # dims 0 and 3
             [1.0, 1.0, 1.0, 1.0]])      # none
    fm1 = T([[800.0, 1.0, 1.0, 1.0],     # dim 0
             [900.0, 1.0, 1.0, 99.0]])   # dim 0 (99 is under min_abs)
    med = [T([0.1, 0.1]), T([0.1, 0.1])]
    counts, pairs = massive_dims([fm0, fm1], med, min_abs=100.0, min_ratio=1000.0)
    assert counts == Counter({0: 3, 3: 1})
    assert pairs == 3


def test_massive_dims_uses_each_samples_median() -> None:
    fm = T([[500.0, 1.0], [500.0, 1.0]])
    counts, pairs = massive_dims([fm], [T([0.1, 1.0])], min_abs=100.0, min_ratio=1000.0)
    assert counts == Counter({0: 1}) and pairs == 1


def test_massive_dims_none() -> None:
    counts, pairs = massive_dims([torch.ones(3, 4)], [torch.ones(3)], min_abs=100.0, min_ratio=1000.0)
    assert counts == Counter() and pairs == 0


# ---------------------------------------------------------------- table_inconsistencies

def test_table_inconsistencies_finds_unordered_rows() -> None:
    table = {
        2: (2622.0, 1547.0, 799.0, 0.2),   # fine
        0: (2.6, 2.9, 1.8, 0.1),            # top-2 > top-1
        5: (10.0, 9.0, 9.5, 0.5),           # top-3 > top-2
    }
    found = table_inconsistencies(table)
    assert len(found) == 2
    assert found[0].startswith("layer 0:") and "top-2 2.9 > top-1 2.6" in found[0]
    assert found[1].startswith("layer 5:") and "top-3" in found[1]


def test_table_inconsistencies_clean_table() -> None:
    assert table_inconsistencies({0: (3.0, 2.0, 1.0, 0.5), 1: (3.0, 3.0, 3.0, 3.0)}) == []


def test_table_inconsistencies_median_above_top3() -> None:
    assert table_inconsistencies({4: (3.0, 2.0, 1.0, 1.5)}) == ["layer 4: median 1.5 > top-3 1.0"]


# ---------------------------------------------------------------- properties

finite = st.floats(min_value=1e-3, max_value=1e6, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(base=st.lists(finite, min_size=1, max_size=8), x=st.floats(min_value=-0.99, max_value=100.0))
def test_relative_change_recovers_factor(base: list[float], x: float) -> None:
    b = T(base, dtype=torch.float64)
    got = relative_change(b, b * (1 + x))
    assert torch.allclose(got, torch.full_like(b, x), rtol=1e-9, atol=1e-9)


@settings(max_examples=200, deadline=None)
@given(top=finite, med=finite, r1=st.floats(0.0, 1e4), r2=st.floats(0.0, 1e4), min_abs=st.floats(0.0, 1e3))
def test_massive_mask_monotone_in_thresholds(top, med, r1, r2, min_abs) -> None:
    """Raising min_ratio (or min_abs) can only turn massive entries off, never on."""
    lo, hi = sorted((r1, r2))
    t, m = T(top, dtype=torch.float64), T(med, dtype=torch.float64)
    if massive_mask(t, m, min_abs=min_abs, min_ratio=hi):
        assert massive_mask(t, m, min_abs=min_abs, min_ratio=lo)
    if massive_mask(t, m, min_abs=min_abs + 1.0, min_ratio=lo):
        assert massive_mask(t, m, min_abs=min_abs, min_ratio=lo)
    assert bool(massive_mask(t, m, min_abs=0.0, min_ratio=lo)) == (top >= lo * med)
    assert math.isclose(float(ratio(t, m)), top / med, rel_tol=1e-12)


def test_moments_of_row_blocks_equal_the_matrix_moments_and_resample_by_rows() -> None:
    from massact.metrics import outliers as out

    g = torch.Generator().manual_seed(0)
    w = torch.randn(12, 5, generator=g) ** 3  # heavy tailed
    whole, blocks = out.moments(w), out.block_sums(w, 4)
    got = out.moments_of_blocks(blocks)
    for k in ("std", "excess_kurtosis", "max_z", "n"):
        assert got[k] == pytest.approx(whole[k], rel=1e-9), k
    # a multiset of blocks is the matrix of those rows, repeats included
    pick = torch.tensor([0, 0, 3])
    rows = torch.cat([w[0:3], w[0:3], w[9:12]])
    want = out.moments(rows)
    for k in ("std", "excess_kurtosis", "max_z", "n"):
        assert out.moments_of_blocks(blocks[pick])[k] == pytest.approx(want[k], rel=1e-9), k
