"""Sites (edgeproxy/sites.py): Host normalization into the cache-key form, and which site answers a host."""

from __future__ import annotations

import pytest

from edgeproxy.config import SiteConfig
from edgeproxy.sites import SiteTable, normalize_host

NORMALIZED = [
    (b"example.com", "http", "example.com"),
    (b"Example.COM", "http", "example.com"),
    (b" example.com ", "http", "example.com"),
    (b"example.com.", "http", "example.com"),  # the root label
    (b"example.com.:80", "http", "example.com"),
    (b"example.com:80", "http", "example.com"),  # default port for the scheme
    (b"example.com:443", "https", "example.com"),
    (b"example.com:80", "https", "example.com:80"),  # not the default for https
    (b"example.com:443", "http", "example.com:443"),
    (b"example.com:8080", "http", "example.com:8080"),
    (b"example.com:0080", "http", "example.com"),  # one spelling per port
    (b"example.com:08080", "http", "example.com:8080"),
    (b"example.com:8080", "ws", "example.com:8080"),  # no default port known
    (b"my_host-1.internal", "http", "my_host-1.internal"),
    (b"localhost", "http", "localhost"),
    (b"192.0.2.1", "http", "192.0.2.1"),
    (b"192.0.2.1:8080", "http", "192.0.2.1:8080"),
    (b"[::1]", "http", "[::1]"),
    (b"[::1]:80", "http", "[::1]"),
    (b"[::1]:443", "https", "[::1]"),
    (b"[::1]:8080", "http", "[::1]:8080"),
    (b"[0:0::1]:8080", "http", "[::1]:8080"),  # compressed
    (b"[2001:DB8::A]", "http", "[2001:db8::a]"),
    (b"[::ffff:192.0.2.1]", "http", "[::ffff:c000:201]"),
]


@pytest.mark.parametrize("host, scheme, expected", NORMALIZED)
def test_normalize_host(host, scheme, expected):
    assert normalize_host(host, scheme) == expected


INVALID = [
    b"", b" ", b".", b"..", b"example..com", b".example.com", b"example.com..",
    b":80", b"example.com:", b"example.com:65536", b"example.com:123456", b"example.com:-1", b"example.com:http",
    b"a:1:80", b"a:1:2", b"::1", b"[::1", b"::1]", b"[zz]", b"[::1]x", b"[]", b"[::1]:", b"[1.2.3.4]",
    b"exa mple.com", b"example.com/x", b"example.com?q", b"example.com#f", b"user@example.com", b"a\\b",
    b"example.com,evil.com", b'exa"mple.com', b"<script>", b"exa\tmple.com", b"caf\xc3\xa9.example",
    b"\xff", b"a%2eb",
]


@pytest.mark.parametrize("host", INVALID)
@pytest.mark.parametrize("scheme", ["http", "https"])
def test_normalize_host_refuses(host, scheme):
    assert normalize_host(host, scheme) is None


def site(*hosts: str, origin: str = "http://127.0.0.1:9000") -> SiteConfig:
    return SiteConfig(hosts=hosts, origin=origin)


EXACT = site("www.example.com", "example.com:8080")
WILD = site("*.example.com")
DEEP = site("*.static.example.com")
PORTED = site("*.example.com:8443")
OTHER = site("*.example.org", "api.example.com")
ANY = site("*")
TABLE = SiteTable.build((WILD, EXACT, DEEP, PORTED, OTHER, ANY))

MATCHES = [
    ("www.example.com", EXACT),  # exact beats *.example.com
    ("www.example.com:8080", EXACT),  # an exact name without a port matches any port
    ("example.com:8080", EXACT),  # an exact name with its port
    ("api.example.com", OTHER),  # exact, though a later site
    ("a.example.com", WILD),
    ("a.b.example.com", WILD),
    ("a.static.example.com", DEEP),  # the longest suffix wins whatever the order of the sites
    ("static.example.com", WILD),
    ("a.example.com:8443", PORTED),  # a suffix with a port: only that port
    ("a.example.com:9999", WILD),
    ("x.example.org", OTHER),
    ("example.com", ANY),  # *.example.com needs a label before the suffix
    ("badexample.com", ANY),  # label boundary: not a *.example.com host
    ("example.org", ANY),
    ("[::1]:8080", ANY),
    ("example.com:80", ANY),
]


@pytest.mark.parametrize("host, expected", MATCHES)
def test_match_order(host, expected):
    assert TABLE.match(host) is expected


def test_no_default_no_match():
    table = SiteTable.build((EXACT, WILD))
    assert table.match("example.org") is None
    assert table.match("example.com") is None
    assert table.match("a.example.com") is WILD


def test_first_site_wins_a_pattern_listed_twice():
    first, second = site("a.example", "*"), site("a.example", "*", origin="http://127.0.0.1:9001")
    table = SiteTable.build((first, second))
    assert table.match("a.example") is first
    assert table.match("b.example") is first


def test_normalized_hosts_match():
    for raw, scheme, expected in [(b"WWW.Example.com.:80", "http", EXACT), (b"A.Static.Example.Com", "https", DEEP)]:
        host = normalize_host(raw, scheme)
        assert host is not None and TABLE.match(host) is expected
