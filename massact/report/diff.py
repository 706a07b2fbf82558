"""Compare two results documents (a baseline and a run): verdicts that changed, values that moved.

A model is its identity (the resolved spec: built-in name, hub id or absolute path), never its
label: two directories both named ``model`` stay apart. Each model of the run is compared with the
baseline's model of the same identity, else the same weights, else the same label, else the only
one left on each side (one model each: two revisions of it). The rule, per (claim, variant, model):
- a changed verdict fails (skipped, error and bad-record count as verdicts);
- the primary value fails when it moved by more than ``REL_TOL`` (10%) of the baseline value
  *and* lies outside the baseline's 95% bootstrap interval (when the baseline has one): the
  interval widens the band where sampling noise is larger than 10%, never narrows it;
- on fewer samples than the baseline's (``--nsamples``), a verdict that became inconclusive and a
  moved value are notes: a narrower sample gives a wider interval and another mean;
- an item of the baseline that the run collected but did not judge (an incomplete run), or that is
  missing although the run had its model and its claims file (a claim removed or renamed), fails;
  one the run left out (``-k``, ``-m``, another ``--model`` or claims file) is a note; a run that is
  incomplete and does not list what it did not judge (no ``not_run``) fails;
- a primary value that cannot be compared (not a number on one side: a string, null, missing) fails:
  a comparison that cannot be made is never a pass;
- a changed claim version, threshold or primary name, and items only in the run, are notes.
No torch here: the command line and the plugin import this in a process that may have none.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from massact.errors import ResultsFileError
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
    unreadable: bool = False  # the baseline is not a results document: a usage error, not a regression


Key = tuple[str, str, str]  # claim, variant, the model's identity ("-": a check of a document's numbers)


def _ident(r: dict) -> str:
    return r.get("spec") or r.get("model") or "-"  # documents before schema 3 may lack a spec


def _key(r: dict, rename: dict[str, str]) -> Key:
    ident = _ident(r)
    return r.get("claim", "?"), r.get("variant") or "", rename.get(ident, ident)


def _items(doc: dict, name: str, rename: dict[str, str] | None = None) -> dict[Key, dict]:
    """The document's ``results``, ``not_run`` or ``deselected`` items by key."""
    return {_key(r, rename or {}): r for r in doc.get(name) or []}


def _models(doc: dict) -> dict[str, dict]:
    """Identity -> label and weights hash of each model the document has items of."""
    infos = doc.get("models") or {}
    out: dict[str, dict] = {}
    for r in [*doc.get("results", []), *(doc.get("not_run") or []), *(doc.get("deselected") or [])]:
        ident = _ident(r)
        if ident != "-" and ident not in out:
            info = infos.get(r.get("spec")) or infos.get(ident) or {}
            out[ident] = {"label": info.get("label") or r.get("model") or ident, "weights": info.get("weights_sha256")}
    return out


def pair_models(base: dict, new: dict) -> dict[str, str]:
    """Each model of ``new`` -> the model of ``base`` it is compared with (identities): the same
    identity, else the same weights, else the same label, else the only one left on each side."""
    bm, nm = _models(base), _models(new)
    pairs: dict[str, str] = {}
    for same in (lambda ident, m: ident, lambda ident, m: m["weights"], lambda ident, m: m["label"]):
        free: dict[str, list[str]] = {}
        for ident, m in bm.items():
            if ident not in pairs.values() and same(ident, m):
                free.setdefault(same(ident, m), []).append(ident)
        for ident, m in nm.items():
            match = free.get(same(ident, m)) if ident not in pairs and same(ident, m) else None
            if match and len(match) == 1 and match[0] not in pairs.values():
                pairs[ident] = match[0]
    left_b, left_n = [i for i in bm if i not in pairs.values()], [i for i in nm if i not in pairs]
    if len(left_b) == 1 and len(left_n) == 1:
        pairs[left_n[0]] = left_b[0]
    return pairs


def _samples(r: dict) -> int | None:
    return r.get("samples") or (r.get("bootstrap") or {}).get("samples")


def _file(r: dict) -> str | None:
    return r.get("nodeid", "").split("::")[0] or None


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


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


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
    pairs = pair_models(base, new)
    b, n = _items(base, "results"), _items(new, "results", pairs)
    not_run, deselected = _items(new, "not_run", pairs), _items(new, "deselected", pairs)
    files = {_file(r) for r in [*n.values(), *not_run.values(), *deselected.values()]}
    labels_b = {ident: m["label"] for ident, m in _models(base).items()}
    labels_n = {pairs.get(ident, ident): m["label"] for ident, m in _models(new).items()}

    def shown(ident: str) -> str:
        lb, ln = labels_b.get(ident), labels_n.get(ident)
        return f"{lb} -> {ln}" if lb and ln and lb != ln else lb or ln or ident

    out: list[Change] = []
    unlisted = new.get("complete") is False and "not_run" not in new  # incomplete, and not saying what it left
    if unlisted:
        out.append(Change("*", "*", "incomplete", f"{len(b)} results",
                          f"{len(n)} results; incomplete, lists no not_run", True))
    for key in list(b) + [k for k in n if k not in b]:
        claim, model = f"{key[0]}/{key[1]}".rstrip("/"), shown(key[2])
        if key not in n:
            why, failing = ("not judged: the run is incomplete", True) if unlisted else \
                _absent(key, b[key], not_run=not_run, deselected=deselected, files=files,
                        models=set(pairs.values()), selection_known="deselected" in new)
            out.append(Change(claim, model, "only-baseline", b[key].get("verdict", "?"), why, failing))
            continue
        if key not in b:
            out.append(Change(claim, model, "only-current", "not run", n[key].get("verdict", "?"), False))
            continue
        old, cur = b[key], n[key]
        fewer = _samples(cur) is not None and _samples(old) is not None and _samples(cur) < _samples(old)
        note = f" on {_samples(cur)} samples, baseline {_samples(old)}" if fewer else ""
        verdict_changed = old.get("verdict") != cur.get("verdict")
        if verdict_changed:  # the row shows both values too: no separate value row
            undecided = fewer and cur.get("verdict") == "inconclusive"
            out.append(Change(claim, model, "fewer-samples" if undecided else "verdict",
                              f"{old.get('verdict')} ({_valued(old)})", f"{cur.get('verdict')} ({_valued(cur)}){note}",
                              not undecided))
        for name in ("version", "threshold", "primary"):
            if old.get(name) != cur.get(name):
                out.append(Change(claim, model, "claim", f"{name}: {old.get(name)}", f"{name}: {cur.get(name)}", False))
        prim = old.get("primary")
        # a primary neither side measured (massive.emergence's jump where the first layer is already massive)
        # has not changed; one that only one side lacks, or that is not a number, is not compared: it fails
        unmeasured = prim not in old.get("values", {}) and prim not in cur.get("values", {})
        if not verdict_changed and prim and prim == cur.get("primary") and not unmeasured:
            a, z = old.get("values", {}).get(prim), cur.get("values", {}).get(prim)
            if not (_number(a) and _number(z)):
                what = "; ".join(f"{side} {'has no value' if prim not in d.get('values', {}) else f'has {v!r}'}"
                                 for side, d, v in (("baseline", old, a), ("run", cur, z)) if not _number(v))
                out.append(Change(claim, model, "uncomparable", _valued(old), f"{prim} cannot be compared: {what}",
                                  True))
            elif moved(a, z, old.get("intervals", {}).get(prim), rel_tol=rel_tol, abs_tol=abs_tol):
                rel = f" ({(z - a) / abs(a):+.1%})" if isinstance(a, (int, float)) and a else ""
                out.append(Change(claim, model, "fewer-samples" if fewer else "value", _valued(old),
                                  _valued(cur) + rel + note, not fewer))
    return out


def _absent(key: Key, entry: dict, *, not_run: dict, deselected: dict, files: set, models: set,
            selection_known: bool) -> tuple[str, bool]:
    """Why a baseline item has no result in the run, and whether that fails the comparison
    (``selection_known``: the run lists what it deselected, as documents of schema 3 do)."""
    if key in not_run:
        return "not judged: the run is incomplete", True
    if key in deselected or not selection_known:
        return "not run (deselected)" if selection_known else "not run", False
    if key[2] != "-" and key[2] not in models:
        return "not run: its model is not in this run", False
    if _file(entry) is None or _file(entry) not in files:
        return "not run: its claims file was not collected", False
    return "missing: the run had its model and claims file", True


def provenance_lines(base: dict, new: dict, *, names: tuple[str, str] = ("baseline", "current")) -> list[str]:
    """One line per side: when, which commit, and which model revision and weights each was."""
    lines = []
    for name, doc in zip(names, (base, new)):
        models = []
        for spec, m in doc.get("models", {}).items():
            ident = m.get("revision") or (m.get("weights_sha256") or "")[:12] or m.get("error", "?")
            models.append(f"{m.get('label') or m.get('name', spec)}@{ident} {m.get('dtype', '')}".strip())
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
    incomplete = not doc.get("complete", False)
    if incomplete and (update or not path.exists()):
        out.failed = True
        out.lines.append(f"baseline NOT {'updated' if update else 'written'}: this run is incomplete "
                         f"({len(doc.get('not_run') or [])} collected items not judged); "
                         f"{path} is {'unchanged' if path.exists() else 'still missing'}")
        return out
    if update:
        return _write(out, doc, f"baseline updated: {path} ({len(doc.get('results', []))} results)", failed=False)
    if not path.exists():
        return _write(out, doc, f"baseline {path} did not exist: wrote this run there; run again to compare with it",
                      failed=True)
    try:
        base = read_results(path)
    except ResultsFileError as e:
        out.failed = out.unreadable = True
        out.lines.append(f"baseline NOT compared: {e}. Point --baseline at a results.json of a massact run, or "
                         "rewrite this one from this run with --update-baseline")
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
