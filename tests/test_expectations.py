"""Expectations recorded by a command: the [claim.expect] lines of a run's verdicts, written into a copy of the
claims files with every other byte kept; the terminal's note for a verdict with no expectation recorded."""
from __future__ import annotations

import difflib
import json
import shutil
import tomllib
from pathlib import Path

import pytest

from massact import expectations
from massact.__main__ import USAGE_ERROR, main
from massact.claims import load_records
from massact.report.terminal import summary_lines

CLAIMS = Path(__file__).resolve().parent.parent / "claims"


def fresh_claims(tmp_path: Path) -> Path:
    """A copy of claims/ in which heads.sink_values_small/general has no [claim.expect] yet, as a new record."""
    shutil.copytree(CLAIMS, tmp_path / "claims")
    heads = tmp_path / "claims" / "heads.toml"
    text = heads.read_text()
    table = text.index("# measured at the defaults", text.index('id = "heads.sink_values_small"'))  # its comment, table
    heads.write_text(text[:table] + text[text.index("\n\n", table) + 1:])
    assert "expect" not in next(r for r in tomllib.loads(heads.read_text())["claim"]
                                if r["id"] == "heads.sink_values_small")
    return heads


def entry(claim: str, variant: str, spec: str | None, verdict: str, **kw) -> dict:
    label = {"smollm2-135m": "smollm2-135m", "minilm-l6": "minilm-l6", None: None}.get(spec, "ckpt")
    node = f"claims/{claim.split('.')[0]}.toml::{claim}/{variant}" + (f"[{label}]" if label else "")
    return {"claim": claim, "variant": variant, "spec": spec, "model": label, "verdict": verdict, "nodeid": node,
            "summary": "", "reason": "", **kw}


def entry_line(text: str, claim: str, variant: str, key: str) -> str:
    """The ``[claim.expect]`` line of ``key`` in the record ``claim``/``variant`` of a claims file's text."""
    (block,) = [b for b in text.split("[[claim]]") if f'id = "{claim}"\n' in b and (
        f'variant = "{variant}"' in b or (variant == "general" and "\nvariant = " not in b))]
    return next(x for x in block.splitlines() if x.startswith(f'"{key}" = '))


def run_doc() -> dict:
    return {"schema": 4, "rootdir": "/nowhere", "corpus": {"nsamples": None},
            "models": {"smollm2-135m": {"label": "smollm2-135m", "known_as": "smollm2-135m"},
                       "minilm-l6": {"label": "minilm-l6", "known_as": "minilm-l6"},
                       "/x/ckpt": {"label": "ckpt", "known_as": None}},
            "results": [
                # new: the record expects nothing on these models
                entry("heads.sink_values_small", "general", "smollm2-135m", "holds", primary="value_ratio", unit="x",
                      values={"value_ratio": 0.112}, intervals={"value_ratio": [0.106, 0.118]},
                      bound={"op": "<", "value": 0.5, "abs": False},
                      summary="sink token: position 0 [t/BCa 95% intervals over 12 samples; 100% of 1000 resamples "
                              "hold]"),
                entry("heads.sink_values_small", "general", "minilm-l6", "invalid",
                      reason='no layer of minilm-l6 has "massive" activations'),
                # as recorded: the record's hand-written reason stays
                entry("heads.specialization", "correct_method", "minilm-l6", "holds", expected="holds"),
                # changed: recorded refuted, now holds
                entry("heads.first_token_scores", "correct_method", "minilm-l6", "holds", expected="refuted"),
                entry("heads.sink_values_small", "general", "/x/ckpt", "refuted", reason="random weights"),
                entry("heads.summary_consistent", "general", None, "refuted", expected="refuted", reason="r"),
                entry("heads.sink_values_small", "first_token", "minilm-l6", "skipped", reason="..."),
            ]}


def test_the_measured_reason_gives_the_values_of_the_controls_that_also_held() -> None:
    e = entry("heads.sink_values_small", "general", "smollm2-135m", "non-specific", primary="value_ratio", unit="x",
              values={"value_ratio": 0.112, "random_heads": 0.375, "random_token": 1.0},
              intervals={"value_ratio": [0.106, 0.118], "random_heads": [0.368, 0.384]},
              bound={"op": "<", "value": 0.5, "abs": False},
              controls={"random_heads": "also holds", "random_token": "ruled out"},
              reason="the control(s) random_heads also satisfy the claim")
    # random_token, ruled out, is not among them
    assert expectations.measured_reason(e) == ("0.112x [0.106x, 0.118x] vs < 0.5x; the control(s) random_heads also "
                                               "satisfy the claim; random_heads 0.375x [0.368x, 0.384x]")
    # one not ruled out (its interval straddles the threshold) did not hold either
    e["controls"]["random_heads"] = "not ruled out"
    assert "random_heads 0.375x" not in expectations.measured_reason(e)


def test_toml_lines() -> None:
    assert expectations.toml_line("smollm2-135m", "holds", note="0.112x") == '"smollm2-135m" = "holds"  # 0.112x'
    line = expectations.toml_line("minilm-l6", "invalid", 'no "massive" activation\\here')
    assert line == '"minilm-l6" = { verdict = "invalid", reason = "no \\"massive\\" activation\\\\here" }'
    assert tomllib.loads(line)["minilm-l6"]["reason"] == 'no "massive" activation\\here'


def test_the_lines_of_every_judged_item_each_marked_against_its_record() -> None:
    props = expectations.proposals(run_doc())
    assert [(p.claim, p.key, p.verdict) for p in props][:2] == [
        ("heads.sink_values_small", "smollm2-135m", "holds"), ("heads.sink_values_small", "minilm-l6", "invalid")]
    assert len(props) == 6  # the skipped item gives none
    text = "\n".join(expectations.render(props))
    assert ('# claims/heads.toml: heads.sink_values_small/general\n# not recorded\n"smollm2-135m" = "holds"  # '
            "0.112x [0.106x, 0.118x] vs < 0.5x; sink token: position 0\n# not recorded\n\"minilm-l6\" = { verdict = "
            '"invalid", reason = "no layer of minilm-l6 has \\"massive\\" activations" }') in text
    assert "# as recorded\n\"minilm-l6\" = \"holds\"" in text and "# recorded refuted: changed" in text
    assert "# ckpt: refuted (random weights); not a model massact knows" in text
    assert '"document" = { verdict = "refuted", reason = "r" }' in text


def test_write_records_the_missing_and_changed_ones_and_keeps_every_other_byte(tmp_path) -> None:
    before = fresh_claims(tmp_path).read_text()
    changes = expectations.write(expectations.proposals(run_doc()), root=tmp_path)
    assert changes == [
        "claims/heads.toml: heads.sink_values_small/general: smollm2-135m not recorded -> holds",
        "claims/heads.toml: heads.sink_values_small/general: minilm-l6 not recorded -> invalid",
        "claims/heads.toml: heads.first_token_scores/correct_method: minilm-l6 refuted -> holds"]
    after = (tmp_path / "claims" / "heads.toml").read_text()
    old_line = entry_line(before, "heads.first_token_scores", "correct_method", "minilm-l6")
    assert '"minilm-l6" = { verdict = "refuted"' in old_line
    new_line = next(p.line for p in expectations.proposals(run_doc()) if p.claim == "heads.first_token_scores")
    assert new_line == '"minilm-l6" = "holds"'
    lines = [p.line for p in expectations.proposals(run_doc())[:2]]
    # every other byte as it was: one entry replaced, one table added under its record's fields
    assert [x for x in difflib.ndiff(before.splitlines(), after.splitlines()) if x[0] in "+-"] == [
        f"- {old_line}", f"+ {new_line}", "+ [claim.expect]", f"+ {lines[0]}", f"+ {lines[1]}"]
    assert after.index("[claim.expect]\n" + lines[0]) < after.index('variant = "first_token"')
    recs = {r.key: r for r in load_records(tmp_path / "claims" / "heads.toml")}
    assert recs["heads.sink_values_small/general"].expect["minilm-l6"].reason.startswith("no layer of minilm-l6")
    assert recs["heads.sink_values_small/general"].expect["smollm2-135m"].verdict == "holds"
    assert recs["heads.first_token_scores/correct_method"].expect["minilm-l6"].verdict == "holds"
    # the hand-written reason of an unchanged verdict stays; a second write changes nothing
    assert entry_line(before, "heads.specialization", "correct_method", "minilm-l6") in after.splitlines()
    assert expectations.write(expectations.proposals(run_doc()), root=tmp_path) == []
    assert (tmp_path / "claims" / "heads.toml").read_text() == after


def test_refresh_rewrites_the_reasons_of_unchanged_verdicts_with_what_was_measured(tmp_path) -> None:
    fresh_claims(tmp_path)
    expectations.write(expectations.proposals(run_doc()), root=tmp_path)
    kept = (tmp_path / "claims" / "heads.toml").read_text()
    line = entry_line(kept, "heads.specialization", "correct_method", "minilm-l6")
    assert line != '"minilm-l6" = "holds"'  # the recorded note of an unchanged verdict, kept by a plain write
    changes = expectations.write(expectations.proposals(run_doc()), root=tmp_path, refresh=True)
    after = (tmp_path / "claims" / "heads.toml").read_text()
    assert changes and all(c.endswith("(reason re-measured)") for c in changes)
    assert entry_line(after, "heads.specialization", "correct_method", "minilm-l6") == '"minilm-l6" = "holds"'
    for p in expectations.proposals(run_doc()):
        assert p.key is None or p.line in after  # a model massact does not know gets no entry
    assert expectations.write(expectations.proposals(run_doc()), root=tmp_path, refresh=True) == []


def test_the_command(tmp_path, capsys) -> None:
    before = fresh_claims(tmp_path).read_text()
    doc = run_doc() | {"rootdir": str(tmp_path)}
    (tmp_path / "results.json").write_text(json.dumps(doc))
    assert main(["expect", str(tmp_path / "results.json")]) == 0
    assert '"smollm2-135m" = "holds"  # 0.112x' in capsys.readouterr().out
    assert (tmp_path / "claims" / "heads.toml").read_text() == before
    assert main(["expect", str(tmp_path / "results.json"), "--write"]) == 0
    assert "3 expectation(s) written" in capsys.readouterr().out
    doc["results"].append(entry("heads.gone", "general", "minilm-l6", "holds"))
    (tmp_path / "results.json").write_text(json.dumps(doc))
    assert main(["expect", str(tmp_path / "results.json"), "--write"]) == USAGE_ERROR
    assert "has no record heads.gone/general: the claims file changed since the run" in capsys.readouterr().err


@pytest.mark.parametrize("verdict, expected, note", [
    ("invalid", None, "(no expectation recorded)"), ("holds", None, ""), ("refuted", "holds", "(expected holds)"),
    ("refuted", "refuted", "")])
def test_the_terminal_line_says_when_nothing_is_recorded(verdict, expected, note) -> None:
    e = entry("heads.sink_values_small", "general", "minilm-l6", verdict, expected=expected, reason="why")
    line = summary_lines({"results": [e]})[0]
    assert line.endswith(note) if note else "expect" not in line


def test_a_failure_with_nothing_recorded_says_so_and_gives_the_line(pytester) -> None:
    """minilm-l6's verdict of ablate.attention_all, its expectation taken out of a copy of the claims: the
    failure names the model, the measured verdict and reason, and the line that records it."""
    shutil.copytree(CLAIMS, pytester.path / "claims")
    toml = pytester.path / "claims" / "ablate.toml"
    text = toml.read_text()
    line = entry_line(text, "ablate.attention_all", "general", "minilm-l6")
    assert '"minilm-l6" = { verdict = "invalid"' in line
    toml.write_text(text.replace(line + "\n", "", 1))
    res = pytester.runpytest_subprocess("claims", "-k", "attention_all/general", "--model", "minilm-l6",
                                        "--nsamples", "2", "--seqlen", "32", "-p", "no:cacheprovider")
    res.assert_outcomes(failed=1)
    out = res.stdout.str()
    assert ("ablate.attention_all/general on minilm-l6: no expectation recorded for minilm-l6; this run measured: "
            "invalid (no layer of minilm-l6 has massive activations") in out
    assert ("To record it, add to the [claim.expect] table of ablate.attention_all/general in claims/ablate.toml:\n"
            '    "minilm-l6" = { verdict = "invalid", reason = "no layer of minilm-l6 has massive activations') in out
    assert "(no expectation recorded)" in out  # the summary line
    assert "1 verdict(s) with no expectation recorded in claims/*.toml (holds is assumed): `python -m massact " \
           "expect " in out
    # the command then writes it where the failure said
    results = next((pytester.path / "reports").glob("*/results.json"))
    assert main(["expect", str(results), "--write"]) == 0
    res = pytester.runpytest_subprocess("claims", "-k", "attention_all/general", "--model", "minilm-l6",
                                        "--nsamples", "2", "--seqlen", "32", "-p", "no:cacheprovider")
    res.assert_outcomes(xfailed=1)


def test_a_model_massact_does_not_know_cannot_be_recorded(pytester, tmp_path) -> None:
    from builders import save_tiny, tiny_model

    save_tiny(tiny_model("gpt2"), tmp_path / "ckpt")
    shutil.copytree(CLAIMS, pytester.path / "claims")
    # 12 samples: enough independent ones for a decided verdict (refuted on random weights); on fewer the
    # verdict is inconclusive, an xfail that records nothing
    res = pytester.runpytest_subprocess("claims", "-k", "massive.exists/general", "--model", str(tmp_path / "ckpt"),
                                        "--nsamples", "12", "--seqlen", "32", "-p", "no:cacheprovider")
    res.assert_outcomes(failed=1)
    assert "no expectation can be recorded for ckpt: [claim.expect] names the models massact knows" in res.stdout.str()
