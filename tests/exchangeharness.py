"""An in-process harness for the exchange: a real ``Edge`` and real ``ClientConnection`` and ``OriginConnection``
objects, wired to memory instead of sockets, on a clock the test sets.

- Downstream port: ``MemoryTransport`` stands in for the client's socket. What the edge writes is kept in
  ``out``; the test can pause and resume writing (back-pressure) and close it (a client that leaves).
- Upstream port: ``ScriptedPool`` is the real ``OriginPool`` whose ``_connect`` makes a real ``OriginConnection``
  over a ``MemoryTransport`` that feeds ``ScriptedOrigin``: each complete request is recorded and answered by the
  test's script with a ``Reply`` (bytes after a delay, a reset, a silent close, nothing at all).
- The clock: ``Clock``, injected as ``Edge(clock=...)``; every freshness decision reads it.

Nothing here opens a socket; everything runs on one asyncio loop, bounded by timeouts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edgeproxy.config import config_from_dict
from edgeproxy.errors import OriginConnectError
from edgeproxy.http.dates import format_http_date
from edgeproxy.proxy.client import ClientConnection
from edgeproxy.proxy.edge import Edge
from edgeproxy.proxy.origin import OriginAddress, OriginConnection, OriginPool

T0 = 1_800_000_000.0
ORIGIN = "http://origin.test:8080"


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class MemoryTransport:
    """Just enough of an asyncio transport for a Protocol: writes are kept or handed on, close is reported."""

    def __init__(self, loop: asyncio.AbstractEventLoop, protocol: asyncio.Protocol,
                 on_write: Callable[[bytes], None] | None = None, peer: tuple[str, int] = ("203.0.113.9", 40000)
                 ) -> None:
        self.loop, self.protocol, self.on_write, self.peer = loop, protocol, on_write, peer
        self.out = bytearray()
        self.closing = self.aborted = False
        self.reading = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.peer if name == "peername" else default

    def write(self, data: bytes) -> None:
        if self.closing:
            return
        self.out += data
        if self.on_write is not None:
            self.on_write(bytes(data))

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self._lose(None)

    def abort(self) -> None:
        self.aborted = True
        self._lose(None)

    def _lose(self, exc: Exception | None) -> None:
        if not self.closing:
            self.closing = True
            self.loop.call_soon(self.protocol.connection_lost, exc)


@dataclass
class Reply:
    """What the scripted origin does with one request."""

    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    delay: float = 0.0
    action: str = "answer"  # answer | reset (no bytes, connection lost) | close (EOF, no bytes) | hang | garbage
    chunks: list[bytes] | None = None  # a chunked body, one write per chunk, ``delay`` apart

    def head(self, clock: Clock) -> bytes:
        names = {k.lower() for k, _ in self.headers}
        lines = [f"HTTP/1.1 {self.status} X"]
        lines += [f"{k}: {v}" for k, v in self.headers]
        if "date" not in names:
            lines.append(f"date: {format_http_date(clock.now).decode()}")
        if self.chunks is not None:
            lines.append("transfer-encoding: chunked")
        elif "content-length" not in names and self.status not in (204, 304):
            lines.append(f"content-length: {len(self.body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode()


@dataclass
class Seen:
    method: str
    target: str
    headers: dict[str, str]
    conn: int


class ScriptedOrigin:
    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.script: Callable[[Seen], Reply] = lambda seen: Reply(body=b"ok")
        self.seen: list[Seen] = []
        self.refuse = False  # every connect fails
        self.conns = 0

    def attach(self, loop: asyncio.AbstractEventLoop, conn: OriginConnection) -> MemoryTransport:
        self.conns += 1
        number, buffer = self.conns, bytearray()

        def received(data: bytes) -> None:
            buffer.extend(data)
            while (end := buffer.find(b"\r\n\r\n")) >= 0:
                head = bytes(buffer[:end]).decode("latin-1").split("\r\n")
                del buffer[:end + 4]
                method, target, _ = head[0].split(" ")
                headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in head[1:])}
                seen = Seen(method, target, headers, number)
                self.seen.append(seen)
                self._answer(loop, conn, transport, self.script(seen))

        transport = MemoryTransport(loop, conn, on_write=received, peer=("192.0.2.1", 8080))
        return transport

    def _answer(self, loop: asyncio.AbstractEventLoop, conn: OriginConnection, transport: MemoryTransport,
                reply: Reply) -> None:
        def send(data: bytes) -> None:
            if not transport.closing:
                conn.data_received(data)

        if reply.action == "hang":
            return
        if reply.action in ("reset", "close"):
            def lose() -> None:
                transport.closing = True
                if reply.action == "close":
                    conn.eof_received()
                conn.connection_lost(ConnectionResetError() if reply.action == "reset" else None)
            loop.call_later(reply.delay, lose)
            return
        if reply.action == "garbage":
            loop.call_later(reply.delay, send, b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n")
            return
        head = reply.head(self.clock)
        if reply.chunks is None:
            loop.call_later(reply.delay, send, head + reply.body)
            return
        loop.call_later(reply.delay, send, head)
        for i, chunk in enumerate(reply.chunks):
            loop.call_later(reply.delay * (i + 2), send, b"%x\r\n%s\r\n" % (len(chunk), chunk))
        loop.call_later(reply.delay * (len(reply.chunks) + 2), send, b"0\r\n\r\n")


class ScriptedPool(OriginPool):
    """The real pool; only the connect step is memory."""

    def __init__(self, origin: ScriptedOrigin, **limits: Any) -> None:
        super().__init__(**limits)
        self.origin = origin

    async def _connect(self, address: OriginAddress, timeout: float = 0.0) -> OriginConnection:
        if self.origin.refuse:
            raise OriginConnectError(f"connect to {address.host}:{address.port} failed: refused")
        conn = OriginConnection(address, self.parser)
        conn.connection_made(self.origin.attach(asyncio.get_running_loop(), conn))
        self.opened += 1
        return conn


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


class Harness:
    """One edge with a scripted origin; ``client()`` opens a memory connection to it."""

    def __init__(self, **config: Any) -> None:
        self.loop = asyncio.get_running_loop()
        self.clock = Clock()
        self.origin = ScriptedOrigin(self.clock)
        tree = {"site": [{"origin": ORIGIN}], "origin": {"read_timeout": "1s"}, **config}
        self.edge = Edge(config_from_dict(tree), self.loop, clock=self.clock)
        o = self.edge.config.origin
        self.edge.pool = ScriptedPool(self.origin, connect_timeout=o.connect_timeout, idle_timeout=o.idle_timeout,
                                      max_total=o.max_connections, max_per_origin=o.max_per_origin,
                                      wait_timeout=o.pool_wait_timeout, parser=self.edge.config.origin_parser)

    def client(self) -> tuple[ClientConnection, MemoryTransport]:
        conn = ClientConnection(self.edge, "http")
        transport = MemoryTransport(self.loop, conn)
        conn.connection_made(transport)
        return conn, transport

    async def get(self, path: str, headers: dict[str, str] | None = None, timeout: float = 3.0,
                  method: str = "GET") -> Answer:
        """One request (a GET unless ``method`` says otherwise) on a new connection; its answer, once complete."""
        conn, transport = self.client()
        conn.data_received(request(path, headers, method))
        return await answer_on(transport, timeout)

    def origin_down(self) -> None:
        """The origin stops accepting connections; the pooled ones are gone with it."""
        self.origin.refuse = True
        self.edge.pool.close()

    def outcomes(self) -> dict[str, int]:
        return {k: v for k, v in self.edge.counters.requests.items() if v}


def request(path: str, headers: dict[str, str] | None = None, method: str = "GET") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "host: a.test", *(f"{k}: {v}" for k, v in (headers or {}).items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def answer_on(transport: MemoryTransport, timeout: float = 3.0) -> Answer:
    """Wait until ``transport.out`` holds one complete response; parse it."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        parsed = parse(bytes(transport.out))
        if parsed is not None:
            return parsed
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"no complete response within {timeout}s: {bytes(transport.out)[:300]!r}")
        await asyncio.sleep(0.005)


def parse(data: bytes) -> Answer | None:
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = data[:end].decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    rest = data[end + 4:]
    if "content-length" in headers:
        n = int(headers["content-length"])
        return Answer(status, headers, rest[:n]) if len(rest) >= n else None
    if headers.get("transfer-encoding") == "chunked":
        body = b""
        while (eol := rest.find(b"\r\n")) >= 0:
            size = int(rest[:eol], 16)
            if size == 0:
                return Answer(status, headers, body)
            if len(rest) < eol + 2 + size + 2:
                return None
            body += rest[eol + 2:eol + 2 + size]
            rest = rest[eol + 2 + size + 2:]
        return None
    return Answer(status, headers, rest)


def cacheable(body: bytes, cc: str = "max-age=60", etag: str | None = '"e1"', **extra: str) -> Reply:
    headers = [("cache-control", cc), *((k.replace("_", "-"), v) for k, v in extra.items())]
    if etag is not None:
        headers.append(("etag", etag))
    return Reply(headers=headers, body=body)
