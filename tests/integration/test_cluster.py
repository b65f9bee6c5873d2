"""A cluster of three edges: each object is fetched from the origin once per cluster (by its owner), Cache-Status
shows both hops, clients can neither forge cluster traffic nor loop it, and an owner that is down is skipped.

Category: ops. Three proxies on ports chosen before they start (each lists all three as its peers) in front of a
scripted origin that counts what it is asked (conftest.py's), on free loopback ports. Every wait is bounded.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeproxy.fleet.cluster import Ring, ranking
from tests.integration.test_ops import control, wait_ready
from tests.redisserver import RedisServer
from tests.scriptorigin import Reply, ScriptOrigin, Seen
from tests.support import HTTPClient, Proc, Response, free_port, start_proxy

SECRET = "cluster-test-secret-0123456789"
HOST = "cluster.test"


class Cluster:
    def __init__(self, tmp_path: Path, origin: ScriptOrigin, size: int = 3) -> None:
        self.tmp_path, self.origin = tmp_path, origin
        self.ports = [free_port() for _ in range(size)]
        self.peers = [f"127.0.0.1:{p}" for p in self.ports]
        self.secret = tmp_path / "cluster.key"
        self.secret.write_text(SECRET + "\n")
        self.nodes: dict[str, Proc] = {}

    def start(self, peer: str, secret: Path | None = None, **overrides: object) -> Proc:
        workdir = self.tmp_path / peer.replace(":", "-")
        workdir.mkdir(exist_ok=True)
        cluster = {"peers": self.peers, "self": peer, "secret_file": str(secret or self.secret)}
        proxy = start_proxy(self.origin.url, workdir, port=int(peer.rpartition(":")[2]), cluster=cluster,
                            **overrides)  # type: ignore[arg-type]
        wait_ready(proxy)
        self.nodes[peer] = proxy
        return proxy

    def stop(self, peer: str) -> None:
        self.nodes.pop(peer).stop()

    def owner(self, target: str) -> str:
        return ranking(f"http://{HOST}{target}", self.peers)[0]

    def others(self, target: str) -> list[str]:
        return [p for p in self.peers if p != self.owner(target)]


@pytest.fixture
def cluster(tmp_path: Path, origin: ScriptOrigin) -> Iterator[Cluster]:
    c = Cluster(tmp_path, origin)
    try:
        for peer in c.peers:
            c.start(peer)
        yield c
    finally:
        for peer in list(c.nodes):
            c.stop(peer)


def get(proxy: Proc, target: str, headers: dict[str, str] | None = None) -> Response:
    with HTTPClient(proxy.port) as client:
        return client.request("GET", target, headers={"Host": HOST, **(headers or {})})


def cache_status(response: Response) -> list[str]:
    """Every Cache-Status member, in order (the origin-side cache first: RFC 9211 §2), over all its field lines."""
    return [m.strip() for line in response.header_all("cache-status") for m in line.split(",")]


def counters(proxy: Proc) -> dict[str, int]:
    return control(proxy, {"cmd": "stats"})["counters"]["cluster"]


def test_each_object_is_fetched_from_the_origin_once_per_cluster(cluster: Cluster, origin: ScriptOrigin) -> None:
    targets = [f"/obj?n={i}" for i in range(30)]
    for target in targets:
        for proxy in cluster.nodes.values():
            assert get(proxy, target).status == 200
    fetched = [s.target for s in origin.seen("/obj")]
    assert sorted(fetched) == sorted(targets)  # once each, whichever node was asked first
    for target in targets:
        for proxy in cluster.nodes.values():
            status = cache_status(get(proxy, target))
            assert status[-1].startswith("edgeproxy; hit; ttl="), status  # every node now hits
    sent = sum(counters(p)["sent"] for p in cluster.nodes.values())
    received = sum(counters(p)["received"] for p in cluster.nodes.values())
    assert sent == received == 2 * len(targets)  # every non-owner asked the owner once per object


def test_cache_status_shows_both_hops(cluster: Cluster) -> None:
    target = "/obj?hops=1"
    owner = cluster.nodes[cluster.owner(target)]
    asker = cluster.nodes[cluster.others(target)[0]]
    assert cache_status(get(owner, target)) == ["edgeproxy; fwd=uri-miss; fwd-status=200; stored"]
    status = cache_status(get(asker, target))
    assert status[0].startswith("edgeproxy; hit") and status[1] == "edgeproxy; fwd=uri-miss; fwd-status=200; stored"
    # a hit on the asking node: the owner's member as it was stored, then this node's hit
    later = cache_status(get(asker, target))
    assert later[0].startswith("edgeproxy; hit") and later[1].startswith("edgeproxy; hit")


def test_a_client_cannot_forge_cluster_traffic(cluster: Cluster, origin: ScriptOrigin) -> None:
    target = "/obj?forged=1"
    owner = cluster.owner(target)
    asker = cluster.nodes[cluster.others(target)[0]]
    forged = get(asker, target, {"EdgeProxy-Cluster": f"{owner}; t={int(time.time())}; sig=00ff"})
    assert forged.status == 403
    to = cluster.others(target)[0]
    stale = Ring(tuple(cluster.peers), owner, SECRET.encode()).sign(
        to, "http", b"GET", HOST.encode(), target.encode(), [(b"host", HOST.encode())], time.time() - 600, "old1")
    assert get(asker, target, {"EdgeProxy-Cluster": stale.decode()}).status == 403  # an old signature: replayed
    assert origin.seen("/obj") == []
    assert "refused a cluster request" in asker.log()


def test_a_request_that_comes_back_around_is_refused(cluster: Cluster) -> None:
    peer = cluster.peers[0]
    looped = get(cluster.nodes[peer], "/obj?loop=1", {"CDN-Loop": f"othercdn, edgeproxy; node={peer}"})
    assert looped.status == 508


def test_an_owner_that_is_down_is_skipped(cluster: Cluster, origin: ScriptOrigin) -> None:
    target = "/obj?down=1"
    owner = cluster.owner(target)
    cluster.stop(owner)
    asker = cluster.nodes[cluster.others(target)[0]]
    response = get(asker, target)
    assert response.status == 200 and response.body == f"{target}\n".encode()
    assert counters(asker)["failed"] >= 1
    assert len(origin.seen("/obj")) == 1
    assert "cluster: peer" in asker.log() and "skipped" in asker.log()


def test_an_owner_with_another_secret_is_skipped_not_obeyed(cluster: Cluster, origin: ScriptOrigin,
                                                            tmp_path: Path) -> None:
    target = "/obj?secret=1"
    owner = cluster.owner(target)
    cluster.stop(owner)
    other = tmp_path / "other.key"
    other.write_text("a-different-secret-0123456789\n")
    cluster.start(owner, secret=other)
    asker = cluster.nodes[cluster.others(target)[0]]
    response = get(asker, target)
    assert response.status == 200 and cache_status(response)[-1].startswith("edgeproxy; fwd=uri-miss")
    assert counters(asker)["failed"] >= 1 and "it refused this node's request (403 forbidden)" in asker.log()
    assert "refused a cluster request" in cluster.nodes[owner].log()
    assert len(origin.seen("/obj")) == 1  # the asker went to the origin itself


def test_a_reload_with_an_unreadable_secret_is_refused_and_changes_nothing(cluster: Cluster, origin: ScriptOrigin,
                                                                            tmp_path: Path) -> None:
    peer = cluster.peers[0]
    proxy = cluster.nodes[peer]
    config = proxy.extra["config_path"].read_text()
    proxy.extra["config_path"].write_text(config.replace(str(cluster.secret), str(tmp_path / "missing.key")))
    reply = control(proxy, {"cmd": "reload"})
    assert not reply["ok"] and "cluster.secret_file" in reply["error"] and "No such file" in reply["error"]
    target = next(t for t in (f"/obj?reload={i}" for i in range(50)) if cluster.owner(t) != peer)
    assert get(proxy, target).status == 200
    assert counters(proxy)["sent"] == 1  # still clustered: it asked the owner with the secret it had


def test_a_stale_while_revalidate_refresh_goes_through_the_owner(cluster: Cluster, origin: ScriptOrigin) -> None:
    def swr(seen: Seen) -> Reply:
        fields = [("cache-control", "public, max-age=1, stale-while-revalidate=30"), ("etag", '"v1"')]
        if seen.header("if-none-match") == '"v1"':
            return Reply(304, fields, framing="none")
        return Reply(200, [("content-type", "text/plain"), *fields], b"swr body\n")

    origin.routes["/swr"] = swr
    target = "/swr?n=1"
    asker = cluster.nodes[cluster.others(target)[0]]
    assert get(asker, target).status == 200  # stored by the owner and by the asker
    time.sleep(1.5)  # both copies are stale now, within stale-while-revalidate
    stale = get(asker, target)
    assert stale.status == 200 and cache_status(stale)[-1].startswith("edgeproxy; hit")  # answered at once
    # The asker's background refresh asks the owner (whose own stale copy answers it and refreshes in turn): the
    # origin sees one conditional request for the cluster, not one per node.
    assert origin.wait_for(lambda: any(s.header("if-none-match") for s in origin.seen("/swr")))
    time.sleep(0.3)
    seen = origin.seen("/swr")
    assert [s.header("if-none-match") for s in seen] == [None, '"v1"'], seen
    assert counters(asker)["sent"] == 2  # the first fetch and the refresh, both to the owner


def test_a_tier_of_the_same_name_works_and_a_loop_between_tiers_is_refused(tmp_path: Path,
                                                                             origin: ScriptOrigin) -> None:
    for name in ("shield", "edge", "a", "b"):
        (tmp_path / name).mkdir()
    shield = start_proxy(origin.url, tmp_path / "shield")
    edge = start_proxy(shield.url, tmp_path / "edge")
    try:
        r = get(edge, "/obj?tier=1")
        assert r.status == 200 and len(origin.seen("/obj")) == 1
        assert len(cache_status(r)) == 2  # the shield's entry, then the edge's
        # Two tiers pointing at each other: the request comes back to the first with its own CDN-Loop member.
        a_port, b_port = free_port(), free_port()
        a = start_proxy(f"http://127.0.0.1:{b_port}", tmp_path / "a", port=a_port)
        b = start_proxy(f"http://127.0.0.1:{a_port}", tmp_path / "b", port=b_port)
        try:
            assert get(a, "/obj?loop=2").status == 508
        finally:
            a.stop()
            b.stop()
    finally:
        edge.stop()
        shield.stop()


# ---- with a fleet: purges and the cluster together ----

@pytest.fixture
def fleet_cluster(tmp_path: Path, origin: ScriptOrigin) -> Iterator[Cluster]:
    server = RedisServer(tmp_path / "redis").start()
    c = Cluster(tmp_path, origin)
    try:
        for i, peer in enumerate(c.peers):
            c.start(peer, fleet={"redis": server.url, "node": f"edge-{i}"})
        yield c
    finally:
        for peer in list(c.nodes):
            c.stop(peer)
        server.stop()


def test_a_fleet_purge_then_a_request_on_any_node_fetches_anew(fleet_cluster: Cluster, origin: ScriptOrigin) -> None:
    target = "/obj?purged=1"
    for proxy in fleet_cluster.nodes.values():
        get(proxy, target)
    assert len(origin.seen("/obj")) == 1
    asker = fleet_cluster.nodes[fleet_cluster.others(target)[0]]
    reply = control(asker, {"cmd": "purge", "kind": "url", "url": f"http://{HOST}{target}", "fleet_wait": 10})
    assert reply["ok"] and len(reply["fleet"]["applied_on"]) == 3, reply
    for peer in fleet_cluster.others(target):  # each drops its copy and asks the owner, which fetches anew once
        assert cache_status(get(fleet_cluster.nodes[peer], target))[-1].startswith("edgeproxy; fwd=")
    assert len(origin.seen("/obj")) == 2  # once more for the cluster, by the owner


def test_a_peer_ahead_of_this_nodes_journal_is_not_answered_from_its_cache(fleet_cluster: Cluster,
                                                                            origin: ScriptOrigin) -> None:
    target = "/obj?ahead=1"
    owner_peer = fleet_cluster.owner(target)
    owner = fleet_cluster.nodes[owner_peer]
    get(owner, target)
    applied = control(owner, {"cmd": "stats"})["fleet"]["applied_seq"]
    sender = next(p for p in fleet_cluster.peers if p != owner_peer)
    ring = Ring(tuple(fleet_cluster.peers), sender, SECRET.encode())

    def ask(seq: int) -> Response:
        signature = ring.sign(owner_peer, "http", b"GET", HOST.encode(), target.encode(), [(b"host", HOST.encode())],
                              time.time(), f"n{time.monotonic_ns()}", seq)
        return get(owner, target, {"EdgeProxy-Cluster": signature.decode()})

    assert cache_status(ask(applied))[-1].startswith("edgeproxy; hit")  # level with it: its copy answers
    assert len(origin.seen("/obj")) == 1
    # The sender has applied a purge the owner has not (yet): the owner's copy may be purged, so it fetches anew.
    assert cache_status(ask(applied + 1))[-1].startswith("edgeproxy; fwd=uri-miss")
    assert len(origin.seen("/obj")) == 2
