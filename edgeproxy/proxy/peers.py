"""The cluster on a miss: a fetch to store goes to the key's owner (and, when it is down or slow, the next node on the
ring) before the origin. The ring and the signatures are edgeproxy/fleet/cluster.py; this module reads the secret,
knows the peers' addresses and moves the request.

Rules kept here:
- Only fetches to store (a GET or HEAD miss or revalidation, and a stale-while-revalidate refresh in the background)
  go to a peer: a pass, a request with a body or an internal request (a peer's own: it never goes round again), and
  a refresh that a peer's request set off, go to the origin.
- A peer that can't be connected to within ``[cluster] connect_timeout``, or closes or times out before its
  response head, is skipped for the next hop and finally the origin: a client sees no error that a direct fetch
  would not have given. So is a peer that refuses the request itself (403, 421 or 508 with its own Cache-Status
  member: another secret, no such site, a loop): the cluster's configuration disagrees, not the client's request.
  Any other response the peer gives (a 502 from its origin included) is the answer.
- The peer is asked for the host the cache key was made from (its site and key are ours) and the scheme the client
  used, signed for that peer, scheme, method, host, target and fields, with a fresh nonce and the fleet journal
  entry this cache has applied: a peer behind it fetches anew rather than answer with a copy that a purge this node
  already applied may concern.
- With ``[cluster] tls`` peers are reached over TLS, their certificates checked against ``ca_file`` (the system's
  trust otherwise), and this node shows ``cert_file`` when it has one (mutual TLS); a peer then accepts a cluster
  request only over TLS, and with mutual TLS only from a certificate its ``ca_file`` signed (proxy/exchange.py).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from edgeproxy.config import Config
from edgeproxy.errors import OriginConnectError, OriginError, OriginTimeout
from edgeproxy.fleet.cluster import FIELD, Ring
from edgeproxy.fleet.journal import Position
from edgeproxy.http.headers import Headers
from edgeproxy.proxy.origin import OriginAddress, OriginClosed, OriginConnection
from edgeproxy.proxy.origin_parser import ResponseHead
from edgeproxy.proxy.upstream import send_request

if TYPE_CHECKING:
    from edgeproxy.proxy.edge import Edge
    from edgeproxy.proxy.exchange import Exchange

log = logging.getLogger("edgeproxy.cluster")
ASKED = (b"GET", b"HEAD")
PEER_FAILURES = (OriginConnectError, OriginTimeout, OriginClosed)
PEER_REFUSALS = frozenset({403, 421, 508})
# A peer's own Cache-Status detail on a refusal -> what the log says.
REFUSAL_DETAILS = {b'detail="forbidden"': "forbidden", b'detail="no-site"': "no such site", b'detail="loop"': "loop"}
LOG_EVERY = 10.0  # seconds: a peer that is down is named once in this long, not once a miss
_logged: dict[str, float] = {}
Answer = tuple[OriginConnection, ResponseHead]


def _note_failure(peer: str, key: str, exc: Exception) -> None:
    now = time.monotonic()
    if now - _logged.get(peer, -LOG_EVERY) >= LOG_EVERY:
        _logged[peer] = now
        log.warning("cluster: peer %s skipped (asked for %s): %s; the next hop answers", peer, key, exc)


@dataclass(frozen=True, slots=True)
class Peers:
    ring: Ring
    addresses: dict[str, OriginAddress]
    connect_timeout: float
    tls: bool = False  # cluster requests are accepted only over TLS
    mutual: bool = False  # ... and only from a client certificate the cluster's CA signed


def load_peers(config: Config) -> Peers | None:
    """The cluster as ``config`` describes it (reading its secret), or None without one. OSError names the file."""
    c = config.cluster
    if not c.peers or c.me is None or c.secret_file is None:
        return None
    try:
        with open(c.secret_file, "rb") as f:
            secret = f.read().strip()
    except OSError as exc:
        raise OSError(f"cluster.secret_file {c.secret_file}: {exc.strerror}") from None
    if len(secret) < 16:
        raise OSError(f"cluster.secret_file {c.secret_file}: the secret must be at least 16 bytes")
    scheme = "https" if c.tls else "http"
    addresses = {peer: OriginAddress.from_url(f"{scheme}://{peer}", ca_file=c.ca_file, cert_file=c.cert_file,
                                              key_file=c.key_file)
                 for peer in c.peers if peer != c.me}
    return Peers(Ring(c.peers, c.me, secret), addresses, c.connect_timeout, c.tls, c.cert_file is not None)


def peer_refusal(response: ResponseHead) -> str | None:
    """Why a peer refused our request itself (a 403, 421 or 508 of its own, not one it relayed from an origin): its
    secret, its sites or its ring differ from ours. None for any other answer."""
    if response.status not in PEER_REFUSALS:
        return None
    members = b",".join(v for k, v in response.headers if k == b"cache-status").split(b",")
    own = members[-1].strip() if members else b""
    refused = next((d for d in REFUSAL_DETAILS if d in own), None)
    if refused is None or b"fwd=" in own or b"hit" in own:
        return None
    return f"{response.status} {REFUSAL_DETAILS[refused]}"


def journal_in_store(store: object, stream: str) -> Callable[[], int | None] | None:
    """How a serving process reads the fleet journal entry its cache has applied: the note the fleet keeps in the
    host's shared store (edgeproxy/fleet/member.py), one LMDB read. None for a cache of this process alone."""
    shared = getattr(store, "shared", store)
    read_note = getattr(shared, "read_note", None)
    if read_note is None:
        return None
    name = f"fleet:{stream}"

    def applied() -> int | None:
        position = Position.unpack(read_note(name))
        return position.seq if position is not None else None

    return applied


def hops(edge: Edge, key: str, scheme: str, method: bytes, host: str, target: bytes,
         fields: Headers) -> list[tuple[str, OriginAddress, Headers]]:
    """The peers to ask for ``key`` before the origin, in order, each with its address and the fields signed for it:
    the origin request's, with the key's host."""
    peers = edge.peers
    if peers is None or method not in ASKED:
        return []
    ranked = peers.ring.hops(key)
    if not ranked:
        return []
    fields = [(b"host", host.encode()), *((k, v) for k, v in fields if k != b"host")]
    now, seq = edge.clock(), edge.journal_seq()
    return [(peer, peers.addresses[peer], [*fields, (FIELD, peers.ring.sign(
        peer, scheme, method, host.encode(), target, fields, now, secrets.token_hex(12), seq))]) for peer in ranked]


async def ask(edge: Edge, key: str, route: list[tuple[str, OriginAddress, Headers]],
              send: Callable[[OriginAddress, Headers, float], Awaitable[Answer]]) -> Answer | None:
    """The first peer on ``route`` that answers (``send`` makes the exchange with it), or None: the origin's turn."""
    assert edge.peers is not None
    for peer, address, signed in route:
        try:
            conn, response = await send(address, signed, edge.peers.connect_timeout)
        except PEER_FAILURES as exc:
            edge.counters.cluster["failed"] += 1
            _note_failure(peer, key, exc)
            continue
        refusal = peer_refusal(response)
        if refusal is not None:  # the cluster disagrees with itself (secret, sites, ring): not the client's doing
            edge.pool.release(conn)  # closed: its body was not read
            edge.counters.cluster["failed"] += 1
            _note_failure(peer, key, OriginError(f"it refused this node's request ({refusal})"))
            continue
        edge.counters.cluster["sent"] += 1
        return conn, response
    return None


async def fetch(ex: Exchange, fields: Headers, cacheable: bool) -> Answer:
    """Send the request to the key's owner (then the next node), else the origin; the connection and response head."""
    if cacheable and ex.internal is None:
        route = hops(ex.edge, ex.key, ex.creq.scheme, ex.head.method, ex.host, ex.target, fields)
        if route:
            answer = await ask(ex.edge, ex.key, route, lambda address, signed, timeout: send_request(
                ex, signed, address, timeout))
            if answer is not None:
                return answer
    return await send_request(ex, fields)
