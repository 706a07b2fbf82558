"""The pytest plugin: options, claims collected from claims/*.toml, verdicts on pytest's reports.

Every ``[[claim]]`` record of a TOML file under a collected directory becomes one item per
model (``claims/massive.toml::massive.exists/general[smollm2-135m]``). An item's result rides
its own test report (``report.massact_entry``; verdict, value and interval also as
``user_properties``, so ``--junitxml`` carries them), and the controller assembles results.json,
report.html and the summary from the reports: the same serially and under pytest-xdist.
"""
from __future__ import annotations

import platform
import shlex
import subprocess
import sys
import time
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest

from massact import models
from massact.claims import RESAMPLES, BadRecord, Claim, load_records
from massact.corpus import DEFAULT_CORPUS, CorpusSettings
from massact.errors import MassactError, ModelUnavailable
from massact.report import diff, html, terminal
from massact.report import pytest_html as massact_html
from massact.report.results import Entry, Run
from massact.session import Session

SESSION = pytest.StashKey[Session]()  # judges claims: in every process that runs items
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
    config.stash[SESSION] = Session(
        corpus=settings, dtype=config.getoption("dtype"), device=config.getoption("device"),
        batch_size=config.getoption("batch_size"), resamples=config.getoption("resamples"),
        progress=_progress(config))
    if not hasattr(config, "workerinput"):  # the controller (or a serial run) assembles the results
        report_dir = Path(config.getoption("report_dir"))
        if not report_dir.is_absolute():
            report_dir = config.invocation_params.dir / report_dir
        config.pluginmanager.register(Controller(config, Run(report_dir=report_dir, provenance=_provenance(config))),
                                      "massact-controller")
        massact_html.register(config)


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


# ---------------------------------------------------------------- collection

def pytest_collect_file(file_path: Path, parent):
    if file_path.suffix == ".toml" and file_path.name != "pyproject.toml" and b"[[claim]]" in file_path.read_bytes():
        return ClaimFile.from_parent(parent, path=file_path)
    return None


class ClaimFile(pytest.File):
    """A claims file: one item per (record, model); a malformed record is an item that fails."""

    def collect(self):
        specs = model_specs(self.config)
        for rec in load_records(self.path):
            if isinstance(rec, BadRecord):
                yield ClaimItem.from_parent(self, name=rec.key, record=rec, spec=None)
                continue
            for spec in specs if rec.needs_model else [None]:
                label = models.canonical_name(spec) if spec else None
                yield ClaimItem.from_parent(self, name=rec.key + (f"[{label}]" if label else ""), record=rec,
                                            spec=spec)


class ClaimItem(pytest.Item):
    """One (claim, model): judged, then compared with the verdict the record expects on that model."""

    def __init__(self, *, record: Claim | BadRecord, spec: str | None, **kw):
        super().__init__(**kw)
        self.record, self.spec = record, spec
        self.entry: Entry | None = None

    @property
    def label(self) -> str | None:
        return models.canonical_name(self.spec) if self.spec else None

    def reportinfo(self):
        return self.path, None, self.name

    def _finish(self, entry: Entry) -> None:
        entry.model, entry.spec, entry.nodeid = self.label, self.spec, self.nodeid
        self.entry = entry
        self.user_properties += [("verdict", entry.verdict), ("expected", entry.expected or "")]
        if entry.primary and entry.primary in entry.values:
            self.user_properties += [("primary", entry.primary), ("value", entry.values[entry.primary])]
            if entry.primary in entry.intervals:
                lo, hi = entry.intervals[entry.primary]
                self.user_properties.append(("interval", f"[{lo:.6g}, {hi:.6g}]"))

    def runtest(self) -> None:
        __tracebackhide__ = True
        rec = self.record
        if isinstance(rec, BadRecord):
            self._finish(Entry(claim=rec.key, verdict="bad-record", reason=rec.error))
            pytest.fail(f"malformed claim record: {rec.error}", pytrace=False)
        session = self.config.stash[SESSION]
        if rec.documented_on and self.label and self.label != rec.documented_on:
            reason = (f"documented on {rec.documented_on}; this item's model is {self.label} "
                      f"(run with --model {rec.documented_on} to check the document's numbers)")
            self._finish(rec.entry(verdict="skipped", reason=reason))
            pytest.skip(reason)
        try:
            if self.spec:
                session.plan(self.spec, [i.record for i in self.session.items if isinstance(i, ClaimItem)
                                         and i.spec == self.spec and isinstance(i.record, Claim)])
            entry, error = session.judge(rec, self.spec), None
        except MassactError as e:
            entry, error = None, e
        # outside the except block, so the failure shows the message alone, not a chained traceback
        if isinstance(error, ModelUnavailable):
            self._finish(rec.entry(verdict="skipped", reason=str(error)))
            pytest.skip(str(error))
        if error is not None:
            self._finish(rec.entry(verdict="error", reason=f"{type(error).__name__}: {error}"))
            pytest.fail(f"{type(error).__name__}: {error}", pytrace=False)
        expected = rec.expect.get(self.label or "document")
        if expected:
            entry.expected, entry.expected_reason = expected.verdict, expected.reason
        self._finish(entry)
        where = f"{rec.key} on {self.label or 'the document'}"
        measured = f"measured: {entry.summary}; threshold: {entry.threshold}; documented: {entry.documented}"
        if expected is None or expected.verdict == "holds":
            if entry.verdict != "holds":
                pytest.fail(f"{where}: {entry.verdict}. {entry.reason}\n{measured}", pytrace=False)
        elif entry.verdict == expected.verdict:
            pytest.xfail(f"{entry.verdict} as recorded ({expected.reason}); {measured}")
        else:
            pytest.fail(f"{where}: verdict changed: recorded {expected.verdict} ({expected.reason}), "
                        f"now {entry.verdict}. {entry.reason}\n{measured}", pytrace=False)


@pytest.fixture(scope="session")
def massact_session(request) -> Session:
    return request.config.stash[SESSION]


# ---------------------------------------------------------------- results ride the reports

@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    entry = getattr(item, "entry", None)
    if call.when != "call" or entry is None:
        return
    session = item.config.stash[SESSION]
    entry.seconds = round(call.duration, 3)
    report.massact_entry = entry.to_dict()
    report.massact_run = {"models": {item.spec: session.model_info(item.spec)} if item.spec else {},
                          "corpus": session.corpus.describe() if hasattr(session.corpus, "describe") else {},
                          "engine": session.engine_info(),
                          "worker": getattr(item.config, "workerinput", {}).get("workerid", "main")}


class Controller:
    """In the controller (or a serial run): collects entries from the reports and writes the run out."""

    def __init__(self, config, run: Run):
        self.config, self.run = config, run
        self.t0 = time.perf_counter()

    def wall(self) -> float:
        return time.perf_counter() - self.t0

    def pytest_collection_finish(self, session):
        self.run.expected = {i.nodeid for i in session.items if isinstance(i, ClaimItem)}

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_make_scheduler(self, config, log):
        """Under -n N (xdist's default "load"), each model's items go to one worker, which loads it once."""
        if config.getvalue("dist") != "load":
            return None  # the user chose how to distribute
        from xdist.scheduler import LoadScopeScheduling

        class ByModel(LoadScopeScheduling):
            def _split_scope(self, nodeid: str) -> str:
                return nodeid[nodeid.rindex("[") + 1:-1] if nodeid.endswith("]") else nodeid

        return ByModel(config, log)

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node, ids):
        if self.run.expected is None:
            self.run.expected = {i for i in ids if ".toml::" in i}

    def pytest_runtest_logreport(self, report):
        entry = getattr(report, "massact_entry", None)
        if entry is not None:
            self.run.add(entry, report.massact_run)
            self.run.write(complete=False, wall_seconds=self.wall())

    def pytest_sessionfinish(self, session, exitstatus):
        complete = exitstatus not in (pytest.ExitCode.INTERRUPTED, pytest.ExitCode.INTERNAL_ERROR) \
            and not self.run.missing()
        doc = self.run.write(complete=complete, wall_seconds=self.wall())
        if doc is not None:
            self._report_and_baseline(session, doc)

    def _report_and_baseline(self, session, doc: dict) -> None:
        """report.html beside results.json (also for a failed or cut-off run); then --baseline."""
        try:
            report = f"report: {html.write_report(doc, self.run.run_dir / 'report.html')}"
        except Exception as e:  # noqa: BLE001 - results.json is written; say why the page is not
            report = f"report.html NOT written: {type(e).__name__}: {e}"
        self.config.stash[FINISH] = (report, [], False)
        path = self.config.getoption("baseline")
        if path:
            path = Path(path) if Path(path).is_absolute() else self.config.invocation_params.dir / path
            outcome = diff.check_baseline(doc, path, update=self.config.getoption("update_baseline"))
            self.config.stash[FINISH] = (report, outcome.lines, outcome.failed)
            if outcome.failed and session.exitstatus == pytest.ExitCode.OK:
                session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter, exitstatus, config):
        if not self.run.entries:
            return
        tr = terminalreporter
        tr.section("massact verdicts")
        doc = self.run.document(complete=not self.run.missing(), wall_seconds=self.wall())
        for line in terminal.summary_lines(doc, verbose=config.getoption("verbose"), width=120):
            tr.write_line(line)
        if self.run.run_dir is not None:
            tr.write_line(f"results: {self.run.run_dir / 'results.json'}  ({doc['forward_passes']} forward passes, "
                          f"{doc['pass_seconds']:.1f} s in passes)")
        report, baseline, failed = config.stash.get(FINISH, ("", [], False))
        if report:
            tr.write_line(report)
        if baseline:
            tr.section("massact baseline", red=failed, bold=failed)
            for line in baseline:
                tr.write_line(line)


def _provenance(config) -> dict:
    """What a run was, computed once: when, the command, the code, the packages."""
    root = config.rootpath
    commit, dirty = _git(root)
    versions = {"python": platform.python_version()}
    for pkg in ("massact", "torch", "transformers", "gguf", "pytest"):
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            versions[pkg] = None
    return {"started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": shlex.join([Path(sys.argv[0]).name, *config.invocation_params.args]),
            "git_commit": commit, "git_dirty": dirty, "resamples": config.getoption("resamples"),
            "versions": versions}


def _git(root: Path) -> tuple[str | None, bool]:
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        if head.returncode != 0:
            return None, False
        status = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None, False
    return head.stdout.strip(), bool(status.stdout.strip())
