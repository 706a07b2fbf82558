"""report.html and history.html in a real headless browser (Debian's chromium), at 800 and 1400 px: no
horizontal overflow, every figure drawn with a size and content, every row's link lands on its section
and its back link on the row, no console errors. Screenshots of both widths are kept beside the page
(report-800.png, report-1400.png, history-800.png, ...: the whole page) and their paths printed.

Set MASSACT_REPORT=path/to/report.html (several joined with os.pathsep; a history.html as well) to check
real pages too, e.g. the one a claims run just wrote; their screenshots land beside them.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from massact.report import history, html
from report_doc import history_docs, results_doc

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed: scripts/setup installs it (apt-get install "
                             "chromium) when run as root with apt-get; elsewhere install it to run this test")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
         "--enable-logging=stderr", "--v=0"]
WIDTHS = (800, 1400)
MAX_SHOT = 16_000  # px: taller pages are cut there

# measures the page after layout, then follows every in-page link; added to a copy of the page only
# (the report itself has no scripts)
PROBE = """<script>
const out = {width: innerWidth, scrollWidth: document.documentElement.scrollWidth,
             height: document.documentElement.scrollHeight, wide: [], scrolls: [], figures: [], links: []};
for (const el of document.body.querySelectorAll('*')) {
  const r = el.getBoundingClientRect();
  if (r.width && r.right > innerWidth + 0.5) out.wide.push(el.tagName + '.' + el.className + ' ' + Math.round(r.right));
  const s = getComputedStyle(el);
  if (/auto|scroll/.test(s.overflowX) && el.scrollWidth > el.clientWidth + 1) out.scrolls.push(el.tagName);
}
for (const s of document.querySelectorAll('figure svg')) {
  const r = s.getBoundingClientRect(), b = s.getBBox();
  out.figures.push([Math.round(r.width), Math.round(r.height), Math.round(b.width), Math.round(b.height),
                    s.querySelectorAll('path,rect,polygon,polyline,circle,line,text,use,image').length]);
}
const lands = (href) => {
  location.hash = href;
  const t = document.getElementById(href.slice(1));
  if (!t) return [href, 'missing', 0];
  const top = t.getBoundingClientRect().top;
  const atEnd = scrollY + innerHeight >= document.documentElement.scrollHeight - 1;
  return [href, Math.abs(top) <= 1 || (atEnd && top > 0 && top < innerHeight) ? 'ok' : 'off', Math.round(top)];
};
for (const a of document.querySelectorAll('#verdicts tbody a[href^="#"]')) {
  out.links.push(lands(a.getAttribute('href')));
  const back = document.querySelector(a.getAttribute('href') + ' a.back');
  out.links.push(back ? lands(back.getAttribute('href')) : [a.getAttribute('href'), 'no back link', 0]);
}
location.hash = '';
const pre = document.createElement('pre');
pre.id = 'probe-out';
pre.textContent = JSON.stringify(out);
document.body.appendChild(pre);
</script>"""


def chromium(url: str, profile: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *extra, url], capture_output=True,
                          text=True, timeout=120)


def console_errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "Uncaught" in line or "CONSOLE" in line]


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()[:24]
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", data[16:24])


def probe(report: Path, width: int, tmp_path: Path) -> dict:
    copy = tmp_path / f"probe-{width}.html"
    copy.write_text(report.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"), encoding="utf-8")
    res = chromium(copy.as_uri(), tmp_path / f"profile-probe-{width}", "--dump-dom", f"--window-size={width},900")
    assert console_errors(res.stderr) == []
    found = re.search(r'<pre id="probe-out">(.*?)</pre>', res.stdout, re.S)
    assert found, f"the probe did not run: {res.stderr[-2000:]}"
    return json.loads(found.group(1))


def history_page(where: Path) -> Path:
    """history.html of three hand-built nightly runs, one claim changing verdict."""
    paths = []
    for i, doc in enumerate(history_docs()):
        paths.append(where / f"night-{i + 1}" / "results.json")
        paths[-1].parent.mkdir()
        paths[-1].write_text(json.dumps(doc))
    runs = history.load(paths)
    return history.write_page(runs, history.series(runs), where / "history.html")


@pytest.fixture(scope="module", params=["fixture", "history", *[p for p in os.environ.get("MASSACT_REPORT", "")
                                                                .split(os.pathsep) if p]])
def report(request, tmp_path_factory) -> Path:
    if request.param == "fixture":
        return html.write_report(results_doc(), tmp_path_factory.mktemp("fixture") / "report.html")
    if request.param == "history":
        return history_page(tmp_path_factory.mktemp("history"))
    path = Path(request.param)
    assert path.exists(), f"MASSACT_REPORT names {path}, which does not exist"
    return path


@pytest.mark.parametrize("width", WIDTHS)
def test_report_reads_at_width(report, width, tmp_path):
    page = report.read_text(encoding="utf-8")
    out = probe(report, width, tmp_path)
    assert out["width"] == width
    assert out["scrollWidth"] <= width and out["wide"] == [], f"wider than {width} px: {out['wide'][:5]}"
    assert out["scrolls"] == [], f"elements that scroll sideways: {out['scrolls']}"

    assert len(out["figures"]) == len(re.findall(r"<figure\b[^>]*>\s*<svg\b", page))
    for i, (w, h, bw, bh, shapes) in enumerate(out["figures"]):
        assert 100 < w <= width and h > 100, f"figure {i} laid out at {w}x{h}"
        assert bw > 50 and bh > 50 and shapes > 5, f"figure {i} draws nothing visible: bbox {bw}x{bh}, {shapes} shapes"

    rows = len(re.findall(r'<tr id="row-', page))
    assert len(out["links"]) == 2 * rows  # a row's link, and its section's link back
    off = [link for link in out["links"] if link[1] != "ok"]
    assert off == [], f"links that do not land on their target: {off[:5]}"

    shot = report.with_name(f"{report.stem}-{width}.png")
    height = min(out["height"], MAX_SHOT)
    res = chromium(report.resolve().as_uri(), tmp_path / f"profile-shot-{width}", f"--screenshot={shot}",
                   f"--window-size={width},{height}")
    assert shot.exists(), res.stderr[-2000:]
    assert console_errors(res.stderr) == []
    assert png_size(shot) == (width, height) and shot.stat().st_size > 20_000  # a page, not a blank
    print(f"screenshot at {width} px: {shot}")
