"""Family K: a head-aware KV cache built from the head types, against a uniform one of equal bytes (002).

The plan comes from the head statistics of the long documents' statistics part (H3); it is
judged on the held-out part: next-token loss over 2,048-token sequences, and a retrieval probe
(a key stated early in a 2,048-token prompt, asked for at the end). Policies, all through the
same cache and attention code (massact.kvcache):
- full: every entry kept (the ceiling);
- head-aware: the plan; documented mapping (the document's compressor: every head windowed,
  gathering at sink + 256, mixed at sink + 64) or correct mapping (gathering and mixed keep all);
- streaming: StreamingLLM's sink 4 + one window for every head, holding as many entries as the
  head-aware plan after 2,048 tokens;
- random heads: the head-aware plan's KV-head budgets shuffled over the model's KV heads (the
  same bytes, no head knowledge).
"""
from __future__ import annotations

import random
from dataclasses import dataclass, replace

from massact import figures as fig
from massact.checks.base import ClaimInvalid, Condition, Context, Measurement, Outcome, check
from massact.checks.headtypes import HeadParams, classified, measure_heads, statistics_request
from massact.kvcache import KVPolicy, Plan, full_plan
from massact.metrics import headtypes as ht
from massact.models import LoadedModel
from massact.requests import KV_POINT, LOSS_POINT, LongText, Passkey, Request, long_documents

MAPPING = {"documented_method": "documented", "correct_method": "correct"}
MIB = 2**20  # bytes; the summary and the figures say how much a cache holds in MiB


def _scaled(b: ht.Budget, scale: float) -> ht.Budget:
    return b if b.window is None else replace(b, window=max(1, round(b.window * scale)))


def head_aware(lm: LoadedModel, classes: list, mapping: str, scale: float = 1.0) -> Plan:
    H = lm.adapter.n_heads(lm.config)
    rows = tuple(tuple(_scaled(ht.budget(classes[l * H + h], mapping=mapping), scale) for h in range(H))
                 for l in range(lm.n_layers))
    return Plan(f"head-aware:{mapping}:x{scale:g}", rows, lm.adapter.n_kv_heads(lm.config))


def streaming(lm: LoadedModel, entries: int, sink: int) -> Plan:
    """Sink + one window for every head, holding ``entries`` KV entries."""
    kv = lm.adapter.n_kv_heads(lm.config)
    window = ht.uniform_window(entries, lm.n_layers * kv, sink)
    return Plan.uniform(f"streaming:sink{sink}+{window}", ht.Budget(sink, window), layers=lm.n_layers,
                        heads=lm.adapter.n_heads(lm.config), kv_heads=kv)


def shuffled(plan: Plan, *, seed: int = 0) -> Plan:
    """The plan's KV-head budgets dealt to random KV heads; each query head takes its KV head's budget."""
    kv = [b for l in range(len(plan.budgets)) for b in plan.kv_budgets(l)]
    random.Random(seed).shuffle(kv)
    rows = tuple(tuple(kv[l * plan.kv_heads + h // plan.rep] for h in range(len(row)))
                 for l, row in enumerate(plan.budgets))
    return Plan(f"random-heads:{plan.name}:seed{seed}", rows, plan.kv_heads)


@dataclass(frozen=True, kw_only=True)
class HeadAwareParams(HeadParams):
    sink: int = 4  # the uniform policy's sink tokens, as StreamingLLM
    scales: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0)  # the loss-vs-bytes curve: the plan's windows times these
    min_gain: float = 0.0  # nats per token the head-aware plan must gain over the uniform one
    passkey: bool = True  # the retrieval probe (it needs the model's tokenizer)

    @property
    def checkpoints(self) -> tuple[int, ...]:
        """Where the KV bytes are read; the loss is read from the first on, where the caches differ."""
        return self.length // 4, self.length // 2, self.length

    @property
    def probe_source(self) -> Passkey:
        return Passkey(self.length, depths=(0.1, 0.3))


def evaluation(plan: Plan, p: HeadAwareParams) -> Request:
    return Request(stats=frozenset({(LOSS_POINT, "loss"), (KV_POINT, "bytes"), (KV_POINT, "seconds")}),
                   source=LongText("held_out", p.length, p.length), mode="decode", intervention=KVPolicy(plan),
                   options=(("chunk", p.chunk), ("start", p.checkpoints[0]), ("checkpoints", p.checkpoints)))


def probe(plan: Plan, p: HeadAwareParams) -> Request:
    return Request(stats=frozenset({(LOSS_POINT, "generated"), (KV_POINT, "tokens_per_second")}),
                   source=p.probe_source, mode="generate", intervention=KVPolicy(plan),
                   options=(("chunk", p.chunk), ("new_tokens", 8)))


def _needs(p: HeadAwareParams) -> list[Request]:
    return [statistics_request(p)]


@check(HeadAwareParams, needs=_needs)
def kv_head_aware(ctx: Context, p: HeadAwareParams) -> Measurement:
    """The head-aware cache has a lower next-token loss than a uniform sink + window cache of the
    same KV bytes; the same budgets on random heads must not do as well."""
    per = measure_heads(ctx, p)
    _, classes = classified(per)
    L, H, K = ctx.lm.n_layers, ctx.lm.adapter.n_heads(ctx.lm.config), ctx.lm.adapter.n_kv_heads(ctx.lm.config)
    mapping = MAPPING[p.method]
    plan = head_aware(ctx.lm, classes, mapping)
    whole = full_plan(layers=L, heads=H, kv_heads=K)
    if plan.entries(p.length) >= whole.entries(p.length):
        full_q = sum(b.full for row in plan.budgets for b in row)
        raise ClaimInvalid(
            f"the head-aware plan ({p.method}) keeps the whole cache on {ctx.lm.name}: {full_q} of {L * H} query heads "
            f"need the full cache, and each of the {L * K} KV heads keeps what any of its {H // K} query heads needs; "
            "with nothing freed there is no compression to compare with a uniform cache of equal bytes")
    plans = {"full": whole, "head-aware": plan,
             "streaming": streaming(ctx.lm, plan.entries(p.length), p.sink), "random heads": shuffled(plan)}
    n, T = len(long_documents("held_out")), p.length
    runs = {name: ctx.run(evaluation(pl, p), n=n) for name, pl in plans.items()}
    curve = {}  # scale -> (head-aware run, streaming run at its bytes)
    for s in p.scales:
        ha = plan if s == 1.0 else head_aware(ctx.lm, classes, mapping, s)
        curve[s] = (ctx.run(evaluation(ha, p), n=n),
                    ctx.run(evaluation(streaming(ctx.lm, ha.entries(T), p.sink), p), n=n))
    passkey, tps = {}, {}
    if p.passkey:
        answers = p.probe_source.answers()
        for name, pl in plans.items():
            r = ctx.run(probe(pl, p), n=len(answers))
            texts = [ctx.lm.tokenizer.decode(row) for row in r.points[LOSS_POINT]["generated"].tolist()]
            passkey[name] = sum(a in t for a, t in zip(answers, texts)) / len(answers)
            tps[name] = float(r.stat(KV_POINT, "tokens_per_second").mean())
    kv_bytes = {name: r.stat(KV_POINT, "bytes").mean(0).tolist() for name, r in runs.items()}

    def decide(idx):
        loss = {name: float(r.select(idx).loss.mean()) for name, r in runs.items()}
        gain = loss["streaming"] - loss["head-aware"]
        gain_random = loss["streaming"] - loss["random heads"]
        return Outcome(
            holds=gain > p.min_gain, primary="gain",
            summary=f"loss from token {p.checkpoints[0]} on: full {loss['full']:.4f}, head-aware {loss['head-aware']:.4f}, "
                    f"streaming {loss['streaming']:.4f} ({plans['streaming'].name.split(':')[1]}), random heads "
                    f"{loss['random heads']:.4f}; KV bytes at {T}: head-aware "
                    f"{kv_bytes['head-aware'][-1] / MIB:.2f} MiB of {kv_bytes['full'][-1] / MIB:.2f} MiB; "
                    "passkey " + ", ".join(f"{k} {v:.0%}" for k, v in passkey.items()),
            values={"gain": gain, "gain_random_heads": gain_random, "random_heads_minus_plan": gain_random - gain,
                    "gap_to_full": loss["head-aware"] - loss["full"],
                    **{f"loss.{k}": v for k, v in loss.items()},
                    **{f"kv_bytes.{k}": v[-1] for k, v in kv_bytes.items()},
                    **{f"passkey.{k}": v for k, v in passkey.items()},
                    **{f"tokens_per_second.{k}": v for k, v in tps.items()}},
            # head knowledge is what the claim credits: random heads with the same budgets that gain as much
            controls={"random_heads": Condition("random_heads_minus_plan", ">=", 0.0)},
            reason="" if gain > p.min_gain else
            f"the head-aware cache's loss is {-gain:+.4f} nats against the uniform cache of equal bytes")

    xs = lambda rs: [float(r.stat(KV_POINT, "bytes")[:, -1].mean()) for r in rs]  # noqa: E731
    mib = lambda rs: [x / MIB for x in xs(rs)]  # noqa: E731 - the figures' unit
    ys = lambda rs: [float(r.loss.mean()) for r in rs]  # noqa: E731
    scales = sorted(curve)
    full_loss = float(runs["full"].loss.mean())
    return Measurement(
        decide, n=n, resampled="document", bound={"op": ">", "value": p.min_gain, "abs": False},
        selections={"plan": f"from the head types of {len(long_documents('statistics'))} statistics documents "
                            f"({p.method}); judged on {n} held-out ones"},
        details={"plans": {name: pl.describe() | {f"entries_at_{T}": pl.entries(T)} for name, pl in plans.items()},
                 "kv_bytes": {"tokens": list(p.checkpoints), **kv_bytes}, "passkey": passkey,
                 "tokens_per_second": tps, "curve": {str(s): {"head-aware": [xs([a])[0], ys([a])[0]],
                                                               "streaming": [xs([b])[0], ys([b])[0]]}
                                                      for s, (a, b) in curve.items()}},
        figures=[
            fig.Curves(title=f"{ctx.lm.name}: next-token loss against the KV cache held ({p.method})",
                       curves={"head-aware": (mib([curve[s][0] for s in scales]), ys([curve[s][0] for s in scales])),
                               "streaming, equal bytes": (mib([curve[s][1] for s in scales]),
                                                          ys([curve[s][1] for s in scales])),
                               "random heads": (mib([runs["random heads"]]), ys([runs["random heads"]]))},
                       x_label=f"KV cache held after {T} tokens (MiB per sequence)",
                       y_label=f"mean loss from token {p.checkpoints[0]}",
                       log_x=True, refs=[fig.Ref(full_loss, "full cache")],
                       caption=f"the plan's windows times {', '.join(f'{s:g}' for s in scales)}; each against a sink "
                               f"{p.sink} + window cache holding as many entries; {n} held-out sequences"),
            *([fig.Bars(title=f"{ctx.lm.name}: passkey retrieval per cache ({p.method})", categories=list(passkey),
                        series={"accuracy": list(passkey.values())}, unit="%",
                        caption=f"prompts of {T} tokens, the key at 10% and 30% of the prompt; greedy decoding")]
              if passkey else []),
            fig.Bars(title=f"{ctx.lm.name}: KV cache held per sequence ({p.method})", categories=list(kv_bytes),
                     series={f"after {t} tokens": [v[i] / MIB for v in kv_bytes.values()]
                             for i, t in enumerate(p.checkpoints)},
                     y_label="MiB per sequence", caption="the nbytes of the key and value tensors the cache holds, "
                                                         "per sequence of a batch")])
