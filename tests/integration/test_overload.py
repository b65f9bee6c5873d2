"""Overload over real sockets: slow clients, too many clients, and memory under churn (category: slow, bounded).

What is checked, each with the well-behaved client's view next to the hostile one's:
- slowloris: 300 sockets trickle a head one byte every 0.5 s against ``header_timeout = 2s``; a client making
  sequential requests meanwhile gets every answer, and the slow sockets are answered 408 and closed by ~3 s (the
  deadline plus one sweep);
- slow POST: a body below ``min_body_rate`` is cut with 408 after one rate window, and nothing reaches the origin;
- connection caps: ``max_connections_per_ip`` counts per source address (clients bound to 127.0.0.2, 127.0.0.3, ...),
  ``max_connections`` counts them all; over a cap the connection is aborted at accept;
- 2,000 idle connections while others are served (the 10,000 version is ``scripts/soak``);
- a slow reader of a 100 MiB response: back-pressure keeps the proxy's RSS flat and other clients are served;
- churn: with ``[cache] size = "64MiB"``, 640 MiB of unique 16-256 KiB objects and one 200 MiB object streamed
  through keep the proxy's peak RSS under its idle RSS + the cache size + ``CHURN_SLACK_MIB`` (docs/hardening.md,
  Memory has the measured figures).
Every proxy here is the test's own (clean memory baseline, special limits); every wait is bounded.
"""

from __future__ import annotations

import contextlib
import random
import resource
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from tests.integration.test_basic import memory_kb, stats
from tests.scriptorigin import Reply, ScriptOrigin
from tests.support import HTTPClient, Proc, parse_responses, read_all

MIB = 1024 * 1024
HOST = b"test.local"
CACHEABLE = [("cache-control", "public, max-age=600")]
CHURN_SLACK_MIB = 24  # measured peak over idle + cache size: docs/hardening.md, Memory


@pytest.fixture(scope="module")
def origin() -> Iterator[ScriptOrigin]:
    with ScriptOrigin() as o:
        yield o


@pytest.fixture
def start(origin: ScriptOrigin, proxy_factory: Callable[..., Proc]) -> Callable[..., Proc]:
    origin.reset()
    return lambda **overrides: proxy_factory(origin.url, **overrides)


def get(target: str) -> bytes:
    return b"GET " + target.encode() + b" HTTP/1.1\r\nhost: " + HOST + b"\r\n\r\n"


def one_request(port: int, target: str, source: str = "127.0.0.1") -> int | None:
    """Status of one GET on a new connection from ``source``, or None when the proxy dropped the connection."""
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 5, (source, 0)) as s:
        s.sendall(get(target)[:-2] + b"connection: close\r\n\r\n")
        responses = parse_responses(read_all(s, 5))
        return responses[0].status if responses else None
    return None


def open_connection(port: int, source: str = "127.0.0.1") -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), 5, (source, 0))


def is_dropped(s: socket.socket, timeout: float = 2.0) -> bool:
    """True when the proxy closed or reset ``s`` without answering."""
    if not select.select([s], [], [], timeout)[0]:
        return False
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True


def wait_open_connections(proxy: Proc, n: int, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    seen = -1
    while time.monotonic() < deadline:
        seen = stats(proxy)["open_connections"]
        if seen >= n:
            return seen
        time.sleep(0.05)
    return seen


def wait_open_connections_down(proxy: Proc, n: int, timeout: float = 10.0) -> int:
    """Until at most ``n`` client connections are open (bounded); the count last seen."""
    deadline = time.monotonic() + timeout
    seen = stats(proxy)["open_connections"]
    while seen > n and time.monotonic() < deadline:
        time.sleep(0.05)
        seen = stats(proxy)["open_connections"]
    return seen


# ---- slow clients ----

def test_slowloris_is_cut_by_the_head_deadline_and_others_are_served(start: Callable[..., Proc]) -> None:
    proxy = start(server={"header_timeout": "2s"})
    head = get("/loris")
    slow = [open_connection(proxy.port) for _ in range(300)]
    closed_at: dict[int, float] = {}
    answers: dict[int, bytes] = {}
    t0 = time.monotonic()
    served: list[int | None] = []

    def good_client() -> None:
        while time.monotonic() - t0 < 4.0:
            served.append(one_request(proxy.port, f"/good/{len(served)}"))

    good = threading.Thread(target=good_client)
    good.start()
    sent = 0
    while len(closed_at) < len(slow) and time.monotonic() - t0 < 6.0:
        for i, s in enumerate(slow):
            if i not in closed_at:
                with contextlib.suppress(OSError):
                    s.send(head[sent:sent + 1])
        sent += 1
        readable = select.select([s for i, s in enumerate(slow) if i not in closed_at], [], [], 0.5)[0]
        for s in readable:
            i = slow.index(s)
            answers[i] = read_all(s, 1.0)
            closed_at[i] = time.monotonic() - t0
    good.join(10)
    for s in slow:
        s.close()
    assert served and served.count(200) == len(served), f"well-behaved client: {served}"
    assert len(closed_at) == len(slow), f"{len(slow) - len(closed_at)} slow sockets still open after 6 s"
    first, last = min(closed_at.values()), max(closed_at.values())
    assert first > 1.9 and last < 3.6, (first, last)
    assert {r.status for a in answers.values() for r in parse_responses(a)} == {408}
    print(f"slowloris: {len(served)} sequential requests served 100%; slow sockets closed at {first:.1f}-{last:.1f} s")


def test_slow_body_below_min_rate_is_cut_with_408(start: Callable[..., Proc], origin: ScriptOrigin) -> None:
    proxy = start(server={"min_body_rate": "1KiB", "body_timeout": "30s"})
    with open_connection(proxy.port) as s:
        s.sendall(b"POST /slow-post HTTP/1.1\r\nhost: test.local\r\ncontent-length: 100000\r\n\r\n")
        t0 = time.monotonic()
        answer = b""
        while time.monotonic() - t0 < 10.0 and not answer:
            s.sendall(b"x" * 100)  # 200 B/s: well under 1 KiB/s, yet never idle for body_timeout
            if select.select([s], [], [], 0.5)[0]:
                answer = read_all(s, 2.0)
        elapsed = time.monotonic() - t0
    assert [r.status for r in parse_responses(answer)] == [408]
    assert 4.5 < elapsed < 7.5, elapsed  # one RATE_WINDOW (5 s) plus at most one sweep
    assert origin.seen("/slow-post") == []


def test_body_at_the_min_rate_passes(start: Callable[..., Proc], origin: ScriptOrigin) -> None:
    """A body trickled faster than min_body_rate across more than one rate window completes."""
    proxy = start(server={"min_body_rate": "150"})
    with open_connection(proxy.port) as s:
        s.sendall(b"POST /steady HTTP/1.1\r\nhost: test.local\r\ncontent-length: 1200\r\nconnection: close\r\n\r\n")
        for _ in range(12):
            s.sendall(b"y" * 100)  # 200 B/s for 6 s: above 150 B/s in every window
            time.sleep(0.5)
        answer = read_all(s, 5.0)
    assert [r.status for r in parse_responses(answer)] == [200]
    assert [seen.body_length for seen in origin.seen("/steady")] == [1200]


def test_slow_reader_gets_back_pressure_and_others_are_served(start: Callable[..., Proc],
                                                              origin: ScriptOrigin) -> None:
    proxy = start()
    origin.routes["/huge"] = Reply(stream=100 * MIB)
    before = memory_kb(proxy.pid)["VmRSS"]
    with open_connection(proxy.port) as slow:
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        slow.sendall(get("/huge"))
        assert select.select([slow], [], [], 5)[0]
        slow.recv(65536)  # the head arrived; from here on nobody reads
        with HTTPClient(proxy.port) as other:
            for i in range(50):
                assert other.request("GET", f"/meanwhile/{i}").status == 200
        time.sleep(1.0)
        growth = (memory_kb(proxy.pid)["VmHWM"] - before) / 1024
    assert growth < 16, f"proxy RSS grew {growth:.1f} MiB for a reader that stopped reading"
    print(f"slow reader: proxy peak RSS growth {growth:.1f} MiB with a 100 MiB response pending")


# ---- connection caps ----

def test_per_ip_cap_counts_each_source_address(start: Callable[..., Proc]) -> None:
    proxy = start(server={"max_connections_per_ip": 5})
    held = [open_connection(proxy.port) for _ in range(5)]
    try:
        assert wait_open_connections(proxy, 5) == 5
        with open_connection(proxy.port) as sixth:
            assert is_dropped(sixth), "a sixth connection from 127.0.0.1 must be refused"
        for source in ("127.0.0.2", "127.0.0.3"):
            assert one_request(proxy.port, "/other-ip", source) == 200
        held.extend(open_connection(proxy.port, "127.0.0.2") for _ in range(5))
        assert one_request(proxy.port, "/full", "127.0.0.2") is None
        assert one_request(proxy.port, "/free", "127.0.0.4") == 200
    finally:
        for s in held:
            s.close()
    assert wait_open_connections_down(proxy, 0) == 0
    assert one_request(proxy.port, "/after") == 200, "the cap is released when connections close"


def test_global_cap_counts_every_address(start: Callable[..., Proc]) -> None:
    proxy = start(server={"max_connections": 6, "max_connections_per_ip": 2})
    held = [open_connection(proxy.port, f"127.0.0.{2 + i // 2}") for i in range(6)]
    try:
        assert wait_open_connections(proxy, 6) == 6
        assert one_request(proxy.port, "/over-global", "127.0.0.9") is None
    finally:
        for s in held:
            s.close()
    deadline = time.monotonic() + 5
    while stats(proxy)["open_connections"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert one_request(proxy.port, "/after", "127.0.0.9") == 200


def test_two_thousand_idle_connections_while_others_are_served(start: Callable[..., Proc]) -> None:
    count = 2000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < count + 200:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {count + 200}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, count + 200), hard))
    proxy = start(server={"header_timeout": "30s"})
    idle = []
    try:
        for i in range(count):
            idle.append(open_connection(proxy.port, f"127.0.{1 + i // 250}.{1 + i % 250}"))
        assert wait_open_connections(proxy, count) >= count
        t0 = time.monotonic()
        with HTTPClient(proxy.port) as client:
            statuses = [client.request("GET", f"/busy/{i}").status for i in range(100)]
        elapsed = time.monotonic() - t0
        assert statuses == [200] * 100
        assert elapsed < 5, f"100 requests took {elapsed:.1f} s beside {count} idle connections"
        assert sum(is_dropped(s, 0) for s in idle[:50]) == 0, "idle connections inside header_timeout stay open"
    finally:
        for s in idle:
            s.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# ---- memory under churn ----

def fetch_discard(client: HTTPClient, target: str) -> int:
    """GET on a keep-alive client; the body length (HTTPClient keeps bodies: these are at most 256 KiB)."""
    response = client.request("GET", target)
    assert response.status == 200, (target, response.status)
    return len(response.body)


def stream_through(port: int, target: str) -> int:
    """A GET whose body is counted and dropped as it arrives (a 200 MiB object)."""
    received, head = 0, b""
    with socket.create_connection(("127.0.0.1", port), 60) as s:
        s.sendall(get(target)[:-2] + b"connection: close\r\n\r\n")
        while b"\r\n\r\n" not in head:
            head += s.recv(65536)
        received = len(head) - head.index(b"\r\n\r\n") - 4
        while chunk := s.recv(1 << 20):
            received += len(chunk)
    assert head.startswith(b"HTTP/1.1 200 ") and b"content-length: %d\r\n" % received in head.lower()
    return received


def test_churn_keeps_rss_under_cache_size_plus_baseline(start: Callable[..., Proc], origin: ScriptOrigin) -> None:
    cache_mib, total = 64, 640 * MIB
    proxy = start(cache={"size": f"{cache_mib}MiB"}, log={"access": False})
    rng = random.Random(8)
    sizes: list[int] = []
    while sum(sizes) < total:
        sizes.append(rng.randint(16, 256) * 1024)
    for i, size in enumerate(sizes):
        origin.routes[f"/churn/{i}"] = Reply(stream=size, headers=CACHEABLE)
    origin.routes["/churn/huge"] = Reply(stream=200 * MIB, headers=CACHEABLE)
    with HTTPClient(proxy.port) as warm:
        fetch_discard(warm, "/warm-up")
    idle = memory_kb(proxy.pid)["VmRSS"] / 1024
    got: list[int] = []

    def worker(part: list[int]) -> None:
        with HTTPClient(proxy.port, timeout=30) as client:
            got.extend(fetch_discard(client, f"/churn/{i}") for i in part)

    threads = [threading.Thread(target=worker, args=(list(range(k, len(sizes), 3)),)) for k in range(3)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    huge = stream_through(proxy.port, "/churn/huge")
    for t in threads:
        t.join(120)
    elapsed = time.monotonic() - t0
    assert huge == 200 * MIB and sorted(got) == sorted(sizes)
    store = stats(proxy)
    peak = memory_kb(proxy.pid)["VmHWM"] / 1024
    print(f"churn: {len(sizes)} objects, {sum(sizes) / MIB:.0f} MiB + 200 MiB in {elapsed:.1f} s; idle RSS "
          f"{idle:.1f} MiB, peak RSS {peak:.1f} MiB; {store['entries']} entries, {store['bytes'] / MIB:.1f} MiB "
          f"stored, {store['evictions']} evictions")
    assert peak < idle + cache_mib + CHURN_SLACK_MIB, f"peak {peak:.1f} MiB, idle {idle:.1f} MiB"


def test_pipelined_hits_to_a_client_that_never_reads_are_not_queued(proxy_factory: Callable[..., Proc],
                                                                    demo_origin: Proc) -> None:
    """Hits are answered synchronously: without back-pressure every pipelined request of a client that never reads
    would be answered into the write buffer. Reading (and answering) pauses until the buffer drains."""
    proxy = proxy_factory(demo_origin.url)
    path = "/bytes/1048576?pipelined"
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as warm:
        warm.sendall(f"GET {path} HTTP/1.1\r\nhost: test.local\r\nconnection: close\r\n\r\n".encode())
        while warm.recv(1 << 20):
            pass
    hits_before = stats(proxy)["hits"]
    request = f"GET {path} HTTP/1.1\r\nhost: test.local\r\n\r\n".encode()
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.setblocking(False)
        for _ in range(5000):  # ~300 KiB of requests: far more than the kernel buffers if the proxy stops reading
            try:
                sock.sendall(request)
            except BlockingIOError:
                break
            time.sleep(0.0002)
        time.sleep(0.5)
        answered = stats(proxy)["hits"] - hits_before
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as other:  # others are still served
            other.sendall(b"GET /bytes/10 HTTP/1.1\r\nhost: test.local\r\nconnection: close\r\n\r\n")
            assert b"200 OK" in other.recv(4096)
    assert answered < 100, f"{answered} answers queued for a client that reads none of them"
