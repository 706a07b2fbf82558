"""The engine: requests merge into few passes, a pass serves any request it covers, and the
numbers do not depend on how the passes were cut."""
from __future__ import annotations

import dataclasses
import re

import pytest
import torch

from builders import SUPPORTED_ARCHS, tiny_model
from massact.arch import adapter_for
from massact.corpus import CorpusSettings, load_corpus
from massact.engine import Engine, pass_flops
from massact.errors import CorpusError
from massact.interventions import PruneHeads, SetActivations, ZeroMLP
from massact.models import LoadedModel
from massact.requests import LOSS_POINT, TEXT, Prompt, RepeatedRandom, Request, want

N, T = 6, 16
PROFILE = want("block.*", "top_abs", "median")
TOKENS = want("block.*", "token_max")


class _Chars:
    """One id per character, inside the tiny models' vocabulary of 100."""

    bos_token_id = 0

    def __call__(self, text, add_special_tokens=False, return_tensors=None, verbose=True):
        ids = [ord(c) % 100 for c in text]
        return {"input_ids": torch.tensor([ids]) if return_tensors == "pt" else ids}


def _engine_on(arch: str):
    """A tiny model of ``arch``, the corpus settings, an engine over N fixed samples, and its progress lines."""
    model = tiny_model(arch)
    lm = LoadedModel(spec=arch, name=arch, model=model, tokenizer=_Chars(), adapter=adapter_for(model.config),
                     dtype="float32", device="cpu")
    corpus = load_corpus(CorpusSettings(seqlen=T))
    lines: list[str] = []
    engine = Engine(batch_size=4, progress=lambda line, level="update": lines.append(line))
    engine.inputs[(lm.spec, TEXT.key(corpus))] = torch.randint(0, 100, (N, T),
                                                                generator=torch.Generator().manual_seed(0))
    return lm, corpus, engine, lines


@pytest.fixture
def setup():
    return _engine_on("llama")[:3]


def test_requests_with_different_statistics_planned_together_share_one_pass(setup) -> None:
    lm, corpus, engine = setup
    engine.plan(lm, corpus, [(PROFILE, 4), (TOKENS, 6)])
    a = engine.run(lm, corpus, PROFILE, n=4)
    b = engine.run(lm, corpus, TOKENS, n=6)
    assert engine.n_passes == 1 and engine.samples_run == 6
    assert a.n == 4 and b.n == 6
    assert "token_max" in b.points["block.0"] and "median" in b.points["block.0"]


def test_a_pass_serves_any_request_it_covers_and_no_other(setup) -> None:
    lm, corpus, engine = setup
    engine.run(lm, corpus, PROFILE | TOKENS, n=N)
    engine.run(lm, corpus, want("block.1", "median"), n=3)
    assert engine.n_passes == 1
    engine.run(lm, corpus, want("block.1", "feature_max"), n=3)  # a statistic no pass has
    engine.run(lm, corpus, PROFILE.under(ZeroMLP()), n=3)  # another intervention
    engine.run(lm, corpus, want("attn.*", "first_excl"), n=3)  # eager attention
    assert engine.n_passes == 4


def test_only_the_passes_that_ask_for_a_statistic_compute_it(setup) -> None:
    lm, corpus, engine = setup
    profile = engine.run(lm, corpus, PROFILE, n=N)
    assert set(profile.points["block.0"]) == {"top_abs", "top_value", "top_token", "top_feature", "median"}
    assert "mlp.0.pre_act" not in profile.points and LOSS_POINT not in profile.points
    assert profile.loss is None


def test_more_samples_run_only_the_missing_ones_with_identical_numbers(setup) -> None:
    lm, corpus, engine = setup
    first = engine.run(lm, corpus, PROFILE, n=2)
    more = engine.run(lm, corpus, PROFILE, n=N)
    assert engine.n_passes == 2 and engine.samples_run == N
    whole = Engine(batch_size=3)
    whole.inputs = engine.inputs
    once = whole.run(lm, corpus, PROFILE, n=N)
    for l in range(2):
        assert torch.equal(more.stat(f"block.{l}", "top_abs"), once.stat(f"block.{l}", "top_abs"))
        assert torch.equal(first.stat(f"block.{l}", "median"), once.stat(f"block.{l}", "median")[:2])


def test_the_output_head_runs_only_for_the_loss_and_changes_no_activation(setup) -> None:
    lm, corpus, engine = setup
    loss = engine.run(lm, corpus, PROFILE | want(LOSS_POINT, "loss"), n=N)
    plain = Engine(batch_size=4)
    plain.inputs = engine.inputs
    without = plain.run(lm, corpus, PROFILE, n=N)
    assert loss.loss.shape == (N,) and torch.isfinite(loss.loss).all()
    assert torch.equal(loss.stat("block.1", "top_abs"), without.stat("block.1", "top_abs"))


def test_a_point_the_model_lacks_is_an_error_and_is_left_out_of_plans(setup) -> None:
    lm, corpus, engine = setup
    with pytest.raises(ValueError, match="mlp.9"):
        engine.run(lm, corpus, want("mlp.9.input", "full"), n=2)
    engine.plan(lm, corpus, [(want("mlp.9.input", "full"), 2), (PROFILE, 2)])
    engine.run(lm, corpus, PROFILE, n=2)  # the plan's other request still runs
    assert engine.n_passes == 1


def test_generated_sources(setup) -> None:
    lm, corpus, engine = setup
    r = engine.run(lm, corpus, want("block.0", "full").on(Prompt("abc")), n=1)
    assert r.input_ids.tolist() == [[97, 98, 99]] and r.stat("block.0", "full").shape == (1, 3, 32)
    rnd = engine.run(lm, corpus, want("block.0", "top_abs").on(RepeatedRandom(8, repeats=2, samples=3)), n=3)
    ids = rnd.input_ids
    assert ids.shape == (3, 16) and torch.equal(ids[:, :8], ids[:, 8:])
    with pytest.raises(CorpusError, match="fewer than the 4 asked for"):
        engine.run(lm, corpus, want("block.0", "top_abs").on(RepeatedRandom(8, repeats=2, samples=3)), n=4)


def test_requests_are_hashable_and_merge_only_within_one_pass() -> None:
    assert hash(PROFILE | TOKENS) == hash(TOKENS | PROFILE)
    assert (PROFILE | TOKENS).stats == PROFILE.stats | TOKENS.stats
    with pytest.raises(ValueError, match="cannot merge"):
        PROFILE | PROFILE.under(ZeroMLP())
    merged = PROFILE | want("attn.*", "entropy")  # eager attention serves both: one eager pass
    assert merged.eager and not PROFILE.eager and merged.describe() == "none +attention"
    assert Request().describe() == "none"


def test_a_planned_count_past_what_the_source_gives_is_capped(setup) -> None:
    lm, corpus, engine = setup
    few = want("block.0", "top_abs").on(RepeatedRandom(8, repeats=2, samples=3))
    engine.plan(lm, corpus, [(few, 10)])
    assert engine.run(lm, corpus, few, n=2).n == 2 and engine.samples_run == 3


def test_long_documents_and_passkey_prompts() -> None:
    from types import SimpleNamespace

    from builders import char_tokenizer
    from massact.requests import LongText, Passkey, long_documents, sentence_starts

    lm = SimpleNamespace(tokenizer=char_tokenizer(), context=4096, name="chars")
    corpus = load_corpus(CorpusSettings())
    docs = len(long_documents("statistics"))
    assert docs == len(long_documents("held_out")) == 10
    assert not set(long_documents("statistics")) & set(long_documents("held_out"))
    chunks = LongText("statistics", 48, 16).tokens(lm, corpus)
    assert chunks.shape == (3 * docs, 16)  # 3 chunks of each document's first 48 characters
    first = long_documents("statistics")[0].read_text()[:16]
    assert lm.tokenizer.decode(chunks[0]).replace(" ", "") == first.replace(" ", "")
    probe = Passkey(600, prompts=3 * docs)  # 3 depths in each document: 5%, 50% and 95%
    assert probe.depths() == pytest.approx([0.05, 0.5, 0.95])
    prompts = probe.layout(lm, corpus)
    ids = probe.tokens(lm, corpus)
    assert ids.shape == (3 * docs, 600) and len({q.key for q in prompts}) == 3 * docs
    assert all(len(q.key) == 5 for q in prompts)
    assert [(q.document, q.depth) for q in prompts[:4]] == [(0, 0.05), (0, 0.5), (0, 0.95), (1, 0.05)]
    for q, row in zip(prompts, ids):
        a, z = q.needle
        text = lm.tokenizer.decode(row[a:z]).replace(" ", "")
        assert text == f"Thesecretpasskeyis{q.key}.Rememberit:{q.key}isthepasskey."
        assert lm.tokenizer.decode(row[a - 1:a]) in (".", "!", "?")  # a sentence ends right before the needle
        assert lm.tokenizer.decode(row[q.question:]).replace(" ", "").endswith("Thesecretpasskeyis")
        filler = row[:a].tolist() + row[z:q.question].tolist()  # the document's part of the prompt
        assert a == min(sentence_starts(lm.tokenizer, filler), key=lambda i: abs(i - q.depth * len(filler)))
    assert [q.needle[0] for q in prompts[:3]] == sorted(q.needle[0] for q in prompts[:3])
    assert torch.equal(dataclasses.replace(probe, only=(4, 0)).tokens(lm, corpus), ids[[4, 0]])
    # with BOS every chunk that is a pass of its own starts with it, and the text runs on across chunks
    with_bos_corpus = dataclasses.replace(corpus, settings=dataclasses.replace(corpus.settings, bos=True))
    with_bos = LongText("statistics", 48, 16).tokens(lm, with_bos_corpus)
    assert with_bos.shape == (3 * docs, 16) and (with_bos[:, 0] == 0).all()
    text = long_documents("statistics")[0].read_text()
    assert torch.cat([with_bos[k, 1:] for k in range(3)]).tolist() == \
        lm.tokenizer(text, add_special_tokens=False)["input_ids"][:45]
    # a passkey prompt is one pass too: BOS first, the same length, the needle after it
    bos_prompts = probe.layout(lm, with_bos_corpus)
    assert all(q.ids[0] == 0 and len(q.ids) == 600 and q.needle[0] > 0 for q in bos_prompts)
    assert probe.tokens(lm, with_bos_corpus)[:, 0].eq(0).all()
    with pytest.raises(CorpusError, match="fewer than the 99999"):
        LongText("held_out", 99999, 99999).tokens(SimpleNamespace(tokenizer=lm.tokenizer, context=10**6, name="x"),
                                                   corpus)


RESUME = want("block.*", "resume")



@pytest.mark.parametrize("arch", SUPPORTED_ARCHS)
@pytest.mark.parametrize("intervention", [PruneHeads(((1, 2),)), SetActivations(((1, 3, 5, 100.0),))],
                         ids=["prune", "set"])
def test_a_pass_resumed_from_the_kept_residual_stream_equals_a_full_one(arch, intervention) -> None:
    lm, corpus, engine, lines = _engine_on(arch)
    loss = want(LOSS_POINT, "loss") if lm.adapter.is_decoder else PROFILE  # encoders have no loss
    every = PROFILE | want("mlp.*.input", "token_max") | loss
    engine.plan(lm, corpus, [(every, N), (RESUME, N)])
    base = engine.run(lm, corpus, every, n=N)
    resumed = engine.run(lm, corpus, every.under(intervention), n=N)
    assert any("resumed at block 1" in line for line in lines)
    blocks = lm.adapter.block_list(lm.model)
    assert all(type(b).__name__ != "_Skipped" for b in blocks)  # put back

    _, _, full_engine, full_lines = _engine_on(arch)
    full_engine.inputs = engine.inputs
    full = full_engine.run(lm, corpus, every.under(intervention), n=N)
    assert not any("resumed" in line for line in full_lines)
    assert resumed.points.keys() == full.points.keys()
    for point, stats in full.points.items():
        for name, value in stats.items():
            assert torch.equal(resumed.stat(point, name), value), (point, name)
    # the intervention changed block 1 and left block 0 as the baseline has it
    assert torch.equal(resumed.stat("block.0", "top_abs"), base.stat("block.0", "top_abs"))
    assert not torch.equal(resumed.stat("block.1", "top_abs"), base.stat("block.1", "top_abs"))


def test_a_pass_resumes_only_from_a_pass_that_kept_the_stream() -> None:
    lm, corpus, engine, lines = _engine_on("llama")
    engine.run(lm, corpus, PROFILE, n=N)  # nothing kept
    engine.run(lm, corpus, PROFILE.under(PruneHeads(((1, 0),))), n=N)
    assert engine.n_passes == 2 and not any("resumed" in line for line in lines)
    engine.run(lm, corpus, PROFILE.under(ZeroMLP()), n=N)  # changes block 0: never resumes
    assert PruneHeads(()).first_layer == SetActivations(()).first_layer == 0  # nothing to skip to
    engine.run(lm, corpus, PROFILE | RESUME, n=N)
    engine.run(lm, corpus, want("attn.1", "entropy").under(PruneHeads(((1, 1),))), n=N)  # eager: another pass kind
    assert not any("resumed" in line for line in lines)
    r = engine.run(lm, corpus, PROFILE.under(PruneHeads(((1, 1),))), n=N)
    assert "resumed at block 1" in lines[-1] and r.n == N
    # the pass log says what each pass ran: a replay without the harness reads it (benchmarks/replay.py)
    assert [p["resumed_at"] for p in engine.log] == [None] * 5 + [1]
    assert engine.log[-1]["intervention"] == PruneHeads(((1, 1),)).key and engine.log[-1]["samples"] == N
    assert [p["eager"] for p in engine.log] == [False] * 4 + [True, False]


def test_the_kept_stream_is_on_disk_and_read_bit_for_bit(setup) -> None:
    lm, corpus, engine = setup
    r = engine.run(lm, corpus, RESUME | want("block.1", "full"), n=N)
    kept = r.stat("block.1", "resume")
    assert kept.dtype == torch.float32 and kept.shape == (N, T, 32)
    assert torch.equal(kept, r.stat("block.1", "full"))


def test_blocks_are_put_back_when_a_resumed_pass_fails(setup) -> None:
    from massact.runners.forward import run_forward

    lm, corpus, engine = setup
    ids = engine.inputs[(lm.spec, TEXT.key(corpus))]
    blocks = list(lm.adapter.block_list(lm.model))
    with pytest.raises(ValueError, match="kept states"):  # states of the wrong width
        run_forward(lm, ids, {"block.1": frozenset({"top_abs"})}, PruneHeads(((1, 0),)), eager=False, batch_size=4,
                    progress=lambda line: None, resume=(1, torch.zeros(N, T, 7)))
    assert list(lm.adapter.block_list(lm.model)) == blocks
    assert not any(b._forward_pre_hooks for b in blocks)
    with pytest.raises(ValueError, match="does not compute"):
        run_forward(lm, ids, {"block.0": frozenset({"top_abs"})}, PruneHeads(((1, 0),)), eager=False, batch_size=4,
                    progress=lambda line: None, resume=(1, torch.zeros(N, T, 32)))


def test_progress_tells_the_plan_then_each_batch_and_each_pass() -> None:
    lm, corpus, engine, _ = _engine_on("llama")
    said: list[tuple[str, str]] = []
    engine.progress = lambda line, level="update": said.append((level, line))
    engine.batch_size = 4
    engine.plan(lm, corpus, [(PROFILE, N), (want("attn.*", "entropy"), 4)])
    engine.run(lm, corpus, PROFILE, n=N)
    engine.run(lm, corpus, PROFILE.under(ZeroMLP()), n=N)  # not announced: no second plan line
    levels = [level for level, _ in said]
    assert levels == ["plan", "update", "pass", "update", "pass"]  # a pass's last batch: its pass line
    assert said[0][1].startswith(f"llama: 2 passes planned ({N + 4} samples, {(N + 4) * T} tokens), roughly ")
    assert re.fullmatch(r"llama / none: 4/6 samples, \d+ tok/s, \d+ s left", said[1][1])
    assert said[2][1].startswith("pass 1, llama / none: 6 samples x 16 tokens in ")
    assert said[4][1].startswith("pass 2, llama / zero_mlp")


@pytest.mark.parametrize("arch", SUPPORTED_ARCHS)
def test_the_plan_s_cost_is_the_flops_torch_counts(arch) -> None:
    """pass_flops, which turns the first batch's rate into the plan's time, against torch's own count."""
    from torch.utils.flop_counter import FlopCounterMode

    lm, corpus, engine, _ = _engine_on(arch)
    ids = engine.inputs[(lm.spec, TEXT.key(corpus))]
    with_head = [(want(LOSS_POINT, "loss"), lm.model)] if lm.adapter.is_decoder else []
    for request, model in [(PROFILE, lm.model.base_model), *with_head]:
        with FlopCounterMode(display=False) as counted, torch.no_grad():
            model(input_ids=ids)
        assert pass_flops(lm, request, N, T) == pytest.approx(counted.get_total_flops(), rel=0.05), request
