"""Background revalidation for stale-while-revalidate (RFC 5861 §3): the client already has its stale answer.

Rules kept here:
- One at a time per key (the Collapser's ``revalidating`` set), with the stored validators; the client's own
  conditionals and Range never reach the origin.
- A 304 that validates freshens the entry; a storable full response replaces it, bounded as on the client-facing
  path (head, body and per-entry overhead within max_object_size: reading stops as soon as it can't fit); anything
  else leaves the cache as it was. Failures are logged at debug level: nobody is waiting for them.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from edgeproxy.cache.policy import conditional_headers
from edgeproxy.cache.storability import freshen, storable, validates
from edgeproxy.errors import ProxyError
from edgeproxy.proxy.upstream import CLIENT_CONDITIONALS, body_room, response_fields, store_response

if TYPE_CHECKING:
    from edgeproxy.cache.entry import Entry
    from edgeproxy.proxy.edge import Edge
    from edgeproxy.proxy.exchange import Exchange

log = logging.getLogger("edgeproxy.revalidate")


async def revalidate(edge: Edge, ex: Exchange, entry: Entry) -> None:
    try:
        await _revalidate(edge, ex, entry)
    except ProxyError as e:
        edge.note_origin_error(e)
        log.debug("background revalidation of %s failed: %s", ex.key, e)
    finally:
        edge.collapser.revalidating.discard(ex.key)


async def _revalidate(edge: Edge, ex: Exchange, entry: Entry) -> None:
    site, timeout = ex.site, edge.config.origin.read_timeout
    fields = [(k, v) for k, v in edge.origin_request_fields(ex) if k not in CLIENT_CONDITIONALS]
    fields += conditional_headers(entry)
    generation = edge.store.generation()
    request_time = time.time()
    conn = await edge.pool.acquire(site.address)
    try:
        conn.send_head(b"GET", ex.target, fields)
        conn.send_end()
        response = await conn.response_head(timeout)
        response_time = time.time()
        headers = response.headers
        fields = response_fields(ex, headers)
        # What the store would take: head, body and per-entry overhead, as on the client-facing path.
        limit = body_room(ex, response.status, fields)
        body, size = [], 0
        async for chunk in conn.body(timeout):
            size += len(chunk)
            if size > limit:
                return  # not kept: the connection is closed by release (the body was not read to its end)
            body.append(chunk)
    finally:
        edge.pool.release(conn)
    if response.status == 304:
        if validates(entry, headers):
            edge.store.put(freshen(entry, headers, request_time, response_time, site.policy), since=generation)
        return
    if storable(ex.creq, response.status, headers, site.policy) is None:
        store_response(ex, response.status, fields, b"".join(body), request_time, generation)
