"""CORS through the cache over loopback, no browser (category: cors).

What is checked, always from a warm cache (the URL already stored by another Origin's request or a plain one):
- origin mode: the origin's CORS fields pass through, but a stored copy only ever answers the Origin it was made
  for: ``ACAO: *`` (one copy for all), an echoing origin with ``Vary: Origin``, one that echoes WITHOUT Vary (the
  edge keys it per Origin anyway), and one that answers plain requests without ACAO (the "stored from curl
  first" case). Origin A, then B, then a plain request, then A again: each gets its own ACAO or none.
- edge mode: one stored copy and ONE origin fetch for 50 allowed Origins, each answered with its exact ACAO and
  ``Vary: Origin``; disallowed origins get no ACAO (403 with ``reject_disallowed``, without reaching the origin);
  preflights answered at the edge; the fields also on a 304, an origin 404 and the edge's own 502 and 504.

One proxy for the module: two origin-mode sites (demo origin, scripted origin) and three edge-mode sites (lenient,
strict, origin down) in front of one scripted origin. Every wait is bounded.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.scriptorigin import Reply, ScriptOrigin, Seen
from tests.support import HTTPClient, Proc, Response, free_port, raw_exchange, start_proxy

A = "https://a.example"
B = "https://b.example"
C = "https://c.example"  # another allowed origin: warms the cache
EVIL = "https://evil.example"  # refused by every origin and policy here
ALLOWED_AT_ORIGIN = frozenset({A, B, C})
DEFAULT_ACAO = "https://app.example"  # what /specific answers a plain request with
CACHEABLE = ("cache-control", "public, max-age=300")
ETAG = ("etag", '"o1"')

EDGE_CORS = {
    "mode": "edge",
    "allow_origins": ["https://app.example.com", "https://*.example.org"],
    "allow_origin_patterns": [r"^https://tenant-[0-9]+\.example\.net$"],
    "allow_methods": ["GET", "HEAD", "PUT"],
    "allow_headers": ["x-custom", "content-type"],
    "expose_headers": ["cache-status", "age"],
    "max_age": 600,
}
APP = "https://app.example.com"


# ---- the scripted origin ----

def _specific(seen: Seen) -> Reply:
    """A specific ACAO and never a Vary: echoes allowed Origins, a default app origin to plain requests."""
    origin = seen.header("origin")
    acao = DEFAULT_ACAO if origin is None else (origin if origin in ALLOWED_AT_ORIGIN else None)
    return Reply(headers=[CACHEABLE, ETAG, *([("access-control-allow-origin", acao)] if acao else [])],
                 body=b"specific")


def _curl_first(seen: Seen) -> Reply:
    """No ACAO (and no Vary) without Origin; ACAO and Vary: Origin for an allowed CORS request."""
    origin = seen.header("origin")
    cors = [("access-control-allow-origin", origin), ("vary", "Origin")] if origin in ALLOWED_AT_ORIGIN else []
    return Reply(headers=[CACHEABLE, ETAG, *cors], body=b"curl-first")


def _edge_object(seen: Seen) -> Reply:
    """An origin with its own (wrong for this site) CORS opinion, which edge mode must drop."""
    if seen.header("if-none-match") == '"v1"':
        return Reply(304, [("etag", '"v1"'), CACHEABLE], framing="none")
    return Reply(headers=[CACHEABLE, ("etag", '"v1"'), ("content-type", "text/plain"),
                          ("access-control-allow-origin", "*"), ("access-control-allow-credentials", "true"),
                          ("vary", "Accept-Encoding, Origin")], body=b"object")


ROUTES = {
    "/specific": _specific,
    "/curl-first": _curl_first,
    "/edge/obj": _edge_object,
    "/edge/missing": Reply(404, [("cache-control", "public, max-age=60")], b"missing"),
    "/edge/slow": Reply(stall=True),
}


@pytest.fixture(scope="module")
def origin() -> Iterator[ScriptOrigin]:
    with ScriptOrigin() as o:
        o.routes.update(ROUTES)
        yield o


@pytest.fixture(scope="module")
def edge(origin: ScriptOrigin, demo_origin: Proc, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    sites = [
        {"hosts": ["demo.test"], "origin": demo_origin.url},
        {"hosts": ["script.test"], "origin": origin.url, "cors": {"mode": "origin"}},
        {"hosts": ["edge.test"], "origin": origin.url, "cors": EDGE_CORS},
        {"hosts": ["strict.test"], "origin": origin.url, "cors": {**EDGE_CORS, "reject_disallowed": True}},
        {"hosts": ["down.test"], "origin": f"http://127.0.0.1:{free_port()}", "cors": EDGE_CORS},
    ]
    proxy = start_proxy(origin.url, tmp_path_factory.mktemp("cors"), site=sites, origin={"read_timeout": "1s"})
    yield proxy
    proxy.stop()


@pytest.fixture
def client(edge: Proc) -> Iterator[HTTPClient]:
    with HTTPClient(edge.port) as c:
        yield c


def get(client: HTTPClient, host: str, target: str, origin: str | None, **fields: str) -> Response:
    headers = [("origin", origin)] if origin is not None else []
    headers += [(k.replace("_", "-"), v) for k, v in fields.items()]
    return client.request("GET", target, headers, host=host)


def vary(resp: Response) -> set[str]:
    return {m.strip().lower() for v in resp.header_all("vary") for m in v.split(",") if m.strip()}


def fetches(origin: ScriptOrigin, target: str, method: str = "GET") -> int:
    return sum(1 for s in origin.requests if s.target == target and s.method == method)


# ---- origin mode ----

def _expected(path: str, request_origin: str | None) -> str | None:
    """The ACAO the origin itself gives this Origin for this path (None: no ACAO)."""
    if path == "/cors/star":
        return "*"
    if path == "/cors/echo":
        return request_origin
    if path == "/specific" and request_origin is None:
        return DEFAULT_ACAO
    return request_origin if request_origin in ALLOWED_AT_ORIGIN else None


ORIGIN_MODE_PATHS = [("demo.test", "/cors/star"), ("demo.test", "/cors/echo"),
                     ("script.test", "/specific"), ("script.test", "/curl-first")]


@pytest.mark.parametrize("host, path", ORIGIN_MODE_PATHS)
@pytest.mark.parametrize("warm", [None, C, EVIL], ids=["warm-plain", "warm-other-origin", "warm-refused-origin"])
def test_origin_mode_each_origin_gets_its_own_acao(client: HTTPClient, origin: ScriptOrigin, host: str, path: str,
                                                   warm: str | None) -> None:
    target = f"{path}?warm={warm}"
    sequence = [warm, A, B, None, A]
    answers = [get(client, host, target, o) for o in sequence]
    for request_origin, resp in zip(sequence, answers, strict=True):
        want = _expected(path, request_origin)
        assert resp.status == 200, resp
        assert resp.header_all("access-control-allow-origin") == ([want] if want else []), (request_origin, resp)
        if want not in (None, "*"):
            assert "origin" in vary(resp), resp  # also for the browser's own cache (a browser caches per URL too)
    assert "hit" in (answers[-1].header("cache-status") or ""), answers[-1]
    if host == "script.test":  # one fetch per distinct Origin (absent counts as one), no more
        assert fetches(origin, target) == len(set(sequence))
    if path == "/cors/star":  # static: one copy for everyone
        assert all("hit" in (r.header("cache-status") or "") for r in answers[1:])


@pytest.mark.parametrize("path", ["/specific", "/curl-first"])
def test_origin_mode_304_keeps_the_origins_cors_fields(client: HTTPClient, path: str) -> None:
    """A 304 made from a stored copy still says who may read it (or a script can't read it): RFC 9110 §15.4.5 would let
    it drop ACAO, but a script that sent its own If-None-Match reads the 304 itself."""
    target = f"{path}?conditional"
    for o in (C, A, B, None, A):
        get(client, "script.test", target, o)  # one stored copy per Origin
        resp = get(client, "script.test", target, o, if_none_match='"o1"')
        want = _expected(path, o)
        assert resp.status == 304, resp
        assert resp.header_all("access-control-allow-origin") == ([want] if want else []), (o, resp)
        if want is not None:
            assert "origin" in vary(resp), resp


# ---- edge mode ----

def _allowed_origins() -> list[str]:
    wildcard = [f"https://shop{i}.example.org" for i in range(25)]
    pattern = [f"https://tenant-{i}.example.net" for i in range(24)]
    return [APP, *wildcard, *pattern]


def _assert_edge_fields(resp: Response, request_origin: str | None) -> None:
    """Exactly the policy's fields: one ACAO equal to the allowed Origin (none otherwise), Vary: Origin always."""
    allowed = request_origin is not None and request_origin in _allowed_origins()
    assert resp.header_all("access-control-allow-origin") == ([request_origin] if allowed else []), resp
    assert "origin" in vary(resp), resp
    assert resp.header_all("access-control-allow-credentials") == [], resp  # the origin's field was dropped
    if allowed:
        assert resp.header("access-control-expose-headers") == "cache-status, age", resp


def test_edge_mode_fifty_origins_one_fetch(client: HTTPClient, origin: ScriptOrigin) -> None:
    target = "/edge/obj?fifty"
    first = get(client, "edge.test", target, EVIL)  # warmed by a refused origin's request
    _assert_edge_fields(first, EVIL)
    origins = _allowed_origins()
    assert len(set(origins)) == 50
    for o in origins:
        resp = get(client, "edge.test", target, o)
        assert resp.status == 200 and resp.body == b"object"
        _assert_edge_fields(resp, o)
        assert "accept-encoding" in vary(resp), resp  # the origin's other Vary members stay
        assert "hit" in (resp.header("cache-status") or ""), resp
    plain = get(client, "edge.test", target, None)
    _assert_edge_fields(plain, None)
    assert "hit" in (plain.header("cache-status") or "")
    assert fetches(origin, target) == 1


@pytest.mark.parametrize("refused", [
    EVIL,
    "https://example.org",  # the bare wildcard suffix
    "https://app.example.com.evil.net",
    "https://app.example.com/",  # trailing slash: not a serialized origin
    "https://APP.example.com",  # browsers send lower case; byte-exact compare
    "http://app.example.com",  # other scheme
    "https://tenant-7xexample.net",  # the pattern's dot is escaped
    "https://tenant-7.example.net.evil.net",  # the pattern is anchored
    "null",
])
def test_edge_mode_refused_origin(client: HTTPClient, origin: ScriptOrigin, refused: str) -> None:
    target = "/edge/obj?refused"
    get(client, "edge.test", target, APP)  # warm, by an allowed origin
    lenient = get(client, "edge.test", target, refused)
    assert lenient.status == 200 and lenient.body == b"object"
    _assert_edge_fields(lenient, refused)
    before = fetches(origin, target)
    strict = get(client, "strict.test", target, refused)
    assert strict.status == 403, strict
    _assert_edge_fields(strict, refused)
    assert fetches(origin, target) == before  # refused at the edge, never forwarded
    allowed = get(client, "strict.test", target, APP)
    assert allowed.status == 200
    _assert_edge_fields(allowed, APP)


@pytest.mark.parametrize("request_origin, method, names, status", [
    (APP, "PUT", "x-custom", 204),
    ("https://tenant-3.example.net", "GET", "content-type,x-custom", 204),
    ("https://shop1.example.org", "PUT", None, 204),
    (APP, "DELETE", None, 403),  # method not allowed
    (APP, "PUT", "x-custom,x-other", 403),  # one header not allowed
    (APP, "GET", "authorization", 403),  # never implied
    (EVIL, "GET", None, 403),
    (None, "GET", None, 403),
])
def test_edge_mode_preflight_answered_at_the_edge(edge: Proc, origin: ScriptOrigin, request_origin: str | None,
                                                  method: str, names: str | None, status: int) -> None:
    fields = [("host", "edge.test"), ("access-control-request-method", method)]
    fields += [("origin", request_origin)] if request_origin else []
    fields += [("access-control-request-headers", names)] if names else []
    raw = ("OPTIONS /edge/obj?preflight HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields)
           + "connection: close\r\n\r\n").encode()
    data = raw_exchange(edge.port, raw)
    head = data.split(b"\r\n\r\n", 1)[0].lower()
    assert head.startswith(b"http/1.1 %d " % status), data
    assert head.count(b"\r\ncontent-length:") <= 1, data  # one framing field, even on the 403
    lines = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:])
    assert b"origin" in lines[b"vary"]
    if status == 204:
        assert lines[b"access-control-allow-origin"] == request_origin.encode()  # type: ignore[union-attr]
        assert lines[b"access-control-allow-methods"] == b"get, head, put"
        assert lines.get(b"access-control-allow-headers") == (names.replace(",", ", ").encode() if names else None)
        assert lines[b"access-control-max-age"] == b"600"
    else:
        assert not [k for k in lines if k.startswith(b"access-control-allow")], data
    assert fetches(origin, "/edge/obj?preflight", "OPTIONS") == 0


def test_edge_mode_fields_on_304(client: HTTPClient) -> None:
    target = "/edge/obj?conditional"
    get(client, "edge.test", target, None)  # warmed by a plain request
    for o in (APP, "https://tenant-1.example.net", EVIL, None):
        resp = get(client, "edge.test", target, o, if_none_match='"v1"')
        assert resp.status == 304, resp
        _assert_edge_fields(resp, o)


@pytest.mark.parametrize("host, target, status", [
    ("edge.test", "/edge/missing", 404),  # from the origin, then from the cache
    ("edge.test", "/edge/missing", 404),
    ("down.test", "/edge/anything", 502),  # the edge's own errors
    ("edge.test", "/edge/slow", 504),
])
@pytest.mark.parametrize("request_origin", ["https://shop9.example.org", None])
def test_edge_mode_fields_on_errors(client: HTTPClient, host: str, target: str, status: int,
                                    request_origin: str | None) -> None:
    resp = get(client, host, target, request_origin)
    assert resp.status == status, resp
    _assert_edge_fields(resp, request_origin)


@pytest.mark.parametrize("field, status", [
    (("via", "1.1 other, 1.1 edgeproxy"), 508),  # came back around
    (("expect", "something-else"), 417),
])
@pytest.mark.parametrize("request_origin", ["https://shop9.example.org", None])
def test_edge_mode_fields_on_refusals(edge: Proc, field: tuple[str, str], status: int,
                                      request_origin: str | None) -> None:
    """Refused before any lookup, but after the site is known: a script can still read why."""
    headers = [field, *([("origin", request_origin)] if request_origin else [])]
    with HTTPClient(edge.port) as c:
        resp = c.request("GET", "/edge/refused", headers, host="edge.test")
    assert resp.status == status, resp
    _assert_edge_fields(resp, request_origin)
