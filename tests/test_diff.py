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


def with_nodeids(doc: dict) -> dict:
    """``doc`` as a run of schema 3 writes it: node ids, and the lists of items not run and deselected."""
    for r in doc["results"]:
        r["nodeid"] = f"claims/{r['claim'].split('.')[0]}.toml::{r['claim']}/{r.get('variant', '')}[{r['model']}]"
    return {**doc, "not_run": [], "deselected": []}


def item(entry: dict) -> dict:
    return {k: entry.get(k) for k in ("nodeid", "claim", "variant", "model", "spec")}


def test_a_baseline_item_missing_from_a_complete_run_fails_unless_the_run_left_it_out():
    base = with_nodeids(synthetic_doc())
    new = with_nodeids(synthetic_doc())
    gone = by_claim(new, "ablate.mlp_all")
    new["results"].remove(gone)
    (change,) = diff.compare(base, new)
    assert change.failing and change.kind == "only-baseline" and change.after.startswith("missing")
    for where, failing in (("deselected", False), ("not_run", True)):  # -k, or a run cut short
        changes = diff.compare(base, {**new, where: [item(gone)]})
        assert [c.failing for c in changes] == [failing], changes
    other_file = copy.deepcopy(base)  # a claims file this run did not collect (pytest claims/massive.toml)
    by_claim(other_file, "ablate.mlp_all")["nodeid"] = "claims/elsewhere.toml::ablate.mlp_all/general[toy-12l]"
    assert [c.failing for c in diff.compare(other_file, new)] == [False]


def test_models_are_their_identity_not_their_label():
    """Two directories named "model": never merged, and the order they were given in does not matter."""
    base = with_nodeids(synthetic_doc())
    one, two = base["results"][0], copy.deepcopy(base["results"][0])
    one.update(spec="/x/a/model", model="a/model", verdict="holds")
    two.update(spec="/x/b/model", model="b/model", verdict="refuted")
    base["results"] = [one, two]
    base["models"] = {"/x/a/model": {"label": "a/model", "weights_sha256": "a" * 64},
                      "/x/b/model": {"label": "b/model", "weights_sha256": "b" * 64}}
    swapped = {**base, "results": [two, one]}
    assert diff.compare(base, swapped) == []
    # the same weights moved elsewhere: paired by their hash, labels shown on both sides
    moved = copy.deepcopy(swapped)
    for r in moved["results"]:
        r["spec"] = r["spec"].replace("/x/", "/y/")
        r["model"] = r["model"].replace("a/", "old-a/").replace("b/", "old-b/")
    moved["models"] = {k.replace("/x/", "/y/"): {**v, "label": "old-" + v["label"]} for k, v in base["models"].items()}
    assert diff.compare(base, moved) == []
    moved["results"][1]["verdict"] = "refuted"  # a/model's verdict changed: reported on a/model alone
    (change,) = diff.compare(base, moved)
    assert change.failing and change.model == "a/model -> old-a/model"


def test_a_verdict_undecided_on_fewer_samples_is_a_note():
    base, new = synthetic_doc(), synthetic_doc()
    r = by_claim(new, "massive.exists")
    r.update(verdict="inconclusive", samples=3)
    r["bootstrap"] = {**r["bootstrap"], "samples": 3}
    r["values"]["margin"] = 8.3 * 2  # and its value moved: measured on other samples
    (change,) = diff.compare(base, new)
    assert not change.failing and change.kind == "fewer-samples" and "on 3 samples, baseline 10" in change.after
    r["verdict"] = "refuted"  # a decided change is a change, whatever the samples
    assert [c.failing for c in diff.compare(base, new)] == [True]
    r.update(verdict="holds")
    assert [(c.kind, c.failing) for c in diff.compare(base, new)] == [("fewer-samples", False)]
    r.update(samples=10)
    r["bootstrap"]["samples"] = 10
    assert [(c.kind, c.failing) for c in diff.compare(base, new)] == [("value", True)]


def test_an_incomplete_run_never_becomes_the_baseline(tmp_path):
    doc = {**synthetic_doc(), "complete": False, "not_run": [{"claim": "massive.exists"}]}
    path = tmp_path / "base.json"
    out = diff.check_baseline(doc, path, update=False)  # no baseline yet: not written from this run
    assert out.failed and not path.exists() and "NOT written: this run is incomplete" in out.lines[0]
    path.write_text(json.dumps(synthetic_doc()))
    before = path.read_text()
    out = diff.check_baseline(doc, path, update=True)
    assert out.failed and path.read_text() == before
    assert out.lines == [f"baseline NOT updated: this run is incomplete (1 collected items not judged); "
                         f"{path} is unchanged"]


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
    missing = cli(tmp_path / "a.json", tmp_path / "nope.json")  # a usage error, never read as a regression
    assert missing.returncode == 4 and "nope.json: does not exist" in missing.stderr


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


def test_a_run_cut_short_does_not_update_the_baseline(pytester, claims_dir, tiny):
    base = pytester.path / "baseline.json"
    assert run(pytester, tiny, "--baseline", str(base)).ret == 1  # no baseline yet: written from this run
    before = base.read_text()
    cut = pytester.runpytest_subprocess("claims", "-k", "massive", "--model", str(tiny), "--nsamples", "2",
                                        "--seqlen", "32", "--resamples", "0", "-p", "no:cacheprovider", "-x",
                                        "--baseline", str(base), "--update-baseline")
    assert cut.ret == 1 and base.read_text() == before
    cut.stdout.fnmatch_lines(["*INCOMPLETE (the run stopped early): * collected items were not judged*",
                              "*baseline NOT updated: this run is incomplete*is unchanged*"])


def test_update_baseline_needs_a_path(pytester, claims_dir, tiny):
    res = run(pytester, tiny, "--update-baseline")
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    res.stderr.fnmatch_lines(["*--update-baseline needs --baseline PATH*"])


def test_a_primary_neither_run_measured_is_no_change_and_one_side_missing_fails():
    """massive.emergence measures no jump where the first layer is already massive (gemma3-270m): with the
    same verdict on both sides nothing changed; a value the run lost still fails."""
    base, new = synthetic_doc(), synthetic_doc()
    for doc in (base, new):
        del by_claim(doc, "massive.exists")["values"]["margin"]
    assert diff.compare(base, new) == []
    del by_claim(new, "ablate.mlp_all")["values"][by_claim(new, "ablate.mlp_all")["primary"]]
    (change,) = diff.compare(base, new)
    assert change.failing and change.kind == "uncomparable" and "run has no value" in change.after
