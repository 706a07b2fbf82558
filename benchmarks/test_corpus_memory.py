"""Peak memory against the size of the corpus: a claims run on a 30 MB corpus peaks under 1.5x the
resident size of the same run on a 1 MB corpus. The corpus is read up to its cap (massact.corpus.CAP_BYTES,
4 MiB) and tokenized a window at a time, so what --corpus points at no longer sets the memory a run needs
(the whole text tokenized at once took 3.8 GB at 20 MB, and a 200 MB corpus was killed at 24 GB).

Run: .venv/bin/python -m pytest benchmarks/test_corpus_memory.py -s
Each run is a fresh process (a high-water mark never comes down, as in benchmarks/ratios.py): its peak is
the resident set's high-water mark (the child's ru_maxrss), the median of 3 processes. The model is a tiny
GPT-2 with a character tokenizer (tests/builders.py): one token per character, the most tokens a text can
give, and a model too small to hide the corpus's share of the memory.
"""
from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from builders import save_tiny, tiny_model  # noqa: E402
from massact.corpus import CAP_BYTES, DEFAULT_CORPUS  # noqa: E402

TARGET = 1.5  # peak on 30 MB over peak on 1 MB
SMALL, LARGE = 1_000_000, 30_000_000  # bytes of text
# the wrapper waits for the run and prints the run's peak resident set, in KiB
PEAK = "import resource, subprocess, sys; subprocess.run(sys.argv[1:], capture_output=True); " \
       "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"


def corpus_of(size: int, where: Path) -> Path:
    """A directory holding ``size`` bytes of the bundled corpus's text, repeated."""
    text = "\n\n".join(p.read_text(encoding="utf-8") for p in sorted(DEFAULT_CORPUS.glob("*.txt")))
    where.mkdir()
    with open(where / "text.txt", "w", encoding="utf-8") as f:
        while f.tell() < size:
            f.write(text[:size - f.tell()] + "\n")
    return where


def peak_mib(cwd: Path, model: Path, corpus: Path, repeats: int = 3) -> float:
    cmd = [sys.executable, "-m", "pytest", "claims/massive.toml", "-k", "exists and general", "--model", str(model),
           "--corpus", str(corpus), "--nsamples", "2", "--seqlen", "32", "--resamples", "0", "-p", "no:cacheprovider"]
    runs = [subprocess.run([sys.executable, "-c", PEAK, *cmd], cwd=cwd, capture_output=True, text=True, check=True)
            for _ in range(repeats)]
    return statistics.median(int(r.stdout.split()[-1]) / 1024 for r in runs)


def test_a_30_mb_corpus_peaks_under_1_5x_a_1_mb_one(tmp_path, record_property) -> None:
    assert SMALL < CAP_BYTES < LARGE  # the small corpus is read whole, the large one to the cap
    model = tmp_path / "tiny-gpt2"
    save_tiny(tiny_model("gpt2"), model)
    shutil.copytree(ROOT / "claims", tmp_path / "claims")
    small = peak_mib(tmp_path, model, corpus_of(SMALL, tmp_path / "small"))
    large = peak_mib(tmp_path, model, corpus_of(LARGE, tmp_path / "large"))
    ratio = large / small
    record_property("peak_mib_1mb", round(small, 1))
    record_property("peak_mib_30mb", round(large, 1))
    print(f"peak resident set: 1 MB corpus {small:.0f} MiB, 30 MB corpus {large:.0f} MiB ({ratio:.2f}x)")
    assert ratio < TARGET
    results = [json.loads(p.read_text()) for p in sorted((tmp_path / "reports").glob("*/results.json"))]
    assert len(results) == 6  # every run wrote its results: none was killed
    assert [r["corpus"].get("truncated", {}).get("bytes_total") for r in results] == \
        [None] * 3 + [(tmp_path / "large" / "text.txt").stat().st_size] * 3


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-s"]))
