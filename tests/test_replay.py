"""benchmarks/replay.py: the plain loops it times compute what the harness's passes compute, and it
replays every kind of pass a run's log lists."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from builders import tiny_model
from massact.arch import adapter_for
from massact.corpus import CorpusSettings, load_corpus
from massact.engine import Engine
from massact.interventions import PruneHeads
from massact.kvcache import KVPolicy, full_plan
from massact.models import LoadedModel
from massact.requests import KV_POINT, LOSS_POINT, TEXT, Request, want
from massact.runners.decode import run_decode, run_generate
from massact.runners.forward import run_forward, token_nll

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import replay  # noqa: E402


def _lm(arch: str) -> LoadedModel:
    model = tiny_model(arch)
    return LoadedModel(spec=arch, name=arch, model=model, tokenizer=None, adapter=adapter_for(model.config),
                       dtype="float32", device="cpu")


def _ids(n: int, t: int) -> torch.Tensor:
    return torch.randint(0, 100, (n, t), generator=torch.Generator().manual_seed(0))


def _full(lm: LoadedModel) -> KVPolicy:
    a = lm.adapter
    return KVPolicy(full_plan(layers=lm.n_layers, heads=a.n_heads(lm.config), kv_heads=a.n_kv_heads(lm.config)))


@pytest.mark.parametrize("arch", ["gpt2", "gpt_neox", "llama", "gemma3"])
def test_the_plain_loops_compute_what_the_passes_compute(arch) -> None:
    lm, ids = _lm(arch), _ids(3, 32)
    quiet = lambda s: None  # noqa: E731
    options = {"chunk": 7, "start": 9, "checkpoints": (9, 16, 32)}
    p = {"batch_size": 2, "options": options, "loss": True, "eager": False, "resumed_at": None}
    harness = run_decode(lm, ids, {LOSS_POINT: frozenset({"loss"})}, _full(lm), eager=False, batch_size=2,
                         progress=quiet, **options)[LOSS_POINT]["loss"]
    plain = replay.plain_decode(lm, ids, p)
    with torch.no_grad():  # the whole sequence at once, no cache: the loss from position 9 on
        whole = token_nll(lm.model(input_ids=ids).logits[:, 8:-1], ids[:, 9:]).double().mean(1)
    assert torch.allclose(harness, whole, atol=1e-5) and torch.allclose(plain, whole, atol=1e-5)

    gen = {"batch_size": 2, "options": {"chunk": 7, "new_tokens": 5}}
    harness = run_generate(lm, ids[:, :20], {LOSS_POINT: frozenset({"generated"})}, _full(lm), eager=False,
                           batch_size=2, progress=quiet, chunk=7, new_tokens=5)[LOSS_POINT]["generated"]
    assert torch.equal(replay.plain_generate(lm, ids[:, :20], gen), harness)
    shared = ids[:, :20].clone()
    shared[1, :12], shared[2, :6] = shared[0, :12], shared[1, :6]  # prompts that share their first tokens
    gen["options"]["shared_prefix"] = True
    harness = run_generate(lm, shared, {LOSS_POINT: frozenset({"generated"})}, _full(lm), eager=False,
                           batch_size=2, progress=quiet, chunk=7, new_tokens=5, shared_prefix=True)
    assert torch.equal(replay.plain_generate(lm, shared, gen), harness[LOSS_POINT]["generated"])

    harness = run_forward(lm, ids, {LOSS_POINT: frozenset({"loss"})}, want("block.0", "median").intervention,
                          eager=False, batch_size=2, progress=quiet)[LOSS_POINT]["loss"]
    assert torch.allclose(replay.plain_forward(lm, ids, p), harness, atol=1e-6)


def test_every_kind_of_pass_in_a_runs_log_is_replayed() -> None:
    lm = _lm("llama")
    corpus = load_corpus(CorpusSettings(seqlen=16))
    engine = Engine(batch_size=2)
    engine.inputs[(lm.spec, TEXT.key(corpus))] = _ids(4, 16)
    profile = want("block.*", "top_abs", "median") | want(LOSS_POINT, "loss")
    engine.run(lm, corpus, profile | want("block.*", "resume"), n=4)
    engine.run(lm, corpus, profile.under(PruneHeads(((1, 0),))), n=4)  # resumed at block 1
    engine.run(lm, corpus, want("attn.*", "entropy"), n=4)
    options = (("chunk", 8), ("start", 4), ("checkpoints", (4, 16)))
    engine.run(lm, corpus, Request(stats=frozenset({(LOSS_POINT, "loss")}), mode="decode",
                                   intervention=_full(lm), options=options), n=4)
    engine.run(lm, corpus, Request(stats=frozenset({(KV_POINT, "tokens_per_second")}), mode="generate",
                                   intervention=_full(lm), options=(("chunk", 8), ("new_tokens", 3))), n=4)
    control = {**engine.log[0], "model": "llama#random-init"}  # fresh weights: replayed on the model itself
    doc = {"passes": [*engine.log, control], "wall_seconds": engine.seconds * 1.5, "pass_seconds": engine.seconds}
    got = replay.replay(doc, models={lm.spec: lm})
    assert sorted(got["per_kind"]) == ["llama: decode", "llama: eager forward", "llama: forward +loss",
                                       "llama: forward resumed +loss", "llama: generate"]
    assert [k["passes"] for k in got["per_kind"].values()] == [1, 1, 2, 1, 1]
    assert all(k["plain_s"] > 0 for k in got["per_kind"].values())
    assert got["wall_to_plain"] == pytest.approx(got["passes_to_plain"] * 1.5, rel=0.01)
    with pytest.raises(SystemExit, match="lists no passes"):
        replay.replay({"passes": [], "wall_seconds": 1.0, "pass_seconds": 0.0})
