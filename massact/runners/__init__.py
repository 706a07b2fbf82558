"""Runners: how a pass feeds its samples through the model, one per run mode."""
from massact.runners.forward import run_forward

RUNNERS = {"forward": run_forward}

__all__ = ["RUNNERS"]
