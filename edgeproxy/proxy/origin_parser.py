"""The origin-side HTTP/1.1 seam: requests out as bytes, response events in, one backend per parser library.

Rules kept here:
- Sans-I/O: a backend turns our request into bytes and the origin's bytes into events; ``OriginConnection``
  (origin.py) moves the bytes. h11 is the reference backend; ``httptools`` (origin_parser_httptools.py) must give
  the same events and refuse at least what h11 refuses.
- Events: ``ResponseHead`` (1xx answers are consumed here, never handed out), ``bytes`` (a body chunk), ``END``
  (the body is complete), ``NEED_DATA`` and ``CLOSED`` (the origin closed before a response began). A response
  that breaks HTTP/1.1, or a body the closing connection cuts short, raises ``ResponseError`` (the connection
  decides whether it was a stale pooled connection); a request that can't be written raises ``RequestError``, an
  ``OriginProtocolError`` as it stands.
- The response's framing follows RFC 9112 §6.3 and the request it answers: no body for HEAD, 1xx, 204 and 304;
  else chunked, else Content-Length, else delimited by the close. Only ``chunked`` is accepted as a
  Transfer-Encoding (a proxy can't re-frame a coding it doesn't know).
- A connection may take another request (``next_cycle``) only when ours was sent whole, the response ended by
  its own framing, and neither side asked to close (``reusable``). ``trailing`` holds the bytes that arrived
  past the response's end: the caller must not reuse a connection that has any.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import h11

from edgeproxy.errors import OriginProtocolError
from edgeproxy.http.headers import Headers
from edgeproxy.proxy.parser import CLOSED, END, NEED_DATA, Sentinel


@dataclass(slots=True)
class ResponseHead:
    status: int
    reason: bytes
    headers: Headers  # lower-case names, in order
    http_version: bytes  # b"1.1" or b"1.0"


OriginEvent = ResponseHead | bytes | Sentinel


class ResponseError(Exception):
    """The origin's bytes break HTTP/1.1 (or its body ended early); the message says how."""


class RequestError(OriginProtocolError):
    """Our request can't be written as HTTP/1.1 (a field value with a control byte, for one): a 502 like any other
    failure to talk to the origin."""

    def __init__(self, why: str) -> None:
        super().__init__(f"cannot send request: {why}")


class ResponseParser(Protocol):
    @property
    def trailing(self) -> bytes:
        """Bytes received past the end of the response."""

    def send_head(self, method: bytes, target: bytes, headers: Headers) -> bytes: ...
    def send_data(self, chunk: bytes) -> bytes: ...
    def send_end(self) -> bytes: ...
    def receive_data(self, data: bytes) -> None: ...
    def next_event(self) -> OriginEvent: ...
    @property
    def idle(self) -> bool: ...
    def reusable(self) -> bool: ...
    def next_cycle(self) -> None: ...


class H11ResponseParser:
    """The reference backend: one ``h11.Connection(CLIENT)`` per TCP connection, cycled with start_next_cycle."""

    __slots__ = ("conn",)

    def __init__(self) -> None:
        self.conn = h11.Connection(h11.CLIENT)

    def send_head(self, method: bytes, target: bytes, headers: Headers) -> bytes:
        try:
            data = self.conn.send(h11.Request(method=method, target=target, headers=headers))
        except h11.LocalProtocolError as e:
            raise RequestError(str(e)) from None
        assert data is not None
        return data

    def send_data(self, chunk: bytes) -> bytes:
        return self._send(h11.Data(data=chunk))

    def send_end(self) -> bytes:
        return self._send(h11.EndOfMessage())

    def _send(self, event: h11.Data | h11.EndOfMessage) -> bytes:
        try:
            data = self.conn.send(event)
        except h11.LocalProtocolError as e:
            raise RequestError(str(e)) from None
        return data or b""

    def receive_data(self, data: bytes) -> None:
        try:
            self.conn.receive_data(data)
        except RuntimeError:
            pass  # a second EOF (connection_lost after eof_received): h11 refuses it, nothing changes

    def next_event(self) -> OriginEvent:
        conn = self.conn
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as e:
                raise ResponseError(str(e)) from None
            if isinstance(event, h11.Data):
                return bytes(event.data)
            if isinstance(event, h11.Response):
                return ResponseHead(event.status_code, event.reason,
                                    [(n.lower(), v) for n, v in event.headers.raw_items()], event.http_version)
            if isinstance(event, h11.EndOfMessage):
                return END
            if isinstance(event, h11.InformationalResponse):
                continue  # 1xx: this hop consumes them (100-continue is handled on the client side)
            if isinstance(event, h11.ConnectionClosed):
                return CLOSED
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return NEED_DATA
            raise ResponseError(f"unexpected {type(event).__name__}")

    @property
    def trailing(self) -> bytes:
        return bytes(self.conn.trailing_data[0])

    @property
    def idle(self) -> bool:
        return self.conn.our_state is h11.IDLE

    def reusable(self) -> bool:
        conn = self.conn
        return conn.our_state is h11.DONE and conn.their_state is h11.DONE and not conn.trailing_data[1]

    def next_cycle(self) -> None:
        self.conn.start_next_cycle()


