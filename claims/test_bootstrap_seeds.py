"""Verdicts that do not move with the bootstrap seed.

With --seed-check N (scripts/test gives 4), every claim this run judged on a model is judged again
under N other bootstrap seeds and must give the verdict it gave under the run's own
(--bootstrap-seed). This file sorts after the claims files, so its test runs after their items and
reuses their passes (the engine caches each pass for the run): what it costs is the checks and the
bootstrap again, not the model: N times the run's own checks and bootstrap (4 x 94 s on top of
829 s of items in scripts/test's claims on a quiet machine), so a plain run leaves it out.
"""
from __future__ import annotations

import pytest

from massact.plugin import SESSION, ClaimItem


def test_verdicts_do_not_move_with_the_bootstrap_seed(request) -> None:
    others = request.config.getoption("seed_check")
    if others <= 0:
        pytest.skip("not asked for: --seed-check N judges every item again under N other bootstrap seeds")
    session = request.config.stash[SESSION]
    judged = [i for i in request.session.items
              if isinstance(i, ClaimItem) and i.spec and i.entry is not None and i.entry.bootstrap.get("resamples")]
    if not judged:
        pytest.skip("no claim was judged with a bootstrap interval in this process")
    seeds = [session.bootstrap_seed + k for k in range(1, others + 1)]
    moved = []
    for item in judged:
        again = {s: session.judge(item.record, item.spec, seed=s).verdict for s in seeds}
        if set(again.values()) != {item.entry.verdict}:
            moved.append(f"{item.name}: {item.entry.verdict} under seed {session.bootstrap_seed}, "
                         + ", ".join(f"{v} under {s}" for s, v in again.items()))
    assert not moved, f"{len(moved)} of {len(judged)} verdicts move with the bootstrap seed:\n" + "\n".join(moved)
