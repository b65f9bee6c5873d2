"""A worker's cache: a small in-process hot tier (cache/store.py's LRU) in front of the host's shared store.

Rules kept here:
- The shared store is the truth; the hot tier keeps copies, so a hot hit costs what a hit cost before the store
  was shared (a dict lookup) plus one version check per variant in the slot map (shared/slotmap.py).
- A key's hot variants are used only while every one of them is still the current version of its slot: a
  replacement, eviction, purge, soft purge or invalidation anywhere on the host gives the slot a new version, and
  a variant added anywhere gives its siblings new ones. Otherwise the key is read from the shared store again and
  its copies replace the hot ones, so a hot list is never missing a variant the shared store has.
- Admission: a copy enters the hot tier when it is read from the shared store and its slot's read counter shows it
  was read before (the S3-FIFO counter doubles as a doorkeeper), so one-hit wonders and a long tail read once don't
  churn the small hot LRU (each refill costs an insert and an eviction there). What this worker stores goes to the
  shared store only, for the same reason. A purge goes to the shared store
  (which retires the versions) and drops the hot copies it finds here, to give their bytes back at once.
- ``touch`` counts the read for S3-FIFO in the slot map and keeps the hot LRU in order; it is False (the fast lane
  drops what it published) when the copy is no longer current.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from edgeproxy.cache.entry import Entry
from edgeproxy.cache.purge import Selector
from edgeproxy.cache.store import Store, StoreStats
from edgeproxy.shared.store import SharedStore

HOT_ADMIT = 2  # reads counted in the slot map before a copy is kept hot


class TieredStore:
    """``Storage`` for a worker: ``hot`` (this process) over ``shared`` (the host)."""

    def __init__(self, shared: SharedStore, hot_capacity: int, max_object_size: int, max_variants: int = 32) -> None:
        self.shared = shared
        self.hot = Store(hot_capacity, min(max_object_size, hot_capacity), max_variants)
        self._versions = shared.slotmap.versions
        self._slotmap = shared.slotmap
        self._freqs = shared.slotmap.freqs
        self.hot_hits = 0

    # -- hit path --------------------------------------------------------------------------------------

    def get(self, primary_key: str) -> list[Entry]:
        variants = self.hot.get(primary_key)
        if variants:
            versions = self._versions
            for entry in variants:
                if versions[entry.slot] != entry.version:
                    break
            else:
                self.hot_hits += 1
                return variants
            for entry in variants:
                self.hot.remove(entry)
        found = self.shared.get(primary_key)
        freqs = self._slotmap.freqs
        if found and all(freqs[e.slot] >= HOT_ADMIT for e in found):  # read before: worth a place in the hot tier
            for entry in found:
                self.hot.put(entry)
        return found

    def touch(self, entry: Entry) -> bool:
        slot = entry.slot  # SlotMap.hit, inlined: this runs on every hit, the fast lane's included
        if self._versions[slot] != entry.version:
            return False
        freqs = self._freqs
        if freqs[slot] < 3:
            freqs[slot] += 1
        return self.hot.touch(entry)

    # -- storing ---------------------------------------------------------------------------------------

    def put(self, entry: Entry, since: int | None = None) -> bool:
        # Not kept hot yet: like a copy read once, it earns its place when it is read again (many never are).
        return self.shared.put(entry, since)

    def remove(self, entry: Entry) -> bool:
        self.hot.remove(entry)
        return self.shared.remove(entry)

    def invalidate(self, entry: Entry) -> bool:
        self.hot.remove(entry)
        return self.shared.invalidate(entry)

    def purge(self, selector: Selector, soft: bool = False, now: float = 0.0) -> int:
        count = self.shared.purge(selector, soft, now)
        self.hot.purge(selector, soft=False, now=now)
        return count

    def walks(self, selector: Selector, soft: bool) -> bool:
        return self.shared.walks(selector, soft)

    def announce(self, selector: Selector, now: float) -> None:
        self.shared.announce(selector, now)

    def scan(self, position: Any, limit: int) -> tuple[list[tuple[str, Any]], Any]:
        return self.shared.scan(position, limit)

    def purge_scanned(self, found: list[tuple[str, Any]], soft: bool) -> int:
        count = self.shared.purge_scanned(found, soft)
        self.hot.purge_scanned([(key, key) for key, _ in found], soft=False)
        return count

    def claim(self, entry: Entry, now: float, hold: float) -> bool:
        return self.shared.claim(entry, now, hold)

    def release(self, entry: Entry) -> None:
        self.shared.release(entry)

    def generation(self) -> int:
        return self.shared.generation()

    def count_not_stored(self, reason: str) -> None:
        self.shared.count_not_stored(reason)

    # -- size and figures ------------------------------------------------------------------------------

    @property
    def capacity(self) -> int:
        return self.shared.capacity

    @property
    def max_object_size(self) -> int:
        return self.shared.max_object_size

    @max_object_size.setter
    def max_object_size(self, value: int) -> None:
        self.shared.max_object_size = value
        self.hot.max_object_size = min(value, self.hot.capacity)

    @property
    def max_variants(self) -> int:
        return self.shared.max_variants

    @max_variants.setter
    def max_variants(self, value: int) -> None:
        self.shared.max_variants = self.hot.max_variants = value

    def holds(self, entry: Entry) -> bool:
        """Whether this copy is kept in the hot tier (what this process holds; a copy read from the shared store and
        not admitted is nobody's)."""
        return self.hot.holds(entry)

    def variants(self, primary_key: str) -> list[Entry]:
        """The hot copies of a URL's variants while every one is current (a hot list is then never missing a variant
        the shared store has: a variant added anywhere gives its siblings new versions), else none."""
        variants = self.hot.variants(primary_key)
        versions = self._versions
        return variants if all(versions[e.slot] == e.version for e in variants) else []

    def watch_drops(self, dropped: Callable[[Entry | None], None]) -> None:
        self.hot.watch_drops(dropped)

    def stats(self) -> StoreStats:
        """The shared store's figures (one store, not a sum of copies) with this process's reads."""
        stats = self.shared.stats()
        stats.hits += self.hot_hits
        return stats

    def close(self) -> None:
        self.shared.close()
