"""The fast lane (proxy/lane.py) over real sockets: a plain hit is answered from the read's bytes whatever else the
head carries (a request id, a cookie), and never what the full path wouldn't: stale, purged, replaced, conditional,
pipelined or HEAD-vs-GET cases. tests/unit/test_lane.py compares the lane with the full path byte for byte."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator

import pytest

from edgeproxy.control.client import ControlClient
from tests.scriptorigin import Reply, ScriptOrigin
from tests.support import Proc, parse_responses, read_all

HEAD = b"GET /obj HTTP/1.1\r\nhost: lane.test\r\nuser-agent: lane-test\r\n\r\n"


@pytest.fixture
def origin() -> Iterator[ScriptOrigin]:
    with ScriptOrigin() as o:
        o.routes["/obj"] = Reply(headers=[("cache-control", "max-age=60"), ("etag", '"v1"')], body=b"object body")
        o.routes["/short"] = Reply(headers=[("cache-control", "max-age=1")], body=b"short-lived")
        yield o


@pytest.fixture(params=["h11", "httptools"])
def edge(request: pytest.FixtureRequest, proxy_factory: Callable[..., Proc], origin: ScriptOrigin) -> Proc:
    return proxy_factory(origin.url, server={"parser": request.param})


def stats(proxy: Proc) -> dict:
    with ControlClient(proxy.extra["control"], 5) as client:
        return client.request({"v": 1, "cmd": "stats"})


def control(proxy: Proc, **fields: object) -> dict:
    with ControlClient(proxy.extra["control"], 5) as client:
        return client.request({"v": 1, **fields})


class Conn:
    """One keep-alive connection sending exact bytes, one request per write."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.buf = b""

    def ask(self, data: bytes, head: bool = False) -> tuple[int, dict[str, str], bytes]:
        self.sock.sendall(data)
        while True:
            self.buf += self.sock.recv(65536)
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                continue
            fields = dict(line.split(": ", 1) for line in self.buf[:end].decode("latin-1").split("\r\n")[1:])
            length = 0 if head else int(fields.get("content-length", "0"))
            if len(self.buf) >= end + 4 + length:
                status = int(self.buf[9:12])
                body, self.buf = self.buf[end + 4:end + 4 + length], self.buf[end + 4 + length:]
                return status, fields, body

    def close(self) -> None:
        self.sock.close()


def test_repeats_are_lane_hits_with_growing_age(edge: Proc, origin: ScriptOrigin) -> None:
    conn = Conn(edge.port)
    answers = [conn.ask(HEAD) for _ in range(5)]
    conn.close()
    assert [a[0] for a in answers] == [200] * 5
    assert all(a[2] == b"object body" for a in answers)
    assert "fwd=uri-miss" in answers[0][1]["cache-status"]
    assert all(a[1]["cache-status"].startswith("edgeproxy; hit; ttl=") for a in answers[1:])
    assert all("age" in a[1] for a in answers[1:])
    assert len(origin.seen("/obj")) == 1
    s = stats(edge)
    # The 2nd request is a parsed hit, which publishes the object on the lane; the 3rd to 5th come from the lane.
    assert s["fast_lane_hits"] == 3
    assert s["hits"] == 4


def test_purges_and_replacements_are_seen(edge: Proc, origin: ScriptOrigin) -> None:
    conn = Conn(edge.port)
    for _ in range(3):
        conn.ask(HEAD)
    assert control(edge, cmd="purge", kind="url", url="http://lane.test/obj")["purged"] == 1
    status, fields, _ = conn.ask(HEAD)
    assert status == 200 and "fwd=uri-miss" in fields["cache-status"]
    conn.ask(HEAD)
    conn.ask(HEAD)
    assert control(edge, cmd="purge", kind="host", host="lane.test", soft=True)["purged"] == 1
    status, fields, _ = conn.ask(HEAD)
    assert "fwd=stale" in fields["cache-status"]
    conn.close()
    assert len(origin.seen("/obj")) == 3  # first miss, after the hard purge, the soft purge's revalidation
    assert origin.seen("/obj")[-1].header("if-none-match") == '"v1"'


def test_expiry_ends_lane_answers(edge: Proc, origin: ScriptOrigin) -> None:
    head = HEAD.replace(b"/obj", b"/short")
    conn = Conn(edge.port)
    for _ in range(3):
        assert conn.ask(head)[0] == 200
    time.sleep(1.3)
    status, fields, body = conn.ask(head)
    conn.close()
    assert status == 200 and body == b"short-lived"
    assert not fields["cache-status"].startswith("edgeproxy; hit")
    assert len(origin.seen("/short")) == 2


@pytest.mark.parametrize("extra, status, body", [
    (b"if-none-match: \"v1\"\r\n", 304, b""),
    (b"range: bytes=0-5\r\n", 206, b"object"),
    (b"cache-control: no-cache\r\n", 200, b"object body"),
])
def test_decisive_fields_never_take_the_lane(edge: Proc, origin: ScriptOrigin, extra: bytes, status: int,
                                            body: bytes) -> None:
    head = HEAD[:-2] + extra + b"\r\n"
    conn = Conn(edge.port)
    conn.ask(HEAD)
    answers = [conn.ask(head) for _ in range(3)]
    conn.close()
    assert [(a[0], a[2]) for a in answers] == [(status, body)] * 3
    assert stats(edge)["fast_lane_hits"] == 0


def test_head_and_get_and_pipelining(edge: Proc, origin: ScriptOrigin) -> None:
    head_req = HEAD.replace(b"GET", b"HEAD", 1)
    conn = Conn(edge.port)
    conn.ask(HEAD)
    for _ in range(3):
        status, fields, body = conn.ask(head_req, head=True)
        assert status == 200 and body == b"" and fields["content-length"] == "11"
    for _ in range(3):
        assert conn.ask(HEAD)[2] == b"object body"
    conn.sock.sendall(HEAD * 3)  # one read holding three heads: answered in order by the parser
    time.sleep(0.3)
    conn.sock.shutdown(socket.SHUT_WR)
    data = conn.buf + read_all(conn.sock, 3)
    conn.close()
    assert [r.body for r in parse_responses(data)] == [b"object body"] * 3


def test_connection_close_is_honoured(edge: Proc, origin: ScriptOrigin) -> None:
    head = HEAD[:-2] + b"connection: close\r\n\r\n"
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", edge.port), timeout=5) as sock:
            sock.sendall(head)
            data = read_all(sock, 3)  # returns when the proxy closes
        [response] = parse_responses(data)
        assert response.body == b"object body" and response.header("connection") == "close"


@pytest.mark.parametrize("server", [{"fast_lane": False}, {"head_memo": False}])
def test_lane_off(proxy_factory: Callable[..., Proc], origin: ScriptOrigin, server: dict) -> None:
    proxy = proxy_factory(origin.url, server=server)
    conn = Conn(proxy.port)
    assert [conn.ask(HEAD)[0] for _ in range(4)] == [200] * 4
    conn.close()
    s = stats(proxy)
    assert s["fast_lane_hits"] == 0 and s["hits"] == 3
    assert s["store"]["hits"] == 3  # store lookups that found the entry: the lane on counts the same (below)


def test_lane_hits_count_as_store_hits(edge: Proc) -> None:
    conn = Conn(edge.port)
    assert [conn.ask(HEAD)[0] for _ in range(4)] == [200] * 4
    conn.close()
    s = stats(edge)
    assert (s["fast_lane_hits"], s["hits"], s["store"]["hits"]) == (2, 3, 3)


def test_access_log_has_lane_hits(edge: Proc, origin: ScriptOrigin) -> None:
    conn = Conn(edge.port)
    for _ in range(4):
        conn.ask(HEAD)
    conn.close()
    log = edge.workdir / "access.log"
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and log.read_text().count("cache=hit") < 3:
        time.sleep(0.1)
    lines = [line for line in log.read_text().splitlines() if "/obj" in line]
    assert len(lines) == 4 and sum("cache=hit" in line for line in lines) == 3
    assert all('"GET /obj HTTP/1.1" 200 11' in line for line in lines)
    # The 3rd and 4th are the lane's (the 2nd was parsed): the same line as a parsed hit's but for total_ms, 0.0 for
    # an answer given within the read that brought the head.
    after_time = [line.split("] ", 1)[1] for line in lines[1:]]
    assert len({line.rsplit(" total_ms=", 1)[0] for line in after_time}) == 1, after_time
    assert after_time[-1].endswith(" origin_ms=0.0 total_ms=0.0"), after_time


def test_heads_that_never_repeat_are_lane_hits(edge: Proc, origin: ScriptOrigin) -> None:
    """Unique heads (a request id and a cookie each) are lane hits: the lane keys on the URL, not the head's bytes."""
    conn = Conn(edge.port)
    for n in range(40):
        status, _, body = conn.ask(HEAD.replace(b"\r\n\r\n", b"\r\nX-Request-Id: %d\r\nCookie: s=%d\r\n\r\n" % (n, n)))
        assert (status, body) == (200, b"object body")
    conn.close()
    s = stats(edge)
    assert (s["fast_lane_hits"], s["hits"]) == (38, 39)


@pytest.mark.parametrize("parser", ["h11", "httptools"])
def test_json_access_log_lines(parser: str, proxy_factory: Callable[..., Proc], origin: ScriptOrigin) -> None:
    """The JSON format written by the exchange (no LogRecord): a miss, a parsed hit, lane hits, an error."""
    import json

    proxy = proxy_factory(origin.url, server={"parser": parser}, log={"format": "json"})
    conn = Conn(proxy.port)
    for _ in range(4):
        conn.ask(HEAD.replace(b"user-agent: lane-test", b'user-agent: say "hi" \xc3\xa9'))
    conn.close()
    # A field twice: the log shows the first value (as headers.get reads it).
    conn = Conn(proxy.port)
    assert conn.ask(HEAD.replace(b"user-agent: lane-test", b"user-agent: first\r\nuser-agent: second"))[0] == 200
    conn.close()
    # Refused by the exchange, so logged: before a site is known (an invalid Host) and by its site (TRACE).
    assert Conn(proxy.port).ask(b"GET /obj HTTP/1.1\r\nhost: x:99999\r\n\r\n")[0] == 400
    assert Conn(proxy.port).ask(b"TRACE /obj HTTP/1.1\r\nhost: lane.test\r\n\r\n")[0] == 405
    log = proxy.workdir / "access.log"
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and log.read_text().count("\n") < 7:
        time.sleep(0.1)
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(r["cache"], r["status"], r["method"]) for r in lines] == [
        ("miss", 200, "GET"), ("hit", 200, "GET"), ("hit", 200, "GET"), ("hit", 200, "GET"), ("hit", 200, "GET"),
        ("error", 400, "GET"), ("error", 405, "TRACE")]
    assert lines[4]["user_agent"] == "first"
    assert all(r["target"] == "/obj" and r["version"] == "1.1" and r["client"] == "127.0.0.1" for r in lines)
    assert lines[0]["user_agent"] == 'say "hi" \xc3\xa9' and lines[0]["bytes"] == len(b"object body")
    assert lines[-1]["user_agent"] == "" and isinstance(lines[-1]["total_ms"], float)


def test_without_the_compiled_scanner_the_twin_runs_and_says_so(proxy_factory: Callable[..., Proc],
                                                               origin: ScriptOrigin) -> None:
    proxy = proxy_factory(origin.url, extra_env={"EDGEPROXY_PURE_SCAN": "1"})
    conn = Conn(proxy.port)
    assert [conn.ask(HEAD)[0] for _ in range(4)] == [200] * 4
    conn.close()
    assert stats(proxy)["fast_lane_hits"] == 2
    assert "its Python twin runs" in proxy.log()


def test_with_the_compiled_scanner_nothing_is_said(edge: Proc) -> None:
    from edgeproxy.http import headscan

    if not headscan.COMPILED:
        pytest.skip("the compiled scanner is not built here")  # scripts/test builds it: a failure under CI=true
    assert "Python twin" not in edge.log()
