"""pytest-html hooks: ``pytest --html=FILE`` gains the verdict columns, and each claim item its figures.

pytest-html's page builds its rows from these cells as HTML, and puts a test's id in its own cell
unescaped: every cell with text in it is escaped here, the test id included.

Every hook reads the item's results entry from ``report.massact_entry`` (a plain dict that the
massact plugin sets on the item's reports; it survives pytest-xdist), so the columns and
figures are those of results.json. Reports without an entry (the project's own tests) get empty
cells. The plugin calls ``register(config)`` from its ``pytest_configure``.
"""
from __future__ import annotations

import base64
import sys
from html import escape

from massact.report import figures
from massact.report.terminal import bound_text, expectation, measured

TEST_ID = 1  # pytest-html's cells: Result, Test, Duration, Links
HEADER = ['<th class="sortable" data-column-type="verdict">Verdict</th>',
          "<th>Measured [95% interval]</th>", "<th>Threshold</th>", "<th>Documented</th>"]
AFTER = 2  # the new columns follow pytest-html's Result and Test
_THIS = sys.modules[__name__]  # the plugin register() adds (kept: pytester may drop it from sys.modules)


def register(config) -> None:
    """Add these hooks when pytest-html is installed and writing a report (``--html``) here, on the
    controller (under xdist a worker writes no report)."""
    pm = config.pluginmanager
    if (pm.hasplugin("html") and config.getoption("htmlpath", None) and not hasattr(config, "workerinput")
            and not pm.is_registered(_THIS)):
        pm.register(_THIS, "massact-html")


def pytest_html_results_table_header(cells: list) -> None:
    cells[AFTER:AFTER] = HEADER


def pytest_html_results_table_row(report, cells: list) -> None:
    test_id = report.nodeid + (f"::{report.when}" if report.when != "call" else "")  # as pytest-html writes it
    cells[TEST_ID] = f'<td class="col-testId">{escape(test_id)}</td>'
    e = getattr(report, "massact_entry", None) or {}
    verdict = e.get("verdict", "")
    if expectation(e):
        verdict += f" ({expectation(e)})"
    cells[AFTER:AFTER] = [f'<td class="col-verdict">{escape(verdict)}</td>',
                          f"<td>{escape(measured(e))}</td>",
                          f"<td>{escape(bound_text(e))}</td>",
                          f"<td>{escape(str(e.get('documented') or ''))}</td>"]


def pytest_runtest_logreport(report) -> None:
    """The entry's figures as SVG extras (pytest-html reads ``report.extras`` after this hook)."""
    e = getattr(report, "massact_entry", None)
    if not e or not e.get("figures"):
        return
    from pytest_html import extras  # only imported where register() found pytest-html

    report.extras = [*getattr(report, "extras", []),
                     *(extras.svg(base64.b64encode(figures.draw(f).encode()).decode(), name=f.get("title") or f["kind"])
                       for f in e["figures"])]
