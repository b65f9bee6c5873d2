import pytest

from edgeproxy.cache.freshness import (
    AGE_INVALID,
    age_value,
    corrected_initial_age,
    current_age,
    freshness_lifetime,
    staleness,
    ttl,
)
from edgeproxy.cache.key import CacheRequest
from edgeproxy.cache.policy import CachePolicy
from edgeproxy.cache.storability import make_entry
from edgeproxy.http.cachecontrol import effective
from edgeproxy.http.dates import format_http_date

NOW = 1_700_000_000.0


def d(offset: float) -> bytes:
    return format_http_date(NOW + offset)


@pytest.mark.parametrize(
    "ages, expected",
    [
        ([], 0.0),
        ([b"30"], 30.0),
        ([b"0"], 0.0),
        ([b"99999999999"], 2147483648.0),
        ([b"abc"], AGE_INVALID),
        ([b"-7200"], AGE_INVALID),
        ([b"7200.0"], AGE_INVALID),
        ([b"7200,0"], AGE_INVALID),
        ([b"0,7200"], AGE_INVALID),
        ([b"0, 0"], AGE_INVALID),
        ([b"7200", b"0"], AGE_INVALID),
        ([b"0", b"0"], AGE_INVALID),
        ([b"7200;foo=bar"], AGE_INVALID),
    ],
)
def test_age_value(ages, expected):
    assert age_value([(b"age", a) for a in ages]) == expected


@pytest.mark.parametrize(
    "status, headers, expected",
    [
        (200, [], 0.0),
        (200, [(b"cache-control", b"max-age=3600")], 3600.0),
        (200, [(b"cache-control", b"max-age=0"), (b"expires", d(3600))], 0.0),
        (200, [(b"cache-control", b"max-age=3600"), (b"expires", d(-7200))], 3600.0),
        (200, [(b"cache-control", b"max-age=3600"), (b"expires", b"0")], 3600.0),
        (200, [(b"cache-control", b"max-age=-3600")], 0.0),
        (200, [(b"cache-control", b"max-age=3600, s-maxage=1")], 1.0),  # shared cache: s-maxage first
        (200, [(b"cache-control", b"max-age=1, s-maxage=3600"), (b"expires", d(-10))], 3600.0),
        (200, [(b"cache-control", b"max-age=99999999999")], 2147483648.0),
        (200, [(b"expires", d(2592000))], 2592000.0),
        (200, [(b"expires", d(-2592000))], 0.0),
        (200, [(b"expires", b"0")], 0.0),  # invalid Expires is in the past
        (200, [(b"expires", d(300)), (b"date", d(400))], 0.0),
        (200, [(b"last-modified", d(-86400))], 8640.0),  # heuristic: 10%
        (200, [(b"last-modified", d(-10 * 86400 * 10))], 86400.0),  # capped
        (404, [(b"last-modified", d(-86400))], 8640.0),
        (201, [(b"last-modified", d(-86400))], 0.0),  # not heuristically cacheable
        (599, [(b"last-modified", d(-86400)), (b"cache-control", b"public")], 8640.0),
        (200, [(b"last-modified", d(3600))], 0.0),  # modified in the future
        # targeted fields replace Cache-Control and Expires
        (200, [(b"cache-control", b"max-age=5"), (b"cdn-cache-control", b"max-age=600")], 600.0),
        (200, [(b"expires", d(3600)), (b"cdn-cache-control", b"must-revalidate")], 0.0),
        (200, [(b"cache-control", b"max-age=5"), (b"surrogate-control", b"max-age=60")], 60.0),
    ],
)
def test_freshness_lifetime(status, headers, expected):
    headers = [(b"date", d(0)), *headers] if not any(k == b"date" for k, _ in headers) else headers
    cc, targeted = effective(headers)
    date = NOW if (b"date", d(0)) in headers else NOW + 400
    assert freshness_lifetime(status, headers, cc, targeted, date, 0.1, 86400.0) == expected


def test_max_ttl_caps():
    headers = [(b"cache-control", b"max-age=3600")]
    assert freshness_lifetime(200, headers, *effective(headers), NOW, 0.1, 86400.0, max_ttl=60.0) == 60.0


@pytest.mark.parametrize(
    "headers, request_time, response_time, expected",
    [
        ([(b"date", d(0))], NOW, NOW, 0.0),
        ([(b"date", d(-7200))], NOW, NOW, 7200.0),  # apparent age
        ([(b"date", d(0)), (b"age", b"30")], NOW - 2, NOW, 32.0),  # age + response delay
        ([(b"date", d(10)), (b"age", b"15")], NOW, NOW, 15.0),  # fast Date: apparent age 0
        ([(b"date", d(0)), (b"age", b"abc")], NOW, NOW, AGE_INVALID),
    ],
)
def test_corrected_initial_age(headers, request_time, response_time, expected):
    from edgeproxy.cache.freshness import date_value

    date = date_value(headers, response_time)
    assert corrected_initial_age(headers, date, request_time, response_time) == expected


def entry(headers, status=200, response_time=NOW, opts=CachePolicy()):  # noqa: B008 (frozen)
    req = CacheRequest(b"GET", "http", "example.com", b"/", [])
    return make_entry(req, status, headers, b"body", response_time, response_time, opts)


@pytest.mark.parametrize(
    "headers, later, fresh",
    [
        ([(b"cache-control", b"max-age=3600")], 3599, True),
        ([(b"cache-control", b"max-age=3600")], 3600, False),
        ([(b"cache-control", b"max-age=3600"), (b"date", d(0)), (b"age", b"7200")], 0, False),
        ([(b"cache-control", b"max-age=3600"), (b"date", d(-7200))], 0, False),
        ([(b"date", d(-10)), (b"expires", d(10)), (b"age", b"25")], 0, False),
        ([(b"date", d(10)), (b"expires", d(20)), (b"age", b"15")], 0, False),
        ([(b"date", b"foo"), (b"expires", d(10))], 5, True),  # invalid Date: response time used
        ([(b"cache-control", b"max-age=3600"), (b"date", d(0)), (b"age", b"0,7200")], 0, False),
    ],
)
def test_fresh_while_ttl_is_positive(headers, later, fresh):
    assert (ttl(entry(headers), NOW + later) > 0.0) is fresh


def test_age_ttl_staleness():
    e = entry([(b"cache-control", b"max-age=600"), (b"date", d(-10)), (b"age", b"30")])
    assert current_age(e, NOW + 5) == 35.0
    assert ttl(e, NOW + 5) == 565.0
    assert staleness(e, NOW + 5) == 0.0
    assert staleness(e, NOW + 600) == 30.0
