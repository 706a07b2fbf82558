"""Figures as inline SVG strings, in pure Python: no plotting library, no torch, no JavaScript.

Every function returns one complete ``<svg>`` element (valid XML) sized by its viewBox, so the
report can inline it and a test can parse it with xml.etree.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf", "#7f7f7f")
FONT = 'font-family="Helvetica, Arial, sans-serif" fill="#222"'


def _num(v: float) -> str:
    """A coordinate with two decimals, no trailing zeros: keeps the file small."""
    return f"{v:.2f}".rstrip("0").rstrip(".")


def fmt(v: float) -> str:
    """A tick or value label: short, and exponent notation only for very large or small values."""
    if v == 0 or not math.isfinite(v):
        return "0" if v == 0 else str(v)
    a = abs(v)
    if a >= 1e5 or a < 1e-3:
        m, e = f"{v:.1e}".split("e")
        return f"{m.rstrip('0').rstrip('.')}e{int(e)}"
    return f"{v:.0f}" if a >= 1e4 else f"{v:.4g}"


def _svg(width: float, height: float, body: list[str], title: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_num(width)} {_num(height)}" '
            f'width="{_num(width)}" height="{_num(height)}" role="img" class="figure">'
            f'<title>{escape(title)}</title><rect width="100%" height="100%" fill="#fff"/>'
            + "".join(body) + "</svg>")


def _text(x: float, y: float, s: str, *, anchor: str = "middle", size: int = 11, bold: bool = False,
          rotate: bool = False) -> str:
    extra = (' font-weight="bold"' if bold else "") + (f' transform="rotate(-90 {_num(x)} {_num(y)})"' if rotate else "")
    return (f'<text x="{_num(x)}" y="{_num(y)}" text-anchor="{anchor}" font-size="{size}" {FONT}{extra}>'
            f'{escape(s)}</text>')


def _finite(values) -> list[float]:
    return [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]


# ---------------------------------------------------------------- scales and axes

@dataclass(frozen=True)
class Scale:
    """Maps data [lo, hi] to pixels [a, b], linearly or on log10."""

    lo: float
    hi: float
    a: float
    b: float
    log: bool = False

    def __call__(self, v: float) -> float:
        lo, hi = (math.log10(self.lo), math.log10(self.hi)) if self.log else (self.lo, self.hi)
        if self.log:
            v = math.log10(max(v, self.lo))
        t = (v - lo) / (hi - lo) if hi > lo else 0.5
        return self.a + min(max(t, -0.05), 1.05) * (self.b - self.a)

    def ticks(self) -> list[float]:
        if self.log:
            e0, e1 = round(math.log10(self.lo)), round(math.log10(self.hi))
            step = max(1, math.ceil((e1 - e0) / 8))
            return [10.0 ** e for e in range(e0, e1 + 1, step)]
        return nice_ticks(self.lo, self.hi)


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About n round tick values covering [lo, hi]."""
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.ceil(lo / step - 1e-9) * step
    return [round(start + i * step, 12) for i in range(int((hi - start) / step + 1e-9) + 1)]


def y_range(values: list[float], *, log: bool) -> tuple[float, float]:
    """A data range for an axis: whole decades on log scale, round numbers from zero otherwise."""
    vals = _finite(values)
    if log:
        pos = [v for v in vals if v > 0] or [1.0]
        return 10.0 ** math.floor(math.log10(min(pos))), 10.0 ** math.ceil(math.log10(max(pos)) + 1e-12)
    lo, hi = min(vals + [0.0]), max(vals + [0.0])
    if hi == lo:
        hi = lo + 1
    ticks = nice_ticks(lo, hi)
    step = ticks[1] - ticks[0] if len(ticks) > 1 else hi - lo
    return math.floor(lo / step + 1e-9) * step, math.ceil(hi / step - 1e-9) * step  # out to round ticks


def _y_axis(sy: Scale, x0: float, x1: float, label: str) -> list[str]:
    out = []
    for t in sy.ticks():
        y = sy(t)
        out.append(f'<line x1="{_num(x0)}" x2="{_num(x1)}" y1="{_num(y)}" y2="{_num(y)}" stroke="#e5e5e5"/>')
        if sy.log:
            e = round(math.log10(t))
            out.append(f'<text x="{_num(x0 - 6)}" y="{_num(y + 4)}" text-anchor="end" font-size="11" {FONT}>10'
                       f'<tspan dy="-5" font-size="8">{e}</tspan></text>')
        else:
            out.append(_text(x0 - 6, y + 4, fmt(t), anchor="end"))
    ymid = (sy.a + sy.b) / 2
    out.append(_text(14, ymid, label, rotate=True))
    return out


def _frame(x0: float, y0: float, x1: float, y1: float) -> str:
    return (f'<rect x="{_num(x0)}" y="{_num(y0)}" width="{_num(x1 - x0)}" height="{_num(y1 - y0)}" '
            'fill="none" stroke="#999"/>')


def _legend(names: list[str], x: float, y: float) -> list[str]:
    out = []
    for i, name in enumerate(names):
        xx = x + i * 120
        out.append(f'<rect x="{_num(xx)}" y="{_num(y - 9)}" width="12" height="10" fill="{PALETTE[i % len(PALETTE)]}"/>')
        out.append(_text(xx + 16, y, name[:18], anchor="start"))
    return out


# ---------------------------------------------------------------- the figures

def line_plot(series: dict[str, list[float]], *, title: str, x_label: str = "layer", y_label: str = "",
              log_y: bool = False, highlight: list[int] = (), width: float = 640, height: float = 320) -> str:
    """One line per series over x = 0..n-1; ``highlight`` shades those x (e.g. massive layers)."""
    n = max((len(v) for v in series.values()), default=1)
    x0, y0, x1, y1 = 60, 44, width - 16, height - 44
    sx = Scale(0, max(n - 1, 1), x0, x1)
    sy = Scale(*y_range([v for s in series.values() for v in s], log=log_y), y1, y0, log=log_y)
    body = [_text(width / 2, 16, title, bold=True)]
    half = (x1 - x0) / max(n - 1, 1) / 2
    for i in highlight:
        body.append(f'<rect x="{_num(sx(i) - half)}" y="{y0}" width="{_num(2 * half)}" height="{_num(y1 - y0)}" '
                    'fill="#fdf1d6"/>')
    body += _y_axis(sy, x0, x1, y_label)
    for t in nice_ticks(0, n - 1, n=min(10, max(n - 1, 1))):
        if t == int(t):
            body.append(_text(sx(t), y1 + 14, str(int(t))))
    body.append(_text((x0 + x1) / 2, y1 + 30, x_label))
    for i, (name, vals) in enumerate(series.items()):
        pts = [(sx(j), sy(v)) for j, v in enumerate(vals) if isinstance(v, (int, float)) and math.isfinite(v)
               and (v > 0 or not log_y)]
        color = PALETTE[i % len(PALETTE)]
        if pts:
            d = " ".join(f"{_num(x)},{_num(y)}" for x, y in pts)
            body.append(f'<polyline points="{d}" fill="none" stroke="{color}" stroke-width="1.8"/>')
            body += [f'<circle cx="{_num(x)}" cy="{_num(y)}" r="2.2" fill="{color}"/>' for x, y in pts]
    body.append(_frame(x0, y0, x1, y1))
    body += _legend(list(series), x0 + 8, y0 - 6)
    return _svg(width, height, body, title)


def grouped_bars(categories: list[str], series: dict[str, list[float]], *, title: str, x_label: str = "",
                 y_label: str = "", log_y: bool = False, width: float = 640, height: float = 320) -> str:
    """Bars per category, one bar per series side by side."""
    x0, y0, x1, y1 = 60, 44, width - 16, height - 44
    sy = Scale(*y_range([v for s in series.values() for v in s], log=log_y), y1, y0, log=log_y)
    body = [_text(width / 2, 16, title, bold=True)] + _y_axis(sy, x0, x1, y_label)
    n, k = max(len(categories), 1), max(len(series), 1)
    slot = (x1 - x0) / n
    bar = slot * 0.8 / k
    base = y1 if log_y else sy(0.0)
    every = max(1, math.ceil(n / 16))
    for c, cat in enumerate(categories):
        if c % every == 0:
            body.append(_text(x0 + slot * (c + 0.5), y1 + 14, cat[:14]))
        for s, vals in enumerate(series.values()):
            v = vals[c] if c < len(vals) else None
            if not isinstance(v, (int, float)) or not math.isfinite(v) or (log_y and v <= 0):
                continue
            top = sy(v)
            bx = x0 + slot * (c + 0.1) + s * bar
            body.append(f'<rect x="{_num(bx)}" y="{_num(min(top, base))}" width="{_num(bar)}" '
                        f'height="{_num(abs(base - top))}" fill="{PALETTE[s % len(PALETTE)]}">'
                        f'<title>{escape(cat)} {escape(list(series)[s])}: {fmt(v)}</title></rect>')
    body.append(_text((x0 + x1) / 2, y1 + 30, x_label))
    body.append(_frame(x0, y0, x1, y1))
    body += _legend(list(series), x0 + 8, y0 - 6)
    return _svg(width, height, body, title)


def _color(t: float) -> str:
    """White -> deep blue for t in [0, 1]."""
    t = min(max(t, 0.0), 1.0)
    r, g, b = (int(255 + (c - 255) * t) for c in (8, 48, 107))
    return f"#{r:02x}{g:02x}{b:02x}"


def heatmap(matrix: list[list[float]], *, title: str, row_label: str = "layer", col_label: str = "head",
            vmin: float = 0.0, vmax: float | None = None, width: float = 640) -> str:
    """Rows x columns of colored cells, with a color bar; rows top to bottom."""
    rows, cols = len(matrix), max((len(r) for r in matrix), default=0)
    vals = _finite(v for r in matrix for v in r)
    vmax = vmax if vmax is not None else (max(vals) if vals else 1.0)
    x0, y0 = 60, 34
    cell_w = min(36.0, (width - x0 - 90) / max(cols, 1))
    cell_h = min(16.0, max(6.0, 480 / max(rows, 1)))
    x1, y1 = x0 + cell_w * cols, y0 + cell_h * rows
    height = y1 + 44
    body = [_text(width / 2, 16, title, bold=True)]
    every_r = max(1, math.ceil(rows / 16))
    for i, row in enumerate(matrix):
        if i % every_r == 0:
            body.append(_text(x0 - 6, y0 + cell_h * (i + 0.5) + 4, str(i), anchor="end"))
        for j, v in enumerate(row):
            ok = isinstance(v, (int, float)) and math.isfinite(v)
            t = (v - vmin) / (vmax - vmin) if ok and vmax > vmin else 0.0
            fill = _color(t) if ok else "#ccc"
            body.append(f'<rect x="{_num(x0 + j * cell_w)}" y="{_num(y0 + i * cell_h)}" width="{_num(cell_w)}" '
                        f'height="{_num(cell_h)}" fill="{fill}"><title>{row_label} {i}, {col_label} {j}: '
                        f'{fmt(v) if ok else "n/a"}</title></rect>')
    every_c = max(1, math.ceil(cols / 16))
    for j in range(0, cols, every_c):
        body.append(_text(x0 + cell_w * (j + 0.5), y1 + 14, str(j)))
    body.append(_text((x0 + x1) / 2, y1 + 30, col_label))
    body.append(_text(14, (y0 + y1) / 2, row_label, rotate=True))
    body.append(_frame(x0, y0, x1, y1))
    bx = x1 + 24
    for k in range(20):  # color bar, top = vmax
        body.append(f'<rect x="{_num(bx)}" y="{_num(y0 + k * (y1 - y0) / 20)}" width="14" '
                    f'height="{_num((y1 - y0) / 20 + 0.5)}" fill="{_color(1 - k / 19)}"/>')
    body.append(_text(bx + 18, y0 + 8, fmt(vmax), anchor="start"))
    body.append(_text(bx + 18, y1, fmt(vmin), anchor="start"))
    return _svg(width, height, body, title)


def scatter(panels: dict[str, tuple[list[float], list[float]]], *, title: str, x_label: str = "",
            y_label: str = "", notes: dict[str, str] | None = None, max_points: int = 1500,
            panel_width: float = 300, height: float = 300) -> str:
    """Side-by-side scatter panels, each with its own scales; at most ``max_points`` points each."""
    notes = notes or {}
    width = 20 + panel_width * max(len(panels), 1)
    body = [_text(width / 2, 16, title, bold=True)]
    for p, (name, (xs, ys)) in enumerate(panels.items()):
        pts = [(float(x), float(y)) for x, y in zip(xs, ys) if isinstance(x, (int, float)) and
               isinstance(y, (int, float)) and math.isfinite(x) and math.isfinite(y)]
        step = max(1, math.ceil(len(pts) / max_points))
        pts = pts[::step]
        left = 20 + p * panel_width
        x0, y0, x1, y1 = left + 50, 40, left + panel_width - 12, height - 44
        sx = Scale(*y_range([x for x, _ in pts] or [0, 1], log=False), x0, x1)
        sy = Scale(*y_range([y for _, y in pts] or [0, 1], log=False), y1, y0)
        for t in sy.ticks():
            body.append(_text(x0 - 5, sy(t) + 4, fmt(t), anchor="end"))
        for t in sx.ticks():
            body.append(_text(sx(t), y1 + 14, fmt(t)))
        body.append(_text((x0 + x1) / 2, y1 + 30, x_label))
        if p == 0:
            body.append(_text(12, (y0 + y1) / 2, y_label, rotate=True))
        head = name + (f" ({notes[name]})" if name in notes else "")
        body.append(_text((x0 + x1) / 2, 32, head))
        color = PALETTE[p % len(PALETTE)]
        body += [f'<circle cx="{_num(sx(x))}" cy="{_num(sy(y))}" r="1.8" fill="{color}" fill-opacity="0.6"/>'
                 for x, y in pts]
        body.append(_frame(x0, y0, x1, y1))
    return _svg(width, height, body, title)


def bars3d(values: list[list[float]], *, rows: list[str], cols: list[str], title: str,
           row_label: str = "token", col_label: str = "feature", width: float = 760, zmax: float = 260) -> str:
    """Isometric bars: ``values[r][c]`` (>= 0) standing on a rows x cols grid, drawn back to front."""
    nr, nc = len(rows), len(cols)
    vmax = max(_finite(v for r in values for v in r) or [1.0]) or 1.0
    # unit grid cell, projected: x (rows) goes down-right, y (cols) goes down-left
    cell = min(40.0, (width - 200) / (max(nr + nc, 1) * math.cos(math.pi / 6)))
    cx, cy = cell * math.cos(math.pi / 6), cell * math.sin(math.pi / 6)
    ox = 100 + nc * cx
    oy = 40 + zmax
    height = oy + (nr + nc) * cy + 60

    def proj(x: float, y: float, z: float) -> tuple[float, float]:
        return ox + (x - y) * cx, oy + (x + y) * cy - z / vmax * zmax

    def poly(pts, fill: str, extra: str = "") -> str:
        return f'<polygon points="{" ".join(f"{_num(a)},{_num(b)}" for a, b in pts)}" fill="{fill}"{extra}/>'

    body = [_text(width / 2, 16, title, bold=True)]
    floor = [proj(0, 0, 0), proj(nr, 0, 0), proj(nr, nc, 0), proj(0, nc, 0)]
    body.append(poly(floor, "#f4f4f4", ' stroke="#999"'))
    for t in nice_ticks(0, vmax, n=4):  # z scale on the back corner
        x, y = proj(0, 0, t)
        body.append(f'<line x1="{_num(x)}" x2="{_num(x - 5)}" y1="{_num(y)}" y2="{_num(y)}" stroke="#999"/>')
        body.append(_text(x - 8, y + 4, fmt(t), anchor="end"))
    top_x, top_y = proj(0, 0, vmax)
    body.append(f'<line x1="{_num(proj(0, 0, 0)[0])}" x2="{_num(top_x)}" y1="{_num(proj(0, 0, 0)[1])}" '
                f'y2="{_num(top_y)}" stroke="#999"/>')
    body.append(_text(top_x, top_y - 8, "|activation|"))
    w = 0.7
    body.append('<g stroke="#555" stroke-width="0.3">')
    for s in range(nr + nc - 1):  # back (small x + y) to front
        for r in range(max(0, s - nc + 1), min(nr, s + 1)):
            c = s - r
            v = values[r][c] if c < len(values[r]) else 0.0
            v = v if isinstance(v, (int, float)) and math.isfinite(v) else 0.0
            if v <= 0:
                continue
            t = v / vmax
            base = _color(0.25 + 0.75 * t)
            x, y = r + (1 - w) / 2, c + (1 - w) / 2
            tip = f"<title>{escape(rows[r])} / {escape(cols[c])}: {fmt(v)}</title>"
            body.append("<g>" + tip
                        + poly([proj(x + w, y, 0), proj(x + w, y + w, 0), proj(x + w, y + w, v), proj(x + w, y, v)],
                               _shade(base, 0.8))
                        + poly([proj(x, y + w, 0), proj(x + w, y + w, 0), proj(x + w, y + w, v), proj(x, y + w, v)],
                               _shade(base, 0.65))
                        + poly([proj(x, y, v), proj(x + w, y, v), proj(x + w, y + w, v), proj(x, y + w, v)], base)
                        + "</g>")
    body.append("</g>")
    for r, name in enumerate(rows):  # token labels along the front-left edge (y = nc)
        x, y = proj(r + 0.5, nc, 0)
        body.append(_text(x - 6, y + 8, name[:12], anchor="end"))
    for c, name in enumerate(cols):  # feature labels along the front-right edge (x = nr)
        x, y = proj(nr, c + 0.5, 0)
        body.append(_text(x + 6, y + 8, name[:8], anchor="start", size=9))
    lx, ly = proj(nr / 2, nc, 0)
    body.append(_text(lx - 60, ly + 36, row_label))
    fx, fy = proj(nr, nc / 2, 0)
    body.append(_text(fx + 60, fy + 36, col_label))
    return _svg(width, height, body, title)


def _shade(color: str, k: float) -> str:
    r, g, b = (int(int(color[i:i + 2], 16) * k) for i in (1, 3, 5))
    return f"#{r:02x}{g:02x}{b:02x}"
