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
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.stats
import torch

from massact.checks import CHECKS, ClaimInvalid, Context
from massact.checks.base import Condition, Measurement, Outcome, Params, finite
from massact.errors import ClaimRecordError
from massact.models import HUB_ID, KNOWN, known_by_spec
from massact.report.results import Entry

# holds / refuted: the bootstrap intervals lie on one side of the thresholds; inconclusive: one
# straddles its threshold; non-specific: holds, but so does a control that should not; invalid:
# cannot be evaluated as written on this model
VERDICTS = ("holds", "refuted", "inconclusive", "non-specific", "invalid")
ID_RE = re.compile(r"^[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*$")
# a variant becomes part of a test id, a folder name and HTML: letters, digits, _ . - only
VARIANT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
DOCUMENT = "document"  # the "model" of a check of a document's own numbers
# [claim.expect] key of a model massact does not know by name: "other:<hub id or absolute path>"
OTHER = "other:"
RESAMPLES = 200  # bootstrap resamples over samples
CONFIDENCE = 0.95
# BCa (bias-corrected and accelerated) intervals: the percentile interval under-covers at the 10-50
# samples the documents used; BCa corrects the bias and skew of the resampled statistic
METHOD = "BCa"
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


def judge(claim: Claim, ctx: Context | None, *, resamples: int = RESAMPLES, seed: int = 0) -> Entry:
    """Measure ``claim`` in ``ctx`` (None for checks of a document's own numbers) and decide.

    The measurement's ``decide`` is evaluated on all samples, then on ``resamples`` bootstrap
    resamples of them (scipy.stats.bootstrap, BCa intervals). Each condition is judged on the
    interval of its value: holds when every condition's interval lies on its holding side, refuted
    when a failing condition's interval lies wholly on the failing side, inconclusive otherwise.
    A control also satisfies the claim when it does on all samples or in more than 2.5% of the
    resamples (it is ruled out only as firmly as the claim is established); one that does makes a
    holding claim non-specific, and is named in the reason whatever the verdict.
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
    conds = conditions(claim, m, o)
    point = all(c.holds(o.values) for c in conds) if claim.documented_values else o.holds
    if not claim.documented_values and conds and point != all(c.holds(o.values) for c in conds):
        raise AssertionError(f"check {claim.check}: holds={o.holds} disagrees with its conditions "
                             f"{[c.describe() for c in conds]} on {o.values}")
    verdict, rs, boot, controls = "holds" if point else "refuted", None, {}, dict(o.controls)
    if m.n > 1 and resamples > 0:
        if not conds:
            raise AssertionError(f"check {claim.check} resamples {m.n} samples but states no condition to judge")
        rs = _bootstrap(m, o, conds, resamples=resamples, seed=seed)
        boot = {"samples": m.n, "resamples": resamples, "share_holding": rs.share, "confidence": CONFIDENCE,
                "method": METHOD, "conditions": {c.describe(): s for c, s in zip(conds, rs.sides)}}
        if rs.control_shares:
            boot["controls_also_holding"] = rs.control_shares  # share of resamples each control satisfies the claim in
        if rs.fallback:
            boot["percentile_fallback"] = rs.fallback
        if point and any(s != "holds" for s in rs.sides):
            verdict = "inconclusive"
        if not point and not any(s == "fails" for c, s in zip(conds, rs.sides) if not c.holds(o.values)):
            verdict = "inconclusive"
        controls = {k: same or rs.control_shares[k] > (1 - CONFIDENCE) / 2 for k, same in o.controls.items()}
    also = [name for name, same in controls.items() if same]
    reason = o.reason
    if claim.documented_values:
        summary = "; ".join(f"{k}={o.values[k]:.4g} (doc {v:g})" for k, v in claim.documented_values.items())
        if not point:
            tol = ", ".join(f"{k} {v}" for k, v in claim.tolerance.items())
            off = [k for k, v in claim.documented_values.items() if not _within(o.values[k], v, claim.tolerance)]
            reason = f"outside tolerance ({tol}): {', '.join(off)}"
    else:
        summary = o.summary
    if rs:
        summary += f" [{METHOD} {CONFIDENCE:.0%} intervals; {rs.share:.0%} of {resamples} resamples hold]"
    if verdict == "inconclusive":
        open_ = [c.describe() for c, s in zip(conds, rs.sides) if s == "straddles"]
        reason = (f"the {CONFIDENCE:.0%} {METHOD} interval of {', '.join(open_) or 'the deciding value'} straddles "
                  f"the threshold ({rs.share:.0%} of {resamples} resamples of {m.n} samples hold); more samples "
                  "(--nsamples) may decide it" + (f"; measured: {o.reason}" if o.reason else ""))
    if also:
        said = ", ".join(f"{k} (on all samples)" if o.controls[k] else
                         f"{k} (in {rs.control_shares[k]:.0%} of resamples)" for k in also)
        if verdict == "holds":
            verdict, reason = "non-specific", f"the control(s) {said} also satisfy the claim"
        else:
            reason = "; ".join(r for r in (reason, f"the control(s) {said} also satisfy the claim") if r)
    return claim.entry(verdict=verdict, summary=summary, reason=reason, primary=o.primary, unit=m.unit,
                       bound=None if claim.documented_values else m.bound, values=o.values,
                       intervals=rs.intervals if rs else {}, bootstrap=boot, controls=controls,
                       selections=m.selections, details=m.details, figures=[f.to_dict() for f in m.figures],
                       artifacts=m.artifacts)


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclass(frozen=True)
class Resampled:
    share: float  # of resamples on which every condition holds
    intervals: dict[str, list[float]]  # value -> 95% interval (BCa; percentile where BCa is undefined)
    sides: list[str]  # per condition: where its value's interval lies ("holds", "fails", "straddles")
    fallback: list[str]  # the values whose interval is the percentile one
    control_shares: dict[str, float]  # control -> share of resamples on which it also satisfies the claim


def _bootstrap(m: Measurement, o: Outcome, conds: list[Condition], *, resamples: int, seed: int) -> Resampled:
    """Resample the samples (scipy.stats.bootstrap, BCa) and evaluate ``decide`` on each resample.

    A condition whose value is missing in some resample (or whose interval is undefined) is placed
    by the share of resamples it holds in: "holds" above 97.5%, "fails" below 2.5%.
    """
    signed = [k for k, v in o.values.items() if _number(v)]
    # a condition on |value| is judged on the interval of |value|: a value whose sign varies between
    # resamples (the largest change, up or down) has a signed interval spanning 0 that says nothing of |value|
    magnitudes = sorted({c.value for c in conds if c.abs and c.value in signed})
    names = signed + [f"|{k}|" for k in magnitudes]
    ctl = list(o.controls)

    def statistic(idx: np.ndarray) -> np.ndarray:
        try:
            out = m.decide(torch.as_tensor(idx, dtype=torch.long))
        except ClaimInvalid:  # a resample on which the claim cannot be evaluated: nothing holds
            return np.array([math.nan] * len(names) + [0.0] * (len(conds) + len(ctl) + 1))
        vals = [float(out.values[k]) if _number(out.values.get(k)) else math.nan for k in signed]
        vals += [abs(float(out.values[k])) if _number(out.values.get(k)) else math.nan for k in magnitudes]
        held = [float(c.holds(out.values)) for c in conds]
        return np.array(vals + held + [float(out.controls.get(k, False)) for k in ctl] + [float(all(held))])

    with warnings.catch_warnings():  # degenerate columns (constant values, indicators) give nan: handled below
        warnings.simplefilter("ignore")
        res = scipy.stats.bootstrap((np.arange(m.n),), statistic, n_resamples=resamples, method=METHOD,
                                    confidence_level=CONFIDENCE, vectorized=False, rng=np.random.default_rng(seed))
    dist = res.bootstrap_distribution  # (values + conditions + controls + 1, resamples)
    lo, hi = res.confidence_interval
    tail = (1 - CONFIDENCE) / 2
    intervals, fallback = {}, []
    for i, k in enumerate(names):
        d = dist[i]
        if np.isnan(d).any():
            continue  # missing in some resample: no interval
        if d.min() == d.max():
            intervals[k] = [float(d[0]), float(d[0])]
        elif math.isfinite(lo[i]) and math.isfinite(hi[i]):
            intervals[k] = [float(lo[i]), float(hi[i])]
        else:  # BCa undefined (jackknife without spread, or every resample on one side of the value)
            intervals[k] = np.quantile(d, [tail, 1 - tail]).tolist()
            fallback.append(k)
    sides = []
    for j, c in enumerate(conds):
        if c.abs and f"|{c.value}|" in intervals:  # never the one without: both are nan in the same resamples
            sides.append(c.side(*intervals[f"|{c.value}|"]))
        elif c.value in intervals:
            sides.append(c.side(*intervals[c.value]))
        else:
            held = float(dist[len(names) + j].mean())
            sides.append("holds" if held >= 1 - tail else "fails" if held <= tail else "straddles")
    first = len(names) + len(conds)
    return Resampled(float(dist[-1].mean()), intervals, sides, fallback,
                     {k: float(dist[first + i].mean()) for i, k in enumerate(ctl)})


def _within(got: float, doc: float, tol: dict) -> bool:
    if math.isnan(got):
        return False
    if "abs" in tol:
        return abs(got - doc) <= tol["abs"]
    return abs(got - doc) <= tol["rel"] * abs(doc)
