"""A5: zero vs mean for the massive activations. Records: intervene.toml."""


def test_intervene(claim_case):
    claim_case.verify()
