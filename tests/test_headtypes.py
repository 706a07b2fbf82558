"""Head statistics and the six head types: the document's formulas on attention whose answers are
known, its rules on statistics built to land in each type, and the KV budget of each type."""
from __future__ import annotations

import math

import pytest
import torch

from massact.metrics import headtypes as ht

T = 32


def causal(rows: torch.Tensor) -> torch.Tensor:
    """(T, T) scores -> (1, 1, T, T) causal attention probabilities."""
    mask = torch.ones(T, T).tril().bool()
    return torch.softmax(rows.masked_fill(~mask, float("-inf")), dim=-1)[None, None]


def test_uniform_attention_has_zero_kl_and_the_entropy_of_its_visible_keys() -> None:
    p = ht.attention_profile(causal(torch.zeros(T, T)))
    assert p["uniformity"].item() == pytest.approx(0.0, abs=1e-5)
    assert p["entropy"].item() == pytest.approx(sum(math.log(q + 1) for q in range(T)) / T, rel=1e-5)
    assert p["sink"].item() == pytest.approx(sum(min(4, q + 1) / (q + 1) for q in range(T)) / T, rel=1e-5)


def test_attending_to_itself_is_local_and_self() -> None:
    p = ht.attention_profile(causal(torch.eye(T) * 50))
    assert p["entropy"].item() == pytest.approx(0.0, abs=1e-4)
    assert p["local"].item() == pytest.approx(1.0, abs=1e-4)  # the document counts the query as local
    assert p["rel"][0, 0, 0].item() == pytest.approx(1.0, abs=1e-4)
    assert p["global"].item() == pytest.approx(0.0, abs=1e-4)
    assert p["max"].item() == pytest.approx(1.0, abs=1e-4)


def test_attending_to_the_first_token_is_sink() -> None:
    scores = torch.zeros(T, T)
    scores[:, 0] = 50
    p = ht.attention_profile(causal(scores))
    assert p["sink"].item() == pytest.approx(1.0, abs=1e-4)
    assert p["recent"].item() == pytest.approx(0.0, abs=1e-4)
    assert p["rel"][0, 0, 5].item() == pytest.approx(1 / T, abs=1e-4)  # only query 5 sees key 0 at distance 5
    assert p["uniformity"].item() > 1.0


def test_previous_token_attention_is_local() -> None:
    p = ht.attention_profile(causal(torch.diag(torch.full((T - 1,), 50.0), -1)))
    assert p["local"].item() == pytest.approx(1.0, abs=1e-3)  # query 0 reads itself, the others the key before
    assert p["rel"][0, 0, 1].item() == pytest.approx((T - 1) / T, abs=1e-3)


def test_the_entropy_summed_by_blocks_of_queries_is_the_whole_rows() -> None:
    n = 2 * ht.QUERY_BLOCK + 37  # blocks of the block size and a shorter last one
    scores = torch.randn(2, 3, n, n, generator=torch.Generator().manual_seed(0)) * 3
    a = torch.softmax(scores.masked_fill(~torch.ones(n, n).tril().bool(), float("-inf")), dim=-1)
    whole = torch.special.entr(a).sum(-1).mean(-1)
    assert torch.allclose(ht.attention_profile(a)["entropy"], whole, rtol=1e-6)


def stats(entropy: float, sink: float, local: float, uniformity: float = 1.0, rel=None) -> ht.HeadStats:
    return ht.HeadStats(0, 0, entropy, 0.0, 0.5, {"sink": sink, "recent": 0.1, "local": local, "global": 0.0},
                        sink, uniformity, rel or [0.0] * 64)


@pytest.mark.parametrize("s, kind, strategy, budget", [
    (stats(2.0, 0.5, 0.1, uniformity=0.05), "dead", "prune", "pruned"),
    (stats(1.0, 0.5, 0.1), "sink_positional", "sink_window", "sink 4 + window 8"),
    (stats(1.0, 0.1, 0.7, rel=[0.5, 0.4] + [0.0] * 62), "true_positional", "window_only", "window 8"),
    (stats(1.0, 0.1, 0.7, rel=[0.1] * 64), "true_positional", "window_only", "window 12"),  # > 80% by distance 8
    (stats(1.0, 0.1, 0.2), "mixed", "none", "sink 4 + window 64"),
    (stats(2.25, 0.5, 0.1), "sink_mixed", "sink_window", "sink 4 + window 24"),  # int(16 + 16 x 0.5)
    (stats(3.5, 0.5, 0.1), "gathering", "full", "sink 4 + window 256"),
    (stats(2.5, 0.1, 0.1), "mixed", "none", "sink 4 + window 64"),
], ids=["dead", "sink-positional", "true-positional", "true-positional-wide", "low-entropy-mixed", "sink-mixed",
        "gathering", "mixed"])
def test_the_documents_rules_and_compressor(s, kind, strategy, budget) -> None:
    c = ht.classify(s)
    assert (c.head_type, c.compression_strategy) == (kind, strategy)
    assert ht.budget(c, mapping="documented").label() == budget
    correct = ht.budget(c, mapping="correct").label()
    assert correct == ("full" if kind in ("gathering", "mixed") else budget)


def test_summary_counts_what_the_rules_allow() -> None:
    classes = [ht.classify(s) for s in (stats(1.0, 0.5, 0.1), stats(2.25, 0.5, 0.1), stats(3.5, 0.5, 0.1))]
    got = ht.summary(classes)
    assert got["type_distribution"]["sink_positional"] == 1 and got["sink_heads"] == 2
    assert got["limitable_heads"] == 2 and got["full_cache_heads"] == 1 and got["total_heads"] == 3


def test_head_stats_average_over_samples_and_spread_the_entropy() -> None:
    per = ht.attention_profile(torch.cat([causal(torch.zeros(T, T)), causal(torch.eye(T) * 50)]))
    per = {k: v[:, None] for k, v in per.items()}  # (N=2, L=1, H=1, ...)
    (s,) = ht.head_stats(per)
    uniform = sum(math.log(q + 1) for q in range(T)) / T
    assert s.mean_entropy == pytest.approx(uniform / 2, rel=1e-4)
    assert s.std_entropy == pytest.approx(uniform / 2, rel=1e-4)
    assert len(s.relative_position_dist) == 64


def test_budgets_union_and_window_of_a_uniform_cache() -> None:
    a, b = ht.Budget(4, 8), ht.Budget(0, 30)
    assert (a | b) == ht.Budget(4, 30) and (a | ht.FULL).full and (a | ht.Budget(prune=True)) == a
    assert ht.Budget(4, 8).kept(100) == 12 and ht.Budget(4, 8).kept(5) == 5 and ht.FULL.kept(100) == 100
    assert ht.uniform_window(12 * 10, 10, 4) == 8


def test_random_keys_are_distinct_keys_each_query_sees() -> None:
    keys = ht.random_keys(T)
    assert keys.shape == (ht.RANDOM_KEY_DRAWS, T, ht.SINK_SIZE)
    for q in range(T):
        for d in range(ht.RANDOM_KEY_DRAWS):
            got = set(keys[d, q].tolist())
            assert len(got) == ht.SINK_SIZE
            # a query that sees fewer keys than that gets all it sees (and later keys, which it gives nothing)
            assert got >= set(range(q + 1)) if q < ht.SINK_SIZE else got <= set(range(q + 1))
    assert len({tuple(keys[d, -1].tolist()) for d in range(ht.RANDOM_KEY_DRAWS)}) > 1  # the draws differ


def test_a_sink_head_gives_random_keys_only_the_first_keys_chance() -> None:
    """A head on key 0: random keys include it with probability 4 / (q + 1) at query q >= 4."""
    scores = torch.zeros(T, T)
    scores[:, 0] = 50
    p = ht.attention_profile(causal(scores))
    assert p["random_keys"].shape == (1, 1, ht.RANDOM_KEY_DRAWS)
    chance = (ht.SINK_SIZE + sum(ht.SINK_SIZE / (q + 1) for q in range(ht.SINK_SIZE, T))) / T
    assert p["random_keys"].mean().item() == pytest.approx(chance, rel=0.15)
    assert p["sink"].item() == pytest.approx(1.0, abs=1e-4)
    uniform = ht.attention_profile(causal(torch.zeros(T, T)))  # uniform: any 4 visible keys hold 4 / (q + 1)
    assert torch.allclose(uniform["random_keys"], uniform["sink"].expand(1, 1, ht.RANDOM_KEY_DRAWS), rtol=1e-5)


@pytest.mark.parametrize("entropy, uniformity, sink", [(1.0, 1.0, 0.5), (1.0, 1.0, 0.2), (2.5, 1.0, 0.5),
                                                       (2.5, 0.05, 0.5), (3.5, 1.0, 0.9), (2.99, 0.2, 0.31)])
def test_keeps_sinks_on_tensors_is_the_rules_keep_sinks(entropy, uniformity, sink) -> None:
    rule = ht.classify(stats(entropy, sink, 0.1, uniformity=uniformity)).keep_sinks
    assert bool(ht.keeps_sinks(torch.tensor(entropy), torch.tensor(uniformity), torch.tensor(sink))) == rule
