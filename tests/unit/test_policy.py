import ast
import pathlib
from dataclasses import dataclass

import pytest

from edgeproxy.cache.key import DECIDING_FIELDS, CacheRequest
from edgeproxy.cache.policy import (
    CachePolicy,
    Hit,
    Miss,
    OnlyIfCachedMiss,
    Pass,
    Revalidate,
    StaleHit,
    Validated,
    can_serve_stale_on_error,
    counts_as_error,
    invalidation_keys,
    lookup,
    quote_etag,
)
from edgeproxy.cache.storability import make_entry
from edgeproxy.http.dates import format_http_date

NOW = 1_700_000_000.0
LM = format_http_date(NOW - 10000)
IGNORE = CachePolicy(ignore_request_cache_control=True)


def req(headers=(), method=b"GET", target=b"/a"):
    return CacheRequest(method, "http", "example.com", target, list(headers))


def stored(cc: bytes, *extra, request_headers=(), age: bytes | None = None):
    headers = [(b"date", format_http_date(NOW)), (b"cache-control", cc), *extra]
    if age is not None:
        headers.append((b"age", age))
    return make_entry(req(request_headers), 200, headers, b"body", NOW, NOW)


ETAG = (b"etag", b'"v1"')


@dataclass(frozen=True)
class Refetch:
    """Expected: a Revalidate without validators (an unconditional fetch that keeps the stale entry for
    stale-if-error)."""

    detail: str

INM = [(b"if-none-match", b'"v1"')]


@pytest.mark.parametrize(
    "entry_args, request_headers, later, opts, expected",
    [
        # freshness
        ((b"max-age=100",), [], 10, CachePolicy(), Hit),
        ((b"max-age=100",), [], 100, CachePolicy(), Refetch("stale")),
        ((b"max-age=100", ETAG), [], 100, CachePolicy(), Revalidate),
        ((b"max-age=100, no-cache", ETAG), [], 1, CachePolicy(), Revalidate),
        ((b"max-age=100, stale-while-revalidate=50",), [], 120, CachePolicy(), StaleHit(None, 120.0, True)),
        ((b"max-age=100, stale-while-revalidate=50",), [], 151, CachePolicy(), Refetch("stale")),
        ((b"max-age=100, must-revalidate, stale-while-revalidate=50",), [], 120, CachePolicy(), Refetch("stale")),
        ((b"s-maxage=100, stale-while-revalidate=50",), [], 120, CachePolicy(), Refetch("stale")),
        # request directives
        ((b"max-age=100",), [(b"cache-control", b"no-cache")], 1, CachePolicy(), Refetch("request")),
        ((b"max-age=100", ETAG), [(b"cache-control", b"no-cache")], 1, CachePolicy(), Revalidate),
        ((b"max-age=100", ETAG), [(b"pragma", b"no-cache")], 1, CachePolicy(), Revalidate),
        ((b"max-age=100",), [(b"pragma", b"no-cache"), (b"cache-control", b"max-stale")], 1, CachePolicy(), Hit),
        ((b"max-age=100",), [(b"pragma", b"x-extension")], 1, CachePolicy(), Hit),
        ((b"max-age=100",), [(b"cache-control", b"no-cache")], 1, IGNORE, Hit),
        ((b"max-age=100",), [(b"cache-control", b"max-age=0")], 1, CachePolicy(), Refetch("request")),
        ((b"max-age=100",), [(b"cache-control", b"max-age=5")], 1, CachePolicy(), Hit),
        ((b"max-age=3600",), [(b"cache-control", b"max-age=600")], 900, CachePolicy(), Refetch("request")),
        ((b"max-age=1500",), [(b"cache-control", b"min-fresh=2000")], 0, CachePolicy(), Refetch("request")),
        ((b"max-age=1500",), [(b"cache-control", b"min-fresh=1000")], 0, CachePolicy(), Hit),
        ((b"max-age=1",), [(b"cache-control", b"max-stale=1000")], 10, CachePolicy(), StaleHit(None, 10.0, False)),
        ((b"max-age=1",), [(b"cache-control", b"max-stale")], 99999, CachePolicy(), StaleHit(None, 99999.0, False)),
        ((b"max-age=1",), [(b"cache-control", b"max-stale=5")], 10, CachePolicy(), Refetch("stale")),
        ((b"max-age=1, must-revalidate",), [(b"cache-control", b"max-stale")], 10, CachePolicy(), Refetch("stale")),
        ((b"max-age=1, proxy-revalidate",), [(b"cache-control", b"max-stale")], 10, CachePolicy(), Refetch("stale")),
        ((b"max-age=100",), [(b"cache-control", b"no-store")], 1, CachePolicy(), Pass("request")),
        ((b"max-age=100",), [(b"cache-control", b"only-if-cached")], 1, CachePolicy(), Hit),
        ((b"max-age=1", ETAG), [(b"cache-control", b"only-if-cached")], 10, CachePolicy(), OnlyIfCachedMiss()),
    ],
)
def test_lookup(entry_args, request_headers, later, opts, expected):
    entry = stored(*entry_args)
    decision = lookup(req(request_headers), [entry], NOW + later, opts)
    # The shell marks a request without DECIDING_FIELDS as plain: the shortcut must decide the same.
    shortcut = req(request_headers)
    shortcut.plain = DECIDING_FIELDS.isdisjoint(dict(request_headers))
    assert lookup(shortcut, [entry], NOW + later, opts) == decision
    if isinstance(expected, Refetch):
        assert decision == Revalidate(entry, [], expected.detail)
    elif isinstance(expected, type):
        assert type(decision) is expected and decision.entry is entry
    elif isinstance(expected, StaleHit):
        assert decision == StaleHit(entry, expected.age, expected.revalidate)
    else:
        assert decision == expected


def test_hit_carries_age_and_ttl():
    entry = stored(b"max-age=600", age=b"30")
    assert lookup(req(), [entry], NOW + 10) == Hit(entry, 40.0, 560.0)


def test_revalidate_headers_and_detail():
    entry = stored(b"max-age=1", (b"etag", b"abc"), (b"last-modified", LM))
    decision = lookup(req([(b"cache-control", b"no-cache")]), [entry], NOW)
    assert decision == Revalidate(entry, [(b"if-none-match", b'"abc"'), (b"if-modified-since", LM)], "request")
    assert lookup(req(), [entry], NOW + 5) == Revalidate(entry, decision.headers_to_add, "stale")


def test_invalidated_entry_is_stale_but_may_serve_within_swr():
    entry = stored(b"max-age=100, stale-while-revalidate=30")
    entry.invalidated = True
    assert lookup(req(), [entry], NOW + 1) == StaleHit(entry, 1.0, True)
    plain = stored(b"max-age=100")
    plain.invalidated = True
    assert lookup(req(), [plain], NOW + 1) == Revalidate(plain, [], "stale")


@pytest.mark.parametrize(
    "method, variants, request_headers, expected",
    [
        (b"POST", 1, [], Pass("method")),
        (b"PURGE", 1, [], Pass("method")),
        (b"GET", 0, [], Miss("uri-miss")),
        (b"GET", 1, [(b"foo", b"2")], Miss("vary-miss")),
        (b"GET", 0, [(b"cache-control", b"only-if-cached")], OnlyIfCachedMiss()),
        (b"HEAD", 1, [(b"foo", b"1")], Hit),
    ],
)
def test_lookup_misses(method, variants, request_headers, expected):
    entries = [stored(b"max-age=100", (b"vary", b"Foo"), request_headers=[(b"foo", b"1")])][:variants]
    decision = lookup(req(request_headers, method), entries, NOW + 1)
    assert type(decision) is expected if isinstance(expected, type) else decision == expected


def test_lookup_selects_matching_variant_most_recent_first():
    old = stored(b"max-age=100", (b"vary", b"Foo"), request_headers=[(b"foo", b"1")])
    other = stored(b"max-age=100", (b"vary", b"Foo"), request_headers=[(b"foo", b"2")])
    new = make_entry(
        req([(b"foo", b"1")]), 200,
        [(b"date", format_http_date(NOW + 5)), (b"cache-control", b"max-age=100"), (b"vary", b"Foo")],
        b"new", NOW + 5, NOW + 5,
    )
    decision = lookup(req([(b"foo", b"1")]), [old, other, new], NOW + 6)
    assert isinstance(decision, Hit) and decision.entry is new
    assert lookup(req([(b"foo", b"2")]), [old, other, new], NOW + 6).entry is other


@pytest.mark.parametrize(
    "cc, request_headers, later, opts, expected",
    [
        (b"max-age=1, stale-if-error=60", [], 30, CachePolicy(), True),
        (b"max-age=1, stale-if-error=60", [], 62, CachePolicy(), False),
        (b"max-age=1", [], 30, CachePolicy(), False),
        (b"max-age=1", [(b"cache-control", b"stale-if-error=100")], 30, CachePolicy(), True),
        (b"max-age=1", [(b"cache-control", b"stale-if-error=100")], 30, IGNORE, False),
        (b"max-age=1, must-revalidate, stale-if-error=60", [], 30, CachePolicy(), False),
        (b"max-age=1, s-maxage=1, stale-if-error=60", [], 30, CachePolicy(), False),
        (b"max-age=1, no-cache, stale-if-error=60", [], 30, CachePolicy(), False),
    ],
)
def test_can_serve_stale_on_error(cc, request_headers, later, opts, expected):
    assert can_serve_stale_on_error(stored(cc), NOW + later, req(request_headers), opts) is expected


@pytest.mark.parametrize(
    "status, expected",
    [(500, True), (502, True), (503, True), (504, True), (501, False), (404, False), (200, False)],
)
def test_counts_as_error(status, expected):
    assert counts_as_error(status) is expected


@pytest.mark.parametrize(
    "method, status, headers, expected",
    [
        (b"GET", 200, [], []),
        (b"HEAD", 200, [], []),
        (b"OPTIONS", 200, [], []),
        (b"POST", 200, [], ["http://example.com/d/a?q"]),
        (b"PUT", 204, [], ["http://example.com/d/a?q"]),
        (b"DELETE", 301, [], ["http://example.com/d/a?q"]),
        (b"M-SEARCH", 200, [], ["http://example.com/d/a?q"]),
        (b"POST", 500, [], []),
        (b"POST", 404, [], []),
        (
            b"POST", 201, [(b"location", b"loc"), (b"content-location", b"/cl")],
            ["http://example.com/d/a?q", "http://example.com/d/loc", "http://example.com/cl"],
        ),
        (b"POST", 201, [(b"location", b"https://other.example/x")], ["http://example.com/d/a?q"]),
        (b"POST", 201, [(b"content-location", b"a?q")], ["http://example.com/d/a?q"]),
    ],
)
def test_invalidation_keys(method, status, headers, expected):
    assert invalidation_keys(req(method=method, target=b"/d/a?q"), status, headers) == expected


def test_invalidation_keys_follow_query_mode():
    assert invalidation_keys(req(method=b"POST", target=b"/a?q"), 200, [], "ignore") == ["http://example.com/a"]


@pytest.mark.parametrize(
    "etag, expected",
    [(b'"a"', b'"a"'), (b'W/"a"', b'W/"a"'), (b"abc", b'"abc"')],
)
def test_quote_etag(etag, expected):
    assert quote_etag(etag) == expected


def test_bad_query_mode_is_refused():
    with pytest.raises(ValueError, match="query_mode"):
        CachePolicy(query_mode="shuffle")


PURE_MODULES = [
    "edgeproxy/http/dates.py", "edgeproxy/http/cachecontrol.py", "edgeproxy/cache/key.py",
    "edgeproxy/cache/freshness.py", "edgeproxy/cache/storability.py", "edgeproxy/cache/conditional.py",
    "edgeproxy/cache/ranges.py", "edgeproxy/cache/policy.py", "edgeproxy/cache/cachestatus.py",
]
FORBIDDEN = {"asyncio", "socket", "time", "h11"}


@pytest.mark.parametrize("path", PURE_MODULES)
def test_core_is_pure(path):
    root = pathlib.Path(__file__).resolve().parents[2]
    tree = ast.parse((root / path).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & FORBIDDEN


@pytest.mark.parametrize(
    ("method", "headers", "expected"),
    [
        (b"GET", [], Miss("uri-miss", store=True)),
        (b"GET", [(b"range", b"bytes=0-9")], Miss("uri-miss", store=True)),  # fetched whole, answered from it
        (b"HEAD", [], Miss("uri-miss", store=False)),
        (b"POST", [], Pass("method")),
    ],
)
def test_the_decision_is_the_whole_plan(method, headers, expected):
    assert lookup(req(headers, method=method), [], NOW) == expected


@pytest.mark.parametrize(("method", "store"), [(b"GET", True), (b"HEAD", False)])
def test_a_revalidation_stores_only_for_get(method, store):
    entry = stored(b"max-age=10", ETAG)
    decision = lookup(req(method=method), [entry], NOW + 60)
    assert isinstance(decision, Revalidate) and decision.store is store


SHIELD = CachePolicy(revalidate_interval=1.0)
LATER = NOW + 0.3  # the entry is 0.3 s old: max-age=0 forces validation


def forced_entry(cc: bytes = b"max-age=600", validated_ago: float | None = 0.5):
    entry = stored(cc, ETAG)
    if validated_ago is not None:
        entry.validated_at = LATER - validated_ago
    return entry


@pytest.mark.parametrize(
    ("request_headers", "entry_args", "opts", "expected"),
    [
        # a validation a client forced 0.5 s ago answers the next forced requests...
        ([(b"cache-control", b"no-cache")], {}, SHIELD, Validated),
        ([(b"cache-control", b"max-age=0")], {}, SHIELD, Validated),
        ([(b"pragma", b"no-cache")], {}, SHIELD, Validated),
        ([(b"cache-control", b"min-fresh=100000")], {}, SHIELD, Validated),
        # ...but not after the interval, not with the interval off, not without a forced validation before
        ([(b"cache-control", b"no-cache")], {"validated_ago": 1.5}, SHIELD, Revalidate),
        ([(b"cache-control", b"no-cache")], {}, CachePolicy(), Revalidate),
        ([(b"cache-control", b"no-cache")], {"validated_ago": None}, SHIELD, Revalidate),
        # an entry the origin says to validate every time is validated every time
        ([(b"cache-control", b"no-cache")], {"cc": b"no-cache"}, SHIELD, Revalidate),
        # sites that ignore request directives never get here: a plain hit
        ([(b"cache-control", b"no-cache")], {}, CachePolicy(ignore_request_cache_control=True), Hit),
    ],
)
def test_origin_shielding_answers_forced_requests_from_a_recent_forced_validation(request_headers, entry_args, opts,
                                                                                  expected):
    decision = lookup(req(request_headers), [forced_entry(**entry_args)], LATER, opts)
    assert type(decision) is expected


def test_a_forced_validation_that_finished_after_the_request_arrived_answers_it_with_the_interval_off():
    entry = forced_entry(validated_ago=0.2)  # finished 0.2 s ago; this request arrived 0.3 s ago and waited
    no_cache = req([(b"cache-control", b"no-cache")])
    assert type(lookup(no_cache, [entry], LATER, CachePolicy(), arrived=LATER - 0.3)) is Validated
    assert type(lookup(no_cache, [entry], LATER, CachePolicy(), arrived=LATER - 0.1)) is Revalidate
