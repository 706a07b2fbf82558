"""The plugin end to end, in a subprocess per run (pytester): tiny models saved to disk stand
in for real checkpoints of each architecture, and bad input gets a message, not a traceback."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from builders import SUPPORTED_ARCHS, planted_gpt2, save_tiny, tiny_model

CLAIMS = Path(__file__).resolve().parent.parent / "claims"
TINY = ["--nsamples", "2", "--seqlen", "32", "-p", "no:cacheprovider"]


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
    """The real registry and thin tests, copied into the pytester directory."""
    dest = pytester.path / "claims"
    shutil.copytree(CLAIMS, dest, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def results(pytester) -> dict:
    files = sorted((pytester.path / "reports").glob("*/results.json"))
    assert files, "no results.json written"
    return json.loads(files[-1].read_text())


def run(pytester, *args):
    res = pytester.runpytest_subprocess(*args, *TINY)
    assert "Traceback" not in res.stdout.str() + res.stderr.str()
    return res


def outcome(entry: dict) -> str:
    """The pytest outcome an entry of results.json must have had."""
    if entry["verdict"] == "skipped":
        return "skipped"
    if entry.get("expected") in (None, "holds"):
        return "passed" if entry["verdict"] == "holds" else "failed"
    return "xfailed" if entry["verdict"] == entry["expected"] else "failed"


@pytest.mark.parametrize("arch", SUPPORTED_ARCHS)
def test_claims_run_on_a_saved_model_of_each_architecture(pytester, claims_dir, tiny_dir, arch):
    res = run(pytester, "claims", "--model", str(tiny_dir(arch)))
    doc = results(pytester)
    assert doc["complete"] is True
    by_claim = {(r["claim"], r.get("variant")): r for r in doc["results"]}
    assert by_claim[("massive.exists", "general")]["verdict"] == "refuted"  # random weights
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


def test_malformed_record_fails_alone_naming_the_field(pytester, tiny_dir):
    (pytester.path / "claims").mkdir()
    good = (CLAIMS / "massive.toml").read_text().split("[[claim]]")[1]
    bad = good.replace('statement = "Some layer', 'statment = "Some layer')
    (pytester.path / "claims" / "massive.toml").write_text(f"[[claim]]{good}\n[[claim]]{bad}")
    shutil.copy(CLAIMS / "test_massive.py", pytester.path / "claims")
    res = run(pytester, "claims", "--model", str(tiny_dir("gpt2")))
    res.assert_outcomes(failed=2)  # the malformed record, and massive.exists refuted on random weights
    assert "malformed claim record: massive.toml record 1 (massive.exists/general): unknown field(s) ['statment']" \
        in res.stdout.str()


def test_sequence_longer_than_the_context(pytester, claims_dir, tiny_dir):
    res = pytester.runpytest_subprocess("claims", "-k", "massive.exists/general", "--model",
                                        str(tiny_dir("gpt2")), "--nsamples", "2", "--seqlen", "100")
    res.assert_outcomes(failed=1)
    res.stdout.fnmatch_lines(["*--seqlen 100 exceeds the model's context of 64 tokens*"])


def test_empty_corpus(pytester, claims_dir, tiny_dir):
    (pytester.path / "empty").mkdir()
    res = run(pytester, "claims", "-k", "massive.exists/general", "--model", str(tiny_dir("gpt2")),
              "--corpus", str(pytester.path / "empty"))
    res.assert_outcomes(failed=1)
    res.stdout.fnmatch_lines(["*corpus*is empty*"])


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
    res.stdout.fnmatch_lines(["ActivationOverflow: activations at *.1.* reached inf/nan in torch.float16;*"])
    assert "During handling" not in res.stdout.str()


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
    assert len(doc["results"]) == 2
