"""The pytest plugin: options, claims collected from claims/*.toml, verdicts on pytest's reports.

Every ``[[claim]]`` record of a TOML file under a collected directory becomes one item per
model (``claims/massive.toml::massive.exists/general[smollm2-135m]``). An item's result rides
its own test report (``report.massact_entry``; verdict, value and interval also as
``user_properties``, so ``--junitxml`` carries them), and the controller assembles results.json,
report.html and the summary from the reports: the same serially and under pytest-xdist.

Nothing is lost: every collected item gets an entry (``error`` with the message when something
raised in it), results.json lists the items a run cut short did not judge, SIGINT and SIGTERM
end the session as interrupted with both files written, and a run is ``complete`` only when
every collected item was judged.
"""
from __future__ import annotations

import os
import platform
import shlex
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest

from massact import expectations, models
from massact.claims import DOCUMENT, OTHER, BadRecord, Claim, load_records
from massact.corpus import DEFAULT_CORPUS, CorpusSettings, load_corpus
from massact.errors import BadOption, MassactError, ModelUnavailable
from massact.progress import Progress, WorkerLines
from massact.report import diff, html, terminal
from massact.report import pytest_html as massact_html
from massact.report.results import Entry, Run, under
from massact.session import Session
from massact.verdict import RESAMPLES

SESSION = pytest.StashKey[Session]()  # judges claims: in every process that runs items
LABELS = pytest.StashKey[dict[str, str]]()  # resolved --model spec -> its label, in the order given
RECORDS = pytest.StashKey[dict[str, Path]]()  # claim id/variant -> the claims file that defines it
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
    g.addoption("--bootstrap-seed", type=int, default=0,
                help="seed for the bootstrap resamples behind the intervals (default: 0)")
    g.addoption("--seed-check", type=int, default=0, metavar="SEEDS",
                help="judge every item again under SEEDS other bootstrap seeds and fail if a verdict moves "
                     "(claims/test_bootstrap_seeds.py; scripts/test uses 4; default: 0, not checked)")
    g.addoption("--bos", nargs="?", const="on", default="auto", choices=("auto", "on", "off"),
                help="prepend the BOS (or CLS) token to every sample: auto prepends it exactly when the model's "
                     "tokenizer adds one by default; --bos forces it (default: auto)")
    g.addoption("--no-bos", dest="bos", action="store_const", const="off",
                help="never prepend BOS, even for a model trained with it (a perturbation)")
    g.addoption("--device", default="cpu", help="torch device (default: cpu)")
    g.addoption("--device-map", default=None, choices=models.DEVICE_MAPS,
                help="spread a model too large for --device over devices and disk (accelerate; default: all on "
                     "--device)")
    g.addoption("--max-memory", default=None, metavar="DEV=SIZE,...",
                help="with --device-map: what each device may hold, e.g. cpu=8GiB or 0=20GiB,cpu=60GiB; the rest "
                     "goes to disk")
    g.addoption("--dtype", default="float32", choices=sorted(models.DTYPES), help="model dtype (default: float32)")
    g.addoption("--batch-size", type=int, default=4, help="samples per forward pass (default: 4)")
    g.addoption("--report-dir", default="reports", metavar="DIR",
                help="where each run writes <run>/results.json and <run>/report.html (default: reports/)")
    g.addoption("--baseline", default=None, metavar="PATH",
                help="compare with an earlier results.json: a changed verdict, or a primary value moved by > 10%% "
                     "and outside the baseline's 95%% interval, fails the session (default: no comparison)")
    g.addoption("--update-baseline", action="store_true",
                help="rewrite the --baseline file with this run's results instead of comparing (only from a "
                     "complete run)")
    g.addoption("--allow-all-skipped", action="store_true",
                help="exit 0 when every item skipped (default: such a run checked nothing and exits 5)")


def model_specs(config) -> list[str]:
    return config.getoption("model") or [DEFAULT_MODEL]


def pytest_configure(config):
    """Everything that can be checked before a model loads is, here: a bad value is a usage error."""
    controller = not hasattr(config, "workerinput")
    try:
        specs = [models.resolve(spec) for spec in model_specs(config)]
        corpus = load_corpus(CorpusSettings(path=config.getoption("corpus"), nsamples=config.getoption("nsamples"),
                                            seqlen=config.getoption("seqlen"), seed=config.getoption("seed"),
                                            bos={"auto": None, "on": True, "off": False}[config.getoption("bos")]))
        models.check_device(config.getoption("device"))
        placement = models.Placement.parse(config.getoption("device_map"), config.getoption("max_memory"))
        if config.getoption("batch_size") < 1:
            raise BadOption(f"--batch-size must be at least 1, not {config.getoption('batch_size')}")
        if config.getoption("resamples") < 0:
            raise BadOption("--resamples must be 0 (no bootstrap interval) or more, "
                            f"not {config.getoption('resamples')}")
        report_dir = Path(config.getoption("report_dir"))
        if not report_dir.is_absolute():
            report_dir = config.invocation_params.dir / report_dir
        if controller:
            _check_writable(report_dir)
    except MassactError as e:
        raise pytest.UsageError(str(e)) from None
    if config.getoption("update_baseline") and not config.getoption("baseline"):
        raise pytest.UsageError("--update-baseline needs --baseline PATH: the file to rewrite")
    labels = config.stash[LABELS] = models.labels(specs)
    config.stash[SESSION] = Session(
        corpus=corpus, labels=labels, dtype=config.getoption("dtype"), device=config.getoption("device"),
        placement=placement, batch_size=config.getoption("batch_size"), resamples=config.getoption("resamples"),
        bootstrap_seed=config.getoption("bootstrap_seed"),
        progress=Progress(config))
    if controller:  # the controller (or a serial run) assembles the results
        config.pluginmanager.register(
            Controller(config, Run(report_dir=report_dir, provenance=_provenance(config), labels=labels)),
            "massact-controller")
        massact_html.register(config)
        config.pluginmanager.register(WorkerLines(config), "massact-worker-lines")
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, _terminate)
            config.add_cleanup(lambda: signal.signal(signal.SIGTERM, previous))


def pytest_report_header(config) -> list[str]:
    session = config.stash.get(SESSION, None)
    note = session.corpus.note() if session else None
    return [f"massact: {note}"] if note else []


def _check_writable(report_dir: Path) -> None:
    """--report-dir, or the directory it would be made in, must be one this process can write to."""
    where = report_dir
    while not where.exists():
        where = where.parent
    if not where.is_dir() or not os.access(where, os.W_OK | os.X_OK):
        what = "is not a directory" if not where.is_dir() else "is not writable"
        raise BadOption(f"--report-dir {report_dir}: {where} {what}; pass a directory this run can write to")


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised as an interruption: pytest then ends the session as it does on Ctrl-C, and
    the controller writes results.json and report.html, marked incomplete."""


def _terminate(signum, frame):
    raise Terminated("terminated by SIGTERM")


@contextmanager
def _signals_ignored():
    """SIGINT and SIGTERM are ignored in the block: the run's files are never left half-written."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


# ---------------------------------------------------------------- collection

def pytest_collect_file(file_path: Path, parent):
    if file_path.suffix == ".toml" and file_path.name != "pyproject.toml" and b"[[claim]]" in file_path.read_bytes():
        return ClaimFile.from_parent(parent, path=file_path)
    return None


class ClaimFile(pytest.File):
    """A claims file: one item per (record, model); a malformed record is an item that fails."""

    def collect(self):
        labels = self.config.stash[LABELS]
        defined = self.session.stash.setdefault(RECORDS, {})
        bad: dict[str, int] = {}
        for rec in load_records(self.path):
            if isinstance(rec, Claim) and defined.setdefault(rec.key, self.path) != self.path:
                rec = BadRecord(rec.key, f"{self.path.name} ({rec.key}): fields 'id' and 'variant': {rec.key} is "
                                         f"also defined in {defined[rec.key]}; rename one of them")
            if isinstance(rec, BadRecord):  # named apart: two bad records of one id are two items
                bad[rec.key] = bad.get(rec.key, 0) + 1
                name = rec.key + (f"~{bad[rec.key]}" if bad[rec.key] > 1 else "")
                yield ClaimItem.from_parent(self, name=name, record=rec, spec=None)
                continue
            for spec in labels if rec.needs_model else [None]:
                yield ClaimItem.from_parent(self, name=rec.key + (f"[{labels[spec]}]" if spec else ""), record=rec,
                                            spec=spec)


class ClaimItem(pytest.Item):
    """One (claim, model): judged, then compared with the verdict the record expects on that model."""

    def __init__(self, *, record: Claim | BadRecord, spec: str | None, **kw):
        super().__init__(**kw)
        self.record, self.spec = record, spec  # spec: resolved (models.resolve)
        self.entry: Entry | None = None

    @property
    def label(self) -> str | None:
        return self.config.stash[LABELS][self.spec] if self.spec else None

    def reportinfo(self):
        return self.path, None, self.name

    def repr_failure(self, excinfo, style=None):
        """An expected verdict (xfail) shows its measured reason, not pytest's and pluggy's frames."""
        if isinstance(excinfo.value, pytest.xfail.Exception):
            return excinfo.value.msg
        return super().repr_failure(excinfo, style)

    def _finish(self, entry: Entry) -> None:
        entry.model, entry.spec, entry.nodeid = self.label, self.spec, self.nodeid
        self.entry = entry
        self.user_properties += [("verdict", entry.verdict), ("expected", entry.expected or "")]
        if entry.primary and entry.primary in entry.values:
            self.user_properties += [("primary", entry.primary), ("value", entry.values[entry.primary])]
            if entry.primary in entry.intervals:
                lo, hi = entry.intervals[entry.primary]
                self.user_properties.append(("interval", f"[{lo:.6g}, {hi:.6g}]"))

    def _not_here(self, session: Session) -> str | None:
        """Why a documented-value form does not run on this item's model (None: it does). The model
        must be the one the numbers were measured on, by architecture and weights, not by name."""
        on = self.record.documented_on
        if not on or not self.spec or session.identity(self.spec) == on:
            return None
        known = models.KNOWN.get(on)
        hint = f"run with --model {known.hub_ids[0] if known and known.hub_ids else on} to compare the document's " \
               "numbers"
        lm = session.loaded.get(self.spec)
        if isinstance(lm, models.LoadedModel) and known and known.fits(lm.config):
            weights = (lm.provenance.get("weights_sha256") or "unknown")[:12]
            return (f"documented on {on}; this item's model {self.label} has {on}'s architecture, but its weights "
                    f"(sha256 {weights}...) are not known to be {on}'s ({hint})")
        return f"documented on {on}; this item's model is {self.label} ({hint})"

    def runtest(self) -> None:
        __tracebackhide__ = True
        rec = self.record
        if isinstance(rec, BadRecord):
            self._finish(Entry(claim=rec.key, verdict="bad-record", reason=rec.error))
            pytest.fail(f"malformed claim record: {rec.error}", pytrace=False)
        session = self.config.stash[SESSION]
        entry, error, skip = None, None, None
        try:
            skip = self._not_here(session)
            if skip is None:
                if self.spec:
                    session.plan(self.spec, [i.record for i in self.session.items if isinstance(i, ClaimItem)
                                             and i.spec == self.spec and isinstance(i.record, Claim)])
                entry = session.judge(rec, self.spec)
        except MassactError as e:
            error = e
        except Exception as e:  # a bug, or an error massact does not know: the entry says so, pytest shows where
            self._finish(rec.entry(verdict="error", reason=f"{type(e).__name__}: {e}"))
            raise
        # outside the except block, so the failure shows the message alone, not a chained traceback
        if skip is not None:
            self._finish(rec.entry(verdict="skipped", reason=skip))
            pytest.skip(skip)
        if isinstance(error, ModelUnavailable):
            self._finish(rec.entry(verdict="skipped", reason=str(error)))
            pytest.skip(str(error))
        if error is not None:
            self._finish(rec.entry(verdict="error", reason=f"{type(error).__name__}: {error}"))
            pytest.fail(f"{type(error).__name__}: {error}", pytrace=False)
        self._expect(entry, session)

    def _expect(self, entry: Entry, session: Session) -> None:
        """Pass, xfail or fail: the verdict against the one the record expects on this model."""
        __tracebackhide__ = True
        rec = self.record
        known = session.identity(self.spec) if self.spec else DOCUMENT
        expected = rec.expect.get(known) if known else rec.expect.get(OTHER + self.spec)
        if expected:
            entry.expected, entry.expected_reason = expected.verdict, expected.reason
        n = session.samples_for(rec)
        entry.samples = n if self.spec else None
        self._finish(entry)
        want = expected.verdict if expected else "holds"
        where = f"{rec.key} on {self.label or 'the document'}"
        measured = f"measured: {entry.summary}; threshold: {entry.threshold}; documented: {entry.documented}"
        if entry.verdict == want:
            if want != "holds":
                pytest.xfail(f"{entry.verdict} as recorded ({expected.reason}); {measured}")
        elif entry.verdict == "inconclusive" and self.spec and n < rec.nsamples:
            # fewer samples widen the interval: undecided is what they give, not a changed verdict
            pytest.xfail(f"inconclusive on {n} samples, fewer than the record's {rec.nsamples}, on which it expects "
                         f"{want}: run without --nsamples to check that; {measured}")
        elif expected is None:
            pytest.fail(f"{where}: {self._unrecorded(entry, session)}\n{measured}", pytrace=False)
        elif expected.verdict == "holds":
            pytest.fail(f"{where}: {entry.verdict}. {entry.reason}\n{measured}", pytrace=False)
        else:
            pytest.fail(f"{where}: verdict changed: recorded {expected.verdict} ({expected.reason}), "
                        f"now {entry.verdict}. {entry.reason}\n{measured}", pytrace=False)


    def _unrecorded(self, entry: Entry, session: Session) -> str:
        """Why an item whose record expects nothing on its model failed, and the line that records it."""
        key = session.identity(self.spec) if self.spec else "document"
        got = f"this run measured: {entry.verdict} ({expectations.measured_reason(entry.to_dict())})"
        if key is None:
            known = ", ".join(models.KNOWN)
            return (f"no expectation can be recorded for {self.label}: [claim.expect] names the models massact knows "
                    f"by architecture and weights ({known}; massact/models.py KNOWN), and a verdict other than holds "
                    f"fails where none is recorded; {got}. Compare runs of this model with --baseline instead")
        path = self.session.stash.get(RECORDS, {}).get(self.record.key, self.path)
        where = path.relative_to(self.config.rootpath) if path.is_relative_to(self.config.rootpath) else path
        line = expectations.toml_line(key, entry.verdict, expectations.measured_reason(entry.to_dict()))
        return (f"no expectation recorded for {key}; {got}.\nTo record it, add to the [claim.expect] table of "
                f"{self.record.key} in {where}:\n    {line}\n(or, after the run, `python -m massact expect "
                "RESULTS.json --write` records every missing one)")


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
                          "corpus": session.corpus.describe(), "engine": session.engine_info(),
                          "worker": getattr(item.config, "workerinput", {}).get("workerid", "main")}


def pytest_deselected(items):
    """On an xdist worker: the claim items -k, -m or --deselect left out go back to the controller."""
    config = items[0].config if items else None
    if config is not None and hasattr(config, "workeroutput"):
        config.workeroutput.setdefault("massact_deselected", []).extend(
            i.nodeid for i in items if isinstance(i, ClaimItem))


class Controller:
    """In the controller (or a serial run): collects entries from the reports and writes the run out."""

    def __init__(self, config, run: Run):
        self.config, self.run = config, run
        self.t0 = time.perf_counter()
        self.complete = False
        self.interrupted: str | None = None  # by what, when it was
        self.write_error: str | None = None  # why results.json could not be written, when it could not
        self.report_line, self.report_failed = "", False
        self.baseline_lines: list[str] = []
        self.baseline_failed = self.baseline_unreadable = False
        self.all_skipped = False

    def wall(self) -> float:
        return time.perf_counter() - self.t0

    def pytest_collection_finish(self, session):
        if not self.config.option.collectonly:  # a run that only lists its items writes nothing
            self.run.expected = {i.nodeid for i in session.items if isinstance(i, ClaimItem)}

    def pytest_deselected(self, items):
        self.run.deselected |= {i.nodeid for i in items if isinstance(i, ClaimItem)}

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

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node, error):
        self.run.deselected |= set(getattr(node, "workeroutput", {}).get("massact_deselected", []))

    def pytest_keyboard_interrupt(self, excinfo):
        self.interrupted = "SIGTERM" if isinstance(excinfo.value, Terminated) else "SIGINT (Ctrl-C)"

    def pytest_runtest_logreport(self, report):
        entry = getattr(report, "massact_entry", None)
        if entry is not None:
            self._write(lambda: self.run.add(entry, report.massact_run))
            self._write(lambda: self.run.write(complete=False, wall_seconds=self.wall()))

    def _write(self, fn):
        """``fn()``, which writes under the run directory; an OSError is remembered and said at the end,
        the run goes on with its entries in memory."""
        try:
            out = fn()
        except OSError as e:
            self.write_error = f"{e.filename or self.run.run_dir or self.run.report_dir}: {e.strerror or e}"
            return None
        return out

    def pytest_sessionfinish(self, session, exitstatus):
        self.complete = exitstatus not in (pytest.ExitCode.INTERRUPTED, pytest.ExitCode.INTERNAL_ERROR) \
            and not self.run.missing()
        with _signals_ignored():
            self.write_error = None
            doc = self._write(lambda: self.run.write(complete=self.complete, wall_seconds=self.wall()))
            if doc is not None:
                self._report_and_baseline(doc)
        verdicts = {e["verdict"] for e in self.run.results}
        self.all_skipped = self.complete and verdicts == {"skipped"} and not self.config.getoption("allow_all_skipped")
        if self.baseline_unreadable and session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED):
            session.exitstatus = pytest.ExitCode.USAGE_ERROR  # the --baseline given is not a results document
        elif session.exitstatus == pytest.ExitCode.OK:
            if self.write_error or self.report_failed or self.baseline_failed:
                session.exitstatus = pytest.ExitCode.TESTS_FAILED
            elif self.all_skipped:
                session.exitstatus = pytest.ExitCode.NO_TESTS_COLLECTED

    def _report_and_baseline(self, doc: dict) -> None:
        """report.html beside results.json (also for a failed or cut-off run); then --baseline."""
        try:
            self.report_line = f"report: {html.write_report(doc, under(self.run.run_dir, 'report.html'))}"
        except Exception as e:  # noqa: BLE001 - results.json is written; say why the page is not
            self.report_line, self.report_failed = f"report.html NOT written: {type(e).__name__}: {e}", True
        path = self.config.getoption("baseline")
        if path:
            path = Path(path) if Path(path).is_absolute() else self.config.invocation_params.dir / path
            outcome = diff.check_baseline(doc, path, update=self.config.getoption("update_baseline"))
            self.baseline_lines, self.baseline_failed = outcome.lines, outcome.failed
            self.baseline_unreadable = outcome.unreadable

    def pytest_terminal_summary(self, terminalreporter, exitstatus, config):
        if not (self.run.entries or self.run.expected):
            return
        tr = terminalreporter
        tr.section("massact verdicts")
        doc = self.run.document(complete=self.complete, wall_seconds=self.wall())
        for line in terminal.summary_lines(doc, verbose=config.getoption("verbose"), width=120):
            tr.write_line(line)
        note = config.stash[SESSION].corpus.note()
        if note:
            tr.write_line(note, yellow=True)
        if doc["not_run"]:
            why = f"interrupted by {self.interrupted}" if self.interrupted else "the run stopped early"
            tr.write_line(f"INCOMPLETE ({why}): {len(doc['not_run'])} of {len(self.run.expected or ())} collected "
                          "items were not judged; results.json lists them under not_run", red=True, bold=True)
        if self.write_error:
            tr.write_line(f"results NOT written: {self.write_error}; the verdicts above are all this run kept",
                          red=True, bold=True)
        elif self.run.run_dir is not None:
            tr.write_line(f"results: {self.run.run_dir / 'results.json'}  ({doc['forward_passes']} forward passes, "
                          f"{doc['pass_seconds']:.1f} s in passes)")
        if self.report_line:
            tr.write_line(self.report_line)
        unrecorded = [e for e in doc["results"] if e.get("verdict") in expectations.JUDGED and not e.get("expected")]
        if unrecorded:
            where = self.run.run_dir / "results.json" if self.run.run_dir else "RESULTS.json"
            tr.write_line(f"{len(unrecorded)} verdict(s) with no expectation recorded in claims/*.toml (holds is assumed): "
                          f"`python -m massact expect {where}` prints their [claim.expect] lines, --write records them")
        if self.baseline_lines:
            tr.section("massact baseline", red=self.baseline_failed, bold=self.baseline_failed)
            for line in self.baseline_lines:
                tr.write_line(line)
        if self.all_skipped:
            tr.write_line(f"every item skipped: no claim was checked, so this run fails (exit "
                          f"{int(pytest.ExitCode.NO_TESTS_COLLECTED)}); --allow-all-skipped accepts it",
                          red=True, bold=True)


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
            "command": shlex.join([*_launcher(sys.argv[0]), *config.invocation_params.args]),
            "rootdir": str(root),  # what the items' node ids (claims/<file>.toml::...) are relative to
            "git_commit": commit, "git_dirty": dirty, "resamples": config.getoption("resamples"),
            "bootstrap_seed": config.getoption("bootstrap_seed"),
            "versions": versions}


def _launcher(argv0: str) -> list[str]:
    """How pytest was started: ``python -m pytest`` runs it as pytest/__main__.py."""
    path = Path(argv0)
    return ["python", "-m", path.parent.name] if path.name == "__main__.py" else [path.name]


def _git(root: Path) -> tuple[str | None, bool]:
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        if head.returncode != 0:
            return None, False
        status = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None, False
    return head.stdout.strip(), bool(status.stdout.strip())
