"""The shared LMDB store: the storage conformance suite, then what only a store shared by processes must do
(copies that know their version, a store that outlives its opener, two openers, a full map, long keys, a slot
map file of another version or size or from an older run)."""

from __future__ import annotations

import multiprocessing
import os
import pathlib
import signal
import stat
from collections.abc import Callable
from typing import Any

import pytest

from edgeproxy.cache.purge import PurgeAll, PurgePrefix, PurgeURL
from edgeproxy.privatedir import UnsafePath
from edgeproxy.shared.records import KEY_KEEP
from edgeproxy.shared.store import FORMAT as store_format
from edgeproxy.shared.store import CacheInUse, SharedStore
from tests.unit.test_store import NOW, StorageContract, ident, idents, make_entry


class TestSharedStore(StorageContract):
    @pytest.fixture(autouse=True)
    def _directory(self, tmp_path: pathlib.Path) -> Any:
        self.tmp = tmp_path
        self.opened: list[SharedStore] = []
        yield
        for store in self.opened:
            store.close()

    def make(self, capacity: int = 10_000, **options: Any) -> SharedStore:  # type: ignore[override]
        store = SharedStore(str(self.tmp / f"cache{len(self.opened)}"), capacity, **options)
        self.opened.append(store)
        return store

    def test_copies_carry_their_version(self) -> None:
        store = self.make()
        entry = make_entry()
        store.put(entry)
        (copy,) = store.get(entry.primary_key)
        assert copy is not entry and (copy.slot, copy.version) == (entry.slot, entry.version)
        assert store.touch(copy)
        store.purge(PurgeURL(entry.primary_key), soft=True, now=NOW)
        assert not store.touch(copy)  # a soft purge is a new version: hot copies must be read again
        (again,) = store.get(entry.primary_key)
        assert again.invalidated and store.touch(again)

    def test_a_new_variant_retires_the_copies_of_its_siblings(self) -> None:
        store = self.make()
        store.put(make_entry(variant=(b"en",)))
        (en,) = store.get("https://a.example/a")
        store.put(make_entry(variant=(b"fr",)))
        assert not store.touch(en)
        assert len(store.get("https://a.example/a")) == 2

    def test_the_store_outlives_its_opener(self) -> None:
        path = str(self.tmp / "kept")
        first = SharedStore(path, 10_000)
        first.put(make_entry(body=b"kept"))
        first.close()
        second = SharedStore(path, 10_000)
        self.opened.append(second)
        (found,) = second.get("https://a.example/a")
        assert found.body == b"kept" and second.stats().entries == 1

    def test_an_incompatible_store_is_dropped(self, caplog: pytest.LogCaptureFixture) -> None:
        path = str(self.tmp / "old")
        first = SharedStore(path, 10_000)
        first.put(make_entry())
        with first.env.begin(write=True) as txn:
            txn.put(b"format", b"edgeproxy-shared-cache layout=0", db=first.meta)
        first.close()
        second = SharedStore(path, 10_000)
        self.opened.append(second)
        assert second.get("https://a.example/a") == [] and second.stats().entries == 0
        assert "dropped and created anew" in caplog.text

    def test_a_damaged_store_is_dropped(self, caplog: pytest.LogCaptureFixture) -> None:
        path = self.tmp / "damaged"
        SharedStore(str(path), 10_000).close()
        (path / "lmdb" / "data.mdb").write_bytes(b"\xff" * 8192)
        store = SharedStore(str(path), 10_000)
        self.opened.append(store)
        assert store.put(make_entry()) and len(store.get("https://a.example/a")) == 1
        assert "dropped and created anew" in caplog.text

    def test_one_owner_per_path(self) -> None:
        path = str(self.tmp / "owned")
        owner = SharedStore(path, 10_000)
        self.opened.append(owner)
        with pytest.raises(CacheInUse, match="in use by another edgeproxy"):
            SharedStore(path, 10_000)

    def test_another_process_stores_and_the_owner_purges(self) -> None:
        path = str(self.tmp / "owned")
        owner = SharedStore(path, 10_000)
        self.opened.append(owner)
        assert _in_child(_store_one, path) == 0
        (stored,) = owner.get("https://a.example/a")
        assert stored.body == b"from a worker"
        assert owner.purge(PurgeAll(), now=NOW) == 1
        assert owner.get("https://a.example/a") == [] and not owner.touch(stored)

    def test_a_writer_killed_mid_transaction_leaves_the_store_whole(self) -> None:
        path = str(self.tmp / "killed")
        owner = SharedStore(path, 10_000)
        self.opened.append(owner)
        owner.put(make_entry(path="/before"))
        assert _in_child(_die_while_writing, path) == -signal.SIGKILL
        assert owner.reader_check() >= 0
        assert owner.put(make_entry(path="/after"))  # the write lock was released by the kernel (robust mutex)
        assert owner.get("https://a.example/half") == []
        assert owner.get("https://a.example/before") and owner.get("https://a.example/after")
        assert owner.stats().entries == 2 and owner.stats().bytes == 200

    def test_long_keys_are_cut_and_checked(self) -> None:
        store = self.make(100_000)
        long_a = "/" + "a" * (KEY_KEEP + 50)
        a, b = make_entry(path=long_a), make_entry(path=long_a + "b")
        assert store.put(a) and store.put(b)
        assert idents(store.get(a.primary_key)) == [ident(a)]
        assert idents(store.get(b.primary_key)) == [ident(b)]
        assert store.purge(PurgePrefix(long_a[:KEY_KEEP + 20], "a.example"), now=NOW) == 2

    def test_a_scan_does_not_flush_what_is_read(self) -> None:
        store = self.make(100 * 50)
        hot = [make_entry(path=f"/hot{i}") for i in range(10)]
        for entry in hot:
            store.put(entry)
        for n in range(500):  # one-hit wonders, each read never
            for entry in hot:
                store.touch(entry)
            store.put(make_entry(path=f"/scan{n}"))
        assert all(store.get(e.primary_key) for e in hot)
        assert store.stats().bytes <= 100 * 50

    def test_map_full_refuses_and_keeps_serving(self) -> None:
        store = self.make(1_000_000)
        big = b"x" * 200_000
        stored = 0
        for n in range(400):  # 80 MB of bodies through a 1 MB cache: evictions keep it bounded, never an error
            entry = make_entry(path=f"/big{n}", body=big, size=len(big) + 100)
            stored += store.put(entry)
        assert stored >= 300 and store.stats().bytes <= 1_000_000
        assert store.map_bytes() < 3 * 1_000_000 + 64 * 1024 * 1024


def _store_one(path: str) -> None:
    store = SharedStore(path, owner=False)
    store.put(make_entry(body=b"from a worker"))
    store.close()


def _die_while_writing(path: str) -> None:
    store = SharedStore(path, owner=False)
    txn = store.env.begin(write=True)
    txn.put(b"https://a.example/half", b"\0\0\0\1", db=store.keys)
    os.kill(os.getpid(), signal.SIGKILL)


def _in_child(target: Callable[[str], None], path: str) -> int | None:
    """Run ``target(path)`` in a spawned process (LMDB: one environment per process); its exit code."""
    process = multiprocessing.get_context("spawn").Process(target=target, args=(path,))
    process.start()
    process.join(30)
    return process.exitcode


def test_one_background_revalidation_per_object_per_host(tmp_path: pathlib.Path) -> None:
    store = SharedStore(str(tmp_path / "leases"), 10_000)
    try:
        entry = make_entry()
        store.put(entry)
        assert store.claim(entry, NOW, hold=30.0)
        assert not store.claim(entry, NOW + 1, hold=30.0)  # another worker asking meanwhile
        assert store.claim(make_entry(path="/other"), NOW + 1, hold=30.0)  # per object
        store.release(entry)
        assert store.claim(entry, NOW + 2, hold=30.0)
        assert store.claim(entry, NOW + 33, hold=30.0)  # a claimer that died frees it by expiry
    finally:
        store.close()


def _die_while_reading(path: str) -> None:
    """A worker killed inside a read transaction: its reader slot pins the pages it saw until ``reader_check``."""
    store = SharedStore(path, owner=False)
    txn = store.env.begin()
    txn.get(b"format", db=store.meta)
    os.kill(os.getpid(), signal.SIGKILL)


def fill_the_map(store: SharedStore) -> int:
    """Write (uncaught, as a request-path write's first try is) until LMDB's map is really full: a pinned reader
    keeps every page a write frees, so each write takes new ones. Each object is charged 100 bytes, so the byte
    bound never evicts meanwhile. The count of writes that went in."""
    import lmdb

    from edgeproxy.cache.codec import encode_entry

    for n in range(100_000):
        entry = make_entry(path=f"/fill{n}", body=b"x" * 3000)
        try:
            store._write(lambda w, e=entry: w.put(e, encode_entry(e), None, store.max_variants))
        except lmdb.MapFullError:
            return n
    raise AssertionError("the map never filled")


def test_a_map_filled_behind_a_dead_reader_makes_room_and_the_write_goes_through(
        tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture) -> None:
    path = str(tmp_path / "full")
    store = SharedStore(path, 10_000_000)
    try:
        entry = make_entry()
        assert store.put(entry)
        assert _in_child(_die_while_reading, path) == -signal.SIGKILL
        assert fill_the_map(store) > 100
        # Full: room is made (the dead reader's pages freed, an eviction pass) and the write goes in on the retry.
        assert store.invalidate(entry)
        assert "the LMDB map was full" in caplog.text
        (found,) = store.get(entry.primary_key)
        assert found.invalidated
    finally:
        store.close()


def test_a_map_that_stays_full_answers_and_never_raises(tmp_path: pathlib.Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    store = SharedStore(str(tmp_path / "stays-full"), 10_000_000)
    try:
        entry = make_entry()
        assert store.put(entry)
        pinned = store.env.begin()  # a live reader: reader_check can't free it, so nothing makes room
        pinned.get(b"format", db=store.meta)
        try:
            assert fill_the_map(store) > 100
            assert store.claim(entry, NOW, 30.0) is False  # logged, answered, not raised
            store.release(entry)
            assert store.put(make_entry(path="/more")) is False
            assert store.stats().not_stored.get("map-full") == 1, store.stats().not_stored
            assert "a write to the shared store failed" in caplog.text
        finally:
            pinned.abort()
        assert store.put(make_entry(path="/after"))  # the reader gone, its pages are written again
    finally:
        store.close()


def test_pages_fill_as_the_store_grows(tmp_path: pathlib.Path) -> None:
    """New slots are appended: a growing table's pages fill (a put past the end split the last page in the middle,
    one 1.7 KB object per 4 KiB page)."""
    store = SharedStore(str(tmp_path / "pages"), 64 * 1024 * 1024)
    try:
        for n in range(2000):
            assert store.put(make_entry(path=f"/p{n}", body=b"x" * 1500, size=3000))
        with store.env.begin() as txn:
            stat = txn.stat(store.objects)
        pages = stat["leaf_pages"] + stat["overflow_pages"] + stat["branch_pages"]
        assert pages * 4096 / 2000 < 2600, pages  # two ~1.7 KB records a page, not one
    finally:
        store.close()


def test_a_copy_is_kept_hot_once_read_twice(tmp_path: pathlib.Path) -> None:
    from edgeproxy.shared.tiered import HOT_ADMIT, TieredStore

    tiered = TieredStore(SharedStore(str(tmp_path / "hot"), 1_000_000), 100_000, 100_000)
    try:
        entry = make_entry()
        assert tiered.put(entry) and tiered.hot.get(entry.primary_key) == []  # stores go to the shared store only
        for _ in range(HOT_ADMIT):
            (copy,) = tiered.get(entry.primary_key)
            assert tiered.hot.get(entry.primary_key) == []
            assert tiered.touch(copy) is False  # counted in the slot map, not (yet) hot
        (copy,) = tiered.get(entry.primary_key)
        assert idents(tiered.hot.get(entry.primary_key)) == [ident(entry)]
        assert tiered.touch(copy) and tiered.stats().hits >= 1
    finally:
        tiered.close()


# -- a directory of our own (privatedir.py) -----------------------------------------------------------------

NOBODY = 65534


def test_a_link_planted_in_a_world_writable_store_directory_is_refused_and_never_written_through(
        tmp_path: pathlib.Path) -> None:
    """The issue's experiment: ``slots.new`` -> a victim file, planted in a 0777 directory, overwrote the victim."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    path = tmp_path / "planted"
    path.mkdir()
    path.chmod(0o777)
    (path / "slots.new").symlink_to(victim)
    with pytest.raises(UnsafePath, match=f"cache path {path} is writable by its group or others \\(mode 0777\\)"):
        SharedStore(str(path), 10_000)
    assert victim.read_bytes() == b"precious"


def test_a_link_in_our_own_directory_is_removed_never_followed(tmp_path: pathlib.Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    path = tmp_path / "ours"
    SharedStore(str(path), 10_000).close()
    (path / "slots.new").symlink_to(victim)
    store = SharedStore(str(path), 10_000)
    store.close()
    assert victim.read_bytes() == b"precious" and not (path / "slots.new").exists()
    (path / "slots").unlink()
    (path / "slots").symlink_to(victim)  # a worker opens the map the owner made: never through a link
    with pytest.raises(UnsafePath, match="slots is a symbolic link"):
        SharedStore(str(path), owner=False)
    assert victim.read_bytes() == b"precious"


def test_missing_directories_are_made_ours_alone(tmp_path: pathlib.Path) -> None:
    top = tmp_path / "edgeproxy-0"
    path = top / "127.0.0.1-8080"
    SharedStore(str(path), 10_000, top=str(top)).close()
    for directory in (top, path, path / "lmdb"):
        st = directory.lstat()
        assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o700, os.geteuid()), directory


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a directory to another user")
def test_a_top_directory_another_user_made_first_is_refused(tmp_path: pathlib.Path) -> None:
    """/dev/shm is world-writable: anyone may make /dev/shm/edgeproxy-0 before us, and then own what is in it."""
    top = tmp_path / "edgeproxy-0"
    top.mkdir(mode=0o755)
    os.chown(top, NOBODY, NOBODY)
    with pytest.raises(UnsafePath, match=f"cache path {top} is owned by uid {NOBODY}, not by uid 0"):
        SharedStore(str(top / "127.0.0.1-8080"), 10_000, top=str(top))
    assert list(top.iterdir()) == []


def test_a_top_directory_that_is_a_link_is_refused(tmp_path: pathlib.Path) -> None:
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    top = tmp_path / "edgeproxy-0"
    top.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UnsafePath, match=f"cache path {top} is a symbolic link"):
        SharedStore(str(top / "127.0.0.1-8080"), 10_000, top=str(top))


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a file to another user")
def test_a_data_file_of_another_user_is_refused(tmp_path: pathlib.Path) -> None:
    """Whoever made data.mdb chose the cached responses in it."""
    path = tmp_path / "store"
    SharedStore(str(path), 10_000).close()
    os.chown(path / "lmdb" / "data.mdb", NOBODY, NOBODY)
    with pytest.raises(UnsafePath, match="data.mdb is owned by uid 65534"):
        SharedStore(str(path), 10_000)


# -- publishes that arrive out of order -------------------------------------------------------------------------

def test_a_late_publish_never_takes_a_slot_back_to_an_older_version(tmp_path: pathlib.Path) -> None:
    """Writer B commits, writer C replaces what B stored and publishes, then B's publish arrives: the slot map keeps
    C's newer version, so a copy of B's replaced object never passes for current (it did before)."""
    from edgeproxy.shared.transaction import Write

    store = SharedStore(str(tmp_path / "s"), 10_000)
    try:
        held: list[Write] = []
        publish = Write.publish
        Write.publish = lambda self: held.append(self)  # type: ignore[method-assign]  # B's publish held back
        try:
            store.put(make_entry(body=b"b"))
        finally:
            Write.publish = publish  # type: ignore[method-assign]
        (b_copy,) = store.get("https://a.example/a")  # B's object as the records have it
        store.put(make_entry(body=b"c"))  # C replaces it and publishes
        (c_copy,) = store.get("https://a.example/a")
        assert c_copy.body == b"c" and not store.touch(b_copy) and store.touch(c_copy)
        held[0].publish()  # B's publish, last
        assert not store.touch(b_copy) and store.touch(c_copy)
    finally:
        store.close()


# -- a worker killed between a commit and its publish ---------------------------------------------------------

def _replace_and_die_before_publishing(path: str) -> None:
    """A worker replacing an object and killed right after the commit, before the slot map hears of it."""
    from edgeproxy.shared.transaction import Write

    Write.publish = lambda self: os.kill(os.getpid(), signal.SIGKILL)  # type: ignore[method-assign]
    store = SharedStore(path, owner=False)
    store.put(make_entry(body=b"new"))


def test_a_worker_killed_between_commit_and_publish_leaves_no_copy_current(tmp_path: pathlib.Path) -> None:
    """The supervisor, told the worker died, republishes every version from the records: the copies the other
    workers hold of what the dead one replaced are stale from then on (they were served forever before)."""
    import asyncio

    from edgeproxy.config import config_from_dict
    from edgeproxy.supervisor import Worker, WorkerPool

    config = config_from_dict({"server": {"listen": ["127.0.0.1:8080"], "workers": 2},
                               "cache": {"path": str(tmp_path / "cache"), "size": "64MiB"},
                               "site": [{"hosts": ["*"], "origin": "http://127.0.0.1:9"}]})

    async def scenario() -> tuple[bool, bool, bool]:
        pool = WorkerPool(config, None)
        store = pool.store
        assert store is not None
        try:
            store.put(make_entry(body=b"old"))
            stored = make_entry(path="/kept")
            store.put(stored)
            (copy,) = store.get("https://a.example/a")  # another worker's hot copy of the old object
            (kept,) = store.get("https://a.example/kept")
            process = multiprocessing.get_context("spawn").Process(
                target=_replace_and_die_before_publishing, args=(store.path,))
            process.start()
            process.join(30)
            assert process.exitcode == -signal.SIGKILL
            (new,) = store.get("https://a.example/a")
            assert new.body == b"new"  # committed, never published
            before = store.touch(copy)
            worker = Worker(0)
            worker.process = process
            pool._on_exit(worker, process)
            return before, store.touch(copy), store.touch(kept) and store.touch(new)
        finally:
            pool.timers.cancel_all()
            store.close()

    before, after, untouched = asyncio.run(scenario())
    assert before  # the bug, as the store alone leaves it: the dead worker's change never reached the slot map
    assert not after and untouched


# -- the format covers the records' layouts ------------------------------------------------------------------

def test_a_store_stamped_without_the_records_layouts_is_dropped(tmp_path: pathlib.Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    """Stores were stamped with the entries' encoding alone: one written with other record layouts passed."""
    from edgeproxy.cache import codec

    path = str(tmp_path / "old")
    first = SharedStore(path, 10_000)
    first.put(make_entry())
    with first.env.begin(write=True) as txn:
        txn.put(b"format", codec.FORMAT, db=first.meta)
    first.close()
    second = SharedStore(path, 10_000)
    try:
        assert second.get("https://a.example/a") == [] and second.stats().entries == 0
        assert "dropped and created anew" in caplog.text
    finally:
        second.close()


def test_any_record_layout_change_changes_the_format() -> None:
    import struct
    from dataclasses import fields

    from edgeproxy.shared import records

    state = tuple(f.name for f in fields(records.State))
    place = tuple(f.name for f in fields(records.Place))
    keys = (records.U32, records.U64, records.LEASE)
    current = records.describe(records._STATE, state, place, keys, records.KEY_KEEP)
    assert current == records.RECORDS
    changed = [
        records.describe(struct.Struct("<16Qd"), state, place, keys, records.KEY_KEEP),  # a field more
        records.describe(records._STATE, (*state[1:], state[0]), place, keys, records.KEY_KEEP),  # reordered
        records.describe(records._STATE, state, (*place, "extra"), keys, records.KEY_KEEP),
        records.describe(records._STATE, state, place, (struct.Struct("<I"), *keys[1:]), records.KEY_KEEP),
        records.describe(records._STATE, state, place, (*keys[:2], struct.Struct("<f")), records.KEY_KEEP),
        records.describe(records._STATE, state, place, keys, records.KEY_KEEP - 1),
    ]
    assert len({current, *changed}) == len(changed) + 1
    assert store_format.endswith(b" records=" + current)


# ---- the slot map's file (shared/slotmap.py) ----

def test_a_worker_refuses_a_slot_map_of_another_version_or_size(tmp_path: pathlib.Path) -> None:
    from edgeproxy.shared.slotmap import MAGIC

    path = str(tmp_path / "slots-bad")
    owner = SharedStore(path, 10_000)
    try:
        slots = tmp_path / "slots-bad" / "slots"
        good = slots.read_bytes()
        assert good.startswith(MAGIC)
        slots.write_bytes(b"EPSLOTS0" + good[8:])  # an older layout: same size, another magic
        with pytest.raises(ValueError, match="not a slot map of this version"):
            SharedStore(path, owner=False)
        slots.write_bytes(good[:4])  # cut inside the magic: read as zeros, so not ours either
        with pytest.raises(ValueError, match="not a slot map of this version"):
            SharedStore(path, owner=False)
        slots.write_bytes(good[:-9])  # one slot short of what its header says
        with pytest.raises(ValueError, match=f"has {len(good) - 9} bytes, expected {len(good)}"):
            SharedStore(path, owner=False)
        slots.write_bytes(good)
        assert _in_child(_store_one, path) == 0  # the owner's own map: a worker (another process) opens it
    finally:
        owner.close()


def test_a_stale_slot_map_from_an_older_run_never_vouches_for_a_copy(tmp_path: pathlib.Path) -> None:
    """The owner rebuilds the map from the records: a file an older run left (here one that still says the copy's
    version is current, after the object changed) is replaced, not trusted."""
    path = str(tmp_path / "stale")
    slots = tmp_path / "stale" / "slots"
    first = SharedStore(path, 10_000)
    entry = make_entry(body=b"v1")
    first.put(entry)
    (copy,) = first.get(entry.primary_key)
    stale = slots.read_bytes()  # the map as it was while the copy was current
    first.put(make_entry(body=b"v2"))  # the object replaced: the copy's version retired
    assert not first.touch(copy)
    first.close()
    slots.write_bytes(stale)  # what an older run left behind (or a crash before its publish)
    second = SharedStore(path, 10_000)
    try:
        assert not second.touch(copy)
        (current,) = second.get(entry.primary_key)
        assert current.body == b"v2" and second.touch(current)
    finally:
        second.close()
    slots.write_bytes(b"garbage")  # not a slot map at all: the owner makes a new one, it does not fail
    third = SharedStore(path, 10_000)
    try:
        (current,) = third.get(entry.primary_key)
        assert current.body == b"v2" and third.touch(current)
    finally:
        third.close()
