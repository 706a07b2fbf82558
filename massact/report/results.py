"""results.json: every verdict of a run with its provenance. No torch here.

The file is rewritten atomically after every item, so a run cut off (Ctrl-C, a crash in one
model) still leaves every finished item on disk, marked ``"complete": false``.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

SCHEMA = 2
READABLE = (1, 2)  # schema 2 added fields to the entries; a schema-1 baseline still compares


@dataclass
class Entry:
    """One item's result: what results.json lists, the report draws and a baseline compares.

    ``verdict`` is one of holds, refuted, inconclusive, non-specific, invalid, or what became of
    an item that gave none: skipped, error, bad-record.
    """

    claim: str
    variant: str = ""
    model: str | None = None  # the model's label; None for a check of a document's own numbers
    spec: str | None = None  # the --model spec it was loaded from
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
    bootstrap: dict = field(default_factory=dict)  # samples, resamples, share holding, confidence
    controls: dict = field(default_factory=dict)  # name -> True when the control also satisfies the claim
    selections: dict = field(default_factory=dict)  # made once from all samples: intervals are conditional on them
    params: dict = field(default_factory=dict)
    details: dict = field(default_factory=dict)
    figures: list = field(default_factory=list)  # massact.figures records as dicts
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


def write_results(path: Path, doc: dict) -> None:
    """Atomic write: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".results-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f, indent=1, default=_jsonable)
    os.replace(tmp, path)


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
