"""Family O: outliers in weights and activations. Records: outliers.toml."""


def test_outliers(claim_case):
    claim_case.verify()
