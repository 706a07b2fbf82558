"""Family M: where inside the MLP the massive activation is made. Records: mlp.toml."""


def test_mlp(claim_case):
    claim_case.verify()
