import pytest

from edgeproxy.http.dates import format_http_date, parse_http_date

T = 784111777.0  # Sun, 06 Nov 1994 08:49:37 GMT


@pytest.mark.parametrize(
    "value, expected",
    [
        (b"Sun, 06 Nov 1994 08:49:37 GMT", T),  # IMF-fixdate
        (b"Sunday, 06-Nov-94 08:49:37 GMT", T),  # RFC 850
        (b"Sun Nov  6 08:49:37 1994", T),  # asctime
        (b"SUN, 06 NOV 1994 08:49:37 gmt", T),  # case
        (b"Sun 06 Nov 1994 08:49:37 GMT", T),  # missing comma
        (b"Sun, 06  Nov  1994 08:49:37 GMT", T),  # runs of spaces
        (b"Sun, 06-Nov-1994 08:49:37 GMT", T),  # dashes
        (b"Sun, 06 Nov 1994 08:49:37 UTC", T),
        (b"Sun, 06 Nov 1994 8:49:37 GMT", T),  # one-digit hour
        (b"Thursday, 18-Aug-50 02:01:18 GMT", 2544400878.0),  # two-digit year -> 2050
        (b"Tue, 19 Jan 2038 03:14:08 GMT", 2147483648.0),  # past 32 bits
        (b"Sun, 21 Nov 2286 04:46:39 GMT", 10000039599.0),
        (b"Sun, 06 Nov 1994 08:49:37 AEST", None),  # zone offset would be a guess
        (b"Sun, 06 Nov 1994 08.49.37 GMT", None),
        (b"Sun, 31 Nov 1994 08:49:37 GMT", None),  # no such day
        (b"0", None),
        (b"-1", None),
        (b"", None),
        (None, None),
    ],
)
def test_parse_http_date(value, expected):
    assert parse_http_date(value) == expected


@pytest.mark.parametrize(
    "ts, expected",
    [
        (T, b"Sun, 06 Nov 1994 08:49:37 GMT"),
        (T + 0.99, b"Sun, 06 Nov 1994 08:49:37 GMT"),
        (0.0, b"Thu, 01 Jan 1970 00:00:00 GMT"),
        (2147483648.0, b"Tue, 19 Jan 2038 03:14:08 GMT"),
    ],
)
def test_format_http_date(ts, expected):
    assert format_http_date(ts) == expected
    assert parse_http_date(expected) == float(int(ts))
