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
- **Internal requests** carry ``EdgeProxy-Cluster: NODE; t=UNIX; sig=HEX``: an HMAC-SHA256 of the node, the time,
  the method, host and target, keyed with the shared secret (``[cluster] secret_file``). A node answers an internal
  request itself and never forwards it again, so a request makes at most one cluster hop. A forged, replayed (older
  than ``MAX_SKEW``) or foreign signature is refused with 403: clients cannot make a node skip its ring, nor pose as
  a peer. The field never reaches an origin.
- Loops between tiers or clusters that share nothing are caught by ``CDN-Loop`` (RFC 8586, edgeproxy/proxy/
  forwarding.py), not here.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass

FIELD = b"edgeproxy-cluster"
MAX_HOPS = 2  # the owner, then the next node on the ring; then the origin
MAX_SKEW = 60.0  # seconds between a signature's time and ours (clocks of one cluster are NTP-synchronised)


class ClusterAuthError(ValueError):
    """An internal request whose signature does not hold; the message says why (for the log, not the client)."""


def score(peer: str, key: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{peer}\0{key}".encode(), digest_size=8).digest(), "big")


def ranking(key: str, peers: Sequence[str]) -> list[str]:
    """The peers for ``key``, owner first (rendezvous hashing)."""
    return sorted(peers, key=lambda peer: score(peer, key), reverse=True)


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

    def sign(self, method: bytes, host: bytes, target: bytes, now: float) -> bytes:
        t = int(now)
        return f"{self.me}; t={t}; sig=".encode() + _mac(self.secret, self.me, t, method, host, target)

    def verify(self, value: bytes, method: bytes, host: bytes, target: bytes, now: float) -> str:
        """The peer that signed ``value`` for this request, or ClusterAuthError."""
        try:
            node, t_part, sig_part = (p.strip() for p in value.decode("ascii").split(";"))
            t = int(t_part.removeprefix("t="))
            sig = sig_part.removeprefix("sig=").encode("ascii")
        except (UnicodeDecodeError, ValueError):
            raise ClusterAuthError("malformed") from None
        if node not in self.peers or node == self.me:
            raise ClusterAuthError(f"{node!r} is not a peer")
        if abs(now - t) > MAX_SKEW:
            raise ClusterAuthError(f"signed {now - t:+.0f}s away from this node's clock")
        if not hmac.compare_digest(sig, _mac(self.secret, node, t, method, host, target)):
            raise ClusterAuthError(f"bad signature from {node}")
        return node


def _mac(secret: bytes, node: str, t: int, method: bytes, host: bytes, target: bytes) -> bytes:
    message = b"\n".join((node.encode(), b"%d" % t, method, host.lower(), target))
    return hmac.new(secret, message, hashlib.sha256).hexdigest().encode("ascii")
