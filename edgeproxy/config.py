"""The configuration tree: TOML (tomllib) validated into frozen dataclasses.

Rules kept here:
- Every key is declared in a table (``*_KEYS``) with its parser and default; an unknown key or a bad value stops
  start-up with ``ConfigError`` naming the file, the dotted key and the reason (hypercorn drops unknown keys
  silently; we don't).
- Sizes accept bytes or "256MiB"-style strings; durations accept seconds or "30s"/"5m"/"250ms".
- ``RESTART_KEYS`` names what a reload cannot change (listeners, workers, parser, control socket); everything
  else is applied by a reload.
Pure: no sockets, no clock.
"""

from __future__ import annotations

import importlib.util
import os
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_plus, urlsplit

if TYPE_CHECKING:
    from edgeproxy.cors import CorsPolicy

KIB, MIB, GIB = 1024, 1024**2, 1024**3
SECONDS = 1.0
MINUTES = 60 * SECONDS

_SIZE_UNITS = {"": 1, "b": 1, "k": KIB, "kb": 1000, "kib": KIB, "m": MIB, "mb": 1000**2, "mib": MIB,
               "g": GIB, "gb": 1000**3, "gib": GIB}
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}


class ConfigError(ValueError):
    """A bad configuration: carries the file, the dotted key and the reason."""

    def __init__(self, key: str, reason: str, file: str = "<config>") -> None:
        self.file, self.key, self.reason = file, key, reason
        super().__init__(f"{file}: {key}: {reason}")


# ---- value parsers: each takes the raw TOML value and returns the typed value or raises ValueError ----

def parse_size(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError(f"expected a size like 256MiB, got {value!r}")
    if isinstance(value, int) and value >= 0:
        return value
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(value)) if isinstance(value, str) else None
    if not m or m.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(f"expected a size like 256MiB, got {value!r}")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])


def parse_duration(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like 30s, got {value!r}")
    if isinstance(value, int | float) and value >= 0:
        return float(value)
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*", value) if isinstance(value, str) else None
    if not m or m.group(2) not in _DURATION_UNITS:
        raise ValueError(f"expected a duration like 30s, 250ms or 5m, got {value!r}")
    return float(m.group(1)) * _DURATION_UNITS[m.group(2)]


def parse_address(value: Any) -> tuple[str, int]:
    if not isinstance(value, str):
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT with a port 0-65535, got {value!r}")
    # An IPv6 host is written in brackets (RFC 3986 §3.2.2): "::1:8080" could be an address without a port.
    if host.startswith("["):
        if not host.endswith("]") or ":" not in host:
            raise ValueError(f"expected [IPv6]:PORT, got {value!r}")
        host = host[1:-1]
    elif ":" in host or "]" in host:
        raise ValueError(f"an IPv6 host goes in brackets, [::1]:8080, got {value!r}")
    return host or "0.0.0.0", int(port)


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


def _int(lo: int, hi: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise ValueError(f"expected an integer from {lo} to {hi}, got {value!r}")
        return value
    return parse


def _choice(*options: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if value not in options:
            raise ValueError(f"expected one of {', '.join(map(repr, options))}, got {value!r}")
        return value
    return parse


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    return value


def _opt_str(value: Any) -> str | None:
    return None if value == "" else _str(value)


def _list_of(item: Callable[[Any], Any]) -> Callable[[Any], tuple[Any, ...]]:
    def parse(value: Any) -> tuple[Any, ...]:
        if not isinstance(value, list):
            raise ValueError(f"expected a list, got {value!r}")
        out = []
        for i, v in enumerate(value):
            try:
                out.append(item(v))
            except ValueError as e:
                raise ValueError(f"item {i}: {e}") from None
        return tuple(out)
    return parse


def _workers(value: Any) -> int:
    if value == "auto":
        return os.cpu_count() or 1
    return _int(1, 256)(value)


def _purge_budget(value: Any) -> float:
    # Under the CLI's 10 s reply timeout with room for the fallback, and well under a worker's command timeout.
    seconds = parse_duration(value)
    if seconds > 30:
        raise ValueError(f"expected a duration up to 30s, got {value!r}")
    return seconds


def _access_log(value: Any) -> str | None:
    """true or "-" = stderr, false = off, a path = that file."""
    if value is True or value == "-":
        return "-"
    if value is False:
        return None
    return _str(value)


def _origin_url(value: Any) -> str:
    m = re.fullmatch(r"(https?)://([^/\s?#]+)/?", value) if isinstance(value, str) else None
    if not m:
        raise ValueError(f"expected http://HOST[:PORT] or https://HOST[:PORT] (no path), got {value!r}")
    return value.rstrip("/")


def _host_pattern(value: Any) -> str:
    v = _str(value).lower()
    if v == "*" or re.fullmatch(r"(\*\.)?[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:\d+)?", v):
        return v
    raise ValueError(f"expected a host name, *.suffix or *, got {value!r}")


def _header_name(value: Any) -> str:
    v = _str(value).lower()
    if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9a-z-]+", v):
        raise ValueError(f"not a header field name: {value!r}")
    return v


_REDIS_SCHEMES = ("redis", "rediss", "unix")


def _redis_url(value: Any) -> str:
    """redis://[[USER]:PASSWORD@]HOST[:PORT][/DB], rediss://... (TLS) or unix:///PATH[?db=N]."""
    text = _str(value)
    expected = "expected redis://HOST[:PORT][/DB], rediss://... or unix:///PATH"
    try:
        url = urlsplit(text)
        port_ok = url.port is None or url.port > 0  # .port raises ValueError on a bad one
    except ValueError:
        raise ValueError(f"{expected}, got {redact_url(text)!r}") from None
    if url.scheme not in _REDIS_SCHEMES or not port_ok:
        raise ValueError(f"{expected}, got {redact_url(text)!r}")
    if url.scheme == "unix" and not url.path.startswith("/"):
        raise ValueError(f"expected unix:///absolute/path, got {redact_url(text)!r}")
    if url.scheme != "unix" and (not url.hostname or not re.fullmatch(r"/?\d*", url.path)):
        raise ValueError(f"{expected}, got {redact_url(text)!r}")
    return text


# Query parameters redis-py reads that hold no secret: their values are shown. Any other value (password=,
# ssl_password=, and whatever redis-py may pass on as a keyword) is replaced, and so is a fragment.
_SHOWN_REDIS_PARAMS = frozenset({
    "db", "protocol", "timeout", "socket_timeout", "socket_connect_timeout", "socket_keepalive", "socket_read_size",
    "retry_on_timeout", "max_connections", "health_check_interval", "client_name", "username", "ssl_check_hostname",
    "ssl_cert_reqs", "ssl_ca_certs", "ssl_min_version",
})


def redact_url(url: str) -> str:
    """``url`` with every password replaced by ``***``: what logs, ``stats`` and ``check-config`` may show. Safe on
    text that is not a valid URL: everything up to the last ``@`` counts as user info (a password may hold ``/``,
    ``?`` or ``#``), and only a plain user name before its ``:`` is kept."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    userinfo, at, rest = rest.rpartition("@")
    if at:
        user, colon, _ = userinfo.partition(":")
        userinfo = f"{user}:***@" if colon and re.fullmatch(r"[\w.~%-]*", user) else "***@"
    rest, hashmark, fragment = rest.partition("#")
    rest, question, query = rest.partition("?")
    if query:
        query = "&".join(_redact_param(param) for param in query.split("&"))
    return f"{scheme}{sep}{userinfo}{rest}{question}{query}{'#***' if hashmark else ''}"


def _redact_param(param: str) -> str:
    name, _, _ = param.partition("=")
    return param if unquote_plus(name).strip().lower() in _SHOWN_REDIS_PARAMS else f"{name}=***"


def _peer(value: Any) -> str:
    """A cluster peer as HOST:PORT, spelled one way (so that every node ranks the same strings)."""
    host, port = parse_address(value)
    if not host or host in ("0.0.0.0", "::"):
        raise ValueError(f"expected the HOST:PORT other nodes reach this one at, got {value!r}")
    return f"[{host}]:{port}" if ":" in host else f"{host.lower()}:{port}"


def _stream_name(value: Any) -> str:
    text = _str(value)
    if not text or len(text) > 200 or any(c <= " " or c == "\x7f" for c in text):
        raise ValueError(f"expected a Redis key name (1-200 characters, no spaces), got {value!r}")
    return text


def _node_name(value: Any) -> str | None:
    text = _opt_str(value)
    if text is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,99}", text):
        raise ValueError(f"expected a node name (letters, digits, '.', '_', ':', '-'; up to 100), got {value!r}")
    return text


# ---- the tree ----

@dataclass(frozen=True)
class ServerConfig:
    listen: tuple[tuple[str, int], ...] = (("127.0.0.1", 8080),)
    tls_listen: tuple[tuple[str, int], ...] = ()
    tls_cert: str | None = None
    tls_key: str | None = None
    workers: int = 1
    parser: str = "h11"
    name: str = "edgeproxy"
    control_socket: str | None = None
    control_group: str | None = None
    control_uids: tuple[int, ...] = ()
    control_gids: tuple[int, ...] = ()
    drain_timeout: float = 30 * SECONDS
    keepalive_timeout: float = 75 * SECONDS
    header_timeout: float = 10 * SECONDS
    body_timeout: float = 60 * SECONDS
    min_body_rate: int = 1024
    max_uri: int = 8 * KIB
    max_header_bytes: int = 32 * KIB
    max_headers: int = 100
    max_body: int = 100 * MIB
    max_connections: int = 20000
    max_connections_per_ip: int = 2000
    fast_lane: bool = True  # answer plain hits from the read's bytes (proxy/lane.py)
    head_memo: bool = True  # the old name of fast_lane (the lane replaced the head memo): false turns the lane off
    request_buffer: int = 1 * MIB


@dataclass(frozen=True)
class OriginConfig:
    connect_timeout: float = 5 * SECONDS
    read_timeout: float = 30 * SECONDS
    idle_timeout: float = 4 * SECONDS
    max_connections: int = 1024
    max_per_origin: int = 256
    pool_wait_timeout: float = 10 * SECONDS
    parser: str | None = None  # None: as server.parser (Config.origin_parser)


@dataclass(frozen=True)
class CacheConfig:
    size: int = 256 * MIB
    max_object_size: int = 8 * MIB
    max_variants: int = 32
    heuristic_max: float = 1 * 86400.0
    max_ttl: float = 0.0
    collapse: bool = True
    collapse_timeout: float = 10 * SECONDS
    hit_for_miss_ttl: float = 30 * SECONDS
    revalidate_interval: float = 1 * SECONDS  # origin shielding: see cache/policy.py (0: off)
    shared: bool | None = None  # one store for every worker of the host (edgeproxy/shared); None: when workers > 1
    path: str | None = None  # the shared store's directory; None: see shared/layout.py
    hot_size: int | None = None  # each worker's hot tier, inside size; None: 5% of size split among the workers
    regex_purge_budget: float = 5 * SECONDS  # then the pattern's host is soft-purged instead (edgeproxy/purging.py)


@dataclass(frozen=True)
class LogConfig:
    access: str | None = "-"
    format: str = "combined"
    level: str = "info"


@dataclass(frozen=True)
class MetricsConfig:
    listen: tuple[str, int] | None = None


@dataclass(frozen=True)
class FleetConfig:
    redis: str | None = None  # None: this node purges alone (edgeproxy/fleet)
    stream: str = "edgeproxy:purge"
    node: str | None = None  # None: the host name (FleetConfig.node_name)
    password_file: str | None = None
    maxlen: int = 100_000
    wait_timeout: float = 10 * SECONDS
    connect_timeout: float = 2 * SECONDS

    @property
    def node_name(self) -> str:
        return self.node or os.uname().nodename


@dataclass(frozen=True)
class ClusterConfig:
    peers: tuple[str, ...] = ()  # HOST:PORT of every node, this one's included (edgeproxy/fleet/cluster.py)
    me: str | None = None  # the TOML key is "self": which of the peers this node is
    secret_file: str | None = None
    connect_timeout: float = 0.5 * SECONDS  # a peer that does not accept in this long is skipped
    tls: bool = False  # peers are reached (and cluster requests accepted) over TLS: the peers are tls_listen addresses
    ca_file: str | None = None  # what signs the peers' certificates (None: the system's trust)
    cert_file: str | None = None  # this node's client certificate: mutual TLS (peers accept only the CA's)
    key_file: str | None = None


@dataclass(frozen=True)
class SiteConfig:
    hosts: tuple[str, ...] = ("*",)
    origin: str = "http://127.0.0.1:9000"
    host_header: str = "forward"  # "forward" the client's Host, or "origin" to rewrite it to the origin's
    x_forwarded: bool = True
    ca_file: str | None = None
    tls_verify: bool = True
    query: str = "keep"
    ignore_request_cache_control: bool = False
    store_set_cookie: bool = False
    allow_request_headers: tuple[str, ...] = ()
    cors: CorsPolicy | None = None


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    origin: OriginConfig = field(default_factory=OriginConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    log: LogConfig = field(default_factory=LogConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    fleet: FleetConfig = field(default_factory=FleetConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    sites: tuple[SiteConfig, ...] = ()
    file: str = "<defaults>"

    @property
    def shared_cache(self) -> bool:
        """Whether the workers share one store: ``[cache] shared``, by default when there is more than one."""
        return self.cache.shared if self.cache.shared is not None else self.server.workers > 1

    @property
    def node_id(self) -> str:
        """This node among others: ``[cluster] self``, else ``[fleet] node``, else host name and first port (what
        its ``CDN-Loop`` member names; several instances on one host differ by port)."""
        if self.cluster.me is not None:
            return self.cluster.me
        if self.fleet.node is not None:
            return self.fleet.node
        host, port = (self.server.listen or self.server.tls_listen or (("", 0),))[0]
        return f"{os.uname().nodename}:{port}"

    @property
    def origin_parser(self) -> str:
        """The origin-side parser backend: ``[origin] parser``, else the client side's ``[server] parser``."""
        return self.origin.parser or self.server.parser


SERVER_KEYS: dict[str, Callable[[Any], Any]] = {
    "listen": _list_of(parse_address), "tls_listen": _list_of(parse_address), "tls_cert": _opt_str,
    "tls_key": _opt_str, "workers": _workers, "parser": _choice("h11", "httptools"), "name": _str,
    "control_socket": _opt_str, "control_group": _opt_str, "control_uids": _list_of(_int(0, 2**32)),
    "control_gids": _list_of(_int(0, 2**32)), "drain_timeout": parse_duration,
    "keepalive_timeout": parse_duration, "header_timeout": parse_duration, "body_timeout": parse_duration,
    "min_body_rate": parse_size, "max_uri": parse_size, "max_header_bytes": parse_size,
    "max_headers": _int(1, 10000), "max_body": parse_size, "max_connections": _int(1, 10**7),
    "max_connections_per_ip": _int(1, 10**7), "fast_lane": _bool, "head_memo": _bool,
    "request_buffer": parse_size,
}
ORIGIN_KEYS: dict[str, Callable[[Any], Any]] = {
    "connect_timeout": parse_duration, "read_timeout": parse_duration, "idle_timeout": parse_duration,
    "max_connections": _int(1, 10**6), "max_per_origin": _int(1, 10**6), "pool_wait_timeout": parse_duration,
    "parser": _choice("h11", "httptools"),
}
CACHE_KEYS: dict[str, Callable[[Any], Any]] = {
    "size": parse_size, "max_object_size": parse_size, "max_variants": _int(1, 10**4),
    "heuristic_max": parse_duration, "max_ttl": parse_duration, "collapse": _bool,
    "collapse_timeout": parse_duration, "hit_for_miss_ttl": parse_duration, "revalidate_interval": parse_duration,
    "shared": _bool, "path": _opt_str, "hot_size": parse_size, "regex_purge_budget": _purge_budget,
}
LOG_KEYS: dict[str, Callable[[Any], Any]] = {
    "access": _access_log, "format": _choice("combined", "json"),
    "level": _choice("debug", "info", "warning", "error"),
}
METRICS_KEYS: dict[str, Callable[[Any], Any]] = {"listen": parse_address}
CLUSTER_KEYS: dict[str, Callable[[Any], Any]] = {
    "peers": _list_of(_peer), "self": _peer, "secret_file": _opt_str,
    "connect_timeout": parse_duration, "tls": _bool, "ca_file": _opt_str, "cert_file": _opt_str, "key_file": _opt_str,
}
# TOML keys that are not Python names: key -> dataclass field.
FIELD_NAMES: dict[str, str] = {"cluster.self": "me"}
FLEET_KEYS: dict[str, Callable[[Any], Any]] = {
    "redis": _redis_url, "stream": _stream_name, "node": _node_name, "password_file": _opt_str,
    "maxlen": _int(100, 10**9), "wait_timeout": parse_duration, "connect_timeout": parse_duration,
}
SITE_KEYS: dict[str, Callable[[Any], Any]] = {
    "hosts": _list_of(_host_pattern), "origin": _origin_url, "host_header": _choice("forward", "origin"),
    "x_forwarded": _bool, "ca_file": _opt_str, "tls_verify": _bool, "query": _choice("keep", "sort", "ignore"),
    "ignore_request_cache_control": _bool, "store_set_cookie": _bool,
    "allow_request_headers": _list_of(_header_name),
}

# Keys a reload cannot apply: they shape sockets and processes made at start-up.
RESTART_KEYS: frozenset[str] = frozenset({
    "server.listen", "server.tls_listen", "server.workers", "server.parser", "server.control_socket",
    "server.control_group", "server.control_uids", "server.control_gids", "metrics.listen", "cache.size",
    "cache.shared", "cache.path", "cache.hot_size", "fleet.redis", "fleet.stream", "fleet.node",
    "fleet.password_file", "cluster.tls", "cluster.ca_file", "cluster.cert_file", "cluster.key_file",
})


# Keys that once existed: a config that still has one is told why it goes, not just that it is unknown.
REMOVED_KEYS: dict[str, str] = {
    "server.max_pipeline": "removed: it never had an effect (pipelined requests are answered one at a time, "
                           "and reading pauses while one is in flight); delete the line",
}


def _section(cls: type, table: Any, spec: dict[str, Callable[[Any], Any]], prefix: str, file: str) -> Any:
    if not isinstance(table, dict):
        raise ConfigError(prefix, f"expected a table, got {table!r}", file)
    values = {}
    for key, raw in table.items():
        parse = spec.get(key)
        if f"{prefix}.{key}" in REMOVED_KEYS:
            raise ConfigError(f"{prefix}.{key}", REMOVED_KEYS[f"{prefix}.{key}"], file)
        if parse is None:
            known = ", ".join(sorted(spec))
            raise ConfigError(f"{prefix}.{key}", f"unknown key (known keys: {known})", file)
        try:
            values[FIELD_NAMES.get(f"{prefix}.{key}", key)] = parse(raw)
        except ValueError as e:
            raise ConfigError(f"{prefix}.{key}", str(e), file) from None
    return cls(**values)


def _site(table: Any, index: int, file: str) -> SiteConfig:
    prefix = f"site[{index}]"
    if not isinstance(table, dict):
        raise ConfigError(prefix, "expected a table ([[site]])", file)
    table = dict(table)
    cors_table = table.pop("cors", None)
    if "origin" not in table:
        raise ConfigError(f"{prefix}.origin", "missing: every site needs an origin URL", file)
    site = _section(SiteConfig, table, SITE_KEYS, prefix, file)
    if cors_table is not None:
        from edgeproxy.cors import CorsConfigError, CorsPolicy  # the CORS grammar lives with its policy

        if not isinstance(cors_table, dict):
            raise ConfigError(f"{prefix}.cors", "expected a table", file)
        try:
            site = replace(site, cors=CorsPolicy.from_settings(**cors_table))
        except CorsConfigError as e:
            raise ConfigError(f"{prefix}.cors.{e.key}", e.reason, file) from None
        except TypeError as e:  # unexpected keyword: an unknown key
            raise ConfigError(f"{prefix}.cors", str(e), file) from None
    return site


SECTIONS: dict[str, tuple[type, dict[str, Callable[[Any], Any]]]] = {
    "server": (ServerConfig, SERVER_KEYS), "origin": (OriginConfig, ORIGIN_KEYS),
    "cache": (CacheConfig, CACHE_KEYS), "log": (LogConfig, LOG_KEYS), "metrics": (MetricsConfig, METRICS_KEYS),
    "fleet": (FleetConfig, FLEET_KEYS), "cluster": (ClusterConfig, CLUSTER_KEYS),
}


def config_from_dict(data: dict[str, Any], file: str = "<config>") -> Config:
    parts: dict[str, Any] = {}
    for name, value in data.items():
        if name == "site":
            if not isinstance(value, list) or not value:
                raise ConfigError("site", "expected one or more [[site]] tables", file)
            parts["sites"] = tuple(_site(t, i, file) for i, t in enumerate(value))
        elif name in SECTIONS:
            cls, spec = SECTIONS[name]
            parts[name] = _section(cls, value, spec, name, file)
        else:
            raise ConfigError(name, f"unknown section (known: {', '.join([*SECTIONS, 'site'])})", file)
    config = Config(**parts, file=file)
    _check(config)
    return config


def _check(config: Config) -> None:
    s, c = config.server, config.cache
    if (s.tls_listen or s.tls_cert or s.tls_key) and not (s.tls_listen and s.tls_cert and s.tls_key):
        raise ConfigError("server.tls_listen", "tls_listen, tls_cert and tls_key go together", config.file)
    if c.max_object_size > c.size:
        raise ConfigError("cache.max_object_size", "larger than cache.size", config.file)
    if c.hot_size is not None and c.hot_size * config.server.workers >= c.size:
        raise ConfigError("cache.hot_size", f"{c.hot_size} bytes in each of {config.server.workers} workers leave "
                          "nothing of cache.size for the shared store", config.file)
    for key, parser in (("server.parser", s.parser), ("origin.parser", config.origin.parser)):
        if parser == "httptools" and importlib.util.find_spec("httptools") is None:
            raise ConfigError(key, 'httptools is not installed: pip install "edgeproxy[fast]"', config.file)
    _check_cluster(config)
    if config.fleet.redis is not None and importlib.util.find_spec("redis") is None:
        raise ConfigError("fleet.redis", 'the redis client is not installed: pip install "edgeproxy[fleet]"',
                          config.file)
    if not s.listen and not s.tls_listen:
        raise ConfigError("server.listen", "no listener: give at least one HOST:PORT", config.file)


def _check_cluster(config: Config) -> None:
    c = config.cluster
    if not c.peers and c.me is None:
        return
    if len(c.peers) < 2:
        raise ConfigError("cluster.peers", "a cluster needs at least two peers (this node's included)", config.file)
    if len(set(c.peers)) != len(c.peers):
        raise ConfigError("cluster.peers", "a peer is listed twice", config.file)
    if c.me is None or c.me not in c.peers:
        raise ConfigError("cluster.self", f"must be one of cluster.peers ({', '.join(c.peers)}), got {c.me!r}",
                          config.file)
    if c.secret_file is None:
        raise ConfigError("cluster.secret_file", "required with cluster.peers: internal requests are signed with it",
                          config.file)
    _check_cluster_tls(config)
    if config.fleet.redis is not None and config.server.workers > 1 and not config.shared_cache:
        # Such workers can't read the journal position their cache has applied, which a peer's request must carry
        # (and be judged by) so that a purge and the cluster together never refill a node with a purged object.
        raise ConfigError("cache.shared", "workers that do not share one cache can't take part in a cluster with a "
                          "fleet: share the cache (the default with workers > 1) or run one worker", config.file)


def _check_cluster_tls(config: Config) -> None:
    c = config.cluster
    if (c.cert_file is None) != (c.key_file is None):
        raise ConfigError("cluster.cert_file", "cert_file and key_file go together", config.file)
    if not c.tls:
        if c.ca_file or c.cert_file:
            raise ConfigError("cluster.tls", "ca_file, cert_file and key_file need tls = true", config.file)
        return
    ports = {port for _host, port in config.server.tls_listen}
    if int(c.me.rpartition(":")[2]) not in ports:  # type: ignore[union-attr]
        raise ConfigError("cluster.self", f"with cluster.tls the peers are TLS listeners: {c.me} is not one of "
                          "server.tls_listen", config.file)
    if c.cert_file is not None and c.ca_file is None:
        raise ConfigError("cluster.ca_file", "mutual TLS (cert_file) needs the CA that signs the peers' "
                          "certificates", config.file)


def load_config(path: str) -> Config:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError("-", f"cannot read: {e.strerror}", path) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError("-", f"not valid TOML: {e}", path) from None
    return config_from_dict(data, path)


def control_socket_in(path: str) -> str | None:
    """``[server] control_socket`` from the file at ``path`` without validating the rest of it (None when unset
    or unreadable as TOML). The CLI needs only the socket, and ``edgeproxy reload`` must reach the server even
    when the rest of the file is what is wrong: the server then refuses the reload and names the error."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError("-", f"cannot read: {e.strerror}", path) from None
    except tomllib.TOMLDecodeError:
        return None
    server = data.get("server")
    value = server.get("control_socket") if isinstance(server, dict) else None
    return value if isinstance(value, str) and value else None


def keep_restart_keys(old: Config, new: Config) -> Config:
    """``new`` with every RESTART_KEYS value taken from ``old`` (what a reload applies)."""
    kept: dict[str, dict[str, Any]] = {}
    for dotted in RESTART_KEYS:
        section, key = dotted.split(".")
        kept.setdefault(section, {})[key] = getattr(getattr(old, section), key)
    config = replace(new, **{section: replace(getattr(new, section), **values) for section, values in kept.items()})
    _check(config)  # a kept value may contradict a new one (cache.max_object_size above the kept cache.size)
    return config


def restart_keys_changed(old: Config, new: Config) -> list[str]:
    """Dotted keys in RESTART_KEYS whose values differ: a reload keeps the old values for these."""
    changed = []
    for dotted in sorted(RESTART_KEYS):
        section, key = dotted.split(".")
        if getattr(getattr(old, section), key) != getattr(getattr(new, section), key):
            changed.append(dotted)
    return changed


def to_dict(config: Config) -> dict[str, Any]:
    """The effective config as plain data, for ``edgeproxy check-config``."""
    def plain(obj: Any) -> Any:
        if hasattr(obj, "describe"):  # a CorsPolicy: its settings, not its compiled tables
            return plain(obj.describe())
        if hasattr(obj, "__dataclass_fields__"):
            return {f.name: plain(getattr(obj, f.name)) for f in fields(obj)}
        if isinstance(obj, dict):
            return {k: plain(v) for k, v in obj.items()}
        if isinstance(obj, tuple):
            return [plain(v) for v in obj]
        return obj
    data = plain(config)
    data["origin"]["parser"] = config.origin_parser  # the effective backend, not "as server.parser"
    if config.fleet.redis is not None:  # a password in the URL is never printed
        data["fleet"]["redis"] = redact_url(config.fleet.redis)
    data["cluster"]["self"] = data["cluster"].pop("me")  # as the file spells it
    return data
