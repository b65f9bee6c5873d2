"""Writing stored responses: the hit path.

Rules kept here:
- A hit writes ``entry.head`` (serialized when the entry was stored) plus only what changes per response: Age,
  Cache-Status, the edge-mode CORS fields and, when needed, Connection; then the body. One write; two for large
  bodies (> COPY_LIMIT), where concatenating would copy the body.
- Client conditionals and Range are judged against the entry first (cache/conditional.py): 304, 412, 206, 416.
- A cluster peer's request also gets this cache's decision about the entry (``storability.decision_fields``), which
  the stored head lacks, so the peer stores its copy with the same lifetime and purge tags.
- No header is parsed here: everything per response is appended as prepared bytes. The one scan is on the rarer
  path that builds a new head anyway (an answer to the client's conditionals or Range): an origin-mode copy's
  CORS fields are carried over to it (``cors.keep_origin_cors``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from edgeproxy import cors
from edgeproxy.cache.conditional import respond_from_entry
from edgeproxy.cache.entry import Entry
from edgeproxy.cache.outcome import HIT
from edgeproxy.cache.storability import decision_fields
from edgeproxy.http.headers import Headers, get
from edgeproxy.http.wire import serialize_head
from edgeproxy.proxy.parser import RequestHead

if TYPE_CHECKING:
    from edgeproxy.errors import ProxyError
    from edgeproxy.proxy.client import ClientConnection
    from edgeproxy.proxy.exchange import Exchange

COPY_LIMIT = 64 * 1024


def connection_line(head: RequestHead, close: bool = False) -> bytes:
    """The Connection field the client needs to know what happens next (RFC 9112 §9.3)."""
    if close or not head.keep_alive:
        return b"connection: close\r\n"
    if head.http_version == b"1.0":
        return b"connection: keep-alive\r\n"
    return b""


def write_stored(write: Callable[[bytes], object], entry: Entry, age: float, cache_status: bytes, tail: bytes,
                 head_only: bool) -> int:
    """The one writer of a stored response as it is (every hit, the fast lane's too): the prepared head, Age,
    Cache-Status, ``tail`` (CORS fields, Connection, the blank line), then the body. The body's length."""
    body = b"" if head_only else entry.body
    if len(body) > COPY_LIMIT:
        write(entry.head + b"age: %d\r\ncache-status: " % age + cache_status + b"\r\n" + tail)
        write(body)
    else:  # one join: one copy of the answer, where each + made one (measured ~25% less)
        write(b"".join((entry.head, b"age: %d\r\ncache-status: " % age, cache_status, b"\r\n", tail, body)))
    return len(body)


def deliver(ex: Exchange, entry: Entry, age: float, cache_status: bytes) -> None:
    """Answer ``ex`` from ``entry``."""
    answer = respond_from_entry(ex.creq, entry)
    head_only = ex.head.method == b"HEAD"
    tail = ex.cors + connection_line(ex.head) + b"\r\n"
    if ex.internal is not None:  # a cluster peer stores what it gets: it is told what this cache decided
        tail = b"".join(k + b": " + v + b"\r\n" for k, v in decision_fields(entry)) + tail
    if answer is None:
        client = ex.client
        if client.lane_key is not None and ex.cache is HIT:
            publish(ex, client.lane_key, entry)
        ex.sent = write_stored(client.transport.write, entry, age, cache_status, tail, head_only)
        ex.status = entry.status
    else:
        body = b"" if head_only else answer.body
        ex.client.transport.write(serialize_head(answer.status, cors.keep_origin_cors(answer.headers, entry.headers))
                                  + b"age: %d\r\ncache-status: " % age + cache_status + b"\r\n" + tail + body)
        ex.status, ex.sent = answer.status, len(body)
    ex.edge.store.touch(entry)


def publish(ex: Exchange, key: tuple[str, bytes, bytes], entry: Entry) -> None:
    """A plain fresh hit for a head the fast lane scanned: the lane may answer the next ones (proxy/lane.py). Not for
    a request with Origin at a site with an edge CORS policy: the policy answers each Origin."""
    lane = ex.edge.lane
    edge_cors = ex.site.cors is not None
    if lane is not None and not (edge_cors and get(ex.head.headers, b"origin") is not None):
        lane.publish(key, entry, ex.cors, edge_cors)


ALLOW = b"GET, HEAD, POST, PUT, DELETE, OPTIONS"


def write_local(ex: Exchange, status: int, body: bytes) -> None:
    """An answer this node gives itself (TRACE refused, OPTIONS with Max-Forwards: 0 or ``*``)."""
    fields = [(b"allow", ALLOW), (b"content-type", b"text/plain; charset=utf-8"),
              (b"content-length", b"%d" % len(body))]
    write_answer(ex, status, fields, body, ex.edge.cache_status.plain(detail="local"))


def write_error(client: ClientConnection, error: ProxyError, ex: Exchange | None) -> None:
    """A short error response, never stored; edge-mode CORS fields included so scripts can read it."""
    edge = client.edge
    body = f"{error.status} {error}\n".encode("utf-8", "replace")
    fields = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"%d" % len(body)),
              (b"cache-control", b"no-store"),
              (b"cache-status", edge.cache_status.plain(detail=error.detail))]
    if error.close:
        fields.append((b"connection", b"close"))
    head_only = ex is not None and ex.head.method == b"HEAD"
    extra = ex.cors if ex is not None else b""
    client.transport.write(serialize_head(error.status, fields) + edge.date_line() + extra + b"\r\n"
                           + (b"" if head_only else body))
    if ex is not None:
        ex.status, ex.sent = error.status, len(body)


def write_answer(ex: Exchange, status: int, headers: Headers, body: bytes, cache_status: bytes) -> None:
    """A response made here (not from the origin, not from an entry)."""
    head = serialize_head(status, headers) + ex.edge.date_line() + b"cache-status: " + cache_status + b"\r\n"
    ex.client.transport.write(head + ex.cors + connection_line(ex.head) + b"\r\n"
                              + (b"" if ex.head.method == b"HEAD" else body))
    ex.status, ex.sent = status, len(body)
