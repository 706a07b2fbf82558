"""Inline SVG for the report, drawn with matplotlib from massact.figures records (as dicts).

``draw(figure)`` handles every kind generically: it knows the record types, never a claim.
matplotlib is used through its object API (``Figure`` and ``savefig``) inside an
``rc_context``, so drawing changes no global state and picks no pyplot backend. The SVG is
deterministic (fixed font, no date, a hash salt taken from the record itself, no unused ids):
identical records give byte-identical SVG. Text stays text (no embedded glyphs), so figures
stay small; a check samples dense scatters before handing them over.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import re
import textwrap
from collections.abc import Callable
from html import escape

import matplotlib
import numpy as np
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import FuncFormatter, LogLocator, ScalarFormatter

STYLE = {
    "svg.fonttype": "none",  # text as <text>, no glyph paths: small, searchable
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans"],  # ships with matplotlib: the same layout everywhere
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#e6e6e6",
    "grid.linewidth": 0.6,
    "legend.frameon": False,
    "legend.fontsize": 8,
}
NO_METADATA = {"Date": None, "Creator": None, "Format": None, "Type": None}
WIDE = (6.4, 3.6)  # inches; at 72 pt per inch an SVG of about 460 x 260 pt
_ROUND = re.compile(r"(\.\d\d)\d+")  # digits past 0.01
REF_COLOR, BAND_COLOR, SPAN_COLOR, MARK_COLOR = "#57606a", "#2da44e", "#8c959f", "#cf222e"


def draw(figure: dict) -> str:
    """One figure record (``massact.figures`` as a dict, with ``kind``) as an inline ``<svg>``."""
    kind = figure.get("kind")
    drawer = DRAWERS.get(kind)
    if drawer is None:
        raise ValueError(f"unknown figure kind {kind!r}; known: {', '.join(sorted(DRAWERS))}")
    # the salt makes matplotlib's clip-path and marker ids unique per figure on a shared page
    salt = hashlib.sha256(json.dumps(figure, sort_keys=True, default=str).encode()).hexdigest()[:12]
    with matplotlib.rc_context(STYLE | {"svg.hashsalt": salt}):
        fig = Figure(figsize=WIDE, layout="constrained")
        drawer(fig, figure)
        buf = io.StringIO()
        fig.savefig(buf, format="svg", metadata=NO_METADATA, dpi=120, bbox_inches="tight", pad_inches=0.04)
    return _inline(buf.getvalue(), figure.get("title") or kind)


def _inline(svg: str, title: str) -> str:
    """The <svg> element alone (no XML prolog or DOCTYPE), with a <title>; smaller: unused ids dropped,
    coordinates to 0.01 pt instead of 1e-6, no indentation."""
    svg = svg[svg.index("<svg"):]
    used = set(re.findall(r'#([^)"\s]+)', svg))
    svg = re.sub(r' id="([^"]+)"', lambda m: m.group(0) if m.group(1) in used else "", svg)
    svg = re.sub(r' (?:d|x|y|transform|points)="[^"]*"', lambda m: _ROUND.sub(r"\1", m.group(0)), svg)
    svg = re.sub(r"\n +", "\n", svg)
    return re.sub(r"<svg\b([^>]*)>", lambda m: f'<svg{m.group(1)} role="img"><title>{escape(title)}</title>',
                  svg, count=1).strip()


# ---------------------------------------------------------------- shared pieces

def _array(values) -> np.ndarray:
    """A float array; None becomes NaN."""
    return np.array([np.nan if v is None else v for v in values], dtype=float)


def _value_axis(ax, axis, *, unit: str, log: bool) -> None:
    """Scale and tick labels of the value axis ('x' or 'y') in the record's unit, after the data are drawn.

    A log axis spanning under two decades is ticked at 1, 2, 3 and 5 of each and labelled in plain
    numbers (10, 20, 30, 50): matplotlib's default there writes 2x10^1."""
    target = ax.yaxis if axis == "y" else ax.xaxis
    if log:
        (ax.set_yscale if axis == "y" else ax.set_xscale)("log")
    lo, hi = ax.get_ylim() if axis == "y" else ax.get_xlim()
    narrow = log and 0 < lo and hi < 100 * lo
    formatter = {"%": lambda: FuncFormatter(lambda v, _: f"{v * 100:.4g}%"),
                 "x": lambda: FuncFormatter(lambda v, _: f"{v:g}x")}.get(unit, _plain if narrow else None)
    if formatter is not None:
        target.set_major_formatter(formatter())
    if narrow:
        target.set_minor_locator(LogLocator(subs=(2.0, 3.0, 5.0)))
        target.set_minor_formatter(formatter())


def _plain() -> ScalarFormatter:
    """Numbers as they are: no offset, no "1e6" above the axis."""
    formatter = ScalarFormatter(useOffset=False)
    formatter.set_scientific(False)
    return formatter


def _refs(ax, refs: list[dict]) -> None:
    """Dashed horizontal lines, labelled at the right end."""
    for ref in refs:
        ax.axhline(ref["value"], color=REF_COLOR, linestyle="--", linewidth=1)
        ax.annotate(ref["label"], xy=(1.0, ref["value"]), xycoords=("axes fraction", "data"), ha="right",
                    va="bottom", fontsize=8, color=REF_COLOR)


def _bands(ax, bands: list[dict]) -> None:
    for band in bands:
        ax.axhspan(band["lo"], band["hi"], color=BAND_COLOR, alpha=0.14, linewidth=0, label=band["label"])


def _spans(ax, spans: list[dict]) -> None:
    """Shaded category ranges (inclusive), e.g. the massive layers."""
    for span in spans:
        ax.axvspan(span["lo"] - 0.5, span["hi"] + 0.5, color=SPAN_COLOR, alpha=0.16, linewidth=0,
                   label=span["label"])


def _legend(fig, ax) -> None:
    """Below the axes, so it never hides data; only when something is labelled."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=min(len(handles), 4))


def _empty(ax, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what}", ha="center", va="center", transform=ax.transAxes, color=REF_COLOR)


# ---------------------------------------------------------------- the kinds

def _lines(fig, f: dict) -> None:
    ax = fig.add_subplot()
    x = _array(f.get("x", []))
    series = f.get("series", {})
    for name, ys in series.items():
        ax.plot(x[:len(ys)], _array(ys), marker="o" if len(x) <= 16 else None, markersize=3, linewidth=1.4,
                label=name)
    for name, pts in f.get("points", {}).items():
        xs = [float(k) for k in pts]
        ax.scatter(xs, list(pts.values()), marker="D", s=22, color="black", zorder=3, label=name)
    if not series and not f.get("points"):
        _empty(ax, "values")
    _bands(ax, f.get("bands", []))
    _spans(ax, f.get("spans", []))
    _refs(ax, f.get("refs", []))
    _value_axis(ax, "y", unit=f.get("unit", ""), log=f.get("log_y", False))
    ax.set_xlabel(f.get("x_label", ""))
    ax.set_ylabel(f.get("y_label", ""))
    if len(x) and np.all(np.isfinite(x)) and np.all(x == np.round(x)) and len(x) <= 64:
        ax.xaxis.get_major_locator().set_params(integer=True)
    _legend(fig, ax)


def _bars(fig, f: dict) -> None:
    ax = fig.add_subplot()
    cats, series = f.get("categories", []), f.get("series", {})
    pos = np.arange(len(cats))
    n = max(len(series), 1)
    width = 0.8 if f.get("stacked") else 0.8 / n
    bottom = np.zeros(len(cats))
    for i, (name, vals) in enumerate(series.items()):
        v = _array(vals)[:len(cats)]
        v = np.pad(v, (0, len(cats) - len(v)), constant_values=np.nan)
        if f.get("stacked"):
            ax.bar(pos, v, width, bottom=bottom, label=name)
            bottom = bottom + np.nan_to_num(v)
        else:
            ax.bar(pos + (i - (n - 1) / 2) * width, v, width, label=name)
    if not cats:
        _empty(ax, "categories")
    _bands(ax, f.get("bands", []))
    _spans(ax, f.get("spans", []))
    _refs(ax, f.get("refs", []))
    _value_axis(ax, "y", unit=f.get("unit", ""), log=f.get("log_y", False))
    longest = max((len(str(c)) for c in cats), default=0)
    step = max(1, math.ceil(len(cats) / 16))  # about 16 labels fit the width
    ax.set_xticks(pos[::step], [str(c) for c in cats][::step], rotation=90 if longest * len(cats) / step > 48 else 0)
    ax.grid(False, axis="x")
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_xlabel(f.get("x_label", ""))
    ax.set_ylabel(f.get("y_label", ""))
    _legend(fig, ax)


def _heatmap(fig, f: dict) -> None:
    ax = fig.add_subplot()
    rows = f.get("matrix", [])
    width = max((len(r) for r in rows), default=0)
    m = np.array([list(_array(r)) + [np.nan] * (width - len(r)) for r in rows], dtype=float).reshape(len(rows), width)
    finite = m[np.isfinite(m)]
    if finite.size == 0:
        _empty(ax, "values")
        return
    vmin = f.get("vmin") if f.get("vmin") is not None else float(finite.min())
    vmax = f.get("vmax") if f.get("vmax") is not None else float(finite.max())
    if f.get("log_color"):
        positive = finite[finite > 0]
        norm = LogNorm(vmin=max(vmin, float(positive.min()) if positive.size else 1e-12), vmax=max(vmax, 1e-12))
    else:
        norm = Normalize(vmin=vmin, vmax=vmax if vmax > vmin else vmin + 1)
    image = ax.imshow(m, aspect="auto", interpolation="none", cmap="viridis", norm=norm, origin="upper")
    bar = fig.colorbar(image, ax=ax)
    bar.set_label(f.get("value_label", ""))
    for r, c, label in f.get("marks", []):
        ax.add_patch(Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, edgecolor=MARK_COLOR, linewidth=1.6))
        if label:  # inside its cell: a label beside it would cover the neighbour
            ax.text(c, r, label, ha="center", va="center", fontsize=6, color=MARK_COLOR,
                    bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.6, "alpha": 0.85})
    ax.grid(False)
    ax.set_xlabel(f.get("col_label", ""))
    ax.set_ylabel(f.get("row_label", ""))
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.yaxis.get_major_locator().set_params(integer=True)


def _scatter(fig, f: dict) -> None:
    panels = f.get("panels", [])
    fig.set_size_inches(min(3.3 * max(len(panels), 1), 9.6), 3.8)
    axes = fig.subplots(1, max(len(panels), 1), squeeze=False)[0]
    for ax, p in zip(axes, panels):
        x, y = _array(p.get("x", [])), _array(p.get("y", []))
        ax.scatter(x, y, s=6, alpha=0.5, linewidths=0, label=f"{len(x)} points")
        fit = p.get("fit")
        if fit and len(x) and np.isfinite(x).any():
            xs = np.array([np.nanmin(x), np.nanmax(x)])
            ax.plot(xs, fit["slope"] * xs + fit["intercept"], color=MARK_COLOR, linewidth=1.2,
                    label=f"y = {fit['slope']:.4g} x {'+' if fit['intercept'] >= 0 else '-'} "
                          f"{abs(fit['intercept']):.4g}\nR² = {fit['r2']:.4f}")
        if not len(x):
            _empty(ax, "points")
        ax.set_title(p.get("title", ""), fontsize=9)
        ax.set_xlabel(f.get("x_label", ""))
        ax.legend(loc="upper left", fontsize=7)
        if p.get("note"):
            ax.text(0.98, 0.02, textwrap.fill(p["note"], 34), transform=ax.transAxes, ha="right", va="bottom",
                    fontsize=7, color=REF_COLOR, bbox={"facecolor": "white", "edgecolor": "#d0d7de", "pad": 2})
    axes[0].set_ylabel(f.get("y_label", ""))
    if not panels:
        _empty(axes[0], "panels")


def _bars3d(fig, f: dict) -> None:
    """The documents' Figure 1: tokens along the front axis, features going back, |a| up."""
    fig.set_size_inches(6.4, 4.6)
    fig.set_layout_engine("none")
    values = np.nan_to_num(np.array(f.get("values") or [[0.0]], dtype=float))
    rows, cols = f.get("rows", []), f.get("cols", [])
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0), projection="3d")
    n_rows, n_cols = values.shape
    xs, ys = np.meshgrid(np.arange(n_rows), np.arange(n_cols), indexing="ij")
    # bars of at least half the peak stand out, as in the documents' figure
    colors = [MARK_COLOR if v > 0 and v >= 0.5 * values.max() else "#4c72b0" for v in values.ravel()]
    bars = ax.bar3d(xs.ravel() - 0.3, ys.ravel() - 0.3, 0, 0.6, 0.6, values.ravel(), color=colors,
                    shade=True, linewidth=0)
    bars.set_rasterized(True)  # six polygons a bar: as vectors a 10 x 24 grid takes 180 kB
    peak = np.unravel_index(np.argmax(values), values.shape)
    z = values[peak]
    label = f.get("peak") or f"{cols[peak[1]] if peak[1] < len(cols) else peak[1]}: {z:,.5g}"
    ax.text(peak[0], peak[1], z * 1.04, label, ha="center", va="bottom", fontsize=8, color=MARK_COLOR, zorder=10)
    ax.set_xticks(range(n_rows), [json.dumps(r, ensure_ascii=False) for r in rows] if rows else None,
                  rotation=20, ha="right", va="top", fontsize=7)
    step = max(1, math.ceil(n_cols / 12))  # about 12 feature labels fit
    ax.set_yticks(range(0, n_cols, step), [str(c) for c in cols][::step] if cols else None, fontsize=7)
    ax.tick_params(axis="z", labelsize=7)
    ax.set_zlabel(f.get("z_label", ""), labelpad=8)
    ax.set_ylabel("feature", labelpad=4)
    ax.view_init(elev=24, azim=-62)  # tokens along the front edge, as the documents draw it
    ax.set_box_aspect((1.25, 1.25, 0.85), zoom=0.95)


def _histogram(fig, f: dict) -> None:
    ax = fig.add_subplot()
    edges = _array(f.get("edges", []))
    counts = f.get("counts", {})
    for name, c in counts.items():
        c = _array(c)
        if f.get("density") and np.nansum(c) > 0:
            c = c / (np.nansum(c) * np.diff(edges))
        filled = ax.stairs(c, edges, label=name, fill=True, alpha=0.3)
        ax.stairs(c, edges, linewidth=1, color=filled.get_facecolor(), alpha=1)
    if not counts or len(edges) < 2:
        _empty(ax, "counts")
    for ref in f.get("refs", []):
        ax.axvline(ref["value"], color=REF_COLOR, linestyle="--", linewidth=1)
        ax.annotate(ref["label"], xy=(ref["value"], 0.98), xycoords=("data", "axes fraction"), xytext=(2, 0),
                    textcoords="offset points", ha="left", va="top", fontsize=8, color=REF_COLOR)
    _value_axis(ax, "y", unit="", log=f.get("log_y", False))
    ax.set_xlabel(f.get("x_label", ""))
    ax.set_ylabel("density" if f.get("density") else "count")
    _legend(fig, ax)


def _curves(fig, f: dict) -> None:
    ax = fig.add_subplot()
    curves = f.get("curves", {})
    for name, (xs, ys) in curves.items():
        ax.plot(_array(xs), _array(ys), marker="o", markersize=4, linewidth=1.4, label=name)
    if not curves:
        _empty(ax, "values")
    _refs(ax, f.get("refs", []))
    _value_axis(ax, "x", unit="", log=f.get("log_x", False))
    ax.set_xlabel(f.get("x_label", ""))
    ax.set_ylabel(f.get("y_label", ""))
    _legend(fig, ax)


def _trend(fig, f: dict) -> None:
    """Runs along x (oldest first), the value with its interval in the run's verdict colour, the verdict
    written above each run, a dotted red line before each run whose verdict changed."""
    ax = fig.add_subplot()
    runs, verdicts, colors = f.get("runs", []), f.get("verdicts", []), f.get("colors", [])
    x = np.arange(len(runs))
    values = _array(f.get("values", []))
    ax.plot(x[:len(values)], values, color=SPAN_COLOR, linewidth=1.2, zorder=1)  # the trend; gaps where no value
    for i, (v, iv) in enumerate(zip(values, f.get("intervals", []))):
        if not np.isfinite(v):
            continue
        lo, hi = iv if iv and None not in iv else (v, v)
        ax.errorbar([i], [v], yerr=[[max(v - lo, 0.0)], [max(hi - v, 0.0)]], fmt="o", markersize=5, capsize=4,
                    color=colors[i] if i < len(colors) else REF_COLOR, zorder=3)
    if not np.isfinite(values).any():
        _empty(ax, "primary value: the verdicts only")
        ax.set_yticks([])
    _refs(ax, f.get("refs", []))
    changes = set(f.get("changes", []))
    for i in sorted(changes):
        ax.axvline(i - 0.5, color=MARK_COLOR, linestyle=":", linewidth=1.4)
    for i, verdict in enumerate(verdicts):  # every run's verdict when they fit, else the changes and both ends
        if verdict and (len(runs) <= 12 or i in changes or i in (0, len(runs) - 1)):
            ax.annotate(verdict, xy=(i, 1.0), xycoords=("data", "axes fraction"), xytext=(0, 3),
                        textcoords="offset points", ha="center", va="bottom", fontsize=7,
                        color=colors[i] if i < len(colors) else REF_COLOR, fontweight="bold" if i in changes else None)
    _value_axis(ax, "y", unit=f.get("unit", ""), log=f.get("log_y", False))
    step = max(1, math.ceil(len(runs) / 16))
    tilt = max((len(str(r)) for r in runs), default=0) * len(runs) / step > 60  # the labels would overlap level
    ax.set_xticks(x[::step], [str(r) for r in runs][::step], rotation=30 if tilt else 0,
                  ha="right" if tilt else "center")
    ax.set_xlim(-0.5, max(len(runs) - 0.5, 0.5))
    ax.grid(False, axis="x")
    ax.set_xlabel("run, oldest first")
    ax.set_ylabel(f.get("y_label", ""))


DRAWERS: dict[str, Callable[[Figure, dict], None]] = {
    "lines": _lines, "bars": _bars, "heatmap": _heatmap, "scatter": _scatter, "bars3d": _bars3d,
    "histogram": _histogram, "curves": _curves, "trend": _trend}
