"""The configuration tree (edgeproxy/config.py): every key's parser, errors naming the dotted key, cross-key checks,
loading files, what a reload keeps, and the effective config as plain data. Pure: no sockets, no clock."""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from edgeproxy.config import (
    FIELD_NAMES,
    GIB,
    KIB,
    MIB,
    RESTART_KEYS,
    SECTIONS,
    SITE_KEYS,
    Config,
    ConfigError,
    SiteConfig,
    config_from_dict,
    control_socket_in,
    keep_restart_keys,
    load_config,
    parse_address,
    parse_duration,
    parse_size,
    redact_url,
    restart_keys_changed,
    to_dict,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "scripts" / "edgeproxy.toml.example"
SITE = {"origin": "http://127.0.0.1:9000"}
SPECS: dict[str, dict[str, Any]] = {**{name: spec for name, (_, spec) in SECTIONS.items()}, "site": SITE_KEYS}
CLASSES: dict[str, type] = {**{name: cls for name, (cls, _) in SECTIONS.items()}, "site": SiteConfig}


def error(data: dict[str, Any], file: str = "<config>") -> ConfigError:
    with pytest.raises(ConfigError) as info:
        config_from_dict(data, file)
    return info.value


# ---- value parsers ----

@pytest.mark.parametrize(
    "raw, expected",
    [
        (0, 0), (1024, 1024), ("512", 512), ("512b", 512), ("256MiB", 256 * MIB), ("256mib", 256 * MIB),
        ("1GB", 1000**3), ("1GiB", GIB), ("1g", GIB), ("8k", 8 * KIB), ("8kb", 8000), ("8KiB", 8 * KIB),
        ("1.5KiB", 1536), (" 3 MB ", 3 * 1000**2), ("2m", 2 * MIB),
    ],
)
def test_parse_size(raw, expected):
    assert parse_size(raw) == expected


@pytest.mark.parametrize("raw", [-1, 1.5, True, False, None, "", "MiB", "-1KiB", "1 TiB", "1e3", "ten", [1]])
def test_parse_size_refuses(raw):
    with pytest.raises(ValueError, match="expected a size"):
        parse_size(raw)


@pytest.mark.parametrize(
    "raw, expected",
    [
        (0, 0.0), (30, 30.0), (0.5, 0.5), ("30", 30.0), ("30s", 30.0), ("250ms", 0.25), ("5m", 300.0),
        ("5min", 300.0), ("1.5m", 90.0), ("2h", 7200.0), ("1d", 86400.0), (" 10 s ", 10.0),
    ],
)
def test_parse_duration(raw, expected):
    assert parse_duration(raw) == expected


@pytest.mark.parametrize("raw", [-1, -0.5, True, None, "", "s", "5M", "5 minutes", "1h30m", "-5s", "5us", [5],
                                 float("nan")])
def test_parse_duration_refuses(raw):
    with pytest.raises(ValueError, match="expected a duration"):
        parse_duration(raw)


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("127.0.0.1:8080", ("127.0.0.1", 8080)), ("localhost:80", ("localhost", 80)), (":8080", ("0.0.0.0", 8080)),
        ("0.0.0.0:0", ("0.0.0.0", 0)), ("[::1]:8080", ("::1", 8080)), ("[::]:443", ("::", 443)),
        ("[fe80::1%eth0]:80", ("fe80::1%eth0", 80)), ("host:65535", ("host", 65535)),
    ],
)
def test_parse_address(raw, expected):
    assert parse_address(raw) == expected


@pytest.mark.parametrize("raw", ["127.0.0.1", "127.0.0.1:", "host:65536", "host:http", "host:-1", "[::1]", "::1:8080",
                                 "[::1:8080", "::1]:8080", "[]:80", "[host]:80", 8080, None, ["127.0.0.1:80"]])
def test_parse_address_refuses(raw):
    with pytest.raises(ValueError):
        parse_address(raw)


# ---- every key: a good value parsed to its typed form, a bad value refused naming the dotted key ----

CLUSTER = {"peers": ["a:1", "b:1"], "self": "a:1", "secret_file": "/k"}
TLS_SERVER = {"server": {"tls_listen": ["a:1"], "tls_cert": "/cert", "tls_key": "/key"}}

GOOD = [
    ("server", "listen", ["127.0.0.1:80", "[::1]:8080"], (("127.0.0.1", 80), ("::1", 8080))),
    ("server", "tls_listen", [":8443"], (("0.0.0.0", 8443),)),
    ("server", "tls_cert", "/etc/edgeproxy/cert.pem", "/etc/edgeproxy/cert.pem"),
    ("server", "tls_key", "", None),
    ("server", "workers", 4, 4),
    ("server", "workers", "auto", os.cpu_count() or 1),
    ("server", "parser", "h11", "h11"),
    ("server", "name", "edge-a", "edge-a"),
    ("server", "control_socket", "/run/edgeproxy/control.sock", "/run/edgeproxy/control.sock"),
    ("server", "control_group", "", None),
    ("server", "control_uids", [0, 1000], (0, 1000)),
    ("server", "control_gids", [], ()),
    ("server", "drain_timeout", "30s", 30.0),
    ("server", "keepalive_timeout", 75, 75.0),
    ("server", "header_timeout", "250ms", 0.25),
    ("server", "body_timeout", "1m", 60.0),
    ("server", "min_body_rate", "1KiB", KIB),
    ("server", "max_uri", "8KiB", 8 * KIB),
    ("server", "max_header_bytes", 32768, 32768),
    ("server", "max_headers", 100, 100),
    ("server", "max_body", "100MiB", 100 * MIB),
    ("server", "max_connections", 20000, 20000),
    ("server", "max_connections_per_ip", 1, 1),
    ("server", "head_memo", False, False),
    ("server", "fast_lane", False, False),
    ("server", "request_buffer", "1MiB", MIB),
    ("origin", "connect_timeout", "5s", 5.0),
    ("origin", "read_timeout", 30, 30.0),
    ("origin", "idle_timeout", "4s", 4.0),
    ("origin", "max_connections", 1024, 1024),
    ("origin", "max_per_origin", 256, 256),
    ("origin", "pool_wait_timeout", "10s", 10.0),
    ("origin", "parser", "httptools", "httptools"),
    ("cache", "size", "1GB", 1000**3),
    ("cache", "max_object_size", "8MiB", 8 * MIB),
    ("cache", "max_variants", 32, 32),
    ("cache", "heuristic_max", "1d", 86400.0),
    ("cache", "max_ttl", 0, 0.0),
    ("cache", "collapse", True, True),
    ("cache", "collapse_timeout", "10s", 10.0),
    ("cache", "hit_for_miss_ttl", "30s", 30.0),
    ("cache", "revalidate_interval", "250ms", 0.25),
    ("cache", "shared", True, True),
    ("cache", "path", "/var/cache/edgeproxy", "/var/cache/edgeproxy"),
    ("cache", "hot_size", "8MiB", 8 * MIB),
    ("cache", "regex_purge_budget", "250ms", 0.25),
    ("log", "access", True, "-"),
    ("log", "access", "-", "-"),
    ("log", "access", False, None),
    ("log", "access", "/var/log/edgeproxy/access.log", "/var/log/edgeproxy/access.log"),
    ("log", "format", "json", "json"),
    ("log", "level", "debug", "debug"),
    ("metrics", "listen", "127.0.0.1:9145", ("127.0.0.1", 9145)),
    ("fleet", "redis", "redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
    ("fleet", "redis", "rediss://:secret@cache.internal:6380", "rediss://:secret@cache.internal:6380"),
    ("fleet", "redis", "unix:///run/redis/redis.sock", "unix:///run/redis/redis.sock"),
    ("fleet", "stream", "edge:purge", "edge:purge"),
    ("fleet", "node", "edge-1.par", "edge-1.par"),
    ("fleet", "node", "", None),
    ("fleet", "password_file", "/etc/edgeproxy/redis.pass", "/etc/edgeproxy/redis.pass"),
    ("fleet", "maxlen", 100000, 100000),
    ("fleet", "wait_timeout", "5s", 5.0),
    ("fleet", "connect_timeout", "500ms", 0.5),
    ("cluster", "peers", ["10.0.0.1:8080", "Edge-2.internal:8080", "[fd00::3]:8080"],
     ("10.0.0.1:8080", "edge-2.internal:8080", "[fd00::3]:8080")),
    ("cluster", "self", "10.0.0.1:8080", "10.0.0.1:8080"),
    ("cluster", "secret_file", "/etc/edgeproxy/cluster.key", "/etc/edgeproxy/cluster.key"),
    ("cluster", "connect_timeout", "250ms", 0.25),
    ("cluster", "tls", True, True),
    ("cluster", "ca_file", "/etc/edgeproxy/cluster-ca.pem", "/etc/edgeproxy/cluster-ca.pem"),
    ("cluster", "cert_file", "/etc/edgeproxy/node.pem", "/etc/edgeproxy/node.pem"),
    ("cluster", "key_file", "", None),
    ("site", "hosts", ["Example.COM", "*.example.com", "*", "a.example:8080"],
     ("example.com", "*.example.com", "*", "a.example:8080")),
    ("site", "origin", "https://o.example:8443/", "https://o.example:8443"),
    ("site", "host_header", "origin", "origin"),
    ("site", "x_forwarded", False, False),
    ("site", "ca_file", "", None),
    ("site", "tls_verify", False, False),
    ("site", "query", "sort", "sort"),
    ("site", "ignore_request_cache_control", True, True),
    ("site", "store_set_cookie", True, True),
    ("site", "allow_request_headers", ["X-Forwarded-Host"], ("x-forwarded-host",)),
]


@pytest.mark.parametrize("section, key, raw, expected", GOOD, ids=[f"{s}.{k}={r!r}" for s, k, r, _ in GOOD])
def test_key_parses(section, key, raw, expected):
    assert SPECS[section][key](raw) == expected


def test_every_key_has_a_good_value_and_a_field():
    assert {(s, k) for s, k, _, _ in GOOD} == {(s, k) for s, spec in SPECS.items() for k in spec}
    for section, spec in SPECS.items():
        names = {f.name for f in fields(CLASSES[section])}
        assert {FIELD_NAMES.get(f"{section}.{k}", k) for k in spec} <= names, section


def test_good_values_land_on_the_tree():
    config = config_from_dict({"server": {"workers": 2, "header_timeout": "250ms"}, "cache": {"size": "1GB"},
                               "site": [{**SITE, "query": "sort"}, {"origin": "https://b.example", "hosts": ["B"]}]})
    assert (config.server.workers, config.server.header_timeout, config.cache.size) == (2, 0.25, 1000**3)
    assert [s.query for s in config.sites] == ["sort", "keep"]
    assert config.sites[1].hosts == ("b",)
    assert config.file == "<config>"


BAD = [
    ({"server": {"listen": "127.0.0.1:80"}}, "server.listen", "expected a list"),
    ({"server": {"listen": ["nohost"]}}, "server.listen", "item 0"),
    ({"server": {"tls_cert": 5}}, "server.tls_cert", "expected a string"),
    ({"server": {"workers": 0}}, "server.workers", "from 1 to 256"),
    ({"server": {"workers": 257}}, "server.workers", "from 1 to 256"),
    ({"server": {"workers": True}}, "server.workers", "integer"),
    ({"server": {"workers": "many"}}, "server.workers", "integer"),
    ({"server": {"parser": "picohttp"}}, "server.parser", "'h11', 'httptools'"),
    ({"origin": {"parser": "llhttp"}}, "origin.parser", "'h11', 'httptools'"),
    ({"server": {"name": 5}}, "server.name", "expected a string"),
    ({"server": {"control_uids": [-1]}}, "server.control_uids", "item 0"),
    ({"server": {"drain_timeout": "5 minutes"}}, "server.drain_timeout", "duration"),
    ({"cache": {"regex_purge_budget": "1m"}}, "cache.regex_purge_budget", "up to 30s"),
    ({"server": {"header_timeout": True}}, "server.header_timeout", "duration"),
    ({"server": {"max_body": "lots"}}, "server.max_body", "size"),
    ({"server": {"max_headers": 0}}, "server.max_headers", "integer"),
    ({"server": {"max_pipeline": 16}}, "server.max_pipeline", "removed: it never had an effect"),
    ({"server": {"head_memo": "yes"}}, "server.head_memo", "true or false"),
    ({"origin": {"connect_timeout": "1h30m"}}, "origin.connect_timeout", "duration"),
    ({"origin": {"max_per_origin": 0}}, "origin.max_per_origin", "integer"),
    ({"cache": {"size": -1}}, "cache.size", "size"),
    ({"cache": {"max_variants": 0}}, "cache.max_variants", "integer"),
    ({"cache": {"collapse": 1}}, "cache.collapse", "true or false"),
    ({"cache": {"shared": "auto"}}, "cache.shared", "true or false"),
    ({"cache": {"hot_size": "64MiB", "size": "128MiB"}, "server": {"workers": 2}}, "cache.hot_size",
     "leave nothing of cache.size"),
    ({"log": {"access": 5}}, "log.access", "expected a string"),
    ({"log": {"format": "xml"}}, "log.format", "'combined', 'json'"),
    ({"log": {"level": "trace"}}, "log.level", "'debug'"),
    ({"metrics": {"listen": ["127.0.0.1:9145"]}}, "metrics.listen", "HOST:PORT"),
    ({"site": [{**SITE, "hosts": "x"}]}, "site[0].hosts", "expected a list"),
    ({"site": [{**SITE, "hosts": ["bad host"]}]}, "site[0].hosts", "item 0"),
    ({"site": [{**SITE, "hosts": ["a.*.b"]}]}, "site[0].hosts", "*.suffix"),
    ({"site": [{"origin": "ftp://a"}]}, "site[0].origin", "http://HOST"),
    ({"site": [{"origin": "http://a/path"}]}, "site[0].origin", "no path"),
    ({"site": [{"origin": "http://"}]}, "site[0].origin", "http://HOST"),
    ({"site": [SITE, {**SITE, "query": "drop"}]}, "site[1].query", "'keep', 'sort', 'ignore'"),
    ({"site": [{**SITE, "host_header": "rewrite"}]}, "site[0].host_header", "'forward', 'origin'"),
    ({"site": [{**SITE, "x_forwarded": "no"}]}, "site[0].x_forwarded", "true or false"),
    ({"site": [{**SITE, "allow_request_headers": ["Bad Name"]}]}, "site[0].allow_request_headers",
     "not a header field name"),
    ({"fleet": {"redis": "http://127.0.0.1:6379"}}, "fleet.redis", "expected redis://HOST"),
    ({"fleet": {"redis": "redis://h:port/0"}}, "fleet.redis", "expected redis://HOST"),
    ({"fleet": {"redis": "redis://h/zero"}}, "fleet.redis", "expected redis://HOST"),
    ({"fleet": {"redis": "unix://relative.sock"}}, "fleet.redis", "absolute"),
    ({"fleet": {"stream": "has space"}}, "fleet.stream", "Redis key name"),
    ({"fleet": {"node": "-dash"}}, "fleet.node", "node name"),
    ({"fleet": {"maxlen": 10}}, "fleet.maxlen", "from 100"),
    ({"fleet": {"reddis": "redis://h"}}, "fleet.reddis", "unknown key"),
    ({"cluster": {"peers": ["a:1"], "self": "a:1", "secret_file": "/k"}}, "cluster.peers", "at least two"),
    ({"cluster": {"peers": ["a:1", "A:1"], "self": "a:1", "secret_file": "/k"}}, "cluster.peers", "twice"),
    ({"cluster": {"peers": ["a:1", "b:1"], "self": "c:1", "secret_file": "/k"}}, "cluster.self", "one of"),
    ({"cluster": {"peers": ["a:1", "b:1"], "secret_file": "/k"}}, "cluster.self", "one of"),
    ({"cluster": {"peers": ["a:1", "b:1"], "self": "a:1"}}, "cluster.secret_file", "required"),
    ({"cluster": {"peers": ["0.0.0.0:1", "b:1"]}}, "cluster.peers", "other nodes reach"),
    ({"cluster": {"peers": ["a", "b:1"]}}, "cluster.peers", "HOST:PORT"),
    ({"cluster": {**CLUSTER, "tls": True}}, "cluster.self", "server.tls_listen"),
    ({"cluster": {**CLUSTER, "ca_file": "/ca"}}, "cluster.tls", "need tls = true"),
    ({"cluster": {**CLUSTER, "tls": True, "cert_file": "/c"}, **TLS_SERVER}, "cluster.cert_file", "go together"),
    ({"cluster": {**CLUSTER, "tls": True, "cert_file": "/c", "key_file": "/k"}, **TLS_SERVER}, "cluster.ca_file",
     "mutual TLS"),
    ({"cluster": CLUSTER, "fleet": {"redis": "redis://127.0.0.1:6379"}, "server": {"workers": 2},
      "cache": {"shared": False}}, "cache.shared", "can't take part in a cluster with a fleet"),
]


def test_a_tls_cluster_and_shared_workers_in_a_fleet_are_accepted() -> None:
    config = config_from_dict({"cluster": {**CLUSTER, "tls": True, "ca_file": "/ca", "cert_file": "/c",
                                           "key_file": "/k"}, **TLS_SERVER})
    assert config.cluster.tls and config.cluster.cert_file == "/c"
    shared = config_from_dict({"cluster": CLUSTER, "fleet": {"redis": "redis://127.0.0.1:6379"},
                               "server": {"workers": 2}})
    assert shared.shared_cache


def test_cluster_self_is_spelled_as_in_the_file() -> None:
    config = config_from_dict({"cluster": {"peers": ["a:1", "b:1"], "self": "b:1", "secret_file": "/k"}})
    assert config.cluster.me == "b:1"
    assert to_dict(config)["cluster"]["self"] == "b:1"


def test_a_bad_redis_url_never_shows_its_password():
    e = error({"fleet": {"redis": "redis://user:hunter2@h:port/0"}})
    assert "hunter2" not in str(e) and "user:***@h:port" in str(e)


@pytest.mark.parametrize("url, shown", [
    ("redis://:hunter2@h:6379/0", "redis://:***@h:6379/0"),
    ("redis://user:hunter2@h/0", "redis://user:***@h/0"),
    ("redis://h:6379/0?password=hunter2", "redis://h:6379/0?password=***"),
    ("rediss://h/0?db=1&password=hunter2&ssl_password=hunter2", "rediss://h/0?db=1&password=***&ssl_password=***"),
    ("unix:///run/redis.sock?db=2&password=hunter2", "unix:///run/redis.sock?db=2&password=***"),
    ("redis://h/0?pass%77ord=hunter2", "redis://h/0?pass%77ord=***"),  # parse_qs decodes the name as redis-py does
    ("redis://h/0?Password=hunter2", "redis://h/0?Password=***"),
    ("redis://h/0?some_future_option=hunter2", "redis://h/0?some_future_option=***"),  # passed on as a keyword
    ("redis://:hun/ter2@h/0", "redis://:***@h/0"),  # not a URL redis-py reads, but a config error prints it
    ("redis://:hun#ter2@h/0", "redis://:***@h/0"),
    ("redis://h/0#hunter2", "redis://h/0#***"),
    ("redis://hunter2@h/0", "redis://***@h/0"),
    ("redis://h:6379/0?db=3&socket_timeout=2", "redis://h:6379/0?db=3&socket_timeout=2"),
])
def test_every_form_of_redis_password_is_redacted(url, shown):
    assert redact_url(url) == shown and "hunter2" not in redact_url(url)


def test_check_config_never_prints_the_redis_password():
    config = config_from_dict({"fleet": {"redis": "redis://:hunter2@127.0.0.1:6379/0"}})
    assert config.fleet.redis == "redis://:hunter2@127.0.0.1:6379/0"
    assert to_dict(config)["fleet"]["redis"] == "redis://:***@127.0.0.1:6379/0"


def test_the_fleet_node_defaults_to_the_host_name():
    assert config_from_dict({}).fleet.node_name == os.uname().nodename
    assert config_from_dict({"fleet": {"node": "edge-2"}}).fleet.node_name == "edge-2"


@pytest.mark.parametrize("data, key, reason", BAD, ids=[b[1] for b in BAD])
def test_bad_value_names_the_dotted_key(data, key, reason):
    e = error(data, "/etc/edgeproxy/edgeproxy.toml")
    assert (e.key, e.file) == (key, "/etc/edgeproxy/edgeproxy.toml")
    assert reason in e.reason
    assert str(e).startswith(f"/etc/edgeproxy/edgeproxy.toml: {key}: ")


def test_the_cache_is_shared_by_default_with_several_workers():
    assert not config_from_dict({}).shared_cache
    assert config_from_dict({"server": {"workers": 2}}).shared_cache
    assert not config_from_dict({"server": {"workers": 2}, "cache": {"shared": False}}).shared_cache
    assert config_from_dict({"cache": {"shared": True}}).shared_cache


@pytest.mark.parametrize("section", [*SECTIONS, "site"])
def test_unknown_key_lists_the_known_keys(section):
    data = {"site": [{**SITE, "bogus": 1}]} if section == "site" else {section: {"bogus": 1}}
    e = error(data)
    assert e.key == ("site[0].bogus" if section == "site" else f"{section}.bogus")
    assert e.reason.startswith("unknown key (known keys: ")
    for key in SPECS[section]:
        assert key in e.reason


def test_unknown_section_lists_the_sections():
    e = error({"servers": {}})
    assert e.key == "servers"
    assert all(name in e.reason for name in [*SECTIONS, "site"])


SHAPES = [
    ({"server": 5}, "server", "expected a table"),
    ({"site": []}, "site", "one or more [[site]]"),
    ({"site": SITE}, "site", "one or more [[site]]"),
    ({"site": ["http://a"]}, "site[0]", "expected a table"),
    ({"site": [{"hosts": ["a"]}]}, "site[0].origin", "missing"),
    ({"site": [SITE, {"hosts": ["b"]}]}, "site[1].origin", "missing"),
    ({"site": [{**SITE, "cors": 5}]}, "site[0].cors", "expected a table"),
    ({"site": [{**SITE, "cors": {"bogus": 1}}]}, "site[0].cors.bogus", "unknown key"),
    ({"site": [{**SITE, "cors": {"mode": "bogus"}}]}, "site[0].cors.mode", "not one of"),
    ({"site": [{**SITE, "cors": {"allow_origins": ["https://a.example"]}}]}, "site[0].cors.allow_origins",
     'mode = "edge"'),
    ({"site": [SITE, {**SITE, "cors": {"mode": "edge", "allow_origins": ["https://a", 5]}}]},
     "site[1].cors.allow_origins[1]", "must be a string"),
    ({"site": [{**SITE, "cors": {"mode": "edge", "max_age": "1d"}}]}, "site[0].cors.max_age", "wrong type"),
]


@pytest.mark.parametrize("data, key, reason", SHAPES, ids=[s[1] for s in SHAPES])
def test_shape_errors(data, key, reason):
    e = error(data)
    assert e.key == key
    assert reason in e.reason


def test_cors_table_becomes_a_policy():
    config = config_from_dict({"site": [{**SITE, "cors": {"mode": "edge", "allow_origins": ["https://a.example"]}}]})
    policy = config.sites[0].cors
    assert policy is not None and policy.describe()["allow_origins"] == ("https://a.example",)


# ---- cross-key checks ----

TLS = {"tls_listen": [":8443"], "tls_cert": "/c.pem", "tls_key": "/k.pem"}
CROSS = [
    ({"server": {"tls_cert": "/c.pem"}}, "server.tls_listen"),
    ({"server": {"tls_listen": [":8443"], "tls_key": "/k.pem"}}, "server.tls_listen"),
    ({"server": {"tls_listen": [":8443"]}}, "server.tls_listen"),
    ({"server": TLS}, None),
    ({"cache": {"size": "1MiB", "max_object_size": "2MiB"}}, "cache.max_object_size"),
    ({"cache": {"size": "1MiB", "max_object_size": "1MiB"}}, None),
    ({"cache": {"max_object_size": "1GiB"}}, "cache.max_object_size"),  # over the default size
    ({"server": {"listen": []}}, "server.listen"),
    ({"server": {"listen": [], **TLS}}, None),
]


@pytest.mark.parametrize("data, key", CROSS)
def test_cross_key_checks(data, key):
    if key is None:
        config_from_dict(data)
    else:
        assert error(data).key == key


@pytest.mark.parametrize("data, effective", [
    ({}, "h11"),
    ({"server": {"parser": "httptools"}}, "httptools"),
    ({"server": {"parser": "httptools"}, "origin": {"parser": "h11"}}, "h11"),
    ({"origin": {"parser": "httptools"}}, "httptools"),
])
def test_origin_parser_follows_server_parser_unless_set(data, effective):
    config = config_from_dict(data)
    assert config.origin_parser == effective
    assert to_dict(config)["origin"]["parser"] == effective


@pytest.mark.parametrize("section", ["server", "origin"])
@pytest.mark.parametrize("installed", [True, False])
def test_parser_httptools_needs_httptools(monkeypatch, installed, section):
    real = importlib.util.find_spec

    def find_spec(name: str, *args: Any) -> Any:
        if name == "httptools":  # whether or not this machine has it
            return object() if installed else None
        return real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    data = {section: {"parser": "httptools"}}
    if installed:
        assert config_from_dict(data).origin_parser == "httptools"
    else:
        e = error(data)
        assert e.key == f"{section}.parser" and "not installed" in e.reason


# ---- files ----

def test_load_config_file(tmp_path):
    path = tmp_path / "edge.toml"
    path.write_text('[server]\nlisten = ["127.0.0.1:8081"]\n[[site]]\norigin = "http://127.0.0.1:9000"\n')
    config = load_config(str(path))
    assert (config.file, config.server.listen) == (str(path), (("127.0.0.1", 8081),))


@pytest.mark.parametrize(
    "text, key, reason",
    [
        ("[server\nlisten = 1\n", "-", "not valid TOML"),
        ("[server]\nworkers = 'x'\n", "server.workers", "integer"),
        ("[[site]]\nhosts = ['a']\n", "site[0].origin", "missing"),
    ],
)
def test_load_config_errors_name_the_file(tmp_path, text, key, reason):
    path = tmp_path / "edge.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert (info.value.file, info.value.key) == (str(path), key)
    assert reason in info.value.reason and str(path) in str(info.value)


def test_load_config_missing_file(tmp_path):
    path = str(tmp_path / "nope.toml")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.file == path and "cannot read" in info.value.reason
    assert str(info.value).startswith(path + ": ")


def test_example_config_loads():
    config = load_config(str(EXAMPLE))
    assert config.server.listen == (("0.0.0.0", 80),)
    assert config.metrics.listen == ("127.0.0.1", 9145)
    assert len(config.sites) >= 1


# ---- reload: what a reload keeps ----

def test_restart_keys_name_real_fields():
    for dotted in RESTART_KEYS:
        section, key = dotted.split(".")
        assert key in {f.name for f in fields(CLASSES[section])}, dotted


BASE = config_from_dict({"site": [SITE]})
RELOADS = [
    ({}, []),
    ({"server": {"drain_timeout": "5s", "name": "other"}}, []),
    ({"cache": {"max_ttl": "1h"}, "log": {"format": "json"}}, []),
    ({"server": {"listen": ["127.0.0.1:9999"]}}, ["server.listen"]),
    ({"server": {"workers": 3, "control_socket": "/tmp/x.sock"}}, ["server.control_socket", "server.workers"]),
    ({"cache": {"size": "512MiB"}, "metrics": {"listen": ":9145"}}, ["cache.size", "metrics.listen"]),
]


@pytest.mark.parametrize("changes, changed", RELOADS)
def test_restart_keys_changed(changes, changed):
    new = config_from_dict({**changes, "site": [{**SITE, "query": "sort"}]})
    assert restart_keys_changed(BASE, new) == changed
    kept = keep_restart_keys(BASE, new)
    assert restart_keys_changed(BASE, kept) == []
    assert kept.sites == new.sites
    for section in SECTIONS:  # everything else comes from the new file
        for f in fields(CLASSES[section]):
            if f"{section}.{f.name}" not in RESTART_KEYS:
                assert getattr(getattr(kept, section), f.name) == getattr(getattr(new, section), f.name)


def test_keep_restart_keys_keeps_the_file():
    new = config_from_dict({"site": [SITE]}, "/new.toml")
    assert keep_restart_keys(BASE, new).file == "/new.toml"


# ---- the effective config as plain data ----

def test_to_dict_is_json_round_trip():
    config = config_from_dict({
        "server": {"listen": ["127.0.0.1:8080", "[::1]:8080"], "control_uids": [0]},
        "metrics": {"listen": "127.0.0.1:9145"},
        "site": [SITE, {**SITE, "hosts": ["*.example.com"],
                        "cors": {"mode": "edge", "allow_origins": ["https://a.example"], "max_age": 600}}],
    }, "/etc/edgeproxy/edgeproxy.toml")
    data = to_dict(config)
    assert json.loads(json.dumps(data)) == data
    assert data["server"]["listen"] == [["127.0.0.1", 8080], ["::1", 8080]]
    assert data["metrics"]["listen"] == ["127.0.0.1", 9145]
    assert data["sites"][0]["cors"] is None
    assert data["sites"][1]["cors"]["allow_origins"] == ["https://a.example"]
    assert data["sites"][1]["cors"]["max_age"] == 600
    assert data["file"] == "/etc/edgeproxy/edgeproxy.toml"
    assert set(data) == {f.name for f in fields(Config)}


def test_keep_restart_keys_refuses_a_contradiction_with_a_kept_value() -> None:
    """A reload that raises cache.max_object_size above the kept cache.size is refused, not half applied."""
    from edgeproxy.config import ConfigError, config_from_dict, keep_restart_keys

    old = config_from_dict({"cache": {"size": "256MiB", "max_object_size": "8MiB"}})
    new = config_from_dict({"cache": {"size": "1GiB", "max_object_size": "512MiB"}})
    with pytest.raises(ConfigError, match="cache.max_object_size"):
        keep_restart_keys(old, new)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[server]\ncontrol_socket = "/run/e/c.sock"\n[cache]\nsise = 1\n', "/run/e/c.sock"),  # rest not checked
        ('[server]\nworkers = "many"\ncontrol_socket = "/x.sock"\n', "/x.sock"),
        ("[server]\nlisten = [\n", None),  # not TOML: the CLI falls back to the default path
        ("[cache]\nsize = 1\n", None),
        ('server = 3\n', None),
        ('[server]\ncontrol_socket = 5\n', None),
    ],
)
def test_control_socket_in_reads_only_that_key(tmp_path, text: str, expected: str | None):
    path = tmp_path / "e.toml"
    path.write_text(text)
    assert control_socket_in(str(path)) == expected


def test_control_socket_in_an_unreadable_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        control_socket_in(str(tmp_path / "missing.toml"))
