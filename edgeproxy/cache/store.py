"""The in-memory object store: a byte-bounded LRU of cache entries, with purge indexes and generations.

Rules kept here:
- The byte bound holds at every moment: ``put`` evicts least-recently-used entries *before* it
  inserts, a capacity shrink evicts at once, and an entry larger than ``max_object_size`` or than
  the whole capacity is refused. Each entry is charged ``entry.size`` (head + body + the per-entry
  overhead estimate of cache/entry.py), remembered at insert so a later change cannot skew the sum.
- The store decides nothing about HTTP: freshness, Vary matching and storability are cache/policy.py.
  It keeps what it is given and forgets what it must (evictions, purges).
- A fetch that started before a purge must not put the purged object back (the response may predate
  the change the purge announced). The shell takes a token with ``generation()`` when a fetch starts
  and passes it to ``put(entry, since=token)``.
Pure: no I/O, no clock, no asyncio; ``now`` is an argument.

Design and trade-offs (Varnish style):
- LRU per *entry*, not per primary key: one ``OrderedDict`` keyed by the Entry itself (identity
  hash, Entry has ``eq=False``), so a rarely used variant (a stray Accept-Language) ages out on its
  own while the popular one stays. The hit path is ``get`` (a dict lookup and a list copy) plus
  ``touch`` (one ``move_to_end``, plus a list reorder only when the hit is not already the newest
  variant): about 0.18 us together (get 0.09 + touch 0.09) with 100k entries on the 2-core dev box,
  by timeit, and 0.23 us at a million entries (benchmarks/purge_bench.py).
- Variants of a key live in a plain list in LRU order, not a dict by variant key: a list of one
  costs 64 bytes against ~220 for a dict, most keys have one variant, and ``max_variants`` (default
  32) keeps the linear scans short. The cap evicts the least recently used variant of that key, so
  a flood of hostile Vary values churns only its own key and cannot push a busy variant out first.
- Eviction is strict LRU from the global list, not sampled (Redis) nor segmented (SLRU/TinyLFU):
  O(1) and predictable, at the price of no scan resistance (a crawl of cold URLs can flush the hot
  set; an admission filter would be the next step if that shows up in hit ratios).
- Purge generations: every purge bumps a counter and is logged with its selector in a deque of
  ``purge_log`` records. ``put(since=t)`` checks the entry against the records newer than ``t``
  with ``Selector.matches``; if the log has already dropped a record newer than ``t`` the put is
  refused, which is safe (a miss) and only happens to fetches slower than ``purge_log`` purges.
  The cost is one comparison per put when no purge happened during the fetch.
- Soft purge marks ``invalidated`` and keeps the bytes (the policy revalidates or serves under
  stale-if-error); hard purge frees them. Both count every matching entry. A purge runs in one call:
  at a million entries (benchmarks/purge_bench.py) a URL or a tag costs microseconds, but a prefix
  holding 100k entries ~0.1 s soft and ~0.25 s hard, which the shell's event loop spends not serving.
  Hard prefix and host purges take their keys out of the sorted index in slices, not one by one.
- A purge that visits every key (a regex, a soft "all": cache/purge.py ``walks``) can also be applied in steps,
  which the shell (edgeproxy/purging.py) drives off its event loop: ``announce`` logs it (from then on a fetch
  that started before it cannot store what it matches), ``scan`` hands out keys in sorted order after a
  position (a walk that survives puts and evictions between steps), and ``purge_scanned`` purges every variant
  of the keys that matched. Variants stored between the announce and their key's step are purged too: a miss,
  never a stale hit.
- ``put`` counts its own refusals in ``not_stored`` ("too-large", "purged-during-fetch"); the shell
  counts the policy's reasons with ``count_not_stored``.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from edgeproxy.cache.entry import Entry
from edgeproxy.cache.purge import (
    PurgeAll,
    PurgeHost,
    PurgeIndex,
    PurgePrefix,
    PurgeRegex,
    PurgeTag,
    PurgeURL,
    Selector,
    may_match,
    walks,
)

TOO_LARGE = "too-large"
PURGED_DURING_FETCH = "purged-during-fetch"


@dataclass(slots=True)
class StoreStats:
    """A snapshot of the store's counters (gauges: entries, bytes, capacity; the rest only grow)."""

    entries: int
    bytes: int
    capacity: int
    hits: int = 0  # get() calls that found variants (the policy may still not use them)
    misses: int = 0
    evictions: int = 0
    inserts: int = 0
    purged: int = 0
    not_stored: dict[str, int] = field(default_factory=dict)
    last_purge_at: float | None = None  # epoch seconds of the latest purge, None before any


class Storage(Protocol):
    """What the shell and the policy need from any storage backend (tests/unit/test_store.py's
    ``StorageContract`` is the suite every implementation must pass)."""

    # timeit, 100k entries, 2-core dev box: get 0.09 us, touch 0.09 us (see the module docstring).
    def get(self, primary_key: str) -> list[Entry]: ...
    def touch(self, entry: Entry) -> bool: ...
    def put(self, entry: Entry, since: int | None = None) -> bool: ...
    def remove(self, entry: Entry) -> bool: ...
    def invalidate(self, entry: Entry) -> bool: ...
    def purge(self, selector: Selector, soft: bool = False, now: float = 0.0) -> int: ...
    def walks(self, selector: Selector, soft: bool) -> bool: ...
    def announce(self, selector: Selector, now: float) -> None: ...
    def scan(self, position: Any, limit: int) -> tuple[list[tuple[str, Any]], Any]: ...
    def purge_scanned(self, found: list[tuple[str, Any]], soft: bool) -> int: ...
    def claim(self, entry: Entry, now: float, hold: float) -> bool: ...
    def release(self, entry: Entry) -> None: ...
    def generation(self) -> int: ...
    def count_not_stored(self, reason: str) -> None: ...
    def stats(self) -> StoreStats: ...
    def holds(self, entry: Entry) -> bool: ...
    def variants(self, primary_key: str) -> list[Entry]: ...
    def watch_drops(self, dropped: Callable[[Entry | None], None]) -> None: ...


class _PurgeRecord(NamedTuple):
    generation: int
    selector: Selector


class Store:
    """Byte-bounded LRU of entries, several variants per primary key."""

    def __init__(
        self,
        capacity: int,
        max_object_size: int | None = None,
        max_variants: int = 32,
        purge_log: int = 1024,
    ) -> None:
        if capacity < 0 or max_variants < 1 or purge_log < 1:
            raise ValueError("capacity must be >= 0, max_variants and purge_log >= 1")
        self._capacity = capacity
        self.max_object_size = capacity if max_object_size is None else max_object_size
        self.max_variants = max_variants  # lowering it applies to the next put of each key
        self._lru: OrderedDict[Entry, int] = OrderedDict()  # entry -> bytes charged, oldest first
        # Told of every entry this store forgets (None: all of them), so that nothing outside it (the fast lane's
        # table, proxy/lane.py) keeps an entry's bytes past the store's bound.
        self._dropped: Callable[[Entry | None], None] | None = None
        self._map: dict[str, list[Entry]] = {}  # primary key -> variants, least recent first
        self._index = PurgeIndex()
        self._used = 0
        self._hits = 0
        self._misses = 0
        self._evictions = 0
        self._inserts = 0
        self._purged = 0
        self._not_stored: dict[str, int] = {}
        self._generation = 0
        self._log: deque[_PurgeRecord] = deque(maxlen=purge_log)
        self._last_purge_at: float | None = None

    # -- hit path --------------------------------------------------------------------------------

    # timeit, 100k entries, 2-core dev box: get 0.09 us, touch 0.09 us (see the module docstring).
    def get(self, primary_key: str) -> list[Entry]:
        """The stored variants of ``primary_key`` (a copy; empty when none). Does not touch."""
        variants = self._map.get(primary_key)
        if variants:
            self._hits += 1
            return variants.copy()
        self._misses += 1
        return []

    def touch(self, entry: Entry) -> bool:
        """Mark ``entry`` most recently used; False (and nothing done) if it was evicted or purged meanwhile."""
        try:
            self._lru.move_to_end(entry)
        except KeyError:
            return False
        variants = self._map[entry.primary_key]
        if variants[-1] is not entry:
            variants.remove(entry)
            variants.append(entry)
        return True

    # -- storing ---------------------------------------------------------------------------------

    def put(self, entry: Entry, since: int | None = None) -> bool:
        """Store ``entry``, replacing the same (primary key, variant key); evict first so the bound
        always holds. Refused (False) when too large or purged after generation ``since``."""
        size = entry.size
        if size <= 0:
            raise ValueError(f"entry.size must be positive, got {size} for {entry.primary_key}")
        if entry.primary_key.partition("://")[2].partition("?")[0] != entry.host + entry.path.partition("?")[0]:
            # The indexes and the selectors' matches() read host and target from the key, entry.host too: they
            # must agree. Only the query may differ: a site's query mode (sort, ignore) shapes the key's.
            raise ValueError(f"entry key {entry.primary_key!r} disagrees with host and path")
        if size > self.max_object_size or size > self._capacity:
            return self._refuse(TOO_LARGE)
        if since is not None and self._purged_since(entry, since):
            return self._refuse(PURGED_DURING_FETCH)
        key = entry.primary_key
        variants = self._map.get(key, [])
        same = next((v for v in variants if v.variant_key == entry.variant_key), None)
        if same is not None:
            self._drop(same)  # a replacement, not an eviction
        elif len(variants) >= self.max_variants:
            self._evict(variants[0])
        while self._used + size > self._capacity:
            self._evict(next(iter(self._lru)))
        self._lru[entry] = size
        variants = self._map.get(key)
        if variants is None:
            self._map[key] = [entry]
            self._index.add_key(key, entry.host)
        else:
            for v in variants:  # a request may now match both: the full path picks by date (policy.select)
                v.superseded = True
            variants.append(entry)
        self._index.add_tags(entry)
        self._used += size
        self._inserts += 1
        return True

    def remove(self, entry: Entry) -> bool:
        """Forget ``entry`` if this very object is stored (not a replacement of it)."""
        if entry not in self._lru:
            return False
        self._drop(entry)
        return True

    def invalidate(self, entry: Entry) -> bool:
        """Mark ``entry`` stale (RFC 9111 §4.4: validate before reuse); False when it is no longer stored."""
        entry.invalidated = True
        return entry in self._lru

    def claim(self, entry: Entry, now: float, hold: float) -> bool:
        """Whether this process may revalidate ``entry`` in the background: always, one process holds this store
        (the shell keeps one revalidation per key; a shared store also keeps one per host)."""
        return True

    def release(self, entry: Entry) -> None:
        pass

    def count_not_stored(self, reason: str) -> None:
        self._not_stored[reason] = self._not_stored.get(reason, 0) + 1

    def _refuse(self, reason: str) -> bool:
        self.count_not_stored(reason)
        return False

    def _evict(self, entry: Entry) -> None:
        self._drop(entry)
        self._evictions += 1

    def _drop(self, entry: Entry) -> None:
        self._unlink(entry)
        key = entry.primary_key
        variants = self._map[key]
        variants.remove(entry)
        if not variants:
            del self._map[key]
            self._index.discard_key(key, entry.host)

    def _unlink(self, entry: Entry) -> None:
        """The LRU, byte and tag side of forgetting an entry; the caller handles its key."""
        self._used -= self._lru.pop(entry)
        self._index.discard_tags(entry)
        if self._dropped is not None:
            self._dropped(entry)

    def holds(self, entry: Entry) -> bool:
        """Whether this very object is stored here (not a copy of it, nor a replacement)."""
        return entry in self._lru

    def variants(self, primary_key: str) -> list[Entry]:
        """The variants of a URL this process holds, without counting a lookup (the fast lane's second look, not a
        client's request); don't change the list."""
        return self._map.get(primary_key, [])

    def watch_drops(self, dropped: Callable[[Entry | None], None]) -> None:
        self._dropped = dropped

    # -- size ------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._lru)

    @property
    def bytes_used(self) -> int:
        return self._used

    @property
    def capacity(self) -> int:
        return self._capacity

    @capacity.setter
    def capacity(self, value: int) -> None:
        """Config reload: a shrink evicts least-recently-used entries until the new bound holds."""
        if value < 0:
            raise ValueError(f"capacity must be >= 0, got {value}")
        self._capacity = value
        while self._used > value:
            self._evict(next(iter(self._lru)))

    # -- purge -----------------------------------------------------------------------------------

    def generation(self) -> int:
        """Token for ``put(since=...)``: take it when the fetch that will produce the entry starts."""
        return self._generation

    def purge(self, selector: Selector, soft: bool = False, now: float = 0.0) -> int:
        """Invalidate (soft) or remove (hard) every entry ``selector`` matches; the count affected.
        Logged so that fetches in flight cannot store a purged object afterwards."""
        self.announce(selector, now)
        if not soft:
            match selector:
                case PurgeAll():
                    return self._clear()
                case PurgePrefix(prefix=prefix, host=host):
                    return self._drop_keys(self._index.take_keys_with_prefix(prefix, host))
                case PurgeHost(host=host):
                    return self._drop_keys(self._index.take_keys_with_prefix("/", host))
        found = self._select(selector)
        for entry in found:
            if soft:
                entry.invalidated = True
            else:
                self._drop(entry)
        self._purged += len(found)
        return len(found)

    def walks(self, selector: Selector, soft: bool) -> bool:
        """Whether purging ``selector`` visits every key (then the shell applies it in steps: see the docstring)."""
        return walks(selector, soft)

    def announce(self, selector: Selector, now: float) -> None:
        """Log a purge: from now on a fetch that started before it cannot store an entry it matches."""
        self._generation += 1
        self._log.append(_PurgeRecord(self._generation, selector))
        self._last_purge_at = now

    def scan(self, position: str | None, limit: int) -> tuple[list[tuple[str, str]], str | None]:
        """Up to ``limit`` (key, key) pairs after ``position`` (None: from the first), and the next position (None
        once every key was handed out)."""
        keys = self._index.keys_after(position, limit)
        return [(k, k) for k in keys], keys[-1] if len(keys) == limit else None

    def purge_scanned(self, found: list[tuple[str, str]], soft: bool) -> int:
        """Purge every variant stored now under the keys of ``found`` (pairs ``scan`` gave that matched)."""
        count = 0
        for key, _ in found:
            variants = self._map.get(key)
            if not variants:
                continue  # evicted or purged since the scan
            if soft:
                for entry in variants:
                    entry.invalidated = True
                count += len(variants)
                self._purged += len(variants)
            else:
                self._index.discard_key(key, variants[0].host)
                count += self._drop_keys([key])
        return count

    def _select(self, selector: Selector) -> list[Entry]:
        match selector:
            case PurgeURL(url=url):
                return self._map.get(url, []).copy()
            case PurgePrefix(prefix=prefix, host=host):
                return self._variants(self._index.keys_with_prefix(prefix, host))
            case PurgeHost(host=host):
                return self._variants(self._index.keys_with_prefix("/", host))
            case PurgeTag(tags=tags):
                return self._index.by_tags(tags)
            case PurgeRegex(compiled=compiled):
                return [e for key, vs in self._map.items() if compiled.search(key) for e in vs]
            case PurgeAll():
                return list(self._lru)
        raise TypeError(f"not a purge selector: {selector!r}")

    def _variants(self, keys: list[str]) -> list[Entry]:
        return [e for key in keys for e in self._map[key]]

    def _drop_keys(self, keys: list[str]) -> int:
        """Hard purge of whole keys the index has already forgotten: no per-key sorted removal."""
        count = 0
        for key in keys:
            for entry in self._map.pop(key):
                self._unlink(entry)
                count += 1
        self._purged += count
        return count

    def _clear(self) -> int:
        count = len(self._lru)
        if self._dropped is not None:
            self._dropped(None)
        self._lru.clear()
        self._map.clear()
        self._index.clear()
        self._used = 0
        self._purged += count
        return count

    def _purged_since(self, entry: Entry, since: int) -> bool:
        if since >= self._generation:
            return False
        log = self._log
        if not log or log[0].generation > since + 1:
            return True  # a purge newer than the token fell off the log: refuse rather than guess
        for record in reversed(log):
            if record.generation <= since:
                return False
            if may_match(record.selector, entry):
                return True
        return False

    def stats(self) -> StoreStats:
        return StoreStats(
            entries=len(self._lru),
            bytes=self._used,
            capacity=self._capacity,
            hits=self._hits,
            misses=self._misses,
            evictions=self._evictions,
            inserts=self._inserts,
            purged=self._purged,
            not_stored=dict(self._not_stored),
            last_purge_at=self._last_purge_at,
        )
