"""Family S: SVD geometry of the down projection. Records: svd.toml."""


def test_svd(claim_case):
    claim_case.verify()
