"""report.html in a real headless browser (Debian's chromium): it loads from disk with no console
errors, every figure renders with a size and content, and screenshots are saved beside it
(report.png: the top of the page; report-figures.png: the figures).

Set MASSACT_REPORT=path/to/report.html (several joined with os.pathsep) to check real reports
too, e.g. the one a claims run just wrote; their screenshots land beside them.
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

from massact.report import html
from test_report import synthetic_doc

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed: scripts/setup installs it (apt-get install "
                             "chromium) when run as root with apt-get; elsewhere install it to run this test")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--enable-logging=stderr", "--v=0"]
# measures every figure after layout; added to a copy of the page only (the report has no scripts)
PROBE = """<script>
const out = document.createElement('pre');
out.id = 'probe-out';
out.textContent = JSON.stringify([...document.querySelectorAll('svg')].map(s => {
  const r = s.getBoundingClientRect(), b = s.getBBox();
  return [Math.round(r.width), Math.round(r.height), Math.round(b.width), Math.round(b.height),
          s.querySelectorAll('rect,polygon,polyline,circle,line,text').length];
}));
document.body.appendChild(out);
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


@pytest.fixture(params=["synthetic", *[p for p in os.environ.get("MASSACT_REPORT", "").split(os.pathsep) if p]])
def report(request, tmp_path_factory) -> Path:
    if request.param == "synthetic":
        return html.write_report(synthetic_doc(), tmp_path_factory.mktemp("synthetic") / "report.html")
    path = Path(request.param)
    assert path.exists(), f"MASSACT_REPORT names {path}, which does not exist"
    return path


def test_report_renders_in_headless_chromium(report, tmp_path):
    page = report.read_text(encoding="utf-8")
    n_svg = len(re.findall(r"<svg\b", page))
    assert n_svg > 0

    shot = report.with_suffix(".png")
    res = chromium(report.resolve().as_uri(), tmp_path / "profile-1", f"--screenshot={shot}",
                   "--window-size=1400,3000")
    assert shot.exists(), res.stderr[-2000:]
    assert png_size(shot) == (1400, 3000) and shot.stat().st_size > 20_000  # a page, not a blank
    assert console_errors(res.stderr) == []
    # the verdict table fills the first screen of a real run: a second shot shows the figures
    figures_only = tmp_path / "figures.html"
    figures_only.write_text(re.sub(r'<h2 id="verdicts">.*?(?=<h2 id="figures">)', "", page, flags=re.S),
                            encoding="utf-8")
    shot2 = report.with_name(report.stem + "-figures.png")
    res = chromium(figures_only.as_uri(), tmp_path / "profile-3", f"--screenshot={shot2}", "--window-size=1400,3000")
    assert shot2.exists() and console_errors(res.stderr) == [], res.stderr[-2000:]

    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    res = chromium(probe.as_uri(), tmp_path / "profile-2", "--dump-dom")
    assert console_errors(res.stderr) == []
    found = re.search(r'<pre id="probe-out">(.*?)</pre>', res.stdout, re.S)
    assert found, f"the probe did not run: {res.stderr[-2000:]}"
    sizes = json.loads(found.group(1))
    assert len(sizes) == n_svg  # the browser parsed every figure as SVG
    for i, (w, h, bw, bh, shapes) in enumerate(sizes):
        assert w > 100 and h > 100, f"figure {i} laid out at {w}x{h}"
        assert bw > 50 and bh > 50 and shapes > 5, f"figure {i} draws nothing visible: bbox {bw}x{bh}, {shapes} shapes"
