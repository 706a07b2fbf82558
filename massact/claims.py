"""Claim records (data files under claims/), their validation, and judge() -> Verdict.

A record is one TOML table ``[[claim]]``. Its ``check`` names a measurement in
``massact.checks``; the general form decides from the check's own comparison, the
documented-value form compares named measured values with the document's numbers.
"""
from __future__ import annotations

import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from massact.checks import CHECKS, ClaimInvalid, Context, Measurement
from massact.errors import ClaimRecordError

# holds / refuted: the bootstrap interval lies on one side of the threshold; inconclusive: it
# straddles it; non-specific: holds, but so does a control that should not; invalid: cannot be
# evaluated as written on this model
VERDICTS = ("holds", "refuted", "inconclusive", "non-specific", "invalid")
ID_RE = re.compile(r"^[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*$")
FIELDS = {"id", "variant", "version", "source", "statement", "check", "params", "threshold", "documented",
          "documented_on", "documented_values", "tolerance", "controls", "expect", "nsamples"}
RESAMPLES = 200  # bootstrap resamples over samples
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Expectation:
    verdict: str
    reason: str = ""


@dataclass(frozen=True)
class Claim:
    id: str
    variant: str
    version: int
    source: str
    statement: str
    check: str
    params: dict
    threshold: str
    documented: str
    controls: tuple[str, ...]
    nsamples: int = 10  # samples read, as in the document; --nsamples overrides
    documented_on: str | None = None  # documented-value form: runs only on this model
    documented_values: dict = field(default_factory=dict)
    tolerance: dict = field(default_factory=dict)  # {"rel": x} or {"abs": x}
    expect: dict[str, Expectation] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.id}/{self.variant}"

    @property
    def needs_model(self) -> bool:
        return CHECKS[self.check].needs_model


@dataclass(frozen=True)
class BadRecord:
    """A record that failed validation: collected as its own failing item."""

    key: str
    error: str


@dataclass
class Verdict:
    claim: str
    variant: str
    version: int
    model: str | None
    source: str
    statement: str
    verdict: str
    summary: str  # the measured value(s), in one line
    threshold: str
    documented: str
    reason: str = ""
    primary: str | None = None  # the value the threshold applies to
    values: dict = field(default_factory=dict)
    intervals: dict = field(default_factory=dict)  # value name -> [low, high], 95% bootstrap
    bootstrap: dict = field(default_factory=dict)  # samples, resamples, share of resamples holding
    controls: dict = field(default_factory=dict)
    details: dict = field(default_factory=dict)


def load_records(path: Path) -> list[Claim | BadRecord]:
    """Every record of one claims file; malformed ones become BadRecord, never an exception."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        return [BadRecord(f"{path.name}", f"{path}: not valid TOML: {e}")]
    out: list[Claim | BadRecord] = []
    for i, raw in enumerate(data.get("claim", [])):
        label = f"{raw.get('id', f'record{i}')}/{raw.get('variant', 'general')}"
        try:
            out.append(validate(raw))
        except ClaimRecordError as e:
            out.append(BadRecord(label, f"{path.name} record {i} ({label}): {e}"))
    return out


def validate(raw: dict) -> Claim:
    """A Claim from a raw table; ClaimRecordError names the offending field."""
    unknown = set(raw) - FIELDS
    if unknown:
        raise ClaimRecordError(f"unknown field(s) {sorted(unknown)}; allowed: {sorted(FIELDS)}")
    for name in ("id", "version", "source", "statement", "check", "threshold", "documented"):
        if name not in raw:
            raise ClaimRecordError(f"missing required field '{name}'")
    if not isinstance(raw["id"], str) or not ID_RE.match(raw["id"]):
        raise ClaimRecordError(f"field 'id' must look like family.snake_name, not {raw['id']!r}")
    if not isinstance(raw["version"], int) or raw["version"] < 1:
        raise ClaimRecordError(f"field 'version' must be a positive integer, not {raw['version']!r}")
    if raw["check"] not in CHECKS:
        raise ClaimRecordError(f"field 'check': {raw['check']!r} is not a known check; known: {sorted(CHECKS)}")
    check = CHECKS[raw["check"]]
    params = raw.get("params", {})
    if not isinstance(params, dict):
        raise ClaimRecordError("field 'params' must be a table")
    missing = [p for p in check.params if p not in params]
    if missing:
        raise ClaimRecordError(f"field 'params' lacks {missing} needed by check {raw['check']!r}")
    values = raw.get("documented_values", {})
    if check.documented_only and not values:
        raise ClaimRecordError(f"field 'documented_values' is required: check {raw['check']!r} only gives values")
    if values and not raw.get("documented_on"):
        raise ClaimRecordError("field 'documented_on' is required with 'documented_values'")
    if not all(isinstance(v, (int, float)) for v in values.values()):
        raise ClaimRecordError("field 'documented_values' must map names to numbers")
    if not isinstance(raw.get("nsamples", 10), int) or raw.get("nsamples", 10) < 1:
        raise ClaimRecordError(f"field 'nsamples' must be a positive integer, not {raw.get('nsamples')!r}")
    tol = raw.get("tolerance", {})
    if values and (set(tol) not in ({"rel"}, {"abs"}) or not all(isinstance(v, (int, float)) for v in tol.values())):
        raise ClaimRecordError("field 'tolerance' must be {rel = x} or {abs = x} when documented_values are given")
    expect = {}
    for model, e in raw.get("expect", {}).items():
        e = {"verdict": e} if isinstance(e, str) else e
        if e.get("verdict") not in VERDICTS:
            raise ClaimRecordError(f"field 'expect.{model}.verdict' must be one of {VERDICTS}, not {e.get('verdict')!r}")
        if e["verdict"] != "holds" and not e.get("reason"):
            raise ClaimRecordError(f"field 'expect.{model}.reason' is required when the expected verdict is not holds")
        expect[model] = Expectation(e["verdict"], e.get("reason", ""))
    return Claim(id=raw["id"], variant=raw.get("variant", "general"), version=raw["version"], source=raw["source"],
                 statement=raw["statement"], check=raw["check"], params=params, threshold=raw["threshold"],
                 documented=raw["documented"], controls=tuple(raw.get("controls", ())),
                 nsamples=raw.get("nsamples", 10),
                 documented_on=raw.get("documented_on"), documented_values=values, tolerance=tol, expect=expect)


def judge(claim: Claim, ctx: Context | None, *, resamples: int = RESAMPLES, seed: int = 0) -> Verdict:
    """Measure ``claim`` in ``ctx`` (None for checks of a document's own numbers) and decide.

    Checks that read per-sample passes are re-run on ``resamples`` bootstrap resamples of the
    samples: the verdict is holds (refuted) only when at least 97.5% of them hold (fail).
    """
    check = CHECKS[claim.check]
    base = dict(claim=claim.id, variant=claim.variant, version=claim.version, model=ctx.lm.name if ctx else None,
                source=claim.source, statement=claim.statement, threshold=claim.threshold, documented=claim.documented)
    try:
        m: Measurement = check.fn(ctx, claim.params)
    except ClaimInvalid as e:
        return Verdict(verdict="invalid", summary=f"not measurable: {e}", reason=str(e), **base)
    missing = [k for k in claim.documented_values if k not in m.values]
    if missing:
        reason = f"the check gives no value {missing}"
        return Verdict(verdict="invalid", summary=f"not measurable: {reason}", reason=reason, values=m.values, **base)

    def decide(mm: Measurement) -> bool:
        return all(_within(mm.values.get(k, math.nan), v, claim.tolerance) for k, v in claim.documented_values.items()) \
            if claim.documented_values else mm.holds

    point = decide(m)
    intervals, boot = {}, {}
    verdict = "holds" if point else "refuted"
    if check.resamplable and ctx is not None and resamples > 0 and ctx.n > 1:
        share, intervals = _bootstrap(claim, ctx, decide, resamples=resamples, seed=seed)
        boot = {"samples": ctx.n, "resamples": resamples, "share_holding": share, "confidence": CONFIDENCE}
        tail = (1 - CONFIDENCE) / 2
        if (point and share < 1 - tail) or (not point and share > tail):
            verdict = "inconclusive"
    also = [name for name, same in m.controls.items() if same]
    reason = m.reason
    if verdict == "holds" and also:
        verdict, reason = "non-specific", f"the control(s) {also} also satisfy the claim"
    if claim.documented_values:
        summary = "; ".join(f"{k}={m.values[k]:.4g} (doc {v:g})" for k, v in claim.documented_values.items())
        if not point:
            tol = ", ".join(f"{k} {v}" for k, v in claim.tolerance.items())
            off = [k for k, v in claim.documented_values.items() if not _within(m.values[k], v, claim.tolerance)]
            reason = f"outside tolerance ({tol}): {', '.join(off)}"
    else:
        summary = m.summary
    if boot:
        summary += f" [{boot['share_holding']:.0%} of {resamples} resamples hold]"
    if verdict == "inconclusive":
        reason = (f"the {CONFIDENCE:.0%} bootstrap interval straddles the threshold: {boot['share_holding']:.0%} of "
                  f"{resamples} resamples of {ctx.n} samples hold; more samples (--nsamples) may decide it")
    return Verdict(verdict=verdict, summary=summary, reason=reason, primary=m.primary, values=m.values,
                   intervals=intervals, bootstrap=boot, controls=m.controls, details=m.details, **base)


def _bootstrap(claim: Claim, ctx: Context, decide, *, resamples: int, seed: int) -> tuple[float, dict]:
    """Share of resamples on which the claim holds, and 95% intervals of its numeric values."""
    g = torch.Generator().manual_seed(seed)
    held, seen = 0, {}
    ctx.engine.frozen = True  # replicates reuse the passes of the full samples, never run new ones
    try:
        for _ in range(resamples):
            idx = torch.randint(ctx.n, (ctx.n,), generator=g)
            try:
                mb = CHECKS[claim.check].fn(ctx.resampled(idx), claim.params)
            except ClaimInvalid:
                continue  # counts as not holding
            held += decide(mb)
            for k, v in mb.values.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    seen.setdefault(k, []).append(float(v))
    finally:
        ctx.engine.frozen = False
    tail = (1 - CONFIDENCE) / 2
    intervals = {k: torch.tensor(v, dtype=torch.float64).quantile(
                     torch.tensor([tail, 1 - tail], dtype=torch.float64)).tolist()
                 for k, v in seen.items() if len(v) == resamples}
    return held / resamples, intervals


def _within(got: float, doc: float, tol: dict) -> bool:
    if math.isnan(got):
        return False
    if "abs" in tol:
        return abs(got - doc) <= tol["abs"]
    return abs(got - doc) <= tol["rel"] * abs(doc)
