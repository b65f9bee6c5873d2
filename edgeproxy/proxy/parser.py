"""The client-side HTTP/1.1 parser seam: bytes in, request events out, one backend per parser library.

Rules kept here:
- Every request head is gathered and checked here *before* the backend sees it, whatever the backend: an absolute
  size bound (431 whether the head arrives in one read or many), request-line length (414), no bare CR or LF, no
  obs-fold, one Host, no Content-Length together with Transfer-Encoding, Transfer-Encoding only as exactly
  ``chunked`` and never on HTTP/1.0, one valid Content-Length, HTTP/1.0 or 1.1 only (505). h11 0.16 lets several of
  these through (docs/hardening.md, Hostile requests); closing the gaps in one place keeps every backend equally strict.
- The request line is checked as soon as it is complete, before the rest of the head: an HTTP/0.9 client sends
  one line and waits, and a bad version or an oversized target needs no more bytes to be refused.
- Framing fields are also checked as raw lines, because backends normalize them (h11 strips whitespace and merges
  repeated Content-Length lines). Deliberate departures, both against request smuggling: a Transfer-Encoding value
  with trailing whitespace is refused although RFC 9110 §5.5 would strip it (a parser that doesn't strip it sees a
  coding other than chunked, and framing disagreements are how requests get smuggled); Content-Length must be one
  line of digits, so ``5, 5`` and a repeated identical line are refused as nginx does, where RFC 9110 §8.6 would
  allow folding them into one value.
- No control byte but HTAB anywhere in a head (CR and LF only as CRLF line ends), and no byte over 0x7F in the
  request line (a URI is ASCII, RFC 3986; llhttp refuses it there too). h11 accepts ``\x01``-``\x1f`` and DEL in
  field values and targets; llhttp refuses controls. obs-text in field values is kept as opaque data, as RFC 9110
  §5.5 says (real clients send UTF-8 in User-Agent or Content-Disposition; both backends and nginx accept it).
- Events are ``RequestHead``, ``bytes`` (a body chunk), ``END`` (body complete), ``NEED_DATA`` and ``CLOSED``.
- After a response is written the shell calls ``cycle_done()``; leftover bytes (pipelined requests) carry over.
- Errors are raised as ``edgeproxy.errors.ClientError`` subclasses carrying their status.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Protocol

import h11

from edgeproxy.errors import BadRequest, BodyTooLarge, HeadersTooLarge, UriTooLong, VersionNotSupported
from edgeproxy.http.headers import Headers


class Sentinel:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


NEED_DATA: Final = Sentinel("NEED_DATA")
END: Final = Sentinel("END")
CLOSED: Final = Sentinel("CLOSED")


@dataclass(slots=True)
class RequestHead:
    method: bytes
    target: bytes
    headers: Headers
    http_version: bytes  # b"1.1" or b"1.0"
    keep_alive: bool
    expect_continue: bool
    has_body: bool
    # dict(headers) as the parser made it for its checks (check_fields), kept for the exchange's lookups by name;
    # None: not made (a head built elsewhere), the exchange makes its own.
    fields: dict[bytes, bytes] | None = None


Event = RequestHead | bytes | Sentinel


@dataclass(frozen=True, slots=True)
class Limits:
    max_uri: int = 8192
    max_header_bytes: int = 32768
    max_headers: int = 100
    max_body: int = 100 * 1024 * 1024


class RequestParser(Protocol):
    idle: bool  # at the start of a request cycle with nothing buffered

    def feed(self, data: bytes) -> None: ...
    def next_event(self) -> Event: ...
    def cycle_done(self) -> None: ...


# method = token (RFC 9110 §9.1): extension methods like M-SEARCH are legal and forwarded.
_VERSION = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+ \S+ HTTP/(\d)\.(\d)\r\n")
_CL = re.compile(rb"[0-9]{1,18}")
# Raw framing lines (name, raw value up to the line end); the bare CR/LF check runs first, so [^\r]* is the value.
_FRAMING_LINE = re.compile(rb"\r\n(content-length|transfer-encoding)[ \t]*:([^\r]*)", re.IGNORECASE)
_RAW_TE = re.compile(rb"[ \t]*chunked", re.IGNORECASE)
# Controls other than HTAB, CR and LF (those are checked as line ends), and DEL.
_BAD_HEAD_BYTE = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# A head that passes every check below but the framing ones, in one pass: a token method, an ASCII target, version
# 1.0 or 1.1, then lines that start with neither SP nor HTAB (no obs-fold) and hold no control byte but HTAB (so no
# bare CR or LF), each ending in CRLF, and the empty line. It matches a subset of what the separate checks accept;
# anything else takes those checks, which name the fault. One fullmatch costs ~0.3 µs on a short GET where the
# separate scans cost ~1.9 µs (measured), on every request of both backends.
_CLEAN_HEAD = re.compile(
    rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+ [\x21-\x7e]+ HTTP/1\.[01]\r\n"
    rb"(?:[^\x00-\x08\x0a-\x1f\x7f \t][^\x00-\x08\x0a-\x1f\x7f]*\r\n)*\r\n")


def check_request_line(line: bytes, limits: Limits) -> None:
    """414 for a long target, 400 for a malformed line, 505 for versions other than 1.0 and 1.1; ``line`` ends
    with CRLF."""
    if len(line) - 2 > limits.max_uri:
        raise UriTooLong()
    m = _VERSION.fullmatch(line)
    if m is None or not line.isascii():
        raise BadRequest("malformed request line")
    if m.group(1) != b"1" or m.group(2) not in (b"0", b"1"):
        raise VersionNotSupported()


def check_head(head: bytes, limits: Limits) -> None:
    """Refuse what h11 would let through (see the module rules). ``head`` ends with CRLF CRLF."""
    if len(head) - 2 <= limits.max_uri and _CLEAN_HEAD.fullmatch(head) is not None:
        # The request line is no longer than the whole head, so no 414 either: only framing is left to check.
        if _FRAMING_LINE.search(head) is not None:
            _check_framing_lines(head)
        return
    crlf = head.count(b"\r\n")
    if head.count(b"\n") != crlf or head.count(b"\r") != crlf:
        raise BadRequest("bare CR or LF in the request head")
    if b"\r\n " in head or b"\r\n\t" in head:
        raise BadRequest("obsolete line folding in the request head")
    if _BAD_HEAD_BYTE.search(head) is not None:
        raise BadRequest("control byte in the request head")
    check_request_line(head[: head.index(b"\r\n") + 2], limits)
    if _FRAMING_LINE.search(head) is not None:  # most heads (bodiless GETs): one search instead of an iterator
        _check_framing_lines(head)


def _check_framing_lines(head: bytes) -> None:
    """The raw Content-Length and Transfer-Encoding lines (see the module rules)."""
    lengths = 0
    for m in _FRAMING_LINE.finditer(head):
        if m.group(1).lower() == b"transfer-encoding":
            if not _RAW_TE.fullmatch(m.group(2)):
                raise BadRequest("Transfer-Encoding other than chunked")
        else:
            lengths += 1
            if lengths > 1 or b"," in m.group(2):
                raise BadRequest("repeated Content-Length")


def check_fields(headers: Headers, http_version: bytes, limits: Limits) -> tuple[bool, int | None, dict[bytes, bytes]]:
    """Framing checks on parsed fields; returns (chunked, content_length, ``dict(headers)``: the last value of each
    name, which the exchange reads Host, Via and Expect from)."""
    if len(headers) > limits.max_headers:
        raise HeadersTooLarge("too many header fields")
    fields = dict(headers)
    if len(fields) == len(headers):  # no name twice (most heads): the dict answers for every name
        hosts = 1 if b"host" in fields else 0
        te = [fields[b"transfer-encoding"]] if b"transfer-encoding" in fields else None
        cl = [fields[b"content-length"]] if b"content-length" in fields else None
    else:  # one pass collects the names; the framing values are only gathered when a framing field is present
        names = [k for k, _ in headers]
        hosts = names.count(b"host")
        te = [v for k, v in headers if k == b"transfer-encoding"] if b"transfer-encoding" in names else None
        cl = [v for k, v in headers if k == b"content-length"] if b"content-length" in names else None
    if hosts > 1 or (hosts == 0 and http_version == b"1.1"):
        raise BadRequest("exactly one Host field is required")
    if te and cl:
        raise BadRequest("both Content-Length and Transfer-Encoding")
    if te:
        if http_version != b"1.1":
            raise BadRequest("Transfer-Encoding on HTTP/1.0")
        if len(te) != 1 or te[0].lower() != b"chunked":
            raise BadRequest("Transfer-Encoding other than chunked")
        return True, None, fields
    if cl:
        if len(set(cl)) != 1 or not _CL.fullmatch(cl[0]):
            raise BadRequest("invalid Content-Length")
        length = int(cl[0])
        if length > limits.max_body:
            raise BodyTooLarge()
        return False, length, fields
    return False, None, fields


class HeadGatherer:
    """Collects one request head across reads and checks it; the rest is handed on untouched."""

    __slots__ = ("buf", "limits", "end")

    def __init__(self, limits: Limits, initial: bytes = b"") -> None:
        self.limits = limits
        self.buf = initial
        self.end = 0  # where the last complete head ends in what ``feed`` returned (after its CRLF CRLF)

    def feed(self, data: bytes) -> bytes | None:
        """Returns all gathered bytes once the head is complete and checked (``end`` says where the head ends in
        them); None while incomplete."""
        limits = self.limits
        first = not self.buf
        buf = data if first else self.buf + data
        # RFC 9112 §2.2: a server SHOULD ignore at least one empty line before the request-line.
        while buf.startswith(b"\r\n"):
            buf = buf[2:]
        if first:
            # A head that comes whole in its first read (most do) is found and checked by one match of _CLEAN_HEAD:
            # a line can't be empty, so the match ends where the first CRLF CRLF does, and what passes it needs only
            # the framing check (as in check_head). Only on a first read: a head trickling in is searched for its end
            # (cheaper than a regex over what came so far on every read).
            m = _CLEAN_HEAD.match(buf)
            if m is not None:
                end = m.end()
                if end <= limits.max_header_bytes and end - 2 <= limits.max_uri:
                    if _FRAMING_LINE.search(buf, 0, end) is not None:
                        _check_framing_lines(buf[:end])
                    self.buf = b""
                    self.end = end
                    return buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            self.buf = buf
            line_end = buf.find(b"\r\n")
            if line_end >= 0:
                check_request_line(buf[: line_end + 2], limits)
            elif len(buf) > limits.max_uri:
                raise UriTooLong()
            if len(buf) > limits.max_header_bytes:
                raise HeadersTooLarge()
            if b"\n\n" in buf or b"\r\r" in buf:
                raise BadRequest("bare CR or LF in the request head")
            return None
        if end + 4 > limits.max_header_bytes:
            raise HeadersTooLarge()
        check_head(buf if end + 4 == len(buf) else buf[: end + 4], limits)
        self.buf = b""
        self.end = end + 4
        return buf


# Where a request cycle of the h11 backend stands with respect to a body h11 isn't asked about.
_BODY, _END_DUE, _END_GIVEN = "body", "end due", "end given"


class H11Parser:
    """The reference backend: h11, one fresh ``h11.Connection`` per request cycle.

    A fresh connection per cycle (~1 µs, measured) instead of ``start_next_cycle`` lets the shell write responses
    as prepared bytes without telling h11 about them: h11's own response serialization costs ~20 µs.
    The END of a bodiless request is handed out here, not pulled from h11: its EndOfMessage costs a fifth of h11's
    parse of a short GET (measured), and the connection is dropped at ``cycle_done`` with the same trailing data.
    """

    __slots__ = ("limits", "conn", "gather", "gatherer", "closed", "head", "received", "bodiless")

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.conn: h11.Connection | None = None
        self.gatherer = HeadGatherer(limits)  # reused by every cycle
        self.gather: HeadGatherer | None = self.gatherer
        self.closed = False
        self.received = 0
        self.bodiless = _BODY  # _END_DUE / _END_GIVEN while the current request has no body

    def feed(self, data: bytes) -> None:
        if not data:
            self.closed = True
            if self.conn is not None:
                self.conn.receive_data(b"")
            return
        if self.gather is not None:
            complete = self.gather.feed(data)
            if complete is None:
                return
            self.gather = None
            self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self.limits.max_header_bytes)
            data = complete
        assert self.conn is not None
        self.conn.receive_data(data)

    def next_event(self) -> Event:
        conn = self.conn
        if conn is None:
            if self.closed:
                if self.gather is not None and self.gather.buf:
                    raise BadRequest("connection closed inside a request head")
                return CLOSED
            return NEED_DATA
        if self.bodiless is not _BODY:
            return self._bodiless_event(conn)
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as e:
            raise BadRequest(str(e)) from None
        kind = type(event)
        if kind is h11.Request:
            return self._head(event)
        if kind is h11.Data:
            self.received += len(event.data)
            if self.received > self.limits.max_body:
                raise BodyTooLarge()
            return bytes(event.data)
        if kind is h11.EndOfMessage:
            return END
        if event is h11.NEED_DATA or event is h11.PAUSED:
            return NEED_DATA
        if kind is h11.ConnectionClosed:
            return CLOSED
        raise BadRequest(f"unexpected {kind.__name__}")

    def _bodiless_event(self, conn: h11.Connection) -> Event:
        """What h11 would say after the head of a bodiless request: END, then nothing until the next cycle."""
        if self.bodiless is _END_DUE:
            self.bodiless = _END_GIVEN
            return END
        return CLOSED if self.closed and not conn.trailing_data[0] else NEED_DATA

    def _head(self, event: h11.Request) -> RequestHead:
        # h11 keeps each field as (raw name, lower-case name, value) in ``_full_items`` (h11 0.16, pinned below
        # 0.17; its own writers read it too): taking the lower-case pairs from there spares a list and a lower() per
        # field. Iterating h11's Headers instead goes through Sequence.__iter__ and one __getitem__ per field.
        headers = [(name, value) for _, name, value in event.headers._full_items]
        chunked, length, fields = check_fields(headers, event.http_version, self.limits)
        self.received = 0
        self.bodiless = _BODY if chunked or length else _END_DUE
        conn = self.conn
        assert conn is not None
        has_body = chunked or bool(length)
        # Positional: keyword calls into the slotted dataclass cost ~3k instructions per head (callgrind).
        # h11 also waits for 100-continue on a bodiless request; the httptools backend (and RFC 9110 §10.1.1)
        # only with a body to send.
        return RequestHead(event.method, event.target, headers, event.http_version,
                           conn.their_state is not h11.MUST_CLOSE and keep_alive(headers, event.http_version),
                           conn.they_are_waiting_for_100_continue and has_body, has_body, fields)

    def cycle_done(self) -> None:
        """The response is written: start gathering the next head from what is already buffered."""
        leftover = b""
        if self.conn is not None:
            leftover, closed = self.conn.trailing_data
            self.closed = self.closed or closed
        self.conn = None
        self.bodiless = _BODY
        self.gather = self.gatherer
        self.gatherer.buf = b""
        if leftover:
            self.feed(leftover)

    def body_complete(self) -> bool:
        return self.conn is None or self.bodiless is _END_GIVEN or self.conn.their_state in (
            h11.DONE, h11.MUST_CLOSE, h11.CLOSED)

    @property
    def idle(self) -> bool:
        """At the start of a request cycle with nothing buffered."""
        return self.conn is None and self.gather is not None and not self.gather.buf


def keep_alive(headers: Headers, version: bytes) -> bool:
    """Whether the client asked to keep the connection open (RFC 9112 §9.3)."""
    for k, _ in headers:  # most heads carry no Connection field: a plain loop finds out cheaper than a comprehension
        if k == b"connection":
            break
    else:
        return version != b"1.0"
    tokens = [p.strip().lower() for k, v in headers if k == b"connection" for p in v.split(b",")]
    if version == b"1.0":
        return b"keep-alive" in tokens
    return b"close" not in tokens


