"""Cache poisoning and deception over real sockets: what an attacker's request can make the cache store for others.

Category: faults (docs/hardening.md, "Cache poisoning and deception" and "Hostile requests"). One proxy in front of
one scripted origin serves the module; every test uses paths of its own (``fresh``), so the shared cache never
answers for another test. "Stored" is judged the way a victim would see it: a second request, without the
attacker's fields, answered ``hit`` and not seen by the origin.

What is checked:
- the key uses the normalized Host (case, trailing dot, default port are one entry; another Host is another entry),
  and the origin is sent the Host the key was made from;
- ``X-Forwarded-Host``, ``X-Original-URL``, ``X-Rewrite-URL``, ``X-HTTP-Method-Override`` never reach the origin
  from a client unless the site lists them in ``allow_request_headers``;
- a response to a request with ``Authorization`` is shared only with ``public``, ``s-maxage`` or
  ``must-revalidate`` (RFC 9111 §3.5); ``Set-Cookie`` responses are never shared by default;
- cacheability comes from the origin's fields only: ``/account.php/nonexistent.css`` answered ``private`` (or with
  no freshness information at all) is not stored, whatever the extension;
- CR, LF, NUL and other controls in a request head (and obs-text in the request line) are refused (400) before
  anything is forwarded; obs-text in a field value is forwarded as opaque data (RFC 9110 §5.5); a response field
  with CR or NUL from the origin is a 502, never stored.
"""

from __future__ import annotations

import itertools
import socket
from collections.abc import Iterator

import pytest

from tests.scriptorigin import Reply, ScriptOrigin, Seen
from tests.support import HTTPClient, Proc, Response, parse_responses, read_all, start_proxy

HOST = "test.local"
UNKEYED = ["x-forwarded-host", "x-original-url", "x-rewrite-url", "x-http-method-override"]
PUBLIC = [("cache-control", "public, max-age=600")]
FRESH = itertools.count()


def fresh(name: str) -> str:
    return f"/{name}/{next(FRESH)}"


@pytest.fixture(scope="module")
def origin() -> Iterator[ScriptOrigin]:
    with ScriptOrigin() as o:
        yield o


@pytest.fixture(scope="module")
def edge(origin: ScriptOrigin, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    sites = [{"hosts": [HOST, "other.local"], "origin": origin.url},
             {"hosts": ["allow.local"], "origin": origin.url, "allow_request_headers": UNKEYED},
             {"hosts": ["cookie.local"], "origin": origin.url, "store_set_cookie": True}]
    proxy = start_proxy(origin.url, tmp_path_factory.mktemp("poisoning"), site=sites)
    yield proxy
    proxy.stop()


def by_host(seen: Seen) -> Reply:
    """A response that depends on the Host the origin saw: what a vhost, or a link-building app, does."""
    return Reply(body=f"host={seen.header('host')}".encode(), headers=PUBLIC)


def request(edge: Proc, target: str, headers: list[tuple[str, str]] | None = None, host: str = HOST) -> Response:
    with HTTPClient(edge.port) as client:
        return client.request("GET", target, headers or [], host=host)


def cache_status(response: Response) -> list[str]:
    return [member.strip() for member in (response.header("cache-status") or "").split(";")]


def is_hit(response: Response) -> bool:
    return "hit" in cache_status(response)


def shared(edge: Proc, origin: ScriptOrigin, path: str, host: str = HOST) -> bool:
    """Whether a plain request (no attacker fields) is answered from the cache without reaching the origin."""
    before = len(origin.seen(path))
    response = request(edge, path, host=host)
    return is_hit(response) and len(origin.seen(path)) == before


# ---- Host normalization ----

@pytest.mark.parametrize("variant", ["TEST.LOCAL", "test.local.", "test.local:80", "Test.Local.:80"])
def test_host_variants_share_one_entry(edge: Proc, origin: ScriptOrigin, variant: str) -> None:
    path = fresh("host-variant")
    origin.routes[path] = by_host
    first = request(edge, path, host=HOST)
    assert first.status == 200 and not is_hit(first)
    again = request(edge, path, host=variant)
    assert is_hit(again) and again.body == first.body
    assert len(origin.seen(path)) == 1


@pytest.mark.parametrize("variant", ["TEST.LOCAL", "test.local.", "test.local:80"])
def test_origin_sees_the_host_the_key_was_made_from(edge: Proc, origin: ScriptOrigin, variant: str) -> None:
    """An attacker's ``Host: test.local.`` must not make the origin answer for another vhost under test.local's key."""
    path = fresh("host-forwarded")
    origin.routes[path] = by_host
    assert request(edge, path, host=variant).status == 200
    [seen] = origin.seen(path)
    assert seen.header("host") == HOST
    assert request(edge, path).body == b"host=" + HOST.encode()


def test_another_host_is_another_entry(edge: Proc, origin: ScriptOrigin) -> None:
    path = fresh("two-hosts")
    origin.routes[path] = by_host
    assert request(edge, path, host=HOST).body == b"host=test.local"
    other = request(edge, path, host="other.local")
    assert not is_hit(other) and other.body == b"host=other.local"
    assert request(edge, path, host=HOST).body == b"host=test.local"
    assert len(origin.seen(path)) == 2


# ---- unkeyed inputs ----

ATTACK = [("x-forwarded-host", "evil.example"), ("x-original-url", "/admin"), ("x-rewrite-url", "/admin"),
          ("x-http-method-override", "DELETE")]


def test_unkeyed_fields_are_dropped_by_default(edge: Proc, origin: ScriptOrigin) -> None:
    path = fresh("unkeyed")
    origin.routes[path] = Reply(body=b"page", headers=PUBLIC)
    assert request(edge, path, ATTACK).status == 200
    [seen] = origin.seen(path)
    assert not seen.names() & {"x-original-url", "x-rewrite-url", "x-http-method-override"}
    assert [v for k, v in seen.headers if k == "x-forwarded-host"] == [HOST], "ours, never the client's"


def test_unkeyed_fields_cross_when_the_site_allows_them(edge: Proc, origin: ScriptOrigin) -> None:
    path = fresh("allowed")
    origin.routes[path] = Reply(body=b"page", headers=PUBLIC)
    assert request(edge, path, ATTACK, host="allow.local").status == 200
    [seen] = origin.seen(path)
    assert [(k, v) for k, v in seen.headers if k in UNKEYED] == ATTACK


# ---- Authorization and Set-Cookie (RFC 9111 §3.5, §7.3) ----

@pytest.mark.parametrize(("cache_control", "stored"), [
    ("max-age=600", False),
    ("private, max-age=600", False),
    ("public, max-age=600", True),
    ("s-maxage=600", True),
    ("must-revalidate, max-age=600", True),
    ("no-cache, public, max-age=600", True),  # stored, but every use revalidates: still never a hit
])
def test_authorized_responses_shared_only_as_allowed(edge: Proc, origin: ScriptOrigin, cache_control: str,
                                                     stored: bool) -> None:
    path = fresh("auth")
    origin.routes[path] = Reply(body=b"for alice", headers=[("cache-control", cache_control), ("etag", '"a"')])
    assert request(edge, path, [("authorization", "Bearer alice")]).status == 200
    expect_hit = stored and "no-cache" not in cache_control
    assert shared(edge, origin, path) is expect_hit


@pytest.mark.parametrize(("host", "stored"), [(HOST, False), ("cookie.local", True)])
def test_set_cookie_is_never_shared(edge: Proc, origin: ScriptOrigin, host: str, stored: bool) -> None:
    """Default: not stored at all. ``store_set_cookie``: stored, but the cookie is not handed to anyone else."""
    path = fresh("cookie")
    origin.routes[path] = Reply(body=b"page", headers=[*PUBLIC, ("set-cookie", "session=alice")])
    assert request(edge, path, host=host).header("set-cookie") == "session=alice"
    second = request(edge, path, host=host)
    assert is_hit(second) is stored
    if stored:
        assert second.header("set-cookie") is None


# ---- cache deception ----

@pytest.mark.parametrize("headers", [
    [("cache-control", "private")],
    [("cache-control", "private, max-age=600")],
    [("cache-control", "no-store")],
    [],  # no freshness information and no validator: nothing to store, whatever the path looks like
], ids=["private", "private-max-age", "no-store", "nothing"])
@pytest.mark.parametrize("path", ["/account.php/nonexistent.css", "/account.php/x.jpg", "/account.php;.js"])
def test_extension_never_makes_a_response_cacheable(edge: Proc, origin: ScriptOrigin, headers: list[tuple[str, str]],
                                                    path: str) -> None:
    unique = f"{path}?n={next(FRESH)}"
    origin.routes[path] = Reply(body=b"alice's account page", headers=[("content-type", "text/html"), *headers])
    assert request(edge, unique, [("cookie", "session=alice")]).body == b"alice's account page"
    assert not shared(edge, origin, unique)


# ---- header injection ----

def raw(edge: Proc, data: bytes) -> tuple[list[int], bytes]:
    with socket.create_connection(("127.0.0.1", edge.port), 5) as s:
        s.sendall(data)
        answer = read_all(s, 5)
    return [r.status for r in parse_responses(answer)], answer


@pytest.mark.parametrize("value", [b"a\x00b", b"a\rb", b"a\x0bb", b"a\x7fb"], ids=["nul", "cr", "vt", "del"])
def test_bad_bytes_in_a_request_field_are_refused(edge: Proc, origin: ScriptOrigin, value: bytes) -> None:
    path = fresh("inject")
    statuses, _ = raw(edge, b"GET " + path.encode() + b" HTTP/1.1\r\nhost: test.local\r\nx-a: " + value
                      + b"\r\nconnection: close\r\n\r\n")
    assert statuses == [400]
    assert origin.seen(path) == []


@pytest.mark.parametrize("value", [b"caf\xc3\xa9", b"\xff"], ids=["utf8", "obs-text"])
def test_obs_text_in_a_request_field_is_forwarded_as_opaque_data(edge: Proc, origin: ScriptOrigin,
                                                                 value: bytes) -> None:
    """RFC 9110 §5.5: obs-text in a field value is kept as opaque data (only the request line must be ASCII)."""
    path = fresh("obs-text")
    origin.routes[path] = Reply(body=b"ok", headers=PUBLIC)
    statuses, _ = raw(edge, b"GET " + path.encode() + b" HTTP/1.1\r\nhost: test.local\r\nx-a: " + value
                      + b"\r\nconnection: close\r\n\r\n")
    assert statuses == [200]
    [seen] = origin.seen(path)
    assert seen.header("x-a") == value.decode("latin-1")


@pytest.mark.parametrize("value", ["a\x00b", "a\rb"], ids=["nul", "cr"])
def test_bad_bytes_in_a_response_field_are_502_and_never_stored(edge: Proc, origin: ScriptOrigin,
                                                                value: str) -> None:
    path = fresh("bad-response")
    origin.routes[path] = Reply(body=b"ok", headers=[*PUBLIC, ("x-evil", value)])
    got = request(edge, path)
    assert got.status == 502 and got.header("x-evil") is None
    request(edge, path)
    assert len(origin.seen(path)) == 2, "a refused response must not be stored"
