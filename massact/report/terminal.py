"""The terminal's verdict summary, and the text forms of an entry's numbers that every view shares.

One line per item, at most ``width`` characters: claim/variant, model, verdict, the primary
value with its interval against the threshold, in the entry's unit ("%" shows fractions as
percent, "x" a factor). Skipped items with the same reason are collapsed into one line; a
closing line counts each verdict apart. Works on results documents of schema 1 and 2.
"""
from __future__ import annotations

import math
import textwrap
from collections import Counter

VERDICTS = ("holds", "refuted", "inconclusive", "non-specific", "invalid", "skipped", "error", "bad-record")
SYMBOLS = {"<=": "≤", ">=": "≥"}


def number(v, unit: str = "") -> str:
    """A measured value in its unit, with about three significant digits."""
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return str(v)
    if unit == "%":
        v = v * 100
    if math.isnan(v) or math.isinf(v):
        text = str(v)
    elif v == 0:
        text = "0"
    elif abs(v) >= 1e6 or abs(v) < 1e-3:
        text = f"{v:.3g}"
    elif abs(v) >= 100:
        text = f"{v:.0f}"
    elif abs(v) >= 10:
        text = f"{v:.1f}"
    elif abs(v) >= 1:
        text = f"{v:.2f}"
    else:
        text = f"{v:.3g}"
    return text + unit


def limit(v: float, unit: str = "") -> str:
    """A threshold as its record gives it (2 %, 1000x), without rounding."""
    return f"{v * 100:g}%" if unit == "%" else f"{v:g}{unit}"


def measured(e: dict) -> str:
    """The primary value and its interval, e.g. ``28.8% [25.9%, 32.2%]``; empty when there is none.
    A value judged by its magnitude shows the interval of its magnitude: ``-56.4% (magnitude [44.0%,
    66.7%])``, where the signed one may span 0."""
    prim, unit = e.get("primary"), e.get("unit") or ""
    values = e.get("values") or {}
    if not prim or prim not in values:
        return ""
    text = number(values[prim], unit)
    magnitude = (e.get("intervals") or {}).get(f"|{prim}|") if (e.get("bound") or {}).get("abs") else None
    if magnitude and None not in magnitude:
        return text + f" (magnitude [{number(magnitude[0], unit)}, {number(magnitude[1], unit)}])"
    iv = (e.get("intervals") or {}).get(prim)
    if iv and None not in iv:
        text += f" [{number(iv[0], unit)}, {number(iv[1], unit)}]"
    return text


def bound_text(e: dict) -> str:
    """The threshold in the entry's unit (``within ±2%``, ``>= 1000x``), or the record's words."""
    bound = e.get("bound")
    if not bound:
        return e.get("threshold") or ""
    op, unit = SYMBOLS.get(bound.get("op", ""), bound.get("op", "")), e.get("unit") or ""
    value = limit(abs(bound["value"]) if bound.get("abs") else bound["value"], unit)
    if bound.get("abs"):
        return f"within ±{value}" if op in ("<", "≤") else f"beyond ±{value}"
    return f"{op} {value}"


def expectation(e: dict) -> str:
    """'' when the verdict is the one the claim record expects on this model; else what it expects, or that it
    expects nothing (a verdict other than holds then fails)."""
    exp, verdict = e.get("expected"), e.get("verdict")
    if not exp:
        return "no expectation recorded" if verdict in ("refuted", "inconclusive", "non-specific", "invalid") else ""
    return "" if exp == verdict else f"expected {exp}"


def label(e: dict) -> str:
    return f"{e.get('claim', '?')}/{e['variant']}" if e.get("variant") else str(e.get("claim", "?"))


def skipped_groups(results: list[dict]) -> list[tuple[str, list[dict]]]:
    """Skipped items grouped by why: documented-value forms by the model their numbers are for,
    the others by their reason; each group as (its sentence, its entries), largest first."""
    groups: dict[str, list[dict]] = {}
    for e in results:
        if e.get("verdict") != "skipped":
            continue
        on = e.get("documented_on")
        key = f"documented-value forms skipped: model is not {on}" if on else f"skipped: {e.get('reason') or '?'}"
        groups.setdefault(key, []).append(e)
    return sorted(groups.items(), key=lambda kv: -len(kv[1]))


def counts_line(results: list[dict]) -> str:
    counts = Counter(e.get("verdict", "?") for e in results)
    order = [v for v in VERDICTS if counts[v]] + sorted(v for v in counts if v not in VERDICTS)
    return ", ".join(f"{counts[v]} {v}" for v in order) or "no results"


def _clip(line: str, width: int) -> str:
    return line if len(line) <= width else line[:width - 1] + "…"


def summary_lines(doc: dict, *, verbose: int = 0, width: int = 120) -> list[str]:
    """The verdict summary of a results document, one line per item that ran, none over ``width``."""
    results = doc.get("results", [])
    ran = [e for e in results if e.get("verdict") != "skipped"]
    rows = [(label(e), str(e.get("model") or "-"), e.get("verdict", "?")) for e in ran]
    # columns as wide as their longest cell, within a share of the line
    widths = [min(max((len(row[i]) for row in rows), default=0), cap) for i, cap in enumerate((46, 16, 12))]
    lines = []
    for e, row in zip(ran, rows):
        value = measured(e)
        against = f"{value} vs {bound_text(e)}" if value else (e.get("reason") or e.get("summary") or "")
        cells = " ".join(f"{_clip(text, w):<{w}}" for text, w in zip(row, widths))
        note = f"  ({expectation(e)})" if expectation(e) else ""  # a changed verdict: never clipped away
        lines.append(_clip(f"{cells} {against}", width - len(note)) + note)
        if verbose >= 1:
            details = [e.get("summary") or "", f"why: {e['reason']}" if e.get("reason") else "",
                       "controls: " + ", ".join(f"{name} {state}" for name, state in (e.get("controls") or {}).items())
                       if e.get("controls") else ""]
            for text in filter(None, details):
                lines += textwrap.wrap(text, width, initial_indent="    ", subsequent_indent="      ")
    for sentence, group in skipped_groups(results):
        models = sorted({str(e.get("model") or "-") for e in group})
        lines.append(_clip(f"{len(group)} {sentence} (on {', '.join(models)})", width))
    lines.append(_clip(counts_line(results), width))
    for info in (doc.get("models") or {}).values():  # what each model read: with its BOS or without
        if isinstance(info, dict) and info.get("bos"):
            lines.append(_clip(f"{info.get('label', '?')}: BOS {info['bos']}", width))
    return lines
