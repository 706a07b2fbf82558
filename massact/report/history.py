"""A claim across a series of runs (oldest first): its verdict and primary value in each, verdict changes
marked. ``python -m massact history RUN...`` prints it and writes history.html. No torch here.

Runs are results.json files or the run folders that hold one. A model is followed from run to run as the
nightly comparison pairs it (massact.report.diff.pair_models): the same identity, else the same weights,
else the same label, else the only model on each side (one checkpoint directory per version). Each run gets
a label: ``--label`` per run, else what tells the runs apart among the model's label, its version (hub
revision or weights hash) and its dtype, else when it started.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from markupsafe import Markup

from massact.figures import Ref, Trend
from massact.report import figures
from massact.report.diff import moved, pair_models
from massact.report.html import COLORS, NO_MODEL, _env as env, _slug
from massact.report.results import atomic_write, read_results
from massact.report.terminal import bound_text, label, number



@dataclass(frozen=True)
class Run:
    path: Path  # its results.json
    doc: dict
    label: str


@dataclass
class Series:
    """One claim (id/variant) on one model, across every run: ``entries[i]`` is run i's entry or None."""

    claim: str
    model: str  # the model's label; its first and last where it changed between runs ("a → b")
    entries: list[dict | None]
    changes: list[int] = field(default_factory=list)  # runs whose verdict differs from the previous verdict's
    moves: list[int] = field(default_factory=list)  # runs whose value moved by the nightly rule (diff.moved)

    @property
    def latest(self) -> dict:
        return next(e for e in reversed(self.entries) if e is not None)

    def verdicts(self) -> list[str]:
        return [e.get("verdict", "?") if e else "" for e in self.entries]

    def plotted(self) -> list[tuple[float, float, float] | None]:
        """Per run: (value, low, high) as the verdict judged it (a magnitude where the bound is on one)."""
        return [judged(e) if e else None for e in self.entries]

    def shift(self) -> tuple[float, int] | None:
        """The largest move of the value away from its first run's, relative to that value, and in which run."""
        pts = [(i, p[0]) for i, p in enumerate(self.plotted()) if p]
        if len(pts) < 2 or pts[0][1] == 0:
            return None
        first = pts[0][1]
        return max((((v - first) / abs(first), i) for i, v in pts[1:]), key=lambda t: abs(t[0]))

    def steps(self) -> list[tuple[int, int]]:
        """(previous run with a verdict, run) for each verdict change."""
        return [(max(j for j in range(i) if self.entries[j] is not None), i) for i in self.changes]


def judged(e: dict) -> tuple[float, float, float] | None:
    """The primary value and its interval as the verdict judged them: |value| with the magnitude's interval
    where the bound is on a magnitude and the entry has that interval (as the report's strip draws it)."""
    prim = e.get("primary")
    value = (e.get("values") or {}).get(prim)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        return None
    intervals = e.get("intervals") or {}
    iv = intervals.get(prim)
    if (e.get("bound") or {}).get("abs") and intervals.get(f"|{prim}|"):
        value, iv = abs(value), intervals[f"|{prim}|"]
    if not iv or len(iv) != 2 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in iv):
        return value, value, value
    return value, float(iv[0]), float(iv[1])


def results_path(path: Path) -> Path:
    """The results.json a RUN argument names: the file itself, or the one inside a run folder."""
    path = Path(path)
    if path.is_dir():
        if not (path / "results.json").is_file():
            raise ValueError(f"{path} holds no results.json: give a results.json or a run folder (reports/<run>/)")
        return path / "results.json"
    if not path.exists():
        raise ValueError(f"{path} does not exist: give a results.json or a run folder (reports/<run>/)")
    return path


def load(paths: list[Path], *, labels: list[str] | None = None) -> list[Run]:
    """The runs in the order given (oldest first), each with its label."""
    if not paths:
        raise ValueError("no runs given: name the results.json files or run folders, oldest first")
    if labels and len(labels) != len(paths):
        raise ValueError(f"--label given {len(labels)} time(s) for {len(paths)} run(s): give one label per run, "
                         "in the order of the runs, or none")
    files = [results_path(p) for p in paths]
    docs = []
    for f in files:
        try:
            docs.append(read_results(f))
        except json.JSONDecodeError as e:
            raise ValueError(f"{f} is not a results.json ({e}): give the results.json a run wrote") from None
    names = labels or auto_labels(docs)
    if len(set(names)) != len(names):
        raise ValueError(f"the labels {names} repeat: give each run its own --label")
    return [Run(f, d, n) for f, d, n in zip(files, docs, names)]


def _version(m: dict) -> str:
    return str(m.get("revision") or "")[:10] or str(m.get("weights_sha256") or "")[:8]


def auto_labels(docs: list[dict]) -> list[str]:
    """Each run's models by label (those that differ between runs, where some do), with their version and
    dtype where those tell the runs apart; else (or still repeating) when each run started."""
    runs = [{str(m.get("label") or m.get("name") or spec): (_version(m), str(m.get("dtype") or ""))
             for spec, m in sorted((d.get("models") or {}).items()) if m and not m.get("error")} for d in docs]
    steady = {n for n in runs[0] if all(r.get(n) == runs[0][n] for r in runs)}  # the same in every run
    shown = [{n: v for n, v in r.items() if n not in steady} or r for r in runs]
    versions: dict[str, set[str]] = {}
    for r in shown:
        for n, (version, _) in r.items():
            versions.setdefault(n, set()).add(version)
    show_dtype = len({tuple(d for _, d in r.values()) for r in shown}) > 1
    out = [", ".join(" ".join(filter(None, (n, version if len(versions[n]) > 1 else "", dtype if show_dtype else "")))
                     for n, (version, dtype) in sorted(r.items())) or "no model" for r in shown]
    if len(set(out)) < len(out):  # the same models at the same versions: a code change, a rerun
        out = [(d.get("started") or "?")[:16].replace("T", " ") + (f" {d['git_commit'][:7]}" if d.get("git_commit")
                                                                   else "") for d in docs]
    if len(set(out)) < len(out):
        out = [f"{i + 1}: {name}" for i, name in enumerate(out)]
    return out


def _tracks(runs: list[Run]) -> list[dict[str, str]]:
    """Per run, each model identity in it -> the track it continues (the identity where it first appeared)."""
    tracks: list[dict[str, str]] = []
    for i, run in enumerate(runs):
        pairs = pair_models(runs[i - 1].doc, run.doc) if i else {}
        here = {}
        for r in run.doc.get("results", []):
            ident = r.get("spec") or r.get("model") or "-"
            if ident not in here:
                here[ident] = tracks[i - 1].get(pairs[ident], pairs[ident]) if ident in pairs else ident
        tracks.append(here)
    return tracks


def series(runs: list[Run]) -> list[Series]:
    """Every claim and model that ran in some run (skipped throughout: left out), in the order first seen."""
    tracks = _tracks(runs)
    found: dict[tuple[str, str], Series] = {}
    labels: dict[tuple[str, str], list[str]] = {}
    for i, run in enumerate(runs):
        for r in run.doc.get("results", []):
            ident = r.get("spec") or r.get("model") or "-"
            key = (label(r), tracks[i][ident])
            s = found.setdefault(key, Series(key[0], "", [None] * len(runs)))
            s.entries[i] = r
            name = r.get("model") or NO_MODEL
            seen = labels.setdefault(key, [])
            if not seen or seen[-1] != name:
                seen.append(name)
    out = []
    for key, s in found.items():
        if all(e is None or e.get("verdict") == "skipped" for e in s.entries):
            continue
        s.model = " → ".join(dict.fromkeys([labels[key][0], labels[key][-1]]))  # a model renamed between runs
        _mark(s)
        out.append(s)
    return out


def _mark(s: Series) -> None:
    """Where the verdict changed from the previous run that has one, and where the value moved."""
    last_verdict, last = None, None
    for i, e in enumerate(s.entries):
        if e is None:
            continue
        if last_verdict is not None and e.get("verdict") != last_verdict:
            s.changes.append(i)
        last_verdict = e.get("verdict")
        here = judged(e)
        if here and last and moved(last[0], here[0], [last[1], last[2]]):
            s.moves.append(i)
        last = here or last


def cell(e: dict | None) -> str:
    """A run's value in the claim's unit with its interval, e.g. ``28.8% [25.9%, 32.2%]``."""
    p = judged(e) if e else None
    if p is None:
        return ""
    unit = e.get("unit") or ""
    return number(p[0], unit) + (f" [{number(p[1], unit)}, {number(p[2], unit)}]" if p[1:] != (p[0], p[0]) else "")


def shift_text(s: Series, runs: list[Run]) -> str:
    sh = s.shift()
    if sh is None:
        return ""
    rel, at = sh
    first = next(e for e in s.entries if e and judged(e))
    against = f", threshold {bound_text(s.latest)}" if bound_text(s.latest) else ""
    return (f"{rel:+.1%} ({cell(first).split(' [')[0]} -> {cell(s.entries[at]).split(' [')[0]} in {runs[at].label}"
            f"{against})")


def text_lines(runs: list[Run], found: list[Series]) -> list[str]:
    """The history as text: the runs, then per claim and model one line per run; changes and the largest
    value shifts last."""
    lines = ["runs, oldest first:"]
    width = max(len(r.label) for r in runs)
    for i, r in enumerate(runs):
        state = "" if r.doc.get("complete", True) else " INCOMPLETE"
        commit = (r.doc.get("git_commit") or "")[:7]
        lines.append(f"  {i + 1}. {r.label:<{width}}  {(r.doc.get('started') or '?')[:19]}"
                     f"{'  commit ' + commit if commit else ''}{state}  {r.path}")
    for s in found:
        e = s.latest
        against = f"{e.get('primary')} vs {bound_text(e)}" if e.get("primary") else bound_text(e)
        lines += ["", f"{s.claim} on {s.model}" + (f"   ({against})" if against else "")]
        for i, (run, entry) in enumerate(zip(runs, s.entries)):
            if entry is None:
                lines.append(f"  {run.label:<{width}}  not in this run")
                continue
            marks = []
            if i in s.changes:
                a = dict((b, a) for a, b in s.steps())[i]
                marks.append(f"verdict changed: {s.entries[a].get('verdict')} -> {entry.get('verdict')}")
            if i in s.moves:
                marks.append("value moved (> 10% and outside the previous run's interval)")
            row = f"  {run.label:<{width}}  {entry.get('verdict', '?'):<12} {cell(entry):<36}"
            lines.append((row + ("  <- " + "; ".join(marks) if marks else "")).rstrip())
    changed = [s for s in found if s.changes]
    lines += ["", f"{len(changed)} claim(s) whose verdict changed across {len(runs)} runs"
              + (":" if changed else "")]
    for s in changed:
        v = s.verdicts()
        lines.append(f"  {s.claim} on {s.model}: " + "; ".join(f"{v[a]} -> {v[b]} ({runs[a].label} -> {runs[b].label})"
                                                           for a, b in s.steps()))
    shifted = sorted((s for s in found if s.shift() and s.shift()[0]), key=lambda s: -abs(s.shift()[0]))
    if shifted:
        lines.append("largest value shifts from the first run's value:")
        lines += [f"  {s.claim} on {s.model}: {shift_text(s, runs)}" for s in shifted[:5]]
    return lines


# ---------------------------------------------------------------- the page

def trend(s: Series, runs: list[Run]) -> dict:
    """The series' Trend figure record: value and interval per run, the threshold, the verdicts."""
    e = s.latest
    pts = s.plotted()
    bound, unit = e.get("bound") or {}, e.get("unit") or ""
    limits: list[float] = []
    if isinstance(bound.get("value"), (int, float)):
        b = bound["value"]
        magnitude = bound.get("abs") and any(p and f"|{e.get('primary')}|" in (x.get("intervals") or {})
                                             for p, x in zip(pts, s.entries) if x)
        limits = [abs(b)] if magnitude else [abs(b), -abs(b)] if bound.get("abs") else [b]
    finite = [v for p in pts if p for v in p] + limits
    log = bool(finite) and min(finite) > 0 and max(finite) / min(finite) > 30
    verdicts = s.verdicts()
    return Trend(title=f"{s.claim} on {s.model}",
                 caption=f"{e.get('primary') or 'no primary value'} per run with its 95% interval; dashed: the "
                         f"threshold ({bound_text(e) or 'none'}); dotted red: a verdict change",
                 runs=[r.label for r in runs], values=[p[0] if p else None for p in pts],
                 intervals=[(p[1], p[2]) if p else None for p in pts], verdicts=verdicts,
                 colors=[COLORS.get(v, "#6e7781") for v in verdicts], changes=s.changes,
                 y_label=e.get("primary") or "", unit=unit, log_y=log,
                 refs=[Ref(v, bound_text(e)) for v in limits]).to_dict()


def _row(s: Series, runs: list[Run], used: set[str]) -> dict:
    """What the page shows of one series."""
    base = _slug(f"{s.claim}-{s.model}")
    ident, n = base, 2
    while ident in used:
        ident, n = f"{base}-{n}", n + 1
    used.add(ident)
    e, verdicts = s.latest, s.verdicts()
    cells = [cell(x) for x in s.entries if x and judged(x)]
    figure = trend(s, runs)
    return {
        "id": ident, "claim": s.claim, "model": s.model, "statement": e.get("statement") or "",
        "source": e.get("source") or "", "primary": e.get("primary"), "threshold": bound_text(e),
        "verdict_text": _verdict_text(s), "first_last": list(dict.fromkeys([cells[0], cells[-1]])) if cells else [],
        "steps": [({"verdict": verdicts[a], "run": runs[a].label}, {"verdict": verdicts[b], "run": runs[b].label})
                  for a, b in s.steps()],
        "shift": shift_text(s, runs), "shift_rel": abs(s.shift()[0]) if s.shift() else 0.0,
        "svg": Markup(figures.draw(figure)), "figure_title": figure["title"], "caption": figure["caption"],
        "points": [_point(x, i, s, run) for i, (run, x) in enumerate(zip(runs, s.entries))],
    }


def _point(x: dict | None, i: int, s: Series, run: Run) -> dict:
    """One run's row under a series' figure."""
    row = {"run": run.label, "changed": i in s.changes, "moved": i in s.moves}
    if x is None:
        return row | {"verdict": "", "cell": "", "samples": None, "version": None, "reason": ""}
    return row | {"verdict": x.get("verdict"), "cell": cell(x), "version": x.get("version"),
                  "reason": x.get("reason") or "", "samples": x.get("samples") or (x.get("bootstrap") or {}).get("samples")}


def _verdict_text(s: Series) -> str:
    """``holds in every run``, or the verdicts in order of change: ``refuted → holds``."""
    verdicts = s.verdicts()
    first = next(i for i, v in enumerate(verdicts) if v)
    missing = verdicts.count("")
    text = f"{verdicts[first]} in every run" if not s.changes and not missing else \
        " → ".join(verdicts[i] for i in [first, *s.changes])
    return text + (f" (not in {missing} run{'s' if missing > 1 else ''})" if missing else "")


def _run_info(r: Run) -> dict:
    doc = r.doc
    models = [f"{m.get('label') or spec}: {m.get('description') or m.get('architecture') or ''}"
              + (f", {m['dtype']}" if m.get("dtype") and m.get("dtype") not in str(m.get("description")) else "")
              + (f" (version {_version(m)})" if _version(m) else "")
              for spec, m in (doc.get("models") or {}).items() if m and not m.get("error")]
    versions = [(k, v) for k, v in (doc.get("versions") or {}).items() if k in ("massact", "torch", "transformers")]
    return {"label": r.label, "path": str(r.path), "started": doc.get("started") or "?",
            "commit": doc.get("git_commit"), "dirty": doc.get("git_dirty"), "complete": doc.get("complete", True),
            "models": models, "versions": versions, "command": doc.get("command")}


def render(runs: list[Run], found: list[Series]) -> str:
    """history.html: the runs, the claims whose verdict changed, a trend figure per claim and model."""
    used: set[str] = set()
    table = [_row(s, runs, used) for s in found]
    return env.get_template("history.html.j2").render(
        runs=[_run_info(r) for r in runs], table=table, colors=COLORS,
        changed=[row for row, s in zip(table, found) if s.changes],
        shifted=sorted((row for row in table if row["shift_rel"]), key=lambda row: -row["shift_rel"])[:5])


def write_page(runs: list[Run], found: list[Series], path: Path) -> Path:
    """Render the history page to ``path`` atomically."""
    return atomic_write(path, render(runs, found))
