"""Fuzz targets over the untrusted-input paths: each takes arbitrary bytes and may raise only its domain's error.

Rules kept here:
- A target is a plain function ``bytes -> None``; a crash is any exception outside the one its parser promises
  (``ClientError`` for the request path, ``ConfigError`` for config, ``ProtocolError`` for the control channel,
  nothing at all for Cache-Control), or a broken invariant asserted here. The same targets run under atheris
  (``tests/fuzz/run.py``, ``scripts/fuzz``) and, a few thousand seeded inputs each, in the normal suite
  (``tests/unit/test_fuzz_smoke.py``).
- Structured inputs (how a request is split across reads, a TOML-ish config tree) are drawn from the bytes with
  ``Draw``, so the fuzzer's mutations stay meaningful and every input replays exactly.
- No sockets, no clock, no threads: the pure core and the parser seam only.
- httptools is required (the test extra installs it): both parser backends always run, none drops out quietly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import h11
import httptools

from edgeproxy.config import CACHE_KEYS, ORIGIN_KEYS, SERVER_KEYS, SITE_KEYS, ConfigError, config_from_dict
from edgeproxy.control.protocol import ProtocolError, parse_request
from edgeproxy.errors import ClientError
from edgeproxy.http import cachecontrol, headscan
from edgeproxy.proxy.backends import make_response_parser
from edgeproxy.proxy.origin_parser import ResponseError, ResponseHead
from edgeproxy.proxy.parser import CLOSED, END, NEED_DATA, H11Parser, Limits, RequestHead, RequestParser
from edgeproxy.proxy.parser_httptools import HttptoolsParser

SMALL = Limits(max_uri=256, max_header_bytes=1024, max_headers=16, max_body=4096)
MAX_EVENTS = 200  # per read: a parser that keeps producing events without input is a bug


class Draw:
    """Structured choices read from fuzz bytes; once the bytes run out every choice is the first option."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def byte(self) -> int:
        if self.pos >= len(self.data):
            return 0
        self.pos += 1
        return self.data[self.pos - 1]

    def pick(self, options: list[Any] | tuple[Any, ...]) -> Any:
        return options[self.byte() % len(options)]

    def blob(self, limit: int = 24) -> bytes:
        n = self.byte() % (limit + 1)
        out, self.pos = self.data[self.pos:self.pos + n], self.pos + n
        return out

    def rest(self) -> bytes:
        out, self.pos = self.data[self.pos:], len(self.data)
        return out


# ---- the request path ----

BACKENDS: tuple[Callable[[Limits], RequestParser], ...] = (H11Parser, HttptoolsParser)
ORIGIN_BACKENDS = ("h11", "httptools")


def _drive(parser: RequestParser, reads: list[bytes]) -> list[object]:
    """Feed the reads as a connection would, taking events and finishing cycles the way the shell does; the events
    (body bytes joined), ending with the refusal's status when the parser refused."""
    events: list[object] = []
    try:
        for data in reads:
            parser.feed(data)
            for _ in range(MAX_EVENTS):
                event = parser.next_event()
                if event is NEED_DATA or event is CLOSED:
                    break
                if event is END:
                    parser.cycle_done()
                    events.append(END)
                elif type(event) is bytes and events and type(events[-1]) is bytes:
                    events[-1] += event
                elif isinstance(event, RequestHead | bytes):
                    events.append(event)
                else:
                    raise AssertionError(f"unexpected event {event!r}")
            else:
                raise AssertionError("no NEED_DATA after MAX_EVENTS events")
    except ClientError as e:
        events.append(e.status)
    return events


def request_path(data: bytes) -> None:
    """Both parser backends over arbitrary bytes split into reads (the first byte picks the split), then EOF: only
    ClientError may escape, and httptools reads every request h11 reads the same way, or refuses it (the seam's
    promise: llhttp may be stricter, e.g. it knows a fixed list of methods, never more lenient)."""
    draw = Draw(data[:1])
    step = 1 + draw.byte() % 64 if data[:1] and data[0] >= 128 else len(data) or 1
    body = data[1:]
    reads = [body[i:i + step] for i in range(0, len(body), step)] + [b""]
    seen = [_drive(backend(SMALL), reads) for backend in BACKENDS]
    reference = seen[0]
    for other in seen[1:]:
        for mine, theirs in zip(reference, other, strict=False):  # lengths differ where one refused
            if mine != theirs:
                assert isinstance(theirs, int), (reference, other)  # the stricter backend refused here
                break
        else:
            assert len(other) == len(reference) or isinstance(other[-1], int), (reference, other)


# ---- the origin side ----

_ORIGIN_METHODS = (b"GET", b"HEAD")


def _origin_events(backend: str, method: bytes, reads: list[bytes]) -> list[object] | None:
    """Events of one response fed in ``reads`` (then EOF), body bytes joined; None when the backend refused it."""
    parser = make_response_parser(backend)
    parser.send_head(method, b"/", [(b"host", b"origin.test")])
    parser.send_end()
    events: list[object] = []
    try:
        for data in reads:
            parser.receive_data(data)
            for _ in range(MAX_EVENTS):
                event = parser.next_event()
                if event is NEED_DATA:
                    break
                if type(event) is bytes and events and type(events[-1]) is bytes:
                    events[-1] += event
                elif event is END or event is CLOSED:
                    return [*events, event]
                elif isinstance(event, ResponseHead | bytes):
                    events.append(event)
                else:
                    raise AssertionError(f"unexpected event {event!r}")
            else:
                raise AssertionError("no NEED_DATA after MAX_EVENTS events")
    except ResponseError:
        return None
    return events


def origin_response(data: bytes) -> None:
    """Both origin-side backends over arbitrary response bytes split into reads, then EOF: only ResponseError may
    escape, events come in order (one head, body bytes, END), and a response the httptools backend takes whole is
    read the same by h11 (httptools refuses more; it must never read a message differently)."""
    draw = Draw(data[:1])
    method = _ORIGIN_METHODS[draw.byte() & 1]
    step = 1 + draw.byte() % 64 if data[:1] and data[0] >= 128 else len(data) or 1
    body = data[1:]
    reads = [body[i:i + step] for i in range(0, len(body), step)] + [b""]
    results = {backend: _origin_events(backend, method, reads) for backend in ORIGIN_BACKENDS}
    for events in results.values():
        if events and events[-1] is END:
            assert isinstance(events[0], ResponseHead) and all(type(e) is bytes for e in events[1:-1]), events
    fast = results.get("httptools")
    if fast and fast[-1] is END:
        assert results["h11"] == fast, (results["h11"], fast)


# ---- Cache-Control ----

def cache_control(data: bytes) -> None:
    """The directive parser never raises, and what it returns is well-typed."""
    headers = [(b"cache-control", line) for line in data.split(b"\n")[:4]]
    directives = cachecontrol.parse(headers)
    for name, value in directives.items():
        assert isinstance(name, str) and (value is None or isinstance(value, str)), (name, value)
        seconds = cachecontrol.seconds(directives, name)
        assert seconds is None or 0 <= seconds <= cachecontrol.DELTA_MAX, seconds
        cachecontrol.field_names(value)
    targeted = [(b"cdn-cache-control", data), (b"surrogate-control", data), *headers]
    effective, _ = cachecontrol.effective(targeted)
    assert all(isinstance(k, str) for k in effective)


# ---- the fast lane's head scanner ----

BIG = Limits(max_uri=1 << 20, max_header_bytes=1 << 20, max_headers=1 << 20, max_body=1 << 20)
# Fields a lane head's reading is checked on, with the four the scanner reads itself.
_READ = (b"host", b"origin", b"referer", b"user-agent")


def _first(fields: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    return next((v for k, v in fields if k == name), None)


def _h11_read(data: bytes) -> tuple[bytes, bytes, bytes, list[tuple[bytes, bytes]]] | None:
    """h11's reading of the head at the start of ``data``: (method, target, version, fields), or None if refused."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=len(data) + 1)
    conn.receive_data(data)
    try:
        event = conn.next_event()
    except h11.RemoteProtocolError:
        return None
    if type(event) is not h11.Request:
        return None
    return event.method, event.target, event.http_version, list(event.headers)


class _LlhttpHead:
    __slots__ = ("url", "fields", "complete")

    def __init__(self) -> None:
        self.url, self.fields, self.complete = b"", [], False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.fields.append((name.lower(), value.strip(b" \t")))

    def on_headers_complete(self) -> None:
        self.complete = True


def _llhttp_read(data: bytes) -> tuple[bytes, bytes, bytes, list[tuple[bytes, bytes]]] | None:
    """llhttp's reading (httptools, used directly), or None if refused."""
    head = _LlhttpHead()
    parser = httptools.HttpRequestParser(head)
    try:
        parser.feed_data(data)
    except httptools.HttpParserError:
        return None
    if not head.complete:
        return None
    return parser.get_method(), head.url, parser.get_http_version().encode(), head.fields


def _check_lane_head(data: bytes, scanned: headscan.Scan) -> None:
    """A head the scanner accepted is read the same way by h11, llhttp and both of the proxy's parser seams."""
    method, target, version, host, keep, origin, referer, agent, nfields = scanned
    readings = [_h11_read(data), _llhttp_read(data)]
    for reading in readings:
        assert reading is not None, ("refused by a parser", data)
        assert reading[:3] == (method, target, version), (reading, scanned)
        fields = reading[3]
        assert len(fields) == nfields and [v for k, v in fields if k == b"host"] == [host], (fields, scanned)
        assert [v for k, v in fields if k == b"origin"] in ([], [origin]), (fields, scanned)
        assert (_first(fields, b"referer"), _first(fields, b"user-agent")) == (referer, agent), (fields, scanned)
        names = frozenset(k for k, _ in fields)
        assert headscan.fields_named_py(data, names) == fields, (fields, data)
    for backend in BACKENDS:
        events = _drive(backend(BIG), [data, b""])
        assert len(events) == 2 and events[1] is END and isinstance(events[0], RequestHead), (events, data)
        head = events[0]
        assert (head.method, head.target, head.http_version, head.keep_alive, len(head.headers)) == (
            method, target, version, keep, nfields), (head, scanned)


def headscan_target(data: bytes) -> None:
    """The compiled scanner and its Python twin agree on any bytes (``fields_named`` too), and a head they accept
    is one h11, llhttp and the proxy's parser seams all accept and read the same way (method, target, version,
    Host, field count, keep-alive, the fields the scanner returns)."""
    scanned = headscan.scan_py(data)
    if headscan.scan_c is not None and headscan.fields_named_c is not None:
        assert headscan.scan_c(data) == scanned, (data, scanned)
        names = frozenset(_READ + (b"connection", b"x-request-id"))
        assert headscan.fields_named_c(data, names) == headscan.fields_named_py(data, names), data
    if scanned is not None:
        _check_lane_head(data, scanned)


# ---- config ----

_SECTIONS: dict[str, list[str]] = {"server": sorted(SERVER_KEYS), "origin": sorted(ORIGIN_KEYS),
                                   "cache": sorted(CACHE_KEYS), "log": ["access", "format", "level"],
                                   "metrics": ["listen"], "bogus": ["x"]}
_SCALARS: list[Any] = [0, 1, -1, 7, 2**31, 2**70, 0.5, -0.0, float("inf"), float("nan"), True, False, "", "-",
                       "10s", "1.5m", "0s", "64MiB", "1KiB", "3 GB", "127.0.0.1:8080", "[::1]:80", ":80",
                       "host:99999", "http://127.0.0.1:9000", "https://x", "*", "*.example.com", "auto", "h11",
                       "httptools", "json", "edge", "origin", "sort", "x-forwarded-host", "Bad Name", "\x00"]
_CORS_KEYS = ["mode", "allow_origins", "allow_methods", "allow_headers", "expose_headers", "allow_credentials",
              "max_age", "vary", "bogus"]


def _value(draw: Draw, depth: int = 0) -> Any:
    kind = draw.byte() % 8
    if kind == 6 and depth < 2:
        return [_value(draw, depth + 1) for _ in range(draw.byte() % 4)]
    if kind == 7:
        return draw.blob().decode("latin-1")
    return draw.pick(_SCALARS)


def _table(draw: Draw, keys: list[str]) -> dict[str, Any]:
    return {draw.pick(keys): _value(draw) for _ in range(draw.byte() % 5)}


def _site(draw: Draw) -> Any:
    if draw.byte() % 16 == 0:
        return _value(draw)  # not a table at all
    site = _table(draw, [*sorted(SITE_KEYS), "bogus"])
    if draw.byte() % 3 == 0:
        site["cors"] = _table(draw, _CORS_KEYS)
    return site


def config(data: bytes) -> None:
    """``config_from_dict`` over TOML-shaped trees drawn from the bytes raises only ``ConfigError``."""
    draw = Draw(data)
    tree: dict[str, Any] = {}
    for _ in range(draw.byte() % 5):
        name = draw.pick(list(_SECTIONS))
        tree[name] = _table(draw, _SECTIONS[name]) if draw.byte() % 16 else _value(draw)
    if draw.byte() % 4:
        tree["site"] = [_site(draw) for _ in range(draw.byte() % 3)]
    try:
        config_from_dict(tree, "<fuzz>")
    except ConfigError:
        pass


# ---- control protocol ----

_CONTROL_PREFIXES = [b"", b'{"v":1,"cmd":"purge","kind":"', b'{"v":1,"cmd":"', b'{"v":1,', b'{"v":1,"cmd":"purge",']


def control(data: bytes) -> None:
    """``parse_request`` over one line raises only ``ProtocolError``; the first byte may prepend a valid start."""
    draw = Draw(data[:1])
    try:
        parse_request(draw.pick(_CONTROL_PREFIXES) + data[1:], max_line=4096)
    except ProtocolError:
        pass


TARGETS: dict[str, Callable[[bytes], None]] = {
    "request_path": request_path,
    "origin_response": origin_response,
    "cache_control": cache_control,
    "config": config,
    "control": control,
    "headscan": headscan_target,
}

# Starting points: valid inputs the fuzzers mutate (and the smoke test perturbs).
SEEDS: dict[str, list[bytes]] = {
    "request_path": [
        b"\x00GET / HTTP/1.1\r\nhost: a\r\n\r\nGET /2 HTTP/1.1\r\nhost: a\r\n\r\n",
        b"\x85POST /p HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\nexpect: 100-continue\r\n\r\nhello",
        b"\x90POST /p HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n0\r\nt: 1\r\n\r\n",
        b"\x00GET http://a/b?c HTTP/1.0\r\nconnection: keep-alive\r\n\r\n",
    ],
    "origin_response": [
        b"\x00HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncache-control: max-age=60\r\n\r\nhello",
        b"\x85HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n0\r\nt: 1\r\n\r\n",
        b"\x01HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n",
        b"\x90HTTP/1.1 100 Continue\r\n\r\nHTTP/1.0 304 Not Modified\r\netag: \"a\"\r\n\r\n",
        b"\x00HTTP/1.1 200 OK\r\n\r\nclose-delimited",
    ],
    "cache_control": [b'public, max-age=60, s-maxage="120", no-cache="set-cookie, x-a"\nprivate',
                      b"max-age=10, edgeproxy;max-age=5, no-store;edgeproxy, stale-while-revalidate=30"],
    "config": [bytes(range(64)), b"\x04\x00\x03\x05\x07\x08\x09\x01\x02\x03\x04\x05\x06\x07" * 4],
    "headscan": [
        b"GET /bytes/1024?o=3 HTTP/1.1\r\nHost: a.test\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:125.0)\r\n"
        b"Accept: */*\r\nAccept-Language: en-US,en;q=0.9\r\nAccept-Encoding: gzip, deflate, br\r\n"
        b"Cookie: session=0123456789abcdef; consent=1\r\nReferer: https://www.example.com/\r\n"
        b"X-Request-Id: 00000000deadbeef\r\n\r\n",
        b"HEAD /a HTTP/1.0\r\nhost: [::1]:8080\r\nconnection: Keep-Alive\r\norigin: https://b.test\r\nx-e:\r\n\r\n",
        b"GET / HTTP/1.1\r\nHOST: a\r\nConnection: close\r\nuser-agent: a\r\nUser-Agent: b\r\nx:\t v \t\r\n\r\n",
    ],
    "control": [b'\x00{"v":1,"cmd":"purge","kind":"url","url":"http://a/b","soft":true}',
                b'\x00{"v":1,"cmd":"purge","kind":"tag","tags":["a","b"]}',
                b'\x00{"v":1,"cmd":"purge","kind":"regex","pattern":"^/a(b"}', b'\x02stats"}'],
}
