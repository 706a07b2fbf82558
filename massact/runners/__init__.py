"""Runners: how a pass feeds its samples through the model, one per run mode (Request.mode)."""
from massact.runners.decode import run_decode, run_generate
from massact.runners.forward import run_forward

RUNNERS = {"forward": run_forward, "decode": run_decode, "generate": run_generate}

__all__ = ["RUNNERS"]
