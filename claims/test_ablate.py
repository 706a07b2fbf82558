"""Family A: which component generates massive activations. Records: ablate.toml."""


def test_ablate(claim_case):
    claim_case.verify()
