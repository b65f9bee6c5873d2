"""The shared HTTP cache over real sockets: a scripted origin, the proxy as a subprocess, plain clients (category:
cache).

What is checked, always with the origin's request count as the ground truth: hits after misses (Age, HEAD from a
stored GET), 304 freshening, stale-while-revalidate with one background revalidation, stale-if-error and
must-revalidate, miss collapsing (and never handing a private or Set-Cookie response to a waiter), what is never
stored (truncated bodies, oversized bodies, the edge's own errors, unfresh 500s), the byte bound under churn, Vary,
client conditionals and ranges answered from the cache, request Cache-Control, invalidation by unsafe methods,
Set-Cookie handling, and the edge-consumed fields (Cache-Tag, Surrogate-Key, CDN-Cache-Control).

Most tests share one proxy (``edge``) with unique paths per test, so the cache state of one never meets another.
Freshness only lapses through ``max-age=1`` and a ``STALE`` pause; every other wait is bounded polling.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import h11
import pytest

from edgeproxy.control.client import ControlClient
from tests.scriptorigin import Reply, ScriptOrigin, Seen
from tests.support import PARSERS, HTTPClient, Proc, Response, env, parse_responses, raw_exchange, read_all, start_proxy

HOST = "test.local"
IGNORE_HOST = "ignore.test"  # ignore_request_cache_control = true
COOKIE_HOST = "cookie.test"  # store_set_cookie = true
KIB = 1024
MAX_OBJECT = 256 * KIB
MAX_VARIANTS = 3
STALE = 1.2  # seconds: enough for max-age=1 to lapse
HIT_FOR_MISS = 1.0


# ---- helpers ----

def fetch(proxy: Proc, target: str, headers: dict[str, str] | None = None, method: str = "GET",
          host: str = HOST, body: bytes = b"") -> Response:
    with HTTPClient(proxy.port) as client:
        return client.request(method, target, headers, body=body, host=host)


def concurrently(proxy: Proc, target: str, n: int, headers: dict[str, str] | None = None) -> list[Response]:
    """``n`` GETs of ``target`` on ``n`` connections, released together."""
    results: list[Response | BaseException] = [RuntimeError("no answer")] * n
    clients = [HTTPClient(proxy.port) for _ in range(n)]
    start = threading.Barrier(n)

    def one(i: int) -> None:
        try:
            start.wait(5)
            results[i] = clients[i].request("GET", target, headers)
        except BaseException as e:  # reported below, with the others
            results[i] = e

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(15)
    for c in clients:
        c.close()
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, errors[:3]
    return results  # type: ignore[return-value]


def status_of(r: Response) -> str:
    return r.header("cache-status") or ""


def cacheable(body: bytes, cc: str = "max-age=60", etag: str | None = None, **extra: str) -> Reply:
    headers = [("cache-control", cc), *((k.replace("_", "-"), v) for k, v in extra.items())]
    if etag is not None:
        headers.append(("etag", etag))
    return Reply(headers=headers, body=body)


def validating(first: Reply, etag: str, not_modified: list[tuple[str, str]] | None = None) -> Callable[[Seen], Reply]:
    """``first`` unconditionally; a 304 (with ``not_modified`` fields) to a request carrying ``etag``."""
    def script(seen: Seen) -> Reply:
        if seen.header("if-none-match") == etag:
            return Reply(304, [("etag", etag), *(not_modified or [])], framing="none")
        return first
    return script


def ends_incomplete(port: int, target: str) -> bool:
    """Whether the proxy ends the connection (within 5 s) before the response to ``target`` is complete."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nhost: {HOST}\r\n\r\n".encode())
        t0 = time.monotonic()
        data = read_all(sock, 5)
        if time.monotonic() - t0 > 4.5:
            return False  # still open: neither complete nor cut
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target=target, headers=[("host", HOST)]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(data)
    conn.receive_data(b"")
    events = []
    with contextlib.suppress(h11.RemoteProtocolError):
        while (event := conn.next_event()) not in (h11.NEED_DATA, h11.PAUSED):
            events.append(event)
            if isinstance(event, h11.ConnectionClosed):
                break
    return any(isinstance(e, h11.Response) for e in events) and not any(
        isinstance(e, h11.EndOfMessage) for e in events)


def unsafe(port: int, method: str, target: str, body: bytes) -> Response:
    """One request with a body on its own connection (``HTTPClient`` sends bodies but can't frame them for h11)."""
    head = f"{method} {target} HTTP/1.1\r\nhost: {HOST}\r\ncontent-length: {len(body)}\r\nconnection: close\r\n\r\n"
    responses = parse_responses(raw_exchange(port, head.encode() + body))
    assert len(responses) == 1, responses
    return responses[0]


def stats(proxy: Proc) -> dict[str, Any]:
    with ControlClient(proxy.extra["control"]) as client:
        reply = client.request({"cmd": "stats"})
    assert reply["ok"], reply
    return reply


# ---- fixtures ----

@pytest.fixture(scope="module", params=PARSERS)
def origin_parser(request: pytest.FixtureRequest) -> str:
    """The origin-side backend under test (``[origin] parser``): each gets its own origin and proxy, so the
    origin's request counts are per backend."""
    return str(request.param)


@pytest.fixture(scope="module")
def origin(origin_parser: str) -> Iterator[ScriptOrigin]:
    with ScriptOrigin() as o:
        yield o


@pytest.fixture(scope="module")
def edge(origin: ScriptOrigin, origin_parser: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    sites = [{"hosts": [HOST], "origin": origin.url},
             {"hosts": [IGNORE_HOST], "origin": origin.url, "ignore_request_cache_control": True},
             {"hosts": [COOKIE_HOST], "origin": origin.url, "store_set_cookie": True}]
    proxy = start_proxy(origin.url, tmp_path_factory.mktemp("edge"), site=sites, log={"access": False},
                        cache={"max_object_size": MAX_OBJECT, "max_variants": MAX_VARIANTS,
                               "hit_for_miss_ttl": HIT_FOR_MISS},
                        origin={"read_timeout": "1.5s", "parser": origin_parser})
    yield proxy
    proxy.stop()


@pytest.fixture
def own_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Proc]]:
    started: list[Proc] = []

    def start(origin_url: str, **overrides: Any) -> Proc:
        proxy = start_proxy(origin_url, tmp_path_factory.mktemp("own"), log={"access": False}, **overrides)
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.stop()


# ---- hits ----

def test_hit_after_miss_with_growing_age_and_head_from_get(edge: Proc, origin: ScriptOrigin) -> None:
    origin.routes["/hit"] = cacheable(b"hello, cache")
    first = fetch(edge, "/hit")
    assert first.status == 200 and first.body == b"hello, cache"
    assert status_of(first) == "edgeproxy; fwd=uri-miss; fwd-status=200; stored"
    second = fetch(edge, "/hit")
    assert second.body == b"hello, cache" and status_of(second).startswith("edgeproxy; hit; ttl=")
    assert second.header("age") is not None
    time.sleep(1.1)
    third = fetch(edge, "/hit")
    assert int(third.header("age") or -1) > int(second.header("age") or 0)
    head = fetch(edge, "/hit", method="HEAD")
    assert head.status == 200 and head.body == b"" and head.header("content-length") == "12"
    assert status_of(head).startswith("edgeproxy; hit")
    assert len(origin.seen("/hit")) == 1


# ---- revalidation ----

def test_304_freshens_the_stored_response(edge: Proc, origin: ScriptOrigin) -> None:
    body = b"the stored body"
    origin.routes["/fresh"] = validating(cacheable(body, "max-age=1", '"v1"', x_version="a"), '"v1"',
                                         [("cache-control", "max-age=60"), ("x-version", "b"),
                                          ("content-length", "999")])
    assert fetch(edge, "/fresh").header("x-version") == "a"
    time.sleep(STALE)
    got = fetch(edge, "/fresh")
    assert got.status == 200 and got.body == body
    assert got.header("x-version") == "b" and got.header("content-length") == str(len(body))
    assert "fwd=stale; fwd-status=304" in status_of(got)
    again = fetch(edge, "/fresh")
    assert status_of(again).startswith("edgeproxy; hit") and again.header("x-version") == "b"
    assert again.body == body and again.header("content-length") == str(len(body))
    seen = origin.seen("/fresh")
    assert len(seen) == 2 and seen[1].header("if-none-match") == '"v1"'


def test_stale_while_revalidate_serves_stale_and_revalidates_once(edge: Proc, origin: ScriptOrigin) -> None:
    calls = []
    held = threading.Event()  # the revalidation is answered only once the stale answers are in

    def script(seen: Seen) -> Reply:
        calls.append(seen)
        if len(calls) == 1:
            return cacheable(b"old", "max-age=1, stale-while-revalidate=30")
        held.wait(20)
        return Reply(headers=[("cache-control", "max-age=60")], body=b"new")

    origin.routes["/swr"] = script
    assert fetch(edge, "/swr").body == b"old"
    time.sleep(STALE)
    try:
        answers = concurrently(edge, "/swr", 20)  # all answered while the origin holds the revalidation
    finally:
        held.set()
    assert [a.body for a in answers] == [b"old"] * 20, "stale answers must not wait for the revalidation"
    assert {status_of(a) for a in answers} == {'edgeproxy; hit; ttl=-1; detail="stale"'}
    assert origin.wait_for(lambda: len(origin.seen("/swr")) == 2)
    deadline = time.monotonic() + 3
    while fetch(edge, "/swr").body != b"new" and time.monotonic() < deadline:
        time.sleep(0.05)
    fresh = fetch(edge, "/swr")
    assert fresh.body == b"new" and status_of(fresh).startswith("edgeproxy; hit")
    assert len(origin.seen("/swr")) == 2


STALE_IF_ERROR = "max-age=1, stale-if-error=60"
MUST_REVALIDATE = "max-age=1, must-revalidate"


@pytest.mark.parametrize("failure", ["down", "503", "hangup"])
@pytest.mark.parametrize("cc, stale_ok", [(STALE_IF_ERROR, True), (MUST_REVALIDATE, False)])
@pytest.mark.parametrize("etag", ['"e1"', None], ids=["validator", "no-validator"])
def test_stale_if_error(own_proxy: Callable[..., Proc], failure: str, cc: str, stale_ok: bool,
                        etag: str | None) -> None:
    """Without a validator the refetch is unconditional, but the stale copy still answers an error (RFC 5861 §4)."""
    with ScriptOrigin() as origin:
        proxy = own_proxy(origin.url)
        origin.routes["/sie"] = cacheable(b"stale but useful", cc, etag)
        assert fetch(proxy, "/sie").status == 200
        time.sleep(STALE)
        if failure == "down":
            origin.close()
        else:
            origin.routes["/sie"] = Reply(hangup=True) if failure == "hangup" else Reply(503, body=b"busy")
        got = fetch(proxy, "/sie")
    if stale_ok:
        assert got.status == 200 and got.body == b"stale but useful"
        assert "fwd=stale" in status_of(got)
    else:
        assert got.status in (502, 503, 504) and got.body != b"stale but useful"


# ---- collapsing ----

def test_collapsing_one_fetch_for_a_hundred_cold_requests(edge: Proc, origin: ScriptOrigin) -> None:
    origin.routes["/slow"] = Reply(headers=[("cache-control", "max-age=60")], body=b"slow body" * 100, delay=0.3)
    answers = concurrently(edge, "/slow", 100)
    assert {(a.status, a.body) for a in answers} == {(200, b"slow body" * 100)}
    assert len(origin.seen("/slow")) == 1


@pytest.mark.parametrize("fields", [[("cache-control", "private, max-age=60")],
                                    [("cache-control", "max-age=60")]], ids=["private", "set-cookie"])
def test_collapsing_never_hands_a_private_response_to_waiters(edge: Proc, origin: ScriptOrigin,
                                                              fields: list[tuple[str, str]]) -> None:
    path = f"/mine-{fields[0][1][:7]}"
    lock = threading.Lock()
    count = [0]

    def script(seen: Seen) -> Reply:
        with lock:
            count[0] += 1
            n = count[0]
        return Reply(headers=[*fields, ("set-cookie", f"id={n}")], body=f"for client {n}".encode(), delay=0.3)

    origin.routes[path] = script
    answers = concurrently(edge, path, 20)
    assert len(origin.seen(path)) == 20
    cookies = [a.header("set-cookie") for a in answers]
    assert len(set(cookies)) == 20 and None not in cookies
    assert all(a.body == f"for client {a.header('set-cookie')[3:]}".encode() for a in answers)  # type: ignore[index]


# ---- never stored ----

@pytest.mark.parametrize("reply", [
    Reply(headers=[("cache-control", "max-age=60"), ("content-length", "1000")], body=b"x" * 100, framing="close"),
    Reply(headers=[("cache-control", "max-age=60"), ("transfer-encoding", "chunked")], body=b"5\r\nhello\r\n",
          framing="close"),
], ids=["short-content-length", "no-last-chunk"])
def test_truncated_origin_body_aborts_the_client_and_is_not_stored(edge: Proc, origin: ScriptOrigin,
                                                                   reply: Reply) -> None:
    path = "/cut-" + reply.headers[1][0]
    origin.routes[path] = reply
    for attempt in (1, 2):
        assert ends_incomplete(edge.port, path)
        assert len(origin.seen(path)) == attempt


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_body_over_max_object_size_streams_through_and_is_not_stored(edge: Proc, origin: ScriptOrigin,
                                                                     framing: str) -> None:
    path = f"/big-{framing}"
    origin.routes[path] = Reply(headers=[("cache-control", "max-age=60")], stream=2 * MAX_OBJECT, framing=framing)
    for attempt in (1, 2):
        got = fetch(edge, path)
        assert got.status == 200 and len(got.body) == 2 * MAX_OBJECT
        assert len(origin.seen(path)) == attempt
        assert status_of(got) == "edgeproxy; fwd=uri-miss; fwd-status=200", "a body not stored must not say stored"


def test_a_204_is_stored(edge: Proc, origin: ScriptOrigin) -> None:
    """No body, no Content-Length: a 204's framing is its status, not an unprovable close-delimited body."""
    origin.routes["/empty"] = Reply(204, [("cache-control", "max-age=60")], framing="none")
    assert fetch(edge, "/empty").status == 204
    hit = fetch(edge, "/empty")
    assert hit.status == 204 and status_of(hit).startswith("edgeproxy; hit")
    assert len(origin.seen("/empty")) == 1


@pytest.mark.parametrize("framing", ["length", "chunked"])
@pytest.mark.parametrize("size, stored", [(MAX_OBJECT - 4 * KIB, True), (MAX_OBJECT, False)])
def test_stored_is_announced_only_when_stored(edge: Proc, origin: ScriptOrigin, size: int, stored: bool,
                                              framing: str) -> None:
    """The store charges head + body + per-entry overhead: a body of exactly max_object_size does not fit."""
    path = f"/edge-of-size-{size}-{framing}"
    origin.routes[path] = Reply(headers=[("cache-control", "max-age=60")], stream=size, framing=framing)
    first = fetch(edge, path)
    assert len(first.body) == size
    assert status_of(first).endswith("; stored") == (stored and framing == "length")
    second = fetch(edge, path)
    assert status_of(second).startswith("edgeproxy; hit") == stored
    assert len(origin.seen(path)) == (1 if stored else 2)


@pytest.mark.parametrize("path, first, status", [
    ("/own-502", Reply(hangup=True), 502),
    ("/own-504", Reply(stall=True), 504),
    ("/origin-500", Reply(500, body=b"oops"), 500),
])
def test_errors_are_not_stored(edge: Proc, origin: ScriptOrigin, path: str, first: Reply, status: int) -> None:
    origin.routes[path] = first
    assert fetch(edge, path).status == status
    before = len(origin.seen(path))
    origin.routes[path] = cacheable(b"recovered")
    got = fetch(edge, path)
    assert got.status == 200 and got.body == b"recovered" and "fwd=uri-miss" in status_of(got)
    assert len(origin.seen(path)) == before + 1


# ---- the byte bound ----

def test_byte_bound_holds_under_churn(own_proxy: Callable[..., Proc]) -> None:
    with ScriptOrigin() as origin:
        proxy = own_proxy(origin.url, cache={"size": "2MiB", "max_object_size": "1MiB"})

        def sized(seen: Seen) -> Reply:
            size = int(seen.target.rsplit("=", 1)[1])
            return Reply(headers=[("cache-control", "max-age=600")], stream=size)

        origin.routes["/churn"] = sized
        total, n = 0, 0
        with HTTPClient(proxy.port) as client:
            while total < 20 * 1024 * KIB:
                for _ in range(40):
                    size = (16 + (n * 7919) % 49) * KIB
                    got = client.request("GET", f"/churn?n={n}&size={size}")
                    assert got.status == 200 and len(got.body) == size
                    total, n = total + size, n + 1
                now = stats(proxy)
                assert 0 < now["bytes"] <= now["capacity"] == 2 * 1024 * KIB
        out = subprocess.run([sys.executable, "-m", "edgeproxy", "stats", "--json", "--control",
                              proxy.extra["control"]], capture_output=True, env=env(), timeout=20, check=True)
        final = json.loads(out.stdout)
        assert final["bytes"] <= final["capacity"] and final["evictions"] > 0
        assert len(origin.seen("/churn")) == n


# ---- Vary ----

def test_vary_accept_encoding_buckets(edge: Proc, origin: ScriptOrigin) -> None:
    origin.routes["/enc"] = lambda seen: cacheable(b"for " + (seen.header("accept-encoding") or "").encode(),
                                                   vary="Accept-Encoding")
    assert fetch(edge, "/enc", {"accept-encoding": "gzip, deflate, br"}).body == b"for gzip, deflate, br"
    same = fetch(edge, "/enc", {"accept-encoding": "br, gzip"})
    assert same.body == b"for gzip, deflate, br" and status_of(same).startswith("edgeproxy; hit")
    other = fetch(edge, "/enc", {"accept-encoding": "identity"})
    assert other.body == b"for identity" and "fwd=vary-miss" in status_of(other)
    assert len(origin.seen("/enc")) == 2


def test_vary_star_is_never_served_from_cache(edge: Proc, origin: ScriptOrigin) -> None:
    origin.routes["/star"] = cacheable(b"star", vary="*")
    for _ in range(3):
        assert fetch(edge, "/star").body == b"star"
    assert len(origin.seen("/star")) == 3


def test_variants_are_capped(edge: Proc, origin: ScriptOrigin) -> None:
    origin.routes["/many"] = lambda seen: cacheable((seen.header("x-v") or "").encode(), vary="X-V")
    for v in ("a", "b", "c", "d", "c", "d"):
        assert fetch(edge, "/many", {"x-v": v}).body == v.encode()
    assert len(origin.seen("/many")) == MAX_VARIANTS + 1
    assert fetch(edge, "/many", {"x-v": "a"}).body == b"a"  # the least recently used variant went first
    assert len(origin.seen("/many")) == MAX_VARIANTS + 2


# ---- client conditionals and ranges ----

LAST_MODIFIED = "Tue, 01 Oct 2024 10:00:00 GMT"


@pytest.mark.parametrize("headers, status, body, fields", [
    ({"if-none-match": 'W/"c1"'}, 304, b"", {"etag": '"c1"', "content-range": None}),
    ({"if-none-match": '"other"'}, 200, b"0123456789", {"etag": '"c1"'}),
    ({"if-modified-since": LAST_MODIFIED}, 304, b"", {"last-modified": LAST_MODIFIED}),
    ({"range": "bytes=2-5"}, 206, b"2345", {"content-range": "bytes 2-5/10", "content-length": "4"}),
    ({"range": "bytes=20-"}, 416, b"", {"content-range": "bytes */10"}),
], ids=["inm-weak", "inm-other", "ims", "range", "unsatisfiable"])
def test_client_conditionals_answered_from_the_cache(edge: Proc, origin: ScriptOrigin, headers: dict[str, str],
                                                     status: int, body: bytes, fields: dict[str, str | None]) -> None:
    path = "/cond-" + "-".join(headers).replace(" ", "")
    origin.routes[path] = cacheable(b"0123456789", etag='"c1"', last_modified=LAST_MODIFIED)
    assert fetch(edge, path).status == 200
    got = fetch(edge, path, headers)
    assert (got.status, got.body) == (status, body)
    assert {k: got.header(k) for k in fields} == fields
    assert status_of(got).startswith("edgeproxy; hit")
    assert len(origin.seen(path)) == 1


def test_range_on_a_miss_fetches_the_whole_object_once(edge: Proc, origin: ScriptOrigin) -> None:
    """A client's Range is no lever on the origin: the object is fetched whole once, and ranges come from the copy."""
    origin.routes["/partial"] = cacheable(b"0123456789")
    got = fetch(edge, "/partial", {"range": "bytes=0-3"})
    assert got.status == 206 and got.body == b"0123" and got.header("content-range") == "bytes 0-3/10"
    again = fetch(edge, "/partial", {"range": "bytes=6-"})
    assert again.status == 206 and again.body == b"6789" and status_of(again).startswith("edgeproxy; hit")
    assert [s.header("range") for s in origin.seen("/partial")] == [None]


def test_range_on_a_miss_too_large_to_keep_passes_through(edge: Proc, origin: ScriptOrigin) -> None:
    def script(seen: Seen) -> Reply:
        if seen.header("range"):
            return Reply(206, [("content-range", "bytes 0-3/50000000"), ("cache-control", "max-age=60")], b"0123")
        return Reply(200, [("cache-control", "max-age=60"), ("content-length", "50000000")], b"", framing="none")
    origin.routes["/huge-partial"] = script
    got = fetch(edge, "/huge-partial", {"range": "bytes=0-3"})
    assert got.status == 206 and got.body == b"0123" and got.header("content-range") == "bytes 0-3/50000000"
    assert [s.header("range") for s in origin.seen("/huge-partial")] == [None, "bytes=0-3"]


# ---- request Cache-Control ----

@pytest.mark.parametrize("cc", ["no-cache", "max-age=0"])
def test_request_cache_control_forces_revalidation(edge: Proc, origin: ScriptOrigin, cc: str) -> None:
    path = f"/rcc-{cc}"
    origin.routes[path] = validating(cacheable(b"validated", etag='"r1"'), '"r1"')
    fetch(edge, path)
    got = fetch(edge, path, {"cache-control": cc})
    assert got.status == 200 and got.body == b"validated"
    assert "fwd=request; fwd-status=304" in status_of(got)
    seen = origin.seen(path)
    assert len(seen) == 2 and seen[1].header("if-none-match") == '"r1"'


@pytest.mark.parametrize("forcing", [{"cache-control": "no-cache"}, {"cache-control": "max-age=0"},
                                     {"pragma": "no-cache"}], ids=["no-cache", "max-age=0", "pragma"])
def test_forced_revalidations_shield_the_origin(edge: Proc, origin: ScriptOrigin, forcing: dict[str, str]) -> None:
    """Origin shielding, counted at the origin: bursts of forced requests within revalidate_interval (1 s by
    default) cost one conditional request; the next one after it costs one more."""
    name, value = next(iter(forcing.items()))
    path = f"/shield-{edge.port}-{name}-{value.replace('=', '')}"  # one origin for both edges
    origin.routes[path] = validating(cacheable(b"shielded", "max-age=600", '"s1"'), '"s1"',
                                     [("cache-control", "max-age=600")])
    fetch(edge, path)
    time.sleep(0.05)  # the stored copy has an age: max-age=0 forces too
    for _ in range(3):
        answers = concurrently(edge, path, 16, forcing)
        assert {a.body for a in answers} == {b"shielded"}
        time.sleep(0.1)
    seen = origin.seen(path)
    assert len(seen) == 2 and seen[1].header("if-none-match") == '"s1"', [s.headers for s in seen]
    time.sleep(1.1)
    concurrently(edge, path, 16, forcing)
    assert len(origin.seen(path)) == 3


def test_only_if_cached_miss_is_504(edge: Proc, origin: ScriptOrigin) -> None:
    got = fetch(edge, "/never-fetched", {"cache-control": "only-if-cached"})
    assert got.status == 504 and "only-if-cached" in status_of(got)
    assert origin.seen("/never-fetched") == []


def test_ignore_request_cache_control(edge: Proc, origin: ScriptOrigin) -> None:
    origin.routes["/ignored"] = cacheable(b"kept", etag='"i1"')
    fetch(edge, "/ignored", host=IGNORE_HOST)
    for cc in ("no-cache", "max-age=0", "no-store"):
        got = fetch(edge, "/ignored", {"cache-control": cc}, host=IGNORE_HOST)
        assert got.body == b"kept" and status_of(got).startswith("edgeproxy; hit"), cc
    assert fetch(edge, "/ignored-cold", {"cache-control": "only-if-cached"}, host=IGNORE_HOST).status == 200
    assert len(origin.seen("/ignored")) == 1


# ---- invalidation ----

@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
def test_unsafe_method_invalidates(edge: Proc, origin: ScriptOrigin, method: str) -> None:
    path = f"/inv-{method}"
    stored = validating(cacheable(b"doc", etag='"d1"'), '"d1"')
    origin.routes[path] = lambda seen: stored(seen) if seen.method == "GET" else Reply(body=b"done")
    fetch(edge, path)
    assert status_of(fetch(edge, path)).startswith("edgeproxy; hit")
    assert unsafe(edge.port, method, path, b"change").status == 200
    got = fetch(edge, path)
    assert got.body == b"doc" and "fwd=stale; fwd-status=304" in status_of(got)
    assert [s.method for s in origin.seen(path)] == ["GET", method, "GET"]


# ---- Set-Cookie and edge-consumed fields ----

def test_set_cookie_not_stored_by_default(edge: Proc, origin: ScriptOrigin) -> None:
    origin.routes["/cookie"] = cacheable(b"c", set_cookie="s=1")
    for attempt in (1, 2):
        got = fetch(edge, "/cookie")
        assert got.header("set-cookie") == "s=1" and "stored" not in status_of(got)
        assert len(origin.seen("/cookie")) == attempt


def test_store_set_cookie_stores_without_the_cookie(edge: Proc, origin: ScriptOrigin) -> None:
    origin.routes["/cookie-site"] = cacheable(b"c", set_cookie="s=1")
    assert fetch(edge, "/cookie-site", host=COOKIE_HOST).header("set-cookie") == "s=1"
    hit = fetch(edge, "/cookie-site", host=COOKIE_HOST)
    assert status_of(hit).startswith("edgeproxy; hit") and hit.header("set-cookie") is None
    assert len(origin.seen("/cookie-site")) == 1


def test_edge_fields_are_consumed(edge: Proc, origin: ScriptOrigin) -> None:
    origin.routes["/targeted"] = cacheable(b"t", "no-store", cdn_cache_control="max-age=60", cache_tag="a, b",
                                           surrogate_key="x y")
    for _ in range(2):
        got = fetch(edge, "/targeted")
        assert got.body == b"t" and got.header("cache-control") == "no-store"
        assert {got.header(k) for k in ("cdn-cache-control", "cache-tag", "surrogate-key")} == {None}
    assert status_of(got).startswith("edgeproxy; hit")
    assert len(origin.seen("/targeted")) == 1


# ---- more paths through revalidation ----

def test_stale_while_revalidate_with_a_304(edge: Proc, origin: ScriptOrigin) -> None:
    origin.routes["/swr304"] = validating(cacheable(b"kept", "max-age=1, stale-while-revalidate=30", '"w1"'), '"w1"',
                                          [("cache-control", "max-age=60"), ("x-checked", "yes")])
    fetch(edge, "/swr304")
    time.sleep(STALE)
    assert fetch(edge, "/swr304").body == b"kept"
    assert origin.wait_for(lambda: len(origin.seen("/swr304")) == 2)
    deadline = time.monotonic() + 3
    while (got := fetch(edge, "/swr304")).header("x-checked") is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert got.body == b"kept" and got.header("x-checked") == "yes" and status_of(got).startswith("edgeproxy; hit")
    assert len(origin.seen("/swr304")) == 2


def test_a_background_revalidation_carries_none_of_the_clients_identity(edge: Proc, origin: ScriptOrigin) -> None:
    """The client whose request found the entry stale is not the one asking the origin: only what the stored
    response varies on goes, with the validators (and Origin, which names a site, not a person)."""
    origin.routes["/who"] = validating(cacheable(b"shared", "max-age=1, stale-while-revalidate=30", '"p1"',
                                                 vary="Accept-Language"), '"p1"', [("cache-control", "max-age=60")])
    fetch(edge, "/who", {"accept-language": "fr", "origin": "https://app.example"})
    time.sleep(STALE)
    trigger = {"accept-language": "fr", "cookie": "session=alice",
               "user-agent": "alice-browser", "x-forwarded-for": "198.51.100.7", "if-none-match": '"zzz"',
               "origin": "https://app.example"}
    assert fetch(edge, "/who", trigger).body == b"shared"
    assert origin.wait_for(lambda: len(origin.seen("/who")) == 2)
    background = origin.seen("/who")[1]
    names = {k.lower() for k, _ in background.headers}
    assert background.header("accept-language") == "fr" and background.header("if-none-match") == '"p1"'
    assert background.header("origin") == "https://app.example"
    assert not names & {"cookie", "user-agent", "x-forwarded-for"}, background.headers


@pytest.mark.parametrize("name, headers, status, body", [
    ("inm", {"if-none-match": '"s1"'}, 304, b""),
    ("range", {"range": "bytes=0-1"}, 206, b"01"),
    ("only-if-cached", {"cache-control": "only-if-cached"}, 504, None),
    ("max-stale", {"cache-control": "max-stale=60"}, 200, b"0123456789"),
])
def test_requests_on_a_stale_entry(edge: Proc, origin: ScriptOrigin, name: str, headers: dict[str, str], status: int,
                                   body: bytes | None) -> None:
    path = "/stale-" + name
    origin.routes[path] = validating(cacheable(b"0123456789", "max-age=1", '"s1"'), '"s1"',
                                     [("cache-control", "max-age=60")])
    fetch(edge, path)
    time.sleep(STALE)
    got = fetch(edge, path, headers)
    assert got.status == status and (body is None or got.body == body)
    calls = 1 if status == 504 or "max-stale" in str(headers) else 2
    assert len(origin.seen(path)) == calls
    if calls == 2:
        assert origin.seen(path)[1].header("if-none-match") == '"s1"' and origin.seen(path)[1].header("range") is None


def test_large_hit_body_is_identical(edge: Proc, origin: ScriptOrigin) -> None:
    body = bytes(range(256)) * 800  # 200 KiB: the hit path writes head and body separately
    origin.routes["/large"] = cacheable(body)
    assert fetch(edge, "/large").body == body
    hit = fetch(edge, "/large")
    assert hit.body == body and status_of(hit).startswith("edgeproxy; hit")


def test_request_no_store_passes_and_stores_nothing(edge: Proc, origin: ScriptOrigin) -> None:
    origin.routes["/nostore"] = cacheable(b"n")
    got = fetch(edge, "/nostore", {"cache-control": "no-store"})
    assert got.body == b"n" and "stored" not in status_of(got)
    assert "fwd=uri-miss" in status_of(fetch(edge, "/nostore"))
    assert len(origin.seen("/nostore")) == 2


def test_location_of_a_post_is_invalidated(edge: Proc, origin: ScriptOrigin) -> None:
    stored = validating(cacheable(b"item", etag='"l1"'), '"l1"')
    origin.routes["/items/1"] = stored
    origin.routes["/items"] = Reply(201, [("location", "/items/1")], b"created")
    fetch(edge, "/items/1")
    assert unsafe(edge.port, "POST", "/items", b"new").status == 201
    got = fetch(edge, "/items/1")
    assert "fwd=stale; fwd-status=304" in status_of(got)
    assert len(origin.seen("/items/1")) == 2


def test_collapsed_waiters_with_another_variant_go_to_the_origin(edge: Proc, origin: ScriptOrigin) -> None:
    origin.routes["/vslow"] = lambda seen: Reply(
        headers=[("cache-control", "max-age=60"), ("vary", "accept-language")],
        body=(seen.header("accept-language") or "-").encode(), delay=0.3)
    results: dict[str, list[Response]] = {}

    def run(lang: str) -> None:
        results[lang] = concurrently(edge, "/vslow", 10, {"accept-language": lang})

    threads = [threading.Thread(target=run, args=(lang,)) for lang in ("en", "fr")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    for lang in ("en", "fr"):
        assert {a.body for a in results[lang]} == {lang.encode()}


def test_collapsing_revalidations(edge: Proc, origin: ScriptOrigin) -> None:
    not_modified = validating(cacheable(b"v", "max-age=1", '"c9"'), '"c9"', [("cache-control", "max-age=60")])
    origin.routes["/reval"] = lambda seen: Reply(**{**vars(not_modified(seen)), "delay": 0.3})
    fetch(edge, "/reval")
    time.sleep(STALE)
    answers = concurrently(edge, "/reval", 30)
    assert {(a.status, a.body) for a in answers} == {(200, b"v")}
    assert len(origin.seen("/reval")) == 2


def test_a_failed_fetch_does_not_stop_collapsing(edge: Proc, origin: ScriptOrigin) -> None:
    """A fetch that failed says nothing about cacheability: the next burst still shares one fetch."""
    origin.routes["/flaky"] = Reply(hangup=True)
    assert fetch(edge, "/flaky").status == 502
    failed = len(origin.seen("/flaky"))
    origin.routes["/flaky"] = Reply(headers=[("cache-control", "max-age=60")], body=b"up", delay=0.3)
    answers = concurrently(edge, "/flaky", 30)
    assert {(a.status, a.body) for a in answers} == {(200, b"up")}
    assert len(origin.seen("/flaky")) == failed + 1


def test_hit_for_miss_lasts_hit_for_miss_ttl(edge: Proc, origin: ScriptOrigin) -> None:
    """After an unstorable answer, misses go to the origin in parallel for ``hit_for_miss_ttl``, then collapse again."""
    origin.routes["/hfm"] = Reply(headers=[("cache-control", "private")], body=b"mine", delay=0.3)
    fetch(edge, "/hfm")
    concurrently(edge, "/hfm", 10)
    assert len(origin.seen("/hfm")) == 11
    time.sleep(HIT_FOR_MISS + 0.2)
    origin.routes["/hfm"] = Reply(headers=[("cache-control", "max-age=60")], body=b"shared", delay=0.3)
    answers = concurrently(edge, "/hfm", 30)
    assert {a.body for a in answers} == {b"shared"}
    assert len(origin.seen("/hfm")) == 12
