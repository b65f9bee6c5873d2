"""S3-FIFO eviction (Yang et al., SOSP 2023): which stored object to drop next, with no write on a hit.

Rules kept here:
- Three FIFO queues: ``SMALL`` takes new objects, ``MAIN`` the ones that proved themselves, and a ghost remembers
  (identities only, no bytes) what ``SMALL`` dropped unread, so that an object coming back soon after skips ``SMALL``.
- A hit only raises the object's counter (``Queues.freq``, saturating at ``MAX_FREQ``): nothing is reordered, so
  a hit costs one byte written outside the store, never a store transaction. The counter lives where the backend
  puts it (cache/shared's slot map, or a dict in ``MemoryQueues``).
- Evicting from ``SMALL`` (while it holds more than ``small_share`` of the bytes): an object read at least
  ``promote`` times moves to ``MAIN``, else it is dropped and its identity goes to the ghost. Evicting from
  ``MAIN``: an object read since it was last looked at goes back to the head with its counter lowered (a
  CLOCK-like second chance), else it is dropped. A scan of one-hit wonders therefore churns ``SMALL`` only.
- The algorithm is written once, over the ``Queues`` protocol: the shared LMDB store keeps its queues as tables
  inside its own transactions, ``MemoryQueues`` keeps them in memory (tests, and the miss-ratio simulation in
  benchmarks/missratio.py, which thus measures this very code).
Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import Protocol

SMALL = 0
MAIN = 1
MAX_FREQ = 3
SMALL_SHARE = 0.1  # the paper's default: 10% of the cache for the probation queue
PROMOTE = 1  # reads in SMALL that earn a place in MAIN


class Queues(Protocol):
    """The state S3-FIFO works on. Slots name stored objects; the backend knows each slot's size and identity."""

    def size(self, queue: int) -> int: ...  # bytes charged by the objects in ``queue``
    def push(self, queue: int, slot: int) -> None: ...  # at the head (newest end)
    def pop_oldest(self, queue: int) -> int: ...  # take the tail; only called when ``size(queue) > 0``
    def freq(self, slot: int) -> int: ...
    def set_freq(self, slot: int, value: int) -> None: ...
    def forget_into_ghost(self, slot: int) -> None: ...  # the slot is being evicted unread: remember its identity
    def recall(self, identity: bytes) -> bool: ...  # was ``identity`` in the ghost? (and forget it there)


def queue_for(queues: Queues, identity: bytes) -> int:
    """Where a newly stored object starts: ``MAIN`` if the ghost remembers it (it came back soon), else ``SMALL``."""
    return MAIN if queues.recall(identity) else SMALL


def next_victim(queues: Queues, capacity: int, small_share: float = SMALL_SHARE, promote: int = PROMOTE
                ) -> int | None:
    """The slot to evict now, already taken off its queue (None when both queues are empty). Survivors it passes
    over are moved (``SMALL`` to ``MAIN``) or given their second chance (``MAIN`` head, counter lowered)."""
    while True:
        small, main = queues.size(SMALL), queues.size(MAIN)
        if small and (small > capacity * small_share or not main):
            slot = queues.pop_oldest(SMALL)
            if queues.freq(slot) >= promote:
                queues.push(MAIN, slot)
                continue
            queues.forget_into_ghost(slot)
            return slot
        if not main:
            return None
        slot = queues.pop_oldest(MAIN)
        freq = queues.freq(slot)
        if freq:
            queues.set_freq(slot, freq - 1)
            queues.push(MAIN, slot)
            continue
        return slot


class MemoryQueues:
    """``Queues`` in process memory. The ghost holds as many identities as ``MAIN`` holds objects (the paper's
    choice), at least ``min_ghost``."""

    def __init__(self, min_ghost: int = 64) -> None:
        self.queues: tuple[deque[int], deque[int]] = (deque(), deque())
        self.bytes = [0, 0]
        self.where: dict[int, int] = {}  # slot -> queue
        self.sizes: dict[int, int] = {}
        self.identities: dict[int, bytes] = {}
        self.counts: dict[int, int] = {}
        self.ghost: OrderedDict[bytes, None] = OrderedDict()
        self.min_ghost = min_ghost

    # -- the backend's side: objects come and go -------------------------------------------------------

    def add(self, slot: int, size: int, identity: bytes) -> None:
        """A new object: into the queue S3-FIFO picks for it, counter zero."""
        self.sizes[slot], self.identities[slot], self.counts[slot] = size, identity, 0
        self.push(queue_for(self, identity), slot)

    def hit(self, slot: int) -> None:
        self.counts[slot] = min(self.counts[slot] + 1, MAX_FREQ)

    def discard(self, slot: int) -> None:
        """An object removed for another reason (replaced, purged): out of its queue, not into the ghost."""
        queue = self.where.pop(slot)
        self.queues[queue].remove(slot)
        self.bytes[queue] -= self.sizes[slot]
        self._drop(slot)

    def evicted(self, slot: int) -> None:
        """``next_victim`` took ``slot`` off its queue: forget the rest of it."""
        self._drop(slot)

    def _drop(self, slot: int) -> None:
        del self.sizes[slot], self.identities[slot], self.counts[slot]

    # -- Queues ----------------------------------------------------------------------------------------

    def size(self, queue: int) -> int:
        return self.bytes[queue]

    def push(self, queue: int, slot: int) -> None:
        self.queues[queue].append(slot)
        self.bytes[queue] += self.sizes[slot]
        self.where[slot] = queue

    def pop_oldest(self, queue: int) -> int:
        slot = self.queues[queue].popleft()
        self.bytes[queue] -= self.sizes[slot]
        del self.where[slot]
        return slot

    def freq(self, slot: int) -> int:
        return self.counts[slot]

    def set_freq(self, slot: int, value: int) -> None:
        self.counts[slot] = value

    def forget_into_ghost(self, slot: int) -> None:
        ghost = self.ghost
        ghost[self.identities[slot]] = None
        while len(ghost) > max(self.min_ghost, len(self.queues[MAIN])):
            ghost.popitem(last=False)

    def recall(self, identity: bytes) -> bool:
        return self.ghost.pop(identity, 0) is None
