"""The garbage collector's policy for a process whose heap is mostly the cache.

Rules kept here:
- A full CPython collection walks every tracked object. A store of 200k small entries holds ~800k of them, and one
  full collection then takes ~400 ms; while the store fills, one runs each time the tracked heap grows by a quarter.
  The event loop stands still meanwhile: every client waits (``benchmarks/gc_pauses.py``: 11 full collections, up
  to 360-379 ms, while 450k 1 KiB responses went through a 243k-entry store).
- So the survivors are frozen (``gc.freeze``: moved to a generation no collection walks) at start-up and then every
  ``SETTLE_INTERVAL``, each time after a full collection of what is not frozen yet, whose cost is bounded by what
  arrived since the last settle (same workload: longest pause 10.6-14.6 ms, 0.6-0.7 s of collection in all instead
  of 1.8-1.9 s; ``results/20261205-gc_pauses.md``).
- Frozen objects are still freed by reference counting when their last reference goes (a cache entry holds no
  cycle, so an evicted entry's memory returns at once); only a reference cycle that includes an object frozen
  while it was alive is never collected. Cyclic garbage made before a settle is collected by it, not frozen.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

SETTLE_INTERVAL = 0.25  # seconds
Callback = Callable[[str, dict[str, Any]], None]


def watch(record: Callable[[float], None]) -> Callback:
    """Time every collection (``gc.callbacks``) and pass its seconds to ``record``; returns the callback, for
    ``gc.callbacks.remove``. The pauses show in ``/metrics`` as ``edgeproxy_gc_pause_seconds``."""
    started = 0.0

    def callback(phase: str, info: dict[str, Any]) -> None:
        nonlocal started
        if phase == "start":
            started = time.perf_counter()
        else:
            record(time.perf_counter() - started)

    gc.callbacks.append(callback)
    return callback


def settle() -> None:
    """Collect what is not frozen yet (cheap: only what arrived since the last settle), then freeze the rest."""
    gc.collect(2)
    gc.freeze()
