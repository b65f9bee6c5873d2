"""The shared store's records as bytes: its state, an object's place, and the keys of its tables.

Rules kept here:
- Every layout defined here is part of ``RECORDS``, a digest the store's format carries (shared/store.py): a
  change to a struct format, to a record's fields or their order, or to how keys are cut changes it, so a store
  written with the old layout is dropped and made anew, never misread. ``pack`` and ``unpack`` follow the fields'
  order (``dataclasses.fields``), which is what the digest names.
Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import marshal
import struct
from dataclasses import dataclass, fields

from edgeproxy.cache.entry import Entry

KEY_KEEP = 400  # LMDB's key limit is 511 bytes: longer keys keep this much, then a hash
U32 = struct.Struct(">I")
U64 = struct.Struct(">Q")
_STATE = struct.Struct("<15Qd")
LEASE = struct.Struct("<d")  # the leases table's value: until when a background revalidation is claimed


def slot_key(slot: int) -> bytes:
    return U32.pack(slot)


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


class Probe:
    """What ``Selector.matches`` reads of an entry, from a place record."""

    __slots__ = ("primary_key", "host", "tags")

    def __init__(self, place: Place) -> None:
        self.primary_key = place.key
        self.host = place.key.partition("://")[2].partition("/")[0]
        self.tags = frozenset(place.tags)


def describe(state: struct.Struct, state_fields: tuple[str, ...], place_fields: tuple[str, ...],
             keys: tuple[struct.Struct, ...], key_keep: int) -> bytes:
    """A digest of the records' layouts: any change to one of them gives another."""
    text = (f"state={state.format}:{','.join(state_fields)} place=marshal:{','.join(place_fields)} "
            f"keys={','.join(k.format for k in keys)} keep={key_keep}")
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest().encode("ascii")


RECORDS = describe(_STATE, tuple(f.name for f in fields(State)), tuple(f.name for f in fields(Place)),
                   (U32, U64, LEASE), KEY_KEEP)
