"""The edge's runtime state: config, sites, origin pool, cache, counters, logs — shared by every connection.

Rules kept here:
- One ``Edge`` per worker process. Connections reach shared state only through it.
- A reload builds new derived tables (sites, origin addresses) and swaps them in; the cache, the pool and open
  connections stay (``apply``).
- ``Date`` is formatted at most once a second (uvicorn's trick), since every response carries it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import formatdate
from typing import TYPE_CHECKING, Any

from edgeproxy import purging
from edgeproxy.accesslog import AccessLog
from edgeproxy.cache.cachestatus import CacheStatus
from edgeproxy.cache.entry import Entry
from edgeproxy.cache.outcome import Outcome
from edgeproxy.cache.policy import CachePolicy
from edgeproxy.cache.purge import PurgeURL, Selector, site_purge_url
from edgeproxy.cache.store import Storage, Store
from edgeproxy.config import Config, SiteConfig
from edgeproxy.errors import BadRequest, MisdirectedRequest, OriginConnectError, OriginError, OriginTimeout, ProxyError
from edgeproxy.fleet.cluster import ReplayGuard
from edgeproxy.http.headers import Headers, get
from edgeproxy.metrics import ProxyCounters
from edgeproxy.proxy import forwarding
from edgeproxy.proxy.backends import make_parser
from edgeproxy.proxy.collapse import Collapser
from edgeproxy.proxy.lane import Lane
from edgeproxy.proxy.origin import OriginAddress, OriginPool
from edgeproxy.proxy.parser import Limits, RequestHead, RequestParser
from edgeproxy.proxy.peers import journal_in_store, load_peers
from edgeproxy.sites import SiteTable, normalize_host

if TYPE_CHECKING:
    from edgeproxy.cors import CorsPolicy
    from edgeproxy.proxy.client import ClientConnection
    from edgeproxy.proxy.exchange import Exchange

log = logging.getLogger("edgeproxy")
SWEEP_INTERVAL = 1.0
LOG_CACHE: dict[Outcome, bytes] = {o: o.value.encode() for o in Outcome}  # the access log's cache field (both formats)
HOST_MEMO = 4096



@dataclass(frozen=True, slots=True)
class SiteRuntime:
    """What an exchange needs of its site, derived once per (re)load."""

    config: SiteConfig
    policy: CachePolicy
    cors: CorsPolicy | None  # the edge-mode policy; None in origin mode
    address: OriginAddress
    allowed_unkeyed: frozenset[bytes]


def site_runtime(site: SiteConfig, config: Config) -> SiteRuntime:
    policy = CachePolicy(heuristic_max=config.cache.heuristic_max, max_ttl=config.cache.max_ttl,
                         revalidate_interval=config.cache.revalidate_interval,
                         ignore_request_cache_control=site.ignore_request_cache_control,
                         store_set_cookie=site.store_set_cookie, query_mode=site.query,
                         cache_name=config.server.name.encode())
    edge_cors = site.cors if site.cors is not None and site.cors.mode == "edge" else None
    return SiteRuntime(site, policy, edge_cors, OriginAddress.from_url(site.origin, site.ca_file, site.tls_verify),
                       frozenset(h.encode() for h in site.allow_request_headers))


class Edge:
    def __init__(self, config: Config, loop: asyncio.AbstractEventLoop,
                 clock: Callable[[], float] = time.time, store: Storage | None = None) -> None:
        self.loop = loop
        # The wall clock every cache decision reads (ages, freshness, purges, Date): one injectable source, so the
        # exchange runs in tests on a clock they set. Durations use time.monotonic.
        self.clock = clock
        self.connections: set[ClientConnection] = set()
        self.per_ip: dict[str, int] = {}
        self.counters = ProxyCounters()
        self.started = clock()
        self.access_log = AccessLog(None)
        self._date_second = -1
        self._date_line = b""
        self.sweeper: asyncio.TimerHandle | None = None
        # The process layer picks the store (in-process, or a hot tier over the host's shared one: edgeproxy/shared).
        self.store: Storage = store if store is not None else Store(
            config.cache.size, config.cache.max_object_size, config.cache.max_variants)
        self.collapser = Collapser(config.cache.collapse_timeout, config.cache.hit_for_miss_ttl)
        self.background: set[asyncio.Task[None]] = set()
        # The fleet journal entry this process's cache has applied (None: no fleet, or not known here): read from the
        # shared store's note, or handed in by the process that follows the journal (``follow_journal``).
        self.journal: Callable[[], int | None] | None = None
        self.replays = ReplayGuard()  # the cluster's nonces seen here (edgeproxy/fleet/cluster.py)
        o = config.origin
        self.pool = OriginPool(connect_timeout=o.connect_timeout, idle_timeout=o.idle_timeout,
                               max_total=o.max_connections, max_per_origin=o.max_per_origin,
                               wait_timeout=o.pool_wait_timeout)
        self.apply(config)

    def apply(self, config: Config) -> None:
        """Take a (re)loaded config: everything derived from it is rebuilt, state is kept. What can fail (the cluster's
        secret file) is read first, so a failure leaves the old config whole."""
        peers = load_peers(config)
        self.config = config
        s = config.server
        self.sites = SiteTable.build(config.sites)
        self.runtimes = {id(site): site_runtime(site, config) for site in config.sites}
        self.hosts: dict[tuple[bytes, str], tuple[str, SiteRuntime]] = {}
        self.limits = Limits(max_uri=s.max_uri, max_header_bytes=s.max_header_bytes, max_headers=s.max_headers,
                             max_body=s.max_body)
        self.keepalive_timeout = s.keepalive_timeout  # read on every fast-lane hit
        self.cache_status = CacheStatus(s.name.encode())
        self.lane = Lane(self) if s.fast_lane and s.head_memo else None  # a new table: nothing of the old config
        self.via = forwarding.via_token(s.name)
        self.cdn_loop = forwarding.cdn_loop_member(s.name, config.node_id)
        self.peers = peers
        if config.fleet.redis is not None and self.journal is None:
            self.journal = journal_in_store(self.store, config.fleet.stream)
        o = config.origin
        self.pool.connect_timeout, self.pool.idle_timeout = o.connect_timeout, o.idle_timeout
        self.pool.max_total, self.pool.max_per_origin = o.max_connections, o.max_per_origin
        self.pool.wait_timeout = o.pool_wait_timeout
        self.pool.parser = config.origin_parser  # new connections; pooled ones keep theirs
        self.access_log.close()
        self.access_log = AccessLog(config.log.access, config.log.format)

    # ---- connections ----
    def make_parser(self) -> RequestParser:
        return make_parser(self.config.server.parser, self.limits)

    def admit(self, client: ClientConnection) -> bool:
        s = self.config.server
        # Not refused while draining: a connection accepted in the instant before the listener closed carries a
        # request a client is waiting on (with socket activation, the next process would have served it); it is
        # answered, then closed as idle by the drain.
        if len(self.connections) >= s.max_connections:
            return False
        n = self.per_ip.get(client.peer, 0)
        if n >= s.max_connections_per_ip:
            return False
        self.per_ip[client.peer] = n + 1
        self.connections.add(client)
        self.counters.open_connections += 1
        return True

    def release(self, client: ClientConnection) -> None:
        if client in self.connections:
            self.connections.discard(client)
            self.counters.open_connections -= 1
            n = self.per_ip.get(client.peer, 1) - 1
            if n:
                self.per_ip[client.peer] = n
            else:
                self.per_ip.pop(client.peer, None)

    def start(self) -> None:
        self.sweeper = self.loop.call_later(SWEEP_INTERVAL, self.sweep)

    def sweep(self) -> None:
        """Once a second: expire connections past their deadline, flush the access log."""
        now = self.loop.time()
        for client in [c for c in self.connections if c.deadline <= now]:
            client.expire(now)
        self.access_log.flush()
        self.sweeper = self.loop.call_later(SWEEP_INTERVAL, self.sweep)

    def stop(self) -> None:
        for task in self.background:
            task.cancel()
        if self.sweeper is not None:
            self.sweeper.cancel()
        self.pool.close()
        self.access_log.close()

    # ---- cache ----
    async def purge(self, selector: Selector, soft: bool) -> dict[str, Any]:
        """Apply a purge (edgeproxy/purging.py: a regex's walk runs off this loop, within its budget); the reply's
        fields."""
        if isinstance(selector, PurgeURL):
            selector = site_purge_url(self.sites, selector)
        result = await purging.purge(self.store, selector, soft, self.clock(), self.config.cache.regex_purge_budget)
        self.counters.purge(type(selector).__name__.removeprefix("Purge").lower())
        if "over_budget" in result:
            self.counters.purges_over_budget += 1
        return result

    # ---- exchanges ----
    def resolve_host(self, host_field: bytes, scheme: str) -> tuple[str, SiteRuntime]:
        """The normalized host and its site for a Host field value; memoized (bounded), it runs on every hit."""
        key = (host_field, scheme)
        found = self.hosts.get(key)
        if found is not None:
            return found
        host = normalize_host(host_field, scheme)
        if host is None:
            raise BadRequest("invalid Host")
        site = self.sites.match(host)
        if site is None:
            raise MisdirectedRequest(f"no site for host {host}")
        if len(self.hosts) >= HOST_MEMO:
            self.hosts.clear()  # Host values are client-chosen: a bound, not an LRU, is enough
        found = self.hosts[key] = (host, self.runtimes[id(site)])
        return found

    def origin_request_fields(self, ex: Exchange) -> list[tuple[bytes, bytes]]:
        head = ex.head
        length = get(head.headers, b"content-length")
        # The scheme of the key: the client's, or for a cluster peer's request the one it signed (never this
        # listener's: peers may talk plain HTTP for an https client).
        return self.request_fields(ex.site, ex.host, ex.creq.scheme, head.headers, client_ip=ex.client.peer,
                                   body_length=int(length) if length is not None else None,
                                   chunked=head.has_body and length is None)

    def request_fields(self, site: SiteRuntime, host: str, scheme: str, headers: Headers, *, client_ip: str | None,
                       body_length: int | None = None, chunked: bool = False) -> Headers:
        """The fields a request for ``host`` sends the origin; ``client_ip`` None: a request of the edge's own."""
        # The origin sees the host the cache key was made from, never the raw field: `Host: EXAMPLE.com.` must not
        # reach the origin as sent and be stored under `example.com` for everyone (cache poisoning).
        key_host = host.encode()
        origin_host = site.address.authority if site.config.host_header == "origin" else key_host
        return forwarding.request_fields(
            headers, host=origin_host, via=self.via, client_ip=client_ip, scheme=scheme,
            x_forwarded=site.config.x_forwarded, allowed_unkeyed=site.allowed_unkeyed,
            body_length=body_length, chunked=chunked, client_host=key_host, cdn_loop=self.cdn_loop)

    def journal_seq(self) -> int | None:
        """The last fleet journal entry this cache has applied, when this process knows it."""
        return self.journal() if self.journal is not None else None

    def revalidate_in_background(self, ex: Exchange, entry: Entry) -> None:
        """stale-while-revalidate: one background revalidation per key (RFC 5861 §3)."""
        if ex.key in self.collapser.revalidating:
            return
        o = self.config.origin  # the claim outlives a worker that dies mid-way by no more than this
        if not self.store.claim(entry, self.clock(), o.connect_timeout + o.read_timeout + o.pool_wait_timeout):
            return  # another worker of the host revalidates it
        from edgeproxy.proxy.background import Revalidation, revalidate

        self.collapser.revalidating.add(ex.key)
        task = self.loop.create_task(revalidate(self, Revalidation.of(self, ex, entry)))
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    def date_line(self) -> bytes:
        now = int(self.clock())
        if now != self._date_second:
            self._date_second = now
            self._date_line = b"date: " + formatdate(now, usegmt=True).encode() + b"\r\n"
        return self._date_line

    def note_origin_error(self, error: ProxyError) -> None:
        if isinstance(error, OriginTimeout):
            self.counters.origin_error("timeout")
        elif isinstance(error, OriginConnectError):
            self.counters.origin_error("connect")
        elif isinstance(error, OriginError):
            self.counters.origin_error("protocol")

    # ---- logging ----
    def log(self, ex: Exchange) -> None:
        self.log_exchange(ex.client, ex.head, ex.status, ex.sent, ex.cache, ex.origin_ms, ex.started)

    def log_exchange(self, client: ClientConnection, head: RequestHead, status: int, sent: int, cache: Outcome,
                     origin_ms: float, started: float) -> None:
        """Count and log one answer (``log`` for an Exchange; without one: refused before a site was known)."""
        self.counters.response(cache, status, sent)
        log = self.access_log
        if log.fd is not None:  # a log that is off costs nothing more
            fields = head.fields
            if fields is None or len(fields) != len(head.headers):  # a name twice: the first value, as get() reads
                fields = dict(reversed(head.headers))
            log.exchange(client.log_peer, self.clock(), head.method, head.target, head.http_version, status, sent,
                         fields.get(b"referer") or b"", fields.get(b"user-agent") or b"", LOG_CACHE[cache], origin_ms,
                         (time.monotonic() - started) * 1000)
