"""What crosses the proxy, by RFC 9110 §7.6: request fields to the origin, response fields to the client (pure).

Rules kept here:
- Hop-by-hop fields and the fields ``Connection`` names never cross; framing fields (Content-Length,
  Transfer-Encoding) are never copied: each side's framing is derived again (h11 on the origin side, the
  exchange on the client side).
- ``Via`` gets ``1.1 <name>`` appended; a request with a Via member whose received-by is our name is a loop
  (RFC 9110 §7.6.3). Members are compared whole: ``1.1 edgeproxy-b`` is another node, not us.
- ``CDN-Loop`` (RFC 8586) gets ``<name>; node=<node>`` appended on every request sent on (to an origin or a
  peer); a request that already carries our member, node included, came back around: 508. The node makes the member
  unique where names are shared (nodes of one cluster, tiers left at the default name): a request whose CDN-Loop
  names our cdn-id is judged by it alone, so an edge in front of a shield of the same name is a tier, not a loop.
  A client's ``EdgeProxy-Cluster`` field is never sent on (edgeproxy/fleet/cluster.py signs those a node sends).
- Unkeyed inputs that origins use to rewrite responses (``X-Forwarded-Host``, ``X-Original-URL``,
  ``X-Rewrite-URL``, ``X-HTTP-Method-Override``) are dropped from client requests unless a site allows them:
  they would change the response without changing the cache key (cache poisoning).
"""

from __future__ import annotations

from edgeproxy.http.cachecontrol import SURROGATE_DEVICE
from edgeproxy.http.headers import HOP_BY_HOP, Headers, connection_tokens, get_list

FRAMING: frozenset[bytes] = frozenset({b"content-length", b"transfer-encoding"})
UNKEYED_REQUEST_FIELDS: frozenset[bytes] = frozenset(
    {b"x-forwarded-host", b"x-original-url", b"x-rewrite-url", b"x-http-method-override",
     b"x-forwarded-server", b"x-host"}
)
# Fields we set ourselves on the way to the origin.
_SET_BY_US: frozenset[bytes] = frozenset(
    {b"host", b"expect", b"via", b"x-forwarded-for", b"x-forwarded-proto", b"surrogate-capability", b"cdn-loop",
     b"edgeproxy-cluster"})


# Edge Architecture 1.0 §2.2: tells the origin it may target Surrogate-Control members at this device.
SURROGATE_CAPABILITY = (b"surrogate-capability", SURROGATE_DEVICE.encode() + b'="Surrogate/1.0"')


def via_token(name: str) -> bytes:
    return b"1.1 " + name.encode("ascii")


def is_loop(headers: Headers, token: bytes) -> bool:
    """True when a Via member's received-by (after the protocol, before any comment) is the name in ``token``."""
    ours = token.split(b" ", 1)[1].lower()
    return any(member.lower().split()[1:2] == [ours] for member in get_list(headers, b"via"))


def cdn_loop_member(name: str, node: str) -> bytes:
    return f"{name}; node={node}".encode("ascii", "replace")


def is_cdn_loop(headers: Headers, member: bytes) -> bool:
    """True when a CDN-Loop member is ours: the same cdn-id and node (whitespace around ';' ignored)."""
    ours = _member_parts(member)
    return any(_member_parts(m) == ours for m in get_list(headers, b"cdn-loop"))


def carries_cdn_id(headers: Headers, member: bytes) -> bool:
    """True when a CDN-Loop member names our cdn-id, whichever node: another edgeproxy passed this request on, so its
    node ids (``is_cdn_loop``) tell a loop from a tier, where Via's shared name could not."""
    ours = _member_parts(member)[0]
    return any(_member_parts(m)[0] == ours for m in get_list(headers, b"cdn-loop"))


def _member_parts(member: bytes) -> list[bytes]:
    return [p.strip().lower() for p in member.split(b";")]


def request_fields(
    headers: Headers,
    *,
    host: bytes,
    via: bytes,
    client_ip: str | None,
    scheme: str,
    x_forwarded: bool,
    allowed_unkeyed: frozenset[bytes],
    body_length: int | None,
    chunked: bool,
    client_host: bytes | None = None,
    cdn_loop: bytes | None = None,
) -> Headers:
    """End-to-end request fields for the origin, with Host, Via, X-Forwarded-* and framing set.

    ``client_host`` is the host the cache key was made from (normalized); it defaults to the raw Host field.
    ``client_ip`` None: the edge asks on its own behalf (a background revalidation), so no X-Forwarded-For."""
    drop = HOP_BY_HOP | FRAMING | _SET_BY_US | (UNKEYED_REQUEST_FIELDS - allowed_unkeyed)
    named = connection_tokens(headers)
    if named:
        drop = drop | named
    out: Headers = [(b"host", host)]
    old_via = [v for k, v in headers if k == b"via"]
    xff = [v for k, v in headers if k == b"x-forwarded-for"]
    out.extend((k, v) for k, v in headers if k not in drop)
    out.append((b"via", b", ".join([*old_via, via])))
    loop = [v for k, v in headers if k == b"cdn-loop"] + ([cdn_loop] if cdn_loop is not None else [])
    if loop:  # RFC 8586 §2: kept, and ours added to the end
        out.append((b"cdn-loop", b", ".join(loop)))
    out.append(SURROGATE_CAPABILITY)
    if x_forwarded:
        if client_ip is not None:
            out.append((b"x-forwarded-for", b", ".join([*xff, client_ip.encode()])))
        out.append((b"x-forwarded-proto", scheme.encode()))
        if client_host is None:
            client_host = _client_host(headers)
        # An HTTP/1.0 request may have no Host: an empty X-Forwarded-Host is refused by some origin frameworks.
        if client_host and b"x-forwarded-host" not in allowed_unkeyed:
            out.append((b"x-forwarded-host", client_host))
    if chunked:
        out.append((b"transfer-encoding", b"chunked"))
    elif body_length is not None:
        out.append((b"content-length", b"%d" % body_length))
    return out


def _client_host(headers: Headers) -> bytes:
    for k, v in headers:
        if k == b"host":
            return v
    return b""


def response_fields(headers: Headers, via: bytes) -> Headers:
    """End-to-end response fields for the client (framing removed, Via appended)."""
    drop = HOP_BY_HOP | FRAMING
    named = connection_tokens(headers)
    if named:
        drop = drop | named
    out = [(k, v) for k, v in headers if k not in drop and k != b"via"]
    old_via = [v for k, v in headers if k == b"via"]
    out.append((b"via", b", ".join([*old_via, via])))
    return out


def decrement_max_forwards(headers: Headers) -> tuple[Headers, int | None]:
    """For OPTIONS/TRACE (RFC 9110 §7.6.2): the fields with Max-Forwards decremented, and its old value."""
    for i, (k, v) in enumerate(headers):
        if k == b"max-forwards":
            if not v.isdigit():
                return headers, None
            n = int(v)
            if n == 0:
                return headers, 0
            out = list(headers)
            out[i] = (k, b"%d" % (n - 1))
            return out, n
    return headers, None
