"""The report's figures: every kind of figure record drawn as small, valid, deterministic SVG."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import matplotlib
import pytest

from massact.figures import KINDS, Bars, Bars3D, Curves, Heatmap, Histogram, Lines, Ref, Scatter, ScatterPanel, Trend
from massact.report.figures import draw
from report_doc import results_doc

ROOT = Path(__file__).resolve().parent.parent
SVG = "{http://www.w3.org/2000/svg}"


TREND = Trend(title="massive.exists/general on m", caption="a value crossing its threshold",
              runs=["v1", "v2", "v3", "v4"], values=[0.3, 3.0, None, 30.0],
              intervals=[(0.25, 0.36), (2.5, 3.5), None, (28.0, 33.0)], verdicts=["refuted", "holds", "", "holds"],
              colors=["#cf222e", "#1a7f37", "#6e7781", "#1a7f37"], changes=[1], y_label="margin", log_y=True,
              refs=[Ref(1.0, "≥ 1")])


def every_figure() -> list[dict]:
    """The report fixture's figures, and the history page's trend (no check draws one)."""
    return [f for e in results_doc()["results"] for f in e.get("figures", [])] + [TREND.to_dict()]


def texts(svg: str) -> list[str]:
    return [t.text or "" for t in ET.fromstring(svg).iter(f"{SVG}text")]


def test_the_fixture_has_every_kind():
    assert {f["kind"] for f in every_figure()} == set(KINDS)


@pytest.mark.parametrize("figure", every_figure(), ids=lambda f: f["kind"])
def test_each_kind_draws_small_valid_svg_with_text_as_text(figure):
    svg = draw(figure)
    root = ET.fromstring(svg)  # well-formed, one element
    assert root.tag == f"{SVG}svg" and root.get("viewBox")
    assert root.find(f"{SVG}title").text == figure["title"]
    assert not svg.startswith("<?xml") and "<!DOCTYPE" not in svg
    assert "dc:date" not in svg and "matplotlib.org" not in svg  # no date, no creator metadata
    assert "DejaVuSans-" not in svg  # no embedded glyph paths: labels are <text>
    assert "'DejaVu Sans'" in svg
    assert len(svg) < 80_000
    assert len(texts(svg)) > 5  # axes are labelled


def test_identical_records_give_byte_identical_svg_across_processes():
    figures = every_figure()
    here = [draw(f) for f in figures]
    assert here == [draw(f) for f in figures]
    code = ("import json, sys; from massact.report.figures import draw; "
            "print(json.dumps([draw(f) for f in json.load(sys.stdin)]))")
    there = subprocess.run([sys.executable, "-c", code], input=json.dumps(figures), capture_output=True, text=True,
                           cwd=ROOT, check=True).stdout
    assert json.loads(there) == here


def test_ids_do_not_collide_between_figures_on_one_page():
    seen: dict[str, int] = {}
    for i, f in enumerate(every_figure()):
        for ident in re.findall(r' id="([^"]+)"', draw(f)):
            assert seen.setdefault(ident, i) == i, f"id {ident} in figures {seen[ident]} and {i}"


def test_drawing_changes_no_global_matplotlib_state():
    before = dict(matplotlib.rcParams)
    draw(every_figure()[0])
    assert dict(matplotlib.rcParams) == before
    code = ("import sys; from massact.report import html; "
            "assert 'matplotlib.pyplot' not in sys.modules and 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_what_each_kind_shows():
    by_kind = {f["kind"]: draw(f) for f in every_figure()}
    lines = texts(by_kind["lines"])
    assert "100" in lines and "massive layers" in lines and "documented (gpt2)" in lines
    bars = texts(by_kind["bars"])
    assert "+-2 % (claim)" in bars and "-60 %" in bars and any(t.endswith("%") for t in bars)  # percent axis
    heat = texts(by_kind["heatmap"])
    assert "attention on token 0" in heat and {"top-1", "top-2", "bottom"} <= set(heat)  # colour bar, marks
    scatter = texts(by_kind["scatter"])
    assert "R² = 0.9546" in scatter and "R² = 1.0000" in scatter
    assert any("controls: R² on v2" in t for t in scatter)
    bars3d = texts(by_kind["bars3d"])
    assert "dim 507: 23400" in bars3d and '"Summer"' in bars3d and '" is"' in bars3d  # peak, quoted tokens
    assert "6 std" in texts(by_kind["histogram"])
    trend = texts(by_kind["trend"])
    assert {"v1", "v2", "v3", "v4", "≥ 1", "refuted", "holds"} <= set(trend)  # runs, threshold, verdicts


def test_units_label_the_value_axis():
    pct = texts(draw(Bars("t", "", categories=["a", "b"], series={"s": [0.1, -0.3]}, unit="%").to_dict()))
    assert "10%" in pct and "0%" in pct
    fac = texts(draw(Lines("t", "", x=[0, 1], series={"s": [10.0, 1000.0]}, unit="x", log_y=True).to_dict()))
    assert {"10x", "100x", "1000x"} <= set(fac)


RAW_EXPONENT = re.compile(r"^1e[+-]?\d+$|\\times|^\n$")  # an offset "1e7" above an axis; a mathtext 2x10^1


def test_no_figure_writes_a_raw_exponent_where_a_number_reads_better():
    for f in every_figure():
        raw = [t for t in texts(draw(f)) if RAW_EXPONENT.search(t)]
        # a log axis over many decades keeps matplotlib's powers of ten (10^0 .. 10^4: mathtext)
        assert not raw or (f.get("log_y") and f["kind"] in ("lines", "histogram", "trend")), (f["kind"], raw)


def test_a_log_axis_over_few_decades_reads_in_plain_numbers():
    mib = texts(draw(Curves("t", "", curves={"a": ([8.6, 19.1, 38.2], [3.1, 2.9, 2.8])}, log_x=True).to_dict()))
    assert {"10", "20", "30"} <= set(mib) and not any(RAW_EXPONENT.search(t) for t in mib)
    big = texts(draw(Lines("t", "", x=[0, 1], series={"s": [2e6, 9e6]}, log_y=True).to_dict()))
    assert {"2000000", "3000000", "5000000"} <= set(big) and not any(RAW_EXPONENT.search(t) for t in big), big
    fac = texts(draw(Bars("t", "", categories=["a", "b"], series={"s": [1.5, 8.0]}, unit="x", log_y=True).to_dict()))
    assert {"2x", "3x", "5x"} <= set(fac) and not any(RAW_EXPONENT.search(t) for t in fac), fac


def test_the_kv_figures_draw_mib_per_sequence():
    """The head-aware cache's figures (on a tiny model): the bytes each cache holds per sequence, in MiB."""
    from massact.claims import judge
    from test_headtype_checks import context, short
    from builders import sink_heads_gpt2

    v = judge(short("kv.head_aware", "correct_method", passkey=False, scales=(0.5, 1.0)),
              context(sink_heads_gpt2(), "sinks"), resamples=0)
    kinds = {f["kind"]: f for f in v.figures}  # the loss-vs-bytes curve, the loss per position, the bytes held
    assert sorted(kinds) == ["bars", "curves", "lines"]
    curves, bars = kinds["curves"], kinds["bars"]
    held = v.details["kv_bytes"]
    assert bars["y_label"] == "MiB per sequence" and "per sequence" in bars["title"]
    assert bars["series"]["after 32 tokens"] == [held[k][-1] / 2**20 for k in bars["categories"]]
    assert curves["x_label"] == "KV cache held after 32 tokens (MiB per sequence)"
    assert curves["curves"]["random heads"][0] == [v.values["kv_bytes.random heads.32"] / 2**20]
    for f in (curves, bars):
        assert not any(RAW_EXPONENT.search(t) for t in texts(draw(f))), f["title"]


@pytest.mark.parametrize("figure", [
    Lines("empty", "", x=[], series={}),
    Lines("nan", "", x=[0, 1, 2], series={"a": [0.0, float("nan"), 1.0]}, log_y=True),
    Bars("none", "", categories=[], series={}),
    Heatmap("ragged <&>", "", matrix=[[float("nan"), 1.0], [0.5]], log_color=True),
    Heatmap("empty", "", matrix=[]),
    Scatter("no points", "", panels=[ScatterPanel("p", [], [])]),
    Scatter("no panels", "", panels=[]),
    Bars3D("flat", "", values=[[0.0]], rows=["<tok>"], cols=["0"]),
    Histogram("none", "", edges=[], counts={}),
    Curves("no curves", "", curves={}),
    Trend("no values", "", runs=["a", "b"], values=[None, None], intervals=[None, None], verdicts=["invalid", ""],
          colors=["#6e7781", "#6e7781"]),
    Trend("no runs", "", runs=[], values=[], intervals=[], verdicts=[], colors=[]),
], ids=lambda f: f.title)
def test_degenerate_records_still_draw(figure):
    root = ET.fromstring(draw(figure.to_dict()))
    assert root.find(f"{SVG}title").text == figure.title


def test_unknown_kind_is_named():
    with pytest.raises(ValueError, match="unknown figure kind 'pie'; known: bars, bars3d"):
        draw({"kind": "pie", "title": "t"})
