"""The ``[claim.expect]`` lines a run's verdicts give, and writing them into claims/*.toml. No torch here.

Every claim record carries the verdict measured on each model (``[claim.expect]``, keyed by the model's
identity: a built-in name, ``gpt2``, ``pythia-2.8b``; ``document`` for a check of a document's own
numbers). ``python -m massact expect RESULTS.json`` prints the lines of every judged item;
``--write`` puts those that are missing or that changed verdict into the claims files, editing the TOML
text in place (tomlkit): comments, order and layout stay as they were, and an entry whose verdict is
unchanged keeps its hand-written reason; ``--refresh`` rewrites those too, with what this run measured
(after a change to how verdicts are reached, so no recorded number predates it).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import tomlkit
import tomlkit.items

from massact.report.terminal import bound_text, measured, number

JUDGED = ("holds", "refuted", "inconclusive", "non-specific", "invalid")  # verdicts a record can expect


def toml_line(key: str, verdict: str, reason: str = "", note: str = "") -> str:
    """One ``[claim.expect]`` entry: ``"smollm2-135m" = "holds"  # note``, or with its reason when the
    verdict is not holds: ``"minilm-l6" = { verdict = "invalid", reason = "..." }``."""
    if verdict == "holds":
        return f"{json.dumps(key)} = \"holds\"" + (f"  # {note}" if note else "")
    # a JSON string is a TOML basic string: the same escapes
    return f"{json.dumps(key)} = {{ verdict = {json.dumps(verdict)}, reason = {json.dumps(reason)} }}"


def measured_reason(entry: dict) -> str:
    """Why an entry came out as it did, in one line: its reason (or summary) after its primary value."""
    value = measured(entry)
    why = entry.get("reason") or entry.get("summary") or ""
    why = re.split(r" \[[\w/]*BCa ", why)[0]  # the bootstrap's own note ("[t/BCa 95% intervals...") adds nothing
    head = f"{value} vs {bound_text(entry)}" if value else ""
    values, intervals, unit = entry.get("values") or {}, entry.get("intervals") or {}, entry.get("unit") or ""
    fired = [f"{name} {number(values[name], unit)}" + (" [{}, {}]".format(*(number(x, unit) for x in intervals[name]))
                                                       if name in intervals else "")
             for name, state in (entry.get("controls") or {}).items() if state == "also holds" and name in values]
    return "; ".join(x for x in (head, why, ", ".join(fired)) if x)


@dataclass(frozen=True)
class Proposal:
    """What one judged item says its record should expect."""

    file: str  # the claims file, as the item's node id names it (relative to the run's rootdir)
    claim: str
    variant: str
    key: str | None  # the [claim.expect] key: the model's identity; None for a model massact does not know
    label: str  # the model as the run showed it
    verdict: str
    reason: str
    recorded: str | None  # the verdict the record expected when the run judged it

    @property
    def line(self) -> str:
        return toml_line(self.key or self.label, self.verdict, self.reason, self.reason)


def proposals(doc: dict) -> list[Proposal]:
    """One per judged item of a results document, in the order the run judged them."""
    out = []
    for e in doc.get("results", []):
        if e.get("verdict") not in JUDGED:
            continue
        spec = e.get("spec")
        key = (doc.get("models", {}).get(spec, {}).get("known_as")) if spec else "document"
        out.append(Proposal(file=(e.get("nodeid") or "").split("::")[0], claim=e["claim"],
                            variant=e.get("variant") or "general", key=key, label=e.get("model") or "document",
                            verdict=e["verdict"], reason=measured_reason(e), recorded=e.get("expected")))
    return out


def render(props: list[Proposal], *, samples: int | None = None) -> list[str]:
    """The proposals as [claim.expect] lines, grouped by file and record, each marked against the record."""
    lines = []
    if samples:
        lines.append(f"# this run read {samples} samples per claim (--nsamples), not each record's own count: a "
                     "verdict may differ on a default run")
    last = None
    for p in props:
        if (p.file, p.claim, p.variant) != last:
            last = (p.file, p.claim, p.variant)
            lines += ["", f"# {p.file}: {p.claim}/{p.variant}"]
        if p.key is None:
            lines.append(f"# {p.label}: {p.verdict} ({p.reason}); not a model massact knows "
                         "(massact/models.py KNOWN): [claim.expect] cannot name it, compare runs with --baseline")
            continue
        state = ("not recorded" if p.recorded is None else "as recorded" if p.recorded == p.verdict
                 else f"recorded {p.recorded}: changed")
        lines += [f"# {state}", p.line]
    return lines


def write(props: list[Proposal], *, root: Path, refresh: bool = False) -> list[str]:
    """Put every proposal whose record expects nothing, or another verdict, on its model into the claims
    file under ``root``; returns one line per change. Entries with the same verdict are left as written,
    unless ``refresh``: then they take the measured reason too."""
    changes: list[str] = []
    by_file: dict[str, list[Proposal]] = {}
    for p in props:
        if p.key is not None:
            by_file.setdefault(p.file, []).append(p)
    for name, group in by_file.items():
        path = root / name
        if not path.is_file():
            raise ValueError(f"{path}: no such claims file; run from the directory the claims were run in, or pass "
                             "--root")
        text = path.read_text(encoding="utf-8")
        doc = tomlkit.parse(text)
        gaps = []  # records given a new [claim.expect], which takes over their closing blank line
        for p in group:
            rec = _record(doc, p, path)
            expect = rec.get("expect")
            have = expect.get(p.key) if expect is not None else None
            have = have if isinstance(have, str) or have is None else have.get("verdict")
            if have == p.verdict and (not refresh or _line(expect, p.key) == p.line):
                continue
            key, item = tomlkit.parse(p.line + "\n").body[0]
            if expect is None:  # a new [claim.expect] right under the record's fields, before its blank line
                body = rec.value.body
                if body and body[-1][0] is None and isinstance(body[-1][1], tomlkit.items.Whitespace):
                    body[-1] = (None, tomlkit.items.Whitespace(""))
                    gaps.append(rec)
                expect = rec["expect"] = tomlkit.table()
            if have is None:
                expect.append(key, item)
            else:
                note = item.trivia.comment_ws, item.trivia.comment
                expect[key] = item  # tomlkit gives the new value the old one's comment: the new note replaces it
                item.trivia.comment_ws, item.trivia.comment = note
            changes.append(f"{name}: {p.claim}/{p.variant}: {p.key} {have or 'not recorded'} -> {p.verdict}"
                           + (" (reason re-measured)" if have == p.verdict else ""))
        for rec in gaps:  # the blank line the record ended with, now after its new table
            rec["expect"].add(tomlkit.nl())
        out = tomlkit.dumps(doc)
        if out != text:
            path.write_text(out, encoding="utf-8")
    return changes


def _line(expect, key: str) -> str:
    """The entry ``key`` of an expect table as one line, its comment included."""
    item = expect.item(key)
    note = item.trivia.comment
    return f"{json.dumps(key)} = {item.as_string()}" + (f"  {note}" if note else "")


def _record(doc, p: Proposal, path: Path):
    for rec in doc.get("claim", []):
        if rec.get("id") == p.claim and rec.get("variant", "general") == p.variant:
            return rec
    raise ValueError(f"{path} has no record {p.claim}/{p.variant}: the claims file changed since the run")
