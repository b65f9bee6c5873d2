"""The origin-side parser seam (edgeproxy/proxy/origin_parser.py): both backends, no sockets.

Category: protocol (sans-I/O). Every table runs against h11 and httptools and feeds the origin's bytes whole,
byte by byte and in random pieces: the events, the leftover bytes and whether the connection may be reused
must not depend on the backend or on how the bytes arrive.
"""

from __future__ import annotations

import random

import pytest

from edgeproxy.proxy.backends import make_response_parser
from edgeproxy.proxy.origin_parser import RequestError, ResponseError, ResponseHead, ResponseParser
from edgeproxy.proxy.parser import CLOSED, END, NEED_DATA

BACKENDS = ("h11", "httptools")
SPLITS = ("whole", "bytewise", "random")
GET = (b"GET", b"/x", [(b"host", b"origin.test"), (b"via", b"1.1 edgeproxy")])


def pieces(data: bytes, split: str, seed: int = 7) -> list[bytes]:
    if split == "whole":
        return [data]
    if split == "bytewise":
        return [data[i:i + 1] for i in range(len(data))]
    rnd, out, i = random.Random(seed), [], 0
    while i < len(data):
        n = rnd.randint(1, 9)
        out.append(data[i:i + n])
        i += n
    return out


def drive(parser: ResponseParser, response: bytes, split: str = "whole", method: bytes = b"GET",
          eof: bool = False) -> list[object]:
    """Send a request, feed ``response`` (then EOF when ``eof``), and collect the events; body bytes merged."""
    parser.send_head(method, b"/x", [(b"host", b"origin.test")])
    parser.send_end()
    events: list[object] = []
    feeds = [*pieces(response, split), *([b""] if eof else [])]
    for data in feeds:
        parser.receive_data(data)
        while True:
            event = parser.next_event()
            if event is NEED_DATA:
                break
            if type(event) is bytes and events and type(events[-1]) is bytes:
                events[-1] += event
            else:
                events.append(event)
            if event is END or event is CLOSED:
                return events
    return events


def head_of(events: list[object]) -> ResponseHead:
    head = events[0]
    assert isinstance(head, ResponseHead)
    return head


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


# ---- framing ----

FRAMED = [
    pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc", b"GET", b"abc", True, id="content-length"),
    pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", b"GET", None, True, id="empty-body"),
    pytest.param(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
                 b"GET", b"abcde", True, id="chunked"),
    pytest.param(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\nX-Trailer: 1\r\n\r\n",
                 b"GET", b"a", True, id="chunked-trailer"),
    pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", b"HEAD", None, True, id="head-with-length"),
    pytest.param(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\nETag: \"a\"\r\n\r\n", b"GET", None, True,
                 id="304-with-length"),
    pytest.param(b"HTTP/1.1 204 No Content\r\n\r\n", b"GET", None, True, id="204"),
    pytest.param(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
                 b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", b"GET", b"ok", True, id="1xx-consumed"),
    pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok", b"GET", b"ok", False,
                 id="connection-close"),
    pytest.param(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", b"GET", b"ok", False, id="http-1.0"),
    pytest.param(b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok", b"GET", b"ok", True, id="bare-lf-lines"),
]


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize(("response", "method", "body", "reusable"), FRAMED)
def test_framing(backend: str, split: str, response: bytes, method: bytes, body: bytes | None,
                 reusable: bool) -> None:
    parser = make_response_parser(backend)
    events = drive(parser, response, split, method)
    assert events[-1] is END
    assert events[1:-1] == ([body] if body else [])
    assert head_of(events).status >= 200
    assert parser.reusable() is reusable
    assert parser.trailing == b""


@pytest.mark.parametrize("split", SPLITS)
def test_close_delimited_body_ends_at_eof(backend: str, split: str) -> None:
    parser = make_response_parser(backend)
    events = drive(parser, b"HTTP/1.1 200 OK\r\n\r\nuntil the end", split, eof=True)
    assert events[1:] == [b"until the end", END]
    assert not parser.reusable()


def test_chunked_coding_is_handed_on_in_lower_case(backend: str) -> None:
    events = drive(make_response_parser(backend),
                   b"HTTP/1.1 200 OK\r\nTransfer-Encoding: ChunKed\r\n\r\n1\r\na\r\n0\r\n\r\n")
    assert head_of(events).headers == [(b"transfer-encoding", b"chunked")]


def test_head_fields(backend: str) -> None:
    events = drive(make_response_parser(backend),
                   b"HTTP/1.1 404 Not Here\r\nContent-Type: text/plain\r\nX-Pad:  spaced value \t\r\n"
                   b"Content-Length: 0\r\n\r\n")
    assert head_of(events) == ResponseHead(404, b"Not Here", [
        (b"content-type", b"text/plain"), (b"x-pad", b"spaced value"), (b"content-length", b"0")], b"1.1")


# ---- what must be refused ----

BROKEN = [
    pytest.param(b"HTTP/1.1 OK\r\n\r\n", id="garbage-status-line"),
    pytest.param(b"SMTP ready\r\n\r\n", id="not-http"),
    pytest.param(b"HTTP/1.1 200 OK\r\nX: a\x00b\r\nContent-Length: 0\r\n\r\n", id="nul-in-field"),
    pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", id="two-lengths"),
    pytest.param(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nabc", id="unknown-coding"),
    pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", id="negative-length"),
    pytest.param(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n0\r\n\r\n", id="bad-chunk-size"),
    # Found by the differential fuzzer: llhttp takes these, h11 refuses them.
    pytest.param(b"\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", id="empty-line-before-status"),
    pytest.param(b"HTTP/1.1 200 O\x00K\r\nContent-Length: 0\r\n\r\n", id="nul-in-reason"),
]


@pytest.mark.parametrize("split", ("whole", "random"))
@pytest.mark.parametrize("response", BROKEN)
def test_broken_responses_raise(backend: str, split: str, response: bytes) -> None:
    with pytest.raises(ResponseError):
        drive(make_response_parser(backend), response, split)


def test_an_incomplete_head_past_the_limit_raises(backend: str) -> None:
    """h11's bound on an incomplete event (16 KiB), which the httptools backend keeps: a head that never ends
    can't grow without bound."""
    with pytest.raises(ResponseError):
        drive(make_response_parser(backend), b"HTTP/1.1 200 OK\r\nX: " + b"a" * 20000, "random")


def test_length_with_chunked_is_refused_by_httptools_and_framed_by_chunked_in_h11() -> None:
    """RFC 9112 §6.3: Transfer-Encoding overrides Content-Length, and such a message ought to be handled as an
    error. llhttp refuses it (a 502); h11 frames the body by the chunked coding."""
    response = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n\r\n"
    with pytest.raises(ResponseError):
        drive(make_response_parser("httptools"), response)
    assert drive(make_response_parser("h11"), response)[1:] == [b"a", END]


CUT = [
    pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", id="short-content-length"),
    pytest.param(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n", id="no-last-chunk"),
    pytest.param(b"HTTP/1.1 200 OK\r\nContent-Le", id="inside-the-head"),
]


@pytest.mark.parametrize("response", CUT)
def test_a_close_that_cuts_the_response_short_raises(backend: str, response: bytes) -> None:
    with pytest.raises(ResponseError):
        drive(make_response_parser(backend), response, eof=True)


def test_close_before_any_byte_is_closed_or_an_error(backend: str) -> None:
    """Either way OriginConnection makes it OriginClosed: nothing was received (a stale pooled connection)."""
    parser = make_response_parser(backend)
    try:
        assert drive(parser, b"", eof=True) == [CLOSED]
    except ResponseError:
        pass


# ---- bytes past the end, and the next request ----

@pytest.mark.parametrize("extra", [b"junk", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"])
@pytest.mark.parametrize("response", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
])
def test_bytes_past_the_end_are_trailing(backend: str, response: bytes, extra: bytes) -> None:
    parser = make_response_parser(backend)
    events = drive(parser, response + extra)
    assert events[1:] == [b"ok", END]
    assert parser.trailing == extra


def test_bytes_arriving_after_the_end_are_trailing(backend: str) -> None:
    parser = make_response_parser(backend)
    drive(parser, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    parser.receive_data(b"late")
    assert parser.trailing == b"late"


def test_a_connection_takes_the_next_request_after_a_clean_cycle(backend: str) -> None:
    parser = make_response_parser(backend)
    assert parser.idle
    drive(parser, b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na")
    assert not parser.idle and parser.reusable()
    parser.next_cycle()
    assert parser.idle
    events = drive(parser, b"HTTP/1.1 201 Created\r\nContent-Length: 1\r\n\r\nb")
    assert head_of(events).status == 201 and events[1:] == [b"b", END]


def test_not_reusable_until_the_request_went_out_whole(backend: str) -> None:
    parser = make_response_parser(backend)
    parser.send_head(b"POST", b"/up", [(b"host", b"o"), (b"content-length", b"4")])
    parser.send_data(b"ab")
    parser.receive_data(b"HTTP/1.1 413 Too Large\r\nContent-Length: 0\r\n\r\n")
    assert head_of([parser.next_event()]).status == 413
    assert parser.next_event() is END
    assert not parser.reusable()  # two body bytes are still owed: the origin would read them as a request


# ---- our request ----

REQUESTS = [
    pytest.param(GET, [], id="get"),
    pytest.param((b"POST", b"/up?a=1", [(b"host", b"o"), (b"content-length", b"5")]), [b"ab", b"cde"], id="length"),
    pytest.param((b"PUT", b"/up", [(b"host", b"o"), (b"transfer-encoding", b"chunked")]), [b"ab", b"", b"c"],
                 id="chunked"),
]


@pytest.mark.parametrize(("head", "body"), REQUESTS)
def test_both_backends_write_the_same_request(head: tuple[bytes, bytes, list[tuple[bytes, bytes]]],
                                              body: list[bytes]) -> None:
    written = []
    for backend in BACKENDS:
        parser = make_response_parser(backend)
        out = parser.send_head(*head) + b"".join(parser.send_data(c) for c in body) + parser.send_end()
        written.append(out)
    assert written[0] == written[1]


@pytest.mark.parametrize("head", [
    pytest.param((b"GET", b"/x", [(b"host", b"o"), (b"x-bad", b"a\r\nx-injected: 1")]), id="crlf-in-value"),
    pytest.param((b"GET", b"/x", [(b"host", b"o"), (b"x-bad", b"a\x00b")]), id="nul-in-value"),
    pytest.param((b"GET", b"/x y", [(b"host", b"o")]), id="space-in-target"),
    pytest.param((b"POST", b"/x", [(b"host", b"o"), (b"content-length", b"5x")]), id="bad-content-length"),
])
def test_a_request_that_cannot_be_written_is_refused(backend: str,
                                                     head: tuple[bytes, bytes, list[tuple[bytes, bytes]]]) -> None:
    with pytest.raises(RequestError):
        make_response_parser(backend).send_head(*head)


def test_a_body_longer_than_its_content_length_is_refused(backend: str) -> None:
    parser = make_response_parser(backend)
    parser.send_head(b"POST", b"/", [(b"host", b"o"), (b"content-length", b"2")])
    with pytest.raises(RequestError):
        parser.send_data(b"abc")
