"""What a process that judges claims holds: loaded models, the corpus and the pass engine.

Under pytest-xdist every worker has one; the controller only assembles what the workers'
reports carry (massact.report.results.Run). The corpus is read at start-up; each model loads
once, and a failure to load is remembered, so every item of that model reports it without
retrying.
"""
from __future__ import annotations

from pathlib import Path

from massact import models
from massact.checks import CHECKS, Context
from massact.claims import Claim, judge
from massact.corpus import Corpus
from massact.engine import Engine
from massact.errors import MassactError, ModelLoadError
from massact.report.results import Entry
from massact.verdict import RESAMPLES


class Session:
    def __init__(self, *, corpus: Corpus, labels: dict[str, str], dtype: str, device: str,
                 placement: models.Placement | None = None, batch_size: int = 4, resamples: int = RESAMPLES,
                 bootstrap_seed: int = 0, progress=None):
        self.corpus = corpus
        self.labels = labels  # resolved spec -> the label reports show
        self.dtype, self.device, self.placement = dtype, device, placement
        self.resamples, self.bootstrap_seed = resamples, bootstrap_seed
        self.engine = Engine(batch_size=batch_size, progress=progress)
        self.loaded: dict[str, models.LoadedModel | Exception] = {}
        self.corpora: dict[str, tuple[Corpus, str]] = {}  # spec -> the corpus with its BOS decided, and why
        self.planned: set[str] = set()

    def model(self, spec: str) -> models.LoadedModel:
        """The loaded model; its first failure to load raises as it came (a bug shows its traceback),
        later requests raise it again as a message, with no new attempt."""
        if spec not in self.loaded:
            try:
                self.loaded[spec] = models.load(spec, dtype=self.dtype, device=self.device, label=self.labels.get(spec),
                                                placement=self.placement)
            except Exception as e:
                self.loaded[spec] = e
                raise
        got = self.loaded[spec]
        if isinstance(got, MassactError):
            raise got
        if isinstance(got, Exception):
            raise ModelLoadError(f"{spec} failed to load earlier in this run ({type(got).__name__}: {got}); "
                                 "the first item of this model shows where")
        return got

    def identity(self, spec: str) -> str | None:
        """The model of models.KNOWN that ``spec`` is: a built-in or hub id says so without loading,
        a path only once loaded (its architecture and weights)."""
        if not models.is_path(spec):
            return models.known_by_spec(spec)
        return self.model(spec).known

    def corpus_for(self, spec: str) -> Corpus:
        """The corpus as this model reads it: with BOS exactly when its tokenizer adds one (--bos auto)."""
        if spec not in self.corpora:
            self.corpora[spec] = self.corpus.for_model(self.model(spec).tokenizer)
        return self.corpora[spec][0]

    def samples_for(self, claim: Claim) -> int:
        return self.corpus.settings.nsamples or claim.nsamples

    def plan(self, spec: str, claims: list[Claim]) -> None:
        """Announce to the engine, once per model, the requests every claim about to run will make."""
        if spec in self.planned:
            return
        self.planned.add(spec)
        self.engine.plan(self.model(spec), self.corpus_for(spec),
                         [(req, self.samples_for(c)) for c in claims for req in CHECKS[c.check].needs(c.params)])

    def judge(self, claim: Claim, spec: str | None, *, seed: int | None = None) -> Entry:
        """The claim judged on ``spec`` (None: a document's own numbers); ``seed``: the bootstrap's, if
        not the session's."""
        ctx = Context(self.model(spec), self.corpus_for(spec), self.engine, n=self.samples_for(claim)) if spec else None
        return judge(claim, ctx, resamples=self.resamples, seed=self.bootstrap_seed if seed is None else seed)

    def model_info(self, spec: str) -> dict:
        """What results.json says about a model: how it was loaded, or why it was not."""
        m = self.loaded.get(spec)
        if m is None:
            return {}
        label = self.labels.get(spec, spec)
        if isinstance(m, Exception):
            return {"label": label, "error": str(m), "error_type": type(m).__name__}
        prov = dict(m.provenance)
        weights = Path(prov["gguf"]).name + " (GGUF), dequantized to" if "gguf" in prov else "weights in"
        return {"name": m.name, "label": label, "known_as": m.known,
                "description": f"{m.adapter.name}: {weights} {m.dtype}", "architecture": m.adapter.name,
                "dtype": m.dtype, "device": m.device, "layers": m.n_layers, "hidden_size": m.hidden_size,
                **({"bos": self.corpora[spec][1]} if spec in self.corpora else {}), **prov}

    def engine_info(self) -> dict:
        e = self.engine
        return {"passes": e.n_passes, "samples": e.samples_run, "seconds": e.seconds, "log": e.log}
