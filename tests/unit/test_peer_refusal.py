"""Which answers of a peer are its own refusal (edgeproxy/proxy/peers.py ``peer_refusal``): a table.

Category: core. A refusal (the cluster disagrees with itself) is skipped for the next hop; anything else the peer
answers, an origin's 403, 421 or 508 relayed by it included, is the answer. Only the last Cache-Status member is
the peer's own (RFC 9211 §2: the cache nearest the origin first), over all its field lines.
"""

from __future__ import annotations

import pytest

from edgeproxy.proxy.origin_parser import ResponseHead
from edgeproxy.proxy.peers import peer_refusal


def head(status: int, *cache_status: bytes) -> ResponseHead:
    return ResponseHead(status, b"X", [(b"content-type", b"text/plain"),
                                       *((b"cache-status", v) for v in cache_status)], b"1.1")


@pytest.mark.parametrize(("response", "refusal"), [
    (head(403, b'edgeproxy; detail="forbidden"'), "403 forbidden"),
    (head(421, b'edgeproxy; detail="no-site"'), "421 no such site"),
    (head(508, b'edgeproxy; detail="loop"'), "508 loop"),
    # the peer's own member is the last one, whichever field line carries it
    (head(421, b'othercdn; hit', b'edgeproxy; detail="no-site"'), "421 no such site"),
    (head(508, b'othercdn; fwd=miss, edgeproxy; detail="loop"'), "508 loop"),
    # relayed from the origin: the peer forwarded (fwd=) or answered from its cache (hit)
    (head(403, b"edgeproxy; fwd=uri-miss; fwd-status=403"), None),
    (head(403, b'edgeproxy; detail="forbidden", edgeproxy; fwd=uri-miss; fwd-status=403'), None),
    (head(508, b'edgeproxy; fwd=uri-miss; fwd-status=508; detail="loop"'), None),
    (head(421, b'edgeproxy; hit; ttl=30; detail="no-site"'), None),
    # not a refusal's status, or no member of ours saying why
    (head(404, b'edgeproxy; detail="no-site"'), None),
    (head(502, b'edgeproxy; fwd=uri-miss; detail="connect-error"'), None),
    (head(403), None),
    (head(403, b'edgeproxy; detail="request-timeout"'), None),
])
def test_a_peers_own_refusal_and_nothing_else(response: ResponseHead, refusal: str | None) -> None:
    assert peer_refusal(response) == refusal
