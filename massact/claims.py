"""Claim records (data files under claims/), their validation, and judge() -> Entry.

A record is one TOML table ``[[claim]]``. Its ``check`` names a measurement in
``massact.checks``, whose typed params the record's ``params`` must fit; the general form
decides from the check's own comparison, the documented-value form compares named measured
values with the document's numbers.
"""
from __future__ import annotations

import difflib
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from massact import verdict
from massact.checks import CHECKS, Context
from massact.checks.base import Params, finite
from massact.errors import ClaimRecordError
from massact.models import HUB_ID, KNOWN, known_by_spec
from massact.report.results import Entry
from massact.verdict import VERDICTS, ClaimInvalid, Condition, Measurement, Outcome

ID_RE = re.compile(r"^[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*$")
# a variant becomes part of a test id, a folder name and HTML: letters, digits, _ . - only
VARIANT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
DOCUMENT = "document"  # the "model" of a check of a document's own numbers
# [claim.expect] key of a model massact does not know by name: "other:<hub id or absolute path>"
OTHER = "other:"
# field -> (types it may have, required)
FIELDS: dict[str, tuple[tuple[type, ...], bool]] = {
    "id": ((str,), True), "variant": ((str,), False), "version": ((int,), True), "source": ((str,), True),
    "statement": ((str,), True), "check": ((str,), True), "params": ((dict,), False), "threshold": ((str,), True),
    "documented": ((str,), True), "documented_on": ((str,), False), "documented_values": ((dict,), False),
    "tolerance": ((dict,), False), "controls": ((list,), False), "expect": ((dict,), False),
    "nsamples": ((int,), False), "seqlen": ((int,), False),
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
    seqlen: int | None = None  # tokens per sample, as in the document; None: the session's --seqlen
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
        label = _label(raw, i)
        try:
            claim = validate(raw)
            if claim.key in seen:
                raise ClaimRecordError(f"fields 'id' and 'variant': {claim.key} is defined twice in this file")
            seen.add(claim.key)
            out.append(claim)
        except ClaimRecordError as e:
            out.append(BadRecord(label, f"{path.name} record {i} ({label}): {e}"))
    return out


def _label(raw: dict, i: int) -> str:
    """A record's test id: its id and variant where they are safe to show, else its place in the file."""
    cid, variant = raw.get("id"), raw.get("variant", "general")
    cid = cid if isinstance(cid, str) and ID_RE.match(cid) else f"record{i}"
    return f"{cid}/{variant if isinstance(variant, str) and VARIANT_RE.match(variant) else f'variant{i}'}"


def _model_key(name: str, field_name: str) -> str:
    """A model a record names (an expectation's key, documented_on): a name of KNOWN (a known hub id
    stands for it) or ``other:<hub id or absolute path>``; an error suggests the closest name."""
    if name == DOCUMENT or name in KNOWN:
        return name
    if known_by_spec(name):
        return known_by_spec(name)
    if name.startswith(OTHER) and field_name.startswith("expect"):
        spec = name[len(OTHER):]
        if known_by_spec(spec):
            raise ClaimRecordError(f"field '{field_name}': {spec!r} is {known_by_spec(spec)!r}, which massact "
                                   f"knows; write {known_by_spec(spec)!r}")
        if HUB_ID.match(spec) or Path(spec).is_absolute():
            return name
        raise ClaimRecordError(f"field '{field_name}': {name!r} must be other:<hub id as owner/name> or "
                               "other:<absolute path>, as the model is given to --model")
    names = list(dict.fromkeys([DOCUMENT, *KNOWN, *(h for k in KNOWN.values() for h in k.hub_ids)]))
    near = difflib.get_close_matches(name, names, n=1, cutoff=0.5)
    hint = f"did you mean {near[0]!r}? " if near else ""
    other = " (or other:<hub id or absolute path> for any other model)" if field_name.startswith("expect") else ""
    raise ClaimRecordError(f"field '{field_name}': {name!r} is not a model massact knows; {hint}known: "
                           f"{', '.join(names)}{other}")


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
    if not VARIANT_RE.match(raw.get("variant", "general")):
        raise ClaimRecordError(f"field 'variant' must be 1-64 letters, digits, '_', '.' or '-', starting with a "
                               f"letter or digit, not {raw['variant']!r}")
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
    if not finite(values):
        raise ClaimRecordError(f"field 'documented_values' must hold finite numbers only, not {values!r}")
    on = _model_key(raw["documented_on"], "documented_on") if "documented_on" in raw else None
    if raw.get("nsamples", 10) < 1:
        raise ClaimRecordError(f"field 'nsamples' must be a positive integer, not {raw.get('nsamples')!r}")
    if raw.get("seqlen", 2) < 2:
        raise ClaimRecordError(f"field 'seqlen' must be an integer of at least 2, not {raw.get('seqlen')!r}")
    tol = raw.get("tolerance", {})
    if values and (set(tol) not in ({"rel"}, {"abs"}) or not all(isinstance(v, (int, float)) for v in tol.values())
                   or not all(math.isfinite(v) and v >= 0 for v in tol.values())):
        raise ClaimRecordError("field 'tolerance' must be {rel = x} or {abs = x}, x a finite number >= 0, when "
                               f"documented_values are given, not {tol!r}")
    if not all(isinstance(c, str) for c in raw.get("controls", [])):
        raise ClaimRecordError("field 'controls' must be a list of strings")
    expect = {}
    for name, e in raw.get("expect", {}).items():
        model = _model_key(name, f"expect.{name}")
        e = {"verdict": e} if isinstance(e, str) else e
        if not isinstance(e, dict) or e.get("verdict") not in VERDICTS:
            got = e.get("verdict") if isinstance(e, dict) else e
            raise ClaimRecordError(f"field 'expect.{name}.verdict' must be one of {VERDICTS}, not {got!r}")
        reason = e.get("reason", "")
        if not isinstance(reason, str) or (e["verdict"] != "holds" and not reason):
            raise ClaimRecordError(f"field 'expect.{name}.reason' must be a string, required when the expected "
                                   "verdict is not holds")
        if model in expect:
            raise ClaimRecordError(f"field 'expect.{name}': {model!r} has an expectation already")
        expect[model] = Expectation(e["verdict"], reason)
    return Claim(id=raw["id"], variant=raw.get("variant", "general"), version=raw["version"], source=raw["source"],
                 statement=raw["statement"], check=raw["check"], params=params, threshold=raw["threshold"],
                 documented=raw["documented"], controls=tuple(raw.get("controls", ())),
                 nsamples=raw.get("nsamples", 10), seqlen=raw.get("seqlen"),
                 documented_on=on, documented_values=values, tolerance=tol, expect=expect)


def measure(claim: Claim, ctx: Context | None) -> Measurement:
    """Run the claim's check once (ClaimInvalid when it cannot be measured on this model)."""
    if ctx is not None and claim.seqlen is not None:
        ctx = ctx.at_seqlen(claim.seqlen)
    return CHECKS[claim.check].fn(ctx, claim.params)


def conditions(claim: Claim, m: Measurement, o: Outcome) -> list[Condition]:
    """What the claim compares: each documented value within tolerance (documented-value form),
    else the check's conditions, else its primary against its bound."""
    if claim.documented_values:
        out = []
        for k, doc in claim.documented_values.items():
            tol = claim.tolerance.get("abs", claim.tolerance.get("rel", 0) * abs(doc))
            out += [Condition(k, ">=", doc - tol), Condition(k, "<=", doc + tol)]
        return out
    if m.conditions:
        return list(m.conditions)
    return [Condition.on(o.primary, m.bound)] if o.primary and m.bound else []


def judge(claim: Claim, ctx: Context | None, *, resamples: int = verdict.RESAMPLES, seed: int = 0) -> Entry:
    """Measure ``claim`` in ``ctx`` (None for checks of a document's own numbers) and decide
    (massact.verdict: the statistics of a verdict, top to bottom)."""
    try:
        m = measure(claim, ctx)
        o = m.decide(None, None) if m.draws else m.decide(None)
    except ClaimInvalid as e:
        return claim.entry(verdict="invalid", summary=f"not measurable: {e}", reason=str(e))
    missing = [k for k in claim.documented_values if k not in o.values]
    if missing:
        reason = f"the check gives no value {missing}"
        return claim.entry(verdict="invalid", summary=f"not measurable: {reason}", reason=reason, values=o.values)
    conds = conditions(claim, m, o)
    point = all(c.holds(o.values) for c in conds) if claim.documented_values else o.holds
    if not claim.documented_values and conds and point != all(c.holds(o.values) for c in conds):
        raise AssertionError(f"check {claim.check}: holds={o.holds} disagrees with its conditions "
                             f"{[c.describe() for c in conds]} on {o.values}")
    j = verdict.judge(m, o, conds, point=point, resamples=resamples, seed=seed)
    reason = o.reason
    if claim.documented_values:
        summary = "; ".join(f"{k}={o.values[k]:.4g} (doc {v:g})" for k, v in claim.documented_values.items())
        if not point:
            tol = ", ".join(f"{k} {v}" for k, v in claim.tolerance.items())
            off = [k for k, v in claim.documented_values.items() if not _within(o.values[k], v, claim.tolerance)]
            reason = f"outside tolerance ({tol}): {', '.join(off)}"
    else:
        summary = o.summary
    if j.bootstrap.get("resamples"):
        b = j.bootstrap
        summary += (f" [{verdict.METHOD} {verdict.CONFIDENCE:.0%} intervals over {b['units']} {b['unit']}s; "
                    f"{b['share_holding']:.0%} of {b['resamples']} resamples hold]")
    if j.verdict in ("inconclusive", "non-specific") and j.reason:
        reason = j.reason + (f"; measured: {reason}" if reason and j.verdict == "inconclusive" else "")
    elif j.reason:
        reason = "; ".join(r for r in (reason, j.reason) if r)
    return claim.entry(verdict=j.verdict, summary=summary, reason=reason, primary=o.primary, unit=m.unit,
                       bound=None if claim.documented_values else m.bound, values=o.values,
                       intervals=j.intervals, bootstrap=j.bootstrap, controls=j.controls,
                       selections=m.selections, details=m.details, figures=[f.to_dict() for f in m.figures],
                       artifacts=m.artifacts)


def _within(got: float, doc: float, tol: dict) -> bool:
    if math.isnan(got):
        return False
    if "abs" in tol:
        return abs(got - doc) <= tol["abs"]
    return abs(got - doc) <= tol["rel"] * abs(doc)
