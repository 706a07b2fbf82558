"""report.html: one self-contained page per run, rendered from a results document. No torch.

Inline CSS and inline SVG only (no scripts, no fonts, no network), so it opens from disk and
stays small. ``python -m massact report RESULTS`` re-renders it from a results.json.
"""
from __future__ import annotations

import math
import os
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from html import escape
from pathlib import Path

from massact.report import figures as fig

VERDICT_COLORS = {"holds": "#1a7f37", "refuted": "#cf222e", "inconclusive": "#bf8700", "non-specific": "#d2691e",
                  "invalid": "#6e7781", "skipped": "#8c959f", "error": "#82071e", "bad-record": "#82071e"}
CSS = """
body{font-family:Helvetica,Arial,sans-serif;margin:24px;color:#1f2328;max-width:1500px}
h1{margin:0 0 4px}h2{border-bottom:1px solid #d0d7de;padding-bottom:4px;margin-top:36px}
table{border-collapse:collapse;font-size:13px;width:100%}
th,td{border:1px solid #d0d7de;padding:4px 6px;vertical-align:top;text-align:left}
th{background:#f6f8fa;position:sticky;top:0}
tr.muted td{color:#8c959f}
.v{display:inline-block;padding:1px 7px;border-radius:10px;color:#fff;font-weight:bold;font-size:12px;white-space:nowrap}
.small{font-size:11px;color:#57606a}.stmt{margin-top:3px}
.num{font-family:Menlo,Consolas,monospace;white-space:nowrap}
.banner{background:#ffebe9;border:1px solid #cf222e;padding:8px 12px;margin:12px 0;font-weight:bold}
.figs{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start}
figure{margin:0;border:1px solid #d0d7de;padding:6px;background:#fff}
figcaption{font-size:12px;color:#57606a;max-width:760px;margin-top:4px}
.absent{color:#8c959f;font-style:italic;font-size:13px;margin:4px 0}
dl{display:grid;grid-template-columns:max-content auto;gap:2px 14px;font-size:13px}dt{font-weight:bold}dd{margin:0}
code{font-size:12px;word-break:break-all}
"""


def fmt(v) -> str:
    return fig.fmt(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else escape(str(v))


def _chip(verdict: str) -> str:
    return f'<span class="v" style="background:{VERDICT_COLORS.get(verdict, "#6e7781")}">{escape(verdict)}</span>'


# ---------------------------------------------------------------- summary table

def _measured(r: dict) -> str:
    prim, values = r.get("primary"), r.get("values") or {}
    out = ""
    if prim and prim in values:
        out = f'<span class="num">{escape(prim)} = {fmt(values[prim])}</span>'
        iv = (r.get("intervals") or {}).get(prim)
        if iv:
            boot = r.get("bootstrap") or {}
            conf = boot.get("confidence", 0.95)
            out += f'<br><span class="num small">{conf:.0%} CI [{fmt(iv[0])}, {fmt(iv[1])}]</span>'
    if r.get("summary"):
        out += f'<div class="small">{escape(r["summary"])}</div>'
    return out or "&mdash;"


def _controls(r: dict) -> str:
    ctrl = r.get("controls") or {}
    if not ctrl:
        return "&mdash;"
    # True: the control also satisfies the claim (bad: the claim is non-specific)
    return "<br>".join(f'{escape(name)}: <b style="color:{"#cf222e" if also else "#1a7f37"}">'
                       f'{"also holds" if also else "fails, as it should"}</b>' for name, also in ctrl.items())


def _verdict_cell(r: dict) -> str:
    v = r.get("verdict", "?")
    out = _chip(v)
    exp = r.get("expected")
    if exp:
        out += f'<div class="small">{"as recorded" if exp == v else "recorded: " + escape(exp)}</div>'
    if r.get("reason") and v != "holds":
        out += f'<div class="small">{escape(r["reason"])}</div>'
    return out


def summary_table(doc: dict) -> str:
    """Every item that ran (skipped ones are listed by skipped_table)."""
    rows = []
    for r in doc.get("results", []):
        if r.get("verdict") == "skipped":
            continue
        claim = escape(str(r.get("claim", "?")))
        version = f' <span class="small">v{escape(str(r["version"]))}</span>' if r.get("version") else ""
        rows.append(
            f'<tr><td><b>{claim}</b>{version}<div class="small">{escape(str(r.get("source") or ""))}</div>'
            f'<div class="stmt">{escape(str(r.get("statement") or ""))}</div></td>'
            f'<td>{escape(str(r.get("variant") or ""))}</td><td>{escape(str(r.get("model") or "document"))}</td>'
            f"<td>{_verdict_cell(r)}</td><td>{_measured(r)}</td>"
            f'<td>{escape(str(r.get("documented") or ""))}</td><td>{escape(str(r.get("threshold") or ""))}</td>'
            f"<td>{_controls(r)}</td></tr>")
    head = "".join(f"<th>{h}</th>" for h in ("Claim (source, statement)", "Variant", "Model", "Verdict",
                                             "Measured (primary, interval)", "Documented", "Threshold", "Controls"))
    cols = "".join(f'<col style="width:{w}%">' for w in (22, 7, 8, 14, 19, 12, 11, 7))
    return f'<table id="summary"><colgroup>{cols}</colgroup><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def skipped_table(doc: dict) -> str:
    """Skipped items, one line each with the reason."""
    rows = [f'<tr class="muted"><td><b>{escape(str(r.get("claim", "?")))}</b></td><td>{escape(str(r.get("variant") or ""))}'
            f'</td><td>{escape(str(r.get("model") or "document"))}</td><td>{_chip("skipped")} '
            f'{escape(str(r.get("reason") or ""))}</td><td>{escape(str(r.get("documented") or ""))}</td></tr>'
            for r in doc.get("results", []) if r.get("verdict") == "skipped"]
    if not rows:
        return '<p class="absent">none</p>'
    head = "".join(f"<th>{h}</th>" for h in ("Claim", "Variant", "Model", "Why skipped", "Documented"))
    cols = "".join(f'<col style="width:{w}%">' for w in (18, 10, 10, 37, 25))
    return f'<table id="skipped"><colgroup>{cols}</colgroup><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


# ---------------------------------------------------------------- figures

def _find(doc: dict, model: str, key: str, prefer: str = "") -> dict | None:
    """The result on ``model`` whose details carry ``key``; the claim ``prefer`` first."""
    hits = [r for r in doc.get("results", []) if r.get("model") == model and key in (r.get("details") or {})]
    hits.sort(key=lambda r: (r.get("claim") != prefer, r.get("variant") != "general"))
    return hits[0] if hits else None


@dataclass(frozen=True)
class Figure:
    family: str
    title: str
    # (doc, model name, model provenance) -> (svg, caption), a list of them, or None when not measured
    draw: Callable[[dict, str, dict], tuple[str, str] | list[tuple[str, str]] | None]


def _profile(doc, model, prov):
    r = _find(doc, model, "profile", "massive.exists")
    if r is None:
        return None
    p = r["details"]["profile"]
    series = {name: p[k] for name, k in (("top-1", "top1"), ("top-2", "top2"), ("top-3", "top3"),
                                         ("median", "median")) if k in p}
    svg = fig.line_plot(series, title=f"{model}: |activation| per layer", y_label="|activation| (log)",
                        log_y=True, highlight=r["details"].get("massive_layers", []))
    return svg, f"{r['claim']} ({r.get('verdict')}): largest three |activations| and the median per block output; " \
                "shaded: massive layers"


def _prompt3d(doc, model, prov):
    pa = prov.get("prompt_activations")
    if not pa or "values" not in pa:
        return None
    cols = [str(f) for f in pa.get("features", [])]
    svg = fig.bars3d(pa["values"], rows=[t.strip() or repr(t) for t in pa.get("tokens", [])], cols=cols,
                     title=f"{model}: |activation| at layer {pa.get('layer')}")
    return svg, (f'"{pa.get("prompt", "")}": block {pa.get("layer")} output ({pa.get("layer_from", "")}), '
                 f"tokens x the {len(cols)} features with the largest |activation|")


def _ablation(doc, model, prov):
    hits = [r for r in doc.get("results", []) if r.get("model") == model
            and {"baseline_top1", "ablated_top1"} <= set(r.get("details") or {})]
    if not hits:
        return None
    series = {"baseline": hits[0]["details"]["baseline_top1"]}
    for r in hits:
        name = r.get("claim", "").split(".")[-1]
        label = "attention off" if "attention" in name else "MLP off" if "mlp" in name else name
        series.setdefault(label, r["details"]["ablated_top1"])
    n = len(series["baseline"])
    svg = fig.grouped_bars([str(i) for i in range(n)], series, title=f"{model}: top-1 |activation| per layer",
                           x_label="layer", y_label="top-1 (log)", log_y=True, width=900)
    return svg, "mean top-1 |activation| per block output; " + "; ".join(f"{r['claim']}: {r.get('verdict')}" for r in hits)


def _checkpoints(doc, model, prov):
    r = _find(doc, model, "checkpoints")
    if r is None:
        return None
    ck = r["details"]["checkpoints"]
    roles = list(ck)
    stats = [s for s in ("max", "median") if any(s in (ck[k] or {}) for k in roles)]
    series = {s: [(ck[k] or {}).get(s) for k in roles] for s in stats}
    svg = fig.grouped_bars(roles, series, title=f"{model}: MLP checkpoints at layer {r['details'].get('layer')}",
                           x_label="checkpoint, input to output", y_label="|activation| (log)", log_y=True)
    return svg, f"{r['claim']} ({r.get('verdict')}): max and median |a| through the MLP, input to output"


def _svd(doc, model, prov):
    r = _find(doc, model, "scatter")
    if r is None:
        return None
    d = r["details"]
    sc = d["scatter"]
    panels = {"projection": (sc["x"], sc["y"])} if "x" in sc else {k: (v["x"], v["y"]) for k, v in sc.items()}
    for name, v in (d.get("control_scatter") or d.get("controls_scatter") or {}).items():
        panels[f"control: {name}"] = (v["x"], v["y"])
    r2 = d.get("r2")
    notes = {k: f"R\u00b2 {fig.fmt(v)}" for k, v in (r2.items() if isinstance(r2, dict) else
                                                      [(next(iter(panels)), r2)] if r2 is not None else [])
             if isinstance(v, (int, float))}
    svg = fig.scatter(panels, title=f"{model}: projection on the direction vs output", x_label="projection",
                      y_label="output", notes=notes)
    return svg, f"{r['claim']} ({r.get('verdict')})" + (f"; R\u00b2 = {fig.fmt(r2)}" if isinstance(r2, (int, float)) else "")


def _first_token(doc, model, prov):
    hits = [r for r in doc.get("results", []) if r.get("model") == model and (r.get("details") or {}).get("scores")]
    preferred = [r for r in hits if r.get("claim") == "heads.first_token_scores"] or hits[:1]
    out, seen = [], set()
    for r in preferred:  # one map per method (query 0 included or not), not per claim reading it
        method = r["details"].get("method") or r.get("variant") or ""
        if method in seen:
            continue
        seen.add(method)
        m = r["details"]["scores"]
        top = max((v for row in m for v in row if isinstance(v, (int, float)) and math.isfinite(v)), default=1.0)
        svg = fig.heatmap(m, title=f"{model}: attention on the first token ({method})".replace(" ()", ""),
                          vmax=1.0 if top <= 1 else top)
        out.append((svg, f"{r['claim']}/{r.get('variant')} ({r.get('verdict')}): mean attention probability on "
                         "token 0 per layer (rows) and head (columns)"))
    return out or None


def _head_types(doc, model, prov):
    r = _find(doc, model, "types")
    if r is None or not isinstance(r["details"]["types"], dict):
        return None
    types = r["details"]["types"]
    svg = fig.grouped_bars(list(types), {"heads": list(types.values())}, title=f"{model}: head types", x_label="type",
                           y_label="heads")
    return svg, f"{r['claim']} ({r.get('verdict')}): heads per type"


FIGURES = [
    Figure("massive", "Layer profile", _profile),
    Figure("massive", "|activation| over tokens x features at the emergence layer", _prompt3d),
    Figure("ablate", "Ablation per layer: baseline, attention off, MLP off", _ablation),
    Figure("mlp", "MLP checkpoint flow", _checkpoints),
    Figure("svd", "SVD scatter: projection against output", _svd),
    Figure("heads", "First-token attention per layer and head", _first_token),
    Figure("heads", "Head-type distribution", _head_types),
]
FAMILY_TITLES = {"massive": "Massive activations", "ablate": "Ablations", "mlp": "Inside the MLP",
                 "svd": "SVD of the down projection", "heads": "Attention heads"}


def _models(doc: dict) -> list[tuple[str, dict]]:
    """(model name, provenance) for every model with results, in the run's order."""
    out = {(m.get("name") or spec): m for spec, m in doc.get("models", {}).items()}
    for r in doc.get("results", []):
        if r.get("model") and r["model"] not in out:
            out[r["model"]] = {}
    return list(out.items())


def figures_section(doc: dict) -> str:
    parts, models = [], _models(doc)
    for family, title in FAMILY_TITLES.items():
        parts.append(f"<h3>{escape(title)}</h3>")
        for f in (f for f in FIGURES if f.family == family):
            drawn, absent = [], []
            for name, prov in models:
                got = f.draw(doc, name, prov)
                if got is None:
                    absent.append(name)
                for svg, caption in [got] if isinstance(got, tuple) else got or []:
                    drawn.append(f"<figure>{svg}<figcaption>{escape(caption)}</figcaption></figure>")
            if drawn:
                parts.append(f'<h4>{escape(f.title)}</h4><div class="figs">{"".join(drawn)}</div>')
                if absent:
                    parts.append(f'<p class="absent">{escape(", ".join(absent))}: not measured in this run</p>')
            else:
                parts.append(f'<p class="absent">{escape(f.title)}: not measured in this run</p>')
    return "".join(parts)


# ---------------------------------------------------------------- provenance and page

def _dl(items: dict) -> str:
    return "<dl>" + "".join(f"<dt>{escape(str(k))}</dt><dd>{fmt(v) if v is not None else '&mdash;'}</dd>"
                            for k, v in items.items()) + "</dl>"


def provenance_section(doc: dict) -> str:
    cols = ("name", "architecture", "dtype", "device", "layers", "hidden_size", "revision", "weights_sha256", "source")
    rows = []
    for spec, m in doc.get("models", {}).items():
        if "error" in m:
            rows.append(f'<tr><td>{escape(spec)}</td><td colspan="{len(cols) - 1}">{escape(m.get("error_type", ""))}: '
                        f'{escape(m["error"])}</td></tr>')
            continue
        rows.append("<tr>" + "".join(f"<td><code>{escape(str(m.get(c) or '') or '-')}</code></td>" for c in cols)
                    + "</tr>")
    models = (f'<table><thead><tr>{"".join(f"<th>{c}</th>" for c in cols)}</tr></thead>'
              f'<tbody>{"".join(rows)}</tbody></table>') if rows else '<p class="absent">no model was loaded</p>'
    run = {"started": doc.get("started"), "complete": doc.get("complete"), "wall time (s)": doc.get("wall_seconds"),
           "forward passes": doc.get("forward_passes"), "samples run": doc.get("samples_run"),
           "seconds in passes": doc.get("pass_seconds"), "bootstrap resamples": doc.get("resamples"),
           "git commit": doc.get("git_commit"), "results schema": doc.get("schema")}
    return (f"<h3>Models</h3>{models}<h3>Run</h3>{_dl(run)}<h3>Corpus</h3>{_dl(doc.get('corpus') or {})}"
            f"<h3>Versions</h3>{_dl(doc.get('versions') or {})}")


def render(doc: dict) -> str:
    """The whole page for one results document."""
    results = doc.get("results", [])
    counts = Counter(r.get("verdict", "?") for r in results)
    chips = " ".join(f"{_chip(v)} {n}" for v, n in sorted(counts.items(), key=lambda kv: -kv[1]))
    models = ", ".join(name for name, _ in _models(doc)) or "none"
    banner = "" if doc.get("complete", False) else (
        f'<div class="banner">This run did not finish (interrupted or crashed): the {len(results)} '
        "result(s) below are the items that finished.</div>")
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>massact report {escape(str(doc.get('started', '')))}</title><style>{CSS}</style></head><body>"
        f"<h1>massact report</h1><div class=\"small\">run started {escape(str(doc.get('started', '?')))}; "
        f"models: {escape(models)}; {len(results)} results</div>{banner}<p>{chips}</p>"
        f'<h2 id="verdicts">Verdicts</h2>{summary_table(doc)}'
        f'<p class="small">{counts.get("skipped", 0)} skipped item(s): listed with their reasons after the figures.</p>'
        f'<h2 id="figures">Figures</h2>{figures_section(doc)}'
        f'<h2 id="skipped-items">Skipped</h2>{skipped_table(doc)}'
        f'<h2 id="provenance">Provenance</h2>{provenance_section(doc)}'
        "</body></html>\n")


def write_report(doc: dict, path: Path) -> Path:
    """Render ``doc`` to ``path`` atomically (a reader never sees half a page)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".report-", suffix=".html")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(render(doc))
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return path
