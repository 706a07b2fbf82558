"""Family L: massive activations exist and follow a layer profile. Records: massive.toml."""


def test_massive(claim_case):
    claim_case.verify()
