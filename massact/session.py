"""One object per pytest session: loaded models, the pass engine, and the results so far."""
from __future__ import annotations

import platform
import subprocess
import time
from dataclasses import asdict
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

from massact import models
from massact.capture import Keep, block_points, capture, collect
from massact.checks import Context
from massact.claims import RESAMPLES, Claim, Verdict, judge
from massact.corpus import Corpus, CorpusSettings, bos_id, load_corpus
from massact.engine import Engine
from massact.errors import MassactError
from massact.report.results import SCHEMA, new_run_dir, write_results


PROMPT = "Summer is warm. Winter is cold."  # the documents' example prompt for the 3D bar plot


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
        self.prompt_acts: dict[str, dict] = {}  # spec -> the report's 3D figure data (add_prompt_activations)
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

    def write(self, *, complete: bool) -> dict | None:
        """Write results.json; returns the document written, or None when nothing was."""
        if self.report_dir is None or not self.results:
            return None
        if self.run_dir is None:
            self.run_dir = new_run_dir(self.report_dir)
        doc = self.document(complete=complete)
        write_results(self.run_dir / "results.json", doc)
        return doc

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
            "models": {spec: {**_model_provenance(m), **({"prompt_activations": self.prompt_acts[spec]}
                                                         if spec in self.prompt_acts else {})}
                       for spec, m in self.loaded.items()},
            "versions": _versions(),
            "git_commit": _git_commit(self.root),
            "results": self.results,
        }

    # -- the report's 3D figure: one short prompt per loaded model, at session finish

    def add_prompt_activations(self, *, prompt: str = PROMPT, n_features: int = 24) -> None:
        """|activation| over the prompt's tokens x its top features at the emergence layer, per loaded model.

        Never loads a model: only those some claim loaded get the figure.
        """
        for spec, lm in self.loaded.items():
            if isinstance(lm, MassactError) or spec in self.prompt_acts:
                continue
            try:
                self.prompt_acts[spec] = prompt_activations(lm, prompt, layer=self._emergence_layer(lm.name),
                                                            bos=self.corpus_settings.bos, n_features=n_features)
            except Exception as e:  # noqa: BLE001 - a figure never fails the run; the report says why it is absent
                self.prompt_acts[spec] = {"prompt": prompt, "error": f"{type(e).__name__}: {e}"}

    def _emergence_layer(self, name: str) -> tuple[int, str] | None:
        """First massive layer per massive.exists, else its largest top-1/median layer; None if not run."""
        for r in self.results:
            d = r.get("details") or {}
            if r.get("claim") == "massive.exists" and r.get("model") == name and "profile" in d:
                if d.get("massive_layers"):
                    return int(d["massive_layers"][0]), "first massive layer, per massive.exists"
                prof = d["profile"]
                ratios = [t / m if m else 0.0 for t, m in zip(prof["top1"], prof["median"])]
                return max(range(len(ratios)), key=ratios.__getitem__), "largest top-1/median, per massive.exists"
        return None


def prompt_activations(lm: models.LoadedModel, prompt: str, *, layer: tuple[int, str] | None, bos: bool,
                       n_features: int = 24) -> dict:
    """One pass over ``prompt``; |a| at block ``layer`` (else its largest top-1/median) for the top features."""
    ids = lm.tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]  # (1, T)
    if bos:  # as the corpus samples were fed
        ids = torch.cat([torch.tensor([[bos_id(lm.tokenizer)]]), ids], dim=1)
    mask = torch.ones_like(ids)
    with torch.no_grad(), capture(lm.model, lm.adapter, block_points(lm.adapter, lm.n_layers),
                                  mask_ref={"mask": mask.to(lm.device)}, make_reducers=lambda p: [Keep()]) as red:
        lm.model(input_ids=ids.to(lm.device), attention_mask=mask.to(lm.device))
    full = [collect(red)[f"block.{l}"]["full"][0].abs() for l in range(lm.n_layers)]  # each (T, D)
    if layer is None:
        ratios = [float(a.max() / a.median().clamp(min=1e-12)) for a in full]
        layer = max(range(len(ratios)), key=ratios.__getitem__), "largest top-1/median on the prompt"
    a = full[layer[0]]
    feats = a.amax(dim=0).topk(min(n_features, a.shape[1])).indices.sort().values
    return {"prompt": prompt, "layer": layer[0], "layer_from": layer[1],
            "tokens": [lm.tokenizer.decode([int(i)]) for i in ids[0]], "features": feats.tolist(),
            "values": [[float(f"{v:.4g}") for v in row] for row in a[:, feats].tolist()]}


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
