"""The slot map: per stored object, the version every copy must match and the S3-FIFO read counter, in a file
that every process of the host maps.

Rules kept here:
- A hit costs a read here (is my copy's version still the slot's?) and, when the counter is below its cap, one
  byte written; never an LMDB transaction. Writes need no lock: a version is one aligned 8-byte store (a reader
  sees the old or the new value), and a counter that loses a race to a concurrent hit loses one count of an
  approximate figure.
- The store writes a slot's new version *after* committing the change: a copy read before the change then fails
  the check from that moment on, and a copy read after it fails only until the write lands (a spurious miss).
- It is opened with ``O_NOFOLLOW``, and made anew with ``O_EXCL`` after unlinking what was there (privatedir.py): a
  link planted in its place is never written through.
- The file lives beside the LMDB files and is rebuilt from the store's records by the process that owns the store
  when it opens it (versions only; counters start at zero), so a stale file from an older run can never vouch for
  a copy. After a process died between a commit and its publish (a worker killed), the owner aligns it with the
  committed records again (``align``), so that the dead process's changes reach the other processes' copies.
"""

from __future__ import annotations

import mmap
import os
import struct
from array import array
from collections.abc import Iterable

from edgeproxy import privatedir

MAGIC = b"EPSLOTS1"
_HEADER = struct.Struct("<8sQQ")  # magic, slots, the LMDB map size the owner chose
ALIGN_CHUNK = 65536  # slots written at once by ``align``: 512 KiB of versions, whatever the map's size


class SlotMap:
    __slots__ = ("_map", "_view", "versions", "freqs", "slots", "map_size")

    def __init__(self, path: str, slots: int = 0, map_size: int = 0, create: bool = False) -> None:
        """Create (the owner: ``slots`` and ``map_size`` given) or open the map; an opener learns both from it."""
        # Never through a link, and a new map never over an existing file (shared/store.py checked the directory).
        fd = privatedir.open_file(path, os.O_RDWR, "cache path", os.geteuid(), 0o600, new=create)
        try:
            if not create:
                magic, slots, map_size = _HEADER.unpack(os.pread(fd, _HEADER.size, 0).ljust(_HEADER.size, b"\0"))
                if magic != MAGIC:
                    raise ValueError(f"slot map {path}: not a slot map of this version")
            size = _HEADER.size + slots * 9
            if create:
                os.ftruncate(fd, size)
            elif os.fstat(fd).st_size != size:
                raise ValueError(f"slot map {path} has {os.fstat(fd).st_size} bytes, expected {size}")
            self._map = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        if create:
            self._map[:_HEADER.size] = _HEADER.pack(MAGIC, slots, map_size)
        self.slots, self.map_size = slots, map_size
        self._view = view = memoryview(self._map)
        self.versions = view[_HEADER.size:_HEADER.size + slots * 8].cast("Q")
        self.freqs = view[_HEADER.size + slots * 8:]

    def reset(self, slot: int, version: int) -> None:
        """A slot taken by a new object (or emptied): its version, counter zero."""
        self.versions[slot] = version
        self.freqs[slot] = 0

    def hit(self, slot: int, version: int) -> bool:
        """Whether a copy of ``version`` is still current; counts the read when it is."""
        if self.versions[slot] != version:
            return False
        freq = self.freqs[slot]
        if freq < 3:
            self.freqs[slot] = freq + 1
        return True

    def retire_all(self, version: int) -> None:
        """Every slot at ``version`` (newer than any copy's): after the whole store was dropped."""
        self._map[_HEADER.size:_HEADER.size + self.slots * 8] = version.to_bytes(8, "little") * self.slots
        self._map[_HEADER.size + self.slots * 8:] = bytes(self.slots)

    def align(self, placed: Iterable[tuple[int, int]], retired: int) -> None:
        """Every slot to what the store committed: ``placed`` gives (slot, version) of each object, by slot; every
        other slot is at ``retired`` (newer than any copy's). Counters are kept. Written a chunk at a time: a slot
        whose version is already right is rewritten with the same value, which a concurrent reader can't tell."""
        fill = array("Q", [retired]) * ALIGN_CHUNK
        objects = iter(placed)
        found = next(objects, None)
        for start in range(0, self.slots, ALIGN_CHUNK):
            end = min(start + ALIGN_CHUNK, self.slots)
            chunk = fill[:end - start]
            while found is not None and found[0] < end:
                chunk[found[0] - start] = found[1]
                found = next(objects, None)
            self.versions[start:end] = chunk

    def close(self) -> None:
        self.versions.release()
        self.freqs.release()
        self._view.release()
        try:
            self._map.close()
        except BufferError:  # a view still held by a caller: the mapping goes with the process
            pass
