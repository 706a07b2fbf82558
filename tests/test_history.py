"""``python -m massact history``: each claim across runs (oldest first), on real runs of planted GPT-2
models at three planted strengths, and on hand-built nightly documents."""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from builders import planted_gpt2, save_tiny
from massact.report import history
from report_doc import history_docs

ROOT = Path(__file__).resolve().parent.parent
SVG_NS = "{http://www.w3.org/2000/svg}"
STRENGTHS = (30.0, 300.0, 3000.0)  # the planted massive activation: below, at and above massive.exists' 100


def cli(*args, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "massact", "history", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd)


@pytest.fixture(scope="module")
def planted_runs(tmp_path_factory) -> list[Path]:
    """One claims run (massive.exists) per planted strength, as three versions of a model: their run folders."""
    base = tmp_path_factory.mktemp("planted")
    runs = []
    for magnitude in STRENGTHS:
        model = base / f"planted-{magnitude:g}"
        save_tiny(planted_gpt2(layer=1, feature=40, token=0, magnitude=magnitude, n_layer=4), model)
        res = subprocess.run([sys.executable, "-m", "pytest", str(ROOT / "claims" / "massive.toml"), "-k",
                              "exists and general", "--model", str(model), "--seqlen", "32", "--resamples", "50",
                              "--report-dir", str(base / "reports" / model.name), "-p", "no:cacheprovider", "-q"],
                             capture_output=True, text=True, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        assert "massive.exists/general" in res.stdout, res.stdout[-3000:] + res.stderr[-3000:]
        (run,) = (base / "reports" / model.name).glob("*/")
        runs.append(run)
    return runs


def exists(found: list[history.Series]) -> history.Series:
    return next(s for s in found if s.claim == "massive.exists/general")


def test_a_value_growing_with_the_planting_is_a_trend_and_its_crossing_a_verdict_change(planted_runs):
    runs = history.load(planted_runs)
    assert [r.label for r in runs] == ["planted-30", "planted-300", "planted-3000"]  # the models' own labels
    s = exists(history.series(runs))
    values = [p[0] for p in s.plotted()]
    assert values[0] < 1.0 <= values[1] < values[2], values  # the margin crosses its threshold, 1, once
    assert values[1] / values[0] == pytest.approx(10, rel=0.05) and values[2] / values[1] == pytest.approx(10, rel=0.05)
    assert s.verdicts() == ["refuted", "holds", "holds"] and s.changes == [1]
    assert s.moves == [1, 2]  # each step is > 10% and outside the previous interval

    out = cli(*planted_runs, "-o", planted_runs[0].parent / "history.html")
    assert out.returncode == 0, out.stderr
    block = out.stdout.split("massive.exists/general on")[1].split("\n\n")[0].splitlines()
    assert "margin vs ≥ 1" in block[0]
    assert block[1].split()[:2] == ["planted-30", "refuted"] and "verdict changed" not in block[1]
    assert block[2].split()[:2] == ["planted-300", "holds"] and "verdict changed: refuted -> holds" in block[2]
    assert block[3].split()[:2] == ["planted-3000", "holds"] and "verdict changed" not in block[3]
    assert "refuted -> holds (planted-30 -> planted-300)" in out.stdout


def test_the_page_draws_the_trend_against_the_threshold(planted_runs, tmp_path):
    runs = history.load(planted_runs, labels=["weak", "medium", "strong"])
    s = exists(history.series(runs))
    fig = history.trend(s, runs)
    assert fig["runs"] == ["weak", "medium", "strong"] and fig["changes"] == [1]
    assert fig["values"] == sorted(fig["values"]) and [r["value"] for r in fig["refs"]] == [1.0]
    assert fig["log_y"]  # 0.3 .. 30: two decades
    assert all(lo <= v <= hi for v, (lo, hi) in zip(fig["values"], fig["intervals"]))
    assert fig["verdicts"] == ["refuted", "holds", "holds"]

    path = history.write_page(runs, history.series(runs), tmp_path / "history.html")
    page = path.read_text()
    assert "<script" not in page and "http://" not in page.replace("http://www.w3.org", "")
    (svg,) = [ET.fromstring(f"<svg{part.split('</svg>')[0]}</svg>") for part in page.split("<svg")[1:]
              if "massive.exists/general" in part.split("</title>")[0]]
    texts = [t.text for t in svg.iter(f"{SVG_NS}text")]
    assert {"weak", "medium", "strong", "refuted", "holds", "≥ 1"} <= set(texts)
    assert "1 claim(s) changed verdict" in page


def test_runs_are_labelled_by_what_tells_them_apart():
    a = {"schema": 4, "started": "2026-11-26T03:17:00+00:00", "git_commit": "abcdef0123",
         "models": {"m": {"label": "m", "dtype": "float32", "weights_sha256": "aa" * 32}}}
    dtype = [copy.deepcopy(a) for _ in range(3)]
    for doc, dt in zip(dtype, ("float32", "bfloat16", "float16")):
        doc["models"]["m"]["dtype"] = dt
    assert history.auto_labels(dtype) == ["m float32", "m bfloat16", "m float16"]
    versions = [copy.deepcopy(a) for _ in range(2)]
    versions[1]["models"]["m"]["weights_sha256"] = "bb" * 32
    assert history.auto_labels(versions) == ["m aaaaaaaa", "m bbbbbbbb"]
    reruns = [copy.deepcopy(a) for _ in range(2)]
    reruns[1].update(started="2026-11-27T03:17:00+00:00", git_commit="1234567890")
    assert history.auto_labels(reruns) == ["2026-11-26 03:17 abcdef0", "2026-11-27 03:17 1234567"]
    assert history.auto_labels([a, a]) == ["1: 2026-11-26 03:17 abcdef0", "2: 2026-11-26 03:17 abcdef0"]


def write_docs(tmp_path: Path, docs: list[dict]) -> list[Path]:
    paths = []
    for i, doc in enumerate(docs):
        run = tmp_path / f"run{i}"
        run.mkdir()
        (run / "results.json").write_text(json.dumps(doc))
        paths.append(run)
    return paths


def test_each_model_is_followed_on_its_own_and_a_missing_claim_is_no_change(tmp_path):
    docs = history_docs()
    gone = next(r for r in docs[1]["results"] if r["claim"] == "ablate.mlp_all")
    docs[1]["results"].remove(gone)  # night 2 ran with -k: the claim is missing there, not changed
    runs = history.load(write_docs(tmp_path, docs))
    # minilm-l6 is the same in every run: the labels name the model that changed, by its weights
    assert [r.label for r in runs] == ["smollm2-135m 11111111", "smollm2-135m 22222222", "smollm2-135m 33333333"]
    found = {(s.claim, s.model): s for s in history.series(runs)}
    assert ("massive.exists/general", "smollm2-135m") in found and ("massive.exists/general", "minilm-l6") in found
    sm, ml = found[("massive.exists/general", "smollm2-135m")], found[("massive.exists/general", "minilm-l6")]
    assert sm.verdicts() == ["holds", "holds", "refuted"] and sm.changes == [2]
    assert ml.verdicts() == ["refuted"] * 3 and ml.changes == [] and ml.shift() == (0.0, 1)
    mlp = found[("ablate.mlp_all/general", "smollm2-135m")]
    assert mlp.verdicts() == ["holds", "", "holds"] and mlp.changes == []
    assert not any(s.claim.endswith("/gpt2") for s in found.values())  # skipped in every run: left out
    out = cli(*(r.path for r in runs), "-o", tmp_path / "h.html")
    assert out.returncode == 0, out.stderr
    assert "not in this run" in out.stdout
    assert "1 claim(s) whose verdict changed across 3 runs" in out.stdout
    assert "massive.exists/general on smollm2-135m: -96.5% (13664x -> 480x in smollm2-135m 33333333, threshold ≥ 1000x)" \
        in out.stdout


@pytest.mark.parametrize(("args", "message"), [
    (["nope.json"], "nope.json does not exist: give a results.json or a run folder"),
    (["."], "holds no results.json: give a results.json or a run folder"),
    (["a/results.json", "--label", "x", "--label", "y"], "--label given 2 time(s) for 1 run(s)"),
    (["bad.json"], "bad.json is not a results.json"),
])
def test_bad_input_is_named_without_a_traceback(tmp_path, args, message):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "results.json").write_text(json.dumps(history_docs()[0]))
    (tmp_path / "bad.json").write_text("{")
    res = cli(*args, cwd=tmp_path)
    assert res.returncode == 2 and message in res.stderr and "Traceback" not in res.stderr, res.stderr


def test_history_imports_no_torch():
    code = "import sys, massact.report.history; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
