"""One exchange: a request from a client answered from the cache, locally, or through the origin.

Rules kept here:
- ``begin`` runs synchronously inside ``data_received``: whatever it can answer without waiting (cache hits,
  errors, preflights) it answers there with one write; otherwise it starts one task running ``forward``.
- The response framing to the client is derived again: Content-Length when the origin's length is known, chunked
  for HTTP/1.1 clients otherwise, close-delimited for HTTP/1.0 clients.
- Once response bytes have gone out, an origin failure can't become a 502: the client connection is aborted so a
  truncated body can't pass for a complete one.
- The origin connection is always handed back to the pool, which closes it unless both sides are cleanly done.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import h11

from edgeproxy.errors import (
    BadRequest,
    ClientError,
    ExpectationFailed,
    LoopDetected,
    MisdirectedRequest,
    ProxyError,
)
from edgeproxy.http.headers import get
from edgeproxy.http.wire import serialize_head
from edgeproxy.proxy import forwarding
from edgeproxy.proxy.origin import OriginClosed, OriginConnection
from edgeproxy.proxy.parser import RequestHead
from edgeproxy.sites import normalize_host

if TYPE_CHECKING:
    from edgeproxy.config import SiteConfig
    from edgeproxy.proxy.client import ClientConnection
    from edgeproxy.proxy.edge import Edge

IDEMPOTENT: frozenset[bytes] = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})
NO_BODY_STATUS: frozenset[int] = frozenset({204, 304})


class ClientGone(Exception):
    """The client went away while we were writing to it."""


@dataclass(slots=True)
class Exchange:
    edge: Edge
    client: ClientConnection
    head: RequestHead
    site: SiteConfig
    host: str
    target: bytes
    started: float
    status: int = 0
    sent: int = 0
    cache: str = "-"
    origin_ms: float = 0.0


def begin(edge: Edge, client: ClientConnection, head: RequestHead) -> bool:
    """Answer now if possible (True), else start the exchange task (False)."""
    started = time.monotonic()
    try:
        ex = _prepare(edge, client, head, started)
    except ClientError as e:
        edge.write_error(client, e, None)
        edge.log_exchange(client, head, e.status, 0, "-", 0.0, started)
        return client.response_done(head.keep_alive and not e.close)
    answered = edge.answer_locally(ex)
    if answered:
        return client.response_done(head.keep_alive)
    client.task = edge.loop.create_task(forward(ex))
    return False


def _prepare(edge: Edge, client: ClientConnection, head: RequestHead, started: float) -> Exchange:
    target = head.target
    host_field = get(head.headers, b"host")
    if target[:1] != b"/":
        target, authority = _origin_form(target)
        if authority is not None:
            if host_field is not None and host_field.lower() != authority.lower():
                raise BadRequest("absolute-form target disagrees with Host")
            host_field = authority
    if host_field is None:
        raise BadRequest("no Host")
    host = normalize_host(host_field, client.scheme)
    if host is None:
        raise BadRequest("invalid Host")
    site = edge.sites.match(host)
    if site is None:
        raise MisdirectedRequest(f"no site for host {host}")
    if forwarding.is_loop(head.headers, edge.via):
        raise LoopDetected()
    expect = get(head.headers, b"expect")
    if expect is not None and expect.lower() != b"100-continue":
        raise ExpectationFailed()
    return Exchange(edge, client, head, site, host, target, started)


def _origin_form(target: bytes) -> tuple[bytes, bytes | None]:
    """Absolute-form (RFC 9112 §3.2.2) to origin-form plus its authority; ``*`` stays as is."""
    if target == b"*":
        return target, None
    scheme, sep, rest = target.partition(b"://")
    if not sep or scheme.lower() not in (b"http", b"https"):
        raise BadRequest("invalid request target")
    authority, slash, path = rest.partition(b"/")
    path = b"/" + path if slash else b"/"
    if b"?" in authority:
        authority, _, query = authority.partition(b"?")
        path = b"/?" + query
    if not authority or b"@" in authority:
        raise BadRequest("invalid authority in request target")
    return path, authority


async def forward(ex: Exchange) -> None:
    """The exchange task: send the request to the origin and relay the response."""
    edge, client, head = ex.edge, ex.client, ex.head
    keep_alive = head.keep_alive
    conn: OriginConnection | None = None
    try:
        conn, response = await send_request(ex)
        keep_alive = await relay(ex, conn, response) and keep_alive
    except ProxyError as e:
        if ex.status:  # the head is out: the body can't be mended, cut the connection
            client.transport.abort()
            keep_alive = False
        else:
            edge.write_error(client, e, ex)
            keep_alive = keep_alive and not e.close and client.body_done
        edge.note_origin_error(e)
    except ClientGone:
        keep_alive = False
    finally:
        if conn is not None:
            edge.pool.release(conn)
    edge.log(ex)
    client.exchange_done(keep_alive)


async def send_request(ex: Exchange) -> tuple[OriginConnection, h11.Response]:
    """Acquire an origin connection, send the request (streaming its body) and read the response head.

    A pooled connection that turns out closed is retried once on a new one, for idempotent requests without a body
    (RFC 9110 §9.2.2): a body already streamed can't be replayed.
    """
    edge, head, site = ex.edge, ex.head, ex.site
    address = edge.origin_address(site)
    retry = head.method in IDEMPOTENT and not head.has_body
    fields = edge.origin_request_fields(ex)
    for attempt in (1, 2):
        conn = await edge.pool.acquire(address, fresh=attempt == 2)
        t0 = time.monotonic()
        try:
            conn.send_head(head.method, ex.target, fields)
            if head.has_body:
                await _stream_request_body(ex, conn)
            conn.send_end()
            response = await conn.response_head(edge.config.origin.read_timeout)
            ex.origin_ms = (time.monotonic() - t0) * 1000
            return conn, response
        except OriginClosed:
            reused = conn.reused
            edge.pool.release(conn)
            if not (retry and reused and attempt == 1):
                raise
        except BaseException:
            edge.pool.release(conn)
            raise
    raise AssertionError("unreachable")


async def _stream_request_body(ex: Exchange, conn: OriginConnection) -> None:
    client = ex.client
    client.continue_due = ex.head.expect_continue
    while True:
        chunk = await client.read_body()
        if chunk is None:
            return
        await conn.send_body(chunk)


def client_framing(ex: Exchange, status: int, headers: list[tuple[bytes, bytes]]) -> tuple[bytes, int | None, bool]:
    """(framing field lines, content length or None, chunked) for the response to the client."""
    no_body = ex.head.method == b"HEAD" or status in NO_BODY_STATUS or status < 200
    length = get(headers, b"content-length")
    chunked_from_origin = get(headers, b"transfer-encoding") is not None
    if no_body:
        if length is not None and not chunked_from_origin:
            return b"content-length: " + length + b"\r\n", 0, False
        return b"", 0, False
    if length is not None and not chunked_from_origin:
        return b"content-length: " + length + b"\r\n", int(length), False
    if ex.head.http_version == b"1.1":
        return b"transfer-encoding: chunked\r\n", None, True
    return b"", None, False  # close-delimited for HTTP/1.0 clients


async def relay(ex: Exchange, conn: OriginConnection, response: h11.Response) -> bool:
    """Write the origin's response to the client, streaming the body. Returns whether keep-alive may continue."""
    edge, client = ex.edge, ex.client
    status = response.status_code
    origin_headers = list(response.headers)
    framing, length, chunked = client_framing(ex, status, origin_headers)
    fields = forwarding.response_fields(origin_headers, edge.via)
    ex.cache = "pass"
    close_delimited = length is None and not chunked
    head = serialize_head(status, fields, response.reason) + edge.cache_status_line(ex) + framing
    client.transport.write(head + connection_line(ex.head, close_delimited) + b"\r\n")
    ex.status = status
    timeout = edge.config.origin.read_timeout
    write = client.transport.write
    async for chunk in conn.body(timeout):
        if client.closed:
            raise ClientGone()
        write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
        ex.sent += len(chunk)
        if client.write_paused:
            await client.drain()
    if chunked:
        write(b"0\r\n\r\n")
    return not close_delimited


def connection_line(head: RequestHead, close: bool) -> bytes:
    """The Connection field the client needs to know what happens next (RFC 9112 §9.3)."""
    if close or not head.keep_alive:
        return b"connection: close\r\n"
    if head.http_version == b"1.0":
        return b"connection: keep-alive\r\n"
    return b""
