"""The nightly workflow (.github/workflows/nightly.yml): it parses, keeps results.json and report.html
whatever happens, and its commands exist and take the options it gives them, as written."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW = ROOT / ".github" / "workflows" / "nightly.yml"


def workflow() -> dict:
    return yaml.safe_load(WORKFLOW.read_text())


def models(job: dict) -> list[str]:
    return job["strategy"]["matrix"]["model"]


def commands(job: dict) -> list[list[str]]:
    """Every `run:` line of the job as argv, with the job's env variables put in (the matrix's first model)."""
    matrix = {"matrix.model": models(job)[0]}
    env = {k: re.sub(r"\$\{\{\s*([\w.]+)\s*\}\}", lambda m: matrix[m.group(1)], str(v))
           for k, v in job.get("env", {}).items()}
    out = []
    for step in job["steps"]:
        for line in step.get("run", "").splitlines():
            line = re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m.group(1), m.group(0)), line)
            if line.strip():
                out.append(shlex.split(line))
    return out


def test_it_runs_nightly_and_by_hand():
    wf = workflow()
    triggers = wf.get("on", wf.get(True))  # YAML 1.1 reads a bare `on` as true
    assert triggers["schedule"][0]["cron"] and "workflow_dispatch" in triggers


def test_every_built_in_model_is_checked_by_ci_or_nightly():
    from massact.models import BUILTIN

    (job,) = workflow()["jobs"].values()
    in_ci = re.findall(r"--model (\S+)", (ROOT / "scripts" / "test").read_text())
    assert set(BUILTIN) <= set(in_ci) | set(models(job)), "a built-in model whose recorded verdicts nothing checks"
    assert not job["strategy"]["fail-fast"]  # one model's changed verdict does not cancel the others' runs


def test_results_are_kept_also_when_a_verdict_changed():
    (job,) = workflow()["jobs"].values()
    (upload,) = [s for s in job["steps"] if s.get("uses", "").startswith("actions/upload-artifact")]
    assert upload["if"] == "always()"
    kept = upload["with"]["path"].split()
    claims = next(argv for argv in commands(job) if argv[0] == "scripts/claims")
    report_dir = claims[claims.index("--report-dir") + 1]
    baseline = claims[claims.index("--baseline") + 1]
    assert f"{report_dir}/" in kept  # <report_dir>/<run>/results.json and report.html
    assert f"{Path(baseline).parent}/" in kept  # a first run writes the baseline there: download and commit it


def test_commands_exist_and_take_their_options():
    (job,) = workflow()["jobs"].values()
    argvs = [argv for argv in commands(job) if argv[0].startswith("scripts/")]
    assert [argv[0] for argv in argvs] == ["scripts/setup", "scripts/claims"]
    for argv in argvs:
        script = ROOT / argv[0]
        assert script.is_file() and os.access(script, os.X_OK), f"{argv[0]} is missing or not executable"
    claims = argvs[1]
    assert "--baseline" in claims and "--model" in claims
    # with --help pytest still configures massact (a bad model spec or corpus exits non-zero) but lets an
    # unknown option pass: the help it prints must list each one
    res = subprocess.run([*claims, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    for option in (a.split("=")[0] for a in claims if a.startswith("--")):
        assert re.search(rf"^\s+{re.escape(option)}\b", res.stdout, re.M), f"{option} is not a pytest option"


@pytest.mark.parametrize("spec", ["smollm2-135m", "EleutherAI/pythia-410m", "./checkpoints/my model", "/data/ckpt:v2"])
def test_the_artifact_is_named_validly_for_any_model_spec(spec, tmp_path):
    """upload-artifact refuses a name with / (a hub id, a path), : and the like: the job makes one it takes."""
    (job,) = workflow()["jobs"].values()
    (upload,) = [s for s in job["steps"] if s.get("uses", "").startswith("actions/upload-artifact")]
    (naming,) = [s for s in job["steps"] if "GITHUB_ENV" in s.get("run", "")]
    assert naming["if"] == "always()" and upload["with"]["name"] == "${{ env.ARTIFACT }}"
    env_file = tmp_path / "github_env"
    subprocess.run(["bash", "-c", naming["run"].replace("${{ github.run_number }}", "17")], check=True,
                   env={**os.environ, "MODEL": spec, "GITHUB_ENV": str(env_file)})
    key, _, name = env_file.read_text().strip().partition("=")
    assert key == "ARTIFACT" and re.fullmatch(r"massact-[A-Za-z0-9._-]+-17", name), name


def test_the_runner_installs_the_cpu_build_of_torch():
    """A CPU runner given PyPI's torch==2.13.0 downloads a CUDA build of several GB it cannot use."""
    (job,) = workflow()["jobs"].values()
    assert job["env"]["PIP_EXTRA_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"


def claim_versions() -> dict[tuple[str, str], int]:
    """(id, variant) -> version of every valid record in claims/*.toml."""
    from massact.claims import Claim, load_records

    return {(r.id, r.variant): r.version for path in sorted((ROOT / "claims").glob("*.toml"))
            for r in load_records(path) if isinstance(r, Claim)}


@pytest.mark.parametrize("model", models(next(iter(workflow()["jobs"].values()))))
def test_each_model_of_the_matrix_has_a_complete_baseline_at_the_current_claim_versions(model):
    """Without its baseline the night's job writes one and fails; with a stale one (a claim's version
    raised since) it reports a change the claim's new version made: either is caught here, not at night."""
    from massact.report.results import read_results

    path = ROOT / "nightly" / f"{model}.json"
    record = f"scripts/claims --model {model} --baseline nightly/{model}.json --update-baseline, and commit it"
    assert path.is_file(), f"nightly/{model}.json is missing: record it with {record}"
    doc = read_results(path)
    assert doc["complete"] and not doc.get("not_run"), f"nightly/{model}.json is from an incomplete run"
    assert not doc.get("deselected"), f"nightly/{model}.json is from a run that left claims out (-k, -m)"
    assert {m.get("name") for m in doc["models"].values()} == {model}
    current = claim_versions()
    recorded = {(e["claim"], e["variant"]): e.get("version") for e in doc["results"]}
    missing = sorted(f"{c}/{v}" for c, v in set(current) - set(recorded))
    stale = sorted(f"{c}/{v} (version {n}, now {current.get((c, v))})" for (c, v), n in recorded.items()
                   if n != current.get((c, v)))
    assert not missing, f"nightly/{model}.json lacks {missing}: rewrite it with {record}"
    assert not stale, f"nightly/{model}.json is stale for {stale}: rewrite it with {record}"
