"""The embedded demo origin: a small h11 + uvloop server whose paths show caching and CORS at work.

It is what a plain ``edgeproxy serve`` puts behind the proxy, and the origin benchmarks and many tests use.
Routes are a table (``ROUTES``): each handler takes the parsed request and returns status, headers and a body
(bytes, or an async iterator of chunks for streamed answers). Not meant to face the internet.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from email.utils import formatdate

import h11

from edgeproxy.http.headers import Headers, get
from edgeproxy.netutil import set_nodelay

MAX_DEMO_BYTES = 1 << 31  # /bytes and /stream refuse more than 2 GiB
_BOOT = formatdate(time.time() - 3600, usegmt=True).encode()

Body = bytes | AsyncIterator[bytes]


@dataclass(slots=True)
class DemoRequest:
    method: bytes
    path: str
    query: str
    headers: Headers


Answer = tuple[int, Headers, Body]


def _etag(*parts: object) -> bytes:
    return b'"' + hashlib.blake2s(repr(parts).encode(), digest_size=8).hexdigest().encode() + b'"'


def _size(text: str) -> int:
    n = int(text)
    if not 0 <= n <= MAX_DEMO_BYTES:
        raise ValueError(text)
    return n


def _payload(n: int) -> bytes:
    line = b"edgeproxy demo payload 0123456789abcdefghijklmnopqrstuvwxyz\n"
    return (line * (n // len(line) + 1))[:n]


def _index(req: DemoRequest, rest: str) -> Answer:
    if rest:
        return _not_found(req, rest)
    body = INDEX_HTML
    return 200, [(b"content-type", b"text/html; charset=utf-8"), (b"cache-control", b"public, max-age=60"),
                 (b"etag", _etag("index")), (b"last-modified", _BOOT)], body


def _bytes(req: DemoRequest, rest: str) -> Answer:
    n = _size(rest)
    tag = _etag("bytes", n, req.query)
    if tag in (get(req.headers, b"if-none-match") or b"").split(b", "):
        return 304, [(b"etag", tag), (b"cache-control", b"public, max-age=3600")], b""
    return 200, [(b"content-type", b"application/octet-stream"), (b"cache-control", b"public, max-age=3600"),
                 (b"etag", tag), (b"last-modified", _BOOT)], _payload(n)


def _nostore(req: DemoRequest, rest: str) -> Answer:
    return 200, [(b"content-type", b"application/octet-stream"), (b"cache-control", b"no-store")], _payload(
        _size(rest))


def _revalidate(req: DemoRequest, rest: str) -> Answer:
    n = _size(rest)
    tag = _etag("revalidate", n, req.query)
    common = [(b"cache-control", b"max-age=0"), (b"etag", tag)]
    if get(req.headers, b"if-none-match") == tag:
        return 304, common, b""
    return 200, [(b"content-type", b"application/octet-stream"), *common], _payload(n)


async def _chunks(n: int, chunk: int = 64 * 1024) -> AsyncIterator[bytes]:
    block = _payload(min(n, chunk))
    sent = 0
    while sent < n:
        piece = block[: min(chunk, n - sent)]
        sent += len(piece)
        yield piece
        await asyncio.sleep(0)


def _stream(req: DemoRequest, rest: str) -> Answer:
    n = _size(rest)
    return 200, [(b"content-type", b"application/octet-stream"), (b"cache-control", b"public, max-age=3600"),
                 (b"transfer-encoding", b"chunked")], _chunks(n)


async def _delayed(seconds: float, body: bytes) -> AsyncIterator[bytes]:
    await asyncio.sleep(seconds)
    yield body


def _slow(req: DemoRequest, rest: str) -> Answer:
    ms = int(dict(p.split("=", 1) for p in req.query.split("&") if "=" in p).get("ms", "1000"))
    body = b"slow answer after %d ms\n" % ms
    return 200, [(b"content-type", b"text/plain"), (b"cache-control", b"public, max-age=60"),
                 (b"content-length", b"%d" % len(body))], _delayed(ms / 1000, body)


def _status(req: DemoRequest, rest: str) -> Answer:
    code = int(rest)
    if not 200 <= code <= 599:
        raise ValueError(rest)
    body = b"" if code in (204, 304) else b"status %d\n" % code
    return code, [(b"content-type", b"text/plain"), (b"cache-control", b"max-age=60")], body


def _headers(req: DemoRequest, rest: str) -> Answer:
    body = json.dumps({"method": req.method.decode(), "path": req.path, "query": req.query,
                       "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in req.headers]},
                      indent=1).encode()
    return 200, [(b"content-type", b"application/json"), (b"cache-control", b"no-store")], body


def _cors(req: DemoRequest, rest: str) -> Answer:
    base = [(b"content-type", b"application/json"), (b"cache-control", b"public, max-age=300")]
    origin = get(req.headers, b"origin")
    if rest == "star":
        return 200, [*base, (b"access-control-allow-origin", b"*")], b'{"cors": "star"}\n'
    if rest == "echo":
        fields = [*base, (b"vary", b"Origin")]
        if origin:
            fields.append((b"access-control-allow-origin", origin))
        return 200, fields, b'{"cors": "echo"}\n'
    return _not_found(req, rest)


def _not_found(req: DemoRequest, rest: str) -> Answer:
    return 404, [(b"content-type", b"text/plain"), (b"cache-control", b"max-age=10")], b"not found\n"


ROUTES: dict[str, Callable[[DemoRequest, str], Answer]] = {
    "": _index, "bytes": _bytes, "nostore": _nostore, "revalidate": _revalidate, "stream": _stream,
    "slow": _slow, "status": _status, "headers": _headers, "cors": _cors,
}

INDEX_HTML = b"""<!doctype html>
<html><head><meta charset="utf-8"><title>edgeproxy demo origin</title></head>
<body><h1>edgeproxy demo origin</h1>
<p>This page came from the embedded demo origin. Request it twice and look at the
<code>Cache-Status</code> and <code>Age</code> response headers.</p>
<ul>
<li><a href="/bytes/1024">/bytes/1024</a> &mdash; 1 KiB, public, max-age=3600, ETag</li>
<li><a href="/nostore/1024">/nostore/1024</a> &mdash; never stored</li>
<li><a href="/revalidate/1024">/revalidate/1024</a> &mdash; max-age=0, revalidated with 304</li>
<li><a href="/stream/1048576">/stream/1048576</a> &mdash; chunked, streamed</li>
<li><a href="/slow?ms=500">/slow?ms=500</a> &mdash; slow origin (try concurrent misses)</li>
<li><a href="/cors/star">/cors/star</a> &mdash; Access-Control-Allow-Origin: *</li>
<li><a href="/cors/echo">/cors/echo</a> &mdash; echoes Origin, Vary: Origin</li>
<li><a href="/headers">/headers</a> &mdash; the request as the origin saw it</li>
</ul></body></html>
"""


def route(req: DemoRequest) -> Answer:
    first, _, rest = req.path.lstrip("/").partition("/")
    handler = ROUTES.get(first, _not_found)
    try:
        return handler(req, rest)
    except ValueError:
        return 400, [(b"content-type", b"text/plain")], b"bad parameter\n"


class DemoOriginProtocol(asyncio.Protocol):
    """One h11 server connection; requests are answered one at a time, in order."""

    def __init__(self) -> None:
        self.conn = h11.Connection(h11.SERVER)
        self.transport: asyncio.Transport | None = None
        self.request: h11.Request | None = None
        self.busy = False
        self.can_write = asyncio.Event()
        self.can_write.set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports aren't subclasses
        set_nodelay(transport)

    def data_received(self, data: bytes) -> None:
        self.conn.receive_data(data)
        self._pump()

    def eof_received(self) -> bool | None:
        self.conn.receive_data(b"")
        self._pump()
        return None

    def pause_writing(self) -> None:
        self.can_write.clear()

    def resume_writing(self) -> None:
        self.can_write.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.can_write.set()

    def _pump(self) -> None:
        if self.busy or self.transport is None or self.transport.is_closing():
            return
        try:
            while True:
                event = self.conn.next_event()
                if isinstance(event, h11.Request):
                    self.request = event
                elif isinstance(event, h11.EndOfMessage) and self.request is not None:
                    self.busy = True
                    asyncio.get_running_loop().create_task(self._answer(self.request))
                    return
                elif event is h11.PAUSED and self.conn.our_state is h11.DONE:
                    self.conn.start_next_cycle()
                elif isinstance(event, h11.ConnectionClosed):
                    self.transport.close()
                    return
                elif event is h11.NEED_DATA or event is h11.PAUSED:
                    return
        except h11.RemoteProtocolError:
            self.transport.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            self.transport.close()

    async def _answer(self, event: h11.Request) -> None:
        target = event.target.decode("latin-1")
        path, _, query = target.partition("?")
        req = DemoRequest(event.method, path, query, list(event.headers))
        status, headers, body = route(req)
        await self._send(status, headers, body, event.method == b"HEAD")

    async def _send(self, status: int, headers: Headers, body: Body, head_only: bool) -> None:
        assert self.transport is not None
        fields = [(b"date", formatdate(usegmt=True).encode()), (b"server", b"edgeproxy-demo-origin"), *headers]
        if isinstance(body, bytes) and status not in (204, 304):
            fields.append((b"content-length", b"%d" % len(body)))
        try:
            head = self.conn.send(h11.Response(status_code=status, headers=fields))
            if isinstance(body, bytes):
                if body and not head_only:
                    head += self.conn.send(h11.Data(data=body))
                self.transport.write(head + self.conn.send(h11.EndOfMessage()))
            else:
                self.transport.write(head)
                if not head_only:
                    async for chunk in body:
                        await self.can_write.wait()
                        if self.transport.is_closing():
                            return
                        self.transport.write(self.conn.send(h11.Data(data=chunk)))
                self.transport.write(self.conn.send(h11.EndOfMessage()))
        except h11.LocalProtocolError:
            self.transport.close()
            return
        self.busy = False
        if self.conn.our_state is h11.MUST_CLOSE:
            self.transport.close()
            return
        self._pump()


async def serve_demo_origin(host: str, port: int) -> asyncio.AbstractServer:
    loop = asyncio.get_running_loop()
    return await loop.create_server(DemoOriginProtocol, host, port, reuse_address=True)


def run(host: str, port: int) -> None:
    import uvloop

    async def main() -> None:
        server = await serve_demo_origin(host, port)
        async with server:
            await server.serve_forever()

    uvloop.run(main())
