"""What a check asks the report to draw: typed figure data, plain numbers and strings only.

A check puts figures in its Measurement; they travel in results.json as dicts (``asdict``,
with ``kind`` naming the type) and the report draws each kind the same way, whatever claim it
came from. No torch here, and no drawing: massact.report.figures turns these into SVG.

Units: a value series says how it is shown: ``"%"`` multiplies fractions by 100, ``"x"`` is a
factor, ``""`` a plain number; reference lines and bands are in the series' own units.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import ClassVar


@dataclass(frozen=True)
class Ref:
    """A horizontal reference line (a threshold, a documented value)."""

    value: float
    label: str


@dataclass(frozen=True)
class Band:
    """A shaded range along the value axis (``lo``..``hi``), e.g. the +-2 % a claim allows."""

    lo: float
    hi: float
    label: str


@dataclass(frozen=True)
class Span:
    """A shaded range along the category axis, e.g. the massive layers (inclusive)."""

    lo: float
    hi: float
    label: str


@dataclass(frozen=True)
class Figure:
    kind: ClassVar[str] = ""
    title: str
    caption: str

    def to_dict(self) -> dict:
        return {"kind": self.kind, **asdict(self)}


@dataclass(frozen=True)
class Lines(Figure):
    """Series over a shared x (layers, usually); ``points`` overlays markers (e.g. documented values)."""

    kind: ClassVar[str] = "lines"
    x: list[float]
    series: dict[str, list[float]]
    x_label: str = "layer"
    y_label: str = ""
    unit: str = ""
    log_y: bool = False
    refs: list[Ref] = field(default_factory=list)
    bands: list[Band] = field(default_factory=list)
    spans: list[Span] = field(default_factory=list)
    points: dict[str, dict[str, float]] = field(default_factory=dict)  # label -> {x (as str): y}


@dataclass(frozen=True)
class Bars(Figure):
    """Grouped (or stacked) bars: one group per category, one bar per series."""

    kind: ClassVar[str] = "bars"
    categories: list[str]
    series: dict[str, list[float]]
    x_label: str = ""
    y_label: str = ""
    unit: str = ""
    log_y: bool = False
    stacked: bool = False
    refs: list[Ref] = field(default_factory=list)
    bands: list[Band] = field(default_factory=list)
    spans: list[Span] = field(default_factory=list)  # in category positions (0-based)


@dataclass(frozen=True)
class Heatmap(Figure):
    """A matrix (rows x columns), with optional labelled cells (e.g. the heads an ablation used)."""

    kind: ClassVar[str] = "heatmap"
    matrix: list[list[float]]
    row_label: str = "layer"
    col_label: str = "head"
    value_label: str = ""
    vmin: float | None = None
    vmax: float | None = None
    log_color: bool = False
    marks: list[tuple[int, int, str]] = field(default_factory=list)  # (row, col, label)


@dataclass(frozen=True)
class Fit:
    slope: float
    intercept: float
    r2: float


@dataclass(frozen=True)
class ScatterPanel:
    title: str
    x: list[float]
    y: list[float]
    fit: Fit | None = None
    note: str = ""  # e.g. the controls' R^2, written beside the panel


@dataclass(frozen=True)
class Scatter(Figure):
    """One or more scatter panels side by side, each with its least-squares line."""

    kind: ClassVar[str] = "scatter"
    panels: list[ScatterPanel]
    x_label: str = ""
    y_label: str = ""


@dataclass(frozen=True)
class Bars3D(Figure):
    """Token x feature bars (the documents' Figure 1); ``peak`` labels the largest bar."""

    kind: ClassVar[str] = "bars3d"
    values: list[list[float]]  # rows (tokens) x columns (features)
    rows: list[str]
    cols: list[str]
    z_label: str = "|activation|"
    peak: str = ""


@dataclass(frozen=True)
class Histogram(Figure):
    """Distributions given as bin edges and counts per series (counts len = edges len - 1)."""

    kind: ClassVar[str] = "histogram"
    edges: list[float]
    counts: dict[str, list[float]]
    x_label: str = ""
    log_y: bool = False
    density: bool = False
    refs: list[Ref] = field(default_factory=list)  # vertical lines at these x values


@dataclass(frozen=True)
class Curves(Figure):
    """Series with x values of their own (e.g. loss against KV bytes, one curve per policy)."""

    kind: ClassVar[str] = "curves"
    curves: dict[str, tuple[list[float], list[float]]]  # label -> (x, y)
    x_label: str = ""
    y_label: str = ""
    log_x: bool = False
    refs: list[Ref] = field(default_factory=list)


@dataclass(frozen=True)
class Trend(Figure):
    """One claim's primary value across a series of runs, oldest first (``python -m massact history``
    draws it, not a check): the value with its interval per run, the threshold as reference lines,
    each run's verdict written above it in its colour, and a mark before each run whose verdict
    differs from the previous run's. ``None``: the run has no value (or no item) there."""

    kind: ClassVar[str] = "trend"
    runs: list[str]  # one label per run
    values: list[float | None]
    intervals: list[tuple[float, float] | None]
    verdicts: list[str]  # "" where the run has no item of this claim
    colors: list[str]  # each run's verdict colour
    changes: list[int] = field(default_factory=list)  # runs whose verdict differs from the previous run's
    y_label: str = ""
    unit: str = ""
    log_y: bool = False
    refs: list[Ref] = field(default_factory=list)


KINDS = {cls.kind: cls for cls in (Lines, Bars, Heatmap, Scatter, Bars3D, Histogram, Curves, Trend)}
