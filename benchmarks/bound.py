"""The bound: the fastest a parser-based cache hit can be served in this runtime.

Rules kept here:
- Owns two bare uvloop ``asyncio.Protocol`` servers that parse each request (with h11 or httptools)
  and answer with a prepared response in one ``transport.write``. No cache lookup, no header
  copying, no clock: whatever edgeproxy's hit path costs above this is our own overhead.
- The response is selected by the path without its query (``/bytes/1024``, ``/nostore/65536?i=7``): the
  sizes 1 KiB, 64 KiB and 1 MiB, cacheable (``/bytes``) or ``no-store`` (``/nostore``), are prepared at
  start-up; any other path gets a prepared 404. The same URLs therefore work against nginx, edgeproxy and
  the bound.
- ``--origin``: the same server is the benchmarks' fast origin (miss pass-through must measure the proxy,
  not the demo origin's h11 request cycle); its answers then carry no ``Age`` and no ``Cache-Status``.
- Keep-alive and pipelining are honoured: several requests in one read get their answers in order,
  a request split across reads waits for the rest, ``Connection: close`` closes after the answer.
- Deliberate departures: the ``Date`` and ``Age`` fields are frozen at start-up (a real hit
  formats them per second / per response), and request bodies are not expected (benchmarks send GET).

h11 figure (h11 0.16, CPython 3.11, this 2-core machine): a fresh ``h11.Connection(h11.SERVER)``
costs 1.0 µs and parsing a small GET with it 16 µs, while ``start_next_cycle`` needs the response to
go through ``h11.send`` first (25 µs per cycle in total). So a fresh connection per request, fed
with the previous one's ``trailing_data``, is the fastest correct use; that is what ``H11Parser`` does.

Run: ``python -m benchmarks.bound --parser h11 --listen 127.0.0.1:8081``. Prints nothing; it is up
when the port accepts; SIGTERM/SIGINT stop it.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import signal
from collections.abc import Callable
from email.utils import formatdate
from typing import cast

import h11
import httptools
import uvloop

from edgeproxy.http.headers import has_token
from edgeproxy.http.wire import serialize_head

SIZES: tuple[int, ...] = (1024, 64 * 1024, 1024 * 1024)
Request = tuple[bytes, bool]  # (target, keep_alive)


CACHE_CONTROL = {b"bytes": b"public, max-age=3600", b"nostore": b"no-store"}
# As a target the bound answers like a cache hit; as the benchmarks' fast origin it must not claim one.
HIT_FIELDS = [(b"age", b"1"), (b"cache-status", b"bound; hit")]


def prepared_responses(origin: bool = False) -> tuple[dict[bytes, bytes], bytes]:
    """Whole responses (head + body) by path (``/bytes/N``, ``/nostore/N``), and the 404."""
    date = formatdate(usegmt=True).encode()
    out: dict[bytes, bytes] = {}
    for (kind, cache_control), size in itertools.product(CACHE_CONTROL.items(), SIZES):
        head = serialize_head(
            200,
            [
                (b"content-type", b"application/octet-stream"),
                (b"content-length", b"%d" % size),
                (b"cache-control", cache_control),
                (b"etag", b'"bound-%d"' % size),
                (b"last-modified", b"Mon, 01 Jan 2024 00:00:00 GMT"),
                (b"date", date),
                *([] if origin else HIT_FIELDS),
            ],
        )
        out[b"/%s/%d" % (kind, size)] = head + b"\r\n" + b"x" * size
    not_found = serialize_head(404, [(b"content-length", b"0"), (b"date", date)]) + b"\r\n"
    return out, not_found


def select(table: tuple[dict[bytes, bytes], bytes], target: bytes) -> bytes:
    return table[0].get(target.split(b"?", 1)[0], table[1])


class H11Parser:
    """h11 used the fastest correct way: one fresh Connection per request cycle."""

    def __init__(self) -> None:
        self.conn = h11.Connection(h11.SERVER)
        self.request: Request = (b"", True)

    def feed(self, data: bytes) -> list[Request]:
        conn = self.conn
        conn.receive_data(data)
        done: list[Request] = []
        while True:
            event = conn.next_event()
            kind = type(event)
            if kind is h11.Request:
                keep = event.http_version == b"1.1" and not has_token(event.headers, b"connection", b"close")
                self.request = (event.target, keep)
            elif kind is h11.EndOfMessage:
                done.append(self.request)
                rest, closed = conn.trailing_data
                conn = self.conn = h11.Connection(h11.SERVER)
                if rest:
                    conn.receive_data(rest)
                if closed:
                    conn.receive_data(b"")
            elif event is h11.NEED_DATA or kind is h11.ConnectionClosed:
                return done
            elif event is h11.PAUSED:
                raise h11.RemoteProtocolError("unexpected pause")


class HttptoolsParser:
    """httptools (llhttp): callbacks collect the URL; completion appends the request."""

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.done: list[Request] = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_message_complete(self) -> None:
        self.done.append((self.url, self.parser.should_keep_alive()))
        self.url = b""

    def feed(self, data: bytes) -> list[Request]:
        self.parser.feed_data(data)
        done, self.done = self.done, []
        return done


PARSERS: dict[str, Callable[[], H11Parser | HttptoolsParser]] = {
    "h11": H11Parser,
    "httptools": HttptoolsParser,
}
PARSE_ERRORS = (h11.RemoteProtocolError, httptools.HttpParserError)
BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


class BoundProtocol(asyncio.Protocol):
    def __init__(self, parser: str, table: tuple[dict[bytes, bytes], bytes]) -> None:
        self.parser = PARSERS[parser]()
        self.table = table
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCPTransport does not subclass asyncio.Transport, so no isinstance check here.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        transport = self.transport
        assert transport is not None
        try:
            requests = self.parser.feed(data)
        except PARSE_ERRORS:
            transport.write(BAD_REQUEST)
            transport.close()
            return
        if not requests:
            return
        if len(requests) == 1:
            target, keep = requests[0]
            transport.write(select(self.table, target))
        else:
            # Pipelined: answer all in order, still in one write.
            keep = all(k for _, k in requests)
            transport.write(b"".join(select(self.table, t) for t, _ in requests))
        if not keep:
            transport.close()


async def serve(parser: str, host: str, port: int, origin: bool) -> None:
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set_result, None)
    table = prepared_responses(origin)
    server = await loop.create_server(lambda: BoundProtocol(parser, table), host, port, backlog=4096)
    async with server:
        await stop


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bound", description=__doc__.split("\n")[0])
    ap.add_argument("--parser", choices=sorted(PARSERS), default="h11")
    ap.add_argument("--listen", default="127.0.0.1:8081", help="HOST:PORT")
    ap.add_argument("--origin", action="store_true", help="answer as an origin: no Age, no Cache-Status")
    args = ap.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    uvloop.run(serve(args.parser, host, int(port), args.origin))


if __name__ == "__main__":
    main()
