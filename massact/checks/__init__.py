"""Measurements a claim record can name in its ``check`` field, one module per family."""
from massact.checks.base import CHECKS, Check, ClaimInvalid, Context, Measurement, check
from massact.checks import ablate, massive, mlp  # noqa: E402,F401  (each registers its checks)

__all__ = ["CHECKS", "Check", "ClaimInvalid", "Context", "Measurement", "check"]
