"""Regression against a baseline: the diff of two results documents, its command line, and the
plugin's --baseline / --update-baseline on a tiny saved model."""
from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from builders import save_tiny, tiny_model
from massact.report import diff
from test_report import synthetic_doc

ROOT = Path(__file__).resolve().parent.parent
CLAIMS = ROOT / "claims"


def by_claim(doc: dict, claim: str) -> dict:
    return next(r for r in doc["results"] if r["claim"] == claim)


def test_identical_documents_have_no_differences():
    assert diff.compare(synthetic_doc(), synthetic_doc()) == []


def test_changed_threshold_and_verdict_fail_naming_the_claim():
    base, new = synthetic_doc(), synthetic_doc()
    r = by_claim(new, "ablate.mlp_all")
    r.update(threshold="change < -99.5% in every massive layer", version=2, verdict="refuted")
    changes = diff.compare(base, new)
    failing = [c for c in changes if c.failing]
    assert [(c.claim, c.kind) for c in failing] == [("ablate.mlp_all/general", "verdict")]
    assert failing[0].before.startswith("holds") and failing[0].after.startswith("refuted")
    notes = {c.before for c in changes if c.kind == "claim"}
    assert notes == {"version: 1", "threshold: some threshold"}
    text = "\n".join(diff.table(changes))
    assert "FAIL" in text and "ablate.mlp_all/general" in text


@pytest.mark.parametrize(("value", "fails"), [(8.3 * 1.09, False),  # within 10%
                                              (8.3 * 1.2, True),  # beyond 10% and the interval
                                              (8.3 * 0.85, True)])
def test_primary_value_tolerance(value, fails):
    base, new = synthetic_doc(), synthetic_doc()
    by_claim(new, "massive.exists")["values"]["margin"] = value
    changes = diff.compare(base, new)
    assert [c.claim for c in changes if c.failing] == (["massive.exists/general"] if fails else [])


def test_baseline_interval_widens_the_band():
    base, new = synthetic_doc(), synthetic_doc()
    by_claim(base, "massive.exists")["intervals"]["margin"] = [5.0, 12.0]
    by_claim(new, "massive.exists")["values"]["margin"] = 11.0  # +33%, but inside the baseline's interval
    assert not [c for c in diff.compare(base, new) if c.failing]
    assert diff.moved(0.0, 0.0, None) is False and diff.moved(1.0, float("nan"), None) is True


def test_entries_on_one_side_are_notes_and_single_models_are_paired():
    base, new = synthetic_doc(), synthetic_doc()
    new["results"] = new["results"][:3]  # a run with -k
    changes = diff.compare(base, new)
    assert changes and not [c for c in changes if c.failing]
    assert {c.kind for c in changes} == {"only-baseline"}
    other = copy.deepcopy(base)
    for r in other["results"]:
        r["model"] = "toy-12l-step2000" if r["model"] else None
    assert diff.compare(base, other) == []  # one model each side: compared as two revisions


def test_provenance_names_each_side():
    base, new = synthetic_doc(), synthetic_doc()
    new["models"]["toy-12l"]["weights_sha256"] = "feedbeef" * 8
    new["complete"] = False
    a, b = diff.provenance_lines(base, new)
    assert "toy-12l@c0ffeec0ffee" in a and "toy-12l@feedbeeffeed" in b and "INCOMPLETE" in b


def cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "massact", "diff", *map(str, args)], capture_output=True,
                          text=True, cwd=ROOT)


def test_cli_exit_codes(tmp_path):
    base, new = synthetic_doc(), synthetic_doc()
    by_claim(new, "massive.emergence")["verdict"] = "holds"
    (tmp_path / "a.json").write_text(json.dumps(base))
    (tmp_path / "b.json").write_text(json.dumps(new))
    same = cli(tmp_path / "a.json", tmp_path / "a.json")
    assert same.returncode == 0 and "no differences" in same.stdout
    changed = cli(tmp_path / "a.json", tmp_path / "b.json")
    assert changed.returncode == 1
    assert "massive.emergence/general" in changed.stdout and "inconclusive" in changed.stdout
    assert "1 regression(s)" in changed.stdout
    assert cli(tmp_path / "a.json", tmp_path / "nope.json").returncode == 2


# ---------------------------------------------------------------- the plugin

@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A saved tiny GPT-2 (module scope: built before pytester snapshots sys.modules)."""
    path = tmp_path_factory.mktemp("tiny") / "gpt2"
    save_tiny(tiny_model("gpt2"), path)
    return path


@pytest.fixture
def claims_dir(pytester):
    dest = pytester.path / "claims"
    dest.mkdir()
    shutil.copy(CLAIMS / "massive.toml", dest)
    return dest


def run(pytester, tiny, *args):
    return pytester.runpytest_subprocess("claims", "-k", "exists and general", "--model", str(tiny),
                                         "--nsamples", "2", "--seqlen", "32", "--resamples", "0",
                                         "-p", "no:cacheprovider", *args)


def test_plugin_baseline_fails_on_a_changed_threshold_and_update_rewrites(pytester, claims_dir, tiny):
    base = pytester.path / "baseline.json"
    first = run(pytester, tiny, "--baseline", str(base))
    assert first.ret == 1 and base.exists()  # a missing baseline is written, and the run says so
    first.stdout.fnmatch_lines(["*baseline*did not exist: wrote this run there*"])

    # a deliberately changed threshold: the tiny random model now passes massive.exists
    toml = claims_dir / "massive.toml"
    toml.write_text(toml.read_text().replace("params = {}", "params = { min_abs = 0.01, min_ratio = 1.0 }", 1))
    changed = run(pytester, tiny, "--baseline", str(base))
    out = changed.stdout.str()
    assert changed.ret == 1, out
    changed.stdout.fnmatch_lines(["*massact baseline*", "FAIL*massive.exists/general*verdict*refuted*holds*",
                                  "1 regression(s) against the baseline*"])
    assert "report: " in out and "Traceback" not in out

    updated = run(pytester, tiny, "--baseline", str(base), "--update-baseline")
    assert updated.ret == 0
    updated.stdout.fnmatch_lines(["*baseline updated:*"])
    assert by_claim(json.loads(base.read_text()), "massive.exists")["verdict"] == "holds"


def test_update_baseline_needs_a_path(pytester, claims_dir, tiny):
    res = run(pytester, tiny, "--update-baseline")
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    res.stderr.fnmatch_lines(["*--update-baseline needs --baseline PATH*"])
