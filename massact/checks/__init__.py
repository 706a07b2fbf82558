"""Measurements a claim record can name in its ``check`` field, one module per family.

Every module of this package registers its checks with ``@check`` when imported.
"""
import importlib
import pkgutil

from massact.checks.base import CHECKS, Check, ClaimInvalid, Context, Measurement, check

for _mod in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_mod.name}")

__all__ = ["CHECKS", "Check", "ClaimInvalid", "Context", "Measurement", "check"]
