"""One exchange: a request answered from the cache, locally, or through the origin (and maybe stored).

Rules kept here:
- ``begin`` runs synchronously inside ``data_received``: whatever it can answer without waiting (fresh hits,
  stale-while-revalidate hits, errors, preflights) it answers there with one write; anything else becomes one
  task running ``run``. The lookup's outcome is a closed set (cache/policy.py) dispatched with ``match``.
- On the way to the origin for a cacheable GET, the client's own conditionals and Range are dropped: we want a full
  response to store, and answer the client's conditionals from the entry (RFC 9111 §4.3.2). A Range request on
  a miss passes through untouched (no full fetch of a huge object just to serve a slice).
- The response framing to the client is derived again: Content-Length when the origin's length is known, chunked
  for HTTP/1.1 clients otherwise, close-delimited for HTTP/1.0 clients.
- Once response bytes have gone out, an origin failure can't become a 502: the client connection is aborted so a
  truncated body can't pass for a complete one; and nothing incomplete is stored (the entry is built only after
  the origin's EndOfMessage).
- The origin connection is always handed back to the pool, which closes it unless both sides are cleanly done.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import h11

from edgeproxy import cors
from edgeproxy.cache.entry import ENTRY_OVERHEAD
from edgeproxy.cache.freshness import current_age, ttl
from edgeproxy.cache.key import CacheRequest, primary_key
from edgeproxy.cache.policy import (
    SAFE_METHODS,
    Decision,
    Hit,
    Miss,
    OnlyIfCachedMiss,
    Pass,
    Revalidate,
    StaleHit,
    can_serve_stale_on_error,
    counts_as_error,
    invalidation_keys,
    lookup,
)
from edgeproxy.cache.storability import freshen, make_entry, storable, validates
from edgeproxy.errors import (
    BadRequest,
    ClientError,
    ExpectationFailed,
    Forbidden,
    LoopDetected,
    OriginError,
    ProxyError,
)
from edgeproxy.http.headers import get
from edgeproxy.http.wire import serialize_head
from edgeproxy.proxy import forwarding
from edgeproxy.proxy.delivery import connection_line, deliver, write_answer
from edgeproxy.proxy.origin import OriginClosed, OriginConnection
from edgeproxy.proxy.parser import RequestHead
from edgeproxy.sites import normalize_host

if TYPE_CHECKING:
    from edgeproxy.proxy.client import ClientConnection
    from edgeproxy.proxy.edge import Edge, SiteRuntime

log = logging.getLogger("edgeproxy.exchange")

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


@dataclass(slots=True)
class Exchange:
    edge: Edge
    client: ClientConnection
    head: RequestHead
    site: SiteRuntime
    host: str
    target: bytes
    started: float
    creq: CacheRequest
    key: str = ""
    cors: bytes = b""  # edge-mode CORS field lines for this request
    status: int = 0
    sent: int = 0
    cache: str = "-"  # the metrics/log label: hit, stale, miss, revalidated, pass, collapsed, error
    origin_ms: float = 0.0
    stored: bool = False
    uncacheable: bool = False  # the origin's complete answer is one we won't store (hit-for-miss)


# ---- the synchronous part ----

def begin(edge: Edge, client: ClientConnection, head: RequestHead) -> bool:
    """Answer now if possible (True), else start the exchange task (False)."""
    started = time.monotonic()
    try:
        ex = _prepare(edge, client, head, started)
    except ClientError as e:
        edge.write_error(client, e, None)
        edge.log_exchange(client, head, e.status, 0, "error", 0.0, started)
        return client.response_done(head.keep_alive and not e.close)
    if edge.answer_locally(ex) or _edge_cors(ex):
        return client.response_done(head.keep_alive)
    if head.method == b"GET" or head.method == b"HEAD":
        decision = lookup(ex.creq, edge.store.get(ex.key), time.time(), ex.site.policy)
    else:
        decision = Pass("method")
    if type(decision) is Hit:  # the hot path skips the pattern match below (measured: ~1 µs)
        ex.cache = "hit"
        deliver(ex, decision.entry, decision.age, edge.cache_status.hit(decision.ttl))
        edge.log(ex)
        return client.response_done(head.keep_alive)
    match decision:
        case Hit(entry=entry, age=age, ttl=left):
            ex.cache = "hit"
            deliver(ex, entry, age, edge.cache_status.hit(left))
        case StaleHit(entry=entry, age=age, revalidate=revalidate):
            ex.cache = "stale"
            deliver(ex, entry, age, edge.cache_status.hit(entry.freshness_lifetime - age, detail="stale"))
            if revalidate:
                edge.revalidate_in_background(ex, entry)
        case OnlyIfCachedMiss():
            ex.cache = "miss"
            write_answer(ex, 504, [(b"content-length", b"0")], b"", edge.cache_status.plain(detail="only-if-cached"))
        case _:
            client.task = edge.loop.create_task(run(ex, decision))
            return False
    edge.log(ex)
    return client.response_done(head.keep_alive)


def _prepare(edge: Edge, client: ClientConnection, head: RequestHead, started: float) -> Exchange:
    fields = dict(head.headers)  # one C-speed pass; the parser already refused duplicate Host fields
    target = head.target
    host_field = fields.get(b"host")
    if target[:1] != b"/":
        target, authority = _origin_form(target)
        if authority is not None:
            if host_field is not None and normalize_host(host_field, client.scheme) != normalize_host(
                    authority, client.scheme):
                raise BadRequest("absolute-form target disagrees with Host")
            host_field = authority
    if host_field is None:
        raise BadRequest("no Host")
    host, site = edge.resolve_host(host_field, client.scheme)
    if b"via" in fields and forwarding.is_loop(head.headers, edge.via):
        raise LoopDetected()
    expect = fields.get(b"expect")
    if expect is not None and expect.lower() != b"100-continue":
        raise ExpectationFailed()
    creq = CacheRequest(head.method, client.scheme, host, target, head.headers)
    return Exchange(edge, client, head, site, host, target, started, creq, primary_key(creq, site.policy.query_mode))


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


def _edge_cors(ex: Exchange) -> bool:
    """Edge-mode CORS: answer preflights and refused origins here; otherwise note the fields to deliver."""
    policy = ex.site.cors
    if policy is None:
        return False
    headers = ex.head.headers
    origin = get(headers, b"origin")
    if cors.is_preflight(ex.head.method, headers):
        pre = policy.preflight(origin, get(headers, b"access-control-request-method") or b"",
                               get(headers, b"access-control-request-headers"))
        ex.cache = "pass"
        # pre.headers carries its own framing (Content-Length: 0 on the 403, none on the 204).
        write_answer(ex, pre.status, pre.headers, b"", ex.edge.cache_status.plain(detail="preflight"))
        ex.edge.log(ex)
        return True
    ex.cors = policy.response_fields(origin)
    if policy.reject(origin):
        ex.cache = "error"
        ex.edge.write_error(ex.client, Forbidden("origin not allowed"), ex)
        ex.edge.log(ex)
        return True
    return False


# ---- the task ----

async def run(ex: Exchange, decision: Decision) -> None:
    """The exchange task: collapse, fetch, store, answer; every failure gets a defined outcome."""
    edge, client = ex.edge, ex.client
    keep_alive = ex.head.keep_alive
    try:
        keep_alive = await _from_origin(ex, decision) and keep_alive
    except ProxyError as e:
        keep_alive = _failed(ex, decision, e) and keep_alive
    except ClientGone:
        keep_alive = False
    except Exception:
        log.exception("exchange failed: %s %r", ex.head.method, ex.target)
        client.transport.abort()
        keep_alive = False
    edge.log(ex)
    client.exchange_done(keep_alive)


def _failed(ex: Exchange, decision: Decision, error: ProxyError) -> bool:
    """An origin or client error: stale-if-error, a short error response, or an aborted connection."""
    edge, client = ex.edge, ex.client
    if isinstance(error, OriginError):
        edge.note_origin_error(error)
    if ex.status:  # the head is out: the body can't be mended, cut the connection
        client.transport.abort()
        return False
    if isinstance(decision, Revalidate) and isinstance(error, OriginError) and _stale_on_error(ex, decision, error):
        return True
    ex.cache = "error"
    edge.write_error(client, error, ex)
    return not error.close and client.body_done


def _stale_on_error(ex: Exchange, decision: Revalidate, error: OriginError) -> bool:
    """stale-if-error for an origin failure. RFC 5861 §4 defines an error by the status the client would get: an
    origin that can't be reached, times out or hangs up (our 502/503/504) counts as much as an origin 503."""
    entry = decision.entry
    if not counts_as_error(error.status) or not can_serve_stale_on_error(entry, time.time(), ex.creq, ex.site.policy):
        return False
    ex.cache = "stale"
    cache_status = ex.edge.cache_status.forward("stale", detail="stale-if-error " + error.detail)
    deliver(ex, entry, current_age(entry, time.time()), cache_status)
    return True


async def _from_origin(ex: Exchange, decision: Decision) -> bool:
    edge = ex.edge
    cacheable = isinstance(decision, Miss | Revalidate) and ex.head.method == b"GET" and not (
        isinstance(decision, Miss) and get(ex.head.headers, b"range") is not None)
    if not cacheable or not edge.config.cache.collapse:
        return await _fetch(ex, decision, cacheable)
    collapser = edge.collapser
    waiting = collapser.inflight.get(ex.key)
    if waiting is not None and await collapser.wait(waiting):
        again = lookup(ex.creq, edge.store.get(ex.key), time.time(), ex.site.policy)
        match again:
            case Hit(entry=entry, age=age, ttl=left):
                ex.cache = "collapsed"
                deliver(ex, entry, age, edge.cache_status.hit(left, detail="collapsed"))
                return True
            case Miss() | Revalidate():
                decision = again
    leading = collapser.lead(ex.key)
    try:
        return await _fetch(ex, decision, cacheable)
    finally:
        if leading:
            collapser.done(ex.key, ex.uncacheable)


async def _fetch(ex: Exchange, decision: Decision, cacheable: bool) -> bool:
    edge = ex.edge
    generation = edge.store.generation()
    fields = edge.origin_request_fields(ex)
    if cacheable:
        fields = [(k, v) for k, v in fields if k not in CLIENT_CONDITIONALS]
        if isinstance(decision, Revalidate):
            fields += decision.headers_to_add
    request_time = time.time()
    conn, response = await send_request(ex, fields)
    response_time = time.time()
    edge.counters.origin_response(response_time - request_time)
    try:
        if isinstance(decision, Revalidate):
            done = await _revalidated(ex, decision, conn, response, request_time, response_time, generation)
            if done is not None:
                return done
        return await relay(ex, conn, response, decision, cacheable, request_time, generation)
    finally:
        edge.pool.release(conn)


async def _revalidated(ex: Exchange, decision: Revalidate, conn: OriginConnection, response: h11.Response,
                       request_time: float, response_time: float, generation: int) -> bool | None:
    """Handle the origin's answer to our conditional request; None means relay it as a normal response."""
    edge, entry, policy = ex.edge, decision.entry, ex.site.policy
    status = response.status_code
    headers = list(response.headers)
    if status == 304:
        async for _ in conn.body(edge.config.origin.read_timeout):
            pass
        if not validates(entry, headers):
            # The 304 is about another representation (§4.3.4): ask again without conditions.
            return await _fetch(ex, Miss("stale"), cacheable=True)
        fresh = freshen(entry, headers, request_time, response_time, policy)
        ex.stored = edge.store.put(fresh, since=generation)
        ex.cache = "revalidated"
        now = time.time()
        deliver(ex, fresh, current_age(fresh, now),
                edge.cache_status.forward(decision.detail, fwd_status=304, stored=ex.stored, ttl=ttl(fresh, now)))
        return True
    if counts_as_error(status) and can_serve_stale_on_error(entry, time.time(), ex.creq, policy):
        conn.close()  # don't read the error body
        ex.cache = "stale"
        deliver(ex, entry, current_age(entry, time.time()),
                edge.cache_status.forward("stale", fwd_status=status, detail="stale-if-error"))
        return True
    return None


async def send_request(ex: Exchange, fields: list[tuple[bytes, bytes]]) -> tuple[OriginConnection, h11.Response]:
    """Acquire an origin connection, send the request and read the response head.

    A request body is read up to ``[server] request_buffer`` before anything goes to the origin (like nginx's
    proxy_request_buffering): a body that turns out malformed gets its 400 with nothing forwarded, a slow uploader
    doesn't hold an origin connection, and a fully buffered request can be replayed. A larger body is streamed
    on after the buffered part.
    A pooled connection that turns out closed is retried once on a new one, for idempotent requests whose body (if
    any) is fully buffered (RFC 9110 §9.2.2): a body already streamed can't be replayed.
    """
    edge, head = ex.edge, ex.head
    address = ex.site.address
    buffered, complete = await _buffer_request_body(ex) if head.has_body else ([], True)
    retry = head.method in IDEMPOTENT and complete
    for attempt in (1, 2):
        conn = await edge.pool.acquire(address, fresh=attempt == 2)
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
        except OriginClosed:
            reused = conn.reused
            edge.pool.release(conn)
            if not (retry and reused and attempt == 1):
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


async def relay(ex: Exchange, conn: OriginConnection, response: h11.Response, decision: Decision,
                cacheable: bool, request_time: float, generation: int) -> bool:
    """Write the origin's response to the client, streaming the body and keeping a copy when it may be stored.

    Returns whether keep-alive may continue.
    """
    edge, client, site = ex.edge, ex.client, ex.site
    status = response.status_code
    origin_headers = list(response.headers)
    framing, length, chunked = client_framing(ex, status, origin_headers)
    fields = response_fields(ex, origin_headers)
    reason = storable(ex.creq, status, origin_headers, site.policy) if cacheable else "pass"
    limit = body_room(ex, status, fields) if reason is None else 0  # only a kept copy needs it
    if reason is None and length is not None and length > limit:
        reason = "too-large"
    if cacheable and reason is not None:
        edge.store.count_not_stored(reason)
        ex.uncacheable = True
    keep_copy = reason is None
    ex.cache = "miss" if cacheable else "pass"
    close_delimited = length is None and not chunked
    client_fields = [f for f in fields if f[0] not in EDGE_CONSUMED]
    # "stored" goes out before the body: claim it only when the length says the body fits the store; a body of
    # unknown length may still outgrow max_object_size (it is stored all the same when it doesn't).
    announce_stored = keep_copy and length is not None
    head = (serialize_head(status, client_fields, response.reason) + b"cache-status: "
            + _cache_status(ex, decision, status, announce_stored) + b"\r\n" + ex.cors + framing
            + connection_line(ex.head, close_delimited))
    client.transport.write(head + b"\r\n")
    ex.status = status
    parts: list[bytes] | None = [] if keep_copy else None
    size = 0
    write = client.transport.write
    async for chunk in conn.body(edge.config.origin.read_timeout):
        if client.closed:
            raise ClientGone()
        write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
        ex.sent += len(chunk)
        if parts is not None:
            size += len(chunk)
            if size > limit:
                parts = None
                ex.uncacheable = True
                edge.store.count_not_stored("too-large")
            else:
                parts.append(chunk)
        if client.write_paused:
            await client.drain()
    if chunked:
        write(b"0\r\n\r\n")
    if parts is not None and (conn.answered_twice() or not _self_delimited(status, origin_headers)):
        # A second response glued after this one (a desynchronized origin), or a body only the closing connection
        # delimits (truncation undetectable): delivered but never stored (hardening.md, broken origins). Mere
        # excess bytes past Content-Length don't disqualify the message: RFC 9112 §6.3 frames it by its length,
        # as nginx, Varnish and Squid do; the connection is not reused either way.
        parts = None
        ex.uncacheable = True
        edge.store.count_not_stored("framing")
    if parts is not None:
        ex.stored = store_response(ex, status, fields, b"".join(parts), request_time, generation)
    if ex.head.method not in SAFE_METHODS:
        _invalidate(ex, status, origin_headers)
    return not close_delimited


def body_room(ex: Exchange, status: int, fields: list[tuple[bytes, bytes]]) -> int:
    """The largest body the store will take with these fields. It charges head + body + ENTRY_OVERHEAD against
    max_object_size and capacity (cache/store.py); judging by the body alone would announce "stored" for a body
    of exactly max_object_size that the store then refuses."""
    store = ex.edge.store
    head = len(serialize_head(status, fields)) + STORED_HEAD_EXTRA
    return min(store.max_object_size, store.capacity) - ENTRY_OVERHEAD - head


def _self_delimited(status: int, headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether the response's own framing ends its body: a 204 or 304 has none to end (RFC 9112 §6.3)."""
    return status in NO_BODY_STATUS or get(headers, b"content-length") is not None or get(
        headers, b"transfer-encoding") is not None


def response_fields(ex: Exchange, origin_headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The origin's end-to-end fields as this site delivers and stores them (Via added, CORS per mode)."""
    fields = forwarding.response_fields(origin_headers, ex.edge.via)
    return cors.strip_origin_cors(fields) if ex.site.cors is not None else cors.fix_origin_response(fields)


def store_response(ex: Exchange, status: int, fields: list[tuple[bytes, bytes]], body: bytes, request_time: float,
                   generation: int) -> bool:
    """Make and store the entry for a complete response (``fields`` from ``response_fields``)."""
    site = ex.site
    extra_vary = () if site.cors is not None else cors.origin_mode_vary(
        get(ex.head.headers, b"origin") is not None, fields)
    entry = make_entry(ex.creq, status, [*fields, (b"content-length", b"%d" % len(body))], body, request_time,
                       time.time(), site.policy, extra_vary)
    return ex.edge.store.put(entry, since=generation)


def _invalidate(ex: Exchange, status: int, origin_headers: list[tuple[bytes, bytes]]) -> None:
    """RFC 9111 §4.4: after an unsafe method succeeds, stored responses for its URI (and Location /
    Content-Location on the same host) must be validated before reuse."""
    for key in invalidation_keys(ex.creq, status, origin_headers, ex.site.policy.query_mode):
        for entry in ex.edge.store.get(key):
            entry.invalidated = True
