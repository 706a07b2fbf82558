"""H3 (sink share), H4 (the document's summary) and K1 (the head-aware cache) judged on tiny models:
a planted model whose heads are all sink heads, random weights, and a stubbed evaluation for K1's
decision between holds, non-specific and refuted."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from builders import copy_head_gpt2, sink_heads_gpt2, tiny_model
from massact.arch import adapter_for
from massact.checks import Context, kv
from massact.checks.headtypes import HeadParams
from massact.claims import judge
from massact.corpus import CorpusSettings, load_corpus
from massact.engine import Engine
from massact.models import LoadedModel
from massact.requests import LongText, long_documents
from test_planted import record

SHORT = dict(length=32)  # tiny models have 32-64 positions


def context(model, name: str, *, period: int | None = None, length: int = 32) -> Context:
    """The long-document sources filled with random ids (tiny models have no tokenizer): ``length``
    tokens per document, read whole or in chunks of 8 and 16 (and 32); with ``period`` each sequence
    repeats its first ``period`` tokens."""
    lm = LoadedModel(spec=name, name=name, model=model, tokenizer=None, adapter=adapter_for(model.config),
                     dtype="float32", device="cpu")
    corpus = load_corpus(CorpusSettings(seqlen=16))
    engine = Engine(batch_size=4)
    g = torch.Generator().manual_seed(0)
    for part in ("statistics", "held_out"):
        ids = torch.randint(0, model.config.vocab_size, (len(long_documents(part)), length), generator=g)
        if period:
            ids = ids[:, :period].repeat(1, length // period)
        for chunk in sorted({8, 16, 32, length}):
            engine.inputs[(name, LongText(part, length, chunk).key(corpus))] = ids.reshape(-1, chunk)
    return Context(lm, corpus, engine, n=4)


def short(claim_id: str, variant: str, **kw):
    """The record at 32 tokens: in chunks of 8 where it reads chunks, else whole."""
    rec = record(claim_id, variant)
    whole = rec.params.source.chunk == rec.params.length
    return replace(rec, params=replace(rec.params, **{**SHORT, "chunk": 32 if whole else 8, **kw}))


def peaked_random_gpt2():
    """Random GPT-2 weights with queries and keys scaled x10: every head peaks on keys that vary with
    the tokens, none on the first ones."""
    model = tiny_model("gpt2")
    with torch.no_grad():
        for blk in model.transformer.h:
            blk.attn.c_attn.weight[:, :2 * model.config.n_embd] *= 10
    return model


def test_sink_share_holds_where_every_head_is_a_sink_head() -> None:
    """128 tokens in one pass: 4 keys drawn among those a query sees get a sink head's attention on 14%
    of the queries ((4 + 4 (H_128 - H_4)) / 128), below the rule's 30%: the control is ruled out."""
    v = judge(short("heads.sink_share", "whole_sequence", length=128, chunk=128),
              context(sink_heads_gpt2(n_embd=136, n_positions=128), "sinks", length=128), resamples=20)
    assert v.verdict == "holds", v.summary
    assert v.values["sink_share"] == 1.0 and v.values["count.sink_positional"] == 8
    assert v.values["random_keys.sink_share"] == 0.0 and v.controls == {"random_keys": "ruled out"}
    assert v.bootstrap["draws"] == 20 and v.bootstrap["unit"] == "document"
    files = v.artifacts
    assert set(files) == {"head_statistics.json", "head_classifications.json"}
    stats = files["head_statistics.json"]["head_statistics"][0]
    assert set(stats) == {"layer_idx", "head_idx", "mean_entropy", "std_entropy", "max_attention_mean",
                          "position_preference", "sink_ratio", "uniformity_score", "relative_position_dist"}
    assert files["head_classifications.json"]["summary"]["total_heads"] == 8
    assert {f["kind"] for f in v.figures} == {"heatmap", "bars"} and len(v.figures) == 4


@pytest.mark.parametrize("model", ["sinks", "peaked random"])
def test_sink_share_is_non_specific_on_chunks_too_short_to_tell_a_sink(model) -> None:
    """In 8-token chunks any 4 keys a query sees hold most of its attention: the first 4 do for a sink
    head and for heads that peak at random alike, and so do 4 random ones: the control fires."""
    m = sink_heads_gpt2() if model == "sinks" else peaked_random_gpt2()
    v = judge(short("heads.sink_share", "documented_method"), context(m, model), resamples=20)
    assert v.values["sink_share"] > 0.5 and v.values["random_keys.sink_share"] > 0.5
    assert v.verdict == "non-specific" and v.controls == {"random_keys": "also holds"}, v.summary


def test_sink_share_refuted_on_random_weights_and_invalid_on_an_encoder() -> None:
    for m, n in ((tiny_model("llama"), 32), (peaked_random_gpt2(), 64)):  # near-uniform attention, peaked
        v = judge(short("heads.sink_share", "whole_sequence", length=n, chunk=n), context(m, "random", length=n),
                  resamples=20)
        assert v.verdict == "refuted", v.summary
        assert v.values["sink_share"] < 0.5
    bert = judge(short("heads.sink_share", "whole_sequence"), context(tiny_model("bert"), "tiny-bert"))
    assert bert.verdict == "invalid" and "both directions" in bert.reason


def test_the_documents_summary_contradicts_its_distribution() -> None:
    v = judge(record("heads.summary_consistent"), None)
    assert v.verdict == "refuted"
    assert v.values["derived.limitable_heads"] == 822 and v.values["stated.limitable_heads"] == 370
    assert v.values["derived.full_cache"] == 202  # gathering 88 + mixed 114: both keep the full cache
    assert v.values["derived.sink_heads"] == 813  # this one the document got right
    # 370 is the first analyzer's count (361 + 9): stale, an inconsistency; 88 is the compressor's "full"
    # strategy (gathering only): another reading of "full cache", not an error
    assert v.values["inconsistencies"] == 1
    assert "limitable_heads stated 370" in v.reason and "a stale summary" in v.reason and "gives 370" in v.reason
    assert "full_cache stated 88: a matter of reading, not an error" in v.reason


def test_head_params_read_the_documents_chunks_or_whole_sequences() -> None:
    doc, right = HeadParams(method="documented_method"), HeadParams(method="correct_method")
    whole = HeadParams(method="documented_method", chunk=2048)
    assert (doc.source.chunk, right.source.chunk, whole.source.chunk) == (512, 2048, 2048)
    assert doc.samples == 4 * right.samples and doc.documents[:5] == [0, 0, 0, 0, 1]


@pytest.mark.parametrize("variant", ["documented_method", "correct_method"])
def test_head_aware_cache_end_to_end_on_a_tiny_model(variant) -> None:
    ctx = context(sink_heads_gpt2(), "sinks")
    v = judge(short("kv.head_aware", variant, passkey=False, scales=(0.5, 1.0), random_draws=3, bucket=8), ctx,
              resamples=20)
    assert v.verdict in ("holds", "refuted", "inconclusive", "non-specific"), v.summary
    b = v.values
    # equal bytes at every checkpoint (to within one entry per KV head: 2 layers x 4 KV heads x 16 x 4 B x 2);
    # the full cache holds every entry
    per_entry = 16 * 4 * 2
    for t in (8, 16, 32):
        assert 0 <= b[f"kv_bytes.head-aware.{t}"] - b[f"kv_bytes.streaming.{t}"] < 8 * per_entry
        assert b[f"kv_bytes.random heads.{t}"] == b[f"kv_bytes.head-aware.{t}"]
    assert b["kv_bytes.full.32"] == 2 * 4 * 32 * per_entry
    assert b["kv_bytes.head-aware.32"] < b["kv_bytes.full.32"]  # every head is a sink head: sink 4 + window 8
    assert [k for k in b if k.startswith("loss.full.")] == ["loss.full.0-7", "loss.full.8-15", "loss.full.16-23",
                                                            "loss.full.24-31"]
    assert b["loss.full"] == pytest.approx((b["loss.full.8-15"] + b["loss.full.16-23"] + b["loss.full.24-31"]) / 3)
    assert v.bootstrap["draws"] == 3 and v.bootstrap["unit"] == "document"
    assert len(v.figures[0]["curves"]["head-aware"][0]) == 2
    assert v.figures[1]["x"] == [0, 8, 16, 24] and set(v.figures[1]["series"]) == {"full", "head-aware", "streaming",
                                                                                    "random heads"}


def test_head_aware_cache_holds_where_one_head_needs_the_far_tokens() -> None:
    """Head 0 copies the token 15 back (the next token, on sequences of period 16) and heads 1-3 are
    sink heads: the plan keeps head 0's whole cache, a uniform cache of equal bytes (its window grows
    to 13) loses the copied key, and the same budgets dealt to random heads take it from head 0."""
    ctx = context(copy_head_gpt2(), "copy", period=16)
    v = judge(short("kv.head_aware", "correct_method", passkey=False, scales=(1.0,)), ctx, resamples=50)
    assert v.verdict == "holds", v.summary
    assert v.values["gain"] > 1.0 and v.values["gap_to_full"] == pytest.approx(0.0, abs=1e-4)
    assert v.values["gain_random_heads"] < v.values["gain"] and v.controls == {"random_heads": "ruled out"}
    assert v.bootstrap["draws"] == 10
    assert v.details["plans"]["head-aware"]["kv_heads"][0] == ["full"] + ["sink 4 + window 8"] * 3
    assert v.details["plans"]["streaming"]["kv_heads"][0] == ["sink 4 + window 13"] * 4
    # the documented method reads 16-token chunks, where head 0 reads itself or the chunk's first token:
    # typed a sink head, its window of 8 drops the far key, and the claim is refuted
    doc = judge(short("kv.head_aware", "documented_method", passkey=False, scales=(1.0,), chunk=16), ctx,
                resamples=50)
    assert doc.verdict == "refuted", doc.summary
    assert doc.details["plans"]["head-aware"]["kv_heads"][0][0] == "sink 4 + window 8"


@pytest.mark.parametrize("losses, verdict", [
    ({"full": 2.0, "head-aware": 2.1, "streaming": 2.5, "random heads": 2.4}, "holds"),
    ({"full": 2.0, "head-aware": 2.1, "streaming": 2.5, "random heads": 2.05}, "non-specific"),
    ({"full": 2.0, "head-aware": 2.6, "streaming": 2.5, "random heads": 2.4}, "refuted"),
], ids=["holds", "random-heads-as-good", "refuted"])
def test_head_aware_decision(monkeypatch, losses, verdict) -> None:
    """The decision on stubbed evaluations: each policy's loss per held-out sample and token, which
    varies between samples (and, for random heads, between draws) by a hundredth."""
    ctx = context(sink_heads_gpt2(), "sinks")
    real = ctx.run

    def run(request, *, n=None):
        r = real(request, n=n)
        if request.mode != "decode":
            return r
        name = request.intervention.plan.name.split(":")[0].replace("-", " ")
        seed = int(request.intervention.plan.name.rsplit("seed", 1)[1]) if name == "random heads" else 0
        loss = losses.get({"head aware": "head-aware"}.get(name, name), 3.0) + 0.01 * torch.arange(r.n) / r.n
        nll = (loss + 0.001 * seed)[:, None].expand(r.n, 31).double()
        return replace(r, points={**r.points, "output": {"token_nll": nll}})

    monkeypatch.setattr(Context, "run", lambda self, request, n=None: run(request, n=n))
    v = judge(short("kv.head_aware", "correct_method", passkey=False, scales=(1.0,)), ctx, resamples=20)
    assert v.verdict == verdict, v.summary
    assert v.values["gain"] == pytest.approx(losses["streaming"] - losses["head-aware"])


def test_the_uniform_and_random_heads_plans_hold_the_head_aware_bytes() -> None:
    from collections import Counter

    import numpy as np

    from massact.kvcache import Plan
    from massact.metrics.headtypes import FULL, Budget

    ctx = context(sink_heads_gpt2(), "sinks")  # 2 layers x 4 heads x 4 KV heads
    plan = Plan("ha", ((Budget(4, 8), FULL, Budget(0, 16), Budget(4, 8)), (Budget(4, 8),) * 4), kv_heads=4)
    uniform = kv.streaming(ctx.lm, plan, sink=4, length=32)
    assert {b.label() for row in uniform.budgets for b in row} == {"sink 4 + window 11"}  # 120 entries / 8 heads
    t = np.arange(33)
    assert ((uniform.entries(t) <= plan.entries(t)) & (plan.entries(t) < uniform.entries(t) + 8)).all()
    # grouped-query attention: whole KV heads' rows (their query heads' budgets) are dealt, the pruned heads too
    prune, a, b, c = Budget(prune=True), Budget(4, 8), Budget(0, 2), Budget(4, 30)
    gqa = Plan("gqa", ((a, prune, b, b), (c, FULL, a, a), (prune, prune, b, c)), kv_heads=2)
    rows = lambda p, layers=range(3): Counter(p.budgets[l][k * 2:k * 2 + 2] for l in layers for k in range(2))  # noqa: E731
    kv_budgets = lambda p: Counter(x for l in range(3) for x in p.kv_budgets(l))  # noqa: E731
    deals = [kv.shuffled(gqa, seed=s) for s in range(20)]
    for d in deals:
        assert rows(d) == rows(gqa) and kv_budgets(d) == kv_budgets(gqa) and d.entries(40) == gqa.entries(40)
    assert len({d.budgets for d in deals}) > 10
    # layers of different reach (sliding and global) keep their own rows: the bytes stay the same
    sliding = Plan("s", gqa.budgets, 2, reach=(8, None, 8))
    for s in range(10):
        d = kv.shuffled(sliding, seed=s)
        assert rows(d, [1]) == rows(gqa, [1])
        assert (d.entries(t) == sliding.entries(t)).all()


def test_passkey_prompts_out_of_every_heads_reach_are_not_run(monkeypatch) -> None:
    """A prompt whose needle no head still holds when the question is read cannot reach the needle by
    construction: it is not run (None), and a policy that reaches no prompt runs nothing."""
    from types import SimpleNamespace

    from massact.checks.kv import HeadAwareParams
    from massact.kvcache import Plan
    from massact.metrics.headtypes import Budget
    from massact.requests import Needle, Passkey

    ctx = context(sink_heads_gpt2(), "sinks")
    ctx = replace(ctx, lm=replace(ctx.lm, tokenizer=SimpleNamespace(decode=lambda row: "".join(map(chr, row)))))
    needles = [Needle(0, 0.1, "11111", [], (2, 5), 30), Needle(0, 0.5, "22222", [], (10, 14), 30),
               Needle(1, 0.9, "33333", [], (25, 28), 30)]
    monkeypatch.setattr(Passkey, "layout", lambda self, lm, corpus: needles)
    ran = []

    def run(self, request, n=None):  # every prompt run answers "33333 is"
        ran.append((request.intervention.plan.name, request.source.only))
        return SimpleNamespace(points={"output": {"generated": torch.tensor([list(map(ord, "33333 is"))] * n)}})

    monkeypatch.setattr(Context, "run", run)
    windowed = Plan("w", ((Budget(4, 4),) * 4,) * 2, 4)  # at position 30: keys 0-3 and 26-29
    blind = Plan("b", ((Budget(0, 2),) * 4,) * 2, 4)  # keys 28-29
    prompts, got = kv._passkey(ctx, {"windowed": windowed, "blind": blind},
                               HeadAwareParams(method="correct_method", length=32))
    assert prompts == needles
    assert got == {"windowed": [False, None, True], "blind": [None, None, None]}
    assert ran == [("w", (0, 2))]


def test_passkey_probe_end_to_end_on_a_tiny_model(monkeypatch) -> None:
    """The probe on 256-token prompts (a character tokenizer, a tiny Llama of 512 positions): the full
    cache runs all 50 prompts (5 depths in each of the 10 held-out documents); a plan of sink 4 + window
    60 runs exactly those whose needle ends within 60 tokens of the question, and says which cannot
    reach the needle by construction."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from builders import char_tokenizer
    from massact.kvcache import Plan
    from massact.metrics.headtypes import Budget
    from massact.requests import Passkey

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4,
                                         num_key_value_heads=2, intermediate_size=64, max_position_embeddings=512,
                                         vocab_size=100, attn_implementation="eager")).eval()
    lm = LoadedModel(spec="tl", name="tl", model=model, tokenizer=char_tokenizer(), adapter=adapter_for(model.config),
                     dtype="float32", device="cpu")
    monkeypatch.setattr(kv, "head_aware", lambda lm, classes, mapping, scale=1.0: Plan.uniform(
        "w60", Budget(4, 60), layers=2, heads=4, kv_heads=2))
    ctx = Context(lm, load_corpus(CorpusSettings(seqlen=16)), Engine(batch_size=4), n=4)
    v = judge(short("kv.head_aware", "documented_method", length=256, chunk=64, random_draws=2), ctx, resamples=20)
    prompts = Passkey(256).layout(lm, ctx.corpus)
    near = [q.needle[1] > q.question - 60 for q in prompts]
    got = v.details["passkey"]
    assert len(prompts) == got["full"]["run"] == 50 and got["head-aware"]["run"] == sum(near) and 0 < sum(near) < 50
    assert [x["answered"] != kv.UNREACHABLE for x in got["head-aware"]["per_prompt"]] == near
    assert "passkey.full" in v.values and "passkey.head-aware" in v.values
    assert v.figures[-1]["categories"][0] == "5%" and len(v.figures[-1]["categories"]) == 5


def test_sequences_longer_than_the_models_context_are_invalid() -> None:
    v = judge(record("heads.sink_share", "whole_sequence"), context(sink_heads_gpt2(), "sinks"))
    assert v.verdict == "invalid" and "reads at most 32 tokens; the claim reads sequences of 2048" in v.reason


def test_a_plan_that_frees_nothing_is_invalid(monkeypatch) -> None:
    """Under multi-query attention one query head that needs the whole cache keeps it for its KV
    head's other query heads: where that holds everywhere, nothing is compressed and there is
    nothing to compare with a uniform cache of equal bytes. The size is what the model's own cache
    holds: a sliding layer (Gemma 3's) keeps only the keys its window still sees."""
    from massact.kvcache import full_plan

    monkeypatch.setattr(kv, "head_aware", lambda lm, classes, mapping, scale=1.0: full_plan(
        layers=lm.n_layers, heads=lm.adapter.n_heads(lm.config), kv_heads=lm.adapter.n_kv_heads(lm.config),
        reach=kv._reach(lm)))
    ctx = context(sink_heads_gpt2(), "sinks")
    v = judge(short("kv.head_aware", "correct_method", passkey=False, scales=(1.0,)), ctx, resamples=20)
    assert v.verdict == "invalid" and "keeps the whole cache on sinks: 8 of 8 query heads" in v.reason, v.reason
    assert "256 of the 256 KV entries the model's own cache holds after 32 tokens (2 layers x 32" in v.reason
    assert ctx.engine.n_passes == 1  # the statistics pass only: no cache was evaluated
    gemma = judge(short("kv.head_aware", "correct_method", passkey=False, scales=(1.0,)),
                  context(tiny_model("gemma3"), "gemma"), resamples=20)  # layer 0 slides (window 8), 1 KV head
    assert gemma.verdict == "invalid", gemma.reason
    assert ("39 of the 39 KV entries the model's own cache holds after 32 tokens (1 global layers x 32 + 1 sliding "
            "layers x 7, the keys their windows still see, per KV head; 0.0 MiB") in gemma.reason


def test_sliding_layers_are_named_where_the_sinks_are_out_of_their_reach() -> None:
    from massact.checks.headtypes import sliding_note

    model = tiny_model("gemma3")  # layer 0 slides with a window of 8, layer 1 is global
    lm = LoadedModel(spec="g", name="g", model=model, tokenizer=None, adapter=adapter_for(model.config),
                     dtype="float32", device="cpu")
    assert sliding_note(lm, 32) == ("; 1 of 2 layers slide (window 8): on passes of 32 tokens their queries from "
                                    "token 8 on cannot see the first tokens")
    assert sliding_note(lm, 8) == ""  # every query of an 8-token pass reaches the first token
    gpt2 = tiny_model("gpt2")
    assert sliding_note(replace(lm, model=gpt2, adapter=adapter_for(gpt2.config)), 32) == ""
