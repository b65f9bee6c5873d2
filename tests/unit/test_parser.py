"""The client-side parser seam (edgeproxy/proxy/parser.py): both backends, tables of wire bytes -> events.

Every table row runs on the h11 and the httptools backend, and every wire input is fed three ways: whole, one
byte per ``feed``, and in random chunks from a fixed seed. The events must be the same each time: how a request
is split across reads never changes what it means. Body chunks are merged before comparing (their boundaries
follow the reads), and the driver calls ``cycle_done()`` after each ``END`` as the shell does once it has
answered. No sockets, no clock.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import httptools  # noqa: F401  (a hard requirement of the suite: missing, this module fails, never skips)
import pytest

from edgeproxy.errors import (
    BadRequest,
    BodyTooLarge,
    ClientError,
    HeadersTooLarge,
    UriTooLong,
    VersionNotSupported,
)
from edgeproxy.proxy.backends import make_parser
from edgeproxy.proxy.parser import CLOSED, END, NEED_DATA, Limits, RequestHead, RequestParser

BACKENDS = ["h11", "httptools"]
LIMITS = Limits(max_uri=64, max_header_bytes=512, max_headers=8, max_body=64)
EOF = b""
MAX_EVENTS = 100


def whole(data: bytes) -> list[bytes]:
    return [data] if data else []


def bytewise(data: bytes) -> list[bytes]:
    return [data[i:i + 1] for i in range(len(data))]


def random_chunks(data: bytes) -> list[bytes]:
    rng = random.Random(len(data))  # fixed per input, so a failure replays
    out, i = [], 0
    while i < len(data):
        n = rng.randint(1, 9)
        out.append(data[i:i + n])
        i += n
    return out


SPLITS: dict[str, Callable[[bytes], list[bytes]]] = {
    "whole": whole, "bytewise": bytewise, "random": random_chunks}


def head(method: bytes, target: bytes, version: bytes = b"1.1", *, keep_alive: bool = True,
         expect: bool = False, body: bool = False, headers: tuple[tuple[bytes, bytes], ...] = ()) -> tuple:
    return ("head", method, target, version, keep_alive, expect, body, headers)


def drain(parser: RequestParser, events: list) -> None:
    for _ in range(MAX_EVENTS):
        event = parser.next_event()
        if event is NEED_DATA:
            return
        if event is CLOSED:
            events.append("CLOSED")
            return
        if event is END:
            events.append("END")
            parser.cycle_done()
        elif isinstance(event, RequestHead):
            events.append(head(event.method, event.target, event.http_version, keep_alive=event.keep_alive,
                               expect=event.expect_continue, body=event.has_body, headers=tuple(event.headers)))
        elif isinstance(event, bytes):
            if events and isinstance(events[-1], bytes):
                events[-1] += event
            else:
                events.append(event)
        else:
            raise AssertionError(f"unexpected event {event!r}")
    raise AssertionError("no NEED_DATA after MAX_EVENTS events")


def run(backend: str, reads: list[bytes], eof: bool, limits: Limits = LIMITS) -> list:
    parser = make_parser(backend, limits)
    events: list = []
    for data in [*reads, *([EOF] if eof else [])]:
        parser.feed(data)
        drain(parser, events)
    return events


H = (b"host", b"x")
GET = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
POST = b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
CHUNKED = (b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"5;ext=1\r\nhello\r\n6;a=\"b c\";d\r\n world\r\n0\r\nTrailer-A: 1\r\nTrailer-B: 2\r\n\r\n")
GET_HEAD = head(b"GET", b"/a", headers=(H,))
POST_HEAD = head(b"POST", b"/p", body=True, headers=(H, (b"content-length", b"5")))
CHUNKED_HEAD = head(b"POST", b"/c", body=True, headers=(H, (b"transfer-encoding", b"chunked")))

EVENTS = [
    ("get", GET, True, [GET_HEAD, "END", "CLOSED"]),
    ("get-no-eof", GET, False, [GET_HEAD, "END"]),
    ("eof-only", b"", True, ["CLOSED"]),
    # RFC 9110 §5.5: obs-text in a field value is opaque data (UTF-8 in User-Agent), kept byte for byte
    ("obs-text-in-value", b"GET /a HTTP/1.1\r\nHost: x\r\nUser-Agent: caf\xc3\xa9 \xff\r\n\r\n", True,
     [head(b"GET", b"/a", headers=(H, (b"user-agent", b"caf\xc3\xa9 \xff"))), "END", "CLOSED"]),
    ("absolute-form-and-extension-method", b"M-SEARCH http://x/a?q=1 HTTP/1.1\r\nHost: x\r\n\r\n", True,
     [head(b"M-SEARCH", b"http://x/a?q=1", headers=(H,)), "END", "CLOSED"]),
    ("field-value-whitespace-stripped", b"GET /a HTTP/1.1\r\nHost:x\r\nX-A: \t 1 2 \t\r\n\r\n", True,
     [head(b"GET", b"/a", headers=(H, (b"x-a", b"1 2"))), "END", "CLOSED"]),
    ("http10-closes", b"GET / HTTP/1.0\r\n\r\n", True, [head(b"GET", b"/", b"1.0", keep_alive=False), "END", "CLOSED"]),
    ("http10-keep-alive", b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", True,
     [head(b"GET", b"/", b"1.0", headers=((b"connection", b"Keep-Alive"),)), "END", "CLOSED"]),
    ("http10-keep-alive-in-list", b"GET / HTTP/1.0\r\nConnection: foo, keep-alive\r\n\r\n", True,
     [head(b"GET", b"/", b"1.0", headers=((b"connection", b"foo, keep-alive"),)), "END", "CLOSED"]),
    ("http11-close", b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", True,
     [head(b"GET", b"/", keep_alive=False, headers=(H, (b"connection", b"close"))), "END", "CLOSED"]),
    ("http11-close-in-list", b"GET / HTTP/1.1\r\nHost: x\r\nConnection: TE, Close\r\n\r\n", True,
     [head(b"GET", b"/", keep_alive=False, headers=(H, (b"connection", b"TE, Close"))), "END", "CLOSED"]),
    ("post-content-length", POST, True, [POST_HEAD, b"hello", "END", "CLOSED"]),
    ("post-content-length-zero", b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", True,
     [head(b"POST", b"/p", headers=(H, (b"content-length", b"0"))), "END", "CLOSED"]),
    ("chunked-extensions-trailers", CHUNKED, True, [CHUNKED_HEAD, b"hello world", "END", "CLOSED"]),
    ("pipelined", GET + POST + CHUNKED + GET, True,
     [GET_HEAD, "END", POST_HEAD, b"hello", "END", CHUNKED_HEAD, b"hello world", "END", GET_HEAD, "END", "CLOSED"]),
    ("leading-empty-lines", b"\r\n\r\n" + GET, True, [GET_HEAD, "END", "CLOSED"]),
    ("empty-line-after-body", POST + b"\r\n" + GET, True, [POST_HEAD, b"hello", "END", GET_HEAD, "END", "CLOSED"]),
    ("empty-lines-then-eof", b"\r\n\r\n", True, ["CLOSED"]),
    ("expect-100-with-body", b"PUT /u HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nok",
     True, [head(b"PUT", b"/u", expect=True, body=True,
                 headers=(H, (b"expect", b"100-continue"), (b"content-length", b"2"))), b"ok", "END", "CLOSED"]),
    # Found by the differential fuzzer: h11 takes 100-continue from anywhere in the Expect list (and from a
    # second field), and hands the chunked coding on in lower case; the httptools backend now does the same.
    ("expect-100-in-a-list", b"PUT /u HTTP/1.1\r\nHost: x\r\nExpect: , 100-continue\r\nContent-Length: 2\r\n\r\nok",
     True, [head(b"PUT", b"/u", expect=True, body=True,
                 headers=(H, (b"expect", b", 100-continue"), (b"content-length", b"2"))), b"ok", "END", "CLOSED"]),
    ("expect-100-in-a-second-field",
     b"PUT /u HTTP/1.1\r\nHost: x\r\nExpect: a\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nok", True,
     [head(b"PUT", b"/u", expect=True, body=True, headers=(
         H, (b"expect", b"a"), (b"expect", b"100-continue"), (b"content-length", b"2"))), b"ok", "END", "CLOSED"]),
    ("chunked-coding-lowered", b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: cHunKed\r\n\r\n0\r\n\r\n", True,
     [head(b"POST", b"/c", body=True, headers=(H, (b"transfer-encoding", b"chunked"))), "END", "CLOSED"]),
    ("expect-100-without-body", b"GET /a HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n\r\n", True,
     [head(b"GET", b"/a", headers=(H, (b"expect", b"100-continue"))), "END", "CLOSED"]),
    ("expect-100-on-http10", b"PUT /u HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nok", True,
     [head(b"PUT", b"/u", b"1.0", keep_alive=False, body=True,
           headers=((b"expect", b"100-continue"), (b"content-length", b"2"))), b"ok", "END", "CLOSED"]),
]


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("wire, eof, expected", [row[1:] for row in EVENTS], ids=[row[0] for row in EVENTS])
def test_events(backend, split, wire, eof, expected):
    assert run(backend, SPLITS[split](wire), eof) == expected


def _refused(headers: bytes, request_line: bytes = b"GET / HTTP/1.1") -> bytes:
    return request_line + b"\r\n" + headers + b"\r\n"


ERRORS = [
    # h11 0.16 alone accepts each of these: the seam refuses them for every backend.
    ("cl-and-te", _refused(b"Host: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n", b"POST / HTTP/1.1")
     + b"0\r\n\r\n", BadRequest, 400),
    ("te-on-http10", _refused(b"Transfer-Encoding: chunked\r\n", b"POST / HTTP/1.0") + b"0\r\n\r\n", BadRequest, 400),
    ("obs-fold", _refused(b"Host: x\r\nX-A: 1\r\n 2\r\n"), BadRequest, 400),
    ("obs-fold-tab", _refused(b"Host: x\r\nX-A: 1\r\n\t2\r\n"), BadRequest, 400),
    ("bare-lf-everywhere", b"GET / HTTP/1.1\nHost: x\n\n", BadRequest, 400),
    ("bare-lf-in-field", _refused(b"Host: x\nX-A: 1\r\n"), BadRequest, 400),
    ("bare-cr-in-field", _refused(b"Host: x\rX-A: 1\r\n"), BadRequest, 400),
    ("duplicate-cl", _refused(b"Host: x\r\nContent-Length: 2\r\nContent-Length: 2\r\n", b"POST / HTTP/1.1") + b"ok",
     BadRequest, 400),
    ("cl-list", _refused(b"Host: x\r\nContent-Length: 2, 2\r\n", b"POST / HTTP/1.1") + b"ok", BadRequest, 400),
    ("te-trailing-space", _refused(b"Host: x\r\nTransfer-Encoding: chunked \r\n", b"POST / HTTP/1.1")
     + b"0\r\n\r\n", BadRequest, 400),
    ("http2", _refused(b"Host: x\r\n", b"GET / HTTP/2.0"), VersionNotSupported, 505),
    ("control-byte-in-value", _refused(b"Host: x\r\nX-A: a\x01b\r\n"), BadRequest, 400),
    ("del-in-value", _refused(b"Host: x\r\nX-A: a\x7fb\r\n"), BadRequest, 400),
    ("obs-text-in-target", _refused(b"Host: x\r\n", b"GET /caf\xc3\xa9 HTTP/1.1"), BadRequest, 400),
    ("obs-text-in-method", _refused(b"Host: x\r\n", b"G\xc9T / HTTP/1.1"), BadRequest, 400),
    ("nul-in-target", _refused(b"Host: x\r\n", b"GET /a\x00b HTTP/1.1"), BadRequest, 400),
    # refused by both libraries too; the status must be the same
    ("http12", _refused(b"Host: x\r\n", b"GET / HTTP/1.2"), VersionNotSupported, 505),
    ("http09", b"GET /\r\n\r\n", BadRequest, 400),
    ("double-space", _refused(b"Host: x\r\n", b"GET  / HTTP/1.1"), BadRequest, 400),
    ("lower-case-version", _refused(b"Host: x\r\n", b"GET / http/1.1"), BadRequest, 400),
    ("no-host-on-http11", _refused(b"X-A: 1\r\n"), BadRequest, 400),
    ("two-hosts", _refused(b"Host: x\r\nHost: y\r\n"), BadRequest, 400),
    ("te-gzip-chunked", _refused(b"Host: x\r\nTransfer-Encoding: gzip, chunked\r\n", b"POST / HTTP/1.1")
     + b"0\r\n\r\n", BadRequest, 400),
    ("te-two-lines", _refused(b"Host: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
                              b"POST / HTTP/1.1") + b"0\r\n\r\n", BadRequest, 400),
    ("cl-not-digits", _refused(b"Host: x\r\nContent-Length: +2\r\n", b"POST / HTTP/1.1") + b"ok", BadRequest, 400),
    ("cl-negative", _refused(b"Host: x\r\nContent-Length: -1\r\n", b"POST / HTTP/1.1"), BadRequest, 400),
    ("space-before-colon", _refused(b"Host: x\r\nX-A : 1\r\n"), BadRequest, 400),
    ("bad-chunk-size", _refused(b"Host: x\r\nTransfer-Encoding: chunked\r\n", b"POST / HTTP/1.1") + b"zz\r\n",
     BadRequest, 400),
    ("eof-inside-head", b"GET / HTTP/1.1\r\nHost: x\r\n", BadRequest, 400),
    ("eof-inside-request-line", b"GET / HT", BadRequest, 400),
    ("eof-inside-body", POST[:-2], BadRequest, 400),
    ("eof-inside-chunked-body", CHUNKED[:-20], BadRequest, 400),
    ("eof-inside-second-request", GET + b"GET /b HTTP/1.1\r\n", BadRequest, 400),
    # limits: LIMITS above
    ("uri-too-long", _refused(b"Host: x\r\n", b"GET /" + b"a" * 80 + b" HTTP/1.1"), UriTooLong, 414),
    ("uri-too-long-no-line-end", b"GET /" + b"a" * 80, UriTooLong, 414),
    ("head-too-large", _refused(b"Host: x\r\n" + b"X-A: " + b"a" * 600 + b"\r\n"), HeadersTooLarge, 431),
    ("too-many-fields", _refused(b"Host: x\r\n" + b"X-A: 1\r\n" * 8), HeadersTooLarge, 431),
    ("content-length-over-max-body", _refused(b"Host: x\r\nContent-Length: 65\r\n", b"POST / HTTP/1.1"),
     BodyTooLarge, 413),
    ("chunked-over-max-body", _refused(b"Host: x\r\nTransfer-Encoding: chunked\r\n", b"POST / HTTP/1.1")
     + b"41\r\n" + b"a" * 65 + b"\r\n0\r\n\r\n", BodyTooLarge, 413),
]


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("wire, error, status", [row[1:] for row in ERRORS], ids=[row[0] for row in ERRORS])
def test_refused(backend, split, wire, error, status):
    with pytest.raises(ClientError) as info:
        run(backend, SPLITS[split](wire), eof=True)
    assert type(info.value) is error
    assert info.value.status == status


@pytest.mark.parametrize("backend", BACKENDS)
def test_error_after_a_good_request_keeps_the_good_events(backend):
    parser = make_parser(backend, LIMITS)
    events: list = []
    parser.feed(GET + b"GET / HTTP/2.0\r\n")
    with pytest.raises(VersionNotSupported):
        drain(parser, events)
    assert events == [GET_HEAD, "END"]


def _idle_after(backend: str, reads: list[bytes], finish: bool) -> bool:
    parser = make_parser(backend, LIMITS)
    for data in reads:
        parser.feed(data)
    if finish:
        while parser.next_event() is not END:
            pass
        parser.cycle_done()
    return parser.idle


IDLE = [
    ("fresh", [], False, True),
    ("partial-head", [GET[:10]], False, False),
    ("only-empty-lines", [b"\r\n"], False, True),
    ("head-not-answered", [GET], False, False),
    ("answered", [GET], True, True),
    ("answered-post", [POST], True, True),
    ("answered-chunked", [CHUNKED], True, True),
    ("pipelined-head-buffered", [GET + GET], True, False),
    ("pipelined-partial-buffered", [GET + b"G"], True, False),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reads, finish, idle", [row[1:] for row in IDLE], ids=[row[0] for row in IDLE])
def test_idle_at_cycle_start(backend, reads, finish, idle):
    assert _idle_after(backend, reads, finish) is idle


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("wire", [POST, CHUNKED], ids=["content-length", "chunked"])
def test_body_complete_only_after_the_body(backend, wire):
    """The shell closes instead of reading the next request when a body is left unread (``body_complete``)."""
    parser = make_parser(backend, LIMITS)
    parser.feed(wire)
    assert isinstance(parser.next_event(), RequestHead)
    assert not parser.body_complete()
    while parser.next_event() is not END:
        pass
    assert parser.body_complete()
