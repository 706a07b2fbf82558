"""The numbers of one benchmarks/gpu.sh run in one JSON document (no torch here).

    python benchmarks/gpu_summary.py WORK OUT [CPU_RESULTS]

WORK is the folder gpu.sh filled: ratios-<shape>-<dtype>.json from benchmarks/ratios.py, and per claims
session (``claims``: the built-ins on the device; ``whole`` and ``spread``: the 1B model whole on the
device and spread by ``--device-map auto``) a folder of that name holding the run's results.json,
with <name>.rc (pytest's exit status), <name>.seconds, and for each comparison <name>.diff (the output
of ``python -m massact diff``) and <name>.diff.rc; every step's <step>.rc, <step>.seconds and
<step>.log. OUT gets: every step's status and time (with the end of its log where it went wrong), every
ratio, every comparison's verdict changes and the largest relative move of any value (the
built-ins' against CPU_RESULTS, the CPU run's results.json; the spread model's against the whole
one's), and how the spread model's modules were placed.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from massact.report.results import read_results

REL = 1e-4  # the largest relative move of a value that counts as the same on another device


def _key(r: dict) -> tuple[str, str, str]:
    return r.get("claim", "?"), r.get("variant") or "", r.get("model") or "-"


def compare(base: dict, new: dict) -> dict:
    """Item by item (claim, variant, model label): the verdicts that differ, and every number of ``values``
    that moved by more than REL relative to the baseline's (or is missing, or not finite on one side only)."""
    before, after = {_key(r): r for r in base.get("results", [])}, {_key(r): r for r in new.get("results", [])}
    verdicts, moved, worst = [], [], 0.0
    for key in sorted(before.keys() & after.keys()):
        a, b = before[key], after[key]
        name = "/".join(key)
        if a.get("verdict") != b.get("verdict"):
            verdicts.append({"item": name, "before": a.get("verdict"), "after": b.get("verdict")})
        for value, x in (a.get("values") or {}).items():
            y = (b.get("values") or {}).get(value)
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (x, y)):
                if x != y:
                    moved.append({"item": name, "value": value, "before": x, "after": y})
                continue
            if not (math.isfinite(x) and math.isfinite(y)):
                if not (x == y or (math.isnan(x) and math.isnan(y))):
                    moved.append({"item": name, "value": value, "before": x, "after": y})
                continue
            rel = abs(y - x) / max(abs(x), 1e-12) if x != y else 0.0
            worst = max(worst, rel)
            if rel > REL:
                moved.append({"item": name, "value": value, "before": x, "after": y, "relative": rel})
    return {"items": len(before.keys() & after.keys()), "only_before": len(before.keys() - after.keys()),
            "only_after": len(after.keys() - before.keys()), "verdicts_changed": verdicts,
            "values_moved_past_1e-4": moved, "largest_relative_move": worst,
            "same": not verdicts and not moved and before.keys() == after.keys()}


def _number(f: Path) -> float | None:
    return float(f.read_text().strip()) if f.exists() else None


def _session(work: Path, name: str) -> dict:
    """What gpu.sh recorded of one claims session (its exit status: 125 when skipped for time, 124 or 130 when
    stopped at its bound), and the results.json it wrote (None when it wrote none)."""
    rc = _number(work / f"{name}.rc")
    got: dict = {"rc": None if rc is None else int(rc), "seconds": _number(work / f"{name}.seconds")}
    runs = sorted((work / name).glob("*/results.json"))
    got["results"] = str(runs[-1]) if runs else None
    diff = work / f"{name}.diff"
    if diff.exists():
        got["diff_rc"] = int((work / f"{name}.diff.rc").read_text().strip())
        got["diff"] = diff.read_text().splitlines()
    return got


def summary(work: Path, *, baseline: Path | None) -> dict:
    ratios = {f.stem.removeprefix("ratios-"): json.loads(f.read_text()) for f in sorted(work.glob("ratios-*.json"))}
    device = next((r["device"] for r in ratios.values()), "unknown")
    steps = {f.stem: {"rc": int(f.read_text().strip()), "seconds": _number(work / f"{f.stem}.seconds")}
             for f in sorted(work.glob("*.rc")) if not f.stem.endswith(".diff")}
    for name, step in steps.items():  # what a step that went wrong said last (pytest's 1 is a claim's verdict)
        log = work / f"{name}.log"
        if step["rc"] not in (0, 1) and log.exists():
            step["log_tail"] = log.read_text(errors="replace").splitlines()[-20:]
    out: dict = {"device": device, "steps": steps, "ratios": ratios, "claims": _session(work, "claims")}
    claims = out["claims"]
    if baseline is not None and claims["results"]:
        claims["baseline"] = str(baseline)
        claims["against_baseline"] = compare(read_results(baseline), read_results(claims["results"]))
    whole, spread = _session(work, "whole"), _session(work, "spread")
    out["device_map"] = {"whole": whole, "spread": spread}
    if spread["results"]:
        doc = read_results(spread["results"])
        out["device_map"]["placement"] = {spec: m.get("device_map") for spec, m in (doc.get("models") or {}).items()}
        if whole["results"]:
            out["device_map"]["spread_vs_whole"] = compare(read_results(whole["results"]), doc)
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (2, 3):
        print("usage: python benchmarks/gpu_summary.py WORK OUT [CPU_RESULTS]", file=sys.stderr)
        return 4
    work, out = Path(args[0]), Path(args[1])
    doc = summary(work, baseline=Path(args[2]) if len(args) == 3 else None)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"{out}: {doc['device']}, {len(doc['ratios'])} ratio runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
