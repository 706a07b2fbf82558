"""report.html: one self-contained page per run, rendered from a results document. No torch.

The page is templates/report.html.j2 (Jinja2, autoescaped) filled from the document; figures
are the entries' figure records drawn by massact.report.figures as inline SVG. Inline CSS
only: no scripts, no fonts, no network, so it opens from disk. Nothing here knows a claim: rows,
sections and figures come from the entries' generic fields. ``python -m massact report RESULTS``
re-renders it from a results.json.
"""
from __future__ import annotations

import json
import math
import re
from collections import Counter
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup

from massact.report import figures, terminal
from massact.report.results import Entry, atomic_write
from massact.report.terminal import bound_text, expectation, label, measured, number

COLORS = {"holds": "#1a7f37", "refuted": "#cf222e", "inconclusive": "#9a6700", "non-specific": "#bc4c00",
          "invalid": "#6e7781", "skipped": "#8c959f", "error": "#82071e", "bad-record": "#82071e"}
SEVERITY = ("refuted", "inconclusive", "non-specific", "error", "bad-record", "invalid", "holds")  # table order
NO_MODEL = "document"  # the column of checks of a document's own numbers, which load no model
DOC_FIELDS = {"complete": False, "started": None, "wall_seconds": None, "forward_passes": None, "samples_run": None,
              "pass_seconds": None, "resamples": None, "command": None, "git_commit": None, "git_dirty": None,
              "corpus": {}, "models": {}, "versions": {}, "results": []}  # schema 2's, for older documents

_env = Environment(loader=FileSystemLoader(Path(__file__).with_name("templates")), autoescape=True,
                   undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
# long claim ids wrap after . / _ rather than anywhere (join escapes each piece)
_env.filters["breakable"] = lambda text: Markup("<wbr>").join(re.split(r"(?<=[./_])", str(text)))


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _strip(e: dict) -> dict | None:
    """The interval strip of a row: positions in % of its width (interval, value, bound ticks, region
    where the claim holds), on a log scale when a positive quantity spans decades."""
    prim, bound = e.get("primary"), e.get("bound") or {}
    value = (e.get("values") or {}).get(prim)
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    intervals = e.get("intervals") or {}
    limits = [bound["value"]] if isinstance(bound.get("value"), (int, float)) else []
    signed_abs = bool(bound.get("abs"))  # |value| against the bound, drawn on the signed axis
    if signed_abs and intervals.get(f"|{prim}|"):  # judged on the magnitude's interval: drawn as a magnitude
        value, prim, limits, signed_abs = abs(value), f"|{prim}|", [abs(v) for v in limits], False
    elif signed_abs:
        limits = [abs(limits[0]), -abs(limits[0])]
    iv = [v for v in intervals.get(prim) or [] if isinstance(v, (int, float)) and math.isfinite(v)]
    points = [value, *iv, *limits]
    lo, hi = min(points), max(points)
    log = min(points) > 0 and hi / lo > 30
    if log:
        lo, hi = lo / 2, hi * 2
    else:
        pad = (hi - lo) * 0.15 or abs(hi) * 0.2 or 1.0
        lo, hi = lo - pad, hi + pad

    def pos(v: float) -> float:
        v = min(max(v, lo), hi)
        t = (math.log(v / lo) / math.log(hi / lo)) if log else (v - lo) / (hi - lo)
        return round(100 * t, 2)

    ok = []  # where the claim holds, as (left, width)
    if limits:
        op, b = bound.get("op", ""), max(limits)
        below = op in ("<", "<=")
        if signed_abs:
            regions = [(-b, b)] if below else [(lo, -b), (b, hi)]
        else:
            regions = [(lo, b)] if below else [(b, hi)]
        ok = [(pos(a), round(pos(z) - pos(a), 2)) for a, z in regions if z > a]
    return {"iv": (pos(iv[0]), max(round(pos(iv[1]) - pos(iv[0]), 2), 0.6)) if len(iv) == 2 else None,
            "value": pos(value), "ticks": [pos(v) for v in limits], "ok": ok, "log": log,
            "color": COLORS.get(e.get("verdict", ""), "#6e7781"),
            "title": f"{measured(e)} vs {bound_text(e)}" + (" (log scale)" if log else "")}


class _Figures:
    """Draws each distinct figure once; a repeat (the same record on another entry) links to the first."""

    def __init__(self) -> None:
        self.seen: dict[str, str] = {}

    def __call__(self, item_id: str, records: list[dict]) -> list[dict]:
        out = []
        for i, f in enumerate(records):
            key = json.dumps(f, sort_keys=True, default=str)
            anchor = f"fig-{item_id}-{i}"
            first = self.seen.setdefault(key, anchor)
            out.append({"id": anchor, "title": f.get("title", ""), "caption": f.get("caption", ""),
                        "svg": Markup(figures.draw(f)) if first == anchor else None, "same_as": first})
        return out


def _items(doc: dict) -> list[dict]:
    """Every entry with what the page shows of it; ids unique on the page."""
    draw, used, items = _Figures(), Counter(), []
    for e in doc.get("results", []):
        base = _slug(f"{label(e)}-{e.get('model') or NO_MODEL}")
        used[base] += 1
        item_id = base if used[base] == 1 else f"{base}-{used[base]}"
        unit = e.get("unit") or ""
        values = e.get("values") or {}
        intervals = e.get("intervals") or {}
        items.append({
            "e": e, "id": item_id, "label": label(e), "model": e.get("model") or NO_MODEL,
            "verdict": e.get("verdict", "?"), "color": COLORS.get(e.get("verdict", ""), "#6e7781"),
            "measured": measured(e), "threshold": bound_text(e), "expectation": expectation(e),
            "strip": _strip(e), "figures": draw(item_id, e.get("figures") or []),
            "value_rows": [(k, number(v, unit), " – ".join(number(x, unit) for x in intervals.get(k) or []))
                       for k, v in values.items()],
            "details": json.dumps(e["details"], indent=1, default=str) if e.get("details") else "",
        })
    return items


def _claims(items: list[dict]) -> list[dict]:
    """Items grouped by claim id (in the order of the results), with the record's words."""
    claims: dict[str, dict] = {}
    for it in items:
        e = it["e"]
        c = claims.setdefault(e.get("claim", "?"), {"id": "claim-" + _slug(str(e.get("claim", "?"))),
                                                   "name": e.get("claim", "?"), "members": [], "source": "", "statement": ""})
        c["members"].append(it)
        for field in ("source", "statement"):
            c[field] = c[field] or e.get(field) or ""
    return list(claims.values())


def _matrix(items: list[dict], models: list[str]) -> dict:
    """Claims x models: one verdict chip per (claim/variant, model)."""
    rows: dict[str, dict[str, dict]] = {}
    for it in items:
        rows.setdefault(it["label"], {})[it["model"]] = it
    columns = models + ([NO_MODEL] if any(it["model"] == NO_MODEL for it in items) else [])
    return {"columns": columns, "rows": list(rows.items())}


def _glance(items: list[dict]) -> dict:
    """The most telling lines first: refuted and inconclusive, then the rest that did not hold;
    invalid items grouped by reason; holds counted."""
    ran = [it for it in items if it["verdict"] != "skipped"]
    rank = {v: i for i, v in enumerate(SEVERITY)}
    lines = sorted((it for it in ran if it["verdict"] not in ("holds", "invalid")),
                   key=lambda it: rank.get(it["verdict"], len(SEVERITY)))
    invalid: dict[str, list[dict]] = {}
    for it in ran:
        if it["verdict"] == "invalid":
            invalid.setdefault(it["e"].get("reason") or "?", []).append(it)
    holds = [it for it in ran if it["verdict"] == "holds"]
    return {"lines": lines, "invalid": list(invalid.items()), "holds": holds,
            "unexpected": [it for it in ran if it["expectation"]]}


def _models(doc: dict) -> list[dict]:
    """The models of the run, each with a short label and what its weights are."""
    out = []
    for spec, m in (doc.get("models") or {}).items():
        m = m or {}
        name = m.get("label") or m.get("name") or spec
        weights = m.get("description") or ", ".join(
            str(x) for x in (m.get("architecture"), m.get("dtype"), Path(str(m.get("source") or "")).name) if x)
        out.append({"spec": spec, "label": name, "weights": weights, "error": m.get("error"),
                    "error_type": m.get("error_type", ""), "info": m})
    return out


def _documented(items: list[dict], models: list[dict]) -> dict:
    """How many documented-value forms were compared, and why the others were not."""
    forms = [it for it in items if it["e"].get("documented_on")]
    compared = [it for it in forms if it["verdict"] != "skipped"]
    not_on: dict[str, int] = Counter(it["e"]["documented_on"] for it in forms if it["verdict"] == "skipped")
    return {"forms": len(forms), "compared": len(compared), "not_on": sorted(not_on.items()),
            "models": [m["label"] for m in models if not m["error"]]}


def render(doc: dict) -> str:
    """The whole page for one results document (schema 1 or 2)."""
    # every field present (the template is strict about names): older documents lack some
    doc = DOC_FIELDS | doc | {"results": [Entry.from_dict(e).to_dict() for e in doc.get("results", [])]}
    items = _items(doc)
    models = _models(doc)
    model_labels = [m["label"] for m in models if not m["error"]]
    results = doc.get("results", [])
    rank = {v: i for i, v in enumerate(SEVERITY)}
    by_entry = {id(it["e"]): it for it in items}
    return _env.get_template("report.html.j2").render(
        doc=doc, items=items, models=models, colors=COLORS, counts=Counter(e.get("verdict", "?") for e in results),
        verdict_order=[v for v in terminal.VERDICTS if any(e.get("verdict") == v for e in results)],
        table=sorted((it for it in items if it["verdict"] != "skipped"),
                     key=lambda it: (rank.get(it["verdict"], len(SEVERITY)), it["label"], it["model"])),
        skipped=[(sentence, [by_entry[id(e)] for e in group]) for sentence, group in terminal.skipped_groups(results)],
        claims=_claims(items), matrix=_matrix(items, model_labels), glance=_glance(items),
        documented=_documented(items, models))


def write_report(doc: dict, path: Path) -> Path:
    """Render ``doc`` to ``path`` atomically (a reader never sees half a page)."""
    return atomic_write(path, render(doc))
