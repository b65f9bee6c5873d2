"""A cluster that can be trusted: the client's scheme reaches the owner (key and X-Forwarded-Proto), a signature is good
for one request to one node once, a peer stores the owner's answer by the owner's own decision (lifetime and purge
tags), and with ``[cluster] tls`` the hop is TLS, mutually authenticated when the nodes have certificates.

Category: ops. Two or three proxies with a plain and a TLS listener each, in front of a scripted origin that counts
what it is asked (conftest.py's), on free loopback ports. Every wait is bounded.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeproxy.fleet.cluster import Ring, ranking
from tests.integration.test_cluster import SECRET, cache_status, counters
from tests.integration.test_ops import control, wait_ready
from tests.integration.test_tls import make_cert
from tests.scriptorigin import Reply, ScriptOrigin, Seen
from tests.support import HTTPClient, Proc, Response, free_port, parse_responses, read_all, start_proxy, wait_port

HOST = "trust.test"


def redirect_plain_http(seen: Seen) -> Reply:
    """An origin that sends plain-http visitors to https (cacheably, as many do) and serves https ones."""
    if seen.header("x-forwarded-proto") != "https":
        return Reply(301, [("location", f"https://{HOST}{seen.target}"), ("cache-control", "max-age=3600")])
    return Reply(200, [("content-type", "text/plain"), ("cache-control", "max-age=3600")], b"secure\n")


class Node:
    def __init__(self, proc: Proc, tls_port: int) -> None:
        self.proc, self.tls_port = proc, tls_port


class TrustCluster:
    """Nodes with a plain listener (``port``) and a TLS listener; the peers are one or the other (``tls``)."""

    def __init__(self, tmp_path: Path, origin: ScriptOrigin, size: int = 2, tls: bool = False,
                 mutual: bool = False) -> None:
        self.tmp_path, self.origin, self.tls, self.mutual = tmp_path, origin, tls, mutual
        self.cert, self.key = make_cert(tmp_path, "cluster")
        self.plain = [free_port() for _ in range(size)]
        self.secure = [free_port() for _ in range(size)]
        self.peers = [f"127.0.0.1:{p}" for p in (self.secure if tls else self.plain)]
        (tmp_path / "cluster.secret").write_text(SECRET + "\n")
        self.nodes: list[Node] = []

    def start(self) -> TrustCluster:
        for i, peer in enumerate(self.peers):
            workdir = self.tmp_path / f"node{i}"
            workdir.mkdir()
            cluster: dict[str, object] = {"peers": self.peers, "self": peer,
                                          "secret_file": str(self.tmp_path / "cluster.secret")}
            if self.tls:
                cluster.update(tls=True, ca_file=str(self.cert))
            if self.mutual:
                cluster.update(cert_file=str(self.cert), key_file=str(self.key))
            proc = start_proxy(self.origin.url, workdir, port=self.plain[i], cluster=cluster, server={
                "tls_listen": [f"127.0.0.1:{self.secure[i]}"], "tls_cert": str(self.cert), "tls_key": str(self.key)})
            wait_ready(proc)
            wait_port(self.secure[i])
            self.nodes.append(Node(proc, self.secure[i]))
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.proc.stop()

    def owner(self, scheme: str, target: str) -> int:
        return self.peers.index(ranking(f"{scheme}://{HOST}{target}", self.peers)[0])


@pytest.fixture
def plain_cluster(tmp_path: Path, origin: ScriptOrigin) -> Iterator[TrustCluster]:
    c = TrustCluster(tmp_path, origin, size=3)
    try:
        yield c.start()
    finally:
        c.stop()


def https_get(port: int, cafile: Path, target: str, headers: dict[str, str] | None = None,
              cert: tuple[Path, Path] | None = None) -> Response:
    ctx = ssl.create_default_context(cafile=str(cafile))
    if cert is not None:
        ctx.load_cert_chain(*map(str, cert))
    lines = "".join(f"{k}: {v}\r\n" for k, v in {"host": HOST, **(headers or {})}.items())
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost") as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\n{lines}connection: close\r\n\r\n".encode())
        data = read_all(sock, 5)
    if not data:
        raise NoAnswer(f"no answer from port {port}")
    [response] = parse_responses(data)
    return response


class NoAnswer(Exception):
    """The server closed the connection without a response."""


def http_get(port: int, target: str, headers: dict[str, str] | None = None) -> Response:
    with HTTPClient(port) as client:
        return client.request("GET", target, headers={"Host": HOST, **(headers or {})})


def first_target(prefix: str, want: callable) -> str:  # type: ignore[valid-type]
    return next(t for t in (f"{prefix}{i}" for i in range(200)) if want(t))


# ---- the scheme travels with the request ----

def test_an_https_client_at_a_non_owner_gets_the_https_object(plain_cluster: TrustCluster,
                                                              origin: ScriptOrigin) -> None:
    c = plain_cluster
    origin.routes["/r"] = redirect_plain_http
    target = first_target("/r?a=", lambda t: c.owner("https", t) == 1)  # node 0 asks node 1 over plain HTTP
    response = https_get(c.nodes[0].tls_port, c.cert, target)
    assert response.status == 200 and response.body == b"secure\n", response
    assert [s.header("x-forwarded-proto") for s in origin.seen("/r")] == ["https"]
    assert counters(c.nodes[0].proc)["sent"] == 1 and counters(c.nodes[1].proc)["received"] == 1
    # Both copies are https ones: the owner serves an https client from its copy, a plain one gets its redirect.
    assert https_get(c.nodes[1].tls_port, c.cert, target).body == b"secure\n"
    assert http_get(c.nodes[1].proc.port, target).status == 301
    assert [s.header("x-forwarded-proto") for s in origin.seen("/r")] == ["https", "http"]


def test_an_http_copy_at_the_owner_is_never_served_to_an_https_client(plain_cluster: TrustCluster,
                                                                        origin: ScriptOrigin) -> None:
    c = plain_cluster
    origin.routes["/r"] = redirect_plain_http
    # A key whose http and https forms are owned by node 1: the http one is stored there first.
    target = first_target("/r?b=", lambda t: c.owner("https", t) == 1 and c.owner("http", t) == 1)
    assert http_get(c.nodes[1].proc.port, target).status == 301
    response = https_get(c.nodes[0].tls_port, c.cert, target)
    assert response.status == 200 and response.body == b"secure\n"
    assert https_get(c.nodes[0].tls_port, c.cert, target).body == b"secure\n"  # its stored copy
    assert [s.header("x-forwarded-proto") for s in origin.seen("/r")] == ["http", "https"]


# ---- a signature is good for one request to one node, once ----

def signed(c: TrustCluster, target: str, to: int, sender: int, fields: dict[str, str],
           scheme: str = "http") -> str:
    """The EdgeProxy-Cluster value node ``sender`` would send node ``to`` with exactly ``fields`` (HTTPClient sends
    Host first, then these, in order, lower-cased)."""
    ring = Ring(tuple(c.peers), c.peers[sender], SECRET.encode())
    sent = [(b"host", HOST.encode()), *((k.lower().encode(), v.encode()) for k, v in fields.items())]
    return ring.sign(c.peers[to], scheme, b"GET", HOST.encode(), target.encode(), sent, time.time(),
                     f"n{time.monotonic_ns()}").decode()


def test_a_signature_is_good_once_for_its_receiver_and_its_fields(plain_cluster: TrustCluster,
                                                                   origin: ScriptOrigin) -> None:
    c = plain_cluster
    target = "/obj?replay=1"
    value = signed(c, target, to=1, sender=0, fields={})
    owner = c.nodes[1].proc
    assert http_get(owner.port, target, {"EdgeProxy-Cluster": value}).status == 200
    assert http_get(owner.port, target, {"EdgeProxy-Cluster": value}).status == 403  # replayed
    assert "replayed signature" in owner.log()
    # Signed for node 1, sent to node 2: refused.
    other = signed(c, target, to=1, sender=0, fields={})
    assert http_get(c.nodes[2].proc.port, target, {"EdgeProxy-Cluster": other}).status == 403
    assert "not for this node" in c.nodes[2].proc.log()
    # A fresh signature with a field added on the way (a Via that a loop check would catch): refused.
    added = signed(c, target, to=1, sender=0, fields={})
    assert http_get(owner.port, target, {"Via": "1.1 edgeproxy", "EdgeProxy-Cluster": added}).status == 403
    assert "fields changed" in owner.log()
    assert len(origin.seen("/obj")) == 1  # only the first reached the origin


def test_a_signed_scheme_keys_the_request_at_the_owner(plain_cluster: TrustCluster, origin: ScriptOrigin) -> None:
    c = plain_cluster
    origin.routes["/r"] = redirect_plain_http
    owner = c.nodes[1].proc
    for scheme, status in (("https", 200), ("http", 301)):
        value = signed(c, "/r?s=1", to=1, sender=0, fields={}, scheme=scheme)
        assert http_get(owner.port, "/r?s=1", {"EdgeProxy-Cluster": value}).status == status
    assert [s.header("x-forwarded-proto") for s in origin.seen("/r")] == ["https", "http"]


# ---- the peer stores the owner's answer by the owner's decision ----

def test_a_peer_keeps_the_owners_lifetime_and_tags(plain_cluster: TrustCluster, origin: ScriptOrigin) -> None:
    def short_for_caches(seen: Seen) -> Reply:  # a day for browsers, one second for CDNs, and a purge tag
        return Reply(200, [("cache-control", "public, max-age=86400"), ("cdn-cache-control", "max-age=1"),
                           ("surrogate-key", "short-tag"), ("etag", '"s1"')], b"short\n")

    c = plain_cluster
    origin.routes["/short"] = short_for_caches
    miss = first_target("/short?m=", lambda t: c.owner("http", t) == 1)
    hit = first_target("/short?h=", lambda t: c.owner("http", t) == 1)
    asker = c.nodes[0].proc
    http_get(c.nodes[1].proc.port, hit)  # the owner holds this one before it is asked: answered from its cache
    for target in (miss, hit):
        response = http_get(asker.port, target)
        assert response.status == 200 and "cdn-cache-control" not in response.headers
        assert "surrogate-key" not in response.headers  # a client never sees what caches are told
    time.sleep(1.3)
    for target in (miss, hit):  # both copies at the asker lived one second, as at the owner
        assert not cache_status(http_get(asker.port, target))[-1].startswith("edgeproxy; hit"), target
    for target in (miss, hit):
        http_get(asker.port, target)
    reply = control(asker, {"cmd": "purge", "kind": "tag", "tags": ["short-tag"]})
    assert reply["ok"] and reply["purged"] == 2, reply  # the asker's copies carry the origin's tag


# ---- TLS between peers ----

@pytest.fixture
def tls_cluster(tmp_path: Path, origin: ScriptOrigin) -> Iterator[TrustCluster]:
    c = TrustCluster(tmp_path, origin, tls=True, mutual=True)
    try:
        yield c.start()
    finally:
        c.stop()


def test_peers_over_mutual_tls(tls_cluster: TrustCluster, origin: ScriptOrigin, tmp_path: Path) -> None:
    c = tls_cluster
    target = first_target("/obj?tls=", lambda t: c.owner("http", t) == 1)
    assert http_get(c.nodes[0].proc.port, target).status == 200
    assert counters(c.nodes[0].proc)["sent"] == 1 and counters(c.nodes[1].proc)["received"] == 1
    assert len(origin.seen("/obj")) == 1
    owner = c.nodes[1]
    # A good signature over plain HTTP is refused: the cluster speaks TLS.
    value = signed(c, target, to=1, sender=0, fields={})
    assert http_get(owner.proc.port, target, {"EdgeProxy-Cluster": value}).status == 403
    assert "must come over TLS" in owner.proc.log()
    # Over TLS without a client certificate, or with one the cluster's CA did not sign: refused.
    value = signed(c, target, to=1, sender=0, fields={"Connection": "close"})
    assert https_get(owner.tls_port, c.cert, target, {"EdgeProxy-Cluster": value}).status == 403
    assert "no client certificate" in owner.proc.log()
    stranger = make_cert(tmp_path, "stranger")
    with pytest.raises((ssl.SSLError, ConnectionError, NoAnswer)):  # the handshake fails (TLS 1.3: after it "ends")
        https_get(owner.tls_port, c.cert, target, {"EdgeProxy-Cluster": value}, cert=stranger)
    # A browser with no certificate is served over the same listener as ever.
    assert https_get(owner.tls_port, c.cert, target).status == 200
