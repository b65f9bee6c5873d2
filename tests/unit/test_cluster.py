"""Clustering without sockets: the ring (who owns a key, who is asked), the signatures of internal requests, and the
CDN-Loop member every forwarded request carries."""

from __future__ import annotations

import collections

import pytest

from edgeproxy.fleet.cluster import (
    FIELD,
    MAX_HOPS,
    MAX_SKEW,
    ClusterAuthError,
    ReplayGuard,
    Ring,
    Signed,
    parse_claim,
    ranking,
)
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


FIELDS = [(b"host", b"a.example"), (b"accept", b"*/*"), (b"x-forwarded-proto", b"https")]


def sign(sender: str = PEERS[1], to: str = PEERS[0], scheme: str = "https", target: bytes = b"/x?y=1",
         seq: int | None = None, nonce: str = "n0nce1", now: float = NOW) -> bytes:
    return ring(sender).sign(to, scheme, b"GET", b"a.example", target, FIELDS, now, nonce, seq)


def check(value: bytes, method: bytes = b"GET", host: bytes = b"a.example", target: bytes = b"/x?y=1",
          fields: list[tuple[bytes, bytes]] = FIELDS, now: float = NOW, me: str = PEERS[0]) -> Signed:
    """What the receiving node does: read the field, then verify it for the request it arrived with."""
    return ring(me).verify(parse_claim(value), method, host, target, [*fields, (FIELD, value)], now)


def test_a_signed_request_verifies_at_the_owner() -> None:
    assert check(sign(), now=NOW + 1) == Signed(PEERS[1], None, "https")
    signed = check(sign(seq=42))
    assert signed == Signed(PEERS[1], 42, "https")
    assert signed.ahead_of(41) and not signed.ahead_of(42) and not signed.ahead_of(None)
    assert not Signed(PEERS[1], None).ahead_of(3)
    assert check(sign(scheme="http")).scheme == "http"  # the client's scheme travels with the request


def test_the_journal_entry_and_the_scheme_are_signed_too() -> None:
    value = sign(seq=42)
    with pytest.raises(ClusterAuthError, match="bad signature"):
        check(value.replace(b"seq=42", b"seq=41"))
    with pytest.raises(ClusterAuthError, match="bad signature"):
        check(value.replace(b"; seq=42", b""))
    with pytest.raises(ClusterAuthError, match="bad signature"):  # an https request passed off as http, or back
        check(value.replace(b"s=https", b"s=http"))


@pytest.mark.parametrize("change, why", [
    (dict(method=b"HEAD"), "bad signature"),
    (dict(host=b"b.example"), "bad signature"),
    (dict(target=b"/x?y=2"), "bad signature"),
    (dict(now=NOW + MAX_SKEW + 1), "away from this node's clock"),
    (dict(me=PEERS[2]), "not for this node"),  # signed for another receiver
    (dict(fields=[*FIELDS, (b"via", b"1.1 other")]), "fields changed"),  # a field added
    (dict(fields=[(k, b"http" if k == b"x-forwarded-proto" else v) for k, v in FIELDS]), "fields changed"),
    (dict(fields=FIELDS[1:]), "fields changed"),  # a field dropped
])
def test_a_changed_or_old_signature_is_refused(change: dict, why: str) -> None:
    with pytest.raises(ClusterAuthError, match=why):
        check(sign(), **change)


@pytest.mark.parametrize("value, why", [
    (b"garbage", "malformed"),
    (b"10.0.0.2:8080; t=1", "malformed"),
    (sign().replace(b"s=https", b"s=ftp"), "malformed"),
    (sign().replace(b"n=n0nce1", b"n=a b"), "malformed"),
    (sign() + b"; extra=1", "malformed"),
])
def test_a_malformed_field_is_refused(value: bytes, why: str) -> None:
    with pytest.raises(ClusterAuthError, match=why):
        check(value)


def test_a_forged_field_is_refused() -> None:
    with pytest.raises(ClusterAuthError, match="bad signature"):
        check(sign().replace(b"sig=", b"sig=0"))
    with pytest.raises(ClusterAuthError, match="not a peer"):
        check(sign().replace(b"10.0.0.2", b"10.0.0.9"))


def test_the_connection_fields_may_change_on_the_way() -> None:
    hop = [*FIELDS, (b"connection", b"keep-alive"), (b"content-length", b"0")]
    assert check(sign(), fields=hop).node == PEERS[1]


def test_another_secret_does_not_verify() -> None:
    value = Ring(PEERS, PEERS[1], b"another-secret-of-16+").sign(PEERS[0], "http", b"GET", b"a.example", b"/",
                                                                  FIELDS, NOW, "n1")
    with pytest.raises(ClusterAuthError, match="bad signature"):
        check(value, target=b"/")


def test_a_node_does_not_accept_its_own_signature() -> None:
    with pytest.raises(ClusterAuthError, match="not a peer"):
        check(sign(sender=PEERS[0], to=PEERS[0]))


def test_a_nonce_is_accepted_once_within_the_window() -> None:
    guard = ReplayGuard()
    claim = parse_claim(sign(nonce="abc"))
    assert guard.admit(claim, NOW) is None
    assert "replayed" in (guard.admit(claim, NOW + 1) or "")
    assert guard.admit(parse_claim(sign(nonce="abd")), NOW + 1) is None
    # Past the window the nonce is forgotten, and the signature's time alone refuses it (verify's skew check).
    later = NOW + MAX_SKEW + 5
    assert guard.admit(parse_claim(sign(nonce="new", now=later)), later) is None
    assert "abc" not in guard.seen


def test_a_full_guard_narrows_its_window_instead_of_growing() -> None:
    guard = ReplayGuard(capacity=3)
    claims = [parse_claim(sign(nonce=f"n{i}", now=NOW + i / 10)) for i in range(5)]
    for i, claim in enumerate(claims):
        assert guard.admit(claim, NOW + i / 10) is None
    assert len(guard.seen) == len(guard.order) == 3  # bounded
    # n0 and n1 were forgotten before their time: nothing signed as early as n1 is accepted any more.
    assert "before the replay window" in (guard.admit(claims[0], NOW + 0.5) or "")
    assert "before the replay window" in (guard.admit(claims[1], NOW + 0.5) or "")
    assert "replayed" in (guard.admit(claims[4], NOW + 0.5) or "")
    assert guard.admit(parse_claim(sign(nonce="n9", now=NOW + 1)), NOW + 1) is None


def test_decision_fields_carry_the_lifetime_and_tags() -> None:
    from edgeproxy.cache.key import CacheRequest
    from edgeproxy.cache.storability import decision_fields, make_entry, parse_tags, storable
    from edgeproxy.http.cachecontrol import effective

    req = CacheRequest(b"GET", "https", "a.example", b"/x", [])
    origin = [(b"cache-control", b"public, max-age=86400"),
              (b"cdn-cache-control", b"max-age=10, stale-while-revalidate=5, must-revalidate"),
              (b"surrogate-key", b"k1 k2"), (b"cache-tag", b"with space, k3"), (b"etag", b'"v"')]
    entry = make_entry(req, 200, origin, b"body", NOW, NOW)
    sent = [(b"cache-control", b"public, max-age=86400"), *decision_fields(entry)]
    assert storable(req, 200, sent) is None
    directives, targeted = effective(sent)
    assert targeted and directives["max-age"] == "10" and directives["stale-while-revalidate"] == "5"
    assert "must-revalidate" in directives
    assert parse_tags(sent) == entry.tags == frozenset({"k1", "k2", "k3", "with space"})
    again = make_entry(req, 200, sent, b"body", NOW, NOW)
    assert (again.freshness_lifetime, again.stale_while_revalidate, again.must_revalidate, again.tags) == (
        entry.freshness_lifetime, entry.stale_while_revalidate, entry.must_revalidate, entry.tags)


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
