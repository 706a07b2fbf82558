"""results.json: every verdict of a run with its provenance. No torch here.

The file is rewritten atomically after every item, so a run cut off (Ctrl-C, a crash in one
model) still leaves every finished item on disk, marked ``"complete": false``.
"""
from __future__ import annotations

import json
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path

SCHEMA = 1


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
    if doc.get("schema") != SCHEMA:
        raise ValueError(f"{path}: results schema {doc.get('schema')!r}, this massact reads {SCHEMA}")
    return doc


def _jsonable(x):
    if hasattr(x, "tolist"):
        return x.tolist()
    if isinstance(x, (set, tuple)):
        return list(x)
    return str(x)
