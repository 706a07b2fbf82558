"""Fault injection: a fault at each stage of a run (model load, corpus, inside a hook, inside a check,
inside the bootstrap, report writing, SIGINT and SIGTERM at several points) leaves no hook on the
model and its attention implementation as it was, a results.json that lists every collected item
(judged, or under not_run), a non-zero exit and a message that names the cause.

Each case is one pytest run in a subprocess on a tiny saved GPT-2, with a conftest that injects
the fault and, at the end, writes what the run left on its models to state.json. The claims file
records the tiny model's verdicts, so a run without a fault exits 0 (the control case).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from builders import save_tiny, tiny_model

ARGS = ["claims", "--nsamples", "2", "--seqlen", "32", "--resamples", "20", "-p", "no:cacheprovider"]

# the tiny model's own verdicts, recorded: its random weights have no massive activation and no sink heads
CLAIMS = '''
[[claim]]
id = "massive.exists"
version = 1
source = "fault suite"
statement = "Some layer has massive activations."
check = "massive_exists"
threshold = "some layer: top-1 >= 100 and top-1/median >= 1000"
documented = "-"
[claim.expect]
"fault-model" = { verdict = "refuted", reason = "random weights" }

[[claim]]
id = "massive.exists"
variant = "gpt2"
version = 1
source = "fault suite"
statement = "gpt2's ratios."
check = "massive_exists"
threshold = "within 25%"
documented = "-"
documented_on = "gpt2"
documented_values = { "ratio.0" = 168.0 }
tolerance = { rel = 0.25 }

[[claim]]
id = "heads.first_token_scores"
variant = "correct_method"
version = 1
source = "fault suite"
statement = "The top heads attend to the first token (eager attention)."
check = "first_token_scores"
params = { method = "correct_method", k = 4, min_top_mean = 0.5 }
threshold = "top-4 mean >= 0.5"
documented = "-"
[claim.expect]
"fault-model" = { verdict = "refuted", reason = "random weights" }

[[claim]]
id = "heads.first_token_scores"
variant = "documented_method"
version = 1
source = "fault suite"
statement = "The same, averaged with query 0."
check = "first_token_scores"
params = { method = "documented_method", k = 4, min_top_mean = 0.5 }
threshold = "top-4 mean >= 0.5"
documented = "-"
[claim.expect]
"fault-model" = { verdict = "refuted", reason = "random weights" }
'''

# injects the fault named by $MASSACT_FAULT; writes state.json (loads, hooks and attention
# implementation per loaded model, collected node ids) when the run ends
CONFTEST = '''
import dataclasses, errno, hashlib, json, os, signal
from pathlib import Path
import pytest
from massact import checks, models, reducers
from massact.report import html, results

FAULT = os.environ.get("MASSACT_FAULT", "none")
STATE = {"loads": 0, "models": [], "collected": []}
LOADED = []


def fire(stage):
    """At ``stage``: raise the injected error, or send the injected signal to this process."""
    where, _, what = FAULT.partition(":")
    if where != stage:
        return
    if what.startswith("SIG"):
        os.kill(os.getpid(), getattr(signal, what))
    else:
        raise RuntimeError(f"injected fault {what}")


def pytest_configure(config):
    # Ctrl-C as in a terminal: a test run started in the background (no job control) passes its
    # processes SIGINT ignored, and Python then leaves it ignored
    signal.signal(signal.SIGINT, signal.default_int_handler)
    mp = pytest.MonkeyPatch()
    config.add_cleanup(mp.undo)
    # the tiny model's weights, hashed as load() hashes a directory's: its verdicts are recorded
    one = models.file_sha256(next(Path(os.environ["MASSACT_FAULT_MODEL"]).glob("*.safetensors")))
    mp.setitem(models.KNOWN, "fault-model", models.Known({"model_type": "gpt2", "n_layer": 2},
                                                         weights=(hashlib.sha256(one.encode()).hexdigest(),)))
    load = models.load

    def loading(spec, **kw):
        STATE["loads"] += 1
        fire("load")
        lm = load(spec, **kw)
        LOADED.append((lm, lm.model.config._attn_implementation))
        return lm
    mp.setattr(models, "load", loading)

    update = reducers.HeadStats.update

    def in_hook(self, *a):
        fire("hook")
        return update(self, *a)
    mp.setattr(reducers.HeadStats, "update", in_hook)

    chk = checks.CHECKS["first_token_scores"]

    def measuring(ctx, p):
        fire("check")
        m = chk.fn(ctx, p)

        def decide(idx):
            if idx is not None:
                fire("bootstrap")
            return m.decide(idx)
        return dataclasses.replace(m, decide=decide)
    mp.setitem(checks.CHECKS, "first_token_scores", dataclasses.replace(chk, fn=measuring))

    write_report = html.write_report

    def writing_report(doc, path):
        fire("report")
        return write_report(doc, path)
    mp.setattr(html, "write_report", writing_report)

    write_results = results.write_results
    writes = []

    def writing_results(path, doc):
        writes.append(path)
        if FAULT == "results:full" and len(writes) > 1:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return write_results(path, doc)
    mp.setattr(results, "write_results", writing_results)


def pytest_collection_finish(session):
    STATE["collected"] = [i.nodeid for i in session.items]


calls = []


def pytest_runtest_logreport(report):
    if report.when == "call":
        calls.append(report.nodeid)
        if len(calls) == 2:
            fire("between")


def pytest_unconfigure(config):
    for lm, attn in LOADED:
        hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in lm.model.modules())
        STATE["models"].append({"spec": lm.spec, "hooks": hooks, "attn_at_load": attn,
                                "attn_now": lm.model.config._attn_implementation})
    Path("state.json").write_text(json.dumps(STATE))
'''


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("fault") / "tiny"
    save_tiny(tiny_model("gpt2"), path)
    return path


def run_with(pytester, model_dir: Path, fault: str, *args: str, monkeypatch):
    (pytester.path / "claims").mkdir(exist_ok=True)
    (pytester.path / "claims" / "faults.toml").write_text(CLAIMS)
    pytester.makeconftest(CONFTEST)
    monkeypatch.setenv("MASSACT_FAULT", fault)
    monkeypatch.setenv("MASSACT_FAULT_MODEL", str(model_dir))
    res = pytester.runpytest_subprocess(*ARGS, "--model", str(model_dir), *args)
    return res, json.loads((pytester.path / "state.json").read_text())


def raised(out: str, message: str) -> bool:
    """pytest showed the traceback of a RuntimeError with ``message``."""
    return any(line.startswith("E ") and line.strip().endswith(f"RuntimeError: {message}") for line in out.splitlines())


def check(pytester, res, state, *, exit: int, message: str, complete: bool, bug: bool = False) -> dict:
    """The invariants every fault must keep; returns results.json."""
    out = res.stdout.str() + res.stderr.str()
    assert res.ret == exit, out[-3000:]
    assert message in out, out[-3000:]
    assert state["loads"] <= 1, "a model that failed to load was loaded again"
    for m in state["models"]:
        assert m["hooks"] == 0, f"hooks left on {m['spec']}"
        assert m["attn_now"] == m["attn_at_load"], f"attention implementation of {m['spec']} not restored"
    (path,) = (pytester.path / "reports").glob("*/results.json")
    doc = json.loads(path.read_text())
    listed = [r["nodeid"] for r in doc["results"]] + [r["nodeid"] for r in doc["not_run"]]
    assert sorted(listed) == sorted(state["collected"]) and len(state["collected"]) == 4
    assert doc["complete"] is complete
    assert (path.parent / "report.html").exists() or "report.html NOT written" in out
    if bug:  # an error massact does not know: the item's entry says what, pytest shows where
        assert raised(out, message)
        assert [r["verdict"] for r in doc["results"]].count("error") >= 1
    return doc


def test_without_a_fault_the_run_is_green(pytester, model_dir, monkeypatch):
    res, state = run_with(pytester, model_dir, "none", monkeypatch=monkeypatch)
    doc = check(pytester, res, state, exit=0, message="1 documented-value forms skipped", complete=True)
    assert state["models"] and state["models"][0]["attn_at_load"] == "sdpa"  # the eager pass switched it and back
    # two samples are fewer independent units than an interval needs: every verdict is inconclusive
    assert {r["verdict"] for r in doc["results"]} == {"inconclusive", "skipped"}


@pytest.mark.parametrize("stage", ["load", "hook", "check", "bootstrap"])
def test_an_error_in_a_stage_gives_every_item_an_entry(pytester, model_dir, monkeypatch, stage):
    # the bootstrap resamples from 3 independent samples on (two give no interval): 12, as a decided run has
    more = ("--nsamples", "12") if stage == "bootstrap" else ()
    res, state = run_with(pytester, model_dir, f"{stage}:at-{stage}", *more, monkeypatch=monkeypatch)
    doc = check(pytester, res, state, exit=1, message=f"injected fault at-{stage}", complete=True, bug=True)
    errors = [r for r in doc["results"] if r["verdict"] == "error"]
    assert all(f"at-{stage}" in r["reason"] for r in errors)
    if stage == "load":  # every item of the model says why; only the first shows the traceback
        assert len(errors) == 4 and sum("failed to load earlier" in r["reason"] for r in errors) == 3


def test_a_report_that_cannot_be_written_fails_the_run(pytester, model_dir, monkeypatch):
    res, state = run_with(pytester, model_dir, "report:writing-the-page", monkeypatch=monkeypatch)
    check(pytester, res, state, exit=1, complete=True,
          message="report.html NOT written: RuntimeError: injected fault writing-the-page")


def test_results_that_cannot_be_written_still_give_the_summary(pytester, model_dir, monkeypatch):
    res, state = run_with(pytester, model_dir, "results:full", monkeypatch=monkeypatch)
    out = res.stdout.str()
    # two samples: the three judged items are inconclusive (xfails), so the exit is the unwritten file's
    assert res.ret == 1 and "massact verdicts" in out and "3 inconclusive, 1 skipped" in out
    res.stdout.fnmatch_lines(["results NOT written: */results.json: No space left on device; the verdicts above*"])
    assert all(m["hooks"] == 0 for m in state["models"])


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("stage", ["load", "hook", "between"])
def test_a_signal_writes_both_files_marked_incomplete(pytester, model_dir, monkeypatch, stage, sig):
    res, state = run_with(pytester, model_dir, f"{stage}:{sig}", monkeypatch=monkeypatch)
    why = "SIGTERM" if sig == "SIGTERM" else "SIGINT (Ctrl-C)"
    doc = check(pytester, res, state, exit=pytest.ExitCode.INTERRUPTED, complete=False,
                message=f"INCOMPLETE (interrupted by {why})")
    assert doc["not_run"]
    # the first item reads no attention: the hook fires in the third, after the skipped second
    assert len(doc["results"]) == {"load": 0, "hook": 2, "between": 2}[stage]


def test_a_signal_while_the_files_are_written_waits_for_them(pytester, model_dir, monkeypatch):
    res, state = run_with(pytester, model_dir, "report:SIGTERM", monkeypatch=monkeypatch)
    check(pytester, res, state, exit=0, message="report: ", complete=True)


def test_an_error_under_xdist_gives_the_same_entries(pytester, model_dir, monkeypatch):
    res, state = run_with(pytester, model_dir, "check:in-a-worker", "-n", "2", monkeypatch=monkeypatch)
    # the workers' state is not the controller's: check results.json and the exit only
    assert res.ret == 1 and raised(res.stdout.str(), "injected fault in-a-worker")
    (path,) = (pytester.path / "reports").glob("*/results.json")
    doc = json.loads(path.read_text())
    assert doc["complete"] and len(doc["results"]) == 4
    assert sum(r["verdict"] == "error" for r in doc["results"]) == 2
