"""The fast lane (edgeproxy/proxy/lane.py) against the full path, in process (tests/exchangeharness.py): two edges on
one clock and one scripted origin, one with the lane and one without, are sent the same heads; wherever the lane
answers, the bytes written, the counters and the access-log line must be the full path's (the line's total_ms
aside: the lane's is 0.0), and wherever the full path refuses or decides otherwise, the lane must not answer.

Heads: generated browser heads (user agents, cookies, referers, request ids, Accept-*, HEAD, HTTP/1.0), the
smuggling probes of tests/integration/test_smuggling.py, and seeded mutations of browser heads."""

from __future__ import annotations

import asyncio
import functools
import random
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from edgeproxy.http import headscan
from edgeproxy.proxy.lane import Lane
from edgeproxy.shared.store import SharedStore
from edgeproxy.shared.tiered import TieredStore
from tests.exchangeharness import Harness, Reply, Seen
from tests.integration.test_smuggling import BODY_PROBES, HEAD_PROBES

HOST = b"a.test"
UAS = [b"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
       b"Mozilla/5.0 (Macintosh; Intel Mac OS X 14.7; rv:133.0) Gecko/20100101 Firefox/133.0", b"curl/8.5.0"]
ENCODINGS = [b"gzip, deflate, br, zstd", b"gzip, deflate", b"identity", b"br;q=0, gzip;q=0.5"]


def script(seen: Seen) -> Reply:
    """Objects that differ by path: plain, Vary: Accept-Encoding, origin-mode CORS, short-lived, uncacheable."""
    path = seen.target.split("?")[0]
    if path.startswith("/vary"):
        coding = seen.headers.get("accept-encoding", "")
        return Reply(headers=[("cache-control", "max-age=600"), ("vary", "Accept-Encoding"), ("etag", '"v"')],
                     body=b"variant for " + coding.encode())
    if path.startswith("/cors"):
        fields = [("cache-control", "max-age=600")]
        if "origin" in seen.headers:
            fields += [("access-control-allow-origin", seen.headers["origin"]), ("vary", "Origin")]
        return Reply(headers=fields, body=b"cors body")
    if path.startswith("/private"):
        return Reply(headers=[("cache-control", "private")], body=b"private")
    return Reply(headers=[("cache-control", "max-age=600"), ("etag", '"e"'), ("surrogate-key", "t1")],
                 body=b"object " + path.encode())


def asynctest(fn: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    """Run an async test on a fresh loop (the harness needs one), bounded."""
    @functools.wraps(fn)
    def run(*args: object, **kwargs: object) -> None:
        asyncio.run(asyncio.wait_for(fn(*args, **kwargs), 300))
    return run


def browser_head(rng: random.Random, path: bytes) -> bytes:
    method = rng.choice([b"GET", b"GET", b"GET", b"HEAD"])
    version = rng.choice([b"1.1", b"1.1", b"1.1", b"1.0"])
    fields = [(b"Host", HOST), (b"User-Agent", rng.choice(UAS)),
              (b"Accept", b"text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
              (b"Accept-Language", rng.choice([b"en-US,en;q=0.5", b"fr-FR,fr;q=0.9"])),
              (b"Accept-Encoding", rng.choice(ENCODINGS)),
              (b"Cookie", b"session=%d; theme=dark" % rng.randrange(10**9)),
              (b"Referer", b"https://a.test/page/%d" % rng.randrange(100)),
              (b"X-Request-Id", b"%032x" % rng.getrandbits(128))]
    if rng.random() < 0.3:
        fields.append((b"Connection", rng.choice([b"keep-alive", b"close", b"Keep-Alive"])))
    if rng.random() < 0.2:
        fields.append((b"Origin", b"https://app.example"))
    rng.shuffle(fields)
    lines = [b"%s %s HTTP/%s" % (method, path, version)] + [k + b": " + v for k, v in fields]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def mutate(rng: random.Random, head: bytes) -> bytes:
    """One small change a fuzzer would make: a byte replaced, inserted or dropped, or a line doubled."""
    data = bytearray(head)
    pos = rng.randrange(len(data))
    kind = rng.randrange(4)
    if kind == 0:
        data[pos] = rng.choice(b"\x00\r\n\t :;,\"\\#/\x7f\x80Aa0")
    elif kind == 1:
        data.insert(pos, rng.choice(b"\r\n\t :\x00X"))
    elif kind == 2:
        del data[pos]
    else:
        lines = bytes(data).split(b"\r\n")
        i = rng.randrange(1, max(2, len(lines) - 2))
        lines.insert(i, lines[i])
        data = bytearray(b"\r\n".join(lines))
    return bytes(data)


class Pair:
    """Two edges, one clock, one script: ``lane`` with the fast lane, ``full`` without."""

    def __init__(self, tmp_path: Path, parser: str, log_format: str = "combined", shared: bool = False,
                 **config: object) -> None:
        server = {"parser": parser}
        self.lane = Harness(server={**server, "fast_lane": True}, log={"access": str(tmp_path / "lane.log"),
                                                                        "format": log_format}, **config)
        self.full = Harness(server={**server, "fast_lane": False}, log={"access": str(tmp_path / "full.log"),
                                                                         "format": log_format}, **config)
        self.full.clock = self.lane.clock
        self.full.edge.clock = self.lane.clock
        self.full.origin.clock = self.lane.clock
        for h in (self.lane, self.full):
            h.origin.script = script
        if shared:  # each edge a worker's store: a hot tier over its own shared LMDB store
            for name, h in (("lane", self.lane), ("full", self.full)):
                shared_store = SharedStore(str(tmp_path / f"{name}-store"), 16 << 20)
                h.edge.store = TieredStore(shared_store, 4 << 20, 1 << 20)
                if h.edge.lane is not None:
                    h.edge.lane = Lane(h.edge)

    async def send(self, data: bytes) -> tuple[bytes, bytes, dict, bool]:
        """``data`` to both on new connections: each one's output, and whether the lane answered it."""
        outs = []
        lane_hits = self.lane.edge.counters.lane_hits
        before = [figures(h) for h in (self.lane, self.full)]
        for h in (self.lane, self.full):
            conn, transport = h.client()
            conn.data_received(data)
            if conn.task is not None:  # a miss or a pass: the exchange runs as a task
                await asyncio.wait_for(asyncio.shield(conn.task), 5)
            await asyncio.sleep(0)  # a close is reported on the next turn of the loop
            outs.append(bytes(transport.out))
        after = [figures(h) for h in (self.lane, self.full)]
        deltas = [delta(b, a) for b, a in zip(before, after, strict=True)]
        assert deltas[0] == deltas[1], (data, deltas)
        lines = [drain_log(h) for h in (self.lane, self.full)]
        assert mask_total(lines[0]) == mask_total(lines[1]), (data, lines)
        return outs[0], outs[1], deltas[0], self.lane.edge.counters.lane_hits > lane_hits


def figures(h: Harness) -> dict:
    """The counters, and the store's lookups as /metrics shows them (a lane hit counts as one: LocalEdge.figures)."""
    counters, store = h.edge.counters.to_dict(), h.edge.store.stats()
    return {**counters, "store_hits": store.hits + counters["lane_hits"], "store_misses": store.misses}


def delta(before: dict, after: dict) -> dict:
    """What changed in the counters, less what only the lane counts and the time-dependent figures."""
    out = {}
    for key in ("requests", "responses", "response_bytes", "origin_requests", "store_hits", "store_misses"):
        b, a = before[key], after[key]
        out[key] = {k: a[k] - b.get(k, 0) for k in a} if isinstance(a, dict) else a - b
    return out


def drain_log(h: Harness) -> list[bytes]:
    lines = list(h.edge.access_log.lines)
    h.edge.access_log.lines.clear()
    return lines


def mask_total(lines: list[bytes]) -> list[bytes]:
    """The lines without their measured times (the lane's are 0.0: it answers within the read)."""
    import re

    return [re.sub(rb"(total_ms|origin_ms)[=\":]+ ?[0-9.e-]+", rb"\1=T", line) for line in lines]


@pytest.fixture(params=["h11", "httptools"])
def parser(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(params=["memory", "shared"])
def store(request: pytest.FixtureRequest) -> bool:
    """The in-process store of one worker, or a worker's hot tier over a shared store."""
    return request.param == "shared"


@pytest.fixture(params=["compiled", "twin"])
def scanner(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Run the lane with the compiled scan and with its Python twin."""
    from edgeproxy.proxy import lane

    if request.param == "compiled":
        if headscan.scan_c is None:
            pytest.skip("the compiled scanner is not built here")  # scripts/test builds it: fails under CI
        monkeypatch.setattr(lane, "scan", headscan.scan_c)
        monkeypatch.setattr(lane, "fields_named", headscan.fields_named_c)
    else:
        monkeypatch.setattr(lane, "scan", headscan.scan_py)
        monkeypatch.setattr(lane, "fields_named", headscan.fields_named_py)
    yield request.param


PATHS = [b"/obj/1", b"/obj/2?q=1", b"/vary/a", b"/cors/x", b"/private/p"]


async def warm(pair: Pair, heads: list[bytes]) -> None:
    """Each head four times: a miss stores its object, a parsed hit publishes it on the lane (with a shared store,
    the hit after two reads admits it to the hot tier, which a published entry must be in)."""
    for data in heads:
        for _ in range(4):
            await pair.send(data)


@asynctest
async def test_browser_heads_answer_as_the_full_path(tmp_path: Path, parser: str, scanner: str, store: bool) -> None:
    pair = Pair(tmp_path, parser, shared=store)
    rng = random.Random(7)
    heads = [browser_head(rng, rng.choice(PATHS)) for _ in range(400)]
    await warm(pair, heads[:40])
    answered, before = 0, pair.lane.edge.counters.lane_hits
    for data in heads:
        lane_out, full_out, _, by_lane = await pair.send(data)
        assert lane_out == full_out, (data, lane_out, full_out)
        answered += by_lane
    assert answered > (150 if store else 250), answered  # most browser heads are lane hits, whatever their bytes
    assert pair.lane.edge.counters.lane_hits - before == answered


@asynctest
async def test_mutated_and_smuggling_heads_are_never_answered_otherwise(tmp_path: Path, parser: str,
                                                                        scanner: str, store: bool) -> None:
    pair = Pair(tmp_path, parser, shared=store)
    rng = random.Random(11)
    base = [browser_head(rng, b"/obj/1") for _ in range(20)]
    await warm(pair, base)
    probes = [p.values[0] for p in HEAD_PROBES + BODY_PROBES]
    mutated = [mutate(rng, rng.choice(base)) for _ in range(1500)]
    for data in probes + mutated:
        lane_out, full_out, _, _ = await pair.send(data)
        assert lane_out == full_out, data


@asynctest
async def test_json_log_lines_are_the_full_paths(tmp_path: Path, scanner: str) -> None:
    pair = Pair(tmp_path, "httptools", log_format="json")
    rng = random.Random(3)
    heads = [browser_head(rng, b"/obj/1") for _ in range(30)]
    await warm(pair, heads[:2])
    for data in heads:
        lane_out, full_out, _, _ = await pair.send(data)
        assert lane_out == full_out


@asynctest
async def test_a_purge_stale_entry_or_new_variant_is_never_answered_by_the_lane(tmp_path: Path, store: bool) -> None:
    from edgeproxy.cache.purge import PurgeTag, PurgeURL

    pair = Pair(tmp_path, "httptools", shared=store)
    rng = random.Random(5)
    head = browser_head(rng, b"/obj/1").replace(b"HEAD ", b"GET ").replace(b"HTTP/1.0", b"HTTP/1.1")
    await warm(pair, [head])
    assert (await pair.send(head))[3]
    for soft in (True, False):
        for h in (pair.lane, pair.full):
            assert await h.edge.purge(PurgeURL("http://a.test/obj/1"), soft=soft) == {"purged": 1}
        lane_out, full_out, _, by_lane = await pair.send(head)
        assert lane_out == full_out and not by_lane
        await pair.send(head)  # published anew
    for h in (pair.lane, pair.full):
        assert await h.edge.purge(PurgeTag(("t1",)), soft=False) == {"purged": 1}
    assert not (await pair.send(head))[3]
    await warm(pair, [head])
    pair.lane.clock.now += 601  # stale: the full path revalidates
    lane_out, full_out, _, by_lane = await pair.send(head)
    assert lane_out == full_out and not by_lane


@asynctest
async def test_reload_starts_a_new_table(tmp_path: Path) -> None:
    pair = Pair(tmp_path, "httptools")
    head = b"GET /obj/1 HTTP/1.1\r\nHost: a.test\r\n\r\n"
    await warm(pair, [head])
    assert (await pair.send(head))[3]
    pair.lane.edge.apply(pair.lane.edge.config)
    assert not pair.lane.edge.lane.table
    assert not (await pair.send(head))[3]


@asynctest
async def test_the_lane_is_off_by_either_key(tmp_path: Path) -> None:
    for server in ({"fast_lane": False}, {"head_memo": False}):
        assert Harness(server=server).edge.lane is None
    assert Harness().edge.lane is not None


def test_a_variant_stored_beside_others_supersedes_them() -> None:
    from edgeproxy.cache.key import CacheRequest
    from edgeproxy.cache.storability import make_entry
    from edgeproxy.cache.store import Store

    store = Store(1 << 20, 1 << 16, 8)

    def entry(coding: bytes, body: bytes) -> object:
        req = CacheRequest(b"GET", "http", "a.test", b"/x", [(b"accept-encoding", coding)])
        return make_entry(req, 200, [(b"cache-control", b"max-age=60"), (b"vary", b"accept-encoding")], body, 0.0, 0.0)

    br, gzip, again = entry(b"br", b"a"), entry(b"gzip", b"b"), entry(b"gzip", b"c")
    assert store.put(br) and not br.superseded
    assert store.put(gzip) and br.superseded and not gzip.superseded  # the lane asks the store about br from now on
    assert store.put(again) and not again.superseded  # a replacement: nothing beside it changed


def test_scanner_module_says_which_it_runs() -> None:
    assert (headscan.scan is headscan.scan_c) is headscan.COMPILED


@asynctest
async def test_the_table_never_holds_an_entry_the_store_forgot(tmp_path: Path) -> None:
    """Evicted, replaced or purged: the store tells the lane at once, so no entry outlives the cache's byte bound."""
    from edgeproxy.cache.purge import PurgeAll

    pair = Pair(tmp_path, "httptools", cache={"size": "64KiB", "max_object_size": "8KiB"})
    heads = [b"GET /obj/%d HTTP/1.1\r\nHost: a.test\r\n\r\n" % i for i in range(200)]
    for data in heads:
        await pair.send(data)
        await pair.send(data)  # a parsed hit publishes it
    lane, store = pair.lane.edge.lane, pair.lane.edge.store
    held = [p.entry for published in lane.table.values() for p in published]
    assert held and all(store.holds(e) for e in held)  # the early ones were evicted, and withdrawn
    assert len(held) == len(lane.where) < len(heads)
    await pair.lane.edge.purge(PurgeAll(), soft=False)
    assert lane.table == {} and lane.where == {}


def test_only_what_the_store_holds_is_published() -> None:
    from edgeproxy.cache.key import CacheRequest
    from edgeproxy.cache.storability import make_entry
    from edgeproxy.cache.store import Store

    async def scenario() -> None:
        h = Harness()
        lane = h.edge.lane
        entry = make_entry(CacheRequest(b"GET", "http", "a.test", b"/x", []), 200,
                           [(b"cache-control", b"max-age=60")], b"a", 0.0, 0.0)
        lane.publish(("http", b"a.test", b"/x"), entry, b"", False)
        assert lane.table == {}  # a copy nobody holds (one read from a shared store and not kept hot)
        assert isinstance(h.edge.store, Store) and h.edge.store.put(entry)
        lane.publish(("http", b"a.test", b"/x"), entry, b"", False)
        assert list(lane.table) == [("http", b"a.test", b"/x")]

    asyncio.run(scenario())
