import pytest

from edgeproxy.http.cachecontrol import DELTA_MAX, delta_seconds, effective, field_names, parse, seconds


def cc(*lines: bytes):
    return [(b"cache-control", v) for v in lines]


@pytest.mark.parametrize(
    "lines, expected",
    [
        ((b"max-age=3600",), {"max-age": "3600"}),
        ((b"MaX-aGe=3600, No-StOrE",), {"max-age": "3600", "no-store": None}),
        ((b"foobar, max-age=3600",), {"foobar": None, "max-age": "3600"}),
        ((b'max-age="3600"',), {"max-age": "3600"}),  # quoted form is accepted
        ((b'extension="max-age=3600", max-age=1',), {"extension": "max-age=3600", "max-age": "1"}),
        ((b'max-age=1, extension="max-age=3600"',), {"max-age": "1", "extension": "max-age=3600"}),
        ((b"max-age=3600, max-age=1800",), {"max-age": "3600"}),  # first occurrence wins
        ((b"max-age=1800", b"max-age=1"), {"max-age": "1800"}),  # also across lines
        ((b"max-age =3600",), {}),  # no whitespace around "="
        ((b"max-age= 3600",), {}),
        ((b'no-cache="a, b", max-age=5',), {"no-cache": "a, b", "max-age": "5"}),
        ((b'x="a\\"b", y',), {"x": 'a"b', "y": None}),
        ((b'x="unterminated, max-age=3',), {}),
        ((b", , private,",), {"private": None}),
        ((b"",), {}),
    ],
)
def test_parse(lines, expected):
    assert parse(cc(*lines)) == expected


@pytest.mark.parametrize(
    "value, expected",
    [
        ("3600", 3600),
        ("003600", 3600),
        ("0", 0),
        ("2147483647", 2147483647),
        ("2147483649", DELTA_MAX),
        ("99999999999", DELTA_MAX),
        ("-3600", 0),  # invalid arguments make the response stale
        ("3600.0", 0),
        ("'3600'", 0),
        ("a3600", 0),
        ("3600a", 0),
        ("", 0),
        (None, 0),
        ("٣", 0),  # non-ASCII digit
    ],
)
def test_delta_seconds(value, expected):
    assert delta_seconds(value) == expected


def test_seconds_absent_is_none():
    assert seconds({}, "max-age") is None
    assert seconds({"max-age": None}, "max-age") == 0


@pytest.mark.parametrize(
    "value, expected",
    [
        (None, frozenset()),
        ("", frozenset()),
        ("a", {b"a"}),
        ("Set-Cookie, X-Foo ,", {b"set-cookie", b"x-foo"}),
    ],
)
def test_field_names(value, expected):
    assert field_names(value) == expected


@pytest.mark.parametrize(
    "headers, expected",
    [
        ([(b"cache-control", b"max-age=1")], ({"max-age": "1"}, False)),
        (
            [(b"cache-control", b"max-age=1"), (b"cdn-cache-control", b"max-age=600")],
            ({"max-age": "600"}, True),
        ),
        (
            [(b"cdn-cache-control", b"no-store"), (b"surrogate-control", b"max-age=60")],
            ({"no-store": None}, True),
        ),
        (
            [(b"cache-control", b"private"), (b"surrogate-control", b"max-age=30+60")],
            ({"max-age": "30", "stale-if-error": "60"}, True),
        ),
        (
            [(b"cache-control", b"max-age=5"), (b"surrogate-control", b'content="ESI/1.0"')],
            ({"max-age": "5"}, False),
        ),
        ([(b"surrogate-control", b"no-store-remote, max-age=9")], ({"no-store": None, "max-age": "9"}, True)),
        # an empty or invalid targeted field falls back to Cache-Control (RFC 9213 §2.1)
        ([(b"cdn-cache-control", b"=bad"), (b"cache-control", b"max-age=5")], ({"max-age": "5"}, False)),
    ],
)
def test_effective(headers, expected):
    assert effective(headers) == expected
