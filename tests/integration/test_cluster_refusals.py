"""A peer's refusals and a slow peer (edgeproxy/proxy/peers.py): a 403, 421 or 508 of the peer's own is skipped for
the next hop (here the origin); the same statuses from the origin, relayed by the peer, are the answer; a peer that
accepted is waited on like an origin, up to ``[origin] read_timeout``, then skipped.

Category: faults. Two-node clusters on free loopback ports: a real asking node, and as the key's owner either a real
edgeproxy or a scripted server on the owner's port (to answer as a peer would, slowly, or never). Every check is a
count (the origin's and the peer's records of what they were asked, the node's cluster counters), never a duration.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_cluster import Cluster, cache_status, counters, get
from tests.scriptorigin import Reply, ScriptOrigin, Seen

READ_TIMEOUT = 1.0  # the asker's [origin] read_timeout where a peer never answers


def owned_by(cluster: Cluster, peer: str, prefix: str) -> str:
    return next(t for t in (f"{prefix}?n={i}" for i in range(200)) if cluster.owner(t) == peer)


@pytest.fixture
def pair(tmp_path: Path, origin: ScriptOrigin) -> Iterator[Cluster]:
    c = Cluster(tmp_path, origin, size=2)
    try:
        yield c
    finally:
        for peer in list(c.nodes):
            c.stop(peer)


@pytest.fixture
def scripted_peer(pair: Cluster) -> Iterator[tuple[Cluster, ScriptOrigin]]:
    """The second node is a scripted server on the peer's address: it answers as ``routes`` say."""
    with ScriptOrigin() as peer:
        pair.ports[1], pair.peers[1] = peer.port, f"127.0.0.1:{peer.port}"
        yield pair, peer


def asked_as_peer(seen: list[Seen]) -> bool:
    return bool(seen) and all(s.header("edgeproxy-cluster") is not None for s in seen)


@pytest.mark.parametrize(("status", "detail", "why"), [
    (403, "forbidden", "403 forbidden"),
    (421, "no-site", "421 no such site"),
    (508, "loop", "508 loop"),
])
def test_a_peers_own_refusal_is_skipped_for_the_origin(scripted_peer: tuple[Cluster, ScriptOrigin],
                                                      origin: ScriptOrigin, status: int, detail: str,
                                                      why: str) -> None:
    cluster, peer = scripted_peer
    asker = cluster.start(cluster.peers[0])
    target = owned_by(cluster, cluster.peers[1], "/obj")
    peer.routes["/obj"] = Reply(status, [("cache-status", f'edgeproxy; detail="{detail}"')], b"refused\n")
    response = get(asker, target)
    assert response.status == 200 and response.body == f"{target}\n".encode()
    assert asked_as_peer(peer.seen("/obj")) and len(peer.seen("/obj")) == 1
    assert len(origin.seen("/obj")) == 1  # the asker went to the origin itself
    assert counters(asker)["failed"] == 1 and counters(asker)["sent"] == 0
    assert f"it refused this node's request ({why})" in asker.log()


def test_a_real_peer_without_the_site_refuses_with_421_and_is_skipped(pair: Cluster, origin: ScriptOrigin) -> None:
    owner_peer = pair.peers[1]
    owner = pair.start(owner_peer, site=[{"hosts": ["other.test"], "origin": origin.url}])
    asker = pair.start(pair.peers[0])
    target = owned_by(pair, owner_peer, "/obj")
    response = get(asker, target)
    assert response.status == 200 and cache_status(response)[-1].startswith("edgeproxy; fwd=uri-miss")
    assert len(origin.seen("/obj")) == 1
    assert counters(asker)["failed"] == 1 and counters(owner)["received"] == 0
    assert "it refused this node's request (421 no such site)" in asker.log()


@pytest.mark.parametrize("status", [403, 421, 508])
def test_an_origins_own_refusal_relayed_by_the_owner_is_the_answer(pair: Cluster, origin: ScriptOrigin,
                                                                   status: int) -> None:
    # The origin is itself behind a CDN that refused: its Cache-Status member carries a refusal's detail, and the
    # owner's member (the last) says it forwarded.
    origin.routes["/deny"] = Reply(status, [("content-type", "text/plain"),
                                            ("cache-status", 'othercdn; detail="forbidden"')], b"origin says no\n")
    owner_peer = pair.peers[1]
    owner = pair.start(owner_peer)
    asker = pair.start(pair.peers[0])
    target = owned_by(pair, owner_peer, "/deny")
    response = get(asker, target)
    assert response.status == status and response.body == b"origin says no\n"
    assert len(origin.seen("/deny")) == 1 and asked_as_peer(origin.seen("/deny")) is False
    assert counters(asker)["sent"] == 1 and counters(asker)["failed"] == 0
    assert counters(owner)["received"] == 1
    assert "refused this node's request" not in asker.log()


def test_a_slow_peer_is_waited_on_like_an_origin(scripted_peer: tuple[Cluster, ScriptOrigin],
                                                 origin: ScriptOrigin) -> None:
    cluster, peer = scripted_peer
    asker = cluster.start(cluster.peers[0], origin={"read_timeout": 30.0})
    target = owned_by(cluster, cluster.peers[1], "/obj")
    # Slower than [cluster] connect_timeout (500 ms): only the connection is bounded by it, not the answer.
    peer.routes["/obj"] = Reply(200, [("cache-control", "public, max-age=60")], b"from the peer\n", delay=1.0)
    response = get(asker, target)
    assert response.status == 200 and response.body == b"from the peer\n"
    assert len(peer.seen("/obj")) == 1 and origin.seen("/obj") == []
    assert counters(asker)["sent"] == 1 and counters(asker)["failed"] == 0


def test_a_peer_that_never_answers_is_skipped_after_the_read_timeout(scripted_peer: tuple[Cluster, ScriptOrigin],
                                                                     origin: ScriptOrigin) -> None:
    cluster, peer = scripted_peer
    asker = cluster.start(cluster.peers[0], origin={"read_timeout": READ_TIMEOUT})
    target = owned_by(cluster, cluster.peers[1], "/obj")
    peer.routes["/obj"] = Reply(stall=True)
    response = get(asker, target)
    assert response.status == 200 and response.body == f"{target}\n".encode()
    assert asked_as_peer(peer.seen("/obj")) and len(peer.seen("/obj")) == 1
    assert len(origin.seen("/obj")) == 1
    assert counters(asker)["failed"] == 1 and counters(asker)["sent"] == 0
    assert f"cluster: peer {cluster.peers[1]} skipped" in asker.log()
