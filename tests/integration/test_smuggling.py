"""Hostile requests over raw sockets: each probe gets its answer, the connection closes, and nothing reaches the origin.

Category: faults (docs/hardening.md, "Hostile requests"). One proxy process per parser backend and one recording
origin (``tests.faultorigin``) serve the whole module; the origin's log is cleared before each test, so "nothing
forwarded" is an assertion on every byte the origin received. Each probe is bounded by a short timeout.

What h11 0.16 alone accepts, and the proxy must refuse: CL together with TE (h11 frames by TE), TE on HTTP/1.0,
TE with surrounding whitespace or obs-folded, a 20-digit CL, ``5, 5`` and two identical CL lines (h11 merges
them), obs-fold (h11 unfolds), bare LF line ends, HTTP/2.0 and HTTP/1.2 request lines, an absolute-form target
disagreeing with Host, a URI over the limit, too many fields, an oversized head arriving in one read, and control
bytes in a field value or the target, or obs-text in the target (llhttp refuses the controls; both backends refuse
both; obs-text in a field value is accepted as opaque data, RFC 9110 §5.5).

Decisions: ``chunked`` is a case-insensitive token (RFC 9112 §7), so ``CHUNKED`` is accepted and forwarded;
anything else in Transfer-Encoding, trailing whitespace included, is refused (see ``edgeproxy.proxy.parser``).
Content-Length must appear once, as digits only: ``5, 5`` and a repeated identical line are refused, as nginx
does, although RFC 9110 §8.6 would allow folding them into one value.
"""

from __future__ import annotations

import itertools
import select
import socket
import time
from collections.abc import Iterator

import pytest

from tests.faultorigin import FaultOrigin
from tests.support import PARSERS, Proc, parse_responses, start_proxy

TIMEOUT = 5.0
HOST = b"host: test.local\r\n"
SMUGGLED = b"GET /smuggled HTTP/1.1\r\n" + HOST + b"\r\n"
CHUNKED_BODY = b"5\r\nhello\r\n0\r\n\r\n"
SENTINELS = itertools.count()


def post(*fields: bytes, body: bytes = b"", line: bytes = b"POST /p HTTP/1.1", host: bytes = HOST) -> bytes:
    return line + b"\r\n" + host + b"".join(f + b"\r\n" for f in fields) + b"\r\n" + body


def te(value: bytes, version: bytes = b"1.1") -> bytes:
    return post(b"transfer-encoding:" + value, body=CHUNKED_BODY + SMUGGLED, line=b"POST /p HTTP/" + version)


def cl(*values: bytes) -> bytes:
    return post(*(b"content-length: " + v for v in values), body=b"hello" + SMUGGLED)


def chunked(body: bytes) -> bytes:
    return post(b"transfer-encoding: chunked", body=body)


HEAD_PROBES = [
    pytest.param(post(b"content-length: 5", b"transfer-encoding: chunked", body=b"0\r\n\r\n" + SMUGGLED), 400,
                 id="cl-and-te"),
    pytest.param(post(b"transfer-encoding: chunked", b"content-length: 5", body=b"0\r\n\r\n" + SMUGGLED), 400,
                 id="te-and-cl"),
    pytest.param(te(b" chunked", b"1.0"), 400, id="te-on-http10"),
    pytest.param(te(b" xchunked"), 400, id="te-xchunked"),
    pytest.param(te(b" chunked, chunked"), 400, id="te-chunked-twice-in-list"),
    pytest.param(te(b" gzip, chunked"), 400, id="te-gzip-chunked"),
    pytest.param(te(b" identity"), 400, id="te-identity"),
    pytest.param(te(b" chunked "), 400, id="te-trailing-space"),
    pytest.param(te(b" chunked\t"), 400, id="te-trailing-tab"),
    pytest.param(te(b"\r\n chunked"), 400, id="te-obs-folded"),
    pytest.param(te(b" \x0bchunked"), 400, id="te-vertical-tab"),
    pytest.param(te(b" chunked\r\ntransfer-encoding: chunked"), 400, id="te-duplicated"),
    pytest.param(post(b"transfer-encoding : chunked", body=CHUNKED_BODY), 400, id="te-space-before-colon"),
    pytest.param(cl(b"+5"), 400, id="cl-plus"),
    pytest.param(cl(b"-5"), 400, id="cl-negative"),
    pytest.param(cl(b"0x5"), 400, id="cl-hex"),
    pytest.param(cl(b"5", b"6"), 400, id="cl-two-values"),
    pytest.param(cl(b"5", b"5"), 400, id="cl-repeated-line"),
    pytest.param(cl(b"5, 5"), 400, id="cl-list"),
    pytest.param(cl(b"00000000000000000005"), 400, id="cl-20-digits"),
    pytest.param(cl(b"99999999999999999999999"), 400, id="cl-overflow"),
    pytest.param(post(b"x-a: 1", b" folded", body=b""), 400, id="obs-fold"),
    pytest.param(b"GET / HTTP/1.1\n" + HOST[:-2] + b"\n\n", 400, id="bare-lf"),
    pytest.param(b"GET / HTTP/1.1\r\n" + HOST[:-2] + b"\nx-a: 1\r\n\r\n", 400, id="bare-lf-inside"),
    pytest.param(b"GET / HTTP/1.1\r\n" + HOST[:-2] + b"\rx-a: 1\r\n\r\n", 400, id="bare-cr"),
    pytest.param(b"GET / HTTP/2.0\r\n" + HOST + b"\r\n", 505, id="http-2.0"),
    pytest.param(b"GET / HTTP/1.2\r\n" + HOST + b"\r\n", 505, id="http-1.2"),
    pytest.param(b"GET / HTTP/3.1\r\n" + HOST + b"\r\n", 505, id="http-3.1"),
    pytest.param(b"GET /\r\n", 400, id="http-0.9"),
    pytest.param(b"GET / HTTP/1.1\r\n\r\n", 400, id="no-host"),
    pytest.param(b"GET / HTTP/1.1\r\n" + HOST + b"host: other.local\r\n\r\n", 400, id="two-hosts"),
    pytest.param(b"GET http://other.local/ HTTP/1.1\r\n" + HOST + b"\r\n", 400, id="absolute-form-not-host"),
    pytest.param(b"GET / HTTP/1.1\r\n" + HOST + b"x-a: a\x00b\r\n\r\n", 400, id="nul-in-value"),
    pytest.param(b"GET / HTTP/1.1\r\n" + HOST + b"x-a: a\rb\r\n\r\n", 400, id="cr-in-value"),
    pytest.param(b"GET / HTTP/1.1\r\n" + HOST + b"x-a: a\nb\r\n\r\n", 400, id="lf-in-value"),
    pytest.param(b"GET /a\x00b HTTP/1.1\r\n" + HOST + b"\r\n", 400, id="nul-in-target"),
    pytest.param(b"GET / HTTP/1.1\r\n" + HOST + b"x-a: a\x01b\r\n\r\n", 400, id="control-in-value"),
    pytest.param(b"GET / HTTP/1.1\r\n" + HOST + b"x-a: a\x7fb\r\n\r\n", 400, id="del-in-value"),
    pytest.param(b"GET /caf\xc3\xa9 HTTP/1.1\r\n" + HOST + b"\r\n", 400, id="obs-text-in-target"),
    pytest.param(b"GET /a\x1bb HTTP/1.1\r\n" + HOST + b"\r\n", 400, id="control-in-target"),
    pytest.param(b"GET /" + b"a" * 10000 + b" HTTP/1.1\r\n" + HOST + b"\r\n", 414, id="huge-uri"),
    pytest.param(b"GET / HTTP/1.1\r\n" + HOST + b"".join(b"x-%d: 1\r\n" % i for i in range(150)) + b"\r\n", 431,
                 id="too-many-fields"),
    pytest.param(b"GET / HTTP/1.1\r\n" + HOST + b"x-big: " + b"a" * 40000 + b"\r\n\r\n", 431, id="huge-head"),
]

BODY_PROBES = [
    pytest.param(chunked(b"-1\r\nx\r\n0\r\n\r\n"), 400, id="chunk-negative"),
    pytest.param(chunked(b"0x5\r\nhello\r\n0\r\n\r\n"), 400, id="chunk-hex-prefix"),
    pytest.param(chunked(b"fffffffffffffffffffff\r\nhello\r\n0\r\n\r\n"), 400, id="chunk-size-overflow"),
    pytest.param(chunked(b"5;a\nb\r\nhello\r\n0\r\n\r\n"), 400, id="chunk-ext-lf"),
    pytest.param(chunked(b"5\r\nhelloXX0\r\n\r\n" + SMUGGLED), 400, id="chunk-no-crlf-after-data"),
]

@pytest.fixture(scope="module")
def origin() -> Iterator[FaultOrigin]:
    o = FaultOrigin()
    yield o
    o.stop()


@pytest.fixture(scope="module", params=PARSERS)
def proxy(request: pytest.FixtureRequest, origin: FaultOrigin,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    """One proxy per parser backend: the seam must make every backend equally strict."""
    p = start_proxy(origin.url, tmp_path_factory.mktemp("smuggling"), server={"parser": request.param})
    yield p
    p.stop()


@pytest.fixture(autouse=True)
def clean_origin(origin: FaultOrigin) -> Iterator[None]:
    origin.reset()
    yield
    assert origin.settle(), "the origin was still receiving a request after the test"


def probe(port: int, data: bytes, write_size: int = 0) -> tuple[bytes, bool]:
    """Send ``data`` (in ``write_size`` pieces when set, stopping once an answer arrives); return what came back
    and whether the proxy closed the connection within the timeout."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as s:
        pieces = [data[i:i + write_size] for i in range(0, len(data), write_size)] if write_size else [data]
        try:
            for piece in pieces:
                if select.select([s], [], [], 0)[0]:
                    break  # answered already: more bytes would only turn the close into a reset
                s.sendall(piece)
        except (BrokenPipeError, ConnectionResetError):
            pass
        return _read_to_close(s)


def _read_to_close(s: socket.socket) -> tuple[bytes, bool]:
    chunks: list[bytes] = []
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        s.settimeout(max(deadline - time.monotonic(), 0.01))
        try:
            chunk = s.recv(65536)
        except TimeoutError:
            return b"".join(chunks), False
        except ConnectionResetError:
            return b"".join(chunks), True
        if not chunk:
            return b"".join(chunks), True
        chunks.append(chunk)
    return b"".join(chunks), False


def assert_refused(proxy: Proc, data: bytes, status: int, write_size: int = 0) -> None:
    answer, closed = probe(proxy.port, data, write_size)
    responses = parse_responses(answer)
    assert [r.status for r in responses] == [status], answer[:300]
    assert closed, "the connection must close after a refused request"
    assert responses[0].header("connection") == "close"


@pytest.mark.parametrize(("data", "status"), HEAD_PROBES + BODY_PROBES)
def test_probe_is_refused_and_closed(proxy: Proc, origin: FaultOrigin, data: bytes, status: int) -> None:
    assert_refused(proxy, data, status)
    assert origin.requests_for("/smuggled") == []


def assert_nothing_forwarded(proxy: Proc, origin: FaultOrigin) -> None:
    """Once the origin has settled (read and recorded all the kernel holds for it), the only request it received
    is a sentinel sent after the probe, which also shows the proxy still forwards."""
    assert origin.settle()
    assert origin.received() == b""
    target = b"/sentinel?%d" % next(SENTINELS)  # a new URL each time: the cache must not answer it
    answer, _ = probe(proxy.port, b"GET " + target + b" HTTP/1.1\r\n" + HOST + b"connection: close\r\n\r\n")
    assert [r.status for r in parse_responses(answer)] == [200]
    assert [r.target for r in origin.requests] == [target]
    assert origin.received() == origin.requests[0].raw


@pytest.mark.parametrize(("data", "status"), HEAD_PROBES)
def test_refused_head_forwards_nothing(proxy: Proc, origin: FaultOrigin, data: bytes, status: int) -> None:
    assert_refused(proxy, data, status)
    assert_nothing_forwarded(proxy, origin)


@pytest.mark.parametrize(("data", "status"), BODY_PROBES)
def test_refused_body_forwards_nothing(proxy: Proc, origin: FaultOrigin, data: bytes, status: int) -> None:
    assert_refused(proxy, data, status)
    assert_nothing_forwarded(proxy, origin)


@pytest.mark.parametrize(("data", "status"), BODY_PROBES)
def test_refused_body_never_completes_a_request(proxy: Proc, origin: FaultOrigin, data: bytes, status: int) -> None:
    """The origin never receives a whole request (bodies are buffered before forwarding, see upstream.send_request)."""
    assert_refused(proxy, data, status)
    assert origin.settle()
    assert [r for r in origin.requests if r.complete] == []
    assert all(origin.is_closed(r.conn) for r in origin.requests), "the origin connection must be closed"


@pytest.mark.parametrize("write_size", [0, 100])
def test_huge_head_is_431_in_one_write_or_many(proxy: Proc, origin: FaultOrigin, write_size: int) -> None:
    data = b"GET / HTTP/1.1\r\n" + HOST + b"".join(b"x-%03d: %s\r\n" % (i, b"v" * 90) for i in range(400)) + b"\r\n"
    assert_refused(proxy, data, 431, write_size)
    assert_nothing_forwarded(proxy, origin)


@pytest.mark.parametrize("value", [b"chunked", b"CHUNKED", b"Chunked", b"\tchunked"])
def test_chunked_in_any_case_is_forwarded(proxy: Proc, origin: FaultOrigin, value: bytes) -> None:
    answer, _ = probe(proxy.port, post(b"transfer-encoding:" + (b"" if value[:1] == b"\t" else b" ") + value,
                                       b"connection: close", body=CHUNKED_BODY))
    assert [r.status for r in parse_responses(answer)] == [200]
    [req] = origin.requests_for("/p")
    assert req.complete and req.body == b"hello"


def test_request_trailers_are_dropped(proxy: Proc, origin: FaultOrigin) -> None:
    body = b"5\r\nhello\r\n0\r\nx-trailer-secret: 1\r\n\r\n"
    answer, _ = probe(proxy.port, post(b"transfer-encoding: chunked", b"trailer: x-trailer-secret",
                                       b"connection: close", body=body))
    assert [r.status for r in parse_responses(answer)] == [200]
    [req] = origin.requests_for("/p")
    assert req.complete and req.body == b"hello" and req.trailers == []
    assert b"x-trailer-secret" not in req.raw.lower()


def test_proxy_still_serves_after_the_probes(proxy: Proc, origin: FaultOrigin) -> None:
    answer, _ = probe(proxy.port, b"GET /after HTTP/1.1\r\n" + HOST + b"connection: close\r\n\r\n")
    assert [(r.status, r.body) for r in parse_responses(answer)] == [(200, b"ok /after")]
    assert len(origin.requests_for("/after")) == 1
