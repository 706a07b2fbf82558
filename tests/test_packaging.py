"""How massact installs: lower bounds that admit the supported range the README states, the exact versions
CI runs pinned in scripts/constraints.txt, and the `massact` console script."""
from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = ROOT / "pyproject.toml"
CONSTRAINTS = ROOT / "scripts" / "constraints.txt"
UPPER = ("<", "<=", "==", "~=", "===")  # operators that shut out later releases


def declared() -> dict[str, Requirement]:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    reqs = [*project["dependencies"], *project["optional-dependencies"]["test"]]
    return {canonicalize_name(r.name): r for r in map(Requirement, reqs)}


def pinned() -> dict[str, Version]:
    out = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"scripts/constraints.txt: {line!r} is not an exact pin (name==version)"
            out[canonicalize_name(name)] = Version(version)
    return out


def supported_table() -> list[dict]:
    """The README's table of supported versions: package, declared range, tested versions (CI first)."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Installing it into your own environment", 1)[1].split("\n## ", 1)[0]
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in section.splitlines()
            if line.startswith("| ") and not line.startswith("| package")]
    assert rows, "README: no table of supported versions under 'Installing it into your own environment'"
    return [{"package": canonicalize_name(r[0]), "range": r[1], "tested": re.findall(r"\d+\.\d+(?:\.\d+)?", r[3]),
             "ci": re.search(r"([\d.]+) \(CI\)", r[3]).group(1)} for r in rows]


@pytest.mark.parametrize("row", supported_table(), ids=lambda r: r["package"])
def test_the_declared_requirement_is_the_readmes_range_and_admits_every_tested_version(row):
    req = declared()[row["package"]]
    assert str(req.specifier) == row["range"], f"pyproject.toml says {req}, the README {row['range']}"
    for version in row["tested"]:
        assert req.specifier.contains(version), f"{req} shuts out {row['package']} {version}, which the README lists"
    assert pinned()[row["package"]] == Version(row["ci"]), "the README's CI version is not the one the constraints pin"


def test_no_upper_bound_without_its_reason():
    """A library that caps a release shuts out a researcher's environment: only a known break justifies one,
    and its line in pyproject.toml says which (``# 3.0 breaks ...``)."""
    lines = PYPROJECT.read_text().splitlines()

    def capped(req: Requirement) -> bool:
        return any(spec.operator in UPPER for spec in req.specifier)

    assert capped(Requirement("torch==2.13.0")) and capped(Requirement("matplotlib~=3.11"))  # what it catches
    offenders = [str(req) for req in declared().values() if capped(req)
                 and "break" not in next(l for l in lines if l.strip().startswith(f'"{req}')).partition("#")[2]]
    assert offenders == [], f"upper bounds without the break that justifies them: {offenders}"


def test_constraints_pin_every_requirement_within_its_range():
    pins = pinned()
    for name, req in declared().items():
        assert name in pins, f"scripts/constraints.txt pins no version of {name}: add what CI runs"
        assert req.specifier.contains(pins[name]), f"scripts/constraints.txt pins {name}=={pins[name]}, outside {req}"
    # torch: the CPU build on this project's machines; a different pin would pull a CUDA build of several GB
    assert pins["torch"] == Version("2.13.0")
    assert "-c scripts/constraints.txt" in (ROOT / "scripts" / "setup").read_text()


def test_the_console_script_runs_the_subcommands(tmp_path):
    scripts = tomllib.loads(PYPROJECT.read_text())["project"]["scripts"]
    assert scripts == {"massact": "massact.__main__:main"}
    (ep,) = importlib.metadata.entry_points(group="console_scripts", name="massact")
    assert ep.value == "massact.__main__:main"  # installed: scripts/setup ran `pip install -e .`
    exe = Path(sys.executable).with_name("massact")
    res = subprocess.run([exe, "--help"], capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 0 and res.stdout.startswith("usage: massact ")
    for sub in ("report", "diff", "history"):
        assert sub in res.stdout
    missing = subprocess.run([exe, "history", "nope.json"], capture_output=True, text=True, cwd=tmp_path)
    assert missing.returncode == 2 and "nope.json does not exist" in missing.stderr
