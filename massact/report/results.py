"""results.json: every verdict of a run with its provenance. No torch here.

The file is rewritten atomically after every item, so a run cut off (Ctrl-C, SIGTERM, -x, a
crash) still leaves every finished item on disk, marked ``"complete": false``, and lists the
collected items it did not judge under ``not_run``. Everything a run writes lies under its run
folder (``under``); a results document read back (a baseline, ``python -m massact diff``) is
checked for its shape first (``read_results``).
"""
from __future__ import annotations

import errno
import itertools
import json
import os
import stat
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from massact.errors import ResultsFileError

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
    """``<report_dir>/<UTC timestamp>``, with a numeric suffix if that exists already. Each candidate is
    made with one mkdir, which fails if another process made it first: concurrent runs never share one."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    report_dir.mkdir(parents=True, exist_ok=True)
    for n in itertools.count(1):
        path = report_dir / (stamp if n == 1 else f"{stamp}-{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise AssertionError("unreachable")


def under(root: Path, *parts: str) -> Path:
    """``root / parts``, refused with an OSError unless it lies inside ``root`` once links are followed:
    a label, variant or file name never takes a write out of the run folder."""
    path = root.joinpath(*parts)
    if any(Path(p).is_absolute() or ".." in Path(p).parts for p in parts) \
            or not path.resolve().is_relative_to(root.resolve()):
        raise OSError(errno.EPERM, f"not written: it lies outside the run folder {root}", str(path))
    return path


def atomic_write(path: Path, text: str) -> Path:
    """Write ``text`` so that a reader never sees half a file: to a temporary file beside the target,
    renamed over it. A link is followed (its target is written, the link stays); an existing file keeps
    its mode, and one without write permission is refused (PermissionError); a new one is readable by
    all, like any report."""
    path = Path(path)
    target = Path(os.path.realpath(path))
    mode = 0o644
    if target.exists():
        st = target.stat()
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        if not st.st_mode & 0o222 or not os.access(target, os.W_OK):  # root may write anything: the mode says
            raise PermissionError(errno.EACCES, "read-only: make it writable (chmod u+w) to replace it", str(path))
        mode = stat.S_IMODE(st.st_mode)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.stem}-", suffix=target.suffix)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def write_results(path: Path, doc: dict) -> None:
    atomic_write(path, json.dumps(doc, indent=1, default=_jsonable))


MAX_READ = 256 * 2**20  # bytes: far above any results.json a run writes


def read_results(path: Path) -> dict:
    """A results document from ``path``; ResultsFileError, naming the file and what is wrong, when it
    cannot be read or is not one (its shape and field types are checked: ``problem``)."""
    path = Path(path)
    try:
        if not path.is_file():
            raise ResultsFileError(f"{path}: {'does not exist' if not path.exists() else 'is not a regular file'}; "
                                   "pass the results.json of a massact run")
        if path.stat().st_size > MAX_READ:
            raise ResultsFileError(f"{path}: {path.stat().st_size / 2**20:.0f} MiB, more than any results.json "
                                   f"holds ({MAX_READ / 2**20:.0f} MiB)")
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ResultsFileError(f"{path}: cannot read it ({e.strerror or e})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ResultsFileError(f"{path}: not JSON ({e}); pass the results.json of a massact run") from None
    why = problem(doc)
    if why:
        raise ResultsFileError(f"{path}: not a massact results document: {why}")
    return doc


def _kind(v) -> str:
    return ("null" if v is None else "true/false" if isinstance(v, bool) else "a number" if isinstance(v, (int, float))
            else "a string" if isinstance(v, str) else "a list" if isinstance(v, list) else "a table")


_S, _T, _L = (str,), (dict,), (list,)
# a results document's fields and its entries': the types each may have where present (None: null too)
DOC_TYPES = {"complete": (bool,), "models": _T, "corpus": _T, "passes": _L, "not_run": _L, "deselected": _L,
             "started": (str, type(None)), "command": (str, type(None))}
_SN, _IN = (str, type(None)), (int, type(None))
ENTRY_TYPES = {"claim": _S, "variant": _S, "model": _SN, "spec": _SN, "verdict": _S, "summary": _S, "reason": _S,
               "version": _IN, "threshold": _S, "primary": _SN, "unit": _S, "bound": (dict, type(None)), "values": _T,
               "intervals": _T, "samples": _IN, "bootstrap": _T, "controls": _T, "selections": _T, "params": _T,
               "details": _T, "figures": _L, "artifacts": _T, "nodeid": _S, "expected": _SN}
ITEM_TYPES = {"claim": _S, "variant": _S, "model": _SN, "spec": _SN, "nodeid": _S}


def problem(doc) -> str | None:
    """What makes ``doc`` something other than a results document (None: nothing): its shape, its
    schema, and the type of every field the comparison and the report read."""
    if not isinstance(doc, dict):
        return f"the document is {_kind(doc)}, not a table (a JSON object)"
    if doc.get("schema") not in READABLE or isinstance(doc.get("schema"), bool):
        return f"schema {doc.get('schema')!r}; this massact reads schemas {', '.join(map(str, READABLE))}"
    if not isinstance(doc.get("results"), list):
        return f"'results' is {_kind(doc.get('results'))}, not a list" if "results" in doc else "it has no 'results'"
    why = _fields(doc, DOC_TYPES, "")
    if why:
        return why
    if any(not isinstance(m, dict) for m in doc.get("models", {}).values()):
        return "'models' must map each model to a table"
    for name, types in (("results", ENTRY_TYPES), ("not_run", ITEM_TYPES), ("deselected", ITEM_TYPES)):
        for i, r in enumerate(doc.get(name) or []):
            if not isinstance(r, dict):
                return f"{name}[{i}] is {_kind(r)}, not a table"
            if not isinstance(r.get("claim"), str):
                return f"{name}[{i}] names no claim ('claim' is {_kind(r.get('claim'))}, not a string)"
            why = _fields(r, types, f"{name}[{i}].")
            if why:
                return why
            if name == "results" and not isinstance(r.get("verdict"), str):
                return f"{name}[{i}] has no verdict ('verdict' is {_kind(r.get('verdict'))}, not a string)"
            bad = [k for k, iv in (r.get("intervals") or {}).items() if not (
                isinstance(iv, list) and len(iv) == 2 and all(_number(v) for v in iv))]
            if bad:
                return f"{name}[{i}].intervals.{bad[0]} must be [low, high], not {r['intervals'][bad[0]]!r}"
    return None


def _fields(d: dict, types: dict, where: str) -> str | None:
    for k, want in types.items():
        v = d.get(k)
        if k in d and (not isinstance(v, want) or (isinstance(v, bool) and bool not in want)):
            names = " or ".join(dict.fromkeys(_kind(t()) if t is not type(None) else "null" for t in want))
            return f"{where}{k} is {_kind(v)}, not {names}"
    return None


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


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
            where = [entry.get("model") or "document", entry.get("variant") or "general"]
            for name, content in arts.items():
                write_results(under(self._dir(), *where, name), content)
            entry["artifacts"] = {name: "/".join([*where, name]) for name in arts}

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
        write_results(under(self._dir(), "results.json"), doc)
        return doc
