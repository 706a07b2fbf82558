"""One object per pytest session: loaded models, the pass engine, and the results so far."""
from __future__ import annotations

import platform
import subprocess
import time
from dataclasses import asdict
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from massact import models
from massact.checks import Context
from massact.claims import RESAMPLES, Claim, Verdict, judge
from massact.corpus import Corpus, CorpusSettings, load_corpus
from massact.engine import Engine
from massact.errors import MassactError
from massact.report.results import SCHEMA, new_run_dir, write_results


class Session:
    def __init__(self, *, corpus: CorpusSettings, dtype: str, device: str, report_dir: Path | None,
                 batch_size: int = 4, resamples: int = RESAMPLES, progress=None, root: Path | None = None):
        self.corpus_settings = corpus
        self.dtype, self.device = dtype, device
        self.resamples = resamples
        self.engine = Engine(batch_size=batch_size, progress=progress)
        self.loaded: dict[str, models.LoadedModel | MassactError] = {}
        self.corpus: Corpus | MassactError | None = None
        self.results: list[dict] = []
        self.root = root
        self.report_dir = report_dir  # None: write nothing (an xdist worker)
        self.run_dir: Path | None = None  # made at the first result, so a run without claims writes nothing
        self.started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.t0 = time.perf_counter()

    # -- inputs, loaded once; a failure is remembered so every item reports the same message

    def model(self, spec: str) -> models.LoadedModel:
        if spec not in self.loaded:
            try:
                self.loaded[spec] = models.load(spec, dtype=self.dtype, device=self.device)
            except MassactError as e:
                self.loaded[spec] = e
        got = self.loaded[spec]
        if isinstance(got, MassactError):
            raise got
        return got

    def get_corpus(self) -> Corpus:
        if self.corpus is None:
            try:
                self.corpus = load_corpus(self.corpus_settings)
            except MassactError as e:
                self.corpus = e
        if isinstance(self.corpus, MassactError):
            raise self.corpus
        return self.corpus

    def context(self, spec: str, claim: Claim) -> Context:
        n = self.corpus_settings.nsamples or claim.nsamples
        return Context(self.model(spec), self.get_corpus(), self.engine, n=n)

    def judge(self, claim: Claim, spec: str | None) -> Verdict:
        return judge(claim, self.context(spec, claim) if spec else None, resamples=self.resamples)

    # -- results

    def record(self, entry: dict) -> None:
        self.results.append(entry)
        self.write(complete=False)

    def write(self, *, complete: bool) -> None:
        if self.report_dir is None or not self.results:
            return
        if self.run_dir is None:
            self.run_dir = new_run_dir(self.report_dir)
        write_results(self.run_dir / "results.json", self.document(complete=complete))

    def document(self, *, complete: bool) -> dict:
        corpus = self.corpus.describe() if isinstance(self.corpus, Corpus) else asdict(self.corpus_settings)
        return {
            "schema": SCHEMA,
            "complete": complete,
            "started": self.started,
            "wall_seconds": round(time.perf_counter() - self.t0, 2),
            "forward_passes": self.engine.n_passes,
            "samples_run": self.engine.samples_run,
            "resamples": self.resamples,
            "pass_seconds": round(self.engine.seconds, 2),
            "corpus": corpus,
            "models": {spec: _model_provenance(m) for spec, m in self.loaded.items()},
            "versions": _versions(),
            "git_commit": _git_commit(self.root),
            "results": self.results,
        }


def verdict_entry(v: Verdict, *, spec: str | None, expected: str | None) -> dict:
    return {**asdict(v), "spec": spec, "expected": expected}


def _model_provenance(m) -> dict:
    if isinstance(m, MassactError):
        return {"error": str(m), "error_type": type(m).__name__}
    return {"name": m.name, "architecture": m.adapter.name, "dtype": m.dtype, "device": m.device,
            "layers": m.n_layers, "hidden_size": m.hidden_size, **m.provenance}


def _versions() -> dict:
    out = {"python": platform.python_version()}
    for pkg in ("massact", "torch", "transformers", "gguf"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def _git_commit(root: Path | None) -> str | None:
    try:
        res = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if res.returncode != 0:
        return None
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, timeout=5)
    return res.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
