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

from massact.checks import CHECKS, ClaimInvalid, Context, Measurement
from massact.errors import ClaimRecordError

VERDICTS = ("holds", "refuted", "invalid")
ID_RE = re.compile(r"^[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*$")
FIELDS = {"id", "variant", "version", "source", "statement", "check", "params", "threshold", "documented",
          "documented_on", "documented_values", "tolerance", "controls", "expect"}


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
    verdict: str
    summary: str  # the measured value(s), in one line
    threshold: str
    documented: str
    reason: str = ""
    values: dict = field(default_factory=dict)
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
                 documented_on=raw.get("documented_on"), documented_values=values, tolerance=tol, expect=expect)


def judge(claim: Claim, ctx: Context | None) -> Verdict:
    """Measure ``claim`` in ``ctx`` (None for checks of a document's own numbers) and decide."""
    model = ctx.lm.name if ctx else None
    base = dict(claim=claim.id, variant=claim.variant, version=claim.version, model=model,
                threshold=claim.threshold, documented=claim.documented)
    try:
        m: Measurement = CHECKS[claim.check].fn(ctx, claim.params)
    except ClaimInvalid as e:
        return Verdict(verdict="invalid", summary=f"not measurable: {e}", reason=str(e), **base)
    if claim.documented_values:
        return _compare_documented(claim, m, base)
    return Verdict(verdict="holds" if m.holds else "refuted", summary=m.summary, reason=m.reason,
                   values=m.values, details=m.details, **base)


def _compare_documented(claim: Claim, m: Measurement, base: dict) -> Verdict:
    misses, parts = [], []
    for name, doc in claim.documented_values.items():
        if name not in m.values:
            return Verdict(verdict="invalid", summary=f"not measurable: the check gives no value {name!r}",
                           reason=f"the check gives no value {name!r}",
                           values=m.values, details=m.details, **base)
        got = m.values[name]
        ok = _within(got, doc, claim.tolerance)
        parts.append(f"{name}={got:.4g} (doc {doc:g})")
        if not ok:
            misses.append(name)
    tol = ", ".join(f"{k} {v}" for k, v in claim.tolerance.items())
    reason = f"outside tolerance ({tol}): {', '.join(misses)}" if misses else ""
    return Verdict(verdict="refuted" if misses else "holds", summary="; ".join(parts), reason=reason,
                   values=m.values, details=m.details, **base)


def _within(got: float, doc: float, tol: dict) -> bool:
    if math.isnan(got):
        return False
    if "abs" in tol:
        return abs(got - doc) <= tol["abs"]
    return abs(got - doc) <= tol["rel"] * abs(doc)
