"""Compare two results documents (a baseline and a run): verdicts that changed, values that moved.

The rule, applied to every (claim, variant, model) present on both sides:
- a changed verdict fails (skipped, error and bad-record count as verdicts);
- the primary value fails when it moved by more than ``REL_TOL`` (10%) of the baseline value
  *and* lies outside the baseline's 95% bootstrap interval (when the baseline has one): the
  interval widens the band where sampling noise is larger than 10%, never narrows it;
- a changed claim version, threshold or primary name, and entries on one side only (a run with
  ``-k``, a new claim), are listed as notes and do not fail.
No torch here: the command line and the plugin import this in a process that may have none.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from massact.report.results import read_results, write_results

REL_TOL = 0.10
ABS_TOL = 1e-9  # below this a change is rounding, whatever the relative size


@dataclass(frozen=True)
class Change:
    claim: str  # "id/variant"
    model: str
    kind: str  # verdict | value | claim | only-baseline | only-current
    before: str
    after: str
    failing: bool


@dataclass
class BaselineOutcome:
    """What the plugin prints at the end of a run with --baseline, and whether the run fails."""

    path: Path
    lines: list[str] = field(default_factory=list)
    failed: bool = False


Key = tuple[str, str, str]


def _key(r: dict, rename: dict[str, str]) -> Key:
    model = r.get("model") or "-"
    return r.get("claim", "?"), r.get("variant") or "", rename.get(model, model)


def _entries(doc: dict, rename: dict[str, str] | None = None) -> dict[Key, dict]:
    return {_key(r, rename or {}): r for r in doc.get("results", [])}


def _model_names(doc: dict) -> set[str]:
    return {r["model"] for r in doc.get("results", []) if r.get("model")}


def fmt(v) -> str:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    return f"{v:.4g}"


def _valued(r: dict) -> str:
    prim = r.get("primary")
    if not prim or prim not in r.get("values", {}):
        return r.get("verdict", "?")
    iv = r.get("intervals", {}).get(prim)
    return f"{prim}={fmt(r['values'][prim])}" + (f" [{fmt(iv[0])}, {fmt(iv[1])}]" if iv else "")


def moved(old: float, new: float, interval: list[float] | None, *, rel_tol: float = REL_TOL,
          abs_tol: float = ABS_TOL) -> bool:
    """True when ``new`` lies outside old +- rel_tol*|old| and outside the baseline's interval."""
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (old, new)):
        return False
    if math.isnan(old) or math.isnan(new):
        return math.isnan(old) != math.isnan(new)
    if abs(new - old) <= max(rel_tol * abs(old), abs_tol):
        return False
    if interval and len(interval) == 2 and interval[0] <= new <= interval[1]:
        return False
    return True


def compare(base: dict, new: dict, *, rel_tol: float = REL_TOL, abs_tol: float = ABS_TOL) -> list[Change]:
    """Every difference between ``base`` and ``new``, failing ones marked."""
    rename = {}
    bm, nm = _model_names(base), _model_names(new)
    if len(bm) == 1 and len(nm) == 1 and bm != nm:  # one model each: compare the two revisions
        rename = {next(iter(nm)): next(iter(bm))}
    b, n = _entries(base), _entries(new, rename)
    out: list[Change] = []
    for key in list(b) + [k for k in n if k not in b]:
        claim = f"{key[0]}/{key[1]}".rstrip("/")
        model = f"{key[2]} -> {next(iter(nm))}" if rename and key[2] != "-" else key[2]
        if key not in n:
            out.append(Change(claim, model, "only-baseline", b[key].get("verdict", "?"), "not run", False))
            continue
        if key not in b:
            out.append(Change(claim, model, "only-current", "not run", n[key].get("verdict", "?"), False))
            continue
        old, cur = b[key], n[key]
        verdict_changed = old.get("verdict") != cur.get("verdict")
        if verdict_changed:  # the row shows both values too: no separate value row
            out.append(Change(claim, model, "verdict", f"{old.get('verdict')} ({_valued(old)})",
                              f"{cur.get('verdict')} ({_valued(cur)})", True))
        for name in ("version", "threshold", "primary"):
            if old.get(name) != cur.get(name):
                out.append(Change(claim, model, "claim", f"{name}: {old.get(name)}", f"{name}: {cur.get(name)}", False))
        prim = old.get("primary")
        if not verdict_changed and prim and prim == cur.get("primary") and prim in old.get("values", {}) and prim in cur.get("values", {}):
            a, z = old["values"][prim], cur["values"][prim]
            if moved(a, z, old.get("intervals", {}).get(prim), rel_tol=rel_tol, abs_tol=abs_tol):
                rel = f" ({(z - a) / abs(a):+.1%})" if isinstance(a, (int, float)) and a else ""
                out.append(Change(claim, model, "value", _valued(old), _valued(cur) + rel, True))
    return out


def provenance_lines(base: dict, new: dict, *, names: tuple[str, str] = ("baseline", "current")) -> list[str]:
    """One line per side: when, which commit, and which model revision and weights each was."""
    lines = []
    for name, doc in zip(names, (base, new)):
        models = []
        for spec, m in doc.get("models", {}).items():
            ident = m.get("revision") or (m.get("weights_sha256") or "")[:12] or m.get("error", "?")
            models.append(f"{m.get('name', spec)}@{ident} {m.get('dtype', '')}".strip())
        state = "" if doc.get("complete", True) else " (INCOMPLETE run)"
        lines.append(f"{name}: {doc.get('started', '?')} commit {doc.get('git_commit') or '?'}{state}; "
                     f"models: {', '.join(models) or 'none'}")
    return lines


def table(changes: list[Change], *, width: int = 60) -> list[str]:
    """Fixed-width text table of ``changes``, failing ones first."""
    if not changes:
        return ["no differences"]
    rows = [("", "claim", "model", "change", "baseline", "current")]
    for c in sorted(changes, key=lambda c: (not c.failing, c.claim, c.model)):
        rows.append(("FAIL" if c.failing else "note", c.claim, c.model, c.kind, c.before[:width], c.after[:width]))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    fmt_row = lambda r: "  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip()  # noqa: E731
    return [fmt_row(rows[0]), "  ".join("-" * w for w in widths)] + [fmt_row(r) for r in rows[1:]]


def rule(rel_tol: float = REL_TOL) -> str:
    return (f"fails on: a changed verdict, or a primary value moved by > {rel_tol:.0%} of the baseline's "
            "and outside its 95% interval")


def check_baseline(doc: dict, path: Path, *, update: bool, rel_tol: float = REL_TOL) -> BaselineOutcome:
    """The plugin's --baseline / --update-baseline: compare ``doc`` with ``path``, or rewrite it."""
    out = BaselineOutcome(path)
    if update:
        if not doc.get("complete", False):
            out.lines.append(f"baseline NOT updated: this run is incomplete; {path} is unchanged")
            return out
        return _write(out, doc, f"baseline updated: {path} ({len(doc.get('results', []))} results)", failed=False)
    if not path.exists():
        return _write(out, doc, f"baseline {path} did not exist: wrote this run there; run again to compare with it",
                      failed=True)
    try:
        base = read_results(path)
    except (OSError, ValueError) as e:
        out.failed = True
        out.lines.append(f"cannot read baseline {path}: {e}")
        return out
    changes = compare(base, doc, rel_tol=rel_tol)
    bad = [c for c in changes if c.failing]
    out.failed = bool(bad)
    out.lines += [f"baseline: {path}"] + provenance_lines(base, doc) + table(changes)
    out.lines.append(f"{len(bad)} regression(s) against the baseline, {len(changes) - len(bad)} note(s); {rule(rel_tol)}"
                     + ("; --update-baseline accepts this run" if bad else ""))
    return out


def _write(out: BaselineOutcome, doc: dict, message: str, *, failed: bool) -> BaselineOutcome:
    try:
        write_results(out.path, doc)
    except OSError as e:
        out.failed, message = True, f"cannot write baseline {out.path}: {e}"
    out.failed = out.failed or failed
    out.lines.append(message)
    return out
