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
- **Internal requests** carry ``EdgeProxy-Cluster: NODE; t=UNIX[; seq=N]; sig=HEX``: an HMAC-SHA256 of the node, the
  time, the fleet journal entry the sender has applied (``seq``, with ``[fleet]``), the method, host and target, keyed
  with the shared secret (``[cluster] secret_file``). A peer that has not yet applied entry ``seq`` does not answer
  from its cache (the sender has applied a purge it has not: its copy may be purged), it fetches anew. A node answers
  an internal request itself and never forwards it again, so a request makes at most one cluster hop. A forged,
  replayed (older than ``MAX_SKEW``) or foreign signature is refused with 403: clients cannot make a node skip its
  ring, nor pose as a peer. The field never reaches an origin.
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

    def sign(self, method: bytes, host: bytes, target: bytes, now: float, seq: int | None = None) -> bytes:
        t = int(now)
        applied = f"; seq={seq}" if seq is not None else ""
        return f"{self.me}; t={t}{applied}; sig=".encode() + _mac(self.secret, self.me, t, seq, method, host, target)

    def verify(self, value: bytes, method: bytes, host: bytes, target: bytes, now: float) -> Signed:
        """Who signed ``value`` for this request and the journal entry it had applied, or ClusterAuthError."""
        try:
            node, *params = (p.strip() for p in value.decode("ascii").split(";"))
            fields = dict(p.split("=", 1) for p in params)
            t = int(fields.pop("t"))
            seq = int(fields.pop("seq")) if "seq" in fields else None
            sig = fields.pop("sig").encode("ascii")
        except (UnicodeDecodeError, ValueError, KeyError):
            raise ClusterAuthError("malformed") from None
        if node not in self.peers or node == self.me:
            raise ClusterAuthError(f"{node!r} is not a peer")
        if abs(now - t) > MAX_SKEW:
            raise ClusterAuthError(f"signed {now - t:+.0f}s away from this node's clock")
        if fields or not hmac.compare_digest(sig, _mac(self.secret, node, t, seq, method, host, target)):
            raise ClusterAuthError(f"bad signature from {node}")
        return Signed(node, seq)


@dataclass(frozen=True, slots=True)
class Signed:
    """A verified internal request: the peer that sent it, and the fleet journal entry it had applied (or None)."""

    node: str
    seq: int | None

    def ahead_of(self, applied: int | None) -> bool:
        """Whether the sender has applied a purge this node (at ``applied``) has not: its cache must not answer."""
        return self.seq is not None and applied is not None and self.seq > applied


def _mac(secret: bytes, node: str, t: int, seq: int | None, method: bytes, host: bytes, target: bytes) -> bytes:
    applied = b"-" if seq is None else b"%d" % seq
    message = b"\n".join((node.encode(), b"%d" % t, applied, method, host.lower(), target))
    return hmac.new(secret, message, hashlib.sha256).hexdigest().encode("ascii")
