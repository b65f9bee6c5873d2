"""gcpolicy.settle: cyclic garbage is collected before the freeze, live objects end up frozen.

Category: process policy (no sockets). Pause lengths are measured by ``benchmarks/gc_pauses.py``, never asserted.
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from edgeproxy import gcpolicy


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


@pytest.fixture(autouse=True)
def thawed() -> Iterator[None]:
    """Leave the test process's collector as it was: nothing stays frozen after a test."""
    yield
    gc.unfreeze()


def test_cyclic_garbage_made_before_a_settle_is_collected_not_frozen() -> None:
    a, b = Node(), Node()
    a.other, b.other = b, a
    dead = weakref.ref(a)
    del a, b
    gcpolicy.settle()
    assert dead() is None


def test_live_objects_are_frozen_and_still_freed_by_reference_counting() -> None:
    gc.unfreeze()
    live = Node()
    alive = weakref.ref(live)
    gcpolicy.settle()
    assert gc.get_freeze_count() > 0
    assert gc.is_tracked(live) and alive() is live
    del live  # no cycle: reference counting frees it although it is frozen
    assert alive() is None


def test_watch_times_every_collection_until_removed() -> None:
    pauses: list[float] = []
    callback = gcpolicy.watch(pauses.append)
    try:
        gc.collect(0)
        gc.collect(2)
    finally:
        gc.callbacks.remove(callback)
    assert len(pauses) == 2 and all(p >= 0.0 for p in pauses)
    gc.collect(0)
    assert len(pauses) == 2
