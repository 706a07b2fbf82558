"""pytest --html (pytest-html) with massact's hooks: the verdict columns and the figures as extras,
on reports that carry a results entry as ``report.massact_entry`` (fabricated here by a conftest)."""
from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path

import pytest

from report_doc import results_doc

pytest.importorskip("pytest_html")


def pytest_html_page(path: Path) -> tuple[list[str], dict[str, list[dict]]]:
    """The header cells and the per-test data of a pytest-html 4 page (its rows are built by its script
    from a JSON blob)."""
    page = path.read_text(encoding="utf-8")
    head = re.search(r'<thead id="results-table-head">(.*?)</thead>', page, re.S).group(1)
    blob = re.search(r'data-jsonblob="([^"]*)"', page).group(1)
    return re.findall(r"<th\b.*?</th>", head, re.S), json.loads(html.unescape(blob))["tests"]


@pytest.fixture
def entries() -> dict[str, dict]:
    """A test name -> entry: a refuted one with a figure, a skipped one, an inconclusive one."""
    results = {(e["claim"], e["model"], e["verdict"]): e for e in results_doc()["results"]}
    return {"test_refuted": results[("ablate.attention_all", "smollm2-135m", "refuted")],
            "test_skipped": results[("massive.exists", "minilm-l6", "skipped")],
            "test_inconclusive": results[("ablate.top_vs_bottom_heads", "minilm-l6", "inconclusive")]}


def run(pytester, entries: dict, *args: str):
    pytester.makeconftest(f"""
        import json
        import pytest
        from massact.report import pytest_html

        ENTRIES = json.loads({json.dumps(json.dumps(entries))})

        def pytest_configure(config):
            pytest_html.register(config)

        @pytest.hookimpl(hookwrapper=True)
        def pytest_runtest_makereport(item, call):
            outcome = yield
            report = outcome.get_result()
            if item.name in ENTRIES and report.when == "call":
                report.massact_entry = ENTRIES[item.name]
    """)
    pytester.makepyfile(test_items="""
        def test_refuted(): pass
        def test_skipped(): pass
        def test_inconclusive(): pass
        def test_plain(): pass
    """)
    # the project's own plugin stays out: these hooks are under test, not its claims
    return pytester.runpytest("-p", "no:massact", "-p", "no:cacheprovider", *args)


def test_html_report_gains_verdict_columns_and_figures(pytester, entries):
    res = run(pytester, entries, "--html=out.html", "--self-contained-html")
    res.assert_outcomes(passed=4)
    header, tests = pytest_html_page(pytester.path / "out.html")
    names = [re.sub(r"<.*?>", "", th) for th in header]
    assert names[:6] == ["Result", "Test", "Verdict", "Measured [95% interval]", "Threshold", "Documented"]

    def cells(name: str) -> list[str]:
        (row,) = [t for nodeid, ts in tests.items() if nodeid.endswith(name) for t in ts]
        return [html.unescape(re.sub(r"<.*?>", "", c)) for c in row["resultsTableRow"]], row["extras"]

    row, extras = cells("test_refuted")
    assert row[2:6] == ["refuted", "28.8% [25.9%, 32.2%]", "within ±2%", "gpt2: 2946x"]
    (figure,) = extras  # its one figure, as an inline SVG image
    assert figure["name"] == "Top-1 change per layer, attention zeroed"
    svg = base64.b64decode(figure["content"].split("base64,", 1)[1]).decode()
    assert svg.startswith("<svg") and "</svg>" in svg
    row, extras = cells("test_inconclusive")
    assert row[2:5] == ["inconclusive (expected holds)", "1.31x [0.93x, 1.84x]", "> 1x"] and extras == []
    assert cells("test_skipped")[0][2] == "skipped"
    assert cells("test_plain")[0][2:6] == ["", "", "", ""]  # a test without an entry: empty cells


def test_hooks_stay_out_without_html(pytester, entries):
    pytester.makeconftest("""
        from massact.report import pytest_html

        def pytest_configure(config):
            pytest_html.register(config)

        def pytest_unconfigure(config):
            assert not config.pluginmanager.has_plugin("massact-html")
    """)
    pytester.makepyfile(test_items="def test_a(): pass")
    pytester.runpytest("-p", "no:massact", "-p", "no:cacheprovider").assert_outcomes(passed=1)
    pytester.runpytest("-p", "no:massact", "-p", "no:cacheprovider", "-p", "no:html").assert_outcomes(passed=1)
