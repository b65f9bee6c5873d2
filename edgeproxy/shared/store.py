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
  versions still match. New versions are published to the slot map after the commit; the owner republishes every
  version from the records (``republish``) after a process died, which may have been between the two.
- A purge is recorded with its generation (``purges`` table, ``purge_log`` records), so a fetch that started
  before it cannot store what it purged, whichever process fetched (the rule of cache/store.py, host-wide).
- Its directory is ours alone (privatedir.py: our uid, not a link, writable by nobody else), checked from ``top``
  (by default ``/dev/shm/edgeproxy-UID``) down before anything in it is opened; its files are opened with
  ``O_NOFOLLOW``, the LMDB files (which LMDB opens itself) checked first: a store someone else could write is
  refused at start with one line, never used (it could carry planted responses).
- A purge that visits every object (a regex, a soft "all", a prefix on every host) never holds the write
  transaction while it matches: ``announce`` logs it in one write, ``scan`` reads (key, slot) pairs in slot order
  in short read transactions, and ``purge_scanned`` applies what matched in one write per batch, skipping a slot
  that holds another key by then (the steps of cache/store.py, driven by edgeproxy/purging.py).
- The store's records carry ``FORMAT``: the entries' encoding (cache/codec.py) and the digest of every record's
  layout (shared/records.py's ``RECORDS``); a store of another format, or one LMDB can't open, is dropped and created
  anew by the owner, with one log line.

Tables: ``meta`` (format, state, notes such as the fleet's journal position), ``objects`` (slot -> encoded entry),
``place`` (slot -> the small record the queues, purges and versions need), ``keys`` (key -> slots, dupsort),
``tags`` (tag -> slots, dupsort), ``small`` and ``main`` (sequence -> slot), ``ghost`` and ``ghostq`` (identity <->
sequence), ``free`` (reusable slots), ``purges`` (generation -> selector), ``leases`` (identity -> until: one
background revalidation per key per host).
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import struct
from typing import Any

import lmdb

from edgeproxy import privatedir
from edgeproxy.cache import codec
from edgeproxy.cache.codec import decode_entry, encode_entry
from edgeproxy.cache.entry import Entry
from edgeproxy.cache.purge import PurgePrefix, Selector, walks
from edgeproxy.cache.store import TOO_LARGE, StoreStats
from edgeproxy.shared.records import LEASE, RECORDS, U32, Place, State, db_key, identity
from edgeproxy.shared.slotmap import SlotMap
from edgeproxy.shared.transaction import MAP_FULL, Write

log = logging.getLogger("edgeproxy.shared")

WHAT = "cache path"  # how refusals name our paths
FORMAT = codec.FORMAT + b" records=" + RECORDS  # the entries' encoding and every record's layout

MIN_SLOTS = 4096
# One slot per this many bytes of the byte bound: an object is charged at least ENTRY_OVERHEAD (1.5 KiB), so there are
# more slots than objects; if tiny objects ever use them all up, a put evicts until one is free.
SLOT_BYTES = 1024
MAP_SLACK = 64 * 1024 * 1024
MAP_FACTOR = 3  # the map may hold MAP_FACTOR x the byte bound: B-tree pages are ~60-70% full under churn
EMERGENCY_SHARE = 0.25  # of the capacity, freed at once when the map is full


def map_size_for(capacity: int) -> int:
    return capacity * MAP_FACTOR + MAP_SLACK


class CacheInUse(OSError):
    """Another process owns the store at this path (like EBUSY: the caller reports it as a start-up failure)."""


class SharedStore:
    """``Storage`` over LMDB, shared by the processes of a host. One of them (``owner=True``) creates and checks it;
    the others open what the owner made."""

    def __init__(self, path: str, capacity: int = 0, max_object_size: int | None = None, max_variants: int = 32,
                 purge_log: int = 1024, *, owner: bool = True, top: str | None = None) -> None:
        self.path = path
        # The highest directory that must be ours (privatedir.py): the store's own, or /dev/shm/edgeproxy-UID.
        self.top = top or path
        self.uid = os.geteuid()
        # None: the byte bound alone limits an object (a worker learns the bound from the store, not from here).
        self.max_object_size = max_object_size if max_object_size is not None else capacity or 1 << 62
        self.max_variants = max_variants
        self.purge_log = purge_log
        self.owner = owner
        self._lock_fd: int | None = None
        self._capacity: int | None = None
        self._hits = self._misses = 0
        self._not_stored: dict[str, int] = {}
        if owner:
            self._claim()
            self._open_as_owner(capacity)
        else:
            privatedir.ensure_dirs(path, self.top, WHAT, self.uid)
            self.slotmap = SlotMap(os.path.join(path, "slots"))
            self._open_env(self.slotmap.map_size)

    # -- opening ---------------------------------------------------------------------------------------

    def _claim(self) -> None:
        privatedir.ensure_dirs(self.path, self.top, WHAT, self.uid)
        fd = privatedir.open_file(os.path.join(self.path, "owner.lock"), os.O_RDWR | os.O_CREAT, WHAT, self.uid)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise CacheInUse(f"cache path {self.path} is in use by another edgeproxy; give each instance its own "
                             "[cache] path") from None
        self._lock_fd = fd

    def _open_env(self, map_size: int) -> None:
        directory = os.path.join(self.path, "lmdb")
        privatedir.ensure_dirs(directory, directory, WHAT, self.uid)
        for name in ("data.mdb", "lock.mdb"):  # LMDB opens them itself, following links: check them first
            if os.path.lexists(found := os.path.join(directory, name)):
                privatedir.check(found, WHAT, self.uid, privatedir.FILE)
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
                slotmap.versions[U32.unpack(key)[0]] = Place.unpack(value).version
        with self.env.begin(write=True) as txn:
            state = self.read_state(txn)
            state.version += 1
            self.save_state(txn, state)
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

    def republish(self) -> None:
        """The slot map made true to the committed records again, after a process may have died between a commit
        and its publish (a killed worker): else the versions it changed are never published, and the copies other
        processes hold of what it replaced, evicted or invalidated stay current. Done in a write transaction, so no
        commit lands between the records read and the versions written; slots without an object get a version newer
        than any copy's. Costs a read of every object's place record (marshal): worker deaths are rare."""
        with self.env.begin(write=True, buffers=True) as txn:
            state = self.read_state(txn)
            state.version += 1
            self.save_state(txn, state)
            placed = ((U32.unpack(key)[0], Place.unpack(value).version) for key, value in txn.cursor(self.places))
            self.slotmap.align(placed, state.version)

    def reader_check(self) -> int:
        """Free the reader slots of dead processes (after a worker died): the count freed."""
        return int(self.env.reader_check())

    # -- state -----------------------------------------------------------------------------------------

    def read_state(self, txn: lmdb.Transaction) -> State:
        return State.unpack(txn.get(b"state", db=self.meta))

    def save_state(self, txn: lmdb.Transaction, state: State) -> None:
        txn.put(b"state", state.pack(), db=self.meta)

    @property
    def capacity(self) -> int:
        """The byte bound, as this process last read or set it (``[cache] size`` needs a restart: it doesn't move
        under a running process; every put reads the store's own figure in its transaction)."""
        if self._capacity is None:
            with self.env.begin(buffers=True) as txn:
                self._capacity = self.read_state(txn).capacity
        return self._capacity

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
        self._capacity = value

    def generation(self) -> int:
        with self.env.begin(buffers=True) as txn:
            return self.read_state(txn).generation

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
                    entry.slot, entry.version, entry.invalidated = U32.unpack(slot_key)[0], place.version, \
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
        return bool(entry.slot >= 0 and self._write_roomy(lambda w: w.remove_version(entry.slot, entry.version), False))

    def invalidate(self, entry: Entry) -> bool:
        """Mark this version of ``entry`` stale (RFC 9111 §4.4); False when it is no longer stored."""
        entry.invalidated = True
        return bool(entry.slot >= 0 and self._write_roomy(lambda w: w.invalidate_version(entry.slot, entry.version),
                                                          False))

    def purge(self, selector: Selector, soft: bool = False, now: float = 0.0) -> int:
        """Invalidate (soft) or remove (hard) every object ``selector`` matches, host-wide; the count affected."""
        return int(self._write_purge(lambda w: w.purge(selector, soft, now, self.purge_log)))

    def walks(self, selector: Selector, soft: bool) -> bool:
        """Whether purging ``selector`` visits every object (the transaction's ``_candidates`` scans for it)."""
        return walks(selector, soft) or (isinstance(selector, PurgePrefix) and selector.host is None)

    def announce(self, selector: Selector, now: float) -> None:
        self._write_purge(lambda w: w.announce(selector, now, self.purge_log))

    def scan(self, position: int | None, limit: int) -> tuple[list[tuple[str, int]], int | None]:
        """Up to ``limit`` (key, slot) pairs from slot ``position`` on (None: the first), and the next position (None
        once every object was handed out). Objects never change slot, so a walk by slot misses none that stays."""
        found: list[tuple[str, int]] = []
        with self.env.begin(buffers=True) as txn:
            cursor = txn.cursor(self.places)
            if cursor.set_range(U32.pack(position or 0)):
                for key, value in cursor:
                    if len(found) == limit:
                        return found, U32.unpack(key)[0]
                    found.append((Place.unpack(value).key, U32.unpack(key)[0]))
        return found, None

    def purge_scanned(self, found: list[tuple[str, int]], soft: bool) -> int:
        return int(self._write_purge(lambda w: w.purge_slots(found, soft)))

    def _write_purge(self, action: Any) -> Any:
        """``_write`` for a purge, which must hold: a full map makes room and tries once more (an error reaches the
        caller)."""
        try:
            return self._write(action)
        except lmdb.MapFullError:
            self._make_room()
            return self._write(action)

    def claim(self, entry: Entry, now: float, hold: float) -> bool:
        """Whether this process may revalidate ``entry`` in the background: one claim per object per host, held
        ``hold`` seconds (a worker that dies mid-way frees it by expiry)."""
        key = identity(entry)

        def take(w: Write) -> bool:
            held = w.txn.get(key, db=self.leases)
            if held is not None and LEASE.unpack(held)[0] > now:
                return False
            w.txn.put(key, LEASE.pack(now + hold), db=self.leases)
            return True

        return bool(self._write_roomy(take, False))

    def release(self, entry: Entry) -> None:
        self._write_roomy(lambda w: w.txn.delete(identity(entry), db=self.leases), None)

    def count_not_stored(self, reason: str) -> None:
        self._not_stored[reason] = self._not_stored.get(reason, 0) + 1

    def _refuse(self, reason: str) -> bool:
        self.count_not_stored(reason)
        return False

    def _write(self, action: Any) -> Any:
        """Run ``action(w)`` in one write transaction, then publish the versions it changed."""
        with self.env.begin(write=True) as txn:
            w = Write(self, txn)
            result = action(w)
            w.finish()
        w.publish()
        return result

    def _write_roomy(self, action: Any, failed: Any) -> Any:
        """``_write`` on a request's path: a full map makes room and tries once more, and what still fails is
        logged and answered with ``failed``, never raised into the request."""
        try:
            return self._write(action)
        except lmdb.MapFullError:
            self._make_room()
        try:
            return self._write(action)
        except lmdb.Error as exc:
            log.error("cache: a write to the shared store failed: %s", exc)
            return failed

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

    # -- notes ----------------------------------------------------------------------------------------

    def read_note(self, name: str) -> bytes | None:
        """A small record another part keeps with the objects (the fleet's journal position), or None."""
        with self.env.begin() as txn:
            value = txn.get(b"note:" + name.encode(), db=self.meta)
        return None if value is None else bytes(value)

    def write_note(self, name: str, value: bytes) -> None:
        """Keep ``value`` under ``name`` with the objects: it lives and dies with them (a dropped store loses it)."""
        with self.env.begin(write=True) as txn:
            txn.put(b"note:" + name.encode(), value, db=self.meta)

    # -- figures ---------------------------------------------------------------------------------------

    def stats(self) -> StoreStats:
        with self.env.begin(buffers=True) as txn:
            s = self.read_state(txn)
        return StoreStats(entries=s.entries, bytes=s.used, capacity=s.capacity, hits=self._hits, misses=self._misses,
                          evictions=s.evictions, inserts=s.inserts, purged=s.purged,
                          not_stored=dict(self._not_stored), last_purge_at=s.last_purge_at or None)

    def map_bytes(self) -> int:
        """Bytes of the map in use (pages up to the highest ever written; freed pages are reused in place)."""
        info = self.env.info()
        return (int(info["last_pgno"]) + 1) * int(self.env.stat()["psize"])
