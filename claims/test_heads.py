"""Family H: attention heads and the first token. Records: heads.toml."""


def test_heads(claim_case):
    claim_case.verify()
