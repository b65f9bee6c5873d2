"""The origin side of an exchange: sending the request (with its body) and relaying the response.

Rules kept here:
- A request body is read up to ``[server] request_buffer`` before anything reaches the origin, so a malformed body
  gets its 400 with nothing forwarded and a fully buffered request can be retried on a stale pooled connection.
- The response framing to the client is derived again: Content-Length when the origin's length is known, chunked
  for HTTP/1.1 clients otherwise, close-delimited for HTTP/1.0 clients.
- A copy is kept while streaming only when the response may be stored and fits ``max_object_size``; the entry is
  built after the origin's EndOfMessage, never from a body that ended early, a desynchronized connection or a
  close-delimited body.
- Fields addressed to this cache (``EDGE_CONSUMED``) are consumed here, never delivered, except to a cluster peer
  (another cache of ours, which stores the response by them).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from edgeproxy import cors
from edgeproxy.cache.entry import ENTRY_OVERHEAD
from edgeproxy.cache.freshness import current_age
from edgeproxy.cache.outcome import MISS, PASS
from edgeproxy.cache.policy import (
    SAFE_METHODS,
    Decision,
    Miss,
    Pass,
    Revalidate,
    invalidation_keys,
)
from edgeproxy.cache.storability import freshen, make_entry, storable, validates
from edgeproxy.errors import OriginError
from edgeproxy.http.headers import get
from edgeproxy.http.wire import serialize_head
from edgeproxy.proxy import forwarding
from edgeproxy.proxy.delivery import connection_line, deliver
from edgeproxy.proxy.origin import OriginAddress, OriginClosed, OriginClosedUnsent, OriginConnection, body_chunk
from edgeproxy.proxy.origin_parser import ResponseHead

if TYPE_CHECKING:
    from edgeproxy.cache.entry import Entry
    from edgeproxy.cache.key import CacheRequest
    from edgeproxy.cache.store import Store
    from edgeproxy.proxy.edge import Edge, SiteRuntime
    from edgeproxy.proxy.exchange import Exchange

IDEMPOTENT: frozenset[bytes] = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})
NO_BODY_STATUS: frozenset[int] = frozenset({204, 304})
CLIENT_CONDITIONALS: frozenset[bytes] = frozenset(
    {b"if-none-match", b"if-modified-since", b"if-match", b"if-unmodified-since", b"if-range", b"range"})
# The stored head may exceed the relayed fields by a Content-Length and a Date line (storability.stored_headers).
STORED_HEAD_EXTRA = 64
# Fields addressed to this cache (RFC 9213 targeted fields, purge tags): consumed here, not sent on.
EDGE_CONSUMED: frozenset[bytes] = frozenset(
    {b"surrogate-key", b"cache-tag", b"surrogate-control", b"cdn-cache-control", b"edgeproxy-cache-control"})


class ClientGone(Exception):
    """The client went away while we were writing to it."""


class PassInstead(Exception):
    """A ranged miss whose full response can't be kept: the range is fetched on its own, uncached."""


async def send_request(ex: Exchange, fields: list[tuple[bytes, bytes]], address: OriginAddress | None = None,
                       connect_timeout: float | None = None) -> tuple[OriginConnection, ResponseHead]:
    """Acquire an origin connection, send the request and read the response head.

    ``address``: where to, instead of the site's origin (a cluster peer), with its own ``connect_timeout``.

    A request body is read up to ``[server] request_buffer`` before anything goes to the origin (like nginx's
    proxy_request_buffering): a body that turns out malformed gets its 400 with nothing forwarded, a slow uploader
    doesn't hold an origin connection, and a fully buffered request can be replayed. A larger body is streamed
    on after the buffered part.
    A pooled connection that turns out closed is retried once on a new one, for idempotent requests whose body (if
    any) is fully buffered (RFC 9110 §9.2.2): a body already streamed can't be replayed.
    """
    edge, head = ex.edge, ex.head
    address = address or ex.site.address
    buffered, complete = await _buffer_request_body(ex) if head.has_body else ([], True)
    retry = head.method in IDEMPOTENT and complete
    for attempt in (1, 2):
        conn = await edge.pool.acquire(address, fresh=attempt == 2, connect_timeout=connect_timeout)
        t0 = time.monotonic()
        try:
            conn.send_head(head.method, ex.target, fields)
            for chunk in buffered:
                await conn.send_body(chunk)
            if not complete:
                await _stream_request_body(ex, conn)
            conn.send_end()
            response = await conn.response_head(edge.config.origin.read_timeout)
            ex.origin_ms = (time.monotonic() - t0) * 1000
            return conn, response
        except OriginClosed as e:
            # Retried once on a new connection: any request the origin never saw, and an idempotent, fully
            # buffered one that a pooled connection (likely closed while idle) may have lost.
            unsent = isinstance(e, OriginClosedUnsent)
            again = attempt == 1 and (unsent or (retry and conn.reused))
            edge.pool.release(conn)
            if not again:
                raise
        except BaseException:
            edge.pool.release(conn)
            raise
    raise AssertionError("unreachable")


async def _buffer_request_body(ex: Exchange) -> tuple[list[bytes], bool]:
    """Up to ``request_buffer`` bytes of the request body; True when that is the whole body."""
    client, limit = ex.client, ex.edge.config.server.request_buffer
    client.continue_due = ex.head.expect_continue
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = await client.read_body()
        if chunk is None:
            return chunks, True
        chunks.append(chunk)
        size += len(chunk)
    return chunks, False


async def _stream_request_body(ex: Exchange, conn: OriginConnection) -> None:
    client = ex.client
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


def _cache_status(ex: Exchange, decision: Decision, status: int, stored: bool) -> bytes:
    match decision:
        case Pass(detail=detail):
            return ex.edge.cache_status.forward(detail, fwd_status=status)
        case Miss(detail=detail) | Revalidate(detail=detail):
            return ex.edge.cache_status.forward(detail, fwd_status=status, stored=stored)
    return ex.edge.cache_status.forward("miss", fwd_status=status)


async def relay(ex: Exchange, conn: OriginConnection, response: ResponseHead, decision: Decision,
                cacheable: bool, request_time: float, generation: int) -> bool:
    """Write the origin's response to the client, streaming the body and keeping a copy when it may be stored.

    Returns whether keep-alive may continue.
    """
    edge, site = ex.edge, ex.site
    status = response.status
    origin_headers = response.headers
    if cacheable and status == 200 and get(ex.head.headers, b"range") is not None:
        return await _answer_range_from_copy(ex, conn, response, decision, request_time, generation)
    framing, length, chunked = client_framing(ex, status, origin_headers)
    fields = response_fields(edge, site, origin_headers)
    reason = storable(ex.creq, status, origin_headers, site.policy) if cacheable else "pass"
    limit = body_room(edge.store, status, fields) if reason is None else 0  # only a kept copy needs it
    if reason is None and length is not None and length > limit:
        reason = "too-large"
    if cacheable and reason is not None:
        edge.store.count_not_stored(reason)
        ex.uncacheable = True
    keep_copy = reason is None
    ex.cache = MISS if cacheable else PASS
    close_delimited = length is None and not chunked
    # A cluster peer is a cache of ours: it gets the fields addressed to caches (lifetime, purge tags) as sent.
    client_fields = fields if ex.internal is not None else [f for f in fields if f[0] not in EDGE_CONSUMED]
    # "stored" goes out before the body: claim it only when the length says the body fits the store and no purge
    # came in since the fetch began (the store would refuse the copy); a body of unknown length may still outgrow
    # max_object_size (it is stored all the same when it doesn't).
    announce_stored = keep_copy and length is not None and edge.store.generation() == generation
    head = (serialize_head(status, client_fields, response.reason) + b"cache-status: "
            + _cache_status(ex, decision, status, announce_stored) + b"\r\n" + ex.cors + framing
            + connection_line(ex.head, close_delimited))
    ex.status = status
    parts = await _stream_body(ex, conn, head + b"\r\n", chunked, limit if keep_copy else -1)
    if parts is not None and (conn.answered_twice() or not _self_delimited(status, origin_headers)):
        # A second response glued after this one (a desynchronized origin), or a body only the closing connection
        # delimits (truncation undetectable): delivered but never stored (docs/hardening.md, Broken origins). Mere
        # excess bytes past Content-Length don't disqualify the message: RFC 9112 §6.3 frames it by its length,
        # as nginx, Varnish and Squid do; the connection is not reused either way.
        parts = None
        ex.uncacheable = True
        edge.store.count_not_stored("framing")
    if parts is not None:
        _, ex.stored = store_response(edge, site, ex.creq, status, fields, b"".join(parts), request_time, generation,
                                      forced=_forced(decision))
    if ex.head.method not in SAFE_METHODS:
        _invalidate(ex, status, origin_headers)
    return not close_delimited


async def _answer_range_from_copy(ex: Exchange, conn: OriginConnection, response: ResponseHead, decision: Decision,
                                  request_time: float, generation: int) -> bool:
    """A Range request that missed: the full response was asked for (concurrent ones collapse onto it); it is read
    whole, stored, and the client's range answered from the copy (cache/ranges.py), so a burst of ranged requests
    costs the origin one fetch. One that can't be kept raises PassInstead before any byte reached the client."""
    edge, site = ex.edge, ex.site
    status, origin_headers = response.status, response.headers
    fields = response_fields(edge, site, origin_headers)
    reason = storable(ex.creq, status, origin_headers, site.policy)
    limit = body_room(edge.store, status, fields)
    length = get(origin_headers, b"content-length")
    if reason is None and length is not None and int(length) > limit:
        reason = "too-large"  # decided before reading: no huge body is fetched for a slice of it
    parts = await read_body(conn, limit, edge.config.origin.read_timeout) if reason is None else None
    if reason is None and parts is None:
        reason = "too-large"
    elif parts is not None and (conn.answered_twice() or not _self_delimited(status, origin_headers)):
        reason = "framing"
    if reason is not None or parts is None:
        edge.store.count_not_stored(reason or "too-large")
        ex.uncacheable = True
        raise PassInstead(reason)
    entry, ex.stored = store_response(edge, site, ex.creq, status, fields, b"".join(parts), request_time, generation,
                                      forced=_forced(decision))
    ex.cache = MISS
    deliver(ex, entry, current_age(entry, edge.clock()), _cache_status(ex, decision, status, ex.stored))
    return True


def _forced(decision: Decision) -> bool:
    return isinstance(decision, Miss | Revalidate) and decision.forced


async def read_body(conn: OriginConnection, limit: int, timeout: float) -> list[bytes] | None:
    """The whole response body in parts, or None as soon as it exceeds ``limit`` (the rest is left unread)."""
    parts, size = [], 0
    async for chunk in conn.body(timeout):
        size += len(chunk)
        if size > limit:
            return None
        parts.append(chunk)
    return parts


async def _stream_body(ex: Exchange, conn: OriginConnection, head: bytes, chunked: bool,
                       limit: int) -> list[bytes] | None:
    """Send ``head`` and the body to the client; the body's parts when a copy of at most ``limit`` bytes was kept
    (``limit`` < 0: keep none).

    What the origin's bytes already hold goes out in one write (head, body, chunked terminator), and only what is
    here is written before waiting for more, so the head is never held back for a body still in flight (time to
    first byte). Measured on a 1 KiB pass-through miss: one write instead of two, ~163 -> ~151 µs of proxy CPU.
    """
    client, edge = ex.client, ex.edge
    write, timeout = client.transport.write, edge.config.origin.read_timeout
    parts: list[bytes] | None = [] if limit >= 0 else None
    pending = [head]  # bytes for the client not yet written
    size = 0
    try:
        while True:
            event = conn.poll()
            if event is None:  # nothing more is here: send what is, then wait
                write(b"".join(pending))
                pending.clear()
                if client.flow.paused:
                    await client.drain()
                event = await conn.next_event(timeout)
            if (chunk := body_chunk(event)) is None:
                break
            if client.closed:
                raise ClientGone()
            pending.append(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
            ex.sent += len(chunk)
            if parts is not None:
                size += len(chunk)
                if size > limit:
                    parts = None
                    ex.uncacheable = True
                    edge.store.count_not_stored("too-large")
                else:
                    parts.append(chunk)
    except OriginError:
        if not client.closed:
            write(b"".join(pending))  # what arrived before the broken part goes out, as it would have chunk by chunk
        raise
    if chunked:
        pending.append(b"0\r\n\r\n")
    if pending:
        write(b"".join(pending))
    return parts


def body_room(store: Store, status: int, fields: list[tuple[bytes, bytes]]) -> int:
    """The largest body the store will take with these fields. It charges head + body + ENTRY_OVERHEAD against
    max_object_size and capacity (cache/store.py); judging by the body alone would announce "stored" for a body
    of exactly max_object_size that the store then refuses."""
    head = len(serialize_head(status, fields)) + STORED_HEAD_EXTRA
    return min(store.max_object_size, store.capacity) - ENTRY_OVERHEAD - head


def _self_delimited(status: int, headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether the response's own framing ends its body: a 204 or 304 has none to end (RFC 9112 §6.3)."""
    return status in NO_BODY_STATUS or get(headers, b"content-length") is not None or get(
        headers, b"transfer-encoding") is not None


def response_fields(edge: Edge, site: SiteRuntime, origin_headers: list[tuple[bytes, bytes]]
                    ) -> list[tuple[bytes, bytes]]:
    """The origin's end-to-end fields as this site delivers and stores them (Via added, CORS per mode)."""
    fields = forwarding.response_fields(origin_headers, edge.via)
    return cors.strip_origin_cors(fields) if site.cors is not None else cors.fix_origin_response(fields)


def store_response(edge: Edge, site: SiteRuntime, creq: CacheRequest, status: int, fields: list[tuple[bytes, bytes]],
                   body: bytes, request_time: float, generation: int, *, forced: bool = False
                   ) -> tuple[Entry, bool]:
    """Make and store the entry for a complete response to ``creq`` (``fields`` from ``response_fields``): the
    entry and whether the store took it. ``forced``: a client's request directives sent it to the origin
    (``Entry.validated_at``)."""
    extra_vary = () if site.cors is not None else cors.origin_mode_vary(
        get(creq.headers, b"origin") is not None, fields)
    response_time = edge.clock()
    entry = make_entry(creq, status, [*fields, (b"content-length", b"%d" % len(body))], body, request_time,
                       response_time, site.policy, extra_vary)
    if forced:
        entry.validated_at = response_time
    return entry, edge.store.put(entry, since=generation)


def freshen_stored(edge: Edge, site: SiteRuntime, entry: Entry, headers: list[tuple[bytes, bytes]],
                   request_time: float, response_time: float, generation: int, *, forced: bool = False
                   ) -> tuple[Entry, bool] | None:
    """The one place a 304 is applied (client-facing and background revalidation alike): the freshened entry and
    whether the store took it, or None when the 304 is about another representation (RFC 9111 §4.3.4).
    ``forced``: a client's request directives asked for this validation (``Entry.validated_at``)."""
    if not validates(entry, headers):
        return None
    fresh = freshen(entry, headers, request_time, response_time, site.policy)
    if forced:
        fresh.validated_at = response_time
    return fresh, edge.store.put(fresh, since=generation)


def _invalidate(ex: Exchange, status: int, origin_headers: list[tuple[bytes, bytes]]) -> None:
    """RFC 9111 §4.4: after an unsafe method succeeds, stored responses for its URI (and Location /
    Content-Location on the same host) must be validated before reuse."""
    for key in invalidation_keys(ex.creq, status, origin_headers, ex.site.policy.query_mode):
        for entry in ex.edge.store.get(key):
            ex.edge.store.invalidate(entry)
