"""The core proxy over real sockets: a scripted origin, the proxy as a subprocess, raw clients (category: basic).

What is checked: keep-alive and pipelining, streaming without buffering (the proxy's RSS), re-framing between chunked,
Content-Length and close-delimited bodies, which fields cross (hop-by-hop, Via, X-Forwarded-*), the answers the edge
gives itself (400, 405, 408, 413, 414, 417, 421, 431, 502, 504, 505, 508, 100 Continue), its timeouts, and what happens
to origin connections when a client aborts or an origin closes a pooled connection.

Most tests share one proxy (``edge``, one per client parser backend: the protocol answers must not depend on it) in
front of one scripted origin; tests that measure the proxy's memory get their own. Every wait is bounded; the file runs
in well under a minute.
"""

from __future__ import annotations

import json
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h11
import pytest

from edgeproxy.control.client import ControlClient
from tests.scriptorigin import Reply, ScriptOrigin, echo
from tests.support import PARSERS, HTTPClient, Proc, Response, free_port, start_proxy

MIB = 1024 * 1024
HOST = "test.local"


# ---- a raw client ----

@dataclass
class Got(Response):
    length: int = 0  # body bytes received (the body itself is dropped when ``keep`` is False)
    informational: list[int] = field(default_factory=list)

    def json(self) -> Any:
        return json.loads(self.body)


def build(method: str = "GET", target: str = "/", headers: list[tuple[str, str]] | None = None, body: bytes = b"",
          version: str = "1.1", host: str | None = HOST, chunked: bool = False) -> bytes:
    """One request as wire bytes; Content-Length is added for a body unless ``chunked``."""
    fields = ([("host", host)] if host is not None else []) + list(headers or [])
    if chunked:
        fields.append(("transfer-encoding", "chunked"))
        body = (b"%x\r\n%s\r\n" % (len(body), body) if body else b"") + b"0\r\n\r\n"
    elif body:
        fields.append(("content-length", str(len(body))))
    head = f"{method} {target} HTTP/{version}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields) + "\r\n"
    return head.encode("latin-1") + body


class Wire:
    """One client connection: raw bytes out, responses parsed one at a time with h11."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.timeout = timeout
        self.conn = h11.Connection(h11.CLIENT)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def request(self, method: str = "GET", target: str = "/", **kwargs: Any) -> Got:
        self.send(build(method, target, **kwargs))
        return self.response(method)

    def response(self, method: str = "GET", keep: bool = True) -> Got:
        """The next response to a request made with ``method``."""
        conn = self.conn
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
        conn.send(h11.Request(method=method, target="/", headers=[("host", "x")]))
        conn.send(h11.EndOfMessage())
        got: Got | None = None
        informational: list[int] = []
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                self.sock.settimeout(max(deadline - time.monotonic(), 0.01))
                conn.receive_data(self.sock.recv(1 << 20))
            elif isinstance(event, h11.InformationalResponse):
                informational.append(event.status_code)
            elif isinstance(event, h11.Response):
                got = Got(event.status_code, [(k.decode(), v.decode("latin-1")) for k, v in event.headers], b"",
                          informational=informational)
            elif isinstance(event, h11.Data) and got is not None:
                got.length += len(event.data)
                if keep:
                    got.body += event.data
            elif isinstance(event, h11.EndOfMessage) and got is not None:
                return got
            else:
                raise AssertionError(f"unexpected {event!r}")
        raise TimeoutError(f"no complete response to {method}")

    def ending(self, timeout: float = 5.0) -> str:
        """How the connection ends from here: "fin", "reset", "data" (more bytes came) or "open"."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            return "reset"
        except TimeoutError:
            return "open"
        return "data" if data else "fin"

    def readable(self, timeout: float) -> bool:
        return bool(select.select([self.sock], [], [], timeout)[0])

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Wire:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process, in kB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def stats(proxy: Proc) -> dict[str, Any]:
    with ControlClient(proxy.extra["control"]) as client:
        return client.request({"cmd": "stats"})


# ---- fixtures ----

@pytest.fixture(scope="module")
def origin() -> Iterator[ScriptOrigin]:
    with ScriptOrigin() as o:
        yield o


@pytest.fixture(autouse=True)
def fresh_script(origin: ScriptOrigin) -> None:
    origin.reset()


@pytest.fixture(scope="module", params=PARSERS)
def edge(request: pytest.FixtureRequest, origin: ScriptOrigin,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    """The shared proxy: short timeouts, one site for two names, one site whose origin port is closed."""
    sites = [{"hosts": [HOST, "only.example"], "origin": origin.url},
             {"hosts": ["dead.example"], "origin": f"http://127.0.0.1:{free_port()}"}]
    proxy = start_proxy(origin.url, tmp_path_factory.mktemp("edge"), site=sites,
                        server={"header_timeout": "1s", "keepalive_timeout": "1s", "parser": request.param},
                        origin={"read_timeout": "1s"})
    yield proxy
    proxy.stop()


@pytest.fixture
def own_proxy(origin: ScriptOrigin, proxy_factory: Callable[..., Proc]) -> Callable[..., Proc]:
    """A proxy of the test's own (clean memory baseline, special limits) in front of the scripted origin."""
    return lambda **overrides: proxy_factory(origin.url, **overrides)


# ---- connections: keep-alive, pipelining ----

@pytest.mark.parametrize("version, headers, connection", [
    ("1.1", [], None),
    ("1.0", [("connection", "keep-alive")], "keep-alive"),
])
def test_keepalive_reuses_both_sides(edge: Proc, origin: ScriptOrigin, version: str,
                                     headers: list[tuple[str, str]], connection: str | None) -> None:
    with Wire(edge.port) as wire:
        for i in range(5):
            got = wire.request("GET", f"/ka/{i}", headers=headers, version=version)
            assert got.status == 200 and got.json()["target"] == f"/ka/{i}"
            assert got.header("connection") == connection
    conns = {s.conn for i in range(5) for s in origin.seen(f"/ka/{i}")}
    assert len(conns) == 1, "five requests on one client connection should use one origin connection"


def test_pipelined_requests_answered_in_order(edge: Proc, origin: ScriptOrigin) -> None:
    origin.routes["/head"] = Reply(framing="none", body=b"h" * 10)
    requests = [("GET", "/p/0", b""), ("POST", "/p/1", b"one"), ("HEAD", "/head", b""), ("GET", "/p/3", b""),
                ("PUT", "/p/4", b"four!")]
    with Wire(edge.port) as wire:
        wire.send(b"".join(build(m, t, body=b) for m, t, b in requests))
        for method, target, body in requests:
            got = wire.response(method)
            assert got.status == 200
            if method == "HEAD":
                assert got.body == b"" and got.header("content-length") == "10"
            else:
                assert got.json()["target"] == target and got.json()["body_length"] == len(body)


# ---- streaming without buffering ----

@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_large_response_streams_with_flat_memory(own_proxy: Callable[..., Proc], origin: ScriptOrigin,
                                                 framing: str) -> None:
    proxy = own_proxy()
    size = 200 * MIB
    origin.routes["/big"] = Reply(stream=size, framing=framing)
    before = memory_kb(proxy.pid)
    with Wire(proxy.port, timeout=60) as wire:
        wire.send(build("GET", "/big"))
        got = wire.response("GET", keep=False)
    assert got.status == 200 and got.length == size
    growth_mib = (memory_kb(proxy.pid)["VmHWM"] - before["VmRSS"]) / 1024
    assert growth_mib < 100, f"proxy peak RSS grew by {growth_mib:.0f} MiB for a {size // MIB} MiB body"


def test_concurrent_large_responses_hold_little_each(own_proxy: Callable[..., Proc], origin: ScriptOrigin) -> None:
    proxy = own_proxy()
    size, streams = 100 * MIB, 4
    origin.routes["/big"] = Reply(stream=size)
    before = memory_kb(proxy.pid)
    lengths: list[int] = []

    def fetch() -> None:
        with Wire(proxy.port, timeout=60) as wire:
            wire.send(build("GET", "/big"))
            lengths.append(wire.response("GET", keep=False).length)

    threads = [threading.Thread(target=fetch) for _ in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert lengths == [size] * streams
    growth_mib = (memory_kb(proxy.pid)["VmHWM"] - before["VmRSS"]) / 1024
    assert growth_mib < 24, f"proxy peak RSS grew by {growth_mib:.0f} MiB for {streams} concurrent streams"


def test_chunked_upload_streams_with_flat_memory(own_proxy: Callable[..., Proc], origin: ScriptOrigin) -> None:
    proxy = own_proxy()
    size, block = 50 * MIB, b"u" * (256 * 1024)
    before = memory_kb(proxy.pid)
    with Wire(proxy.port, timeout=60) as wire:
        wire.send(build("POST", "/upload", headers=[("transfer-encoding", "chunked")]))
        for _ in range(size // len(block)):
            wire.send(b"%x\r\n%s\r\n" % (len(block), block))
        wire.send(b"0\r\n\r\n")
        got = wire.response("POST")
    assert got.status == 200 and got.json()["body_length"] == size
    growth_mib = (memory_kb(proxy.pid)["VmHWM"] - before["VmRSS"]) / 1024
    assert growth_mib < 10, f"proxy peak RSS grew by {growth_mib:.0f} MiB for a {size // MIB} MiB upload"


# ---- framing ----

@pytest.mark.parametrize("origin_framing, version, transfer_encoding, content_length, connection", [
    ("chunked", "1.1", "chunked", None, None),
    ("chunked", "1.0", None, None, "close"),
    ("close", "1.1", "chunked", None, None),
    ("close", "1.0", None, None, "close"),
    ("length", "1.1", None, "5000", None),
    ("length", "1.0", None, "5000", "close"),
])
def test_response_reframed_for_the_client(edge: Proc, origin: ScriptOrigin, origin_framing: str, version: str,
                                          transfer_encoding: str | None, content_length: str | None,
                                          connection: str | None) -> None:
    body = bytes(range(250)) * 20
    origin.routes["/framed"] = Reply(body=body, framing=origin_framing)
    with Wire(edge.port) as wire:
        got = wire.request("GET", "/framed", version=version)
        assert (got.status, got.body) == (200, body)
        assert got.header("transfer-encoding") == transfer_encoding
        assert got.header("content-length") == content_length
        assert got.header("connection") == connection
        if connection == "close":
            assert wire.ending() == "fin"
        else:
            assert wire.request("GET", "/after").status == 200


# ---- which fields cross ----

def test_hop_by_hop_request_fields_stay_behind(edge: Proc, origin: ScriptOrigin) -> None:
    sent = [("connection", "keep-alive, x-foo"), ("x-foo", "secret"), ("keep-alive", "timeout=5"), ("te", "trailers"),
            ("proxy-authorization", "Basic Zm9vOmJhcg=="), ("proxy-connection", "keep-alive"), ("trailer", "x-t"),
            ("x-end-to-end", "kept")]
    with Wire(edge.port) as wire:
        assert wire.request("GET", "/hop", headers=sent).status == 200
    names = origin.seen("/hop")[0].names()
    assert not names & {"connection", "x-foo", "keep-alive", "te", "proxy-authorization", "proxy-connection",
                        "trailer"}
    assert "x-end-to-end" in names


def test_hop_by_hop_response_fields_stay_behind(edge: Proc, origin: ScriptOrigin) -> None:
    origin.routes["/hop"] = Reply(body=b"ok", headers=[
        ("connection", "x-bar"), ("x-bar", "secret"), ("keep-alive", "timeout=5"), ("proxy-authenticate", "Basic"),
        ("trailer", "x-t"), ("upgrade", "websocket"), ("x-end-to-end", "kept")])
    with Wire(edge.port) as wire:
        got = wire.request("GET", "/hop")
    names = {k for k, _ in got.headers}
    assert not names & {"connection", "x-bar", "keep-alive", "proxy-authenticate", "trailer", "upgrade"}
    assert got.header("x-end-to-end") == "kept"


def test_via_and_forwarded_fields(edge: Proc, origin: ScriptOrigin) -> None:
    origin.routes["/fwd"] = lambda seen: Reply(headers=[("via", "1.1 origin-shield")], body=echo(seen).body)
    sent = [("via", "1.0 browser-proxy"), ("x-forwarded-for", "203.0.113.9"), ("x-forwarded-host", "evil.example"),
            ("x-original-url", "/admin"), ("x-rewrite-url", "/admin")]
    with Wire(edge.port) as wire:
        got = wire.request("GET", "/fwd", headers=sent)
    assert got.header("via") == "1.1 origin-shield, 1.1 edgeproxy"
    seen = origin.seen("/fwd")[0]
    assert seen.header("via") == "1.0 browser-proxy, 1.1 edgeproxy"
    assert seen.header("x-forwarded-for") == "203.0.113.9, 127.0.0.1"
    assert seen.header("x-forwarded-proto") == "http"
    assert [v for k, v in seen.headers if k == "x-forwarded-host"] == [HOST]
    assert not seen.names() & {"x-original-url", "x-rewrite-url"}


@pytest.mark.parametrize("target, host, path, seen_host", [
    ("http://test.local/abs?q=1", HOST, "/abs?q=1", HOST),
    ("http://only.example/abs", None, "/abs", "only.example"),
    ("http://TEST.local:80/abs", HOST, "/abs", HOST),  # same authority once normalized (RFC 9112 §3.2.2)
])
def test_absolute_form_target(edge: Proc, origin: ScriptOrigin, target: str, host: str | None, path: str,
                              seen_host: str) -> None:
    with Wire(edge.port) as wire:
        wire.send(build("GET", target, host=host, version="1.1" if host else "1.0"))
        got = wire.response()
    assert got.status == 200
    seen = origin.seen("/abs")[0]
    assert (seen.target, seen.header("host")) == (path, seen_host)


def test_options_max_forwards_decremented_on_the_way(edge: Proc, origin: ScriptOrigin) -> None:
    with Wire(edge.port) as wire:
        assert wire.request("OPTIONS", "/opt", headers=[("max-forwards", "3")]).status == 200
    assert origin.seen("/opt")[0].header("max-forwards") == "2"


def test_head_through_the_proxy(edge: Proc, origin: ScriptOrigin) -> None:
    origin.routes["/head"] = Reply(framing="none", body=b"x" * 1234, headers=[("etag", '"h"')])
    with Wire(edge.port) as wire:
        got = wire.request("HEAD", "/head")
        assert (got.status, got.body, got.header("content-length"), got.header("etag")) == (200, b"", "1234", '"h"')
        assert wire.request("GET", "/after").status == 200  # the connection is still in step
    assert origin.seen("/head")[0].method == "HEAD"


# ---- answers the edge gives itself ----

LOCAL_ANSWERS = {
    # name: (request bytes, status, connection stays open afterwards)
    "loop": (build("GET", "/local", headers=[("via", "1.0 a, 1.1 edgeproxy")]), 508, True),
    "loop-with-comment": (build("GET", "/local", headers=[("via", "1.1 edgeproxy (edge 2)")]), 508, True),
    "no-site": (build("GET", "/local", host="elsewhere.example"), 421, True),
    "trace": (build("TRACE", "/local"), 405, True),
    "options-max-forwards-0": (build("OPTIONS", "/local", headers=[("max-forwards", "0")]), 200, True),
    "options-star": (build("OPTIONS", "*"), 200, True),
    "malformed": (b"GET /local HTTP/1.1\r\nHost: test.local\r\nBad Header\r\n\r\n", 400, False),
    "garbage": (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400, False),
    "expect-other": (build("POST", "/local", headers=[("expect", "something-else")], body=b"x"), 417, False),
    "uri-too-long": (build("GET", "/local?" + "a" * 9000), 414, False),
    "headers-too-large": (build("GET", "/local", headers=[("x-big", "b" * 40000)]), 431, False),
    "too-many-headers": (build("GET", "/local", headers=[(f"x-h{i}", "v") for i in range(150)]), 431, False),
    "body-too-large": (build("POST", "/local", headers=[("content-length", str(101 * MIB))]), 413, False),
    "version": (build("GET", "/local", version="2.0"), 505, False),
    "absolute-form-disagrees": (build("GET", "http://other.example/local"), 400, False),
}


@pytest.mark.parametrize("request_bytes, status, stays_open", LOCAL_ANSWERS.values(), ids=LOCAL_ANSWERS.keys())
def test_answered_by_the_edge(edge: Proc, origin: ScriptOrigin, request_bytes: bytes, status: int,
                              stays_open: bool) -> None:
    with Wire(edge.port) as wire:
        wire.send(request_bytes)
        got = wire.response()
        assert got.status == status, got.body
        if stays_open:
            assert wire.request("GET", "/next").status == 200
        else:
            assert got.header("connection") == "close"
            assert wire.ending() == "fin"
    assert origin.seen("/local") == []


def test_via_naming_another_node_is_no_loop(edge: Proc, origin: ScriptOrigin) -> None:
    with Wire(edge.port) as wire:
        assert wire.request("GET", "/via", headers=[("via", "1.1 edgeproxy-b, 1.1 my-edgeproxy")]).status == 200


def test_site_by_host(edge: Proc, origin: ScriptOrigin) -> None:
    with Wire(edge.port) as wire:
        assert wire.request("GET", "/site", host="only.example").status == 200
    assert origin.seen("/site")[0].header("host") == "only.example"


def test_header_block_too_large_in_many_small_writes(edge: Proc) -> None:
    with Wire(edge.port) as wire:
        wire.send(b"GET / HTTP/1.1\r\nHost: test.local\r\n")
        for i in range(80):  # 80 x 512 bytes: past the 32 KiB limit, never a complete head
            if wire.readable(0.002):
                break
            wire.send(b"x-f%d: %s\r\n" % (i, b"v" * 500))
        got = wire.response()
        assert got.status == 431
        assert wire.ending() == "fin"


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_body_over_max_body(own_proxy: Callable[..., Proc], origin: ScriptOrigin, chunked: bool) -> None:
    proxy = own_proxy(server={"max_body": "1KiB"})
    with Wire(proxy.port) as wire:
        wire.send(build("POST", "/big-upload", body=b"z" * 4096, chunked=chunked))
        got = wire.response("POST")
        assert got.status == 413
        assert wire.ending() == "fin"
    assert all(s.body_length <= 1024 for s in origin.seen("/big-upload"))


def test_expect_100_continue(edge: Proc, origin: ScriptOrigin) -> None:
    with Wire(edge.port) as wire:
        wire.send(build("POST", "/continue", headers=[("expect", "100-continue"), ("content-length", "5")]))
        assert wire.readable(5.0)
        assert wire.sock.recv(1024) == b"HTTP/1.1 100 Continue\r\n\r\n"
        wire.send(b"hello")
        got = wire.response("POST")
    assert got.status == 200 and got.json()["body_length"] == 5
    assert origin.seen("/continue")[0].header("expect") is None


# ---- origin failures ----

def test_origin_refused_is_502(edge: Proc) -> None:
    with Wire(edge.port) as wire:
        got = wire.request("GET", "/", host="dead.example")
        assert got.status == 502
        assert wire.request("GET", "/next").status == 200


def test_origin_stall_is_504(edge: Proc, origin: ScriptOrigin) -> None:
    origin.routes["/stall"] = Reply(stall=True)
    with Wire(edge.port) as wire:
        started = time.monotonic()
        got = wire.request("GET", "/stall")
        assert got.status == 504 and time.monotonic() - started < 3
        assert wire.request("GET", "/next").status == 200
    stalled = origin.seen("/stall")[0].conn
    assert origin.wait_for(lambda: stalled in origin.closed), "the stalled origin connection must be closed"


@pytest.mark.parametrize("quiet_close, method, body, status, attempts", [
    pytest.param(False, "GET", b"", 200, 2, id="reused-then-closed-GET-retried"),
    pytest.param(False, "POST", b"data", 502, 1, id="reused-then-closed-POST-not-retried"),
    pytest.param(True, "POST", b"data", 200, 1, id="closed-while-idle-POST-new-connection"),
])
def test_origin_closing_a_pooled_connection(edge: Proc, origin: ScriptOrigin, quiet_close: bool, method: str,
                                            body: bytes, status: int, attempts: int) -> None:
    """The origin hangs up on a reused connection when the request arrives, or closes it while it sits idle."""
    origin.routes["/warm"] = Reply(body=b"warm", close=quiet_close)
    origin.routes["/flaky"] = lambda seen: Reply(hangup=True) if seen.index else echo(seen)
    with Wire(edge.port) as wire:
        assert wire.request("GET", "/warm").status == 200  # leaves a pooled connection that served a request
        if quiet_close:
            warm = origin.seen("/warm")[0].conn
            assert origin.wait_for(lambda: warm in origin.closed)
            time.sleep(0.05)  # the proxy's loop sees the origin's FIN before our next request
        got = wire.request(method, "/flaky", body=body)
        assert got.status == status
    assert len(origin.seen("/flaky")) == attempts


# ---- client timeouts and aborts ----

def test_slow_header_closed_with_408(edge: Proc) -> None:
    """header_timeout = 1s is a deadline for the whole head, not an idle timer: trickling bytes don't extend it."""
    head = build("GET", "/slow", headers=[("x-pad", "p" * 40)])
    with Wire(edge.port) as wire:
        started = time.monotonic()
        for byte in head[:-2]:
            wire.send(bytes([byte]))
            if wire.readable(0.2):
                break
        got = wire.response()
        elapsed = time.monotonic() - started
        assert got.status == 408 and 0.9 < elapsed < 2.5
        assert wire.ending() == "fin"


def test_idle_keepalive_closed(edge: Proc) -> None:
    with Wire(edge.port) as wire:
        assert wire.request("GET", "/idle").status == 200
        started = time.monotonic()
        assert wire.ending(timeout=5.0) == "fin"
        assert 0.9 < time.monotonic() - started < 2.5


def test_client_abort_mid_body_releases_the_origin_connection(edge: Proc, origin: ScriptOrigin) -> None:
    origin.routes["/endless"] = Reply(stream=1 << 30)
    wire = Wire(edge.port)
    wire.send(build("GET", "/endless"))
    assert wire.readable(5.0) and len(wire.sock.recv(1 << 20)) > 0
    wire.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    wire.close()  # abortive close mid-body
    assert origin.wait_for(lambda: len(origin.seen("/endless")) == 1)
    conn = origin.seen("/endless")[0].conn
    assert origin.wait_for(lambda: conn in origin.closed), "the origin connection must be closed, not left streaming"
    with Wire(edge.port) as other:
        assert other.request("GET", "/next").status == 200
    assert origin.wait_for(lambda: stats(edge)["open_connections"] == 0), "client connections leaked"


@pytest.mark.parametrize("method, target, extra, status", [
    ("TRACE", "/x", {}, 405), ("OPTIONS", "*", {}, 200), ("OPTIONS", "/x", {"max-forwards": "0"}, 200)])
def test_local_answers_carry_cache_status_and_allow(proxy: Proc, method: str, target: str, extra: dict[str, str],
                                                    status: int) -> None:
    with HTTPClient(proxy.port) as client:
        got = client.request(method, target, extra)
        assert got.status == status and got.header("allow")
        assert got.header("cache-status") == 'edgeproxy; detail="local"'
        assert client.request("GET", "/bytes/10").status == 200  # the connection stays usable
