"""One command for the harness's cost ratios on whatever device is present (a GPU when there is one).

    python benchmarks/ratios.py [--model SPEC | --shape NAME] [--dtype DTYPE] [--out ratios.json] [--no-memory]
    python benchmarks/ratios.py --shape NAME --save DIR    a random-weight model of that shape as a model folder

Without a model on the machine (no weights package, no hub), it builds SmolLM2-135M's architecture
with random weights: the timings are those of the real model; the verdicts are not. ``--shape``
builds one of SHAPES with random weights directly (``llama-1b``: Llama 3.2 1B's blocks with SmolLM2's
vocabulary, 1.07B parameters). It prints, as ratios measured side by side: a capture pass (top-3 and
median of every block output) against a plain forward at 128 and 1024 tokens (``--tokens``); the
head statistics pass against an eager forward at 2048 (``--long``); decoding after a 2048-token
prompt with a head-aware-shaped cache against the full cache; the peak memory at batch 4 of the
capture pass against a bare forward (128 and 1024 tokens) and of the head statistics pass against an
eager forward (2048 tokens) (on a CPU the resident set's high-water mark, each in fresh processes;
on a GPU the allocator's, reset in this process); how long each way of taking the exact median of a
block output takes; and, on a GPU, that a planted model gives the
CPU's verdicts in float32, and that float16's overflow is reported in float16.
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
from massact.models import DTYPES, LoadedModel, load  # noqa: E402
from massact.requests import RepeatedRandom, want  # noqa: E402
from massact.runners.decode import run_generate  # noqa: E402
from massact.runners.forward import eager_attention  # noqa: E402


# Llama-architecture shapes timed with random weights; all use SmolLM2's vocabulary, so its tokenizer fits
SHAPES = {
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, rope_theta=100000.0),
    # Llama 3.2 1B's blocks (1.07B parameters with this vocabulary)
    "llama-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                     num_key_value_heads=8, rope_theta=500000.0),
    # for checking the benchmarks themselves on a CPU (tests/test_gpu_bench.py, benchmarks/gpu.sh --dry-run)
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, rope_theta=10000.0),
}


def shaped(shape: str, device: str, dtype: str = "float32") -> LoadedModel:
    """A Llama of SHAPES[shape] with random weights (seed 0), built on ``device`` in ``dtype``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=49152, max_position_embeddings=8192, tie_word_embeddings=True, **SHAPES[shape])
    torch.manual_seed(0)
    with torch.device(device):  # initialised where it runs: a 1B model's float32 init on a CPU takes a while
        model = LlamaForCausalLM(config)
    model = model.to(DTYPES[dtype]).eval()
    return LoadedModel(spec=f"{shape}-shaped", name=f"{shape}-shaped (random weights)", model=model,
                       tokenizer=None, adapter=adapter_for(config), dtype=dtype, device=device)


def save(lm: LoadedModel, directory: Path) -> None:
    """``lm`` as a model folder massact loads (``--model DIR``), with SmolLM2-135M's tokenizer."""
    lm.model.save_pretrained(directory)
    load("smollm2-135m").tokenizer.save_pretrained(directory)


def timed(fn) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t


def paired(fn, base, rounds: int) -> float:
    """The median over ``rounds`` of fn's time over base's, each round timing the two back to back (after
    one untimed call of each): a machine whose speed drifts during the benchmark moves both alike."""
    fn(), base()
    return statistics.median(timed(fn) / timed(base) for _ in range(rounds))


def ratios(lm: LoadedModel, *, tokens: tuple[int, ...] = (128, 1024), long: int = 2048, rounds: int = 7) -> dict:
    """Each pass's time over its baseline's (medians of ``rounds`` paired rounds; 3 at ``long`` tokens): capture
    at each of ``tokens`` (3 batches of 4 at the shortest, one batch at the others), head statistics and decoding
    at ``long``."""
    corpus = load_corpus(CorpusSettings())
    out = {}
    for T in tokens:
        n = 12 if T == min(tokens) else 4
        source = RepeatedRandom(T, repeats=1, samples=n)
        ids = source.tokens(lm, corpus).to(lm.device)

        def plain():
            with torch.no_grad():
                for i in range(0, n, 4):
                    lm.model.base_model(input_ids=ids[i:i + 4])

        out[f"capture_{T}"] = round(paired(lambda: Engine(batch_size=4).run(lm, corpus, PROFILE.on(source), n=n),
                                           plain, rounds), 3)
    from massact.checks.headtypes import HEAD_PROFILE

    source = RepeatedRandom(long, repeats=1, samples=1)
    ids = source.tokens(lm, corpus).to(lm.device)

    def eager():
        with eager_attention(lm.model, True), torch.no_grad():
            lm.model.base_model(input_ids=ids)

    out[f"head_statistics_{long}"] = round(paired(lambda: Engine(batch_size=1).run(
        lm, corpus, want("attn.*", *HEAD_PROFILE).on(source), n=1), eager, min(rounds, 3)), 3)
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


# (what, against what): the capture pass against a plain forward (at each of --tokens), and the head statistics
# pass (eager attention, the reducers of attention_profile) against an eager forward (at --long)
PEAK_PAIRS = (("capture", "bare"), ("head_statistics", "bare_eager"))


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


def peaks(lm: LoadedModel, model_args: list[str], *, tokens: tuple[int, ...], long: int, repeats: int = 3) -> dict:
    """Each run of PEAK_PAIRS, with the memory of the loaded model alone. On a GPU in this process (the
    allocator's high-water mark is reset before each); on a CPU in fresh processes started with
    ``model_args`` (a resident set's high-water mark never comes down), the median of ``repeats`` processes
    each, since the peaks vary by ~100 MiB run to run."""
    def one(what: str, T: int) -> float:
        if lm.device == "cuda":
            return peak(lm, what, T)
        return statistics.median(json.loads(subprocess.run(
            [sys.executable, __file__, *model_args, "--peak", what, "--peak-tokens", str(T)], check=True,
            capture_output=True, text=True).stdout.splitlines()[-1]) for _ in range(repeats))

    out = {"loaded_mib": round(one("loaded", min(tokens)), 1)}
    for what, against in PEAK_PAIRS:
        for T in tokens if what == "capture" else (long,):
            got, base = one(what, T), one(against, T)
            out[f"{what}_{T}"] = {"mib": round(got, 1), f"{against}_mib": round(base, 1), "ratio": round(got / base, 3)}
    return out


def median_kernels(lm: LoadedModel, tokens: int, rounds: int) -> dict:
    """Milliseconds (medians of ``rounds``) of the exact lower median of |a| for one block output at batch 4,
    each way torch offers it: which the capture pass should use on this device (massact.reducers.lower_median)."""
    from massact.reducers import lower_median, radix_lower_median

    g = torch.Generator(lm.device).manual_seed(0)
    x = torch.randn(4, tokens * lm.hidden_size, device=lm.device, generator=g).abs()
    k = (x.shape[1] - 1) // 2
    ways = {"lower_median": lambda: lower_median(x), "radix": lambda: radix_lower_median(x),
            "torch.median": lambda: x.median(dim=1).values, "kthvalue": lambda: x.kthvalue(k + 1, dim=1).values,
            "sort": lambda: x.sort(dim=1).values[:, k]}
    want = ways["torch.median"]()
    out = {}
    for name, fn in ways.items():
        if not torch.equal(fn(), want):
            out[name] = "differs from torch.median"
            continue
        out[name] = round(1000 * statistics.median(timed(fn) for _ in range(rounds)), 3)
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m",
                    help="a --model spec; when it is not on this machine, its architecture with random weights")
    ap.add_argument("--shape", choices=sorted(SHAPES), default=None,
                    help="time a Llama of this shape with random weights instead of loading --model")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    ap.add_argument("--tokens", type=int, nargs="+", default=[128, 1024], help="capture at these lengths")
    ap.add_argument("--long", type=int, default=2048, help="head statistics and the decoding prompt at this length")
    ap.add_argument("--rounds", type=int, default=7, help="paired rounds per ratio (3 at most at --long)")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    ap.add_argument("--no-planted", action="store_true", help="on a GPU, skip comparing a planted model's verdicts")
    ap.add_argument("--save", type=Path, default=None, metavar="DIR",
                    help="with --shape: write that random-weight model as a model folder (SmolLM2's tokenizer), "
                         "and stop")
    ap.add_argument("--peak", choices=("loaded", "bare", "bare_eager", "capture", "head_statistics"),
                    help=argparse.SUPPRESS)  # one run of peaks(), in its own process
    ap.add_argument("--peak-tokens", type=int, default=128, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.save and not args.shape:
        ap.error("--save needs --shape: it writes a random-weight model of that shape")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.shape:
        lm = shaped(args.shape, device, args.dtype)
    else:
        try:
            lm = load(args.model, dtype=args.dtype, device=device)
        except MassactError as e:
            if args.peak is None:
                print(f"{args.model} is not on this machine ({e}); timing its architecture with random weights")
            lm = shaped("smollm2-135m", device, args.dtype)
    if args.save:
        save(lm, args.save)
        print(f"{args.save}: {lm.name}, {sum(p.numel() for p in lm.model.parameters()) / 1e9:.2f}B parameters")
        return 0
    if args.peak:
        print(json.dumps(peak(lm, args.peak, args.peak_tokens)))
        return 0
    tokens = tuple(args.tokens)
    report = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "model": lm.name,
              "dtype": args.dtype, "parameters": sum(p.numel() for p in lm.model.parameters()),
              "torch": torch.__version__, "ratios": ratios(lm, tokens=tokens, long=args.long, rounds=args.rounds)}
    report["median_ms"] = {T: median_kernels(lm, T, args.rounds) for T in tokens}
    if not args.no_memory:
        model_args = ["--shape", args.shape] if args.shape else ["--model", args.model]
        report["peak_memory"] = peaks(lm, [*model_args, "--dtype", args.dtype], tokens=tokens, long=args.long)
    if device == "cuda" and not args.no_planted:
        report["cpu_vs_gpu"] = same_verdicts(device)
    print(json.dumps(report, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
