"""The pytest plugin: options, claim x model parametrization, verdicts, summary, results.json.

A claims test module ``claims/test_<family>.py`` holds one thin test taking ``claim_case``;
its records come from ``claims/<family>.toml`` beside it.
"""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from massact import models
from massact.claims import RESAMPLES, BadRecord, Claim, load_records
from massact.corpus import DEFAULT_CORPUS, CorpusSettings
from massact.errors import MassactError, ModelUnavailable
from massact.report import diff, html
from massact.session import Session, verdict_entry

SESSION = pytest.StashKey[Session]()
FINISH = pytest.StashKey[tuple[str, list[str], bool]]()  # report line, baseline lines, baseline failed
DEFAULT_MODEL = "smollm2-135m"


def pytest_addoption(parser):
    g = parser.getgroup("massact", "massact: claims about model internals")
    g.addoption("--model", action="append", default=None, metavar="SPEC",
                help=f"model to check, repeatable: built-in name, hub id, directory or .gguf (default: {DEFAULT_MODEL})")
    g.addoption("--corpus", default=str(DEFAULT_CORPUS), metavar="PATH",
                help="text file or directory of .txt files (default: the bundled corpus)")
    g.addoption("--nsamples", type=int, default=None,
                help="samples per claim (default: each claim's own count, as in its document: 10-50)")
    g.addoption("--resamples", type=int, default=RESAMPLES,
                help=f"bootstrap resamples behind each verdict's interval; 0 turns it off (default: {RESAMPLES})")
    g.addoption("--seqlen", type=int, default=128, help="tokens per sample (default: 128)")
    g.addoption("--seed", type=int, default=0, help="seed for choosing samples (default: 0)")
    g.addoption("--bos", action="store_true", help="prepend the BOS (or CLS) token to every sample")
    g.addoption("--device", default="cpu", help="torch device (default: cpu)")
    g.addoption("--dtype", default="float32", choices=sorted(models.DTYPES), help="model dtype (default: float32)")
    g.addoption("--batch-size", type=int, default=4, help="samples per forward pass (default: 4)")
    g.addoption("--report-dir", default="reports", metavar="DIR",
                help="where each run writes <run>/results.json and <run>/report.html (default: reports/)")
    g.addoption("--baseline", default=None, metavar="PATH",
                help="compare with an earlier results.json: a changed verdict, or a primary value moved by > 10%% "
                     "and outside the baseline's 95%% interval, fails the session (default: no comparison)")
    g.addoption("--update-baseline", action="store_true",
                help="rewrite the --baseline file with this run's results instead of comparing")


def model_specs(config) -> list[str]:
    return config.getoption("model") or [DEFAULT_MODEL]


def pytest_configure(config):
    for spec in model_specs(config):
        try:
            models.check_spec(spec)
        except MassactError as e:
            raise pytest.UsageError(str(e)) from None
    try:
        settings = CorpusSettings(path=config.getoption("corpus"), nsamples=config.getoption("nsamples"),
                                  seqlen=config.getoption("seqlen"), seed=config.getoption("seed"),
                                  bos=config.getoption("bos"))
    except MassactError as e:
        raise pytest.UsageError(str(e)) from None
    if config.getoption("update_baseline") and not config.getoption("baseline"):
        raise pytest.UsageError("--update-baseline needs --baseline PATH: the file to rewrite")
    controller = not hasattr(config, "workerinput")  # under xdist only the controller writes reports
    report_dir = Path(config.getoption("report_dir"))
    if not report_dir.is_absolute():
        report_dir = config.invocation_params.dir / report_dir
    config.stash[SESSION] = Session(
        corpus=settings, dtype=config.getoption("dtype"), device=config.getoption("device"),
        batch_size=config.getoption("batch_size"), resamples=config.getoption("resamples"),
        report_dir=report_dir if controller else None, progress=_progress(config), root=config.rootpath)


def _progress(config):
    last = [0.0]

    def line(msg: str, *, final: bool = False) -> None:
        now = time.monotonic()
        if final or now - last[0] > 5:
            last[0] = now
            reporter = config.pluginmanager.get_plugin("terminalreporter")
            if reporter is not None:
                reporter.write_line(f"[massact] {msg}")
    return line


def pytest_generate_tests(metafunc):
    if "claim_case" not in metafunc.fixturenames:
        return
    path = Path(metafunc.module.__file__)
    records = load_records(path.with_name(path.stem.removeprefix("test_") + ".toml"))
    params, ids = [], []
    for rec in records:
        specs = model_specs(metafunc.config) if isinstance(rec, Claim) and rec.needs_model else [None]
        for spec in specs:
            params.append((rec, spec))
            ids.append(rec.key + (f"-{spec}" if spec else ""))
    metafunc.parametrize("claim_case", params, ids=ids, indirect=True)


class ClaimCase:
    """One (claim, model) item; verify() decides it against the recorded expectation."""

    def __init__(self, record: Claim | BadRecord, spec: str | None, session: Session):
        self.record, self.spec, self.session = record, spec, session

    def _skip(self, reason: str, claim: Claim) -> None:
        name = models.canonical_name(self.spec) if self.spec else None
        self.session.record({**_record_fields(claim), "model": name, "spec": self.spec,
                             "verdict": "skipped", "reason": reason, "summary": ""})
        pytest.skip(reason)

    def verify(self) -> None:
        __tracebackhide__ = True
        rec = self.record
        if isinstance(rec, BadRecord):
            self.session.record({"claim": rec.key, "model": None, "spec": None, "verdict": "bad-record",
                                 "reason": rec.error, "summary": "", "threshold": "", "documented": ""})
            pytest.fail(f"malformed claim record: {rec.error}", pytrace=False)
        name = models.canonical_name(self.spec) if self.spec else None
        if rec.documented_on and name and name != rec.documented_on:
            self._skip(f"documented on {rec.documented_on}; this item's model is {name} "
                       f"(run with --model {rec.documented_on} to check the document's numbers)", rec)
        try:
            v, error = self.session.judge(rec, self.spec), None
        except MassactError as e:
            v, error = None, e
        # outside the except block, so the failure shows the message alone, not a chained traceback
        if isinstance(error, ModelUnavailable):
            self._skip(str(error), rec)
        if error is not None:
            self.session.record({**_record_fields(rec), "model": name, "spec": self.spec,
                                 "verdict": "error", "reason": str(error), "summary": ""})
            pytest.fail(f"{type(error).__name__}: {error}", pytrace=False)
        expected = rec.expect.get(name or "document")
        self.session.record(verdict_entry(v, spec=self.spec, expected=expected.verdict if expected else None))
        where = f"{rec.key} on {name or 'the document'}"
        measured = f"measured: {v.summary}; threshold: {v.threshold}; documented: {v.documented}"
        if expected is None or expected.verdict == "holds":
            if v.verdict != "holds":
                pytest.fail(f"{where}: {v.verdict}. {v.reason}\n{measured}", pytrace=False)
        elif v.verdict == expected.verdict:
            pytest.xfail(f"{v.verdict} as recorded ({expected.reason}); {measured}")
        else:
            pytest.fail(f"{where}: verdict changed: recorded {expected.verdict} ({expected.reason}), "
                        f"now {v.verdict}. {v.reason}\n{measured}", pytrace=False)


def _record_fields(claim: Claim) -> dict:
    """What a results entry says about the claim itself, whatever became of the item."""
    return {"claim": claim.id, "variant": claim.variant, "version": claim.version, "source": claim.source,
            "statement": claim.statement, "threshold": claim.threshold, "documented": claim.documented}


@pytest.fixture
def claim_case(request) -> ClaimCase:
    record, spec = request.param
    return ClaimCase(record, spec, request.config.stash[SESSION])


@pytest.fixture(scope="session")
def massact_session(request) -> Session:
    return request.config.stash[SESSION]


def pytest_sessionfinish(session, exitstatus):
    s = session.config.stash.get(SESSION, None)
    if s is not None:
        complete = exitstatus not in (pytest.ExitCode.INTERRUPTED, pytest.ExitCode.INTERNAL_ERROR)
        if complete and s.report_dir is not None:
            s.add_prompt_activations()
        doc = s.write(complete=complete)
        if doc is not None:
            _report_and_baseline(session, s, doc)


def _report_and_baseline(session, s: Session, doc: dict) -> None:
    """report.html beside results.json (also for a failed or cut-off run); then --baseline."""
    try:
        report = f"report: {html.write_report(doc, s.run_dir / 'report.html')}"
    except Exception as e:  # noqa: BLE001 - results.json is written; say why the page is not
        report = f"report.html NOT written: {type(e).__name__}: {e}"
    session.config.stash[FINISH] = (report, [], False)
    path = session.config.getoption("baseline")
    if path:
        path = Path(path) if Path(path).is_absolute() else session.config.invocation_params.dir / path
        outcome = diff.check_baseline(doc, path, update=session.config.getoption("update_baseline"))
        session.config.stash[FINISH] = (report, outcome.lines, outcome.failed)
        if outcome.failed and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    s = config.stash.get(SESSION, None)
    if s is None or not s.results:
        return
    tr = terminalreporter
    tr.section("massact verdicts")
    for r in s.results:
        label = f"{r['claim']}/{r.get('variant', '')}".rstrip("/")
        tr.write_line(f"{label:<44} {str(r.get('model') or '-'):<14} {r['verdict']:<9} {r.get('summary') or r.get('reason', '')}")
        if r["verdict"] not in ("skipped", "bad-record", "error"):
            prim = r.get("primary")
            if prim in r.get("intervals", {}):
                lo, hi = r["intervals"][prim]
                tr.write_line(f"{'':<68} {prim} = {r['values'][prim]:.4g}, 95% CI [{lo:.4g}, {hi:.4g}]")
            tr.write_line(f"{'':<68} threshold: {r['threshold']} | documented: {r['documented']}")
    if s.run_dir is not None:
        tr.write_line(f"results: {s.run_dir / 'results.json'}  ({s.engine.n_passes} forward passes, "
                      f"{s.engine.seconds:.1f} s in passes)")
    report, baseline, failed = config.stash.get(FINISH, ("", [], False))
    if report:
        tr.write_line(report)
    if baseline:
        tr.section("massact baseline", red=failed, bold=failed)
        for line in baseline:
            tr.write_line(line)
