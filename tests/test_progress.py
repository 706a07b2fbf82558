"""Live progress: the engine's lines reach the terminal while items run (pytest captures the rest),
one line per pass under -q, each worker's lines named under xdist, and none of it in results.json."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from builders import save_tiny, tiny_model
from massact.progress import CHANNEL, Progress

CLAIMS = Path(__file__).resolve().parent.parent / "claims"
# every "update" line shown, not one per EVERY seconds: a tiny model's passes take a fraction of one
CONFTEST = "import massact.progress\nmassact.progress.EVERY = 0.0\n"


class _Config:
    """What Progress reads of a pytest config: the verbosity, and on an xdist worker its workerinput."""

    def __init__(self, verbosity: int = 0, *, worker: dict | None = None):
        self.verbosity = verbosity
        if worker is not None:
            self.workerinput = worker

    def get_verbosity(self) -> int:
        return self.verbosity


class _Channel(list):
    send = list.append


def _progress(verbosity: int = 0, **kw) -> tuple[Progress, _Channel, list[float]]:
    """A Progress as on worker gw3, its channel, and the clock it reads (set ``now[0]``)."""
    channel, now = _Channel(), [0.0]
    return Progress(_Config(verbosity, worker={"workerid": "gw3", CHANNEL: channel}), clock=lambda: now[0],
                    **kw), channel, now


def test_updates_are_spaced_and_pass_and_plan_lines_always_shown():
    progress, sent, now = _progress(every=5.0)
    progress("plan", level="plan")
    progress("a 1/9")  # within 5 s of the last line
    now[0] = 5.0
    progress("a 2/9")
    now[0] = 6.0
    progress("a 3/9")
    progress("pass a", level="pass")
    assert sent == ["[massact gw3] plan", "[massact gw3] a 2/9", "[massact gw3] pass a"]


def test_quiet_keeps_the_pass_lines_alone():
    progress, sent, now = _progress(-1, every=0.0)
    progress("plan", level="plan")
    progress("a 1/9")
    progress("pass a", level="pass")
    assert sent == ["[massact gw3] pass a"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """Saved tiny models (module scope: built before pytester snapshots sys.modules)."""
    out = {}
    for arch in ("gpt2", "llama"):
        out[arch] = tmp_path_factory.mktemp("tiny") / arch
        save_tiny(tiny_model(arch), out[arch])
    return out


def run(pytester, tiny, *args, models=("gpt2",)):
    (pytester.path / "claims").mkdir(exist_ok=True)
    shutil.copy(CLAIMS / "massive.toml", pytester.path / "claims")
    pytester.makeconftest(CONFTEST)
    res = pytester.runpytest_subprocess("claims", "-k", "massive", *(a for m in models for a in ("--model", tiny[m])),
                                        "--nsamples", "2", "--seqlen", "32", "--batch-size", "1", "--resamples", "0",
                                        "-p", "no:cacheprovider", *args)
    files = list((pytester.path / "reports").glob("*/results.json"))
    assert len(files) == 1, res.stdout.str()
    return res, files[0].read_text()


def progress_lines(res) -> list[str]:
    return [line for line in res.stdout.lines if line.startswith("[massact")]


def test_a_default_run_shows_the_plan_each_batch_and_each_pass_while_items_run(pytester, tiny):
    res, doc = run(pytester, tiny)
    res.stdout.fnmatch_lines(["[[]massact[]] *gpt2: 1 pass planned (2 samples, 64 tokens), roughly * s; *",
                              "[[]massact[]] *gpt2 / none: 1/2 samples, * tok/s, * s left",
                              "[[]massact[]] pass 1, *gpt2 / none: 2 samples x 32 tokens in * s (* tok/s)"])
    out = res.stdout.lines
    # written past pytest's capture, as the items ran: none waits in a failure's "Captured stdout" section
    failures = next(i for i, line in enumerate(out) if "= FAILURES =" in line)
    assert progress_lines(res) and all(out.index(line) < failures for line in progress_lines(res))
    assert "[massact" not in doc and "tok/s" not in doc


def test_quiet_keeps_one_line_per_pass(pytester, tiny):
    res, doc = run(pytester, tiny, "-q")
    lines = progress_lines(res)
    assert lines and all(re.match(r"\[massact\] pass \d+, ", line) for line in lines), lines
    assert len(lines) == json.loads(doc)["forward_passes"]


def test_under_xdist_each_worker_s_lines_reach_the_terminal_named(pytester, tiny):
    res, doc = run(pytester, tiny, "-n", "2", models=("gpt2", "llama"))
    lines = progress_lines(res)
    assert {re.match(r"\[massact (gw\d)\]", line).group(1) for line in lines} == {"gw0", "gw1"}, lines
    passes = [line for line in lines if re.match(r"\[massact gw\d\] pass \d+, ", line)]
    assert len(passes) == json.loads(doc)["forward_passes"]
    assert any(re.match(r"\[massact gw\d\] \S*llama: \d+ pass(es)? planned", line) for line in lines)
