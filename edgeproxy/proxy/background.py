"""Background revalidation for stale-while-revalidate (RFC 5861 §3): the client already has its stale answer.

Rules kept here:
- One at a time per key (the Collapser's ``revalidating`` set) and, with a shared store, per host (``Storage.claim``),
  with the stored validators.
- The fetch carries none of the identity of the client whose request happened to trigger it: it is the edge's
  own request (``Revalidation.of``), keeping only the fields the stored response varies on, so the origin picks
  the same variant, and ``Origin`` (which site asks, not who: origin-mode CORS keys on it). No cookie,
  credentials, user agent or X-Forwarded-For unless the response varies on it, no conditionals or Range of the
  client's, and no reference to the client's exchange or connection, which may be long gone.
- A 304 that validates freshens the entry (``upstream.freshen_stored``, the same as on the client-facing path);
  a storable full response replaces it, bounded as on the client-facing path (head, body and per-entry overhead
  within max_object_size: reading stops as soon as it can't fit); anything else leaves the cache as it was.
  Failures are logged at debug level: nobody is waiting for them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from edgeproxy.cache.key import CacheRequest
from edgeproxy.cache.policy import conditional_headers
from edgeproxy.cache.storability import storable
from edgeproxy.errors import ProxyError
from edgeproxy.http.headers import Headers
from edgeproxy.proxy import peers
from edgeproxy.proxy.origin import OriginAddress, OriginConnection
from edgeproxy.proxy.origin_parser import ResponseHead
from edgeproxy.proxy.upstream import (
    CLIENT_CONDITIONALS,
    body_room,
    freshen_stored,
    read_body,
    response_fields,
    store_response,
)

if TYPE_CHECKING:
    from edgeproxy.cache.entry import Entry
    from edgeproxy.proxy.edge import Edge, SiteRuntime
    from edgeproxy.proxy.exchange import Exchange

log = logging.getLogger("edgeproxy.revalidate")


@dataclass(frozen=True, slots=True)
class Revalidation:
    """The edge's own conditional GET for a stored entry."""

    key: str
    site: SiteRuntime
    creq: CacheRequest  # the request as this fetch makes it: only the fields the entry varies on, and Origin
    entry: Entry
    fields: Headers  # to the origin
    internal: bool = False  # set off by a cluster peer's request: straight to the origin (edgeproxy/proxy/peers.py)

    @classmethod
    def of(cls, edge: Edge, ex: Exchange, entry: Entry) -> Revalidation:
        keep = (frozenset(entry.vary) | {b"origin"}) - CLIENT_CONDITIONALS
        headers = [(k, v) for k, v in ex.head.headers if k in keep]
        creq = CacheRequest(b"GET", ex.creq.scheme, ex.host, ex.target, headers)  # a peer's: the scheme it signed
        fields = edge.request_fields(ex.site, ex.host, ex.creq.scheme, headers, client_ip=None)
        return cls(ex.key, ex.site, creq, entry, fields + conditional_headers(entry), ex.internal is not None)


async def revalidate(edge: Edge, job: Revalidation) -> None:
    try:
        await _revalidate(edge, job)
    except ProxyError as e:
        edge.note_origin_error(e)
        log.debug("background revalidation of %s failed: %s", job.key, e)
    finally:
        edge.collapser.revalidating.discard(job.key)
        edge.store.release(job.entry)


async def _ask(edge: Edge, job: Revalidation, timeout: float) -> tuple[OriginConnection, ResponseHead]:
    """The conditional GET sent to the key's owner in a cluster (then the next node), else to the origin."""
    async def send(address: OriginAddress, fields: Headers, connect_timeout: float | None) -> tuple[
            OriginConnection, ResponseHead]:
        conn = await edge.pool.acquire(address, connect_timeout=connect_timeout)
        try:
            conn.send_head(b"GET", job.creq.target, fields)
            conn.send_end()
            return conn, await conn.response_head(timeout)
        except BaseException:
            edge.pool.release(conn)
            raise

    if not job.internal:
        route = peers.hops(edge, job.key, job.creq.scheme, b"GET", job.creq.host, job.creq.target, job.fields)
        answer = await peers.ask(edge, job.key, route, send) if route else None
        if answer is not None:
            return answer
    return await send(job.site.address, job.fields, None)


async def _revalidate(edge: Edge, job: Revalidation) -> None:
    site, timeout = job.site, edge.config.origin.read_timeout
    generation = edge.store.generation()
    request_time = edge.clock()
    conn, response = await _ask(edge, job, timeout)
    try:
        response_time = edge.clock()
        headers = response.headers
        fields = response_fields(edge, site, headers)
        # What the store would take: head, body and per-entry overhead, as on the client-facing path.
        body = await read_body(conn, body_room(edge.store, response.status, fields), timeout)
        if body is None:
            return  # not kept: the connection is closed by release (the body was not read to its end)
    finally:
        edge.pool.release(conn)
    if response.status == 304:
        freshen_stored(edge, site, job.entry, headers, request_time, response_time, generation)
        return
    if storable(job.creq, response.status, headers, site.policy) is None:
        store_response(edge, site, job.creq, response.status, fields, b"".join(body), request_time, generation)
