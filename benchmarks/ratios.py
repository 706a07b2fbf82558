"""One command for the harness's cost ratios on whatever device is present (a GPU when there is one).

    python benchmarks/ratios.py [--model SPEC] [--out ratios.json] [--no-memory]

Without a model on the machine (no weights package, no hub), it builds SmolLM2-135M's architecture
with random weights: the timings are those of the real model; the verdicts are not. It prints, as
ratios measured side by side: a capture pass (top-3 and median of every block output) against a
plain forward at 128 and 1024 tokens; the head statistics pass against an eager forward at 2048;
decoding after a 2048-token prompt with a head-aware-shaped cache against the full cache; the peak
memory at batch 4 of the capture pass against a bare forward (128 and 1024 tokens) and of the head
statistics pass against an eager forward (2048 tokens), each in fresh processes (the resident set's
high-water mark on a CPU, the allocator's on a GPU); and, on a GPU, that a planted model gives
the CPU's verdicts in float32, and that float16's overflow is reported in float16.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from massact.arch import adapter_for  # noqa: E402
from massact.checks.base import PROFILE  # noqa: E402
from massact.corpus import CorpusSettings, load_corpus  # noqa: E402
from massact.engine import Engine  # noqa: E402
from massact.errors import MassactError  # noqa: E402
from massact.kvcache import KVPolicy, Plan, full_plan  # noqa: E402
from massact.metrics.headtypes import FULL, Budget  # noqa: E402
from massact.models import LoadedModel, load  # noqa: E402
from massact.requests import RepeatedRandom, want  # noqa: E402
from massact.runners.decode import run_generate  # noqa: E402
from massact.runners.forward import eager_attention  # noqa: E402


def smollm2_shaped(device: str) -> LoadedModel:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                         rope_theta=100000.0, tie_word_embeddings=True)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(device).eval()
    return LoadedModel(spec="smollm2-135m-shaped", name="smollm2-135m-shaped (random weights)", model=model,
                       tokenizer=None, adapter=adapter_for(config), dtype="float32", device=device)


def timed(fn) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t


def paired(fn, base, rounds: int = 7) -> float:
    """The median over ``rounds`` of fn's time over base's, each round timing the two back to back (after
    one untimed call of each): a machine whose speed drifts during the benchmark moves both alike."""
    fn(), base()
    return statistics.median(timed(fn) / timed(base) for _ in range(rounds))


def ratios(lm: LoadedModel) -> dict:
    corpus = load_corpus(CorpusSettings())
    out = {}
    for T, n in ((128, 12), (1024, 4)):
        source = RepeatedRandom(T, repeats=1, samples=n)
        ids = source.tokens(lm, corpus).to(lm.device)

        def plain():
            with torch.no_grad():
                for i in range(0, n, 4):
                    lm.model.base_model(input_ids=ids[i:i + 4])

        out[f"capture_{T}"] = round(paired(lambda: Engine(batch_size=4).run(lm, corpus, PROFILE.on(source), n=n),
                                           plain), 3)
    from massact.checks.headtypes import HEAD_PROFILE

    source = RepeatedRandom(2048, repeats=1, samples=1)
    ids = source.tokens(lm, corpus).to(lm.device)

    def eager():
        with eager_attention(lm.model, True), torch.no_grad():
            lm.model.base_model(input_ids=ids)

    out["head_statistics_2048"] = round(paired(lambda: Engine(batch_size=1).run(
        lm, corpus, want("attn.*", *HEAD_PROFILE).on(source), n=1), eager, rounds=3), 3)
    L, H, K = lm.n_layers, lm.adapter.n_heads(lm.config), lm.adapter.n_kv_heads(lm.config)
    # a head-aware-shaped plan: a third of the KV heads full, the rest sink 4 + window 24
    shaped = Plan("shaped", tuple(tuple(FULL if (h // (H // K)) % 3 == 0 else Budget(4, 24) for h in range(H))
                                  for _ in range(L)), K)
    wants = {"output": frozenset({"generated"}), "kv": frozenset({"tokens_per_second"})}
    rate = {name: float(run_generate(lm, ids, wants, KVPolicy(plan), eager=False, batch_size=1,
                                     progress=lambda s: None, new_tokens=32)["kv"]["tokens_per_second"][0])
            for name, plan in (("full", full_plan(layers=L, heads=H, kv_heads=K)), ("head-aware-shaped", shaped))}
    out["decode_tokens_per_second"] = {k: round(v, 1) for k, v in rate.items()}
    out["decode_ratio_to_full"] = round(rate["head-aware-shaped"] / rate["full"], 3)
    return out


# (what, against what, tokens): the capture pass against a plain forward, and the head statistics pass
# (eager attention, the reducers of attention_profile) against an eager forward of the same tokens
PEAK_PAIRS = (("capture", "bare", 128), ("capture", "bare", 1024), ("head_statistics", "bare_eager", 2048))


def peak(lm: LoadedModel, what: str, tokens: int) -> float:
    """MiB at this process's high-water mark while doing ``what`` on 4 samples of ``tokens`` tokens (one
    batch), counted from after the model is loaded (loading has transients of its own): "loaded" does
    nothing, "bare" a plain forward, "bare_eager" one with eager attention, "capture" the capture pass,
    "head_statistics" the head classification's pass. On a CPU the resident set's (Linux: reset through
    /proc/self/clear_refs), on a GPU the allocator's."""
    from massact.checks.headtypes import HEAD_PROFILE

    corpus = load_corpus(CorpusSettings())
    source = RepeatedRandom(tokens, repeats=1, samples=4)
    ids = source.tokens(lm, corpus).to(lm.device)
    if lm.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    if what in ("bare", "bare_eager"):
        with torch.no_grad(), eager_attention(lm.model, what == "bare_eager"):
            lm.model.base_model(input_ids=ids)
    elif what == "capture":
        Engine(batch_size=4).run(lm, corpus, PROFILE.on(source), n=4)
    elif what == "head_statistics":
        Engine(batch_size=4).run(lm, corpus, want("attn.*", *HEAD_PROFILE).on(source), n=4)
    if lm.device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0]) / 1024  # kB


def peaks(model: str, repeats: int = 3) -> dict:
    """Each run of PEAK_PAIRS in fresh processes (a high-water mark never comes down), with the memory of
    the loaded model alone; the median of ``repeats`` processes each, since the allocator's peaks vary by
    ~100 MiB run to run."""
    def one(what: str, tokens: int) -> float:
        return statistics.median(json.loads(subprocess.run(
            [sys.executable, __file__, "--model", model, "--peak", what, "--tokens", str(tokens)], check=True,
            capture_output=True, text=True).stdout.splitlines()[-1]) for _ in range(repeats))

    out = {"loaded_mib": round(one("loaded", 128), 1)}
    for what, against, tokens in PEAK_PAIRS:
        got, base = one(what, tokens), one(against, tokens)
        out[f"{what}_{tokens}"] = {"mib": round(got, 1), f"{against}_mib": round(base, 1),
                                   "ratio": round(got / base, 3)}
    return out


def same_verdicts(device: str) -> dict:
    """Planted models' verdicts on the CPU and on ``device``, float32; float16 overflow on ``device``."""
    from builders import planted_gpt2
    from massact.checks import Context
    from massact.claims import judge
    from test_planted import record

    def ctx(model, dev: str) -> Context:
        model = model.to(dev)
        lm = LoadedModel(spec=f"planted@{dev}", name="planted", model=model, tokenizer=None,
                         adapter=adapter_for(model.config), dtype="float32", device=dev)
        corpus = load_corpus(CorpusSettings(seqlen=16))
        engine = Engine(batch_size=4)
        engine.inputs[(lm.spec, corpus.key)] = torch.randint(0, 100, (8, 16), generator=torch.Generator().manual_seed(0))
        return Context(lm, corpus, engine, n=8)

    claims = ["massive.exists", "ablate.attention_all", "ablate.mlp_all", "mlp.down_proj_amplifies",
              "mlp.checkpoints", "massive.fixed_dims"]
    got = {}
    for claim in claims:
        per = {}
        for dev in ("cpu", device):
            v = judge(record(claim), ctx(planted_gpt2(layer=1, feature=40, token=3, magnitude=1000.0), dev),
                      resamples=50)
            per[dev] = (v.verdict, v.values.get(v.primary) if v.primary else None)
        got[claim] = per
    hot = planted_gpt2(layer=1, feature=40, token=3, magnitude=80000.0).half()
    try:
        judge(record("massive.exists"), ctx(hot, device))
        overflow = "not reported"
    except MassactError as e:
        overflow = f"{type(e).__name__}: {e}"
    return {"verdicts": got, "same": all(p["cpu"][0] == p[device][0] for p in got.values()),
            "float16_overflow": overflow}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--out", default=None)
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    ap.add_argument("--peak", choices=("loaded", "bare", "bare_eager", "capture", "head_statistics"),
                    help=argparse.SUPPRESS)  # one run of peaks(), in its own process
    ap.add_argument("--tokens", type=int, default=128, help=argparse.SUPPRESS)
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        lm = load(args.model, device=device)
    except MassactError as e:
        if args.peak is None:
            print(f"{args.model} is not on this machine ({e}); timing its architecture with random weights")
        lm = smollm2_shaped(device)
    if args.peak:
        print(json.dumps(peak(lm, args.peak, args.tokens)))
        return 0
    report = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "model": lm.name,
              "torch": torch.__version__, "ratios": ratios(lm)}
    if not args.no_memory:
        report["peak_memory"] = peaks(args.model)
    if device == "cuda":
        report["cpu_vs_gpu"] = same_verdicts(device)
    print(json.dumps(report, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
