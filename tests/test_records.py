"""Claim records: typed params checked when the records are read, naming the field at fault."""
from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from massact.claims import BadRecord, Claim, load_records, validate
from massact.errors import ClaimRecordError

CLAIMS = Path(__file__).resolve().parent.parent / "claims"


def _raw(claim_id: str, variant: str = "general") -> dict:
    family = claim_id.split(".")[0]
    return next(r for r in tomllib.loads((CLAIMS / f"{family}.toml").read_text())["claim"]
                if r["id"] == claim_id and r.get("variant", "general") == variant)


def test_every_record_of_the_registry_is_valid() -> None:
    for path in sorted(CLAIMS.glob("*.toml")):
        bad = [r for r in load_records(path) if isinstance(r, BadRecord)]
        assert not bad, bad


def test_params_take_the_shared_defaults() -> None:
    claim = validate(_raw("massive.exists"))
    assert claim.params.min_abs == 100.0 and claim.params.min_ratio == 1000.0


@pytest.mark.parametrize("change, message", [
    ({"min_abs": "100"}, "field 'params.min_abs' must be a number, not '100'"),
    ({"min_abs": True}, "field 'params.min_abs' must be a number, not True"),
    ({"mode": "falls"}, "field 'params.mode' must be one of 'unchanged', 'drops', 'not_lowered', not 'falls'"),
    ({"bound_typo": 0.02}, "unknown key(s) ['bound_typo']"),
], ids=["string-number", "bool-number", "literal", "unknown"])
def test_a_param_of_the_wrong_type_or_name_is_an_error_naming_it(change, message) -> None:
    raw = _raw("ablate.attention_all")
    with pytest.raises(ClaimRecordError) as info:
        validate({**raw, "params": {**raw["params"], **change}})
    assert message in str(info.value)


def test_a_missing_param_is_named() -> None:
    raw = _raw("ablate.attention_all")
    params = {k: v for k, v in raw["params"].items() if k != "bound"}
    with pytest.raises(ClaimRecordError, match=r"lacks \['bound'\]"):
        validate({**raw, "params": params})


@pytest.mark.parametrize("field, value", [("threshold", 0.02), ("version", "1"), ("controls", "random heads"),
                                          ("nsamples", 2.5), ("documented", None)])
def test_a_field_of_the_wrong_type_is_named(field, value) -> None:
    with pytest.raises(ClaimRecordError, match=f"field '{field}'"):
        validate({**_raw("massive.exists"), field: value})


def test_a_duplicate_id_and_variant_is_a_bad_record(tmp_path) -> None:
    text = (CLAIMS / "massive.toml").read_text()
    first = "[[claim]]" + text.split("[[claim]]")[1]
    (tmp_path / "dup.toml").write_text(first + "\n" + first)
    got = load_records(tmp_path / "dup.toml")
    assert isinstance(got[0], Claim) and isinstance(got[1], BadRecord)
    assert "massive.exists/general is defined twice" in got[1].error


def test_lists_become_tuples_so_params_stay_hashable() -> None:
    claim = validate(_raw("massive.fixed_dims", "gpt2_dims_2533_1415"))
    assert claim.params.dims == (2533, 1415)
    hash(claim.params)


# gpt2 forms that run no pass at the document's length: weights only, or invalid before any pass
WEIGHTS_ONLY = {"svd.dominant_direction/gpt2", "mlp.top_contributors/gpt2_documented_method",
                "mlp.top_contributors/gpt2_correct_method", "massive.fixed_dims/gpt2_dims_2533_1415",
                "svd.function_words_align/gpt2"}  # the last: Exp5's numbers come from synthetic data


def test_documented_forms_on_gpt2_run_at_the_documents_length() -> None:
    """The gpt2 numbers were measured on 1024-token samples (the SVD fit on 30 of them, 30,720 tokens):
    a documented-value form compares at that length, whatever the session's --seqlen."""
    gpt2 = {c.key: c for path in sorted(CLAIMS.glob("*.toml")) for c in load_records(path)
            if isinstance(c, Claim) and c.documented_on == "gpt2"}
    assert {k for k, c in gpt2.items() if c.seqlen != 1024} == WEIGHTS_ONLY
    fit = gpt2["svd.projection_r2/gpt2"]
    assert fit.nsamples * fit.seqlen == 30720
