import pytest

from edgeproxy.cache.entry import ENTRY_OVERHEAD
from edgeproxy.cache.key import CacheRequest
from edgeproxy.cache.policy import CachePolicy
from edgeproxy.cache.storability import freshen, make_entry, storable, validates
from edgeproxy.http.dates import format_http_date
from edgeproxy.http.headers import get, get_all
from edgeproxy.http.wire import serialize_head

NOW = 1_700_000_000.0
LM = format_http_date(NOW - 86400)
COOKIE_OPTS = CachePolicy(store_set_cookie=True)
P = CachePolicy()


def req(headers=(), method=b"GET", target=b"/a"):
    return CacheRequest(method, "http", "example.com", target, list(headers))


MAX_AGE = (b"cache-control", b"max-age=3600")


@pytest.mark.parametrize(
    "request_headers, method, status, headers, opts, expected",
    [
        ((), b"GET", 200, [MAX_AGE], P, None),
        ((), b"HEAD", 200, [MAX_AGE], P, "method"),
        ((), b"POST", 200, [MAX_AGE], P, "method"),
        ((), b"GET", 206, [MAX_AGE], P, "partial"),
        ((), b"GET", 304, [MAX_AGE], P, "status"),
        ((), b"GET", 101, [MAX_AGE], P, "status"),
        ((), b"GET", 200, [], P, "no-validator-or-lifetime"),
        ((), b"GET", 200, [(b"last-modified", LM)], P, None),  # heuristic
        ((), b"GET", 200, [(b"etag", b'"x"')], P, None),  # stored to be validated
        ((), b"GET", 201, [(b"last-modified", LM)], P, "status"),
        ((), b"GET", 503, [(b"last-modified", LM)], P, "status"),
        ((), b"GET", 599, [(b"last-modified", LM), (b"cache-control", b"public")], P, None),
        ((), b"GET", 599, [(b"expires", b"0")], P, None),  # explicit (if expired) freshness
        ((), b"GET", 500, [MAX_AGE], P, None),
        ((), b"GET", 200, [(b"cache-control", b"no-store")], P, "no-store"),
        ((), b"GET", 200, [(b"cache-control", b"max-age=10000, No-StOrE")], P, "no-store"),
        ((), b"GET", 200, [(b"cache-control", b"no-store, must-understand, max-age=60")], P, None),
        ((), b"GET", 599, [(b"cache-control", b"max-age=3600, must-understand")], P, "must-understand"),
        ([(b"cache-control", b"no-store")], b"GET", 200, [MAX_AGE], P, "request-no-store"),
        (
            [(b"cache-control", b"no-store")], b"GET", 200, [MAX_AGE],
            CachePolicy(ignore_request_cache_control=True), None,
        ),
        ((), b"GET", 200, [(b"cache-control", b"private, max-age=3600")], P, "private"),
        ((), b"GET", 200, [(b"cache-control", b'private="set-cookie", max-age=3600')], P, None),
        ((), b"GET", 200, [(b"cache-control", b"no-cache")], P, "no-cache"),
        ((), b"GET", 200, [(b"cache-control", b"no-cache"), (b"etag", b'"x"')], P, None),
        ([(b"authorization", b"FOO")], b"GET", 200, [(b"expires", b"0")], P, "authorization"),
        ([(b"authorization", b"FOO")], b"GET", 200, [(b"cache-control", b"max-age=1, public")], P, None),
        ([(b"authorization", b"FOO")], b"GET", 200, [(b"cache-control", b"s-maxage=1")], P, None),
        (
            [(b"authorization", b"FOO")], b"GET", 200, [(b"cache-control", b"max-age=1, must-revalidate")],
            CachePolicy(), None,
        ),
        ((), b"GET", 200, [MAX_AGE, (b"set-cookie", b"a=b")], P, "set-cookie"),
        ((), b"GET", 200, [MAX_AGE, (b"set-cookie", b"a=b")], COOKIE_OPTS, None),
        ((), b"GET", 200, [MAX_AGE, (b"vary", b"*")], P, "vary-star"),
        ((), b"GET", 200, [MAX_AGE, (b"vary", b"foo, *")], P, "vary-star"),
        # targeted fields rule for this cache
        ((), b"GET", 200, [MAX_AGE, (b"cdn-cache-control", b"no-store")], P, "no-store"),
        ((), b"GET", 200, [MAX_AGE, (b"surrogate-control", b"no-store")], P, "no-store"),
        ((), b"GET", 200, [(b"cache-control", b"private"), (b"cdn-cache-control", b"max-age=60")], P, None),
        ((), b"GET", 200, [(b"cache-control", b"no-store"), (b"surrogate-control", b"max-age=60")], P, None),
    ],
)
def test_storable(request_headers, method, status, headers, opts, expected):
    assert storable(req(request_headers, method), status, headers, opts) == expected


def test_make_entry_fields():
    headers = [
        (b"date", format_http_date(NOW - 10)),
        (b"cache-control", b'max-age=600, stale-while-revalidate=30, stale-if-error=300, no-cache="x-a"'),
        (b"cdn-cache-control", b"max-age=900, stale-while-revalidate=5"),
        (b"connection", b"x-b"),
        (b"x-a", b"1"),
        (b"x-b", b"2"),
        (b"x-c", b"3"),
        (b"age", b"20"),
        (b"etag", b'"v1"'),
        (b"last-modified", LM),
        (b"set-cookie", b"s=1"),
        (b"surrogate-key", b"k1  k2"),
        (b"cache-tag", b"t1, t2"),
        (b"vary", b"Accept-Encoding"),
        (b"transfer-encoding", b"chunked"),
    ]
    r = req([(b"accept-encoding", b"gzip, br"), (b"origin", b"https://a.example")], target=b"/a?x")
    e = make_entry(r, 200, headers, b"hello", NOW - 1, NOW, COOKIE_OPTS, extra_vary=(b":cors",))
    names = [k for k, _ in e.headers]
    assert names == [b"date", b"cache-control", b"x-c", b"etag", b"last-modified", b"vary"]
    assert e.head == serialize_head(200, e.headers)
    assert (e.primary_key, e.host, e.path) == ("http://example.com/a?x", "example.com", "/a?x")
    assert e.vary == (b"accept-encoding", b":cors") and e.variant_key == (b"br", b"1")
    assert e.freshness_lifetime == 900.0  # CDN-Cache-Control wins
    assert (e.stale_while_revalidate, e.stale_if_error) == (5.0, 0.0)
    assert e.corrected_initial_age == 21.0  # Age 20 + 1s response delay beats apparent age 10
    assert (e.etag, e.last_modified) == (b'"v1"', LM)
    assert e.tags == {"k1", "k2", "t1", "t2"}
    assert not e.must_revalidate and not e.no_cache
    assert e.size == len(e.head) + 5 + ENTRY_OVERHEAD


@pytest.mark.parametrize(
    "headers, must_revalidate, no_cache",
    [
        ([(b"cache-control", b"max-age=1, must-revalidate")], True, False),
        ([(b"cache-control", b"max-age=1, proxy-revalidate")], True, False),
        ([(b"cache-control", b"max-age=1, s-maxage=2")], True, False),
        ([(b"cache-control", b"max-age=1, no-cache"), (b"etag", b"x")], False, True),
        ([(b"cache-control", b'max-age=1, no-cache="a"')], False, False),
    ],
)
def test_make_entry_flags(headers, must_revalidate, no_cache):
    e = make_entry(req(), 200, headers, b"", NOW, NOW)
    assert (e.must_revalidate, e.no_cache) == (must_revalidate, no_cache)


@pytest.mark.parametrize("date", [None, b"foo"])
def test_make_entry_adds_date(date):
    headers = [MAX_AGE] + ([(b"date", date)] if date else [])
    e = make_entry(req(), 200, headers, b"", NOW, NOW)
    assert get_all(e.headers, b"date") == [format_http_date(NOW)]
    assert e.date_value == NOW


def test_make_entry_keeps_origin_date():
    e = make_entry(req(), 200, [(b"date", format_http_date(NOW - 5)), MAX_AGE], b"", NOW, NOW)
    assert get(e.headers, b"date") == format_http_date(NOW - 5)


@pytest.mark.parametrize(
    "stored, reply, expected",
    [
        ([(b"etag", b'"a"')], [(b"etag", b'"a"')], True),
        ([(b"etag", b'"a"')], [(b"etag", b'"b"')], False),
        ([(b"etag", b'W/"a"')], [(b"etag", b'"a"')], False),  # strong validator: strong comparison
        ([(b"etag", b'W/"a"')], [(b"etag", b'W/"a"')], True),
        ([(b"etag", b'"a"')], [(b"etag", b'W/"a"')], True),  # weak validator: weak comparison
        ([], [(b"etag", b'"a"')], False),
        ([(b"last-modified", LM)], [(b"last-modified", LM)], True),
        ([(b"last-modified", LM)], [(b"last-modified", format_http_date(NOW))], False),
        ([], [(b"last-modified", LM)], False),
        ([(b"etag", b'"a"')], [], True),  # a bare 304 answers our conditional
    ],
)
def test_validates(stored, reply, expected):
    e = make_entry(req(), 200, [MAX_AGE, *stored], b"", NOW, NOW)
    assert validates(e, reply) is expected


def test_freshen_updates_fields_and_freshness():
    stored = [
        (b"date", format_http_date(NOW)),
        (b"cache-control", b"max-age=2"),
        (b"etag", b'"a"'),
        (b"content-length", b"5"),
        (b"content-encoding", b"gzip"),
        (b"x-test", b"old"),
        (b"x-keep", b"1"),
    ]
    e = make_entry(req(), 200, stored, b"hello", NOW, NOW)
    e.invalidated = True
    later = NOW + 100
    reply = [
        (b"date", format_http_date(later)),
        (b"cache-control", b"max-age=3600"),
        (b"content-length", b"10"),
        (b"content-encoding", b"br"),
        (b"x-test", b"new"),
        (b"set-cookie", b"s=1"),
        (b"surrogate-key", b"k9"),
        (b"age", b"5"),
    ]
    f = freshen(e, reply, later - 1, later)
    assert get(f.headers, b"x-test") == b"new" and get(f.headers, b"x-keep") == b"1"
    assert get(f.headers, b"content-length") == b"5" and get(f.headers, b"content-encoding") == b"gzip"
    assert get(f.headers, b"set-cookie") is None and get(f.headers, b"age") is None
    assert f.freshness_lifetime == 3600.0 and f.corrected_initial_age == 6.0
    assert f.body == b"hello" and not f.invalidated and f.tags == {"k9"}
    assert f.head == serialize_head(200, f.headers)
    assert (f.primary_key, f.variant_key, f.vary) == (e.primary_key, e.variant_key, e.vary)


def test_freshen_dates_a_304_without_date():
    e = make_entry(req(), 200, [(b"date", format_http_date(NOW)), (b"cache-control", b"max-age=60")], b"", NOW, NOW)
    f = freshen(e, [], NOW + 500, NOW + 500)
    assert get(f.headers, b"date") == format_http_date(NOW + 500)
    assert f.freshness_lifetime == 60.0 and f.corrected_initial_age == 0.0
