"""The host's shared store: one byte-bounded cache in an LMDB environment that every worker process reads and writes.

Rules kept here:
- LMDB gives what a home-made shared table would have to earn: readers in any number of processes without locks,
  one writer at a time (a robust mutex: a writer killed mid-transaction is rolled back, never half-applied), a
  hard map size, sorted keys (prefix and host purges are range scans) and duplicate-key tables (variants, tags).
- Its rules, kept here: the environment is opened in each process after it started (workers are spawned, never
  forked with an open one), a transaction never spans an ``await`` (every method opens and ends its own), bytes are
  copied out before the transaction ends (``decode_entry`` builds fresh objects), keys longer than ``KEY_KEEP``
  are cut and suffixed with a hash (the full key is kept in the record and checked, so a collision is a miss),
  ``reader_check`` runs when the owner opens the store and after a worker died, and a full map (``MapFullError``)
  evicts harder or, at worst, drops everything: a store that can't take an object never fails a request.
- Eviction is S3-FIFO (cache/s3fifo.py) with its queues as tables of this environment, run by whichever process
  is storing, inside its write transaction: the byte bound holds at every commit, the queues survive restarts with
  the objects, and a hit writes nothing here (its read counter is a byte in the slot map, shared/slotmap.py).
- Every object has a slot (a small integer, reused) and a version (never reused). A change to an object (replaced,
  evicted, purged, soft-purged, invalidated) gives its slot a new version; adding a variant gives its siblings new
  versions too, so that a worker's hot copy of a key's variants (shared/tiered.py) is complete while all its
  versions still match. New versions are published to the slot map after the commit.
- A purge is recorded with its generation (``purges`` table, ``purge_log`` records), so a fetch that started
  before it cannot store what it purged, whichever process fetched (the rule of cache/store.py, host-wide).
- The store's records carry ``FORMAT``; a store of another format, or one LMDB can't open, is dropped and created
  anew by the owner, with one log line.

Tables: ``meta`` (format, state), ``objects`` (slot -> encoded entry), ``place`` (slot -> the small record the
queues, purges and versions need), ``keys`` (key -> slots, dupsort), ``tags`` (tag -> slots, dupsort), ``small`` and
``main`` (sequence -> slot), ``ghost`` and ``ghostq`` (identity <-> sequence), ``free`` (reusable slots),
``purges`` (generation -> selector), ``leases`` (identity -> until: one background revalidation per key per host).
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import marshal
import os
import shutil
import struct
from dataclasses import dataclass
from typing import Any

import lmdb

from edgeproxy.cache import s3fifo
from edgeproxy.cache.codec import FORMAT, decode_entry, decode_selector, encode_entry, encode_selector
from edgeproxy.cache.entry import Entry
from edgeproxy.cache.purge import PurgeAll, PurgeHost, PurgePrefix, PurgeTag, PurgeURL, Selector
from edgeproxy.cache.store import PURGED_DURING_FETCH, TOO_LARGE, StoreStats
from edgeproxy.shared.slotmap import SlotMap

log = logging.getLogger("edgeproxy.shared")

MAP_FULL = "map-full"
KEY_KEEP = 400  # LMDB's key limit is 511 bytes: longer keys keep this much, then a hash
MIN_SLOTS = 4096
# One slot per this many bytes of the byte bound: an object is charged at least ENTRY_OVERHEAD (1.5 KiB), so there are
# more slots than objects; if tiny objects ever use them all up, a put evicts until one is free.
SLOT_BYTES = 1024
MAP_SLACK = 64 * 1024 * 1024
MAP_FACTOR = 3  # the map may hold MAP_FACTOR x the byte bound: B-tree pages are ~60-70% full under churn
EMERGENCY_SHARE = 0.25  # of the capacity, freed at once when the map is full
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_STATE = struct.Struct("<15Qd")
_EMPTY_PURGE_LOG = -1


def map_size_for(capacity: int) -> int:
    return capacity * MAP_FACTOR + MAP_SLACK


def _slot_key(slot: int) -> bytes:
    return _U32.pack(slot)


def db_key(text: str) -> bytes:
    raw = text.encode("utf-8", "surrogateescape")
    if len(raw) <= KEY_KEEP:
        return raw
    return raw[:KEY_KEEP] + b"\x00" + hashlib.blake2b(raw, digest_size=16).digest()


def identity(entry: Entry) -> bytes:
    """What the ghost remembers of an object: its key and variant, hashed."""
    h = hashlib.blake2b(entry.primary_key.encode("utf-8", "surrogateescape"), digest_size=16)
    for part in entry.variant_key:
        h.update(b"\x00" + part)
    return h.digest()


class CacheInUse(OSError):
    """Another process owns the store at this path (like EBUSY: the caller reports it as a start-up failure)."""


@dataclass(slots=True)
class State:
    capacity: int = 0
    used: int = 0
    entries: int = 0
    next_slot: int = 0
    version: int = 1
    generation: int = 0
    seq: int = 0
    small_bytes: int = 0
    main_bytes: int = 0
    small_count: int = 0
    main_count: int = 0
    ghosts: int = 0
    evictions: int = 0
    inserts: int = 0
    purged: int = 0
    last_purge_at: float = 0.0

    def pack(self) -> bytes:
        return _STATE.pack(self.capacity, self.used, self.entries, self.next_slot, self.version, self.generation,
                           self.seq, self.small_bytes, self.main_bytes, self.small_count, self.main_count, self.ghosts,
                           self.evictions, self.inserts, self.purged, self.last_purge_at)

    @classmethod
    def unpack(cls, data: bytes | memoryview) -> State:
        return cls(*_STATE.unpack(data))


@dataclass(slots=True)
class Place:
    """What the store needs of an object without reading it: queue position, charge, identity, keys, version."""

    queue: int  # s3fifo.SMALL or MAIN, -1 while off both (being moved or evicted)
    seq: int
    charge: int
    ident: bytes
    key: str
    tags: tuple[str, ...]
    version: int
    invalidated: bool = False

    def pack(self) -> bytes:
        return marshal.dumps((self.queue, self.seq, self.charge, self.ident, self.key, self.tags, self.version,
                              self.invalidated))

    @classmethod
    def unpack(cls, data: bytes | memoryview) -> Place:
        return cls(*marshal.loads(data))


class _Probe:
    """What ``Selector.matches`` reads of an entry, from a place record."""

    __slots__ = ("primary_key", "host", "tags")

    def __init__(self, place: Place) -> None:
        self.primary_key = place.key
        self.host = place.key.partition("://")[2].partition("/")[0]
        self.tags = frozenset(place.tags)


class SharedStore:
    """``Storage`` over LMDB, shared by the processes of a host. One of them (``owner=True``) creates and checks it;
    the others open what the owner made."""

    def __init__(self, path: str, capacity: int = 0, max_object_size: int | None = None, max_variants: int = 32,
                 purge_log: int = 1024, *, owner: bool = True) -> None:
        self.path = path
        # None: the byte bound alone limits an object (a worker learns the bound from the store, not from here).
        self.max_object_size = max_object_size if max_object_size is not None else capacity or 1 << 62
        self.max_variants = max_variants
        self.purge_log = purge_log
        self.owner = owner
        self._lock_fd: int | None = None
        self._hits = self._misses = 0
        self._not_stored: dict[str, int] = {}
        if owner:
            self._claim()
            self._open_as_owner(capacity)
        else:
            self.slotmap = SlotMap(os.path.join(path, "slots"))
            self._open_env(self.slotmap.map_size)

    # -- opening ---------------------------------------------------------------------------------------

    def _claim(self) -> None:
        os.makedirs(self.path, mode=0o750, exist_ok=True)
        fd = os.open(os.path.join(self.path, "owner.lock"), os.O_RDWR | os.O_CREAT, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise CacheInUse(f"cache path {self.path} is in use by another edgeproxy; give each instance its own "
                             "[cache] path") from None
        self._lock_fd = fd

    def _open_env(self, map_size: int) -> None:
        directory = os.path.join(self.path, "lmdb")
        os.makedirs(directory, mode=0o750, exist_ok=True)  # cached responses: the service's user and group only
        self.env = lmdb.open(
            directory, map_size=map_size, subdir=True, mode=0o640, max_dbs=16, max_readers=1024,
            # A cache: a lost last commit after a power cut costs a miss; LMDB stays consistent (its meta pages).
            sync=False, metasync=False, map_async=True, writemap=True, readahead=False, meminit=False,
            max_spare_txns=4)
        db = self.env.open_db
        self.meta, self.objects, self.places = db(b"meta"), db(b"objects"), db(b"place")
        self.keys, self.tags = db(b"keys", dupsort=True), db(b"tags", dupsort=True)
        self.queues = (db(b"small"), db(b"main"))
        self.ghost, self.ghostq, self.free = db(b"ghost"), db(b"ghostq"), db(b"free")
        self.purges, self.leases = db(b"purges"), db(b"leases")

    def _open_as_owner(self, capacity: int) -> None:
        map_size = map_size_for(capacity)
        try:
            self._open_env(map_size)
            self.env.reader_check()
            with self.env.begin(write=True) as txn:
                stamp = txn.get(b"format", db=self.meta)
                if stamp is None:
                    txn.put(b"format", FORMAT, db=self.meta)
                    txn.put(b"state", State(capacity=capacity).pack(), db=self.meta)
                elif stamp != FORMAT:
                    raise ValueError(f"stored in another format ({bytes(stamp).decode('ascii', 'replace')})")
                else:
                    kept = State.unpack(txn.get(b"state", db=self.meta)).entries
                    log.info("cache at %s: kept %d objects from the previous run", self.path, kept)
            self.slotmap = self._rebuild_slotmap(map_size)
        except (lmdb.Error, ValueError, struct.error, EOFError, TypeError) as exc:
            log.warning("cache at %s dropped and created anew: %s", self.path, exc)
            self._close_env()
            shutil.rmtree(os.path.join(self.path, "lmdb"), ignore_errors=True)
            self._open_env(map_size)
            with self.env.begin(write=True) as txn:
                txn.put(b"format", FORMAT, db=self.meta)
                txn.put(b"state", State(capacity=capacity).pack(), db=self.meta)
            self.slotmap = self._rebuild_slotmap(map_size)
        self.capacity = capacity

    def _rebuild_slotmap(self, map_size: int) -> SlotMap:
        slots = max(MIN_SLOTS, (map_size - MAP_SLACK) // MAP_FACTOR // SLOT_BYTES)
        # Made aside and renamed over the old one: a process of an older run that still maps it keeps its own inode.
        fresh = os.path.join(self.path, "slots.new")
        slotmap = SlotMap(fresh, slots, map_size, create=True)
        with self.env.begin(buffers=True) as txn:
            version = State.unpack(txn.get(b"state", db=self.meta)).version
            slotmap.retire_all(version + 1)  # no copy from an older run can match
            for key, value in txn.cursor(self.places):
                slotmap.versions[_U32.unpack(key)[0]] = Place.unpack(value).version
        with self.env.begin(write=True) as txn:
            state = self._state(txn)
            state.version += 1
            self._save(txn, state)
        os.replace(fresh, os.path.join(self.path, "slots"))
        return slotmap

    def _close_env(self) -> None:
        env = getattr(self, "env", None)
        if env is not None:
            env.close()

    def close(self) -> None:
        self._close_env()
        slotmap = getattr(self, "slotmap", None)
        if slotmap is not None:
            slotmap.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def reader_check(self) -> int:
        """Free the reader slots of dead processes (after a worker died): the count freed."""
        return int(self.env.reader_check())

    # -- state -----------------------------------------------------------------------------------------

    def _state(self, txn: lmdb.Transaction) -> State:
        return State.unpack(txn.get(b"state", db=self.meta))

    def _save(self, txn: lmdb.Transaction, state: State) -> None:
        txn.put(b"state", state.pack(), db=self.meta)

    @property
    def capacity(self) -> int:
        with self.env.begin(buffers=True) as txn:
            return self._state(txn).capacity

    @capacity.setter
    def capacity(self, value: int) -> None:
        """Config reload: a shrink evicts at once. The map bounds how far it may grow without a restart."""
        if value < 0:
            raise ValueError(f"capacity must be >= 0, got {value}")
        limit = (self.slotmap.map_size - MAP_SLACK) // MAP_FACTOR
        if value > limit:
            raise ValueError(f"cache size {value} is above the {limit} bytes this store was opened for; restart to "
                             "grow it")
        self._write(lambda w: w.set_capacity(value))

    def generation(self) -> int:
        with self.env.begin(buffers=True) as txn:
            return self._state(txn).generation

    # -- reading ---------------------------------------------------------------------------------------

    def get(self, primary_key: str) -> list[Entry]:
        """Copies of the stored variants of ``primary_key``, each with its slot, version and invalidated flag."""
        found: list[Entry] = []
        with self.env.begin(buffers=True) as txn:
            cursor = txn.cursor(self.keys)
            if cursor.set_key(db_key(primary_key)):
                for value in cursor.iternext_dup():
                    slot_key = bytes(value)
                    place = Place.unpack(txn.get(slot_key, db=self.places))
                    if place.key != primary_key:
                        continue  # two long keys cut to the same prefix and hash: not ours
                    try:
                        entry = decode_entry(txn.get(slot_key, db=self.objects))
                    except (ValueError, EOFError, TypeError) as exc:
                        log.error("cache: unreadable object for %s skipped: %s", primary_key, exc)
                        continue
                    entry.slot, entry.version, entry.invalidated = _U32.unpack(slot_key)[0], place.version, \
                        place.invalidated
                    found.append(entry)
        if found:
            self._hits += 1
        else:
            self._misses += 1
        return found

    def touch(self, entry: Entry) -> bool:
        """Count a read of ``entry``; False when the store no longer holds this version of it."""
        return entry.slot >= 0 and self.slotmap.hit(entry.slot, entry.version)

    # -- writing ---------------------------------------------------------------------------------------

    def put(self, entry: Entry, since: int | None = None) -> bool:
        """Store ``entry`` (evicting first, so the bound holds at the commit); False when too large, purged
        after generation ``since``, or the map is full. On success the entry carries its slot and version."""
        size = entry.size
        if size <= 0:
            raise ValueError(f"entry.size must be positive, got {size} for {entry.primary_key}")
        if entry.primary_key.partition("://")[2].partition("?")[0] != entry.host + entry.path.partition("?")[0]:
            raise ValueError(f"entry key {entry.primary_key!r} disagrees with host and path")  # as cache/store.py
        if size > self.max_object_size:
            return self._refuse(TOO_LARGE)
        encoded = encode_entry(entry)
        try:
            reason = self._write(lambda w: w.put(entry, encoded, since, self.max_variants))
        except lmdb.MapFullError:
            self._make_room()
            return self._refuse(MAP_FULL)
        return True if reason is None else self._refuse(reason)

    def remove(self, entry: Entry) -> bool:
        """Forget ``entry`` if this very version is stored (not a replacement of it)."""
        return bool(entry.slot >= 0 and self._write(lambda w: w.remove_version(entry.slot, entry.version)))

    def invalidate(self, entry: Entry) -> bool:
        """Mark this version of ``entry`` stale (RFC 9111 §4.4); False when it is no longer stored."""
        entry.invalidated = True
        return bool(entry.slot >= 0 and self._write(lambda w: w.invalidate_version(entry.slot, entry.version)))

    def purge(self, selector: Selector, soft: bool = False, now: float = 0.0) -> int:
        """Invalidate (soft) or remove (hard) every object ``selector`` matches, host-wide; the count affected."""
        return int(self._write(lambda w: w.purge(selector, soft, now, self.purge_log)))

    def claim(self, entry: Entry, now: float, hold: float) -> bool:
        """Whether this process may revalidate ``entry`` in the background: one claim per object per host, held
        ``hold`` seconds (a worker that dies mid-way frees it by expiry)."""
        key = identity(entry)

        def take(w: _Write) -> bool:
            held = w.txn.get(key, db=self.leases)
            if held is not None and struct.unpack("<d", held)[0] > now:
                return False
            w.txn.put(key, struct.pack("<d", now + hold), db=self.leases)
            return True

        return bool(self._write(take))

    def release(self, entry: Entry) -> None:
        self._write(lambda w: w.txn.delete(identity(entry), db=self.leases))

    def count_not_stored(self, reason: str) -> None:
        self._not_stored[reason] = self._not_stored.get(reason, 0) + 1

    def _refuse(self, reason: str) -> bool:
        self.count_not_stored(reason)
        return False

    def _write(self, action: Any) -> Any:
        """Run ``action(w)`` in one write transaction, then publish the versions it changed."""
        with self.env.begin(write=True) as txn:
            w = _Write(self, txn)
            result = action(w)
            w.finish()
        w.publish()
        return result

    def _make_room(self) -> None:
        """The map is full (pages, not our byte count: fragmentation or a reader pinning old pages). Evict a
        quarter of the capacity; if even that can't be written, drop everything. Never raises."""
        self.env.reader_check()
        try:
            self._write(lambda w: w.evict_until(int(w.state.capacity * (1 - EMERGENCY_SHARE))))
            log.warning("cache: the LMDB map was full; evicted down to %d%% of the size", 100 - 100 * EMERGENCY_SHARE)
        except lmdb.MapFullError:
            log.error("cache: the LMDB map stayed full after evicting; dropping the whole cache")
            try:
                self._write(lambda w: w.drop_all())
            except lmdb.Error as exc:
                log.error("cache: could not drop the cache: %s", exc)

    # -- figures ---------------------------------------------------------------------------------------

    def stats(self) -> StoreStats:
        with self.env.begin(buffers=True) as txn:
            s = self._state(txn)
        return StoreStats(entries=s.entries, bytes=s.used, capacity=s.capacity, hits=self._hits, misses=self._misses,
                          evictions=s.evictions, inserts=s.inserts, purged=s.purged,
                          not_stored=dict(self._not_stored), last_purge_at=s.last_purge_at or None)

    def map_bytes(self) -> int:
        """Bytes of the map in use (pages up to the highest ever written; freed pages are reused in place)."""
        info = self.env.info()
        return (int(info["last_pgno"]) + 1) * int(self.env.stat()["psize"])


class _Write:
    """One write transaction's work: S3-FIFO's ``Queues`` over the tables, and what a put, a purge or an eviction
    changes. Versions to publish are collected and written to the slot map after the commit (``publish``)."""

    def __init__(self, store: SharedStore, txn: lmdb.Transaction) -> None:
        self.store = store
        self.txn = txn
        self.state = store._state(txn)
        self._places: dict[int, Place] = {}
        self._dirty: set[int] = set()
        self._published: dict[int, int] = {}  # slot -> version, for the slot map
        self._fresh: set[int] = set()  # slots taken by a new object in this transaction: counter to zero
        self._dropped: int | None = None  # drop_all's version: every slot is retired at it

    # -- bookkeeping -----------------------------------------------------------------------------------

    def place(self, slot: int) -> Place:
        found = self._places.get(slot)
        if found is None:
            found = self._places[slot] = Place.unpack(self.txn.get(_slot_key(slot), db=self.store.places))
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
        for slot in self._dirty:
            txn.put(_slot_key(slot), self._places[slot].pack(), db=places)
        self.store._save(txn, self.state)

    def publish(self) -> None:
        slotmap = self.store.slotmap
        if self._dropped is not None:
            slotmap.retire_all(self._dropped)
        for slot, version in self._published.items():
            if slot in self._fresh:
                slotmap.reset(slot, version)
            else:
                slotmap.versions[slot] = version

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
        self.txn.put(_U64.pack(place.seq), _slot_key(slot), db=self.store.queues[queue])
        self._account(queue, place.charge, 1)
        self._dirty.add(slot)

    def pop_oldest(self, queue: int) -> int:
        cursor = self.txn.cursor(self.store.queues[queue])
        cursor.first()
        slot = _U32.unpack(cursor.value())[0]
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
        seq = _U64.pack(self.state.seq)
        txn.put(ident, seq, db=store.ghost)
        txn.put(seq, ident, db=store.ghostq)
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
        return [_U32.unpack(v)[0] for v in cursor.iternext_dup()]

    def _variants(self, key: str) -> list[int]:
        return [s for s in self._slots_of(db_key(key), self.store.keys) if self.place(s).key == key]

    def _take_slot(self) -> int | None:
        cursor = self.txn.cursor(self.store.free)
        if cursor.first():
            slot = _U32.unpack(cursor.key())[0]
            cursor.delete()
            return slot
        if self.state.next_slot < self.store.slotmap.slots:
            self.state.next_slot += 1
            return self.state.next_slot - 1
        return None

    def remove(self, slot: int) -> None:
        """Forget the object in ``slot`` everywhere (its queue record too, unless ``next_victim`` took it)."""
        place, txn, store = self.place(slot), self.txn, self.store
        key = _slot_key(slot)
        if place.queue >= 0:
            txn.delete(_U64.pack(place.seq), db=store.queues[place.queue])
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
        slot = self._take_slot()
        while slot is None and self.evict_one():  # more objects than slots: only tiny objects get here
            slot = self._take_slot()
        if slot is None:
            return MAP_FULL
        key = _slot_key(slot)
        version = self._new_version(slot)
        self._fresh.add(slot)
        place = Place(-1, 0, entry.size, ident, entry.primary_key, tuple(sorted(entry.tags)), version)
        self._places[slot] = place
        txn.put(key, encoded, db=store.objects)
        txn.put(db_key(entry.primary_key), key, db=store.keys)
        for tag in place.tags:
            txn.put(db_key(tag), key, db=store.tags)
        self.push(s3fifo.queue_for(self, ident), slot)
        for sibling in self._variants(entry.primary_key):  # a new variant: hot copies of the key must be read again
            if sibling != slot:
                self._bump(sibling)
        state.used += entry.size
        state.entries += 1
        state.inserts += 1
        entry.slot, entry.version = slot, version
        return None

    def remove_version(self, slot: int, version: int) -> bool:
        if self.txn.get(_slot_key(slot), db=self.store.places) is None or self.place(slot).version != version:
            return False
        self.remove(slot)
        return True

    def invalidate_version(self, slot: int, version: int) -> bool:
        if self.txn.get(_slot_key(slot), db=self.store.places) is None or self.place(slot).version != version:
            return False
        self.place(slot).invalidated = True
        self._bump(slot)
        return True

    # -- purges ----------------------------------------------------------------------------------------

    def purge(self, selector: Selector, soft: bool, now: float, purge_log: int) -> int:
        state, txn, store = self.state, self.txn, self.store
        state.generation += 1
        state.last_purge_at = now
        txn.put(_U64.pack(state.generation), encode_selector(selector), db=store.purges)
        if txn.stat(store.purges)["entries"] > purge_log:
            cursor = txn.cursor(store.purges)
            cursor.first()
            cursor.delete()
        if isinstance(selector, PurgeAll) and not soft:
            return self.drop_all(count_purged=True)
        slots = [s for s in self._candidates(selector) if selector.matches(_Probe(self.place(s)))]  # type: ignore[arg-type]
        for slot in slots:
            if soft:
                self.place(slot).invalidated = True
                self._bump(slot)
            else:
                self.remove(slot)
        state.purged += len(slots)
        return len(slots)

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
        return [_U32.unpack(k)[0] for k in self.txn.cursor(store.places).iternext(keys=True, values=False)]

    def _range(self, prefix: str) -> list[int]:
        start = prefix.encode("utf-8", "surrogateescape")[:KEY_KEEP]
        cursor = self.txn.cursor(self.store.keys)
        found: list[int] = []
        if cursor.set_range(start):
            for key, value in cursor:
                if not bytes(key).startswith(start):
                    break
                found.append(_U32.unpack(value)[0])
        return found

    def _purged_since(self, entry: Entry, since: int) -> bool:
        if since >= self.state.generation:
            return False
        cursor = self.txn.cursor(self.store.purges)
        if not cursor.set_range(_U64.pack(since + 1)) or _U64.unpack(cursor.key())[0] != since + 1:
            return True  # a purge newer than the token fell off the log: refuse rather than guess
        return any(decode_selector(value).matches(entry) for _, value in cursor)

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
