"""report.html: rendered from a synthetic results document with every figure, and from a real
run of the plugin on a tiny saved model; self-contained, small, valid SVG, no torch."""
from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from builders import save_tiny, tiny_model
from massact.report import figures as fig
from massact.report import html

ROOT = Path(__file__).resolve().parent.parent
CLAIMS = ROOT / "claims"
SVG_NS = "{http://www.w3.org/2000/svg}"


def synthetic_doc() -> dict:
    """A results document carrying every kind of figure data, and every kind of row."""
    L, H = 12, 6
    top1 = [3.0, 40.0] + [2500.0] * (L - 3) + [300.0]
    profile = {"top1": top1, "top2": [t / 4 for t in top1], "top3": [t / 8 for t in top1],
               "median": [0.3 + 0.05 * l for l in range(L)]}

    def verdict(claim, verdict, *, primary=None, value=None, details=None, **kw):
        r = {"claim": claim, "variant": "general", "version": 1, "model": "toy-12l", "source": "001 Exp1",
             "statement": f"statement of {claim}", "verdict": verdict, "summary": f"{claim} measured",
             "threshold": "some threshold", "documented": "gpt2: 1.0", "reason": "" if verdict == "holds" else "why",
             "primary": primary, "values": {primary: value} if primary else {},
             "intervals": {primary: [value * 0.95, value * 1.05]} if primary else {},
             "bootstrap": {"samples": 10, "resamples": 200, "share_holding": 1.0, "confidence": 0.95},
             "controls": {}, "details": details or {}, "spec": "toy-12l", "expected": "holds"}
        r.update(kw)
        return r

    results = [
        verdict("massive.exists", "holds", primary="margin", value=8.3,
                details={"profile": profile, "massive_layers": list(range(2, L - 1))}),
        verdict("massive.emergence", "inconclusive", primary="jump", value=62.5, controls={"random init": False}),
        verdict("ablate.attention_all", "refuted", primary="worst_change", value=0.28, expected="refuted",
                details={"layers": [2, 3], "baseline_top1": top1, "ablated_top1": [t * 1.2 for t in top1]}),
        verdict("ablate.mlp_all", "holds", primary="worst_change", value=-0.99,
                details={"layers": [2, 3], "baseline_top1": top1, "ablated_top1": [t / 90 for t in top1]}),
        verdict("mlp.checkpoints", "holds", primary="factor", value=41.0,
                details={"layer": 2, "checkpoints": {"input": {"max": 3.1, "median": 0.4}, "pre_act": {"max": 60.0,
                         "median": 0.5}, "act": {"max": 60.0, "median": 0.1}, "output": {"max": 2400.0, "median": 0.2}}}),
        verdict("svd.projection_r2", "non-specific", primary="r2", value=0.97, controls={"random direction": True},
                details={"scatter": {"x": [i / 10 for i in range(300)], "y": [2 * i / 10 + (i % 7) for i in range(300)]},
                         "control_scatter": {"random": {"x": [i % 13 for i in range(300)], "y": [i % 5 for i in range(300)]}},
                         "r2": 0.97}),
        verdict("heads.first_token_scores", "holds", primary="share", value=0.6,
                details={"scores": [[(l * H + h) % 10 / 10 for h in range(H)] for l in range(L)]}),
        verdict("heads.types", "invalid", details={"types": {"sink": 20, "positional": 9, "mixed": 43}}),
        {"claim": "massive.exists", "variant": "gpt2", "version": 1, "model": "toy-12l", "spec": "toy-12l",
         "source": "001 Table 1", "statement": "documented numbers", "threshold": "within 15%", "documented": "2946x",
         "verdict": "skipped", "reason": "documented on gpt2; this item's model is toy-12l", "summary": ""},
        {"claim": "massive.broken", "model": None, "spec": None, "verdict": "bad-record",
         "reason": "massive.toml record 3: unknown field(s) ['statment']", "summary": "", "threshold": "",
         "documented": ""},
    ]
    tokens = ["Summer", " is", " warm", ".", " Winter", " is", " cold", "."]
    feats = [3, 17, 40, 41, 99, 128]
    values = [[(2500.0 if (t == 0 and f == 40) else 0.5 + (t * f) % 7 / 3) for f in feats] for t in range(len(tokens))]
    return {
        "schema": 1, "complete": True, "started": "2026-01-01T00:00:00+00:00", "wall_seconds": 12.5,
        "forward_passes": 3, "samples_run": 30, "resamples": 200, "pass_seconds": 9.1,
        "corpus": {"name": "corpus", "sha256": "ab" * 32, "nsamples": None, "seqlen": 128, "seed": 0, "bos": False},
        "models": {"toy-12l": {"name": "toy-12l", "architecture": "llama", "dtype": "float32", "device": "cpu",
                               "layers": L, "hidden_size": 192, "weights_sha256": "c0ffee" * 10, "source": "/models/toy",
                               "prompt_activations": {"prompt": "Summer is warm. Winter is cold.", "layer": 2,
                                                      "layer_from": "first massive layer", "tokens": tokens,
                                                      "features": feats, "values": values}}},
        "versions": {"python": "3.11", "massact": "0.1.0", "torch": "2.13.0", "transformers": "5.23.0"},
        "git_commit": "0123456789abcdef", "results": results,
    }


def svgs(page: str) -> list[ET.Element]:
    """Every inline <svg> of a page, parsed as XML (a syntax error fails the test)."""
    return [ET.fromstring(m) for m in re.findall(r"<svg\b.*?</svg>", page, re.S)]


def test_synthetic_report_has_every_row_verdict_figure_and_provenance(tmp_path):
    doc = synthetic_doc()
    path = html.write_report(doc, tmp_path / "report.html")
    page = path.read_text()
    for r in doc["results"]:
        assert r["claim"] in page and r["verdict"] in page
    assert "documented on gpt2; this item&#x27;s model is toy-12l" in page  # skipped, with its reason
    assert "worst_change = 0.28" in page and "95% CI [0.266, 0.294]" in page
    assert "random direction: <b" in page and "also holds" in page  # a control's outcome
    for needle in ("c0ffee" * 10, "toy-12l", "llama", "float32", "0123456789abcdef", "2.13.0", "ab" * 32,
                   "forward passes", "12.5"):
        assert needle in page, needle
    figures = svgs(page)
    assert len(figures) == 7  # profile, 3D bars, ablation, MLP flow, SVD scatter, heatmap, head types
    assert all(f.tag == f"{SVG_NS}svg" and f.get("viewBox") for f in figures)
    titles = " | ".join(f.find(f"{SVG_NS}title").text for f in figures)
    for t in ("per layer", "at layer 2", "MLP checkpoints", "projection", "first token", "head types"):
        assert t in titles
    assert "not measured in this run" not in page
    assert "<script" not in page and "http://" not in page.replace("http://www.w3.org/2000/svg", "")


def test_absent_figures_are_noted_and_incomplete_runs_flagged():
    doc = synthetic_doc()
    doc["complete"] = False
    doc["results"] = doc["results"][:1]
    del doc["models"]["toy-12l"]["prompt_activations"]
    page = html.render(doc)
    assert len(svgs(page)) == 1
    assert "MLP checkpoint flow: not measured in this run" in page
    assert "did not finish" in page


def test_figures_handle_degenerate_input():
    for svg in (fig.line_plot({"a": [0.0, float("nan"), 1.0]}, title="t", log_y=True),
                fig.line_plot({}, title="empty"),
                fig.grouped_bars([], {}, title="none"),
                fig.heatmap([], title="empty"),
                fig.heatmap([[float("nan"), 1.0], [0.5]], title="ragged <&>"),
                fig.scatter({"p": ([], [])}, title="no points"),
                fig.bars3d([[0.0]], rows=["<tok>"], cols=["0"], title="flat")):
        ET.fromstring(svg)
    assert fig.nice_ticks(0, 1) == [0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert fig.fmt(123456.0) == "1.2e5" and fig.fmt(0.5) == "0.5"


def test_large_run_stays_small():
    doc = synthetic_doc()
    big = doc["results"][5]["details"]["scatter"]
    big["x"], big["y"] = [i * 1e-3 for i in range(200_000)], [i * 2e-3 for i in range(200_000)]
    doc["results"] = [copy.deepcopy(r) | {"model": f"m{i}"} for i in range(6) for r in doc["results"]]
    assert len(html.render(doc).encode()) < 5_000_000


def test_render_never_imports_torch():
    code = ("import sys, massact.report.html, massact.report.diff, massact.__main__; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_cli_rerenders_the_report(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps(synthetic_doc()))
    res = subprocess.run([sys.executable, "-m", "massact", "report", str(tmp_path / "results.json"), "-o",
                          str(tmp_path / "out.html")], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    assert "massive.exists" in (tmp_path / "out.html").read_text()
    res = subprocess.run([sys.executable, "-m", "massact", "report", str(tmp_path / "missing.json")],
                         capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 2 and "error:" in res.stderr and "Traceback" not in res.stderr


@pytest.fixture
def claims_dir(pytester):
    dest = pytester.path / "claims"
    shutil.copytree(CLAIMS, dest, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A saved tiny GPT-2 (module scope: built before pytester snapshots sys.modules)."""
    path = tmp_path_factory.mktemp("tiny") / "gpt2"
    save_tiny(tiny_model("gpt2"), path)
    return path


def test_real_run_writes_report_beside_results(pytester, claims_dir, tiny):
    res = pytester.runpytest_subprocess("claims", "-k", "massive or ablate", "--model", str(tiny), "--nsamples", "2",
                                        "--seqlen", "32", "--resamples", "20", "-p", "no:cacheprovider")
    run_dir = next((pytester.path / "reports").glob("*/"))
    doc = json.loads((run_dir / "results.json").read_text())
    page = (run_dir / "report.html").read_text()
    assert f"report: {run_dir / 'report.html'}" in res.stdout.str()
    assert len(page.encode()) < 5_000_000
    for r in doc["results"]:
        assert r["claim"] in page
    assert doc["models"][str(tiny)]["weights_sha256"] in page
    pa = doc["models"][str(tiny)]["prompt_activations"]
    assert len(pa["tokens"]) == len("Summer is warm. Winter is cold.")  # a character tokenizer
    assert len(pa["values"]) == len(pa["tokens"]) and len(pa["values"][0]) == len(pa["features"]) == 24
    assert 0 <= pa["layer"] < 2
    figures = svgs(page)
    assert len(figures) >= 2  # profile and 3D bars; the random model has no massive layer to ablate


def test_interrupted_run_still_writes_the_report(pytester, claims_dir, tiny):
    pytester.makeconftest("""
        seen = []
        def pytest_runtest_call(item):
            seen.append(item)
            if len(seen) == 2:
                raise KeyboardInterrupt
    """)
    pytester.runpytest_subprocess("claims", "-k", "massive", "--model", str(tiny), "--nsamples", "2",
                                  "--seqlen", "32", "--resamples", "0", "-p", "no:cacheprovider")
    run_dir = next((pytester.path / "reports").glob("*/"))
    doc = json.loads((run_dir / "results.json").read_text())
    assert doc["complete"] is False and len(doc["results"]) == 1
    page = (run_dir / "report.html").read_text()
    assert "did not finish" in page and doc["results"][0]["claim"] in page
    assert "prompt_activations" not in doc["models"][str(tiny)]  # no extra pass after Ctrl-C
