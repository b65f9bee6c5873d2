"""The storage conformance suite (``StorageContract``: any backend must pass it) and the checks that
are specific to the in-memory ``Store`` (capacity reload, purge-log bound, memory overhead, purity)."""

from __future__ import annotations

import ast
import asyncio
import pathlib
import random
import tracemalloc
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import pytest

from edgeproxy import purging
from edgeproxy.cache.entry import ENTRY_OVERHEAD, Entry
from edgeproxy.cache.purge import (
    PurgeAll,
    PurgeHost,
    PurgeIndex,
    PurgePrefix,
    PurgeRegex,
    PurgeTag,
    PurgeURL,
    Selector,
)
from edgeproxy.cache.store import PURGED_DURING_FETCH, TOO_LARGE, Storage, Store

NOW = 1_700_000_000.0


def make_entry(
    path: str = "/a",
    host: str = "a.example",
    scheme: str = "https",
    variant: tuple[bytes, ...] = (),
    tags: Iterable[str] = (),
    size: int = 100,
    body: bytes = b"",
    headers: list[tuple[bytes, bytes]] | None = None,
) -> Entry:
    return Entry(
        primary_key=f"{scheme}://{host}{path}",
        variant_key=variant,
        vary=(b"accept-language",) if variant else (),
        host=host,
        path=path,
        status=200,
        headers=headers or [],
        body=body,
        head=b"HTTP/1.1 200 OK\r\n",
        request_time=NOW,
        response_time=NOW,
        date_value=NOW,
        corrected_initial_age=0.0,
        freshness_lifetime=60.0,
        tags=frozenset(tags),
        size=size,
    )


# A small population for purge tests: label -> entry arguments.
POPULATION: dict[str, dict[str, Any]] = {
    "a-img1": {"path": "/img/1.jpg", "tags": ("img", "a")},
    "a-img2-en": {"path": "/img/2.jpg", "variant": (b"en",), "tags": ("img",)},
    "a-img2-fr": {"path": "/img/2.jpg", "variant": (b"fr",), "tags": ("img",)},
    "a-img1-http": {"path": "/img/1.jpg", "scheme": "http"},
    "a-page": {"path": "/index.html?x=1", "tags": ("page",)},
    "a-imgx": {"path": "/imgx"},
    "b-img1": {"path": "/img/1.jpg", "host": "b.example", "tags": ("img",)},
    "b8443-img3": {"path": "/img/3.jpg", "host": "b.example:8443"},
}
ALL = frozenset(POPULATION)

PURGES: list[tuple[Selector, frozenset[str]]] = [
    (PurgeURL("HTTPS://A.Example:443/img/2.jpg"), frozenset({"a-img2-en", "a-img2-fr"})),
    (PurgeURL("http://a.example/img/1.jpg#top"), frozenset({"a-img1-http"})),
    (PurgeURL("https://a.example/nothing"), frozenset()),
    (PurgePrefix("/img/*", "a.example"), frozenset({"a-img1", "a-img2-en", "a-img2-fr", "a-img1-http"})),
    (PurgePrefix("/img", "a.example"), frozenset({"a-img1", "a-img2-en", "a-img2-fr", "a-img1-http", "a-imgx"})),
    (PurgePrefix("/img/"), frozenset({"a-img1", "a-img2-en", "a-img2-fr", "a-img1-http", "b-img1", "b8443-img3"})),
    (PurgePrefix("/*", "b.example"), frozenset({"b-img1"})),
    (PurgePrefix("/*", "c.example"), frozenset()),
    (PurgeHost("A.EXAMPLE"), ALL - {"b-img1", "b8443-img3"}),
    (PurgeHost("b.example:8443"), frozenset({"b8443-img3"})),
    (PurgeTag(["img"]), frozenset({"a-img1", "a-img2-en", "a-img2-fr", "b-img1"})),
    (PurgeTag(["page", "a"]), frozenset({"a-page", "a-img1"})),
    (PurgeTag(["none"]), frozenset()),
    (PurgeRegex(r"\.jpg$"), frozenset({"a-img1", "a-img2-en", "a-img2-fr", "a-img1-http", "b-img1", "b8443-img3"})),
    (PurgeRegex(r"^http://"), frozenset({"a-img1-http"})),
    (PurgeAll(), ALL),
]


def ident(entry: Entry) -> tuple[Any, ...]:
    """What tells stored objects apart without identity: a shared store hands out copies."""
    return entry.primary_key, entry.variant_key, entry.size, entry.tags


def idents(entries: Iterable[Entry]) -> list[tuple[Any, ...]]:
    return [ident(e) for e in entries]


class StorageContract:
    """Every storage backend must pass these: subclass with ``factory`` building a backend from
    ``(capacity, max_object_size=None, max_variants=32)``. Objects are compared with ``ident``: a backend may
    hand out copies (edgeproxy/shared), so the suite never relies on getting the very object it stored."""

    factory: ClassVar[Callable[..., Storage]]

    def make(self, capacity: int = 10_000, **options: Any) -> Storage:
        return type(self).factory(capacity, **options)

    def populate(self, store: Storage) -> dict[str, Entry]:
        entries = {label: make_entry(**args) for label, args in POPULATION.items()}
        for entry in entries.values():
            assert store.put(entry)
        return entries

    def test_empty(self) -> None:
        store = self.make(1000)
        assert store.get("https://a.example/a") == []
        stats = store.stats()
        assert (stats.entries, stats.bytes, stats.capacity) == (0, 0, 1000)

    def test_put_then_get(self) -> None:
        store = self.make()
        entry = make_entry(size=123)
        assert store.put(entry)
        assert idents(store.get(entry.primary_key)) == [ident(entry)]
        assert store.get("https://a.example/other") == []
        stats = store.stats()
        assert (stats.entries, stats.bytes, stats.inserts, stats.hits, stats.misses) == (1, 123, 1, 1, 1)

    def test_same_variant_is_replaced(self) -> None:
        store = self.make()
        old, new = make_entry(size=100), make_entry(size=250)
        store.put(old)
        store.put(new)
        assert idents(store.get(new.primary_key)) == [ident(new)]
        stats = store.stats()
        assert (stats.entries, stats.bytes, stats.evictions, stats.inserts) == (1, 250, 0, 2)

    def test_variants_are_stored_side_by_side(self) -> None:
        store = self.make()
        en, fr = make_entry(variant=(b"en",)), make_entry(variant=(b"fr",))
        store.put(en)
        store.put(fr)
        assert set(idents(store.get(en.primary_key))) == {ident(en), ident(fr)}

    def test_variant_cap_evicts_the_least_recently_used_variant(self) -> None:
        store = self.make(max_variants=3)
        v1, v2, v3, v4 = (make_entry(variant=(bytes([i]),)) for i in range(4))
        for v in (v1, v2, v3):
            store.put(v)
        store.touch(next(e for e in store.get(v1.primary_key) if ident(e) == ident(v1)))  # as a hit does
        assert store.put(v4)
        assert set(idents(store.get(v1.primary_key))) == set(idents([v1, v3, v4]))
        assert store.stats().evictions == 1

    @pytest.mark.parametrize(
        ("capacity", "max_object_size", "size", "stored"),
        [(1000, None, 1000, True), (1000, None, 1001, False), (1000, 500, 500, True), (1000, 500, 501, False)],
    )
    def test_too_large_is_refused(self, capacity: int, max_object_size: int | None, size: int, stored: bool) -> None:
        store = self.make(capacity, max_object_size=max_object_size)
        assert store.put(make_entry(size=size)) is stored
        assert store.stats().not_stored.get(TOO_LARGE, 0) == (0 if stored else 1)
        assert store.stats().bytes == (size if stored else 0)

    def test_an_object_read_outlives_one_not_read(self) -> None:
        store = self.make(300)
        a, b, c, d = (make_entry(path=f"/{n}") for n in "abcd")
        for e in (a, b, c):
            store.put(e)
        store.touch(a)
        assert store.put(d)
        assert [store.get(e.primary_key) != [] for e in (a, b, c, d)] == [True, False, True, True]
        assert store.stats().evictions == 1

    @pytest.mark.parametrize("seed", range(5))
    def test_byte_bound_holds_under_churn(self, seed: int) -> None:
        rng = random.Random(seed)
        store = self.make(2000, max_variants=3)
        keys = [f"/{i}" for i in range(30)]
        for _ in range(1500):
            entry = make_entry(path=rng.choice(keys), variant=(bytes([rng.randrange(5)]),), size=rng.randint(1, 700))
            if rng.random() < 0.1:
                store.remove(rng.choice(store.get(entry.primary_key) or [entry]))
            elif store.put(entry):
                assert ident(entry) in idents(store.get(entry.primary_key))
            stored = [e for k in keys for e in store.get(f"https://a.example{k}")]
            stats = store.stats()
            assert stats.bytes <= stats.capacity
            assert stats.bytes == sum(e.size for e in stored)
            assert stats.entries == len(stored)
            assert all(len(store.get(f"https://a.example{k}")) <= 3 for k in keys)

    def test_remove_only_removes_that_object(self) -> None:
        store = self.make()
        old, new = make_entry(size=10), make_entry(size=20)
        store.put(old)
        store.put(new)
        assert store.remove(old) is False
        assert idents(store.get(new.primary_key)) == [ident(new)]
        assert store.remove(new) is True
        assert store.get(new.primary_key) == []
        assert store.stats().bytes == 0

    def test_touch_after_removal_is_harmless(self) -> None:
        store = self.make()
        entry = make_entry()
        store.put(entry)
        store.remove(entry)
        store.touch(entry)
        assert store.get(entry.primary_key) == []

    @pytest.mark.parametrize(("selector", "expected"), PURGES, ids=repr)
    def test_hard_purge(self, selector: Selector, expected: frozenset[str]) -> None:
        store = self.make()
        entries = self.populate(store)
        assert store.purge(selector, soft=False, now=NOW) == len(expected)
        for label, entry in entries.items():
            assert (ident(entry) in idents(store.get(entry.primary_key))) is (label not in expected), label
        stats = store.stats()
        assert (stats.entries, stats.purged) == (len(ALL) - len(expected), len(expected))
        assert stats.bytes == 100 * stats.entries

    @pytest.mark.parametrize(("selector", "expected"), PURGES, ids=repr)
    def test_soft_purge(self, selector: Selector, expected: frozenset[str]) -> None:
        store = self.make()
        entries = self.populate(store)
        assert store.purge(selector, soft=True, now=NOW) == len(expected)
        for label, entry in entries.items():
            (stored,) = [e for e in store.get(entry.primary_key) if ident(e) == ident(entry)]
            assert stored.invalidated is (label in expected), label
        assert store.stats().entries == len(ALL)

    @pytest.mark.parametrize("soft", [False, True], ids=["hard", "soft"])
    @pytest.mark.parametrize(("selector", "expected"), PURGES, ids=repr)
    def test_purge_in_steps_agrees_with_purge(self, selector: Selector, expected: frozenset[str], soft: bool,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(purging, "BATCH", 2)  # many steps over the small population
        store = self.make()
        entries = self.populate(store)
        assert asyncio.run(purging.purge(store, selector, soft, NOW, budget=60.0)) == {"purged": len(expected)}
        for label, entry in entries.items():
            found = [e for e in store.get(entry.primary_key) if ident(e) == ident(entry)]
            assert (found[0].invalidated if soft else not found) is (label in expected), label
        assert store.stats().purged == len(expected)

    def test_a_walk_refuses_from_its_announce_what_an_older_fetch_would_store(self) -> None:
        store = self.make()
        token = store.generation()  # a fetch starts, then a regex purge is announced and walks
        store.announce(PurgeRegex(r"\.jpg$"), NOW)
        assert not store.put(make_entry("/late.jpg"), since=token)
        assert store.put(make_entry("/late.css"), since=token)
        assert store.put(make_entry("/new.jpg"), since=store.generation())  # a fetch that started after it

    def test_a_slot_taken_by_another_key_since_the_scan_is_left_alone(self) -> None:
        store = self.make()
        self.populate(store)
        items, _ = store.scan(None, 100)
        found = [item for item in items if item[0].endswith("/imgx")]
        store.purge(PurgeURL("https://a.example/imgx"), now=NOW)
        assert store.put(make_entry("/other"))  # may reuse the slot the scan saw
        assert store.purge_scanned(found, soft=False) == 0
        assert store.get("https://a.example/other")

    def test_a_regex_over_its_budget_soft_purges_its_host_instead(self) -> None:
        store = self.make()
        entries = self.populate(store)
        reply = asyncio.run(purging.purge(store, PurgeRegex(r"^https://a\.example/img/"), False, NOW, budget=0.0))
        a_host = {label for label, args in POPULATION.items() if "host" not in args}
        assert reply["purged"] == len(a_host)
        assert reply["over_budget"] == {"budget_seconds": 0.0, "matched": 0, "fallback": "host a.example",
                                        "soft_purged": len(a_host), "seconds": reply["over_budget"]["seconds"]}
        for label, entry in entries.items():
            (stored,) = [e for e in store.get(entry.primary_key) if ident(e) == ident(entry)]
            assert stored.invalidated is (label in a_host), label

    def test_a_regex_naming_no_host_falls_back_to_everything(self) -> None:
        store = self.make()
        self.populate(store)
        reply = asyncio.run(purging.purge(store, PurgeRegex(r"\.jpg$"), True, NOW, budget=0.0))
        assert reply["over_budget"]["fallback"] == "everything" and reply["purged"] == len(ALL)

    def test_purge_records_its_time(self) -> None:
        store = self.make()
        assert store.stats().last_purge_at is None
        store.purge(PurgeAll(), now=NOW)
        assert store.stats().last_purge_at == NOW

    @pytest.mark.parametrize(
        ("selector", "refused"),
        [
            (PurgeURL("https://a.example/img/1.jpg"), True),
            (PurgeURL("https://a.example/img/2.jpg"), False),
            (PurgePrefix("/img/*", "a.example"), True),
            (PurgePrefix("/img/*", "b.example"), False),
            (PurgeHost("a.example"), True),
            (PurgeHost("b.example"), False),
            (PurgeTag(["x", "img"]), True),
            (PurgeTag(["page"]), False),
            (PurgeRegex(r"1\.jpg"), True),
            (PurgeRegex(r"2\.jpg"), False),
            (PurgeAll(), True),
        ],
        ids=repr,
    )
    def test_purge_during_fetch_blocks_the_put(self, selector: Selector, refused: bool) -> None:
        store = self.make()
        token = store.generation()  # the fetch starts
        store.purge(selector, soft=False, now=NOW)  # nothing stored yet: the purge still counts
        fetched = make_entry(path="/img/1.jpg", tags=("img",))
        assert store.put(fetched, since=token) is not refused
        assert store.stats().not_stored.get(PURGED_DURING_FETCH, 0) == int(refused)

    @pytest.mark.parametrize("soft", [False, True])
    def test_purge_before_the_fetch_started_does_not_block(self, soft: bool) -> None:
        store = self.make()
        store.put(make_entry())
        store.purge(PurgeAll(), soft=soft, now=NOW)
        token = store.generation()
        fresh = make_entry()
        assert store.put(fresh, since=token)
        assert idents(store.get(fresh.primary_key)) == [ident(fresh)]

    def test_race_replaces_only_after_a_later_fetch(self) -> None:
        store = self.make()
        slow_token = store.generation()  # a slow fetch starts before the purge
        store.purge(PurgeURL("https://a.example/a"), now=NOW)
        fast_token = store.generation()  # another fetch starts after it
        fast, slow = make_entry(size=10), make_entry(size=20)
        assert store.put(fast, since=fast_token)
        assert not store.put(slow, since=slow_token)
        assert idents(store.get(fast.primary_key)) == [ident(fast)]

    def test_count_not_stored(self) -> None:
        store = self.make()
        store.count_not_stored("no-store")
        store.count_not_stored("no-store")
        store.count_not_stored("private")
        assert store.stats().not_stored == {"no-store": 2, "private": 1}


class TestStore(StorageContract):
    factory = Store

    def test_capacity_shrink_evicts_least_recent(self) -> None:
        store = Store(1000)
        entries = [make_entry(path=f"/{i}") for i in range(10)]
        for e in entries:
            store.put(e)
        store.touch(entries[0])
        store.capacity = 300
        assert (len(store), store.bytes_used, store.capacity) == (3, 300, 300)
        assert [e for e in entries if store.get(e.primary_key)] == [entries[0], entries[8], entries[9]]
        store.capacity = 5000
        assert len(store) == 3

    @pytest.mark.parametrize("value", [-1])
    def test_bad_capacity(self, value: int) -> None:
        with pytest.raises(ValueError, match="capacity"):
            Store(1000).capacity = value
        with pytest.raises(ValueError, match="capacity"):
            Store(value)

    @pytest.mark.parametrize("size", [0, -5])
    def test_entry_without_size_is_a_bug(self, size: int) -> None:
        with pytest.raises(ValueError, match="size"):
            Store(1000).put(make_entry(size=size))

    def test_bound_holds_at_the_moment_of_insertion(self) -> None:
        store = Store(1000)
        seen: list[int] = []

        class Spy(PurgeIndex):
            def add_tags(self, entry: Entry) -> None:  # runs while the entry is being linked in
                seen.append(store.bytes_used + entry.size)
                super().add_tags(entry)

        store._index = Spy()
        for i in range(20):
            store.put(make_entry(path=f"/{i}", size=150 + 10 * i))
        assert len(seen) == 20 and max(seen) <= 1000

    @pytest.mark.parametrize(
        ("key", "host", "path"),
        [("https://a.example/b", "b.example", "/b"), ("https://a.example/b", "a.example", "/c")],
    )
    def test_key_must_agree_with_host_and_path(self, key: str, host: str, path: str) -> None:
        entry = make_entry()
        entry.primary_key, entry.host, entry.path = key, host, path
        with pytest.raises(ValueError, match="disagrees"):
            Store(1000).put(entry)

    @pytest.mark.parametrize(("unrelated_purges", "stored"), [(1, True), (2, True), (3, False)])
    def test_purges_older_than_the_log_refuse(self, unrelated_purges: int, stored: bool) -> None:
        store = Store(1000, purge_log=2)
        store.purge(PurgeHost("x.example"))  # fills the log before the token
        token = store.generation()
        for _ in range(unrelated_purges):
            store.purge(PurgeHost("b.example"))
        assert store.put(make_entry(), since=token) is stored

    def test_hit_path_returns_copies(self) -> None:
        store = Store(1000)
        entry = make_entry()
        store.put(entry)
        store.get(entry.primary_key).clear()
        assert store.get(entry.primary_key) == [entry]


# Measured 2026-11 (CPython 3.11, 5000 entries): ~1.15 KiB untagged, ~1.34 KiB with two tags, of which
# the store's LRU, map and index slots are ~0.2-0.35 KiB and the rest the Entry's own objects. Until
# cache/entry.py raises ENTRY_OVERHEAD to at least 1536 this is an expected (strict) failure.
@pytest.mark.xfail(ENTRY_OVERHEAD < 1536, reason="ENTRY_OVERHEAD below the measured cost", strict=True)
def test_overhead_estimate() -> None:
    """ENTRY_OVERHEAD covers what a 1 KiB entry really costs beyond its head and body bytes: the Entry,
    its strings, header list and tuples, and the store's LRU, map and index slots."""
    count = 5000
    store = Store(10**9)
    headers = [(b"content-type", b"image/jpeg"), (b"cache-control", b"max-age=60"), (b"etag", b'"abc"')]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        payload = 0
        for i in range(count):
            entry = make_entry(
                path=f"/static/images/{i:06d}.jpg?v=3",
                host=f"h{i % 50}.example",
                tags=(f"tag{i % 100}", "images"),
                body=bytes(1024),
                headers=[(k, bytes(v)) for k, v in headers],
                size=1024 + ENTRY_OVERHEAD,
            )
            entry.head = b"HTTP/1.1 200 OK\r\n" + b"".join(b"%s: %s\r\n" % h for h in headers) + bytes([i % 256])
            payload += len(entry.body) + len(entry.head)
            store.put(entry)
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    per_entry = (after - before - payload) / count
    assert per_entry <= ENTRY_OVERHEAD, per_entry


@pytest.mark.parametrize("module", ["edgeproxy/cache/store.py", "edgeproxy/cache/purge.py"])
def test_core_stays_pure(module: str) -> None:
    tree = ast.parse((pathlib.Path(__file__).parents[2] / module).read_text())
    imported = {
        alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
    }
    imported |= {
        node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module
    }
    assert not imported & {"asyncio", "socket", "time", "h11", "uvloop"}
