"""The garbage collector of a long-running control-plane process.

A control plane serving a fleet holds its in-flight requests in memory: 10,000 agents each keep
a long poll open, and each poll holds its scope, headers, task, timers and connection state, over
a million container objects in all. They live for the poll's 25 s, long enough for the collector
to promote them to its oldest generation, which is where Python's default thresholds
``(700, 10, 10)`` then run a full collection every few seconds. Measured during a rollout to
10,000 agents on one SQLite process, full collections took 33 s of CPU in 106 s (about 0.7 s
each); with the thresholds below they did not run in the whole measurement, and the fleet
converged in 43 to 54 s instead of 62 to 69 s (``benchmarks/fleet.py``; README "Fleet convergence").

What stays collected: reference counting frees almost everything at once; cycles among young
objects are found by the cheap young-generation passes, as before. Only cyclic garbage that was
promoted to the oldest generation waits longer for a full collection. The objects built at start
(modules, the app, its routes and schemas) are frozen: no collection scans them again.
"""

from __future__ import annotations

import gc
import logging

__all__ = ["tune_collector"]

logger = logging.getLogger("byteor.controlplane")


def tune_collector(thresholds: tuple[int, int, int] | None) -> None:
    """Freeze what startup built, and apply ``thresholds`` (``None``: keep Python's).

    Call once per process, after the app is built and before it serves.
    """
    gc.collect()  # startup's own garbage goes now, not into the frozen set
    gc.freeze()
    if thresholds is not None:
        gc.set_threshold(*thresholds)
    logger.debug(
        "garbage collector: thresholds %s, %d startup objects frozen",
        gc.get_threshold(),
        gc.get_freeze_count(),
    )
