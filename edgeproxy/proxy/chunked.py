"""Chunked bodies for the httptools backends (parser_httptools.py, origin_parser_httptools.py), read by h11.

Rules kept here:
- llhttp is only ever fed heads (so where a message ends is known exactly); a chunked body goes to h11's own
  chunked reader instead, behind a synthetic request head, since h11 reads chunked data only inside a message.
  Chunked bodies are the rarer case on both sides: correctness matters more here than speed.
- ``rest`` is what followed the last chunk (and whether the peer closed): the caller decides what it means.
- Errors are ``ChunkedError``; each caller turns them into its side's error (400 or 502).
"""

from __future__ import annotations

import h11

from edgeproxy.proxy.parser import END, NEED_DATA, Sentinel

_CHUNKED_HEAD = b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"


class ChunkedError(Exception):
    """The chunked framing is broken; the message says how."""


class ChunkedReader:
    __slots__ = ("conn",)

    def __init__(self, data: bytes = b"", eof: bool = False) -> None:
        self.conn = h11.Connection(h11.SERVER)
        self.conn.receive_data(_CHUNKED_HEAD + data)
        if eof:
            self.conn.receive_data(b"")
        self.conn.next_event()  # the synthetic Request

    def feed(self, data: bytes) -> None:
        """More body bytes; ``b""`` when the peer closed."""
        self.conn.receive_data(data)

    def next_event(self) -> bytes | Sentinel:
        """A chunk's data, ``END`` after the last chunk (and trailers), or ``NEED_DATA``."""
        try:
            event = self.conn.next_event()
        except h11.RemoteProtocolError as e:
            raise ChunkedError(f"invalid chunked body: {e}") from None
        if type(event) is h11.Data:
            return bytes(event.data)
        if type(event) is h11.EndOfMessage:
            return END
        if event is h11.NEED_DATA:
            return NEED_DATA
        raise ChunkedError(f"unexpected {type(event).__name__} in a chunked body")

    @property
    def rest(self) -> tuple[bytes, bool]:
        """The bytes after the body's end, and whether the peer closed."""
        data, closed = self.conn.trailing_data
        return bytes(data), closed
