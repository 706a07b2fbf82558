"""benchmarks/gpu.sh and the Python it runs, on the CPU: the device run is short and rare, so what it runs
must keep working between runs. The script's own steps run whole with ``benchmarks/gpu.sh --dry-run``
(minutes on a small CPU); here: its arguments, benchmarks/ratios.py on a tiny shape in both dtypes, the
model folder the --device-map session loads, and the summary's comparisons."""
from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from massact.models import load
from massact.report.results import write_results
from report_doc import results_doc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_summary  # noqa: E402
import ratios  # noqa: E402

TINY = ["--shape", "tiny", "--tokens", "16", "32", "--long", "64", "--rounds", "1", "--no-memory"]


def test_script_parses_and_refuses_without_a_gpu(tmp_path):
    assert subprocess.run(["bash", "-n", ROOT / "benchmarks/gpu.sh"]).returncode == 0
    shown = subprocess.run([ROOT / "benchmarks/gpu.sh", "--help"], capture_output=True, text=True)
    assert shown.returncode == 0 and "--dry-run" in shown.stdout and "CPU_RESULTS" in shown.stdout
    missing = subprocess.run([ROOT / "benchmarks/gpu.sh", str(tmp_path / "none.json")], capture_output=True, text=True)
    assert missing.returncode == 4 and "is not a file" in missing.stderr
    bad = subprocess.run([ROOT / "benchmarks/gpu.sh", "--fast"], capture_output=True, text=True)
    assert bad.returncode == 4 and "unknown option --fast" in bad.stderr


def test_ratios_on_a_tiny_shape(tmp_path, capsys):
    """In bfloat16, the dtype the script adds to float32 (the saved model below is float32)."""
    dtype = "bfloat16"
    out = tmp_path / "r.json"
    assert ratios.main([*TINY, "--dtype", dtype, "--out", str(out)]) == 0
    got = json.loads(out.read_text())
    assert got["device"] == "cpu" and got["dtype"] == dtype and got["model"] == "tiny-shaped (random weights)"
    r = got["ratios"]
    assert set(r) == {"capture_16", "capture_32", "head_statistics_64", "decode_tokens_per_second",
                      "decode_ratio_to_full"}
    assert all(math.isfinite(r[k]) and r[k] > 0 for k in ("capture_16", "capture_32", "head_statistics_64",
                                                           "decode_ratio_to_full"))


def test_saved_shape_is_a_model_folder(tmp_path, capsys):
    assert ratios.main(["--shape", "tiny", "--save", str(tmp_path / "m")]) == 0
    lm = load(str(tmp_path / "m"))
    built = ratios.shaped("tiny", "cpu")
    assert lm.adapter.name == built.adapter.name and lm.n_layers == 2 and lm.tokenizer is not None
    assert lm.tokenizer("massive activations")["input_ids"][0] < lm.config.vocab_size
    assert all((a == b).all() for a, b in zip(lm.model.state_dict().values(), built.model.state_dict().values()))


def _work(tmp_path: Path, base: dict, new: dict) -> Path:
    work = tmp_path / "work"
    for name, doc in (("claims", new), ("whole", base), ("spread", new)):
        (work / name / "20260101-000000").mkdir(parents=True)
        write_results(work / name / "20260101-000000" / "results.json", doc)
        (work / f"{name}.rc").write_text("1\n")
        (work / f"{name}.seconds").write_text("12\n")
    (work / "ratios-tiny-float32.json").write_text(json.dumps({"device": "cpu", "ratios": {"capture_16": 1.1}}))
    (work / "ratios-tiny-float32.rc").write_text("0\n")
    (work / "save.rc").write_text("124\n")  # stopped at its bound: the end of its log comes along
    (work / "save.log").write_text("".join(f"line {i}\n" for i in range(30)))
    (work / "spread.diff").write_text("no differences\n")
    (work / "spread.diff.rc").write_text("0\n")
    return work


def test_summary_finds_changed_verdicts_and_moved_values(tmp_path):
    base = results_doc()
    new = copy.deepcopy(base)
    judged = [r for r in new["results"] if isinstance(r.get("values"), dict) and r["values"]]
    first, second = judged[0], judged[1]
    first["verdict"] = "refuted" if first["verdict"] != "refuted" else "holds"
    name, value = next((k, v) for k, v in second["values"].items() if isinstance(v, float) and v)
    second["values"][name] = value * (1 + 2e-4)
    (tmp_path / "base.json").write_text(json.dumps(base))
    work = _work(tmp_path, base, new)
    assert gpu_summary.main([str(work), str(tmp_path / "out.json"), str(tmp_path / "base.json")]) == 0
    doc = json.loads((tmp_path / "out.json").read_text())
    claims = doc["claims"]["against_baseline"]
    assert not claims["same"] and [v["item"].split("/")[0] for v in claims["verdicts_changed"]] == [first["claim"]]
    assert [(m["value"], m["after"]) for m in claims["values_moved_past_1e-4"]] == [(name, value * (1 + 2e-4))]
    assert claims["largest_relative_move"] == pytest.approx(2e-4)
    assert doc["device_map"]["spread_vs_whole"] == claims  # spread is the changed document against whole
    assert doc["device"] == "cpu" and doc["steps"]["claims"] == {"rc": 1, "seconds": 12.0}
    assert doc["steps"]["save"] == {"rc": 124, "seconds": None, "log_tail": [f"line {i}" for i in range(10, 30)]}
    assert doc["claims"]["rc"] == 1 and doc["device_map"]["spread"]["diff"] == ["no differences"]


def test_summary_of_the_same_numbers_is_the_same(tmp_path):
    doc = results_doc()
    work = _work(tmp_path, doc, doc)
    got = gpu_summary.summary(work, baseline=work / "whole" / "20260101-000000" / "results.json")
    assert got["claims"]["against_baseline"]["same"] and got["claims"]["against_baseline"]["largest_relative_move"] == 0
