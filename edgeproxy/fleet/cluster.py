"""Clustering: which node of the cluster owns a cache key, and how nodes tell each other's requests from a client's.
Pure: no sockets, no clock (time is passed in).

Rules kept here:
- **Owner by rendezvous hashing** (highest random weight): every node ranks the peers for a key by a hash of (peer,
  key) and the first is the owner. Every node computes the same ranking from the same ``[cluster] peers``, with no
  coordination, and a node joining or leaving moves only the keys it owned (1/N of them), not a reshuffle.
- A node that misses asks the peers ranked above itself, at most ``MAX_HOPS`` of them (the owner, then the next one
  when the owner is down or slow), then the origin. The owner is then the only node that fetches the key from the
  origin and the one whose collapsing serves the whole cluster; an asking node stores what it gets like any
  response, so its hot objects are served locally afterwards.
- **Internal requests** carry ``EdgeProxy-Cluster: NODE; to=PEER; s=SCHEME; t=UNIX_MS; n=NONCE[; seq=N]; h=HASH;
  sig=HEX``: an HMAC-SHA256, keyed with the shared secret (``[cluster] secret_file``), of the sender, the receiver,
  the scheme the client used, the time in milliseconds, a random nonce, the fleet journal entry the sender has
  applied (``seq``, with ``[fleet]``), the method, host and target, and a hash of every other field sent
  (``fields_digest``). So a signature is good for one request to one node, once: another receiver, another scheme,
  changed or added fields, a replay within the window (``ReplayGuard``) or a time more than ``MAX_SKEW`` away are
  refused with 403, and clients can neither make a node skip its ring nor pose as a peer. The field never reaches an
  origin.
- **The scheme travels with the request**: the receiver keys the request and tells its origin
  (``X-Forwarded-Proto``) by the signed scheme, never by the listener the peer reached (peers may talk plain HTTP
  or TLS among themselves whatever the client used), so an https object never becomes an http one or back.
- A peer that has not yet applied entry ``seq`` does not answer from its cache (the sender has applied a purge it
  has not: its copy may be purged), it fetches anew. A node answers an internal request itself and never forwards
  it again, so a request makes at most one cluster hop.
- Loops between tiers or clusters that share nothing are caught by ``CDN-Loop`` (RFC 8586, edgeproxy/proxy/
  forwarding.py), not here.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

FIELD = b"edgeproxy-cluster"
MAX_HOPS = 2  # the owner, then the next node on the ring; then the origin
MAX_SKEW = 60.0  # seconds between a signature's time and ours (clocks of one cluster are NTP-synchronised)
SCHEMES = frozenset({"http", "https"})
# Fields the HTTP layer may add, drop or reframe between two nodes: left out of the signed hash.
UNSIGNED: frozenset[bytes] = frozenset(
    {FIELD, b"connection", b"keep-alive", b"content-length", b"transfer-encoding", b"te", b"upgrade"})
REPLAY_CAPACITY = 100_000  # nonces remembered per process (~10 MB); past it the accepted window narrows instead


class ClusterAuthError(ValueError):
    """An internal request whose signature does not hold; the message says why (for the log, not the client)."""


def score(peer: str, key: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{peer}\0{key}".encode(), digest_size=8).digest(), "big")


def ranking(key: str, peers: Sequence[str]) -> list[str]:
    """The peers for ``key``, owner first (rendezvous hashing)."""
    return sorted(peers, key=lambda peer: score(peer, key), reverse=True)


def fields_digest(fields: Sequence[tuple[bytes, bytes]]) -> str:
    """A hash of the fields a node sends (names lower-case, in order), less those the HTTP layer may change."""
    h = hashlib.sha256()
    for name, value in fields:
        if name not in UNSIGNED:
            h.update(name + b":" + value + b"\n")
    return h.hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class Claim:
    """An ``EdgeProxy-Cluster`` field as parsed, before its signature is checked."""

    node: str
    to: str
    scheme: str
    t_ms: int
    nonce: str
    seq: int | None
    digest: str
    sig: bytes


def parse_claim(value: bytes) -> Claim:
    """The parts of an ``EdgeProxy-Cluster`` value, or ClusterAuthError("malformed")."""
    try:
        node, *params = (p.strip() for p in value.decode("ascii").split(";"))
        fields = dict(p.split("=", 1) for p in params)
        claim = Claim(node, fields.pop("to"), fields.pop("s"), int(fields.pop("t")), fields.pop("n"),
                      int(fields.pop("seq")) if "seq" in fields else None, fields.pop("h"),
                      fields.pop("sig").encode("ascii"))
    except (UnicodeDecodeError, ValueError, KeyError):
        raise ClusterAuthError("malformed") from None
    if fields or claim.scheme not in SCHEMES or not claim.nonce.isalnum() or len(claim.nonce) > 64:
        raise ClusterAuthError("malformed")
    return claim


@dataclass(frozen=True, slots=True)
class Ring:
    """This node's view of the cluster: the peers (``HOST:PORT``, this node's included) and which one it is."""

    peers: tuple[str, ...]
    me: str
    secret: bytes

    def hops(self, key: str) -> list[str]:
        """The peers to ask for ``key`` before the origin: those ranked above this node, at most MAX_HOPS."""
        ranked = ranking(key, self.peers)
        return ranked[:min(ranked.index(self.me), MAX_HOPS)]

    def sign(self, to: str, scheme: str, method: bytes, host: bytes, target: bytes,
             fields: Sequence[tuple[bytes, bytes]], now: float, nonce: str, seq: int | None = None) -> bytes:
        """The ``EdgeProxy-Cluster`` value for one request to peer ``to`` (``nonce``: fresh random, alphanumeric)."""
        claim = Claim(self.me, to, scheme, int(now * 1000), nonce, seq, fields_digest(fields), b"")
        applied = f"; seq={seq}" if seq is not None else ""
        return (f"{self.me}; to={to}; s={scheme}; t={claim.t_ms}; n={nonce}{applied}; h={claim.digest}; sig=".encode()
                + _mac(self.secret, claim, method, host, target))

    def verify(self, claim: Claim, method: bytes, host: bytes, target: bytes,
               fields: Sequence[tuple[bytes, bytes]], now: float) -> Signed:
        """Who signed ``claim`` for this request and the journal entry it had applied, or ClusterAuthError. The
        caller checks the nonce against its ReplayGuard once this holds."""
        if claim.node not in self.peers or claim.node == self.me:
            raise ClusterAuthError(f"{claim.node!r} is not a peer")
        if claim.to != self.me:
            raise ClusterAuthError(f"signed by {claim.node} for {claim.to!r}, not for this node")
        skew = now - claim.t_ms / 1000
        if abs(skew) > MAX_SKEW:
            raise ClusterAuthError(f"signed {skew:+.0f}s away from this node's clock")
        if not hmac.compare_digest(claim.sig, _mac(self.secret, claim, method, host, target)):
            raise ClusterAuthError(f"bad signature from {claim.node}")
        if not hmac.compare_digest(claim.digest, fields_digest(fields)):
            raise ClusterAuthError(f"fields changed since {claim.node} signed them")
        return Signed(claim.node, claim.seq, claim.scheme)


@dataclass(frozen=True, slots=True)
class Signed:
    """A verified internal request: the peer that sent it, the fleet journal entry it had applied (or None) and the
    scheme its client used."""

    node: str
    seq: int | None
    scheme: str = "http"

    def ahead_of(self, applied: int | None) -> bool:
        """Whether the sender has applied a purge this node (at ``applied``) has not: its cache must not answer."""
        return self.seq is not None and applied is not None and self.seq > applied


class ReplayGuard:
    """The nonces of the signatures accepted in the last ``MAX_SKEW`` seconds, so each is accepted once.

    Bounded: past ``capacity`` the oldest is forgotten and every signature as old as it or older is refused from then
    on (``floor_ms``), so a forgotten nonce can't be replayed; under that load the accepted window narrows (a peer
    signs just before it sends) instead of memory growing. Per process: a replay to another worker of the same node
    repeats one identical signed fetch at most once per worker."""

    def __init__(self, capacity: int = REPLAY_CAPACITY) -> None:
        self.capacity = capacity
        self.order: deque[tuple[int, str]] = deque()  # (t_ms, nonce), in the order accepted
        self.seen: set[str] = set()
        self.floor_ms = -1

    def admit(self, claim: Claim, now: float) -> str | None:
        """None when ``claim``'s nonce is new (it is remembered), else why it is refused."""
        expired = int((now - MAX_SKEW) * 1000)
        order, seen = self.order, self.seen
        while order:  # arrival order is close to time order: the oldest arrivals go first
            t_ms, oldest = order[0]
            if t_ms >= expired and len(order) < self.capacity:
                break
            order.popleft()
            seen.discard(oldest)
            if t_ms >= expired:  # forgotten before its time: nothing as old may be accepted any more
                self.floor_ms = max(self.floor_ms, t_ms)
        if claim.t_ms <= self.floor_ms:
            return "signed before the replay window (too many recent cluster requests to remember)"
        if claim.nonce in seen:
            return f"replayed signature from {claim.node}"
        seen.add(claim.nonce)
        order.append((claim.t_ms, claim.nonce))
        return None


def _mac(secret: bytes, claim: Claim, method: bytes, host: bytes, target: bytes) -> bytes:
    applied = b"-" if claim.seq is None else b"%d" % claim.seq
    message = b"\n".join((claim.node.encode(), claim.to.encode(), claim.scheme.encode(), b"%d" % claim.t_ms,
                          claim.nonce.encode(), applied, method, host.lower(), target, claim.digest.encode()))
    return hmac.new(secret, message, hashlib.sha256).hexdigest().encode("ascii")
