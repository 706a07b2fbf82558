"""Family K: a head-aware KV cache built from the head types, against a uniform one of equal bytes (002).

The plan comes from the head statistics of the long documents' statistics part (H3); it is
judged on the held-out part: next-token loss over 2,048-token sequences (the verdict reads the
tokens from the first checkpoint on; the loss per 256-token bucket of positions is reported for
all of them) and a passkey probe. Policies, all through the same cache and attention code
(massact.kvcache), each dropping what the model's own sliding windows can no longer see:
- full: every entry the model's own cache holds (the ceiling);
- head-aware: the plan; documented mapping (the document's compressor: every head windowed,
  gathering at sink + 256, mixed at sink + 64) or correct mapping (gathering and mixed keep all).
  A KV head keeps the union of its query heads' budgets and each of them reads all of it;
- streaming: StreamingLLM's sink 4 + one window for every head, the window growing with the
  position so that the cache holds as many entries as the plan at every step (Plan.matched);
- random heads: whole KV heads' rows of the plan (their query heads' budgets, pruned heads
  included) dealt to random KV heads, ``random_draws`` times: the same KV-head budgets and bytes,
  no head knowledge. The draws are resampled with the documents.
The passkey probe runs, per policy, only the prompts where some head still holds a needle token
when the question's first token is read; the others cannot reach the needle by construction
(its only way to the answer is through later tokens' hidden states) and are counted as such,
not as a measured failure.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, replace

import torch

from massact import figures as fig
from massact.checks.base import ClaimInvalid, Condition, Context, Measurement, Outcome, check
from massact.checks.headtypes import HeadParams, classified, measure_heads, statistics_request
from massact.kvcache import KVPlanError, KVPolicy, Plan, full_plan, held, model_reach
from massact.metrics import headtypes as ht
from massact.models import LoadedModel
from massact.requests import KV_POINT, LOSS_POINT, LongText, Needle, Passkey, Request, long_documents

MAPPING = {"documented_method": "documented", "correct_method": "correct"}
UNREACHABLE = "cannot reach the needle by construction"
MIB = 2**20  # bytes; the summary and the figures say how much a cache holds in MiB
PREFILL = 512  # tokens fed to the cache at once: the peak memory and the speed, never the numbers (runners/decode.py)


def _scaled(b: ht.Budget, scale: float) -> ht.Budget:
    return b if b.window is None else replace(b, window=max(1, round(b.window * scale)))


def _reach(lm: LoadedModel) -> tuple[int | None, ...]:
    return model_reach(lm.adapter, lm.config, lm.n_layers)


def head_aware(lm: LoadedModel, classes: list, mapping: str, scale: float = 1.0) -> Plan:
    H = lm.adapter.n_heads(lm.config)
    rows = tuple(tuple(_scaled(ht.budget(classes[l * H + h], mapping=mapping), scale) for h in range(H))
                 for l in range(lm.n_layers))
    return Plan(f"head-aware:{mapping}:x{scale:g}", rows, lm.adapter.n_kv_heads(lm.config), _reach(lm))


def streaming(lm: LoadedModel, plan: Plan, *, sink: int, length: int) -> Plan:
    """Sink + one window for every head, holding as many entries as ``plan`` at every step up to ``length``."""
    try:
        return Plan.matched(f"streaming:sink{sink}+matched[{plan.name}]", plan, sink=sink, length=length)
    except KVPlanError as e:
        raise ClaimInvalid(f"no uniform sink {sink} + window cache holds as many entries as the plan at every "
                           f"position on {lm.name}: {e}") from None


def shuffled(plan: Plan, *, seed: int = 0) -> Plan:
    """The plan's KV heads' rows (their query heads' budgets) dealt to random KV heads, among layers
    with the same reach (so what the model's windows drop is the same): the same KV-head budgets,
    the same pruned query heads per KV head, the same bytes; only which heads differs."""
    r, L = plan.rep, len(plan.budgets)
    rows = {(l, k): plan.budgets[l][k * r:(k + 1) * r] for l in range(L) for k in range(plan.kv_heads)}
    rng, dealt = random.Random(seed), {}
    for reach in dict.fromkeys(plan.layer_reach(l) for l in range(L)):
        slots = [s for s in rows if plan.layer_reach(s[0]) == reach]
        deck = [rows[s] for s in slots]
        rng.shuffle(deck)
        dealt |= dict(zip(slots, deck))
    budgets = tuple(tuple(b for k in range(plan.kv_heads) for b in dealt[(l, k)]) for l in range(L))
    return Plan(f"random-heads:{plan.name}:seed{seed}", budgets, plan.kv_heads, plan.reach)


@dataclass(frozen=True, kw_only=True)
class HeadAwareParams(HeadParams):
    sink: int = 4  # the uniform policy's sink tokens, as StreamingLLM
    # the loss-vs-bytes curve: the plan's windows times these, each against a uniform cache of its bytes (two
    # decode passes per scale but 1; e.g. [0.25, 0.5, 1, 2])
    scales: tuple[float, ...] = (1.0,)
    min_gain: float = 0.0  # nats per token the head-aware plan must gain over the uniform one
    # random-heads plans, each a decode pass over the 10 held-out documents: fewer than verdict.DRAWS (20) for
    # cost. Measured on smollm2-135m on 2 CPU cores shared with another run: 100-200 s per such pass, so 10
    # draws take 20-30 min per variant, and scripts/test leaves this claim on smollm2-135m to the nightly
    random_draws: int = 10
    bucket: int = 256  # tokens per position bucket of the reported loss
    passkey: bool = True  # the retrieval probe (it needs the model's tokenizer)
    passkey_prompts: int = 50  # at least this many: depths per held-out document to reach it
    passkey_random_heads: bool = False  # the probe on the first random-heads draw too (as many prompts as the plan)

    @property
    def checkpoints(self) -> tuple[int, ...]:
        """Where the KV bytes are read; the verdict's loss is read from the first on."""
        return self.length // 4, self.length // 2, self.length

    @property
    def probe_source(self) -> Passkey:
        return Passkey(self.length, prompts=self.passkey_prompts)

    @property
    def buckets(self) -> list[tuple[int, int]]:
        return [(lo, min(lo + self.bucket, self.length)) for lo in range(0, self.length, self.bucket)]


def evaluation(plan: Plan, p: HeadAwareParams) -> Request:
    return Request(stats=frozenset({(LOSS_POINT, "token_nll"), (KV_POINT, "bytes"), (KV_POINT, "seconds")}),
                   source=LongText("held_out", p.length, p.length), mode="decode", intervention=KVPolicy(plan),
                   options=(("chunk", PREFILL), ("start", 1), ("checkpoints", p.checkpoints)))


def probe(plan: Plan, source: Passkey, p: HeadAwareParams) -> Request:
    return Request(stats=frozenset({(LOSS_POINT, "generated"), (KV_POINT, "tokens_per_second")}),
                   source=source, mode="generate", intervention=KVPolicy(plan),
                   options=(("chunk", PREFILL), ("new_tokens", 8), ("shared_prefix", True)))


def _needs(p: HeadAwareParams) -> list[Request]:
    return [statistics_request(p)]


def _frees_nothing(lm: LoadedModel, plan: Plan, whole: Plan, p: HeadAwareParams) -> str:
    L, H, K, T = lm.n_layers, lm.adapter.n_heads(lm.config), lm.adapter.n_kv_heads(lm.config), p.length
    per_entry = 2 * lm.adapter.head_dim(lm.config) * lm.model.dtype.itemsize  # a key and a value
    sliding = [r for r in whole.reach if r]
    rows = f"{L} layers x {T}" if not sliding else (
        f"{L - len(sliding)} global layers x {T} + {len(sliding)} sliding layers x "
        f"{held(ht.FULL, T, window=None, reach=sliding[0])}, the keys their windows still see")
    full_q = sum(b.full for row in plan.budgets for b in row)
    return (f"the head-aware plan ({p.method}) keeps the whole cache on {lm.name}: {full_q} of {L * H} query heads "
            f"need the full cache, and each of the {L * K} KV heads keeps what any of its {H // K} query heads needs: "
            f"{plan.entries(T):,} of the {whole.entries(T):,} KV entries the model's own cache holds after {T} "
            f"tokens ({rows}, per KV head; {whole.entries(T) * per_entry / MIB:.1f} MiB per sequence); with "
            "nothing freed there is no compression to compare with a uniform cache of equal bytes")


def _passkey(ctx: Context, plans: dict[str, Plan], p: HeadAwareParams) -> tuple[list[Needle], dict[str, list]]:
    """The prompts, and per policy and prompt whether the answer holds the key: None where the policy
    cannot reach the needle by construction (the prompt is not run)."""
    source = p.probe_source
    prompts = source.layout(ctx.lm, ctx.corpus)
    out = {}
    for name, plan in plans.items():
        reached = tuple(i for i, q in enumerate(prompts) if plan.reads(*q.needle, q.question))
        got: list[bool | None] = [None] * len(prompts)
        if reached:
            r = ctx.run(probe(plan, replace(source, only=reached), p), n=len(reached))
            for i, row in zip(reached, r.points[LOSS_POINT]["generated"].tolist()):
                got[i] = prompts[i].key in ctx.lm.tokenizer.decode(row)
        out[name] = got
    return prompts, out


@check(HeadAwareParams, needs=_needs)
def kv_head_aware(ctx: Context, p: HeadAwareParams) -> Measurement:
    """The head-aware cache has a lower next-token loss than a uniform sink + window cache of the
    same KV bytes at every step; the same budgets on random heads must not do as well."""
    per = measure_heads(ctx, p)
    _, classes = classified(per)
    lm, T = ctx.lm, p.length
    L, H, K = lm.n_layers, lm.adapter.n_heads(lm.config), lm.adapter.n_kv_heads(lm.config)
    mapping = MAPPING[p.method]
    plan = head_aware(lm, classes, mapping)
    whole = full_plan(layers=L, heads=H, kv_heads=K, reach=_reach(lm))
    if plan.entries(T) >= whole.entries(T):
        raise ClaimInvalid(_frees_nothing(lm, plan, whole, p))
    plans = {"full": whole, "head-aware": plan, "streaming": streaming(lm, plan, sink=p.sink, length=T)}
    draws = [shuffled(plan, seed=d) for d in range(p.random_draws)]
    n = len(long_documents("held_out"))
    runs = {name: ctx.run(evaluation(pl, p), n=n) for name, pl in plans.items()}
    random_runs = [ctx.run(evaluation(pl, p), n=n) for pl in draws]
    curve = {}  # scale -> (head-aware run, streaming run at its bytes)
    for s in p.scales:
        ha = plan if s == 1.0 else head_aware(lm, classes, mapping, s)
        curve[s] = (runs["head-aware"] if s == 1.0 else ctx.run(evaluation(ha, p), n=n),
                    ctx.run(evaluation(streaming(lm, ha, sink=p.sink, length=T), p), n=n))
    probed = {**plans, "random heads": draws[0]} if draws and p.passkey_random_heads else plans
    prompts, answered = _passkey(ctx, probed, p) if p.passkey else ([], {})

    c0 = p.checkpoints[0]
    nll = lambda r: r.stat(LOSS_POINT, "token_nll")  # noqa: E731  (N, T - 1), token 1 first
    scored = lambda r: nll(r)[:, c0 - 1:].mean(1)  # noqa: E731  the verdict's loss per document
    bucketed = lambda r: torch.stack([nll(r)[:, max(lo, 1) - 1:hi - 1].mean(1) for lo, hi in p.buckets],  # noqa: E731
                                     dim=1)  # (N, buckets)
    loss_doc = {name: scored(r) for name, r in runs.items()}
    bucket_doc = {name: bucketed(r) for name, r in runs.items()}
    if draws:
        loss_doc["random heads"] = torch.stack([scored(r) for r in random_runs])  # (draws, N)
        bucket_doc["random heads"] = torch.stack([bucketed(r) for r in random_runs])  # (draws, N, buckets)
    kv_bytes = {name: r.stat(KV_POINT, "bytes").mean(0).tolist() for name, r in runs.items()}
    if draws:
        kv_bytes["random heads"] = torch.stack([r.stat(KV_POINT, "bytes").mean(0) for r in random_runs]
                                               ).mean(0).tolist()
    docs = [q.document for q in prompts]
    hits = {k: torch.tensor([sum(bool(a) for a, d in zip(got, docs) if d == i) for i in range(n)], dtype=torch.float64)
            for k, got in answered.items()}
    tried = {k: torch.tensor([sum(a is not None for a, d in zip(got, docs) if d == i) for i in range(n)],
                             dtype=torch.float64) for k, got in answered.items()}
    labels = [f"{lo}-{hi - 1}" for lo, hi in p.buckets]
    window_at = {t: plans["streaming"].schedule[t] for t in p.checkpoints}

    def decide(idx, didx=None):  # didx: the random-heads draws picked (None: all)
        pick = slice(None) if idx is None else idx

        def mean(name, t):  # over the documents picked, and over the draws picked for random heads
            if name != "random heads":
                return t[pick].mean(0)
            return (t if didx is None else t[didx])[:, pick].mean((0, 1))

        loss = {name: float(mean(name, t)) for name, t in loss_doc.items()}
        buckets = {name: mean(name, t).tolist() for name, t in bucket_doc.items()}
        passkey = {k: float(hits[k][pick].sum() / tried[k][pick].sum()) for k in answered if tried[k].sum()}
        gain = loss["streaming"] - loss["head-aware"]
        values = {"gain": gain, "gap_to_full": loss["head-aware"] - loss["full"],
                  **{f"loss.{k}": v for k, v in loss.items()},
                  **{f"loss.{k}.{b}": v for k, vs in buckets.items() for b, v in zip(labels, vs)},
                  **{f"kv_bytes.{k}.{t}": v for k, vs in kv_bytes.items() for t, v in zip(p.checkpoints, vs)},
                  **{f"passkey.{k}": v for k, v in passkey.items()}}
        controls = {}
        if draws:
            values["gain_random_heads"] = loss["streaming"] - loss["random heads"]
            values["random_heads_minus_plan"] = values["gain_random_heads"] - gain
            # head knowledge is what the claim credits: random heads with the same budgets that gain as much
            controls["random_heads"] = Condition("random_heads_minus_plan", ">=", 0.0)
        reach = {k: f"{v:.0%} of {int(tried[k].sum())}" if tried[k].sum() else UNREACHABLE for k, v in
                 ((k, passkey.get(k, 0.0)) for k in answered)}
        return Outcome(
            holds=gain > p.min_gain, primary="gain",
            summary=f"loss from token {c0} on: " + ", ".join(f"{k} {v:.4f}" for k, v in loss.items())
                    + f" (streaming: sink {p.sink} + a window of {', '.join(map(str, window_at.values()))} at "
                      f"{', '.join(map(str, window_at))} tokens; random heads: mean of {len(draws)} draws); KV "
                      f"MiB at {', '.join(map(str, p.checkpoints))}: "
                    + "; ".join(f"{k} {'/'.join(f'{b / MIB:.2f}' for b in v)}" for k, v in kv_bytes.items())
                    + ("; passkey " + ", ".join(f"{k} {v}" for k, v in reach.items()) if reach else ""),
            values=values, controls=controls,
            reason="" if gain > p.min_gain else
            f"the head-aware cache's loss is {-gain:+.4f} nats against the uniform cache of equal bytes")

    return Measurement(
        decide, n=n, draws=len(draws), resampled="document", bound={"op": ">", "value": p.min_gain, "abs": False},
        selections={"plan": f"from the head types of {len(long_documents('statistics'))} statistics documents "
                            f"({p.method}); judged on {n} held-out ones",
                    "random heads": f"{len(draws)} draws (seeds 0-{len(draws) - 1}) of the plan's KV-head rows dealt "
                                    "to random KV heads"},
        details={"plans": {name: pl.describe() | {f"entries_at_{t}": pl.entries(t) for t in p.checkpoints}
                           for name, pl in {**plans, **({"random heads": draws[0]} if draws else {})}.items()},
                 "kv_bytes": {"tokens": list(p.checkpoints), **kv_bytes},
                 "loss_by_position": {"tokens": labels, **{k: v.tolist() for k, v in _means(bucket_doc).items()}},
                 "passkey": _passkey_details(answered, prompts),
                 "decode_seconds": {name: float(r.stat(KV_POINT, "seconds").sum())
                                    for name, r in {**runs, **{f"random heads {d}": r for d, r in
                                                               enumerate(random_runs)}}.items()},
                 "curve": {str(s): {"head-aware": _point(a, c0), "streaming": _point(b, c0)}
                           for s, (a, b) in curve.items()}},
        figures=_figures(lm, p, curve, runs, random_runs, bucket_doc, prompts, answered, kv_bytes))


def _means(bucket_doc: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per policy, the mean loss per bucket over the documents (and the draws)."""
    return {k: v.mean(0) if v.ndim == 2 else v.mean((0, 1)) for k, v in bucket_doc.items()}


def _point(r, c0: int) -> list[float]:
    """(KV bytes after the last checkpoint, the verdict's loss: tokens c0 on) of one run."""
    return [float(r.stat(KV_POINT, "bytes")[:, -1].mean()), float(r.stat(LOSS_POINT, "token_nll")[:, c0 - 1:].mean())]


def _passkey_details(answered: dict[str, list[bool | None]], prompts: list) -> dict:
    out = {}
    for name, got in answered.items():
        ran = [a for a in got if a is not None]
        out[name] = {"prompts": len(got), "run": len(ran), "correct": sum(ran),
                     "not run": f"{len(got) - len(ran)}: {UNREACHABLE}" if len(ran) < len(got) else 0,
                     "per_prompt": [{"document": q.document, "depth": round(q.depth, 3), "needle": list(q.needle),
                                     "answered": UNREACHABLE if a is None else a} for q, a in zip(prompts, got)]}
    return out


def _figures(lm, p: HeadAwareParams, curve, runs, random_runs, bucket_doc, prompts, answered, kv_bytes) -> list:
    c0, T = p.checkpoints[0], p.length
    scales = sorted(curve)
    xy = lambda rs: ([_point(r, c0)[0] / MIB for r in rs], [_point(r, c0)[1] for r in rs])  # noqa: E731  (MiB, losses)
    curves = {"head-aware": xy([curve[s][0] for s in scales]),
              "streaming, equal bytes": xy([curve[s][1] for s in scales])}
    if random_runs:
        x, y = xy(random_runs)
        curves["random heads"] = ([sum(x) / len(x)], [sum(y) / len(y)])
    out = [] if len(scales) < 2 else [
        fig.Curves(title=f"{lm.name}: next-token loss against the KV cache held ({p.method})", curves=curves,
                   x_label=f"KV cache held after {T} tokens (MiB per sequence)", y_label=f"mean loss from token {c0}",
                   log_x=True, refs=[fig.Ref(_point(runs["full"], c0)[1], "full cache")],
                   caption=f"the plan's windows times {', '.join(f'{s:g}' for s in scales)}; each against a sink "
                           f"{p.sink} + window cache holding as many entries at every step; random heads: the mean "
                           f"of {len(random_runs)} draws")]
    out += [
        fig.Lines(title=f"{lm.name}: next-token loss per position ({p.method})",
                  x=[lo for lo, _ in p.buckets], series={k: v.tolist() for k, v in _means(bucket_doc).items()},
                  x_label="first token of the bucket", y_label=f"mean loss over {p.bucket} tokens",
                  spans=[fig.Span(c0, T - 1, "scored for the verdict")],
                  caption=f"the mean loss per bucket of {p.bucket} positions over the held-out documents; streaming "
                          "holds as many KV entries as the plan at every position"),
        fig.Bars(title=f"{lm.name}: KV cache held per sequence ({p.method})", categories=list(kv_bytes),
                 series={f"after {t} tokens": [v[i] / MIB for v in kv_bytes.values()]
                         for i, t in enumerate(p.checkpoints)},
                 y_label="MiB per sequence", caption="the nbytes of the key and value tensors the cache holds, "
                                                     "per sequence of a batch")]
    if answered:
        depths = list(dict.fromkeys(q.depth for q in prompts))

        def at(got, depth):  # accuracy at one depth over the documents; None where no prompt there was run
            ran = [a for q, a in zip(prompts, got) if q.depth == depth and a is not None]
            return sum(ran) / len(ran) if ran else None

        out.append(fig.Bars(
            title=f"{lm.name}: passkey retrieval per cache and depth ({p.method})",
            categories=[f"{d:.0%}" for d in depths],
            series={k: [at(got, d) for d in depths] for k, got in answered.items()},
            x_label="needle depth in the document", unit="%",
            caption=f"{len(prompts)} prompts of {T} tokens, the needle at a sentence boundary; greedy decoding; no "
                    f"bar: {UNREACHABLE} (no head holds a needle token when the question is read), not run"))
    return out
