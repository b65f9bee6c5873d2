"""One exchange: a request answered from the cache, locally, or through the origin (and maybe stored).

Rules kept here:
- ``begin`` runs synchronously inside ``data_received``: whatever it can answer without waiting (fresh hits,
  stale-while-revalidate hits, errors, preflights) it answers there with one write; anything else becomes one
  task running ``run``. The lookup's outcome is a closed set (cache/policy.py) dispatched with ``match``.
- The decision is the plan (cache/policy.py): the shell runs it. On the way to the origin for a fetch to store, the
  client's own conditionals and Range are dropped: we want a full response to store, and answer the client's
  conditionals from the entry (RFC 9111 §4.3.2).
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

from edgeproxy import cors
from edgeproxy.cache.freshness import current_age, ttl
from edgeproxy.cache.key import DECIDING_FIELDS, CacheRequest, primary_key
from edgeproxy.cache.outcome import COLLAPSED, ERROR, HIT, MISS, NONE, PASS, REVALIDATED, STALE, Outcome
from edgeproxy.cache.policy import (
    Decision,
    Hit,
    Miss,
    OnlyIfCachedMiss,
    Revalidate,
    StaleHit,
    Validated,
    can_serve_stale_on_error,
    counts_as_error,
    lookup,
)
from edgeproxy.errors import (
    BadRequest,
    ClientError,
    ExpectationFailed,
    Forbidden,
    LoopDetected,
    OriginError,
    ProxyError,
)
from edgeproxy.fleet.cluster import FIELD, Claim, ClusterAuthError, parse_claim
from edgeproxy.http.headers import get
from edgeproxy.proxy import forwarding, peers
from edgeproxy.proxy.delivery import deliver, write_answer, write_error, write_local
from edgeproxy.proxy.origin import OriginConnection
from edgeproxy.proxy.origin_parser import ResponseHead
from edgeproxy.proxy.parser import RequestHead
from edgeproxy.proxy.upstream import (
    CLIENT_CONDITIONALS,
    ClientGone,
    PassInstead,
    freshen_stored,
    relay,
)
from edgeproxy.sites import normalize_host

if TYPE_CHECKING:
    from edgeproxy.proxy.client import ClientConnection
    from edgeproxy.proxy.edge import Edge, SiteRuntime

log = logging.getLogger("edgeproxy.exchange")


@dataclass(slots=True)
class Exchange:
    """One request and what became of it. ``begin`` (below) makes it and answers what needs no waiting; the phases
    that do are methods: ``run`` (the task) → ``_from_origin`` (collapse) → ``_fetch`` (send, then
    ``_revalidated`` for a 304 or ``relay``), and ``_failed`` / ``_stale_on_error`` when the origin fails. Each
    writes its fields here; the answer itself is written by delivery.py or upstream.relay."""

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
    cache: Outcome = NONE  # the access log's and the metrics' label
    origin_ms: float = 0.0
    stored: bool = False
    uncacheable: bool = False  # the origin's complete answer is one we won't store (hit-for-miss)
    refusal: ClientError | None = None  # decided by _prepare, answered by begin
    arrived: float = 0.0  # the wall clock of the first lookup, for one made again after waiting (collapsing)
    internal: str | None = None  # the cluster peer that asked (a signed request): answered here, never sent on
    ahead: bool = False  # that peer applied a fleet purge this node has not yet: the cache must not answer

    def answer_locally(self) -> bool:
        """Requests this node answers itself (Max-Forwards: 0, TRACE, OPTIONS *). True when answered."""
        method = self.head.method
        if method == b"TRACE":
            # TRACE would reflect credentials to scripts (cross-site tracing); edges refuse it.
            self.cache = ERROR
            write_local(self, 405, b"TRACE is not allowed\n")
        elif method == b"OPTIONS":
            headers, before = forwarding.decrement_max_forwards(self.head.headers)
            if before != 0 and self.target != b"*":
                self.head.headers = headers
                return False
            self.cache = PASS  # as a preflight answered here: no origin, nothing stored
            write_local(self, 200, b"")
        else:
            return False
        self.edge.log(self)
        return True

    def edge_cors(self) -> bool:
        """Edge-mode CORS: answer preflights and refused origins here; otherwise note the fields to deliver."""
        policy = self.site.cors
        if policy is None:
            return False
        headers = self.head.headers
        origin = get(headers, b"origin")
        if cors.is_preflight(self.head.method, headers):
            pre = policy.preflight(origin, get(headers, b"access-control-request-method") or b"",
                                   get(headers, b"access-control-request-headers"))
            self.cache = PASS
            # pre.headers carries its own framing (Content-Length: 0 on the 403, none on the 204).
            write_answer(self, pre.status, pre.headers, b"", self.edge.cache_status.plain(detail="preflight"))
            self.edge.log(self)
            return True
        self.cors = policy.response_fields(origin)
        if policy.reject(origin):
            self.cache = ERROR
            write_error(self.client, Forbidden("origin not allowed"), self)
            self.edge.log(self)
            return True
        return False

    async def run(self, decision: Decision) -> None:
        """The exchange task: collapse, fetch, store, answer; every failure gets a defined outcome."""
        edge, client = self.edge, self.client
        keep_alive = self.head.keep_alive
        try:
            keep_alive = await self._from_origin(decision) and keep_alive
        except ProxyError as e:
            keep_alive = self._failed(decision, e) and keep_alive
        except ClientGone:
            keep_alive = False
        except Exception:
            log.exception("exchange failed: %s %r", self.head.method, self.target)
            client.transport.abort()
            keep_alive = False
        edge.log(self)
        client.exchange_done(keep_alive)

    def _failed(self, decision: Decision, error: ProxyError) -> bool:
        """An origin or client error: stale-if-error, a short error response, or an aborted connection."""
        edge, client = self.edge, self.client
        if isinstance(error, OriginError):
            edge.note_origin_error(error)
        if self.status:  # the head is out: the body can't be mended, cut the connection
            client.transport.abort()
            return False
        if isinstance(decision, Revalidate) and isinstance(error, OriginError) and self._stale_on_error(decision,
                                                                                                       error):
            return True
        self.cache = ERROR
        write_error(client, error, self)
        return not error.close and client.body_done

    def _stale_on_error(self, decision: Revalidate, error: OriginError) -> bool:
        """stale-if-error for an origin failure. RFC 5861 §4 defines an error by the status the client would get: an
        origin that can't be reached, times out or hangs up (our 502/503/504) counts as much as an origin 503."""
        entry, now = decision.entry, self.edge.clock()
        if not counts_as_error(error.status) or not can_serve_stale_on_error(entry, now, self.creq, self.site.policy):
            return False
        self.cache = STALE
        cache_status = self.edge.cache_status.forward("stale", detail="stale-if-error " + error.detail)
        deliver(self, entry, current_age(entry, now), cache_status)
        return True

    async def _from_origin(self, decision: Decision) -> bool:
        edge = self.edge
        cacheable = isinstance(decision, Miss | Revalidate) and decision.store
        if not cacheable or not edge.config.cache.collapse:
            return await self._fetch(decision, cacheable)
        collapser = edge.collapser
        waiting = collapser.inflight.get(self.key)
        if waiting is None or await collapser.wait(waiting):
            # Look again: a concurrent fetch may have finished between begin's decision and this task's start, or
            # while we waited for it. One lookup per fetch to store (~2 µs of a miss), against a second origin request.
            stored = edge.store.get(self.key) if not self.ahead else []
            again = lookup(self.creq, stored, edge.clock(), self.site.policy, arrived=self.arrived)
            match again:
                # Validated: a validation this request's own directives asked for, finished after it came.
                case Hit(entry=entry, age=age, ttl=left) | Validated(entry=entry, age=age, ttl=left):
                    self.cache = COLLAPSED
                    if decision.forced:
                        edge.counters.forced["collapsed"] += 1
                    deliver(self, entry, age, edge.cache_status.hit(left, detail="collapsed"))
                    return True
                case Miss() | Revalidate():
                    decision = again
        leading = collapser.lead(self.key)
        if not leading and get(self.head.headers, b"range") is not None:
            # Someone else leads, or the key's full response was not storable a moment ago (hit-for-miss): a range
            # goes on its own rather than fetching the whole object again.
            decision, cacheable = Miss(decision.detail, store=False), False
        try:
            return await self._fetch(decision, cacheable)
        finally:
            if leading:
                collapser.done(self.key, self.uncacheable)

    async def _fetch(self, decision: Decision, cacheable: bool) -> bool:
        edge = self.edge
        generation = edge.store.generation()
        if isinstance(decision, Miss | Revalidate) and decision.forced:
            edge.counters.forced["origin"] += 1
        fields = edge.origin_request_fields(self)
        if cacheable:
            fields = [(k, v) for k, v in fields if k not in CLIENT_CONDITIONALS]
            if isinstance(decision, Revalidate):
                fields += decision.headers_to_add
        request_time = edge.clock()
        conn, response = await peers.fetch(self, fields, cacheable)
        response_time = edge.clock()
        edge.counters.origin_response(response_time - request_time)
        try:
            if isinstance(decision, Revalidate):
                done = await self._revalidated(decision, conn, response, request_time, response_time, generation)
                if done is not None:
                    return done
            return await relay(self, conn, response, decision, cacheable, request_time, generation)
        except PassInstead:  # a ranged miss whose full response can't be kept: ask for the range alone
            pass
        finally:
            edge.pool.release(conn)
        # Only a fetch to store (a Miss or Revalidate) reads a range's full response, so only those get here.
        detail = decision.detail if isinstance(decision, Miss | Revalidate) else "uri-miss"
        return await self._fetch(Miss(detail, store=False), cacheable=False)

    async def _revalidated(self, decision: Revalidate, conn: OriginConnection, response: ResponseHead,
                           request_time: float, response_time: float, generation: int) -> bool | None:
        """Handle the origin's answer to our conditional request; None means relay it as a normal response."""
        edge, entry, policy = self.edge, decision.entry, self.site.policy
        status = response.status
        headers = response.headers
        if status == 304:
            async for _ in conn.body(edge.config.origin.read_timeout):
                pass
            freshened = freshen_stored(edge, self.site, entry, headers, request_time, response_time, generation,
                                       forced=decision.forced)
            if freshened is None:  # about another representation: ask again without conditions
                return await self._fetch(Miss("stale"), cacheable=True)
            fresh, self.stored = freshened
            self.cache = REVALIDATED
            now = edge.clock()
            deliver(self, fresh, current_age(fresh, now),
                    edge.cache_status.forward(decision.detail, fwd_status=304, stored=self.stored, ttl=ttl(fresh, now)))
            return True
        if counts_as_error(status) and can_serve_stale_on_error(entry, edge.clock(), self.creq, policy):
            conn.close()  # don't read the error body
            self.cache = STALE
            deliver(self, entry, current_age(entry, edge.clock()),
                    edge.cache_status.forward("stale", fwd_status=status, detail="stale-if-error"))
            return True
        return None


# ---- the synchronous part ----

def begin(edge: Edge, client: ClientConnection, head: RequestHead) -> bool:
    """Answer now if possible (True), else start the exchange task (False)."""
    started = time.monotonic()
    try:
        ex = _prepare(edge, client, head, started)
    except ClientError as e:  # no site yet: a plain error
        write_error(client, e, None)
        edge.log_exchange(client, head, e.status, 0, ERROR, 0.0, started)
        return client.response_done(head.keep_alive and not e.close)
    if ex.refusal is not None:  # the site is known: its edge-mode CORS fields let a script read the error
        if ex.site.cors is not None:
            ex.cors = ex.site.cors.response_fields(get(head.headers, b"origin"))
        ex.cache = ERROR
        write_error(client, ex.refusal, ex)
        edge.log(ex)
        return client.response_done(head.keep_alive and not ex.refusal.close)
    if ex.answer_locally() or ex.edge_cors():
        return client.response_done(head.keep_alive)
    now = edge.clock()
    # A peer ahead of this node's fleet journal is answered as if nothing were stored: it fetches anew.
    decision = lookup(ex.creq, edge.store.get(ex.key) if not ex.ahead else [], now, ex.site.policy)
    if type(decision) is Hit:  # the hot path skips the pattern match below (measured: ~1 µs)
        ex.cache = HIT
        deliver(ex, decision.entry, decision.age, edge.cache_status.hit(decision.ttl))
        edge.log(ex)
        return client.response_done(head.keep_alive)
    match decision:
        case Hit(entry=entry, age=age, ttl=left):
            ex.cache = HIT
            deliver(ex, entry, age, edge.cache_status.hit(left))
        case Validated(entry=entry, age=age, ttl=left):  # the client forced a validation; one was just done
            ex.cache = HIT
            edge.counters.forced["interval"] += 1
            deliver(ex, entry, age, edge.cache_status.hit(left, detail="validated-recently"))
        case StaleHit(entry=entry, age=age, revalidate=revalidate):
            ex.cache = STALE
            deliver(ex, entry, age, edge.cache_status.hit(entry.freshness_lifetime - age, detail="stale"))
            if revalidate:
                edge.revalidate_in_background(ex, entry)
        case OnlyIfCachedMiss():
            ex.cache = MISS
            write_answer(ex, 504, [(b"content-length", b"0")], b"", edge.cache_status.plain(detail="only-if-cached"))
        case _:
            ex.arrived = now
            client.task = edge.loop.create_task(ex.run(decision))
            return False
    edge.log(ex)
    return client.response_done(head.keep_alive)


def _prepare(edge: Edge, client: ClientConnection, head: RequestHead, started: float) -> Exchange:
    # The parser's dict of the fields (made for its checks), else one C-speed pass; duplicate Hosts were refused.
    fields = head.fields if head.fields is not None else dict(head.headers)
    target = head.target
    host_field = fields.get(b"host")
    scheme, claim = client.scheme, None
    if FIELD in fields:  # a cluster peer's request is keyed by the scheme it signed, checked below
        claim = _read_claim(fields[FIELD])
        scheme = claim.scheme if isinstance(claim, Claim) else scheme
    if target[:1] != b"/":
        target, authority = _origin_form(target)
        if authority is not None:
            if host_field is not None and normalize_host(host_field, scheme) != normalize_host(authority, scheme):
                raise BadRequest("absolute-form target disagrees with Host")
            host_field = authority
    if host_field is None:
        raise BadRequest("no Host")
    host, site = edge.resolve_host(host_field, scheme)
    creq = CacheRequest(head.method, scheme, host, target, head.headers, DECIDING_FIELDS.isdisjoint(fields))
    ex = Exchange(edge, client, head, site, host, target, started, creq, primary_key(creq, site.policy.query_mode))
    # Refused here but answered by begin, which then knows the site (and so its CORS fields): a cluster request
    # that does not hold (403), a request that came back around (508), an expectation we can't meet (417).
    if claim is not None:
        ex.refusal = _check_peer(ex, claim)
    if ex.refusal is not None:
        pass
    elif (b"via" in fields or b"cdn-loop" in fields) and _is_loop(ex, fields):
        ex.refusal = LoopDetected()
    else:
        expect = fields.get(b"expect")
        if expect is not None and expect.lower() != b"100-continue":
            ex.refusal = ExpectationFailed()
    return ex


def _read_claim(value: bytes) -> Claim | ClusterAuthError:
    try:
        return parse_claim(value)
    except ClusterAuthError as e:
        return e


def _is_loop(ex: Exchange, fields: dict[bytes, bytes]) -> bool:
    """Our CDN-Loop member came back (RFC 8586); or, for a request no edgeproxy tagged with its node, our Via name."""
    headers, edge = ex.head.headers, ex.edge
    if b"cdn-loop" in fields and forwarding.carries_cdn_id(headers, edge.cdn_loop):
        return forwarding.is_cdn_loop(headers, edge.cdn_loop)
    return b"via" in fields and ex.internal is None and forwarding.is_loop(headers, edge.via)


def _check_peer(ex: Exchange, claim: Claim | ClusterAuthError) -> ClientError | None:
    """A request signed as a cluster peer's: note the peer, or the refusal (cluster nodes share one Via name, so a
    peer's request is exempt from the Via loop check; CDN-Loop still applies)."""
    edge = ex.edge
    peers = edge.peers
    if peers is None:
        log.warning("refused a cluster request from %s: this node is in no cluster", ex.client.peer)
        return Forbidden("not a cluster node")
    try:
        if isinstance(claim, ClusterAuthError):
            raise claim
        _check_transport(ex, peers.tls, peers.mutual)
        now = edge.clock()
        sender = peers.ring.verify(claim, ex.head.method, ex.host.encode(), ex.target, ex.head.headers, now)
        replayed = edge.replays.admit(claim, now)  # only once the signature holds: forgeries can't fill it
        if replayed is not None:
            raise ClusterAuthError(replayed)
    except ClusterAuthError as e:
        log.warning("refused a cluster request from %s: %s", ex.client.peer, e)
        return Forbidden("cluster request refused")
    ex.internal = sender.node
    ex.ahead = sender.ahead_of(edge.journal_seq())
    edge.counters.cluster["received"] += 1
    return None


def _check_transport(ex: Exchange, tls: bool, mutual: bool) -> None:
    """With ``[cluster] tls``, a cluster request over TLS; with mutual TLS, from a certificate the cluster's CA
    signed (the listener asked for one and verified what it got), else ClusterAuthError."""
    if not tls:
        return
    if ex.client.scheme != "https":
        raise ClusterAuthError("cluster requests must come over TLS (cluster.tls)")
    if mutual and not ex.client.transport.get_extra_info("peercert"):
        raise ClusterAuthError("no client certificate signed by cluster.ca_file")


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
