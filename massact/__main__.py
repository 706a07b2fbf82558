"""Command line outside pytest.

    python -m massact report RESULTS [-o OUT]   re-render report.html from a results.json
    python -m massact diff A B                  differences of B against baseline A; exit 1 on a regression
    python -m massact expect RESULTS [--write [--refresh]]  the [claim.expect] lines of a run's verdicts;
                                                --write records the missing and changed ones in claims/*.toml,
                                                --refresh the unchanged ones' reasons too
    python -m massact points MODEL              every capture point of MODEL with its shape, every statistic
    python -m massact history RUN... [-o OUT]   each claim across runs (oldest first): verdicts, values, history.html

Installed, the console script `massact` takes the same subcommands (`massact history RUN...`).
Only ``points`` imports torch (it loads the model). Exit 1 means a regression and nothing else; a file
that cannot be read or is not a results document is a usage error, exit 4 (as pytest's), with a
message naming it and what is wrong.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from massact import expectations
from massact.errors import MassactError
from massact.report import diff, history, html
from massact.report.results import read_results

USAGE_ERROR = 4  # pytest's exit status for a usage error


def _prog() -> str:
    """How the user called it: the console script, or the module."""
    return "python -m massact" if Path(sys.argv[0]).name == "__main__.py" else Path(sys.argv[0]).name


def _report(args: argparse.Namespace) -> int:
    doc = read_results(args.results)
    out = args.output or Path(args.results).with_name("report.html")
    path = html.write_report(doc, out)
    print(f"{path} ({path.stat().st_size / 1024:.0f} KiB, {len(doc.get('results', []))} results)")
    return 0


def _diff(args: argparse.Namespace) -> int:
    base, new = read_results(args.a), read_results(args.b)
    changes = diff.compare(base, new, rel_tol=args.rel_tol, abs_tol=args.abs_tol)
    bad = [c for c in changes if c.failing]
    for line in diff.provenance_lines(base, new, names=(f"A {args.a}", f"B {args.b}")):
        print(line)
    print()
    for line in diff.table(changes):
        print(line)
    print(f"\n{len(bad)} regression(s), {len(changes) - len(bad)} note(s); {diff.rule(args.rel_tol)}")
    return 1 if bad else 0


def _expect(args: argparse.Namespace) -> int:
    doc = read_results(args.results)
    props = expectations.proposals(doc)
    for line in expectations.render(props, samples=(doc.get("corpus") or {}).get("nsamples")):
        print(line)
    if args.write:
        root = args.root or Path(doc.get("rootdir") or ".")
        changes = expectations.write(props, root=root, refresh=args.refresh)
        print(f"\n{len(changes)} expectation(s) written" + "".join(f"\n  {c}" for c in changes))
    elif not props:
        print("no judged items in this run")
    return 0


def _points(args: argparse.Namespace) -> int:
    from massact import models
    from massact.points import listing

    lm = models.load(args.model, dtype=args.dtype, device=args.device)
    for line in listing(lm):
        print(line)
    return 0


def _history(args: argparse.Namespace) -> int:
    runs = history.load(args.runs, labels=args.label)
    found = history.series(runs)
    for line in history.text_lines(runs, found):
        print(line)
    path = history.write_page(runs, found, args.output)
    print(f"\nhistory page: {path} ({len(found)} claim and model series, {path.stat().st_size / 1024:.0f} KiB)")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=_prog(), description="massact reports outside pytest")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("report", help="re-render report.html from a results.json")
    r.add_argument("results", type=Path, metavar="RESULTS")
    r.add_argument("-o", "--output", type=Path, default=None, help="where to write (default: report.html beside RESULTS)")
    r.set_defaults(fn=_report)
    d = sub.add_parser("diff", help="compare two results.json; exit 1 when a verdict changed or a value moved")
    d.add_argument("a", type=Path, metavar="A", help="the baseline results.json")
    d.add_argument("b", type=Path, metavar="B", help="the results.json to check against it")
    d.add_argument("--rel-tol", type=float, default=diff.REL_TOL,
                   help=f"relative move of a primary value that fails, if also outside A's interval (default: {diff.REL_TOL})")
    d.add_argument("--abs-tol", type=float, default=diff.ABS_TOL, help=f"moves below this never fail (default: {diff.ABS_TOL})")
    d.set_defaults(fn=_diff)
    e = sub.add_parser("expect", help="the [claim.expect] lines of every judged item of a results.json")
    e.add_argument("results", type=Path, metavar="RESULTS")
    e.add_argument("--write", action="store_true",
                   help="record the missing expectations, and the changed verdicts, in the claims files (entries "
                        "whose verdict is unchanged keep their reason)")
    e.add_argument("--refresh", action="store_true",
                   help="with --write: rewrite the entries whose verdict is unchanged too, with this run's measured "
                        "reason (after a change to how verdicts are reached)")
    e.add_argument("--root", type=Path, default=None,
                   help="the directory the claims were run from: the claims files' node ids are relative to it "
                        "(default: the run's rootdir)")
    e.set_defaults(fn=_expect)
    pt = sub.add_parser("points", help="every capture point of a model with its shape, and every statistic")
    pt.add_argument("model", metavar="MODEL", help="a --model spec: built-in name, hub id, directory or .gguf")
    pt.add_argument("--dtype", default="float32")
    pt.add_argument("--device", default="cpu")
    pt.set_defaults(fn=_points)
    h = sub.add_parser("history", help="each claim across a series of runs: verdicts, values, verdict changes")
    h.add_argument("runs", type=Path, nargs="+", metavar="RUN", help="results.json files or run folders, oldest first")
    h.add_argument("--label", action="append", default=None,
                   help="a name for each run, in the order of the runs (default: the model, its version and dtype "
                        "where they tell the runs apart, else when each started)")
    h.add_argument("-o", "--output", type=Path, default=Path("history.html"),
                   help="where to write the page (default: history.html)")
    h.set_defaults(fn=_history)
    args = p.parse_args(argv)
    try:
        return args.fn(args)
    except (MassactError, OSError, ValueError) as e:  # a file missing, unreadable or not a results document;
        print(f"error: {e}", file=sys.stderr)  # an unknown model: a usage error, no traceback
        return USAGE_ERROR


if __name__ == "__main__":
    sys.exit(main())
