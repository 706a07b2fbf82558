"""A whole claims run against the plain forward passes its claims need, replayed without the harness.

    python benchmarks/replay.py [RESULTS_JSON] [--model SPEC] [-k EXPR] [--out replay.json]

Without RESULTS_JSON it first runs ``pytest claims/ --model SPEC`` (smollm2-135m) on this machine,
its report in reports/ as any run's, then replays that run. A replay runs every pass the run's
results.json lists (schema 4) as plain code would: no hooks, no statistics, no checks, on random
token ids of the same shape (what a pass costs does not depend on which tokens it reads):

- a teacher-forced pass: the model's forward over the same batches; the output head and the
  log-softmax only where the pass read the loss; eager attention where it read attention; a pass
  the harness resumed at block l runs blocks l.. only (prefix reuse is part of what the claims
  need, recomputing the blocks before l is not);
- a decode pass: the same chunks through the model with transformers' own cache (every entry
  kept), the log-probabilities of the tokens the loss reads and no others;
- a generation: the prompt in the same chunks, the next-token logits of its last position, then
  the same number of greedy tokens.

It prints, per kind of pass and in all, the harness's seconds against the replay's, and the run's
wall time (model loading, checks, bootstrap and report included) against the replay's total.
"""
from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

from massact.models import LoadedModel, load
from massact.report.results import read_results
from massact.runners.decode import shared_tokens
from massact.runners.forward import eager_attention, resumed, token_nll

ROOT = Path(__file__).resolve().parent.parent


def claims_run(model: str, keyword: str | None) -> Path:
    """Run the claims on ``model``; the results.json it wrote."""
    report_dir = ROOT / "reports"
    before = set(report_dir.glob("*/results.json"))
    cmd = [sys.executable, "-m", "pytest", "claims/", "--model", model, "--report-dir", str(report_dir), "-q",
           "-p", "no:cacheprovider", *(["-k", keyword] if keyword else [])]
    print("running", " ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=False)  # refuted claims fail their tests: the run is still whole
    found = sorted(set(report_dir.glob("*/results.json")) - before)
    if not found:
        raise SystemExit(f"the claims run wrote no results.json under {report_dir}")
    return found[-1]


def plain_forward(lm: LoadedModel, ids: torch.Tensor, p: dict) -> torch.Tensor | None:
    """The pass as a hand-written loop; the mean next-token NLL per sample where it read the loss."""
    loss = p["loss"] and lm.adapter.is_decoder
    model = lm.model if loss else lm.model.base_model
    layer, state, losses = p["resumed_at"], {}, []
    with torch.no_grad(), eager_attention(lm.model, p["eager"]), resumed(lm.model, lm.adapter, layer, state):
        for i in range(0, len(ids), p["batch_size"]):
            b = ids[i:i + p["batch_size"]]
            if layer:
                state["states"] = torch.zeros(*b.shape, lm.hidden_size, dtype=lm.model.dtype, device=lm.device)
            out = model(input_ids=b)
            if loss:
                losses.append(token_nll(out.logits[:, :-1], b[:, 1:]).double().mean(1))
    return torch.cat(losses) if losses else None


def plain_decode(lm: LoadedModel, ids: torch.Tensor, p: dict) -> torch.Tensor:
    """The same chunks through transformers' own cache; the mean NLL per sample of the tokens the loss reads."""
    o = p["options"]
    chunk, start, T = o.get("chunk", 512), o.get("start", 1), ids.shape[1]
    cuts = sorted({*range(chunk, T, chunk), *o.get("checkpoints", ()), T})
    losses = []
    with torch.no_grad():
        for i in range(0, len(ids), p["batch_size"]):
            x, cache, at, read = ids[i:i + p["batch_size"]], None, 0, []
            for cut in cuts:
                lo, hi = max(at, start - 1), min(cut, T - 1)  # positions whose next token the loss reads
                if hi > lo:
                    out = lm.model(input_ids=x[:, at:cut], past_key_values=cache, use_cache=True,
                                   logits_to_keep=cut - lo)
                    read.append(token_nll(out.logits[:, :hi - lo], x[:, lo + 1:hi + 1]))
                else:
                    out = lm.model.base_model(input_ids=x[:, at:cut], past_key_values=cache, use_cache=True)
                cache, at = out.past_key_values, cut
            losses.append(torch.cat(read, dim=1).double().mean(1))
    return torch.cat(losses)


def plain_generate(lm: LoadedModel, ids: torch.Tensor, p: dict) -> torch.Tensor:
    """The prompt in the same chunks through transformers' own cache, then greedy tokens; (N, new_tokens).
    With ``shared_prefix`` the prompts go one at a time, the tokens a prompt shares with the next fed
    once into a cache both start from, as the harness does."""
    o = p["options"]
    chunk, T, shared = o.get("chunk", 512), ids.shape[1], o.get("shared_prefix", False)
    generated, base, fed = [], None, 0
    step = 1 if shared else p["batch_size"]
    with torch.no_grad():
        for i in range(0, len(ids), step):
            x, cache, at = ids[i:i + step], None, 0
            if shared:
                if i and fed > shared_tokens(ids[i - 1], ids[i]):
                    base, fed = None, 0
                share = min(shared_tokens(ids[i], ids[i + 1]), T - 1) if i + 1 < len(ids) else 0
                for a in range(fed, share, chunk):
                    base = lm.model.base_model(input_ids=x[:, a:min(a + chunk, share)], past_key_values=base,
                                               use_cache=True).past_key_values
                fed = max(fed, share)
                cache, at = copy.deepcopy(base), fed
            starts = range(at, T, chunk)
            for a in starts[:-1]:
                cache = lm.model.base_model(input_ids=x[:, a:a + chunk], past_key_values=cache,
                                            use_cache=True).past_key_values
            out = lm.model(input_ids=x[:, starts[-1]:], past_key_values=cache, use_cache=True, logits_to_keep=1)
            steps = [out.logits[:, -1].argmax(-1)]
            for _ in range(o.get("new_tokens", 8) - 1):
                out = lm.model(input_ids=steps[-1][:, None], past_key_values=out.past_key_values, use_cache=True,
                               logits_to_keep=1)
                steps.append(out.logits[:, -1].argmax(-1))
            generated.append(torch.stack(steps, dim=1))
    return torch.cat(generated)


PLAIN = {"forward": plain_forward, "decode": plain_decode, "generate": plain_generate}


def kind(p: dict) -> str:
    if p["mode"] != "forward":
        return p["mode"]
    return ("eager forward" if p["eager"] else "forward") + (" resumed" if p["resumed_at"] else "") + \
        (" +loss" if p["loss"] else "")


def replay(doc: dict, models: dict[str, LoadedModel] | None = None) -> dict:
    """Every pass of ``doc`` (a results document) replayed plain, timed; ``models``: spec -> loaded model,
    for those already loaded (the others load here)."""
    passes = doc.get("passes")
    if not passes:
        raise SystemExit("this results.json lists no passes: it comes from a run before schema 4, or ran none")
    models = dict(models or {})
    per = defaultdict(lambda: {"passes": 0, "harness_s": 0.0, "plain_s": 0.0})
    g = torch.Generator().manual_seed(0)
    for n, p in enumerate(passes, 1):
        if p["model"] not in models:  # a control with fresh weights ("#random-init") costs what its model does
            models[p["model"]] = models.get(p["model"].split("#")[0]) or load(p["model"].split("#")[0])
        lm = models[p["model"]]
        ids = torch.randint(0, int(lm.config.vocab_size), (p["samples"], p["tokens"]), generator=g).to(lm.device)
        t = time.perf_counter()
        PLAIN[p["mode"]](lm, ids, p)
        plain = time.perf_counter() - t
        k = per[f"{lm.name}: {kind(p)}"]
        k["passes"] += 1
        k["harness_s"] += p["seconds"]
        k["plain_s"] += plain
        print(f"[{n}/{len(passes)}] {p['pass']} ({kind(p)}, {p['samples']} x {p['tokens']}): harness "
              f"{p['seconds']:.1f} s, plain {plain:.1f} s", flush=True)
    plain_total = sum(k["plain_s"] for k in per.values())
    return {"wall_s": doc["wall_seconds"], "pass_s": doc["pass_seconds"], "plain_s": round(plain_total, 3),
            "wall_to_plain": round(doc["wall_seconds"] / plain_total, 3),
            "passes_to_plain": round(doc["pass_seconds"] / plain_total, 3),
            "per_kind": {name: {**k, "harness_s": round(k["harness_s"], 3), "plain_s": round(k["plain_s"], 3),
                                "ratio": round(k["harness_s"] / max(k["plain_s"], 1e-9), 3)}
                         for name, k in sorted(per.items())}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", nargs="?", type=Path, help="a run's results.json (default: run the claims first)")
    ap.add_argument("--model", default="smollm2-135m", help="the model of the run made without RESULTS_JSON")
    ap.add_argument("-k", dest="keyword", help="pytest's -k for the run made without RESULTS_JSON")
    ap.add_argument("--out", type=Path, help="also write the figures here as JSON")
    args = ap.parse_args()
    path = args.results or claims_run(args.model, args.keyword)
    doc = read_results(path)
    got = {"run": str(path), "device": "cuda" if torch.cuda.is_available() else "cpu", **replay(doc)}
    width = max(len(name) for name in got["per_kind"])
    print(f"\n{'kind of pass':<{width}}  passes  harness s  plain s  ratio")
    for name, k in got["per_kind"].items():
        print(f"{name:<{width}}  {k['passes']:>6}  {k['harness_s']:>9.1f}  {k['plain_s']:>7.1f}  {k['ratio']:>5.2f}x")
    print(f"\nseconds in passes {got['pass_s']:.1f} / plain {got['plain_s']:.1f} = {got['passes_to_plain']:.3f}x")
    print(f"whole run (wall)  {got['wall_s']:.1f} / plain {got['plain_s']:.1f} = {got['wall_to_plain']:.3f}x")
    if args.out:
        args.out.write_text(json.dumps(got, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
