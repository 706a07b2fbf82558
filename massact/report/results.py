"""results.json: every verdict of a run with its provenance. No torch here.

The file is rewritten atomically after every item, so a run cut off (Ctrl-C, SIGTERM, -x, a
crash) still leaves every finished item on disk, marked ``"complete": false``, and lists the
collected items it did not judge under ``not_run``.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

SCHEMA = 4
# schema 2 added fields to the entries; 3: an entry's spec is resolved (absolute path), entries
# carry their sample count, the run lists the items it did not judge (not_run) and those -k, -m
# or --deselect left out (deselected); 4: the run lists its passes (what each ran, its seconds),
# which benchmarks/replay.py replays without the harness. Older baselines still compare.
READABLE = (1, 2, 3, 4)


@dataclass
class Entry:
    """One item's result: what results.json lists, the report draws and a baseline compares.

    ``verdict`` is one of holds, refuted, inconclusive, non-specific, invalid, or what became of
    an item that gave none: skipped, error, bad-record.
    """

    claim: str
    variant: str = ""
    model: str | None = None  # the model's label; None for a check of a document's own numbers
    spec: str | None = None  # the model's identity: built-in name, hub id or absolute path
    verdict: str = "?"
    summary: str = ""  # the measured value(s) in one line
    reason: str = ""  # why the verdict is not holds, in words
    version: int | None = None
    source: str = ""
    statement: str = ""
    threshold: str = ""
    documented: str = ""
    documented_on: str | None = None  # documented-value form: the model the numbers are for
    expected: str | None = None  # the verdict the claim record expects on this model
    expected_reason: str = ""
    primary: str | None = None  # the value the threshold applies to
    unit: str = ""  # how values are shown: "%" (fractions x 100), "x" (factors) or "" (plain)
    bound: dict | None = None  # the threshold as a number: {"op": "<", "value": 0.02, "abs": true}
    values: dict = field(default_factory=dict)
    intervals: dict = field(default_factory=dict)  # value name -> [low, high]
    samples: int | None = None  # samples the item read: the record's own count, or --nsamples
    bootstrap: dict = field(default_factory=dict)  # samples, resamples, share holding, confidence
    controls: dict = field(default_factory=dict)  # name -> "ruled out", "also holds" or "not ruled out"
    selections: dict = field(default_factory=dict)  # made once from all samples: intervals are conditional on them
    params: dict = field(default_factory=dict)
    details: dict = field(default_factory=dict)
    figures: list = field(default_factory=list)  # massact.figures records as dicts
    artifacts: dict = field(default_factory=dict)  # file name -> JSON content; in results.json: -> its path
    nodeid: str = ""
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Entry:
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in d.items() if k in known})


def new_run_dir(report_dir: Path) -> Path:
    """``<report_dir>/<UTC timestamp>``, with a numeric suffix if that exists already."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    path = report_dir / stamp
    n = 2
    while path.exists():
        path, n = report_dir / f"{stamp}-{n}", n + 1
    path.mkdir(parents=True)
    return path


def atomic_write(path: Path, text: str) -> Path:
    """Write ``text`` so that a reader never sees half a file; readable by all, like any report."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=path.suffix)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def write_results(path: Path, doc: dict) -> None:
    atomic_write(path, json.dumps(doc, indent=1, default=_jsonable))


def read_results(path: Path) -> dict:
    doc = json.loads(Path(path).read_text())
    if doc.get("schema") not in READABLE:
        raise ValueError(f"{path}: results schema {doc.get('schema')!r}, this massact reads {READABLE}")
    return doc


def _jsonable(x):
    if hasattr(x, "tolist"):
        return x.tolist()
    if isinstance(x, (set, tuple)):
        return list(x)
    return str(x)


def item_of(nodeid: str, specs: dict[str, str]) -> dict:
    """What a claim item's node id (``claims/f.toml::id/variant[label]``) names, its label looked up in
    ``specs`` (label -> spec): an entry's keys, for an item that has no entry."""
    name = nodeid.split("::", 1)[-1]
    label = next((lab for lab in specs if name.endswith(f"[{lab}]")), None)
    if label is not None:
        name = name[:-len(label) - 2]
    claim, _, variant = name.partition("/")
    return {"nodeid": nodeid, "claim": claim, "variant": variant, "model": label, "spec": specs.get(label)}


class Run:
    """A run as the controller sees it: the entries the items' reports carry, and provenance.

    Under pytest-xdist the workers judge and the controller assembles; serially one process
    does both. ``write`` rewrites results.json atomically, so a run cut off keeps what finished.
    """

    def __init__(self, *, report_dir: Path | None, provenance: dict, labels: dict[str, str] | None = None):
        self.report_dir = report_dir  # None: write nothing
        self.run_dir: Path | None = None  # made at the first write, so a run without claims writes nothing
        self.provenance = provenance  # started, command, git commit, versions, resamples: computed once
        self.entries: dict[str, dict] = {}  # node id -> entry, in the order items finished
        # spec -> its label, then what the process that loaded it knew
        self.models: dict[str, dict] = {spec: {"label": label} for spec, label in (labels or {}).items()}
        self.corpus: dict = {}
        self.engines: dict[str, dict] = {}  # worker -> its pass counters
        self.expected: set[str] | None = None  # node ids collected: complete means every one was judged
        self.deselected: set[str] = set()  # node ids that -k, -m or --deselect left out

    def add(self, entry: dict, context: dict) -> None:
        """One item's entry, with what its process knew: models loaded, corpus, pass counters.
        Its artifacts are written to <run>/<model>/<variant>/ and the entry keeps their paths."""
        self.entries[entry["nodeid"]] = entry  # kept first: an OSError below loses no verdict
        for spec, info in context.get("models", {}).items():
            if info:
                self.models[spec] = {**self.models.get(spec, {}), **info}
        self.corpus = context.get("corpus") or self.corpus
        if "engine" in context:
            self.engines[context.get("worker", "main")] = context["engine"]
        arts = entry.get("artifacts") or {}
        if arts and self.report_dir is not None:
            where = self._dir() / (entry.get("model") or "document") / (entry.get("variant") or "general")
            for name, content in arts.items():
                write_results(where / name, content)
            entry["artifacts"] = {name: str((where / name).relative_to(self.run_dir)) for name in arts}

    def _dir(self) -> Path:
        if self.run_dir is None:
            self.run_dir = new_run_dir(self.report_dir)
        return self.run_dir

    @property
    def results(self) -> list[dict]:
        return list(self.entries.values())

    def missing(self) -> list[str]:
        """Collected items with no entry."""
        return sorted((self.expected or set()) - set(self.entries))

    def document(self, *, complete: bool, wall_seconds: float) -> dict:
        engines = self.engines.values()
        specs = {m["label"]: spec for spec, m in self.models.items() if m.get("label")}
        return {"schema": SCHEMA, "complete": complete, **self.provenance, "wall_seconds": round(wall_seconds, 1),
                "forward_passes": sum(e["passes"] for e in engines), "samples_run": sum(e["samples"] for e in engines),
                "pass_seconds": round(sum(e["seconds"] for e in engines), 1),
                "passes": [p for e in engines for p in e.get("log", [])], "corpus": self.corpus,
                "models": self.models, "results": self.results,
                "not_run": [item_of(n, specs) for n in self.missing()],
                "deselected": [item_of(n, specs) for n in sorted(self.deselected)]}

    def write(self, *, complete: bool, wall_seconds: float) -> dict | None:
        """Write results.json; returns the document written, or None when the run has no claim items
        (nothing collected and nothing judged). OSError when it cannot be written."""
        if self.report_dir is None or not (self.entries or self.expected):
            return None
        doc = self.document(complete=complete, wall_seconds=wall_seconds)
        write_results(self._dir() / "results.json", doc)
        return doc
