"""What crosses the proxy (edgeproxy/proxy/forwarding.py): request fields to the origin, response fields to the
client, loop detection by Via, Max-Forwards. Tables of header lists in, header lists out; pure."""

from __future__ import annotations

from typing import Any

import pytest

from edgeproxy.http.headers import HOP_BY_HOP
from edgeproxy.proxy.forwarding import (
    SURROGATE_CAPABILITY,
    UNKEYED_REQUEST_FIELDS,
    decrement_max_forwards,
    is_loop,
    request_fields,
    response_fields,
    via_token,
)

VIA = via_token("edgeproxy")
SC = SURROGATE_CAPABILITY
HOST = (b"host", b"www.example.com")
XFH = (b"x-forwarded-host", b"www.example.com")
XFP = (b"x-forwarded-proto", b"https")
XFF = (b"x-forwarded-for", b"192.0.2.1")


def forward(headers: list[tuple[bytes, bytes]], **overrides: Any) -> list[tuple[bytes, bytes]]:
    kwargs: dict[str, Any] = dict(host=b"origin.internal", via=VIA, client_ip="192.0.2.1", scheme="https",
                                  x_forwarded=True, allowed_unkeyed=frozenset(), body_length=None, chunked=False)
    return request_fields(headers, **{**kwargs, **overrides})


def test_via_token():
    assert via_token("edge-a") == b"1.1 edge-a"


REQUESTS = [
    ("minimal", [HOST], {},
     [(b"host", b"origin.internal"), (b"via", VIA), SC, XFF, XFP, XFH]),
    ("end-to-end-fields-keep-order", [HOST, (b"accept", b"*/*"), (b"cookie", b"a=1"), (b"accept", b"text/html")], {},
     [(b"host", b"origin.internal"), (b"accept", b"*/*"), (b"cookie", b"a=1"), (b"accept", b"text/html"),
      (b"via", VIA), SC, XFF, XFP, XFH]),
    ("hop-by-hop-dropped",
     [HOST, *((name, b"x") for name in sorted(HOP_BY_HOP - {b"connection"})), (b"connection", b"close")],
     {"x_forwarded": False}, [(b"host", b"origin.internal"), (b"via", VIA), SC]),
    ("connection-named-dropped",
     [HOST, (b"connection", b"X-Secret, keep-alive"), (b"x-secret", b"1"), (b"x-kept", b"2")],
     {"x_forwarded": False}, [(b"host", b"origin.internal"), (b"x-kept", b"2"), (b"via", VIA), SC]),
    ("via-appended", [HOST, (b"via", b"1.0 fred"), (b"via", b"1.1 p.example (Apache/1.1)")], {"x_forwarded": False},
     [(b"host", b"origin.internal"), (b"via", b"1.0 fred, 1.1 p.example (Apache/1.1), " + VIA), SC]),
    ("xff-appended", [HOST, (b"x-forwarded-for", b"203.0.113.7, 198.51.100.2"), (b"x-forwarded-proto", b"http")],
     {"client_ip": "2001:db8::1", "scheme": "http"},
     [(b"host", b"origin.internal"), (b"via", VIA), SC,
      (b"x-forwarded-for", b"203.0.113.7, 198.51.100.2, 2001:db8::1"), (b"x-forwarded-proto", b"http"), XFH]),
    ("x-forwarded-off-drops-client-values",
     [HOST, (b"x-forwarded-for", b"203.0.113.7"), (b"x-forwarded-proto", b"http"), XFH], {"x_forwarded": False},
     [(b"host", b"origin.internal"), (b"via", VIA), SC]),
    ("client-xfh-replaced-by-host", [HOST, (b"x-forwarded-host", b"evil.example")], {},
     [(b"host", b"origin.internal"), (b"via", VIA), SC, XFF, XFP, XFH]),
    ("normalized-client-host", [(b"host", b"WWW.Example.com.:80")], {"client_host": b"www.example.com"},
     [(b"host", b"origin.internal"), (b"via", VIA), SC, XFF, XFP, XFH]),
    ("unkeyed-dropped", [HOST, *((name, b"/admin") for name in sorted(UNKEYED_REQUEST_FIELDS))],
     {"x_forwarded": False}, [(b"host", b"origin.internal"), (b"via", VIA), SC]),
    ("unkeyed-allowed", [HOST, (b"x-original-url", b"/admin"), (b"x-forwarded-host", b"a.example")],
     {"allowed_unkeyed": frozenset({b"x-original-url", b"x-forwarded-host"})},
     [(b"host", b"origin.internal"), (b"x-original-url", b"/admin"), (b"x-forwarded-host", b"a.example"),
      (b"via", VIA), SC, XFF, XFP]),
    ("set-by-us-not-copied", [HOST, (b"expect", b"100-continue"), (b"surrogate-capability", b'x="ESI/1.0"')],
     {"x_forwarded": False}, [(b"host", b"origin.internal"), (b"via", VIA), SC]),
    ("content-length-rebuilt", [HOST, (b"content-length", b"99"), (b"content-length", b"99")],
     {"x_forwarded": False, "body_length": 5},
     [(b"host", b"origin.internal"), (b"via", VIA), SC, (b"content-length", b"5")]),
    ("content-length-zero", [HOST], {"x_forwarded": False, "body_length": 0},
     [(b"host", b"origin.internal"), (b"via", VIA), SC, (b"content-length", b"0")]),
    ("chunked-rebuilt", [HOST, (b"transfer-encoding", b"gzip, chunked")], {"x_forwarded": False, "chunked": True},
     [(b"host", b"origin.internal"), (b"via", VIA), SC, (b"transfer-encoding", b"chunked")]),
    ("buffered-chunked-sent-with-length", [HOST, (b"transfer-encoding", b"chunked")],
     {"x_forwarded": False, "body_length": 11},
     [(b"host", b"origin.internal"), (b"via", VIA), SC, (b"content-length", b"11")]),
    ("no-host-field-http10", [(b"accept", b"*/*")], {"x_forwarded": True},
     [(b"host", b"origin.internal"), (b"accept", b"*/*"), (b"via", VIA), SC, XFF, XFP]),
]


@pytest.mark.parametrize("headers, overrides, expected", [r[1:] for r in REQUESTS], ids=[r[0] for r in REQUESTS])
def test_request_fields(headers, overrides, expected):
    assert forward(headers, **overrides) == expected


def test_surrogate_capability_names_our_device():
    assert SURROGATE_CAPABILITY == (b"surrogate-capability", b'edgeproxy="Surrogate/1.0"')


RESPONSES = [
    ("plain", [(b"content-type", b"text/plain"), (b"etag", b'"1"')],
     [(b"content-type", b"text/plain"), (b"etag", b'"1"'), (b"via", VIA)]),
    ("framing-dropped", [(b"content-length", b"5"), (b"transfer-encoding", b"chunked"), (b"age", b"3")],
     [(b"age", b"3"), (b"via", VIA)]),
    ("hop-by-hop-dropped", [(b"connection", b"keep-alive"), (b"keep-alive", b"timeout=5"), (b"upgrade", b"h2c"),
                            (b"proxy-authenticate", b"Basic"), (b"trailer", b"x"), (b"date", b"d")],
     [(b"date", b"d"), (b"via", VIA)]),
    ("connection-named-dropped", [(b"connection", b"X-Internal"), (b"x-internal", b"1"), (b"x-public", b"2")],
     [(b"x-public", b"2"), (b"via", VIA)]),
    ("via-appended-once-at-end", [(b"via", b"1.1 origin-lb"), (b"server", b"s"), (b"via", b"1.1 app")],
     [(b"server", b"s"), (b"via", b"1.1 origin-lb, 1.1 app, " + VIA)]),
    ("set-cookie-kept-repeated", [(b"set-cookie", b"a=1"), (b"set-cookie", b"b=2")],
     [(b"set-cookie", b"a=1"), (b"set-cookie", b"b=2"), (b"via", VIA)]),
]


@pytest.mark.parametrize("headers, expected", [r[1:] for r in RESPONSES], ids=[r[0] for r in RESPONSES])
def test_response_fields(headers, expected):
    assert response_fields(headers, VIA) == expected


LOOPS = [
    ([(b"via", b"1.1 edgeproxy")], True),
    ([(b"via", b"1.1 EdgeProxy")], True),
    ([(b"via", b"HTTP/1.1 edgeproxy")], True),
    ([(b"via", b"1.0 fred, 1.1 edgeproxy (edgeproxy/1.0)")], True),
    ([(b"via", b"1.0 fred"), (b"via", b"1.1  edgeproxy")], True),
    ([(b"via", b"1.1 edgeproxy-b")], False),  # another node whose name starts with ours
    ([(b"via", b"1.1 my-edgeproxy")], False),
    ([(b"via", b"1.1 edgeproxy.example.com")], False),
    ([(b"via", b"1.1 edgeproxy:8080")], False),
    ([(b"via", b"1.1 fred (via edgeproxy)")], False),  # a comment is not a received-by
    ([(b"via", b"edgeproxy")], False),  # no protocol: the only word is the protocol
    ([(b"via", b"")], False),
    ([(b"x-via", b"1.1 edgeproxy")], False),
    ([], False),
]


@pytest.mark.parametrize("headers, loop", LOOPS)
def test_is_loop(headers, loop):
    assert is_loop(headers, VIA) is loop


def test_is_loop_uses_the_configured_name():
    assert is_loop([(b"via", b"1.1 edge-b")], via_token("edge-b"))
    assert not is_loop([(b"via", b"1.1 edge-b")], via_token("edge-a"))


MAX_FORWARDS = [
    ([(b"max-forwards", b"5")], [(b"max-forwards", b"4")], 5),
    ([(b"accept", b"*/*"), (b"max-forwards", b"1")], [(b"accept", b"*/*"), (b"max-forwards", b"0")], 1),
    ([(b"max-forwards", b"0")], [(b"max-forwards", b"0")], 0),  # 0: answer here, nothing forwarded
    ([(b"max-forwards", b"10"), (b"max-forwards", b"3")], [(b"max-forwards", b"9"), (b"max-forwards", b"3")], 10),
    ([(b"max-forwards", b"-1")], [(b"max-forwards", b"-1")], None),
    ([(b"max-forwards", b"x")], [(b"max-forwards", b"x")], None),
    ([(b"max-forwards", b"")], [(b"max-forwards", b"")], None),
    ([], [], None),
]


@pytest.mark.parametrize("headers, out, before", MAX_FORWARDS)
def test_decrement_max_forwards(headers, out, before):
    original = list(headers)
    assert decrement_max_forwards(headers) == (out, before)
    assert headers == original  # the request's own list is never changed
