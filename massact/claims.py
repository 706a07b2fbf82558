"""Claim records (data files under claims/), their validation, and judge() -> Entry.

A record is one TOML table ``[[claim]]``. Its ``check`` names a measurement in
``massact.checks``, whose typed params the record's ``params`` must fit; the general form
decides from the check's own comparison, the documented-value form compares named measured
values with the document's numbers.
"""
from __future__ import annotations

import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from massact.checks import CHECKS, ClaimInvalid, Context
from massact.checks.base import Measurement, Outcome, Params
from massact.errors import ClaimRecordError
from massact.report.results import Entry

# holds / refuted: the bootstrap interval lies on one side of the threshold; inconclusive: it
# straddles it; non-specific: holds, but so does a control that should not; invalid: cannot be
# evaluated as written on this model
VERDICTS = ("holds", "refuted", "inconclusive", "non-specific", "invalid")
ID_RE = re.compile(r"^[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*$")
RESAMPLES = 200  # bootstrap resamples over samples
CONFIDENCE = 0.95
# field -> (types it may have, required)
FIELDS: dict[str, tuple[tuple[type, ...], bool]] = {
    "id": ((str,), True), "variant": ((str,), False), "version": ((int,), True), "source": ((str,), True),
    "statement": ((str,), True), "check": ((str,), True), "params": ((dict,), False), "threshold": ((str,), True),
    "documented": ((str,), True), "documented_on": ((str,), False), "documented_values": ((dict,), False),
    "tolerance": ((dict,), False), "controls": ((list,), False), "expect": ((dict,), False),
    "nsamples": ((int,), False),
}


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
    params: Params
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

    def entry(self, **measured) -> Entry:
        """This claim's result entry: what the record says, and ``measured``."""
        return Entry(claim=self.id, variant=self.variant, version=self.version, source=self.source,
                     statement=self.statement, threshold=self.threshold, documented=self.documented,
                     documented_on=self.documented_on, params=self.params.to_dict(), **measured)


@dataclass(frozen=True)
class BadRecord:
    """A record that failed validation: collected as its own failing item."""

    key: str
    error: str


def load_records(path: Path) -> list[Claim | BadRecord]:
    """Every record of one claims file; malformed ones become BadRecord, never an exception."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        return [BadRecord(f"{path.name}", f"{path}: not valid TOML: {e}")]
    out: list[Claim | BadRecord] = []
    seen: set[str] = set()
    for i, raw in enumerate(data.get("claim", [])):
        label = f"{raw.get('id', f'record{i}')}/{raw.get('variant', 'general')}"
        try:
            claim = validate(raw)
            if claim.key in seen:
                raise ClaimRecordError(f"fields 'id' and 'variant': {claim.key} is defined twice in this file")
            seen.add(claim.key)
            out.append(claim)
        except ClaimRecordError as e:
            out.append(BadRecord(label, f"{path.name} record {i} ({label}): {e}"))
    return out


def validate(raw: dict) -> Claim:
    """A Claim from a raw table; ClaimRecordError names the offending field."""
    unknown = set(raw) - set(FIELDS)
    if unknown:
        raise ClaimRecordError(f"unknown field(s) {sorted(unknown)}; allowed: {sorted(FIELDS)}")
    for name, (types, required) in FIELDS.items():
        if name not in raw:
            if required:
                raise ClaimRecordError(f"missing required field '{name}'")
            continue
        if not isinstance(raw[name], types) or isinstance(raw[name], bool):
            want = " or ".join(t.__name__ for t in types)
            raise ClaimRecordError(f"field '{name}' must be a {want}, not {raw[name]!r}")
    if not ID_RE.match(raw["id"]):
        raise ClaimRecordError(f"field 'id' must look like family.snake_name, not {raw['id']!r}")
    if raw["version"] < 1:
        raise ClaimRecordError(f"field 'version' must be a positive integer, not {raw['version']!r}")
    if raw["check"] not in CHECKS:
        raise ClaimRecordError(f"field 'check': {raw['check']!r} is not a known check; known: {sorted(CHECKS)}")
    check = CHECKS[raw["check"]]
    params = check.params.parse(raw.get("params", {}))
    values = raw.get("documented_values", {})
    if check.documented_only and not values:
        raise ClaimRecordError(f"field 'documented_values' is required: check {raw['check']!r} only gives values")
    if values and not raw.get("documented_on"):
        raise ClaimRecordError("field 'documented_on' is required with 'documented_values'")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values.values()):
        raise ClaimRecordError("field 'documented_values' must map names to numbers")
    if raw.get("nsamples", 10) < 1:
        raise ClaimRecordError(f"field 'nsamples' must be a positive integer, not {raw.get('nsamples')!r}")
    tol = raw.get("tolerance", {})
    if values and (set(tol) not in ({"rel"}, {"abs"}) or not all(isinstance(v, (int, float)) for v in tol.values())):
        raise ClaimRecordError("field 'tolerance' must be {rel = x} or {abs = x} when documented_values are given")
    if not all(isinstance(c, str) for c in raw.get("controls", [])):
        raise ClaimRecordError("field 'controls' must be a list of strings")
    expect = {}
    for model, e in raw.get("expect", {}).items():
        e = {"verdict": e} if isinstance(e, str) else e
        if not isinstance(e, dict) or e.get("verdict") not in VERDICTS:
            got = e.get("verdict") if isinstance(e, dict) else e
            raise ClaimRecordError(f"field 'expect.{model}.verdict' must be one of {VERDICTS}, not {got!r}")
        reason = e.get("reason", "")
        if not isinstance(reason, str) or (e["verdict"] != "holds" and not reason):
            raise ClaimRecordError(f"field 'expect.{model}.reason' must be a string, required when the expected "
                                   "verdict is not holds")
        expect[model] = Expectation(e["verdict"], reason)
    return Claim(id=raw["id"], variant=raw.get("variant", "general"), version=raw["version"], source=raw["source"],
                 statement=raw["statement"], check=raw["check"], params=params, threshold=raw["threshold"],
                 documented=raw["documented"], controls=tuple(raw.get("controls", ())),
                 nsamples=raw.get("nsamples", 10),
                 documented_on=raw.get("documented_on"), documented_values=values, tolerance=tol, expect=expect)


def measure(claim: Claim, ctx: Context | None) -> Measurement:
    """Run the claim's check once (ClaimInvalid when it cannot be measured on this model)."""
    return CHECKS[claim.check].fn(ctx, claim.params)


def judge(claim: Claim, ctx: Context | None, *, resamples: int = RESAMPLES, seed: int = 0) -> Entry:
    """Measure ``claim`` in ``ctx`` (None for checks of a document's own numbers) and decide.

    The measurement's ``decide`` is evaluated on all samples, then on ``resamples`` bootstrap
    resamples of them: the verdict is holds (refuted) only when at least 97.5% of them hold (fail).
    """
    try:
        m = measure(claim, ctx)
        o = m.decide(None)
    except ClaimInvalid as e:
        return claim.entry(verdict="invalid", summary=f"not measurable: {e}", reason=str(e))
    missing = [k for k in claim.documented_values if k not in o.values]
    if missing:
        reason = f"the check gives no value {missing}"
        return claim.entry(verdict="invalid", summary=f"not measurable: {reason}", reason=reason, values=o.values)

    def holds(out: Outcome) -> bool:
        if claim.documented_values:
            return all(_within(out.values.get(k, math.nan), v, claim.tolerance)
                       for k, v in claim.documented_values.items())
        return out.holds

    point = holds(o)
    intervals, boot = {}, {}
    verdict = "holds" if point else "refuted"
    if m.n > 1 and resamples > 0:
        share, intervals = _bootstrap(m, holds, resamples=resamples, seed=seed)
        boot = {"samples": m.n, "resamples": resamples, "share_holding": share, "confidence": CONFIDENCE}
        tail = (1 - CONFIDENCE) / 2
        if (point and share < 1 - tail) or (not point and share > tail):
            verdict = "inconclusive"
    also = [name for name, same in o.controls.items() if same]
    reason = o.reason
    if verdict == "holds" and also:
        verdict, reason = "non-specific", f"the control(s) {also} also satisfy the claim"
    if claim.documented_values:
        summary = "; ".join(f"{k}={o.values[k]:.4g} (doc {v:g})" for k, v in claim.documented_values.items())
        if not point:
            tol = ", ".join(f"{k} {v}" for k, v in claim.tolerance.items())
            off = [k for k, v in claim.documented_values.items() if not _within(o.values[k], v, claim.tolerance)]
            reason = f"outside tolerance ({tol}): {', '.join(off)}"
    else:
        summary = o.summary
    if boot:
        summary += f" [{boot['share_holding']:.0%} of {resamples} resamples hold]"
    if verdict == "inconclusive":
        reason = (f"the {CONFIDENCE:.0%} bootstrap interval straddles the threshold: {boot['share_holding']:.0%} of "
                  f"{resamples} resamples of {m.n} samples hold; more samples (--nsamples) may decide it")
    return claim.entry(verdict=verdict, summary=summary, reason=reason, primary=o.primary, unit=m.unit,
                       bound=None if claim.documented_values else m.bound, values=o.values, intervals=intervals,
                       bootstrap=boot, controls=o.controls, selections=m.selections, details=m.details,
                       figures=[f.to_dict() for f in m.figures], artifacts=m.artifacts)


def _bootstrap(m: Measurement, holds, *, resamples: int, seed: int) -> tuple[float, dict]:
    """Share of resamples on which the claim holds, and 95% intervals of its numeric values."""
    g = torch.Generator().manual_seed(seed)
    held, seen = 0, {}
    for _ in range(resamples):
        idx = torch.randint(m.n, (m.n,), generator=g)
        try:
            out = m.decide(idx)
        except ClaimInvalid:
            continue  # counts as not holding
        held += holds(out)
        for k, v in out.values.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                seen.setdefault(k, []).append(float(v))
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
