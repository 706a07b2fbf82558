"""The plugin end to end, in a subprocess per run (pytester): tiny models saved to disk stand
in for real checkpoints of each architecture, and bad input gets a message, not a traceback."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from builders import SUPPORTED_ARCHS, planted_gpt2, save_tiny, tiny_model
from massact.claims import Claim, load_records

CLAIMS = Path(__file__).resolve().parent.parent / "claims"
TINY = ["--nsamples", "2", "--seqlen", "32", "-p", "no:cacheprovider"]
# Two samples are fewer independent units than an interval needs (massact.verdict.MIN_UNITS): every verdict
# that rests on the samples is inconclusive, an xfail. A test about a decided verdict adds DECIDED (after TINY,
# so its count wins): random weights then refute massive.exists, a failure where no expectation is recorded.
DECIDED = ["--nsamples", "12"]


@pytest.fixture
def tiny_dir(tmp_path_factory):
    """directory of a saved tiny model, per architecture (built once per test session)."""
    cache: dict[str, Path] = {}

    def get(arch: str) -> Path:
        if arch not in cache:
            cache[arch] = tmp_path_factory.mktemp(f"tiny-{arch}")
            save_tiny(tiny_model(arch), cache[arch])
        return cache[arch]
    return get


@pytest.fixture
def claims_dir(pytester):
    """The real registry, copied into the pytester directory."""
    dest = pytester.path / "claims"
    shutil.copytree(CLAIMS, dest, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def results(pytester) -> dict:
    files = sorted((pytester.path / "reports").glob("*/results.json"))
    assert files, "no results.json written"
    return json.loads(files[-1].read_text())


def run(pytester, *args, decided: bool = False):
    res = pytester.runpytest_subprocess(*args, *TINY, *(DECIDED if decided else ()))
    assert "Traceback" not in res.stdout.str() + res.stderr.str()
    return res


def outcome(entry: dict) -> str:
    """The pytest outcome an entry of results.json must have had."""
    if entry["verdict"] == "skipped":
        return "skipped"
    want = entry.get("expected") or "holds"
    if entry["verdict"] == want:
        return "passed" if want == "holds" else "xfailed"
    record = next(r for path in CLAIMS.glob("*.toml") for r in load_records(path)
                  if isinstance(r, Claim) and (r.id, r.variant) == (entry["claim"], entry["variant"]))
    fewer = entry.get("samples") is not None and entry["samples"] < record.nsamples
    return "xfailed" if entry["verdict"] == "inconclusive" and fewer else "failed"


@pytest.mark.parametrize("arch", SUPPORTED_ARCHS)
def test_claims_run_on_a_saved_model_of_each_architecture(pytester, claims_dir, tiny_dir, arch):
    res = run(pytester, "claims", "--model", str(tiny_dir(arch)), "--seed-check", "4")
    doc = results(pytester)
    assert doc["complete"] is True
    by_claim = {(r["claim"], r.get("variant")): r for r in doc["results"]}
    # two samples decide nothing (tests/test_planted.py judges it on 12: refuted on every architecture); the
    # point value is the refutation's all the same: random weights come nowhere near a massive activation
    exists = by_claim[("massive.exists", "general")]
    assert exists["verdict"] == "inconclusive" and "too few independent samples: 2" in exists["reason"]
    assert exists["values"]["margin"] < 1
    assert by_claim[("ablate.attention_all", "general")]["verdict"] == "invalid"
    assert by_claim[("massive.exists", "gpt2")]["verdict"] == "skipped"
    assert doc["models"][str(tiny_dir(arch))]["architecture"] == arch
    assert doc["corpus"]["nsamples"] == 2 and doc["corpus"]["sha256"]
    # each item's outcome follows from its verdict and the expectation it was judged against (none
    # is recorded for a tiny model, so a claim that does not hold fails; the document's own
    # table keeps its recorded verdict)
    want = {"passed": 0, "failed": 0, "skipped": 0, "xfailed": 0}
    for r in doc["results"]:
        want[outcome(r)] += 1
    assert want["failed"] and want["skipped"] and want["xfailed"]
    # and claims/test_bootstrap_seeds.py (--seed-check 4), which judges every resampled item again under
    # other bootstrap seeds (on two samples, those resampled over weight rows): their verdicts do not move
    want["passed"] += 1
    res.assert_outcomes(**want)
    assert "massact verdicts" in res.stdout.str()


def test_unknown_model_is_a_usage_error_with_a_suggestion(pytester, claims_dir):
    res = run(pytester, "claims", "--model", "smollm2-13m")
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    res.stderr.fnmatch_lines(["*unknown model 'smollm2-13m'. Did you mean 'smollm2-135m'?*"])


def test_missing_path_is_a_usage_error(pytester, claims_dir):
    res = run(pytester, "claims", "--model", "./no-such-checkpoint")
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    res.stderr.fnmatch_lines(["*model path './no-such-checkpoint' does not exist*"])


def test_hub_model_without_weights_skips_with_how_to_get_them(pytester, claims_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    res = run(pytester, "claims", "-k", "massive.exists/general", "--model", "gpt2", "-rs")
    res.assert_outcomes(skipped=1)
    res.stdout.fnmatch_lines(["*gpt2: weights not in the local cache*huggingface-cli download gpt2*"])


def test_a_run_where_every_item_skipped_fails_unless_allowed(pytester, claims_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    args = ("claims", "-k", "massive.exists", "--model", "EleutherAI/pythia-410m")
    res = run(pytester, *args)
    assert res.ret == pytest.ExitCode.NO_TESTS_COLLECTED
    res.stdout.fnmatch_lines(["every item skipped: no claim was checked, so this run fails (exit 5); "
                              "--allow-all-skipped accepts it"])
    assert run(pytester, *args, "--allow-all-skipped").ret == pytest.ExitCode.OK


def test_a_mistyped_path_is_a_usage_error_not_a_hub_id(pytester, claims_dir):
    (pytester.path / "models").mkdir()
    res = run(pytester, "claims", "--model", "models/nothere")
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    res.stderr.fnmatch_lines(["*model path 'models/nothere' does not exist (models exists, but holds no 'nothere')*"])


@pytest.mark.parametrize("option, message", [
    (["--device", "bogus"], "--device 'bogus' is not a torch device"),
    (["--device", "cuda"], "--device 'cuda': this machine has no cuda device"),
    (["--batch-size", "0"], "--batch-size must be at least 1, not 0"),
    (["--resamples", "-5"], "--resamples must be 0 (no bootstrap interval) or more, not -5"),
    (["--corpus", "empty"], "corpus empty is empty (no text in 0 .txt files)"),
    (["--corpus", "nothere"], "corpus nothere does not exist"),
    (["--corpus", "latin1.txt"], "corpus file latin1.txt is not UTF-8 text (byte 0xe9 at offset 3)"),
    (["--report-dir", "afile/reports"], "--report-dir */afile/reports: */afile is not a directory*"),
    (["--max-memory", "cpu=1GiB"], "--max-memory needs --device-map auto"),
    (["--device-map", "auto", "--max-memory", "cpu:1GiB"], "--max-memory 'cpu:1GiB' is not DEVICE=SIZE"),
], ids=["device", "device-absent", "batch-size", "resamples", "corpus-empty", "corpus-missing", "corpus-encoding",
        "report-dir", "max-memory-alone", "max-memory-form"])
def test_what_can_be_checked_before_loading_is_a_usage_error(pytester, claims_dir, tiny_dir, option, message):
    import torch

    if option[-1] == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    (pytester.path / "empty").mkdir()
    (pytester.path / "latin1.txt").write_bytes("café au lait".encode("latin-1"))
    (pytester.path / "afile").write_text("a file, not a directory")
    res = run(pytester, "claims", "--model", str(tiny_dir("gpt2")), *option)
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    res.stderr.fnmatch_lines([f"ERROR: {message}*"])
    assert not (pytester.path / "reports").exists()


def test_models_are_told_apart_by_identity_not_by_name(pytester, claims_dir, tiny_dir):
    """Two directories named "model" stay two models; one named after a known model is not it."""
    for parent, arch in (("a", "gpt2"), ("b", "llama"), ("c", "bert")):
        shutil.copytree(tiny_dir(arch), pytester.path / parent / ("gpt2" if parent == "c" else "model"))
    shutil.copytree(tiny_dir("bert"), pytester.path / "d" / "minilm-l6")
    res = run(pytester, "claims", "-k", "massive.exists", "--model", "a/model", "--model", "b/model",
              "--model", "c/gpt2", "--model", "d/minilm-l6", decided=True)
    doc = results(pytester)
    labels = {m["label"]: spec for spec, m in doc["models"].items()}
    assert labels == {"a/model": str(pytester.path / "a/model"), "b/model": str(pytester.path / "b/model"),
                      "c/gpt2": str(pytester.path / "c/gpt2"), "d/minilm-l6": str(pytester.path / "d/minilm-l6")}
    general = {r["model"]: r for r in doc["results"] if r["variant"] == "general"}
    assert {r["spec"] for r in general.values()} == set(labels.values())
    assert general["a/model"]["expected"] is None and general["d/minilm-l6"]["expected"] is None  # not minilm's
    documented = [r for r in doc["results"] if r["variant"] == "gpt2"]
    assert {r["verdict"] for r in documented} == {"skipped"}  # c/gpt2 is not gpt2: its architecture says so
    assert "this item's model is c/gpt2" in next(r for r in documented if r["model"] == "c/gpt2")["reason"]
    res.assert_outcomes(failed=4, skipped=4)  # refuted on random weights, with no expectation recorded


def test_malformed_records_fail_alone_naming_file_record_and_field(pytester, tiny_dir):
    (pytester.path / "claims").mkdir()
    first, second = (CLAIMS / "massive.toml").read_text().split("[[claim]]")[1:3]
    bad_param = first.replace("params = {}", 'params = { min_abs = "100" }')
    bad_threshold = second.replace('threshold = "each ratio', 'threshold = 25 # "each ratio')
    (pytester.path / "claims" / "massive.toml").write_text(
        "\n".join(f"[[claim]]{r}" for r in (bad_param, bad_threshold, first, first)))
    (pytester.path / "claims" / "again.toml").write_text(f"[[claim]]{first}")
    res = run(pytester, "claims", "--model", str(tiny_dir("gpt2")), "-k", "not layer_profile", decided=True)
    res.stdout.fnmatch_lines_random([
        "*malformed claim record: massive.toml record 0 (massive.exists/general): "
        "field 'params.min_abs' must be a number, not '100'",
        "*malformed claim record: massive.toml record 1 (massive.exists/gpt2): field 'threshold' must be a str, not 25",
        "*malformed claim record: massive.toml record 3 (massive.exists/general): fields 'id' and 'variant': "
        "massive.exists/general is defined twice in this file",
        "*malformed claim record: massive.toml (massive.exists/general): fields 'id' and 'variant': "
        "massive.exists/general is also defined in */claims/again.toml; rename one of them"])
    doc = results(pytester)  # four bad records, four entries; and again.toml's record, judged
    assert sorted(r["verdict"] for r in doc["results"]) == ["bad-record"] * 4 + ["refuted"]
    res.assert_outcomes(failed=5)


def test_fewer_samples_than_the_record_s_are_not_a_changed_verdict(pytester, claims_dir):
    """minilm-l6's recorded heads.first_token_scores refuted, on 3 of the record's 30 samples, is inconclusive:
    an xfail that says so. With the record's own count set to 3, the same verdict is a change, and fails."""
    args = ("claims", "-k", "first_token_scores and correct_method", "--model", "minilm-l6", "--seqlen", "128")
    res = pytester.runpytest_subprocess(*args, "--nsamples", "3", "-rx", "-p", "no:cacheprovider")
    res.assert_outcomes(xfailed=1)
    res.stdout.fnmatch_lines(["*inconclusive on 3 samples, fewer than the record's 30, on which it expects "
                              "refuted: run without --nsamples to check that*"])
    assert results(pytester)["results"][0]["samples"] == 3
    toml = claims_dir / "heads.toml"
    head, rest = toml.read_text().split('id = "heads.first_token_scores"\nvariant = "correct_method"', 1)
    toml.write_text(head + 'id = "heads.first_token_scores"\nvariant = "correct_method"'
                    + rest.replace("nsamples = 30", "nsamples = 3", 1))
    res = pytester.runpytest_subprocess(*args, "-p", "no:cacheprovider")
    res.assert_outcomes(failed=1)
    res.stdout.fnmatch_lines(["*verdict changed: recorded refuted*now inconclusive*"])


def test_malformed_record_fails_alone_naming_the_field(pytester, tiny_dir):
    (pytester.path / "claims").mkdir()
    good = (CLAIMS / "massive.toml").read_text().split("[[claim]]")[1]
    bad = good.replace('statement = "Some layer', 'statment = "Some layer')
    (pytester.path / "claims" / "massive.toml").write_text(f"[[claim]]{good}\n[[claim]]{bad}")
    res = run(pytester, "claims", "--model", str(tiny_dir("gpt2")), decided=True)
    res.assert_outcomes(failed=2)  # the malformed record, and massive.exists refuted on random weights
    assert "malformed claim record: massive.toml record 1 (massive.exists/general): unknown field(s) ['statment']" \
        in res.stdout.str()


def test_sequence_longer_than_the_context(pytester, claims_dir, tiny_dir):
    res = pytester.runpytest_subprocess("claims", "-k", "massive.exists/general", "--model",
                                        str(tiny_dir("gpt2")), "--nsamples", "2", "--seqlen", "100")
    res.assert_outcomes(failed=1)
    res.stdout.fnmatch_lines(["*--seqlen 100 exceeds the model's context of 64 tokens*"])


def test_truncated_weights(pytester, claims_dir, tiny_dir):
    broken = pytester.path / "broken"
    shutil.copytree(tiny_dir("gpt2"), broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    res = run(pytester, "claims", "-k", "massive.exists/general", "--model", str(broken))
    res.assert_outcomes(failed=1)
    res.stdout.fnmatch_lines(["*ModelLoadError: cannot read the weights*truncated or corrupt*"])


def test_unsupported_architecture_names_the_supported_ones(pytester, claims_dir):
    from transformers import T5Config

    T5Config(d_model=32, num_layers=1, num_heads=2, vocab_size=100).save_pretrained(pytester.path / "t5")
    res = run(pytester, "claims", "-k", "massive.exists/general", "--model", str(pytester.path / "t5"))
    res.assert_outcomes(failed=1)
    res.stdout.fnmatch_lines(["*architecture 't5' has no adapter; supported model types: gpt2, gpt_neox, llama*"])


def test_float16_overflow_is_reported(pytester, claims_dir, tmp_path):
    save_tiny(planted_gpt2(layer=1, feature=40, token=3, magnitude=80000.0), tmp_path / "hot")
    res = run(pytester, "claims", "-k", "massive.exists/general", "--model", str(tmp_path / "hot"),
              "--dtype", "float16")
    res.assert_outcomes(failed=1)
    res.stdout.fnmatch_lines(["ActivationOverflow: activations at block.1 reached inf/nan in torch.float16;*"])
    assert "During handling" not in res.stdout.str()


def test_results_and_report_are_readable_by_all(pytester, claims_dir, tiny_dir):
    run(pytester, "claims", "-k", "massive.exists/general", "--model", str(tiny_dir("gpt2")))
    run_dir = next((pytester.path / "reports").iterdir())
    assert {f.name: f.stat().st_mode & 0o777 for f in run_dir.iterdir()} == {"results.json": 0o644,
                                                                            "report.html": 0o644}


def test_a_run_that_only_collects_writes_nothing(pytester, claims_dir, tiny_dir):
    res = run(pytester, "claims", "--model", str(tiny_dir("gpt2")), "--collect-only", "-q")
    assert res.ret == 0 and not (pytester.path / "reports").exists()


def test_interrupted_run_keeps_finished_items(pytester, claims_dir, tiny_dir):
    pytester.makeconftest("""
        import pytest
        seen = []
        def pytest_runtest_call(item):
            seen.append(item)
            if len(seen) == 3:
                raise KeyboardInterrupt
    """)
    pytester.runpytest_subprocess("claims", "--model", str(tiny_dir("gpt2")), *TINY)
    doc = results(pytester)
    assert doc["complete"] is False
    assert len(doc["results"]) == 2 and doc["not_run"]
    assert (next((pytester.path / "reports").iterdir()) / "report.html").exists()


# ---------------------------------------------------------------- results ride the reports

def _comparable(doc: dict) -> dict:
    """A results document without what differs between two runs of the same items: timings."""
    drop = {"started", "wall_seconds", "pass_seconds", "command"}
    out = {k: v for k, v in doc.items() if k not in drop}
    out["results"] = sorted(({k: v for k, v in r.items() if k != "seconds"} for r in doc["results"]),
                            key=lambda r: r["nodeid"])
    out["passes"] = sorted(json.dumps({k: v for k, v in p.items() if k != "seconds"}, sort_keys=True)
                           for p in doc["passes"])  # the workers' passes, in any order
    return out


def test_xdist_gives_the_results_of_a_serial_run(pytester, claims_dir, tiny_dir):
    args = ["claims", "-k", "massive or heads", "--model", str(tiny_dir("gpt2")), "--model", str(tiny_dir("llama"))]
    serial = run(pytester, *args, "--report-dir", "serial")
    parallel = run(pytester, *args, "-n", "2", "--report-dir", "parallel")
    a, b = (json.loads(next((pytester.path / d).glob("*/results.json")).read_text()) for d in ("serial", "parallel"))
    assert len(a["results"]) == len(b["results"]) > 10
    assert len(a["passes"]) == a["forward_passes"] and sum(p["seconds"] for p in a["passes"]) > 0
    assert _comparable(a) == _comparable(b)
    assert a["complete"] and b["complete"]
    for res, d in ((serial, "serial"), (parallel, "parallel")):
        assert "massact verdicts" in res.stdout.str()
        assert next((pytester.path / d).glob("*/report.html")).stat().st_size > 1000


def test_junit_xml_carries_each_verdict(pytester, claims_dir, tiny_dir):
    import xml.etree.ElementTree as ET

    run(pytester, "claims", "-k", "massive.exists/general", "--model", str(tiny_dir("gpt2")),
        f"--junitxml={pytester.path / 'junit.xml'}", decided=True)
    case = ET.parse(pytester.path / "junit.xml").getroot().find(".//testcase")
    props = {p.get("name"): p.get("value") for p in case.iter("property")}
    assert props["verdict"] == "refuted" and props["primary"] == "margin"
    assert float(props["value"]) < 1 and props["interval"].startswith("[")


def test_a_run_cut_short_by_maxfail_is_incomplete(pytester, claims_dir, tiny_dir):
    run(pytester, "claims", "-k", "massive", "--model", str(tiny_dir("gpt2")), "-x", decided=True)
    doc = results(pytester)  # the first item, massive.exists, fails (refuted, nothing recorded): the run stops
    assert doc["complete"] is False and len(doc["results"]) < 8 and doc["not_run"]


def test_a_wheel_installed_without_the_checkout_runs_a_claim(pytester, tmp_path, tiny_dir):
    """fixtures/ ships in the package: a non-editable install finds the corpus and the word list."""
    import subprocess
    import sys
    import sysconfig
    import venv
    import zipfile

    root = CLAIMS.parent
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "wheel"), str(root)], check=True, capture_output=True)
    env = tmp_path / "env"
    venv.create(env, with_pip=False)
    site = Path(sysconfig.get_path("purelib", vars={"base": str(env), "platbase": str(env)}))
    zipfile.ZipFile(next((tmp_path / "wheel").glob("massact-*.whl"))).extractall(site)
    # the dependencies (torch, transformers...) come from this environment, massact from the wheel
    (site / "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    work = tmp_path / "work"
    (work / "claims").mkdir(parents=True)
    shutil.copy(CLAIMS / "massive.toml", work / "claims")
    res = subprocess.run([str(env / "bin" / "python"), "-m", "pytest", "claims", "-k", "massive.exists/general",
                          "--model", str(tiny_dir("gpt2")), *TINY, *DECIDED], cwd=work, capture_output=True, text=True)
    assert "1 failed" in res.stdout, res.stdout + res.stderr  # refuted on random weights: judged, not crashed
    doc = json.loads(next((work / "reports").glob("*/results.json")).read_text())
    assert doc["corpus"]["path"].startswith(str(site)), doc["corpus"]["path"]


def test_the_terminal_summary_fits_120_columns(pytester, claims_dir, tiny_dir):
    res = run(pytester, "claims", "--model", str(tiny_dir("llama")), "--model", str(tiny_dir("gpt2")))
    out = res.stdout.lines
    start = next(i for i, line in enumerate(out) if "massact verdicts" in line)
    section = out[start + 1:next(i for i in range(start + 1, len(out)) if out[i].startswith(("results:", "===")))]
    assert len(section) > 10 and max(len(line) for line in section) <= 120, "\n".join(section)
    assert any(line.startswith("38 documented-value forms skipped: model is not gpt2") for line in section)


def test_pytest_html_gains_the_verdict_columns_on_a_claims_run(pytester, claims_dir, tiny_dir):
    from test_pytest_html import pytest_html_page

    run(pytester, "claims", "-k", "massive.exists", "--model", str(tiny_dir("gpt2")),
        f"--html={pytester.path / 'out.html'}", decided=True)
    head, tests = pytest_html_page(pytester.path / "out.html")
    assert [h for h in head if "Verdict" in h or "Threshold" in h or "Documented" in h]
    rows = {t["testId"]: t for ts in tests.values() for t in ts}
    row = next(r for nodeid, r in rows.items() if "massive.exists/general[" in nodeid)
    cells = " ".join(row["resultsTableRow"])
    assert "refuted" in cells and "≥ 1" in cells


@pytest.mark.parametrize("argv0, launcher", [("/venv/bin/pytest", ["pytest"]),
                                             ("/venv/lib/site-packages/pytest/__main__.py", ["python", "-m", "pytest"])])
def test_provenance_names_how_pytest_was_started(argv0, launcher):
    from massact.plugin import _launcher

    assert _launcher(argv0) == launcher
