"""The fast lane: a browser's cache hit answered from the read's bytes, without the parser or an exchange.

Rules kept here:
- Tried from ``ClientConnection.data_received`` when no exchange runs and the parser holds nothing: the read must be
  exactly one complete head. ``http/headscan.scan`` (compiled, or its Python twin) accepts only a strict subset of
  what h11 and llhttp both accept, with none of the fields that change a cache decision or the answer per request
  (request directives, credentials, conditionals, Range, Expect, Upgrade, Via, CDN-Loop, the cluster field). What
  it does not accept, and what the table cannot answer, goes to the full path unchanged: the lane never refuses a
  request and never answers differently from it.
- **Keyed by what decides the answer**, not by the head's bytes: (scheme, Host as sent, target as sent) selects the
  entries the full path answered for that URL as plain fresh hits, each with the site's edge CORS fields for a
  request without Origin. Cookies, referers, user agents and request ids don't matter. Vary does: an entry that
  varies is matched against this head's fields as the full path matches (``cache/key.matches``); when the URL has
  more than one stored variant (or had one added since: ``Entry.superseded``, or new sibling versions in a shared
  store), the store's list is read and the answer is the full path's choice (``cache/policy.select``), or none.
- **Published by the full path** (``delivery.deliver``): a plain fresh hit for a head the lane scanned publishes
  the entry it answered with. **Checked on every use**: still fresh, not soft-purged or invalidated, and still
  stored (``Storage.touch``: the LRU or S3-FIFO read bit too, and with a shared store the slot version, which
  another worker's purge or replacement changes). So a purge of any kind, an eviction or a replacement takes effect
  on the lane the moment it does on the store, before the purge is acknowledged, with no withdrawal to forget; an
  entry found wanting is dropped. A reload starts a new table.
- **The answer is a parsed hit's**: the same bytes (``delivery.write_stored``), the same counters, and the same log
  line in either format (its times 0.0 ms: it is answered within the read). Edge-mode CORS sites are answered only
  for requests without Origin (the policy answers each Origin itself); origin-mode CORS keys by Vary as above.
- Bounded: at most ``size`` URLs per worker (about one per KiB of cache, at least ``MIN_SIZE``), cleared when full
  (keys are client-chosen), at most ``MAX_VARIANTS`` entries per URL.
Throughput trade-off: a head the lane can't answer is scanned twice (here, then by the parser); the compiled scan of a
~600-byte browser head costs about what one dict lookup of it did (benchmarks/hitcost.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgeproxy.cache.entry import Entry
from edgeproxy.cache.key import CacheRequest, matches
from edgeproxy.cache.outcome import HIT
from edgeproxy.cache.policy import select
from edgeproxy.http.headscan import fields_named, scan
from edgeproxy.metrics import STATUS_CLASSES
from edgeproxy.proxy.client import IDLE
from edgeproxy.proxy.delivery import COPY_LIMIT

if TYPE_CHECKING:
    from edgeproxy.proxy.client import ClientConnection
    from edgeproxy.proxy.edge import Edge

MIN_SIZE = 4096
MAX_SIZE = 1 << 20
MAX_VARIANTS = 4
CLOSE = b"connection: close\r\n\r\n"
KEEP_ALIVE = b"connection: keep-alive\r\n\r\n"

Key = tuple[str, bytes, bytes]  # (scheme, Host as sent, target as sent)


class Published:
    """An entry the full path answered a URL with; whether it was the URL's only stored variant then (else every
    answer asks the store for the full path's choice); the answer's tails (edge CORS fields of a request without
    Origin, the Connection line, the blank line) by keep-alive and HTTP/1.0, made once."""

    __slots__ = ("entry", "edge_cors", "alone", "vary", "plain", "tails", "status_class")

    def __init__(self, entry: Entry, cors: bytes, edge_cors: bool, alone: bool) -> None:
        self.entry, self.edge_cors, self.alone = entry, edge_cors, alone
        self.vary = frozenset(n for n in entry.vary if n[:1] != b":")  # fields to read from the head (not :cors)
        self.plain = alone and not entry.vary  # the usual object: no choice between variants to make
        # Indexed by keep_alive * 2 + (HTTP/1.0): what delivery.connection_line gives for each.
        self.tails = (cors + CLOSE, cors + CLOSE, cors + b"\r\n", cors + KEEP_ALIVE)
        self.status_class = STATUS_CLASSES.get(entry.status // 100, "other")  # ProxyCounters.response's label


class Lane:
    __slots__ = ("edge", "table", "where", "size", "limits", "hit_prefix")

    def __init__(self, edge: Edge) -> None:
        self.edge = edge
        self.table: dict[Key, list[Published]] = {}
        self.where: dict[int, Key] = {}  # id(entry) -> its key here (the entries are alive: the table holds them)
        self.size = min(MAX_SIZE, max(MIN_SIZE, edge.config.cache.size // 1024))
        self.limits = edge.limits
        self.hit_prefix = edge.cache_status.hit(0.0).removesuffix(b"0")  # CacheStatus.hit's value before its ttl
        edge.store.watch_drops(self.withdraw)  # a reload's new lane takes the old one's place

    # ---- answering ----
    def answer(self, client: ClientConnection, data: bytes) -> bool:
        """Answer ``data`` as a plain hit; False when the full path must run (it may publish what it answers)."""
        scanned = scan(data)
        if scanned is None:
            return False
        method, target, version, host, keep_alive, origin, referer, agent, nfields = scanned
        limits = self.limits
        if nfields > limits.max_headers or len(data) > limits.max_header_bytes or len(target) > limits.max_uri:
            return False  # the full path answers what its limits say (414, 431)
        key = (client.scheme, host, target)
        published = self.table.get(key)
        if published is None:
            client.lane_key = key  # the full path may publish its answer under this key
            return False
        found = published[0]
        if not found.plain or (origin is not None and found.edge_cors) or found.entry.superseded:
            found = self._select(published, data, origin)
        if found is None:
            client.lane_key = key
            return False
        edge = self.edge
        entry = found.entry
        now = edge.clock()
        # freshness.current_age and ttl, inlined: a call each is a share of a lane hit (benchmarks/hitcost.py)
        age = entry.corrected_initial_age + max(0.0, now - entry.response_time)
        left = entry.freshness_lifetime - age
        if left <= 0.0 or entry.invalidated or not edge.store.touch(entry):
            self.withdraw(entry)
            client.lane_key = key
            return False
        # delivery.write_stored, ProxyCounters.response and ClientConnection.response_done_fast, inlined: a call each
        # is a measurable share of a lane hit (benchmarks/hitcost.py); tests/unit/test_lane.py holds them equal.
        body = b"" if method == b"HEAD" else entry.body
        head = b"%sage: %d\r\ncache-status: %s%d\r\n%s" % (entry.head, age, self.hit_prefix, left,
                                                              found.tails[keep_alive * 2 + (version == b"1.0")])
        write = client.transport.write
        if len(body) > COPY_LIMIT:
            write(head)
            write(body)
        else:
            write(head + body)
        sent = len(body)
        counters = edge.counters
        counters.lane_hits += 1
        counters.requests[HIT] += 1
        responses = counters.responses
        responses[found.status_class] = responses.get(found.status_class, 0) + 1
        counters.response_bytes += sent
        edge.access_log.hit(client.log_peer, now, method, target, version, entry.status, sent, referer or b"",
                            agent or b"")
        client.requests += 1
        if keep_alive:
            client.phase = IDLE
            client.deadline = edge.loop.time() + edge.keepalive_timeout
        else:
            client.transport.close()
            client.closed = True
        return True

    def _select(self, published: list[Published], data: bytes, origin: bytes | None) -> Published | None:
        """The published entry that answers this head as the full path would, or None (the full path decides). The
        usual object (one variant, no Vary) is answered without this."""
        first = published[0]
        if origin is not None and first.edge_cors:
            return None  # the edge CORS policy answers each Origin
        request = CacheRequest(b"GET", "", "", b"", self._fields(data, origin, first.vary.union(
            *(p.vary for p in published[1:]))))
        found = next((p for p in published if matches(p.entry.vary, p.entry.variant_key, request)), None)
        if found is None or (found.alone and not found.entry.superseded):
            return found
        # Several variants are stored for the URL: which one answers is the full path's choice by date among those
        # that match (cache/policy.select), which the store's list says.
        variants = self.edge.store.variants(found.entry.primary_key)
        request.headers = self._fields(data, origin, frozenset(n for v in variants for n in v.vary if n[:1] != b":"))
        return found if select(request, variants) is found.entry else None

    @staticmethod
    def _fields(data: bytes, origin: bytes | None, names: frozenset[bytes]) -> list[tuple[bytes, bytes]]:
        """The head's fields that Vary matching reads: those named, and Origin (for ``:cors``)."""
        headers = fields_named(data, names) if names else []
        if origin is not None and b"origin" not in names:
            headers.append((b"origin", origin))
        return headers

    # ---- publishing (the full path) and withdrawing (the store) ----
    def publish(self, key: Key, entry: Entry, cors: bytes, edge_cors: bool) -> None:
        """The full path answered the head scanned under ``key`` with ``entry`` as a plain fresh hit. Only an entry
        this process's store holds: the store tells the lane when it forgets one (``withdraw``), so the table never
        keeps bytes past the cache's bound."""
        store = self.edge.store
        if not store.holds(entry):
            return
        alone = len(store.variants(entry.primary_key)) == 1  # the URL's only variant: no choice to make between them
        table, where = self.table, self.where
        published = table.get(key)
        if published is None:
            if len(table) >= self.size:
                table.clear()
                where.clear()
            table[key] = [Published(entry, cors, edge_cors, alone)]
            where[id(entry)] = key
            return
        for i, p in enumerate(published):
            if p.entry.vary == entry.vary and p.entry.variant_key == entry.variant_key:
                where.pop(id(p.entry), None)
                published[i] = Published(entry, cors, edge_cors, alone)  # the same variant, answered anew
                where[id(entry)] = key
                return
        published.insert(0, Published(entry, cors, edge_cors, alone))
        where[id(entry)] = key
        for p in published[MAX_VARIANTS:]:
            where.pop(id(p.entry), None)
        del published[MAX_VARIANTS:]

    def withdraw(self, entry: Entry | None) -> None:
        """The store forgot ``entry`` (None: everything): the lane forgets it too."""
        if entry is None:
            self.table.clear()
            self.where.clear()
            return
        key = self.where.pop(id(entry), None)
        if key is None:
            return
        published = self.table[key]
        published[:] = [p for p in published if p.entry is not entry]
        if not published:
            del self.table[key]
