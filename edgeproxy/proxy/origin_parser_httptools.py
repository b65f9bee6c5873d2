"""The fast backend of the origin-side seam: llhttp (httptools) parses response heads; bodies are framed here.

Rules kept here:
- Same events and at least the strictness of the h11 backend (origin_parser.py). Each response head is found
  here (an incomplete one may grow to h11's limit, ``MAX_HEAD``) and fed alone to a fresh ``HttpResponseParser``,
  so llhttp never reads a byte of a body: a HEAD response's Content-Length can't make it wait for a body that
  never comes, and the end of the message, hence any byte past it, is known here exactly.
- Refused (``ResponseError``, a 502 upstream), beyond what llhttp refuses itself (NUL and other controls in a
  field, obs-fold, Content-Length with Transfer-Encoding, repeated Content-Length; h11 takes the last two,
  framing by the chunked coding or by the one value): versions other than 1.0 and 1.1, a Transfer-Encoding other
  than exactly ``chunked`` (as h11), a 101 we never asked for. Lines may end in a bare LF, as h11 accepts
  (``lenient_optional_cr_before_lf``).
- Bodies: Content-Length is counted here; chunked goes through h11's chunked reader (chunked.py, shared with the
  request side's parser_httptools), whose ``rest`` is what follows the last chunk;
  close-delimited ends at EOF and leaves the connection unusable.
- Requests are written here: method, target and fields come from the client side's parser, which refused
  controls, bare CR/LF and non-token names, and from our own code; one scan over the finished head checks that
  again (~0.2 µs, where building an ``h11.Request`` validates each field with a regex, ~19 µs per miss).
"""

from __future__ import annotations

import re

import httptools

from edgeproxy.http.headers import Headers, has_token
from edgeproxy.proxy.chunked import ChunkedError, ChunkedReader
from edgeproxy.proxy.origin_parser import OriginEvent, RequestError, ResponseError, ResponseHead
from edgeproxy.proxy.parser import CLOSED, END, NEED_DATA

MAX_HEAD = 16 * 1024  # h11's default max_incomplete_event_size: the h11 backend's limit for a response head
_HEAD_END = re.compile(rb"\n\r?\n")
# Controls other than HTAB, CR, LF, and DEL: none may reach the origin inside a field, the target or the method.
_BAD_BYTE = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_NO_BODY_STATUS = (204, 304)
# Where a cycle stands: no request yet, waiting for the head, reading a body, END not yet handed out, done.
_IDLE, _HEAD, _LENGTH, _CHUNKED, _UNTIL_CLOSE, _END_DUE, _DONE = range(7)


class _Collector:
    """httptools callbacks for one response head."""

    __slots__ = ("reason", "headers", "complete")

    def __init__(self) -> None:
        self.reason = b""
        self.headers: Headers = []
        self.complete = False

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value.strip(b" \t")))

    def on_headers_complete(self) -> None:
        self.complete = True


class HttptoolsResponseParser:
    __slots__ = ("state", "method", "buf", "eof", "remaining", "chunked", "out_chunked", "out_left", "sent",
                 "keep_alive", "trailing")

    def __init__(self) -> None:
        self.trailing = b""
        self._reset()

    def _reset(self) -> None:
        self.state = _IDLE
        self.method = b""
        self.buf = b""
        self.eof = False
        self.remaining = 0
        self.chunked: ChunkedReader | None = None
        self.out_chunked = False  # our request body is chunked
        self.out_left = 0  # request body bytes still due under its Content-Length
        self.sent = False  # our request went out whole (the origin may answer before that, e.g. a 413)
        self.keep_alive = True
        self.trailing = b""

    # ---- our request ----
    def send_head(self, method: bytes, target: bytes, headers: Headers) -> bytes:
        if self.state != _IDLE:
            raise RequestError("a request is already in flight on this connection")
        lines = [b"%s: %s\r\n" % field for field in headers]
        head = b"%s %s HTTP/1.1\r\n%s\r\n" % (method, target, b"".join(lines))
        # Exactly one CRLF per line and none elsewhere, no other control byte, no space in method or target.
        if (head.count(b"\n") != len(lines) + 2 or head.count(b"\r") != len(lines) + 2
                or _BAD_BYTE.search(head) is not None or b" " in method or b" " in target or not target):
            raise RequestError("request head holds a control byte or a malformed line")
        self.method = method
        self.out_chunked = has_token(headers, b"transfer-encoding", b"chunked")
        length = next((v for k, v in headers if k == b"content-length"), None)
        if length is not None and not length.isdigit():
            raise RequestError(f"invalid Content-Length {length!r}")
        self.out_left = int(length) if length is not None and not self.out_chunked else 0
        if has_token(headers, b"connection", b"close"):
            self.keep_alive = False
        self.state = _HEAD
        return head

    def send_data(self, chunk: bytes) -> bytes:
        if not chunk:
            return b""
        if self.out_chunked:
            return b"%x\r\n%s\r\n" % (len(chunk), chunk)
        if len(chunk) > self.out_left:
            raise RequestError("too much data for declared Content-Length")
        self.out_left -= len(chunk)
        return chunk

    def send_end(self) -> bytes:
        if self.out_left:
            raise RequestError("too little data for declared Content-Length")
        self.sent = True
        return b"0\r\n\r\n" if self.out_chunked else b""

    # ---- the origin's response ----
    def receive_data(self, data: bytes) -> None:
        if not data:
            self.eof = True
            if self.chunked is not None:
                self.chunked.feed(b"")
        elif self.state == _CHUNKED:
            assert self.chunked is not None
            self.chunked.feed(data)
        elif self.state == _DONE:
            self.trailing += data
        else:
            self.buf += data

    def next_event(self) -> OriginEvent:
        state = self.state
        if state == _LENGTH:
            return self._length_body()
        if state == _CHUNKED:
            return self._chunked_body()
        if state == _HEAD:
            return self._head()
        if state == _UNTIL_CLOSE:
            return self._close_delimited()
        if state == _END_DUE:
            self._done(self.buf)
            return END
        if state == _IDLE and self.buf:
            raise ResponseError("data from the origin before any request")
        return CLOSED if self.eof and state == _IDLE else NEED_DATA

    def _head(self) -> OriginEvent:
        while True:  # 1xx heads are consumed here, as the h11 backend does
            buf = self.buf
            m = _HEAD_END.search(buf)
            if m is None:
                if len(buf) > MAX_HEAD:
                    raise ResponseError("response head too long")
                if self.eof:
                    if buf:
                        raise ResponseError("connection closed inside the response head")
                    return CLOSED
                return NEED_DATA
            end = m.end()
            head, self.buf = self._parse_head(buf[:end]), buf[end:]
            if head.status >= 200:
                break
            if head.status == 101:
                raise ResponseError("101 Switching Protocols to a request that asked for no upgrade")
        self._frame(head)
        return head

    def _parse_head(self, data: bytes) -> ResponseHead:
        if not data.startswith(b"HTTP/"):  # llhttp skips empty lines before a message; h11 (and we) refuse them
            raise ResponseError("response does not start with a status line")
        if _BAD_BYTE.search(data) is not None:  # llhttp lets some through (a NUL in the reason phrase); h11 doesn't
            raise ResponseError("control byte in the response head")
        collector = _Collector()
        parser = httptools.HttpResponseParser(collector)
        parser.set_dangerous_leniencies(lenient_optional_cr_before_lf=True)
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass  # judged below by the status
        except httptools.HttpParserError as e:
            raise ResponseError(f"malformed response head: {e}") from None
        if not collector.complete:
            raise ResponseError("malformed response head")
        version = parser.get_http_version().encode()
        if version not in (b"1.1", b"1.0"):
            raise ResponseError(f"unsupported HTTP version {version.decode()}")
        return ResponseHead(parser.get_status_code(), collector.reason, collector.headers, version)

    def _frame(self, head: ResponseHead) -> None:
        """RFC 9112 §6.3 framing of the response body; sets the state that reads it."""
        headers = head.headers
        if head.http_version == b"1.0" or has_token(headers, b"connection", b"close"):
            self.keep_alive = False  # as h11: no HTTP/1.0 keep-alive
        te = [v for k, v in headers if k == b"transfer-encoding"]
        if te and (len(te) != 1 or te[0].lower() != b"chunked"):
            raise ResponseError("only Transfer-Encoding: chunked is supported")
        if te:  # as h11 hands it on: the coding in lower case
            head.headers = [(k, b"chunked" if k == b"transfer-encoding" else v) for k, v in headers]
        if self.method == b"HEAD" or head.status in _NO_BODY_STATUS or (
                self.method == b"CONNECT" and 200 <= head.status < 300):
            self.state = _END_DUE
        elif te:
            self.state = _CHUNKED
            self.chunked = ChunkedReader(self.buf, self.eof)
            self.buf = b""
        else:
            length = next((v for k, v in headers if k == b"content-length"), None)
            if length is None:
                self.state = _UNTIL_CLOSE
                self.keep_alive = False
            elif not length.isdigit():
                raise ResponseError("invalid Content-Length")
            else:
                self.remaining = int(length)
                self.state = _LENGTH if self.remaining else _END_DUE

    def _length_body(self) -> OriginEvent:
        buf = self.buf
        if not buf:
            if self.eof:
                raise ResponseError("peer closed connection without sending complete message body")
            return NEED_DATA
        if len(buf) < self.remaining:
            self.buf = b""
            self.remaining -= len(buf)
            return buf
        chunk, rest = buf[: self.remaining], buf[self.remaining:]
        self.remaining = 0
        self.buf = rest
        self.state = _END_DUE
        return chunk

    def _chunked_body(self) -> OriginEvent:
        reader = self.chunked
        assert reader is not None
        try:
            event = reader.next_event()
        except ChunkedError as e:
            raise ResponseError(str(e)) from None
        if event is END:
            self.chunked = None
            self._done(reader.rest[0])
        elif event is NEED_DATA and self.eof:
            raise ResponseError("peer closed connection without sending complete message body")
        return event

    def _close_delimited(self) -> OriginEvent:
        buf = self.buf
        if buf:
            self.buf = b""
            return buf
        if self.eof:
            self._done(b"")
            return END
        return NEED_DATA

    def _done(self, rest: bytes) -> None:
        self.state = _DONE
        self.trailing = rest
        self.buf = b""

    # ---- the connection ----
    @property
    def idle(self) -> bool:
        return self.state == _IDLE

    def reusable(self) -> bool:
        return self.state == _DONE and self.sent and self.keep_alive and not self.eof

    def next_cycle(self) -> None:
        if not self.reusable():
            raise RuntimeError("the connection can't take another request")
        self._reset()
