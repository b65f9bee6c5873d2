"""One write transaction of the shared store: what a put, a purge or an eviction changes, and S3-FIFO's queues
over the store's tables (cache/s3fifo.py's ``Queues``).

Rules kept here:
- Everything happens inside the caller's LMDB write transaction: the byte count, the queues and the objects change
  together or not at all (a writer that dies is rolled back).
- Versions changed are collected and published to the slot map only after the commit (``publish``): see
  shared/store.py for why that order makes hot copies safe.
"""

from __future__ import annotations

from typing import Any, Protocol

import lmdb

from edgeproxy.cache import s3fifo
from edgeproxy.cache.codec import decode_selector, encode_selector
from edgeproxy.cache.entry import Entry
from edgeproxy.cache.purge import PurgeAll, PurgeHost, PurgePrefix, PurgeTag, PurgeURL, Selector, may_match
from edgeproxy.cache.store import PURGED_DURING_FETCH, TOO_LARGE
from edgeproxy.shared.records import KEY_KEEP, U32, U64, Place, Probe, State, db_key, identity, slot_key
from edgeproxy.shared.slotmap import SlotMap

MAP_FULL = "map-full"


class Tables(Protocol):
    """What a transaction needs of the store (shared/store.py's SharedStore): its tables, its slot map, its state."""

    objects: Any
    places: Any
    keys: Any
    tags: Any
    queues: tuple[Any, Any]
    ghost: Any
    ghostq: Any
    free: Any
    purges: Any
    leases: Any
    slotmap: SlotMap

    def read_state(self, txn: lmdb.Transaction) -> State: ...
    def save_state(self, txn: lmdb.Transaction, state: State) -> None: ...


class Write:
    """One write transaction's work: S3-FIFO's ``Queues`` over the tables, and what a put, a purge or an eviction
    changes. Versions to publish are collected and written to the slot map after the commit (``publish``)."""

    def __init__(self, store: Tables, txn: lmdb.Transaction) -> None:
        self.store = store
        self.txn = txn
        self.state = store.read_state(txn)
        self._places: dict[int, Place] = {}
        self._dirty: set[int] = set()
        self._published: dict[int, int] = {}  # slot -> version, for the slot map
        self._fresh: set[int] = set()  # slots taken by a new object in this transaction: counter to zero
        self._dropped: int | None = None  # drop_all's version: every slot is retired at it

    # -- bookkeeping -----------------------------------------------------------------------------------

    def place(self, slot: int) -> Place:
        found = self._places.get(slot)
        if found is None:
            found = self._places[slot] = Place.unpack(self.txn.get(slot_key(slot), db=self.store.places))
        return found

    def _new_version(self, slot: int) -> int:
        self.state.version += 1
        self._published[slot] = self.state.version
        return self.state.version

    def _bump(self, slot: int) -> None:
        self.place(slot).version = self._new_version(slot)
        self._dirty.add(slot)

    def finish(self) -> None:
        places, txn = self.store.places, self.txn
        for slot in sorted(self._dirty):
            txn.put(slot_key(slot), self._places[slot].pack(), db=places)
        self.store.save_state(txn, self.state)

    def publish(self) -> None:
        """The versions this transaction gave its slots, into the slot map. Only ever forward: versions grow with
        each commit, so one that is not newer than the map's was committed before a writer that already published
        (writer B commits, C changes the same slot and publishes, then B's publish comes): writing it would make a
        copy of what C replaced current again."""
        slotmap = self.store.slotmap
        versions = slotmap.versions
        if self._dropped is not None:
            slotmap.retire_all(self._dropped)
        for slot, version in self._published.items():
            if version <= versions[slot]:
                continue
            if slot in self._fresh:
                slotmap.reset(slot, version)
            else:
                versions[slot] = version

    # -- Queues (cache/s3fifo.py) ----------------------------------------------------------------------

    def size(self, queue: int) -> int:
        return self.state.small_bytes if queue == s3fifo.SMALL else self.state.main_bytes

    def _account(self, queue: int, charge: int, count: int) -> None:
        if queue == s3fifo.SMALL:
            self.state.small_bytes += charge
            self.state.small_count += count
        else:
            self.state.main_bytes += charge
            self.state.main_count += count

    def push(self, queue: int, slot: int) -> None:
        place = self.place(slot)
        self.state.seq += 1
        place.queue, place.seq = queue, self.state.seq
        # Sequences only grow: appended, so the queue tables' pages fill.
        self.txn.put(U64.pack(place.seq), slot_key(slot), db=self.store.queues[queue], append=True)
        self._account(queue, place.charge, 1)
        self._dirty.add(slot)

    def pop_oldest(self, queue: int) -> int:
        cursor = self.txn.cursor(self.store.queues[queue])
        cursor.first()
        slot = U32.unpack(cursor.value())[0]
        cursor.delete()
        place = self.place(slot)
        self._account(queue, -place.charge, -1)
        place.queue = -1
        self._dirty.add(slot)
        return slot

    def freq(self, slot: int) -> int:
        return self.store.slotmap.freqs[slot]

    def set_freq(self, slot: int, value: int) -> None:
        self.store.slotmap.freqs[slot] = value

    def forget_into_ghost(self, slot: int) -> None:
        ident, txn, store = self.place(slot).ident, self.txn, self.store
        self.recall(ident)  # at most once in the ghost
        self.state.seq += 1
        seq = U64.pack(self.state.seq)
        txn.put(ident, seq, db=store.ghost)
        txn.put(seq, ident, db=store.ghostq, append=True)
        self.state.ghosts += 1
        cursor = txn.cursor(store.ghostq)
        while self.state.ghosts > max(64, self.state.main_count) and cursor.first():
            txn.delete(bytes(cursor.value()), db=store.ghost)
            cursor.delete()
            self.state.ghosts -= 1

    def recall(self, ident: bytes) -> bool:
        seq = self.txn.pop(ident, db=self.store.ghost)
        if seq is None:
            return False
        self.txn.delete(seq, db=self.store.ghostq)
        self.state.ghosts -= 1
        return True

    # -- objects ---------------------------------------------------------------------------------------

    def _slots_of(self, dbkey: bytes, db: Any) -> list[int]:
        cursor = self.txn.cursor(db)
        if not cursor.set_key(dbkey):
            return []
        return [U32.unpack(v)[0] for v in cursor.iternext_dup()]

    def _variants(self, key: str) -> list[int]:
        return [s for s in self._slots_of(db_key(key), self.store.keys) if self.place(s).key == key]

    def _take_slot(self) -> tuple[int, bool] | None:
        """A free slot, lowest first (its page had room for the object that left it), else a new one past every
        other: then True, and the object is appended (LMDB's append mode fills pages; a plain put past the end splits
        the last page in the middle and leaves every page of a growing table half empty)."""
        cursor = self.txn.cursor(self.store.free)
        if cursor.first():
            slot = U32.unpack(cursor.key())[0]
            cursor.delete()
            return slot, False
        if self.state.next_slot < self.store.slotmap.slots:
            self.state.next_slot += 1
            return self.state.next_slot - 1, True
        return None

    def remove(self, slot: int) -> None:
        """Forget the object in ``slot`` everywhere (its queue record too, unless ``next_victim`` took it)."""
        place, txn, store = self.place(slot), self.txn, self.store
        key = slot_key(slot)
        if place.queue >= 0:
            txn.delete(U64.pack(place.seq), db=store.queues[place.queue])
            self._account(place.queue, -place.charge, -1)
        txn.delete(db_key(place.key), key, db=store.keys)
        for tag in place.tags:
            txn.delete(db_key(tag), key, db=store.tags)
        txn.delete(key, db=store.objects)
        txn.delete(key, db=store.places)
        txn.put(key, b"", db=store.free)
        self.state.used -= place.charge
        self.state.entries -= 1
        self._new_version(slot)
        self._fresh.add(slot)
        del self._places[slot]
        self._dirty.discard(slot)

    def evict_one(self) -> bool:
        slot = s3fifo.next_victim(self, self.state.capacity)
        if slot is None:
            return False
        self.remove(slot)
        self.state.evictions += 1
        return True

    def evict_until(self, target: int) -> None:
        while self.state.used > target and self.evict_one():
            pass

    def set_capacity(self, value: int) -> None:
        self.state.capacity = value
        self.evict_until(value)

    def put(self, entry: Entry, encoded: bytes, since: int | None, max_variants: int) -> str | None:
        """Store ``entry``; the reason it was refused, or None."""
        state, txn, store = self.state, self.txn, self.store
        if entry.size > state.capacity:
            return TOO_LARGE
        if since is not None and self._purged_since(entry, since):
            return PURGED_DURING_FETCH
        ident = identity(entry)
        siblings = self._variants(entry.primary_key)
        same = next((s for s in siblings if self.place(s).ident == ident), None)
        if same is not None:
            self.remove(same)  # a replacement, not an eviction
            siblings.remove(same)
        elif len(siblings) >= max_variants:
            # The variant read least (then the oldest): a flood of hostile Vary values churns only its own key.
            coldest = min(siblings, key=lambda s: (self.freq(s), self.place(s).seq))
            self.remove(coldest)
            siblings.remove(coldest)
            state.evictions += 1
        self.evict_until(state.capacity - entry.size)
        taken = self._take_slot()
        while taken is None and self.evict_one():  # more objects than slots: only tiny objects get here
            taken = self._take_slot()
        if taken is None:
            return MAP_FULL
        slot, past_the_end = taken
        key = slot_key(slot)
        version = self._new_version(slot)
        self._fresh.add(slot)
        place = Place(-1, 0, entry.size, ident, entry.primary_key, tuple(sorted(entry.tags)), version)
        self._places[slot] = place
        txn.put(key, encoded, db=store.objects, append=past_the_end)
        txn.put(db_key(entry.primary_key), key, db=store.keys)
        for tag in place.tags:
            txn.put(db_key(tag), key, db=store.tags)
        self.push(s3fifo.queue_for(self, ident), slot)
        if siblings:  # a new variant (the key's others, less any evicted just now): hot copies must be read again
            for sibling in self._variants(entry.primary_key):
                if sibling != slot:
                    self._bump(sibling)
        state.used += entry.size
        state.entries += 1
        state.inserts += 1
        entry.slot, entry.version = slot, version
        return None

    def remove_version(self, slot: int, version: int) -> bool:
        if self.txn.get(slot_key(slot), db=self.store.places) is None or self.place(slot).version != version:
            return False
        self.remove(slot)
        return True

    def invalidate_version(self, slot: int, version: int) -> bool:
        if self.txn.get(slot_key(slot), db=self.store.places) is None or self.place(slot).version != version:
            return False
        self.place(slot).invalidated = True
        self._bump(slot)
        return True

    # -- purges ----------------------------------------------------------------------------------------

    def announce(self, selector: Selector, now: float, purge_log: int) -> None:
        """Log a purge with its generation: from this commit on, no fetch that started before it stores what it
        matches (``_purged_since``), whichever process fetched."""
        state, txn, store = self.state, self.txn, self.store
        state.generation += 1
        state.last_purge_at = now
        txn.put(U64.pack(state.generation), encode_selector(selector), db=store.purges, append=True)
        if txn.stat(store.purges)["entries"] > purge_log:
            cursor = txn.cursor(store.purges)
            cursor.first()
            cursor.delete()

    def purge(self, selector: Selector, soft: bool, now: float, purge_log: int) -> int:
        self.announce(selector, now, purge_log)
        state = self.state
        if isinstance(selector, PurgeAll) and not soft:
            return self.drop_all(count_purged=True)
        slots = [s for s in self._candidates(selector) if selector.matches(Probe(self.place(s)))]  # type: ignore[arg-type]
        for slot in slots:
            if soft:
                self.place(slot).invalidated = True
                self._bump(slot)
            else:
                self.remove(slot)
        state.purged += len(slots)
        return len(slots)

    def purge_slots(self, found: list[tuple[str, int]], soft: bool) -> int:
        """Purge the objects of ``found`` ((key, slot) pairs a scan matched) that are still there: a slot freed and
        taken by another key since is left alone."""
        count = 0
        for key, slot in found:
            if self.txn.get(slot_key(slot), db=self.store.places) is None or self.place(slot).key != key:
                continue
            if soft:
                self.place(slot).invalidated = True
                self._bump(slot)
            else:
                self.remove(slot)
            count += 1
        self.state.purged += count
        return count

    def _candidates(self, selector: Selector) -> list[int]:
        """Slots that may match: an index lookup where one answers, a scan where none can (regex, all, a prefix
        on every host). The caller checks each with ``matches``, so both always agree."""
        store = self.store
        match selector:
            case PurgeURL(url=url):
                return self._slots_of(db_key(url), store.keys)
            case PurgeTag(tags=tags):
                return sorted({s for tag in tags for s in self._slots_of(db_key(tag), store.tags)})
            case PurgePrefix(prefix=prefix, host=str() as host):
                return [s for scheme in ("http", "https") for s in self._range(f"{scheme}://{host}{prefix}")]
            case PurgeHost(host=host):
                return [s for scheme in ("http", "https") for s in self._range(f"{scheme}://{host}/")]
        return [U32.unpack(k)[0] for k in self.txn.cursor(store.places).iternext(keys=True, values=False)]

    def _range(self, prefix: str) -> list[int]:
        start = prefix.encode("utf-8", "surrogateescape")[:KEY_KEEP]
        cursor = self.txn.cursor(self.store.keys)
        found: list[int] = []
        if cursor.set_range(start):
            for key, value in cursor:
                if not bytes(key).startswith(start):
                    break
                found.append(U32.unpack(value)[0])
        return found

    def _purged_since(self, entry: Entry, since: int) -> bool:
        if since >= self.state.generation:
            return False
        cursor = self.txn.cursor(self.store.purges)
        if not cursor.set_range(U64.pack(since + 1)) or U64.unpack(cursor.key())[0] != since + 1:
            return True  # a purge newer than the token fell off the log: refuse rather than guess
        return any(_may_match(value, entry) for _, value in cursor)

    def drop_all(self, count_purged: bool = False) -> int:
        """Everything out at once (a hard purge of all, or a full map that eviction could not relieve)."""
        state, txn, store = self.state, self.txn, self.store
        count = state.entries
        for db in (store.objects, store.places, store.keys, store.tags, *store.queues, store.ghost, store.ghostq,
                   store.free, store.leases):
            txn.drop(db, delete=False)
        state.used = state.entries = state.next_slot = 0
        state.small_bytes = state.main_bytes = state.small_count = state.main_count = state.ghosts = 0
        if count_purged:
            state.purged += count
        state.version += 1
        self._places.clear()
        self._dirty.clear()
        self._published.clear()
        self._fresh.clear()
        self._dropped = state.version
        return count


def _may_match(encoded: bytes | memoryview, entry: Entry) -> bool:
    """Whether a logged purge may match ``entry``; yes when its record no longer parses (a pattern this version
    refuses, logged by an older one): refusing the put is safe, storing it might not be."""
    try:
        selector = decode_selector(encoded)
    except (ValueError, EOFError, TypeError):
        return True
    return may_match(selector, entry)
