"""Clustering without sockets: the ring (who owns a key, who is asked), the signatures of internal requests, and the
CDN-Loop member every forwarded request carries."""

from __future__ import annotations

import collections

import pytest

from edgeproxy.fleet.cluster import MAX_HOPS, MAX_SKEW, ClusterAuthError, Ring, Signed, ranking
from edgeproxy.proxy import forwarding

PEERS = ("10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.3:8080")
SECRET = b"0123456789abcdef-cluster"
NOW = 1_750_000_000.0


def ring(me: str = PEERS[0], peers: tuple[str, ...] = PEERS) -> Ring:
    return Ring(peers, me, SECRET)


def test_every_node_ranks_a_key_the_same_and_the_owner_never_asks() -> None:
    for i in range(200):
        key = f"https://a.example/obj/{i}"
        order = ranking(key, PEERS)
        assert sorted(order) == sorted(PEERS)
        for me in PEERS:
            hops = ring(me).hops(key)
            assert hops == order[:min(order.index(me), MAX_HOPS)]  # those above me, owner first
            assert me not in hops
        assert ring(order[0]).hops(key) == []  # the owner goes to the origin itself


def test_keys_spread_over_the_peers_and_a_leaving_node_moves_only_its_own() -> None:
    keys = [f"https://a.example/{i}" for i in range(3000)]
    owners = {k: ranking(k, PEERS)[0] for k in keys}
    counts = collections.Counter(owners.values())
    assert all(800 < n < 1200 for n in counts.values()), counts
    fewer = PEERS[:2]
    moved = [k for k in keys if ranking(k, fewer)[0] != owners[k]]
    assert all(owners[k] == PEERS[2] for k in moved)  # only the leaver's keys move


def test_a_signed_request_verifies_at_the_owner() -> None:
    sender, owner = ring(PEERS[1]), ring(PEERS[0])
    value = sender.sign(b"GET", b"a.example", b"/x?y=1", NOW)
    assert owner.verify(value, b"GET", b"a.example", b"/x?y=1", NOW + 1) == Signed(PEERS[1], None)
    with_seq = sender.sign(b"GET", b"a.example", b"/x?y=1", NOW, seq=42)
    signed = owner.verify(with_seq, b"GET", b"a.example", b"/x?y=1", NOW)
    assert signed == Signed(PEERS[1], 42)
    assert signed.ahead_of(41) and not signed.ahead_of(42) and not signed.ahead_of(None)
    assert not Signed(PEERS[1], None).ahead_of(3)


def test_the_journal_entry_is_signed_too() -> None:
    value = ring(PEERS[1]).sign(b"GET", b"a.example", b"/", NOW, seq=42)
    with pytest.raises(ClusterAuthError, match="bad signature"):
        ring(PEERS[0]).verify(value.replace(b"seq=42", b"seq=41"), b"GET", b"a.example", b"/", NOW)
    with pytest.raises(ClusterAuthError, match="bad signature"):
        ring(PEERS[0]).verify(value.replace(b"; seq=42", b""), b"GET", b"a.example", b"/", NOW)


@pytest.mark.parametrize("change, why", [
    (lambda v: (v, b"HEAD", b"a.example", b"/x?y=1", NOW), "bad signature"),
    (lambda v: (v, b"GET", b"b.example", b"/x?y=1", NOW), "bad signature"),
    (lambda v: (v, b"GET", b"a.example", b"/x?y=2", NOW), "bad signature"),
    (lambda v: (v, b"GET", b"a.example", b"/x?y=1", NOW + MAX_SKEW + 1), "away from this node's clock"),
    (lambda v: (v.replace(b"sig=", b"sig=0"), b"GET", b"a.example", b"/x?y=1", NOW), "bad signature"),
    (lambda v: (b"garbage", b"GET", b"a.example", b"/x?y=1", NOW), "malformed"),
    (lambda v: (v.replace(b"10.0.0.2", b"10.0.0.9"), b"GET", b"a.example", b"/x?y=1", NOW), "not a peer"),
])
def test_a_forged_changed_or_old_signature_is_refused(change, why: str) -> None:
    value = ring(PEERS[1]).sign(b"GET", b"a.example", b"/x?y=1", NOW)
    with pytest.raises(ClusterAuthError, match=why):
        ring(PEERS[0]).verify(*change(value))


def test_another_secret_does_not_verify() -> None:
    value = Ring(PEERS, PEERS[1], b"another-secret-of-16+").sign(b"GET", b"a.example", b"/", NOW)
    with pytest.raises(ClusterAuthError, match="bad signature"):
        ring(PEERS[0]).verify(value, b"GET", b"a.example", b"/", NOW)


def test_a_node_does_not_accept_its_own_signature() -> None:
    value = ring(PEERS[0]).sign(b"GET", b"a.example", b"/", NOW)
    with pytest.raises(ClusterAuthError, match="not a peer"):
        ring(PEERS[0]).verify(value, b"GET", b"a.example", b"/", NOW)


def fields(**kw: object) -> list[tuple[bytes, bytes]]:
    base = dict(host=b"a.example", via=forwarding.via_token("edgeproxy"), client_ip="192.0.2.1", scheme="https",
                x_forwarded=True, allowed_unkeyed=frozenset(), body_length=None, chunked=False)
    return forwarding.request_fields([(b"cdn-loop", b"othercdn"), (b"edgeproxy-cluster", b"forged")],
                                     **{**base, **kw})  # type: ignore[arg-type]


def test_cdn_loop_is_kept_and_ours_added_and_a_client_cluster_field_never_sent_on() -> None:
    member = forwarding.cdn_loop_member("edgeproxy", "edge-1:8080")
    out = fields(cdn_loop=member)
    assert (b"cdn-loop", b"othercdn, edgeproxy; node=edge-1:8080") in out
    assert all(k != b"edgeproxy-cluster" for k, _ in out)


@pytest.mark.parametrize("value, loop", [
    (b"edgeproxy; node=edge-1:8080", True),
    (b"othercdn, EdgeProxy ;node=edge-1:8080", True),
    (b"edgeproxy; node=edge-2:8080", False),  # another node of ours: a tier, not a loop
    (b"edgeproxy", False),
    (b"othercdn; node=edge-1:8080", False),
])
def test_a_request_carrying_our_cdn_loop_member_is_a_loop(value: bytes, loop: bool) -> None:
    member = forwarding.cdn_loop_member("edgeproxy", "edge-1:8080")
    assert forwarding.is_cdn_loop([(b"cdn-loop", value)], member) is loop
