"""What a process that judges claims holds: loaded models, the corpus and the pass engine.

Under pytest-xdist every worker has one; the controller only assembles what the workers'
reports carry (massact.report.results.Run). Models and the corpus load once; a failure to
load is remembered, so every item of that model reports the same message without retrying.
"""
from __future__ import annotations

from pathlib import Path

from massact import models
from massact.checks import CHECKS, Context
from massact.claims import RESAMPLES, Claim, judge
from massact.corpus import Corpus, CorpusSettings, load_corpus
from massact.engine import Engine
from massact.errors import MassactError
from massact.report.results import Entry


class Session:
    def __init__(self, *, corpus: CorpusSettings, dtype: str, device: str, batch_size: int = 4,
                 resamples: int = RESAMPLES, progress=None):
        self.corpus_settings = corpus
        self.dtype, self.device = dtype, device
        self.resamples = resamples
        self.engine = Engine(batch_size=batch_size, progress=progress)
        self.loaded: dict[str, models.LoadedModel | MassactError] = {}
        self.corpus: Corpus | MassactError | None = None
        self.planned: set[str] = set()

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

    def samples_for(self, claim: Claim) -> int:
        return self.corpus_settings.nsamples or claim.nsamples

    def plan(self, spec: str, claims: list[Claim]) -> None:
        """Announce to the engine, once per model, the requests every claim about to run will make."""
        if spec in self.planned:
            return
        self.planned.add(spec)
        lm = self.model(spec)
        self.engine.plan(lm, self.get_corpus(),
                         [(req, self.samples_for(c)) for c in claims for req in CHECKS[c.check].needs(c.params)])

    def judge(self, claim: Claim, spec: str | None) -> Entry:
        ctx = Context(self.model(spec), self.get_corpus(), self.engine, n=self.samples_for(claim)) if spec else None
        return judge(claim, ctx, resamples=self.resamples)

    def model_info(self, spec: str) -> dict:
        """What results.json says about a model: how it was loaded, or why it was not."""
        m = self.loaded.get(spec)
        if m is None:
            return {}
        if isinstance(m, MassactError):
            return {"error": str(m), "error_type": type(m).__name__}
        prov = dict(m.provenance)
        weights = Path(prov["gguf"]).name + " (GGUF), dequantized to" if "gguf" in prov else "weights in"
        return {"name": m.name, "label": m.name, "description": f"{m.adapter.name}: {weights} {m.dtype}",
                "architecture": m.adapter.name, "dtype": m.dtype, "device": m.device, "layers": m.n_layers,
                "hidden_size": m.hidden_size, **prov}

    def engine_info(self) -> dict:
        e = self.engine
        return {"passes": e.n_passes, "samples": e.samples_run, "seconds": e.seconds}
