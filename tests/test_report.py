"""report.html: rendered from a hand-built two-model document with every verdict and figure kind, from
a real schema-1 run, and by the plugin on a tiny saved model; self-contained, small, no torch."""
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
from massact.report import html
from report_doc import results_doc

ROOT = Path(__file__).resolve().parent.parent
CLAIMS = ROOT / "claims"
SVG_NS = "{http://www.w3.org/2000/svg}"


def synthetic_doc() -> dict:
    """A schema-1 results document (as runs before figure records wrote them): one model, its figure
    data in details and models.<spec>.prompt_activations. The baseline diff's tests use it too."""
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
        verdict("massive.emergence", "inconclusive", primary="jump", value=62.5, controls={"random init": "ruled out"}),
        verdict("ablate.attention_all", "refuted", primary="worst_change", value=0.28, expected="refuted",
                details={"layers": [2, 3], "baseline_top1": top1, "ablated_top1": [t * 1.2 for t in top1]}),
        verdict("ablate.mlp_all", "holds", primary="worst_change", value=-0.99,
                details={"layers": [2, 3], "baseline_top1": top1, "ablated_top1": [t / 90 for t in top1]}),
        verdict("mlp.checkpoints", "holds", primary="factor", value=41.0,
                details={"layer": 2, "checkpoints": {"input": {"max": 3.1, "median": 0.4}, "pre_act": {"max": 60.0,
                         "median": 0.5}, "act": {"max": 60.0, "median": 0.1}, "output": {"max": 2400.0, "median": 0.2}}}),
        verdict("svd.projection_r2", "non-specific", primary="r2", value=0.97, controls={"random direction": "also holds"},
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


BLOCK = r"</?(?:p|div|li|ul|dl|dt|dd|tr|td|th|h\d|pre|table|section|article|summary|details)\b[^>]*>"


def text(page: str) -> str:
    """The page's text: block tags as spaces, inline ones dropped, whitespace folded (entities kept)."""
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", re.sub(BLOCK, " ", page))).strip()


def section(page: str, ident: str) -> str:
    return re.search(rf'<section id="{ident}">(.*?)</section>', page, re.S).group(1)


@pytest.fixture(scope="module")
def page() -> str:
    return html.render(results_doc())


def test_at_a_glance_comes_first_worst_first(page):
    assert page.index('id="glance"') < page.index('id="compared"') < page.index('id="verdicts"')
    glance = text(re.search(r'<ul class="glance">(.*?)</ul>', page, re.S).group(1))
    order = [glance.index(v) for v in ("refuted massive.exists/general", "inconclusive ablate.top_vs_bottom_heads",
                                       "non-specific ablate.top_vs_bottom_heads", "1 invalid", "3 hold")]
    assert order == sorted(order)
    assert "49.0x [41.0x, 57.5x] vs ≥ 1000x — top-1/median 49x &lt; 1000x at every layer" in glance
    assert "28.8% [25.9%, 32.2%] vs within ±2%" in glance  # one unit: fractions shown as percent
    assert "4 verdict(s) differ from the claim records' expectations" in text(section(page, "glance"))


def test_banner_says_what_was_compared_and_what_the_weights_are(page):
    banner = text(re.search(r'<div class="banner" id="compared">(.*?)</div>', page, re.S).group(1))
    assert "Compared 0 of 4 documented-value forms" in banner
    assert "4 were not compared: their numbers were measured on gpt2, and this run's models are smollm2-135m, " \
           "minilm-l6 (run with --model gpt2 to compare them)" in banner
    assert "smollm2-135m: SmolLM2-135M-Instruct, Q4_1 GGUF, dequantized to float32" in banner
    assert "gpt2: not loaded (ModelUnavailable:" in banner


def test_every_row_has_strip_expectation_and_a_link_to_its_section_and_back(page):
    rows = re.findall(r'<tr id="row-([^"]+)">(.*?)</tr>', section(page, "verdicts"), re.S)
    assert len(rows) == len([e for e in results_doc()["results"] if e["verdict"] != "skipped"])
    for ident, row in rows:
        assert f'href="#item-{ident}"' in row
        item = re.search(rf'<article class="item" id="item-{ident}">(.*?)</article>', page, re.S).group(1)
        assert f'href="#row-{ident}"' in item
    assert "as recorded" not in page and page.count("matches expectation") >= 8
    measured = [r for _, r in rows if 'class="num"' in r]
    assert all('class="strip"' in r for r in measured)
    (ablate,) = [r for i, r in rows if i == "ablate-attention-all-general-smollm2-135m"]
    # the interval as a bar, the bounds -2 % and +2 % as ticks, the region where it holds shaded
    assert ablate.count('class="tick"') == 2 and 'class="ok"' in ablate and 'class="iv"' in ablate


def test_claim_sections_carry_figures_values_controls_params_selections(page):
    article = re.search(r'<article class="item" id="item-svd-projection-r2-correct-method-smollm2-135m">(.*?)'
                        r"</article>", page, re.S).group(1)
    body = text(article)
    assert "layer = 11; dim = 507" in body and "the interval is conditional on these" in body
    assert "v2: ruled out" in body and "R^2 1.0000 rests on 64 high-leverage tokens" in body
    assert len(svgs(article)) == 1
    ablate = re.search(r'id="item-ablate-attention-all-general-smollm2-135m">(.*?)</article>', page, re.S).group(1)
    assert "values (18)" in ablate and "change.27" in ablate
    claim = re.search(r'<section class="claim" id="claim-massive-exists">(.*?)</section>', page, re.S).group(1)
    assert "The statement of massive.exists" in claim and "005 Exp1" in claim and "ratio = 1000" in claim


def test_claims_by_models_table(page):
    matrix = section(page, "matrix")
    assert re.findall(r"<th>(.*?)</th>", matrix) == ["claim / variant", "smollm2-135m", "minilm-l6", "document"]
    row = re.search(r"<tr><td>massive.<wbr>exists/<wbr>general</td>(.*?)</tr>", matrix).group(1)
    assert re.findall(r">(holds|refuted)</a>", row) == ["holds", "refuted"]


def test_provenance(page):
    prov = text(section(page, "provenance"))
    for needle in ("pytest claims/ --model smollm2-135m --model minilm-l6 --html=out.html",
                   "2500ea2d017df09244b2033406467752d8b1f5ba with uncommitted changes", "e1" * 32,
                   "available: 412, run: 50", "b1" * 32, "torch 2.13.0+cpu", "forward passes 43"):
        assert needle in prov, needle


def test_self_contained_and_escaped():
    doc = results_doc()
    doc["results"][0]["reason"] = "<script>alert(1)</script>"
    page = html.render(doc)
    assert "<script" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    for pattern in (r"<link\b", r"@import", r"url\(\s*['\"]?(https?:|//)", r"\bsrc=\"(https?:|//)"):
        assert not re.search(pattern, page), pattern


def test_each_distinct_figure_drawn_once():
    doc = results_doc()
    page = html.render(doc)
    figures = svgs(page)
    assert len(figures) == sum(len(e.get("figures") or []) for e in doc["results"]) == 7
    assert all(f.tag == f"{SVG_NS}svg" and f.get("viewBox") for f in figures)
    doc["results"][1]["figures"] = copy.deepcopy(doc["results"][0]["figures"])  # the same profile again
    page = html.render(doc)
    assert len(svgs(page)) == 7 and page.count("The same figure as") == 2


def test_incomplete_runs_are_flagged():
    doc = results_doc()
    doc["complete"] = False
    assert "This run did not finish" in html.render(doc)


def test_schema1_documents_render():
    page = html.render(synthetic_doc())
    assert svgs(page) == []  # schema 1 carried no figure records
    assert "marks no documented-value forms (results schema 1)" in page
    assert "not recorded in this results document (schema 1)" in page
    assert "0.28 [0.266, 0.294]" in page  # no unit known: the plain number
    assert "documented on gpt2; this item&#39;s model is toy-12l" in page


def test_two_model_report_stays_under_5_mb(tmp_path):
    """Every item that ran carries figures (drawn apart: each made distinct), two models, as in a full run."""
    doc = results_doc()
    kinds = [f for e in doc["results"] for f in e.get("figures", [])]
    ran = [e for e in doc["results"] if e["verdict"] not in ("skipped", "bad-record")]
    results = []
    for copy_no in range(5):  # ~60 items, as many as a two-model run of the claims
        for e in ran:
            e = copy.deepcopy(e) | {"claim": f"{e['claim']}{copy_no}"}
            e["figures"] = [copy.deepcopy(kinds[(copy_no + i) % len(kinds)]) | {"title": f"{e['claim']} {i}"}
                            for i in range(2)]
            results.append(e)
    doc["results"] = results + doc["results"]
    path = html.write_report(doc, tmp_path / "report.html")
    size = path.stat().st_size
    print(f"two-model report with {len(svgs(path.read_text()))} figures: {size / 1e6:.2f} MB")
    assert size < 5_000_000


def test_render_never_imports_torch():
    code = ("import sys, massact.report.html, massact.report.diff, massact.report.terminal, massact.__main__; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_cli_rerenders_the_report(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps(results_doc()))
    res = subprocess.run([sys.executable, "-m", "massact", "report", str(tmp_path / "results.json"), "-o",
                          str(tmp_path / "out.html")], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    assert "massive.exists" in (tmp_path / "out.html").read_text()
    res = subprocess.run([sys.executable, "-m", "massact", "report", str(tmp_path / "missing.json")],
                         capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 4 and "error:" in res.stderr and "Traceback" not in res.stderr  # a usage error


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
    distinct = {json.dumps(f, sort_keys=True) for r in doc["results"] for f in r.get("figures") or []}
    assert len(svgs(page)) == len(distinct) > 0  # a figure two claims share is drawn once


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


def test_a_value_judged_by_its_magnitude_is_drawn_as_one():
    """The largest change is down in some resamples and up in others: its signed interval spans 0,
    so the strip draws |value| and the magnitude's interval against the bound."""
    from massact.report.html import _strip

    e = {"primary": "p", "values": {"p": -0.564}, "intervals": {"p": [-0.672, 0.69], "|p|": [0.44, 0.667]},
         "unit": "%", "bound": {"op": "<", "value": 0.02, "abs": True}, "verdict": "refuted"}
    s = _strip(e)
    (tick,) = s["ticks"]
    assert tick < s["iv"][0] < s["value"] < s["iv"][0] + s["iv"][1]  # the whole interval beyond the bound
    assert s["ok"] == [(0.0, tick)] and "magnitude [44.0%, 66.7%]" in s["title"]
