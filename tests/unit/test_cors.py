"""Edge CORS policy: origin matching, config validation, delivery fields, preflights, origin-mode repair."""

from __future__ import annotations

import ast
import pathlib

import pytest

import edgeproxy.cors as cors_module
from edgeproxy.cors import (
    MAX_ORIGIN_LEN,
    MEMO_CAP,
    CorsConfigError,
    CorsPolicy,
    fix_origin_response,
    is_preflight,
    strip_origin_cors,
)

EDGE = dict(
    mode="edge",
    allow_origins=["https://app.example.com", "https://*.example.org", "http://localhost:8080"],
    allow_origin_patterns=[r"^https://[a-z0-9-]+\.preview\.example\.net$"],
    allow_methods=["GET", "HEAD", "PUT", "DELETE"],
    allow_headers=["Content-Type", "x-request-id"],
    expose_headers=["cache-status", "age", "etag"],
    max_age=600,
)
POLICY = CorsPolicy.from_settings(**EDGE)
PREFLIGHT_VARY = (b"vary", b"origin, access-control-request-method, access-control-request-headers")


def test_pure_module_imports() -> None:
    tree = ast.parse(pathlib.Path(cors_module.__file__).read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not imported & {"asyncio", "socket", "time", "h11"}


@pytest.mark.parametrize(
    "origin",
    [
        b"https://app.example.com",
        b"https://a.example.org",
        b"https://a.b.example.org",
        b"https://x-1.example.org",
        b"https://pr-42.preview.example.net",
        b"http://localhost:8080",
    ],
)
def test_allowed_origins(origin: bytes) -> None:
    assert POLICY.is_allowed(origin)


@pytest.mark.parametrize(
    "origin",
    [
        b"https://example.org",  # the wildcard needs a label before the suffix
        b"https://evilexample.org",  # not on a label boundary
        b"https://a.example.org.evil.net",  # suffix in the middle
        b"http://a.example.org",  # wrong scheme
        b"https://a.example.org:8443",  # port not in the wildcard
        b"https://a.example.org:443",  # default port written out: browsers never send this
        b"https://APP.example.com",  # upper case
        b"https://A.example.org",
        b"HTTPS://app.example.com",
        b"https://app.example.com/",  # trailing slash
        b"https://app.example.com/path",
        b"http://app.example.com",
        b"https://app.example.com:443",
        b"https://app.example.com:8443",
        b"http://localhost",  # wrong port
        b"http://localhost:80800",
        b"http://localhost:08080",
        b"null",  # not opted in
        b"https://example.org.",  # trailing dot
        b"https://a.example.org.",
        b"https://a.example.org@evil.net",  # userinfo tricks
        b"https://evil.net@a.example.org",
        b"https://user:pw@app.example.com",
        b"https://a..example.org",
        b"https://.example.org",
        b"https://a.example.org\r\nx: y",  # injection never echoed
        b"https://a.example.org ",
        b" https://app.example.com",
        b"https://a.example.org#x",
        b"https://x.preview.example.net.evil.com",  # regexes are full-matched
        b"https://a.b.preview.example.net",
        b"https://xpreview.example.net",
        b"",
        b"*",
        b"app.example.com",
        b"https://" + b"a" * MAX_ORIGIN_LEN + b".example.org",  # too long to bother
    ],
)
def test_disallowed_origins(origin: bytes) -> None:
    assert not POLICY.is_allowed(origin)
    assert POLICY.response_headers(origin) == [(b"vary", b"origin")]
    assert POLICY.response_fields(origin) == b"vary: origin\r\n"


@pytest.mark.parametrize(
    "wildcard, allowed, refused",
    [
        ("https://*.example.org:8443", b"https://a.example.org:8443", b"https://a.example.org"),
        ("http://*.test.local", b"http://x.y.test.local", b"https://x.test.local"),
    ],
)
def test_wildcard_ports_and_schemes(wildcard: str, allowed: bytes, refused: bytes) -> None:
    policy = CorsPolicy.from_settings(mode="edge", allow_origins=[wildcard])
    assert policy.is_allowed(allowed)
    assert not policy.is_allowed(refused)


def test_null_needs_opt_in() -> None:
    policy = CorsPolicy.from_settings(mode="edge", allow_origins=["https://a.example"], allow_null=True)
    assert policy.is_allowed(b"null")
    assert (b"access-control-allow-origin", b"null") in policy.response_headers(b"null")


CONFIG_ERRORS = [
    (dict(mode="proxy"), "mode"),
    (dict(colour="red"), "colour"),
    (dict(allow_origins=["https://a.example"]), "allow_origins"),  # edge keys need mode = "edge"
    (dict(mode="edge", allow_origins=["*"], allow_credentials=True), "allow_credentials"),
    (dict(mode="edge", allow_origins=["*", "https://a.example"]), "allow_origins"),
    (dict(mode="edge", allow_origins=["null"]), "allow_origins[0]"),
    (dict(mode="edge", allow_null=True, allow_credentials=True), "allow_null"),
    (dict(mode="edge", allow_origins=["https://a.example", "https://a.example/"]), "allow_origins[1]"),
    (dict(mode="edge", allow_origins=["https://a.example/app"]), "allow_origins[0]"),
    (dict(mode="edge", allow_origins=["https://A.example"]), "allow_origins[0]"),
    (dict(mode="edge", allow_origins=["https://a.example:443"]), "allow_origins[0]"),
    (dict(mode="edge", allow_origins=["http://a.example:80"]), "allow_origins[0]"),
    (dict(mode="edge", allow_origins=["https://a.example."]), "allow_origins[0]"),
    (dict(mode="edge", allow_origins=["https://u@a.example"]), "allow_origins[0]"),
    (dict(mode="edge", allow_origins=["a.example"]), "allow_origins[0]"),
    (dict(mode="edge", allow_origins=["https://a_b.example"]), "allow_origins[0]"),
    (dict(mode="edge", allow_origins=[42]), "allow_origins[0]"),
    (dict(mode="edge", allow_origins="https://a.example"), "allow_origins"),
    (dict(mode="edge", allow_origins=["https://*example.org"]), "allow_origins[0]"),
    (dict(mode="edge", allow_origins=["https://a.*.example.org"]), "allow_origins[0]"),
    (dict(mode="edge", allow_origins=["https://*.org"]), "allow_origins[0]"),
    (dict(mode="edge", allow_origins=["https://*.example.org/"]), "allow_origins[0]"),
    (dict(mode="edge", allow_origins=["https://*.example.org:443"]), "allow_origins[0]"),
    (dict(mode="edge", allow_origins=["*.example.org"]), "allow_origins[0]"),
    (dict(mode="edge", allow_origin_patterns=[r"https://a\.example$"]), "allow_origin_patterns[0]"),
    (dict(mode="edge", allow_origin_patterns=[r"^https://a\.example"]), "allow_origin_patterns[0]"),
    (dict(mode="edge", allow_origin_patterns=[r"^https://a\.example\$"]), "allow_origin_patterns[0]"),
    (dict(mode="edge", allow_origin_patterns=[r"^https://(a\.example$"]), "allow_origin_patterns[0]"),
    (dict(mode="edge", allow_origin_patterns=[r"^https://contoso.com$"]), "allow_origin_patterns[0]"),
    (dict(mode="edge", allow_origin_patterns=[r"^https://.*\.contoso\.com$"]), "allow_origin_patterns[0]"),
    (dict(mode="edge", allow_origin_patterns=["^ok$", r"^https://[a-z]+.x\.com$"]), "allow_origin_patterns[1]"),
    (dict(mode="edge", allow_methods=["GET", "PUT POST"]), "allow_methods[1]"),
    (dict(mode="edge", allow_methods=["*"], allow_credentials=True), "allow_methods[0]"),
    (dict(mode="edge", allow_headers=["x-ok", "x bad"]), "allow_headers[1]"),
    (dict(mode="edge", allow_headers=["*"], allow_credentials=True), "allow_headers[0]"),
    (dict(mode="edge", expose_headers=["*"], allow_credentials=True), "expose_headers[0]"),
    (dict(mode="edge", expose_headers=["a:b"]), "expose_headers[0]"),
    (dict(mode="edge", max_age=-1), "max_age"),
    (dict(mode="edge", max_age=86401), "max_age"),
    (dict(mode="edge", max_age="600"), "max_age"),
    (dict(mode="edge", max_age=True), "max_age"),
    (dict(mode="edge", allow_credentials="yes"), "allow_credentials"),
]


@pytest.mark.parametrize("keys, key", CONFIG_ERRORS)
def test_config_errors_name_the_key(keys: dict[str, object], key: str) -> None:
    with pytest.raises(CorsConfigError) as info:
        CorsPolicy.from_settings(**keys)
    assert info.value.key == key
    assert info.value.reason and str(info.value).startswith(key + ": ")


@pytest.mark.parametrize(
    "keys",
    [
        dict(),
        dict(mode="origin"),
        dict(mode="edge"),
        dict(mode="edge", allow_origins=["*"], allow_methods=["*"], allow_headers=["*"], expose_headers=["*"]),
        dict(mode="edge", allow_origin_patterns=[r"^https://[a-z0-9.-]+\.example\.com\Z"]),
        dict(mode="edge", allow_origin_patterns=[r"^https://[^.]+\.example\.com$"]),
        dict(mode="edge", allow_origin_patterns=[r"^https://[].]+\.example\.com$"]),
        dict(mode="edge", allow_origins=["https://[::1]:8443", "chrome-extension://abcdef"]),
        dict(mode="edge", allow_origins=("https://a.example",), max_age=0, allow_credentials=True),
    ],
)
def test_valid_configs(keys: dict[str, object]) -> None:
    policy = CorsPolicy.from_settings(**keys)
    assert policy == CorsPolicy.from_settings(**keys)
    assert policy.describe()["mode"] == keys.get("mode", "origin")


def test_headers_lower_cased_methods_kept() -> None:
    assert POLICY.settings.allow_headers == ("content-type", "x-request-id")
    assert POLICY.settings.allow_methods == ("GET", "HEAD", "PUT", "DELETE")


def test_response_headers_allowed() -> None:
    origin = b"https://a.example.org"
    expected = [
        (b"vary", b"origin"),
        (b"access-control-allow-origin", origin),
        (b"access-control-expose-headers", b"cache-status, age, etag"),
    ]
    assert POLICY.response_headers(origin) == expected
    assert POLICY.response_fields(origin) == b"".join(k + b": " + v + b"\r\n" for k, v in expected)


@pytest.mark.parametrize(
    "extra, origin, expected",
    [
        (  # credentials and timing: TAO carries the same per-origin value
            dict(allow_credentials=True, timing_allow=True),
            b"https://a.example",
            b"vary: origin\r\naccess-control-allow-origin: https://a.example\r\n"
            b"access-control-allow-credentials: true\r\ntiming-allow-origin: https://a.example\r\n",
        ),
        (dict(allow_credentials=True), None, b"vary: origin\r\n"),  # no Origin: still Vary
        (dict(allow_credentials=True), b"https://b.example", b"vary: origin\r\n"),
    ],
)
def test_response_fields(extra: dict[str, object], origin: bytes | None, expected: bytes) -> None:
    policy = CorsPolicy.from_settings(mode="edge", allow_origins=["https://a.example"], **extra)
    assert policy.response_fields(origin) == expected


@pytest.mark.parametrize("origin", [b"https://any.example", b"null", None])
def test_pure_wildcard_is_static_without_vary(origin: bytes | None) -> None:
    policy = CorsPolicy.from_settings(mode="edge", allow_origins=["*"], expose_headers=["age"], timing_allow=True)
    assert policy.response_fields(origin) == (
        b"access-control-allow-origin: *\r\naccess-control-expose-headers: age\r\ntiming-allow-origin: *\r\n"
    )
    assert not policy.reject(origin)


@pytest.mark.parametrize(
    "origin, rejected",
    [(b"https://app.example.com", False), (b"https://evil.example", True), (b"null", True), (None, False)],
)
def test_reject(origin: bytes | None, rejected: bool) -> None:
    policy = CorsPolicy.from_settings(**EDGE, reject_disallowed=True)
    assert policy.reject(origin) is rejected
    assert not POLICY.reject(origin)  # default: answer without ACAO instead


def test_memo_is_bounded() -> None:
    policy = CorsPolicy.from_settings(mode="edge", allow_origins=["https://*.example.org"])
    for i in range(MEMO_CAP * 3):
        policy.is_allowed(b"https://h%d.example.org" % i)
        policy.is_allowed(b"https://h%d.evil.example" % i)
    assert len(policy._memo) <= MEMO_CAP
    assert policy.is_allowed(b"https://h0.example.org") and not policy.is_allowed(b"https://h0.evil.example")


REFUSED = (403, [PREFLIGHT_VARY, (b"content-length", b"0")])


@pytest.mark.parametrize(
    "origin, method, request_headers, expected",
    [
        (
            b"https://app.example.com",
            b"PUT",
            b"content-type,x-request-id",
            (204, [
                (b"access-control-allow-origin", b"https://app.example.com"),
                (b"access-control-allow-methods", b"GET, HEAD, PUT, DELETE"),
                (b"access-control-allow-headers", b"content-type, x-request-id"),
                (b"access-control-max-age", b"600"),
                PREFLIGHT_VARY,
            ]),
        ),
        (  # only what was asked is echoed; names arrive lower-cased but we normalize anyway
            b"https://a.example.org",
            b"DELETE",
            b"X-Request-ID",
            (204, [
                (b"access-control-allow-origin", b"https://a.example.org"),
                (b"access-control-allow-methods", b"GET, HEAD, PUT, DELETE"),
                (b"access-control-allow-headers", b"x-request-id"),
                (b"access-control-max-age", b"600"),
                PREFLIGHT_VARY,
            ]),
        ),
        (
            b"https://app.example.com",
            b"GET",
            None,
            (204, [
                (b"access-control-allow-origin", b"https://app.example.com"),
                (b"access-control-allow-methods", b"GET, HEAD, PUT, DELETE"),
                (b"access-control-max-age", b"600"),
                PREFLIGHT_VARY,
            ]),
        ),
        (b"https://evil.example", b"PUT", b"content-type", REFUSED),  # origin
        (None, b"PUT", None, REFUSED),
        (b"null", b"GET", None, REFUSED),
        (b"https://app.example.com", b"PATCH", None, REFUSED),  # method
        (b"https://app.example.com", b"put", None, REFUSED),  # methods are case-sensitive
        (b"https://app.example.com", b"PUT", b"content-type, authorization", REFUSED),  # header
        (b"https://app.example.com", b"PUT", b"x-a b", REFUSED),  # not a token
    ],
)
def test_preflight(origin: bytes | None, method: bytes, request_headers: bytes | None, expected: tuple) -> None:
    answer = POLICY.preflight(origin, method, request_headers)
    assert (answer.status, answer.headers) == expected
    assert answer.allowed is (expected[0] == 204)


@pytest.mark.parametrize(
    "request_headers, status, allow_headers",
    [
        (b"x-anything, content-type", 204, b"x-anything, content-type"),
        (b"authorization", 403, None),  # "*" never covers Authorization
    ],
)
def test_preflight_any_header(request_headers: bytes, status: int, allow_headers: bytes | None) -> None:
    policy = CorsPolicy.from_settings(mode="edge", allow_origins=["*"], allow_methods=["*"], allow_headers=["*"])
    answer = policy.preflight(b"https://x.example", b"PATCH", request_headers)
    assert answer.status == status
    fields = dict(answer.headers)
    assert fields.get(b"access-control-allow-headers") == allow_headers
    if status == 204:
        assert fields[b"access-control-allow-origin"] == b"*"
        assert fields[b"access-control-allow-methods"] == b"PATCH"


def test_preflight_credentials_and_authorization() -> None:
    policy = CorsPolicy.from_settings(
        mode="edge", allow_origins=["https://a.example"], allow_headers=["authorization"], allow_credentials=True
    )
    answer = policy.preflight(b"https://a.example", b"GET", b"authorization")
    assert answer.status == 204
    assert (b"access-control-allow-credentials", b"true") in answer.headers
    assert (b"access-control-allow-headers", b"authorization") in answer.headers
    assert all(v != b"*" for _, v in answer.headers)


@pytest.mark.parametrize(
    "method, headers, expected",
    [
        (b"OPTIONS", [(b"origin", b"https://a"), (b"access-control-request-method", b"PUT")], True),
        (b"OPTIONS", [(b"access-control-request-method", b"PUT")], True),
        (b"OPTIONS", [(b"origin", b"https://a")], False),
        (b"GET", [(b"access-control-request-method", b"PUT")], False),
    ],
)
def test_is_preflight(method: bytes, headers: list[tuple[bytes, bytes]], expected: bool) -> None:
    assert is_preflight(method, headers) is expected


@pytest.mark.parametrize(
    "headers, added",
    [
        ([(b"access-control-allow-origin", b"https://a.example")], True),  # pitfall 5
        ([(b"access-control-allow-origin", b"https://a.example"), (b"vary", b"Accept-Encoding")], True),
        ([(b"access-control-allow-origin", b"https://a.example"), (b"vary", b"accept-encoding, Origin")], False),
        ([(b"access-control-allow-origin", b"https://a.example"), (b"vary", b"*")], False),
        ([(b"access-control-allow-origin", b"*")], False),
        ([(b"timing-allow-origin", b"https://a.example")], True),
        ([(b"timing-allow-origin", b"*")], False),
        ([(b"content-type", b"text/plain")], False),
    ],
)
def test_fix_origin_response(headers: list[tuple[bytes, bytes]], added: bool) -> None:
    fixed = fix_origin_response(headers)
    if added:
        assert fixed == [*headers, (b"vary", b"origin")]
    else:
        assert fixed is headers


@pytest.mark.parametrize(
    "headers, expected",
    [
        (
            [
                (b"content-type", b"text/plain"),
                (b"access-control-allow-origin", b"https://a.example"),
                (b"access-control-allow-credentials", b"true"),
                (b"access-control-expose-headers", b"etag"),
                (b"timing-allow-origin", b"https://a.example"),
                (b"vary", b"Origin, Accept-Encoding"),
                (b"etag", b'"1"'),
            ],
            [(b"content-type", b"text/plain"), (b"vary", b"Accept-Encoding"), (b"etag", b'"1"')],
        ),
        ([(b"vary", b"origin"), (b"vary", b"accept")], [(b"vary", b"accept")]),
        ([(b"vary", b" ORIGIN ,")], []),
        ([(b"cache-control", b"max-age=60")], [(b"cache-control", b"max-age=60")]),
    ],
)
def test_strip_origin_cors(headers: list[tuple[bytes, bytes]], expected: list[tuple[bytes, bytes]]) -> None:
    assert strip_origin_cors(headers) == expected
