"""The fast backend of the parser seam: httptools (llhttp) parses request heads; bodies are framed here.

Rules kept here:
- Same contract and same strictness as the h11 backend: every head goes through ``HeadGatherer`` and
  ``check_fields`` first (parser.py), so whatever llhttp would tolerate is refused before it is parsed.
- httptools only parses heads: an ``HttpRequestParser`` is fed exactly the head bytes, so no byte of a body or of a
  pipelined request is ever interpreted by llhttp. A parser is reused for the next head only when its head parsed
  cleanly, has no body and llhttp keeps it alive (llhttp is then back at the start of a message); anything else
  (a body, Upgrade/CONNECT, an error, close) gets a fresh one (~1.3 µs measured, parse included).
- Bodies: a Content-Length body is sliced here (counting bytes is all its framing needs); a chunked body is handed
  to h11's chunked reader (chunked.py), whose ``rest`` is what follows it. Chunked
  request bodies are rare; correctness there matters more than speed.
- Events and errors are exactly those of the h11 backend (``RequestHead``, ``bytes``, ``END``, ``NEED_DATA``,
  ``CLOSED``; ``ClientError`` subclasses).
Available with ``pip install edgeproxy[fast]``.
"""

from __future__ import annotations

import httptools

from edgeproxy.errors import BadRequest, BodyTooLarge
from edgeproxy.http.headers import Headers
from edgeproxy.proxy.chunked import ChunkedError, ChunkedReader
from edgeproxy.proxy.parser import (
    CLOSED,
    END,
    NEED_DATA,
    Event,
    HeadGatherer,
    Limits,
    RequestHead,
    check_fields,
    keep_alive,
)

# States of one request cycle.
_HEAD, _LENGTH, _CHUNKED, _DONE = 0, 1, 2, 3


class _Head:
    """httptools callbacks collecting one head."""

    __slots__ = ("url", "headers", "complete")

    def __init__(self) -> None:
        self.url = b""
        self.headers: Headers = []
        self.complete = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value.strip(b" \t")))

    def on_headers_complete(self) -> None:
        self.complete = True


class HttptoolsParser:
    __slots__ = ("limits", "gather", "buf", "state", "remaining", "chunked", "closed", "received", "pending", "http",
                 "collector")

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.gather = HeadGatherer(limits)
        self.buf = b""  # bytes after the current head not yet handed out (Content-Length bodies, what follows)
        self.state = _HEAD
        self.remaining = 0
        self.chunked: ChunkedReader | None = None
        self.closed = False
        self.received = 0
        self.pending: RequestHead | None = None
        self.http: httptools.HttpRequestParser | None = None  # the last head's parser when it can take the next
        self.collector = _Head()

    def feed(self, data: bytes) -> None:
        if not data:
            self.closed = True
            if self.chunked is not None:
                self.chunked.feed(b"")
            return
        state = self.state
        if state == _HEAD:
            complete = self.gather.feed(data)
            if complete is not None:
                self._parse_head(complete, self.gather.end)
        elif state == _CHUNKED:
            assert self.chunked is not None
            self.chunked.feed(data)
        else:
            self.buf += data

    def _parse_head(self, data: bytes, end: int) -> None:
        """Parse the head that ends at ``end`` in ``data`` (the gatherer found it: no second search)."""
        parser = self.http
        if parser is None:
            collector = self.collector = _Head()
            parser = httptools.HttpRequestParser(collector)
        else:
            collector = self.collector
            collector.url, collector.headers, collector.complete = b"", [], False
        self.http = None  # reused only once this head is known to have left llhttp at the start of a message
        try:
            parser.feed_data(data if end == len(data) else data[:end])
        except httptools.HttpParserUpgrade:
            pass  # Upgrade/CONNECT heads parse fine; the exchange decides what to do with them
        except httptools.HttpParserError as e:
            raise BadRequest(f"malformed request: {e}") from None
        else:
            # A bodiless message llhttp itself keeps alive is complete in llhttp: it waits for the next request,
            # so the next head needs no new parser (~3% of a parsed hit). Anything else gets a fresh one.
            if parser.should_keep_alive():
                self.http = parser
        if not collector.complete:
            raise BadRequest("incomplete request head")
        # The version as the gatherer checked it ("HTTP/1.0" or "HTTP/1.1" ending the request line), llhttp agreeing:
        # a slice where get_http_version() formats a str (~2.5% of a parsed hit).
        eol = data.find(b"\r\n")
        version = data[eol - 3:eol]
        headers = collector.headers
        chunked, length, fields = check_fields(headers, version, self.limits)
        rest = data[end:]
        self.received = 0
        if chunked:
            self.state = _CHUNKED
            self.chunked = ChunkedReader(rest)
        elif length:
            self.state, self.remaining, self.buf = _LENGTH, length, rest
        else:
            self.state, self.buf = _DONE, rest
            self.remaining = -1  # END not yet handed out
        has_body = chunked or bool(length)
        if has_body:
            self.http = None  # llhttp now expects the body, which it is never fed
        if chunked:  # as h11 hands it on: the coding in lower case
            headers = [(k, b"chunked" if k == b"transfer-encoding" else v) for k, v in headers]
            fields[b"transfer-encoding"] = b"chunked"
        # Expect only matters with a body: most requests (bodiless GETs) skip the scan of their fields. The value
        # is read as h11 reads it: 100-continue among the members of the comma list.
        expect = has_body and version == b"1.1" and b"100-continue" in [
            p.strip().lower() for k, v in headers if k == b"expect" for p in v.split(b",")]
        # Positional: keywords cost a measurable share of a parsed hit. Order: method, target, headers,
        # http_version, keep_alive, expect_continue, has_body, fields.
        self.pending = RequestHead(parser.get_method(), collector.url, headers, version, keep_alive(headers, version),
                                   expect, has_body, fields)

    def next_event(self) -> Event:
        head = self.pending
        if head is not None:
            self.pending = None
            return head
        state = self.state
        if state == _LENGTH:
            return self._length_body()
        if state == _CHUNKED:
            return self._chunked_body()
        if state == _DONE:
            if self.remaining == -1:
                self.remaining = 0
                return END
            return NEED_DATA
        if self.closed:
            if self.gather.buf:
                raise BadRequest("connection closed inside a request head")
            return CLOSED
        return NEED_DATA

    def _length_body(self) -> Event:
        buf = self.buf
        if not buf:
            if self.closed:
                raise BadRequest("connection closed inside the request body")
            return NEED_DATA
        take = min(self.remaining, len(buf))
        chunk, self.buf = buf[:take], buf[take:]
        self.remaining -= take
        if self.remaining == 0:
            self.state, self.remaining = _DONE, -1
        return chunk

    def _chunked_body(self) -> Event:
        reader = self.chunked
        assert reader is not None
        try:
            event = reader.next_event()
        except ChunkedError as e:
            raise BadRequest(str(e)) from None
        if type(event) is bytes:
            self.received += len(event)
            if self.received > self.limits.max_body:
                raise BodyTooLarge()
            return event
        if event is END:
            self.buf, closed = reader.rest
            self.closed = self.closed or closed
            self.chunked = None
            self.state, self.remaining = _DONE, 0
            return END
        if self.closed:
            raise BadRequest("connection closed inside the request body")
        return NEED_DATA

    def cycle_done(self) -> None:
        """The response is written: the next head starts with what is already buffered."""
        leftover = self.buf
        if self.chunked is not None:  # the body was never read to its end: the connection will close
            leftover = b""
        self.buf, self.state, self.remaining, self.chunked = b"", _HEAD, 0, None
        self.gather.buf = b""  # a fresh gatherer, without allocating one per request
        if leftover:
            self.feed(leftover)

    def body_complete(self) -> bool:
        return self.state in (_HEAD, _DONE)

    @property
    def idle(self) -> bool:
        """At the start of a request cycle with nothing buffered."""
        return self.state == _HEAD and not self.gather.buf and self.pending is None
