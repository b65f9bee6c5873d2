"""CORS at the edge: which Origin may read, and the exact fields that tell the browser so.

Rules kept here:
- Two modes per site. ``origin`` (default): the origin's Access-Control-* fields pass through and are
  cached; the edge only repairs variance (``fix_origin_response``). ``edge``: this policy owns CORS;
  the origin's CORS fields are stripped before storing (``strip_origin_cors``) and the policy's are
  appended at delivery to *every* response of the site (hits, misses, 304, 4xx, 5xx, the edge's own
  errors), so one stored copy serves every Origin and the cache never fragments per Origin.
- Origins are compared byte-exactly in the serialized form browsers send (Fetch "CORS check"):
  ``scheme://host[:port]``, lower-case, no trailing slash or dot, no userinfo, default port omitted.
  Anything else is not an origin and is never allowed, so user regexes and wildcards only ever see
  canonical bytes (no CR/LF, no ``@`` tricks) and an allowed origin can be echoed into a header safely.
- The ``null`` origin is only allowed by explicit opt-in and never together with credentials:
  every sandboxed frame and ``data:`` document sends it.
- Whenever the answer depends on Origin, every response carries ``Vary: Origin`` (also those to
  requests without Origin); a pure ``*`` policy without credentials is static, so it sends ``*``
  always and no Vary (Fetch: a static ACAO needs no Vary).
- Preflights (``OPTIONS`` + ``Access-Control-Request-Method``) are answered here, never forwarded:
  204 with only what the policy allows, or 403 without any Access-Control-Allow-* field.
  403 rather than "204 without ACAO": browsers fail both the same way, but 403 is unambiguous in
  access logs and DevTools ("does not have HTTP ok status"), and no shared cache stores it.
- Decisions for origins outside the exact set are memoized in a bounded dict: Origin is attacker
  controlled, so the memo is capped and evicts oldest first.
- Config validation names the key and the reason (``CorsConfigError``); everything is compiled once.
Must never: import asyncio, socket, time or h11; emit two ACAO fields; emit ``*`` with credentials;
let ``*`` cover ``Authorization``.
Implements: Fetch standard §3.2 (CORS protocol), RFC 9110 §12.5.5 (Vary), RFC 9111 §4.1.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, replace

from edgeproxy.http.headers import Headers, get_list
from edgeproxy.http.wire import serialize_fields

MODES: frozenset[str] = frozenset({"origin", "edge"})

# A serialized origin as browsers send it: lower-case scheme and host, LDH labels without a trailing
# dot (IDNs arrive as punycode), or a bracketed IPv6 literal; a port without leading zeros.
ORIGIN_RE = re.compile(
    rb"(?P<scheme>[a-z][a-z0-9+.-]*)://"
    rb"(?P<host>[a-z0-9-]+(?:\.[a-z0-9-]+)*|\[[0-9a-f:.]+\])"
    rb"(?::(?P<port>[1-9][0-9]{0,4}))?"
)
WILDCARD_RE = re.compile(
    r"(?P<scheme>[a-z][a-z0-9+.-]*)://\*\.(?P<suffix>[a-z0-9-]+(?:\.[a-z0-9-]+)+)(?::(?P<port>[1-9][0-9]{0,4}))?"
)
TOKEN_RE = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# "$" or "\Z" at the very end, not escaped (an even run of backslashes before it).
END_ANCHOR_RE = re.compile(r"(?<!\\)(?:\\\\)*(?:\$|\\Z)\Z")
DEFAULT_PORTS: dict[str, str] = {"http": "80", "https": "443", "ws": "80", "wss": "443"}

# Longest Origin worth matching (253-byte host + scheme + port); longer ones are refused unmemoized.
MAX_ORIGIN_LEN = 300
# Distinct non-exact origins whose decision is remembered.
MEMO_CAP = 1024

VARY_ORIGIN_FIELD = (b"vary", b"origin")
VARY_ORIGIN_BYTES = serialize_fields([VARY_ORIGIN_FIELD])
PREFLIGHT_VARY = (b"vary", b"origin, access-control-request-method, access-control-request-headers")

# Fields the edge owns in edge mode; the origin's copies are dropped before storing.
_CORS_PREFIX = b"access-control-"
_TIMING = b"timing-allow-origin"

# key -> accepted type(s); defaults live in CorsSettings. Drives unknown-key and type checks.
SETTINGS: dict[str, type | tuple[type, ...]] = {
    "mode": str,
    "allow_origins": (list, tuple),
    "allow_origin_patterns": (list, tuple),
    "allow_methods": (list, tuple),
    "allow_headers": (list, tuple),
    "expose_headers": (list, tuple),
    "allow_credentials": bool,
    "max_age": (int, type(None)),
    "allow_null": bool,
    "reject_disallowed": bool,
    "timing_allow": bool,
}
TOKEN_KEYS = ("allow_methods", "allow_headers", "expose_headers")  # methods are case-sensitive
EDGE_ONLY: frozenset[str] = frozenset(SETTINGS) - {"mode"}
MAX_AGE_LIMIT = 86400


class CorsConfigError(ValueError):
    """A bad ``[site.cors]`` value; ``key`` is the dotted key below ``cors`` (``allow_origins[1]``)."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Preflight:
    """The edge's complete answer to a preflight: status and fields (framing included)."""

    status: int
    headers: Headers

    @property
    def allowed(self) -> bool:
        return self.status == 204


def _check_list(key: str, values: object) -> list[str]:
    for i, v in enumerate(values):  # type: ignore[arg-type]
        if not isinstance(v, str):
            raise CorsConfigError(f"{key}[{i}]", f"must be a string, got {type(v).__name__}")
    return list(values)  # type: ignore[call-overload]


def _check_origin(key: str, value: str, allow_null: bool) -> None:
    """Refuse an allow_origins entry a browser could never send byte-equal."""
    if value == "null":
        if not allow_null:
            raise CorsConfigError(key, '"null" is sent by every sandboxed frame; set allow_null = true')
        return
    m = re.fullmatch(r"([^:/]*)://([^/]*)(.*)", value)
    if m is None:
        raise CorsConfigError(key, f"{value!r} is not scheme://host[:port]")
    scheme, authority, rest = m.groups()
    problems = (
        (rest != "", "has a path or trailing slash; an origin is scheme://host[:port] only"),
        ("@" in authority, "has userinfo; browsers never send it in Origin"),
        (value != value.lower(), "has upper case; browsers serialize origins in lower case"),
        (re.search(r"\.(:|$)", authority) is not None, "host ends with a dot"),
        (authority.endswith(":" + DEFAULT_PORTS.get(scheme, "-")), "writes out the default port"),
    )
    for bad, reason in problems:
        if bad:
            raise CorsConfigError(key, f"{value!r} {reason}")
    if ORIGIN_RE.fullmatch(value.encode()) is None:
        raise CorsConfigError(key, f"{value!r} is not a serialized origin scheme://host[:port]")


def _check_wildcard(key: str, value: str) -> tuple[bytes, bytes, bytes | None]:
    m = WILDCARD_RE.fullmatch(value)
    if m is None:
        raise CorsConfigError(key, f"{value!r}: a wildcard must be exactly scheme://*.suffix[:port]")
    if m["port"] is not None and m["port"] == DEFAULT_PORTS.get(m["scheme"]):
        raise CorsConfigError(key, f"{value!r} writes out the default port")
    port = m["port"].encode() if m["port"] else None
    return m["scheme"].encode(), b"." + m["suffix"].encode(), port


def _host_has_loose_dot(pattern: str) -> bool:
    """Heuristic: an unescaped ``.`` outside a class after ``://`` matches any byte (contosoXcom)."""
    start = pattern.find("://")
    i, in_class = (start + 3 if start >= 0 else 0), False
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            i += 2
            continue
        if in_class:
            in_class = c != "]"
        elif c == "[":
            in_class = True
            i += 2 if pattern[i + 1 : i + 2] == "^" else 1
            if pattern[i : i + 1] == "]":  # a "]" first in a class is a member, not its end
                i += 1
            continue
        elif c == ".":
            return True
        i += 1
    return False


def _check_pattern(key: str, pattern: str) -> re.Pattern[bytes]:
    # Matching uses fullmatch anyway; the anchors are demanded so the intent is explicit and the
    # pattern stays safe wherever else it gets copied.
    if not pattern.startswith("^") or END_ANCHOR_RE.search(pattern) is None:
        raise CorsConfigError(key, f"{pattern!r} must be anchored: ^...$ (or ^...\\Z)")
    try:
        compiled = re.compile(pattern.encode())
    except re.error as e:
        raise CorsConfigError(key, f"{pattern!r} does not compile: {e}") from None
    if _host_has_loose_dot(pattern):
        raise CorsConfigError(key, f"{pattern!r} has an unescaped '.' in the host part; write \\.")
    return compiled


@dataclass(frozen=True, slots=True)
class CorsSettings:
    """Validated ``[site.cors]``: what the operator wrote, normalized (header names lower-cased)."""

    mode: str = "origin"
    allow_origins: tuple[str, ...] = ()
    allow_origin_patterns: tuple[str, ...] = ()
    allow_methods: tuple[str, ...] = ("GET", "HEAD")
    allow_headers: tuple[str, ...] = ()
    expose_headers: tuple[str, ...] = ()
    allow_credentials: bool = False
    max_age: int | None = None
    allow_null: bool = False
    reject_disallowed: bool = False
    timing_allow: bool = False


def _check_types(keys: dict[str, object]) -> None:
    for key, value in keys.items():
        if key not in SETTINGS:
            raise CorsConfigError(key, f"unknown key (known: {', '.join(sorted(SETTINGS))})")
        expected = SETTINGS[key]
        if not isinstance(value, expected) or (isinstance(value, bool) and expected is not bool):
            raise CorsConfigError(key, f"has the wrong type {type(value).__name__}")
    if keys.get("mode", "origin") not in MODES:
        raise CorsConfigError("mode", f"{keys['mode']!r} is not one of {', '.join(sorted(MODES))}")
    edge_keys = sorted(EDGE_ONLY & keys.keys())
    if keys.get("mode", "origin") == "origin" and edge_keys:
        raise CorsConfigError(edge_keys[0], 'only applies with mode = "edge"')


def _check_tokens(key: str, values: tuple[str, ...], credentials: bool, lower: bool) -> tuple[str, ...]:
    """Method or field names: RFC 9110 tokens; ``*`` (any) is refused with credentials."""
    for i, v in enumerate(values):
        if TOKEN_RE.fullmatch(v.encode()) is None:
            raise CorsConfigError(f"{key}[{i}]", f"{v!r} is not an HTTP token")
        if v == "*" and credentials:
            raise CorsConfigError(f"{key}[{i}]", '"*" is a literal name for credentialed requests')
    return tuple(v.lower() for v in values) if lower else tuple(values)


def _check_origins(origins: tuple[str, ...], credentials: bool, allow_null: bool) -> None:
    if "*" in origins:
        if len(origins) != 1:
            raise CorsConfigError("allow_origins", '"*" already allows every origin; list it alone')
        if credentials:
            raise CorsConfigError("allow_credentials", 'cannot be combined with allow_origins = ["*"]')
        return
    for i, value in enumerate(origins):
        if "*" in value:
            _check_wildcard(f"allow_origins[{i}]", value)
        else:
            _check_origin(f"allow_origins[{i}]", value, allow_null)


def validate(keys: dict[str, object]) -> CorsSettings:
    """Check ``[site.cors]`` keys; raise CorsConfigError naming the first bad key."""
    _check_types(keys)
    lists = {k: tuple(_check_list(k, v)) for k, v in keys.items() if isinstance(v, (list, tuple))}
    s = CorsSettings(**{**keys, **lists})  # type: ignore[arg-type]
    creds = s.allow_credentials
    _check_origins(s.allow_origins, creds, s.allow_null)
    if s.allow_null and creds:
        raise CorsConfigError("allow_null", "with credentials, any sandboxed document could read")
    for i, p in enumerate(s.allow_origin_patterns):
        _check_pattern(f"allow_origin_patterns[{i}]", p)
    if s.max_age is not None and not 0 <= s.max_age <= MAX_AGE_LIMIT:
        raise CorsConfigError("max_age", f"must be between 0 and {MAX_AGE_LIMIT} seconds")
    tokens = {k: _check_tokens(k, getattr(s, k), creds, lower=k != "allow_methods") for k in TOKEN_KEYS}
    return replace(s, **tokens)


class CorsPolicy:
    """One site's compiled CORS policy. Build with ``from_settings``; methods are pure and cheap."""

    __slots__ = ("settings", "mode", "any_origin", "_exact", "_wildcards", "_patterns", "_memo", "_after_acao",
                 "_static", "_methods", "_any_method", "_methods_value", "_headers", "_any_header", "_max_age")

    def __init__(self, settings: CorsSettings) -> None:
        s = settings
        self.settings = s
        self.mode = s.mode
        self.any_origin = s.allow_origins == ("*",)
        # Fields that follow ACAO, the same for every allowed origin (TAO is added per origin).
        after: Headers = []
        if s.allow_credentials:
            after.append((b"access-control-allow-credentials", b"true"))
        if s.expose_headers:
            after.append((b"access-control-expose-headers", ", ".join(s.expose_headers).encode()))
        self._after_acao = after
        static: Headers = [(b"access-control-allow-origin", b"*"), *after]
        if s.timing_allow:
            static.append((b"timing-allow-origin", b"*"))
        self._static = (static, serialize_fields(static))
        exact = [o.encode() for o in s.allow_origins if "*" not in o]
        if s.allow_null and b"null" not in exact:
            exact.append(b"null")
        self._exact: dict[bytes, tuple[Headers, bytes]] = {o: self._build(o) for o in exact}
        wild = [o for o in s.allow_origins if "*." in o]
        self._wildcards = tuple(_check_wildcard("allow_origins", o) for o in wild)
        self._patterns = tuple(re.compile(p.encode()) for p in s.allow_origin_patterns)
        self._memo: dict[bytes, tuple[Headers, bytes] | None] = {}
        self._methods = frozenset(m.encode() for m in s.allow_methods)
        self._any_method = "*" in s.allow_methods
        self._methods_value = ", ".join(m for m in s.allow_methods if m != "*").encode()
        self._headers = frozenset(h.encode() for h in s.allow_headers)
        self._any_header = "*" in s.allow_headers
        self._max_age = None if s.max_age is None else str(s.max_age).encode()

    @classmethod
    def from_settings(cls, **keys: object) -> CorsPolicy:
        """Validate ``[site.cors]`` keys (CorsConfigError names the bad one) and compile them."""
        return cls(validate(keys))

    def __eq__(self, other: object) -> bool:  # config reload compares sites: equal settings, equal policy
        return isinstance(other, CorsPolicy) and other.settings == self.settings

    def __hash__(self) -> int:
        return hash(self.settings)

    def __repr__(self) -> str:
        return f"CorsPolicy({self.settings!r})"

    def describe(self) -> dict[str, object]:
        """The validated settings as plain values (config dumps)."""
        return asdict(self.settings)

    def _build(self, origin: bytes) -> tuple[Headers, bytes]:
        fields: Headers = [VARY_ORIGIN_FIELD, (b"access-control-allow-origin", origin), *self._after_acao]
        if self.settings.timing_allow:
            fields.append((b"timing-allow-origin", origin))
        return fields, serialize_fields(fields)

    def _matches(self, origin: bytes) -> bool:
        m = ORIGIN_RE.fullmatch(origin)
        if m is None:
            return False
        scheme, host, port = m["scheme"], m["host"], m["port"]
        for w_scheme, w_suffix, w_port in self._wildcards:
            # The grammar forbids empty labels, so a suffix match is always on a label boundary
            # with at least one label before it (the bare suffix never matches).
            if scheme == w_scheme and port == w_port and host.endswith(w_suffix):
                return True
        return any(p.fullmatch(origin) is not None for p in self._patterns)

    def _allowed(self, origin: bytes | None) -> tuple[Headers, bytes] | None:
        """The prepared fields for an allowed origin, None when not allowed (or no Origin)."""
        if origin is None:
            return None
        if self.any_origin:
            return self._static
        hit = self._exact.get(origin)
        if hit is not None:
            return hit
        if origin in self._memo:
            return self._memo[origin]
        if len(origin) > MAX_ORIGIN_LEN:
            return None
        built = self._build(origin) if self._matches(origin) else None
        if len(self._memo) >= MEMO_CAP:
            del self._memo[next(iter(self._memo))]  # oldest first: insertion order
        self._memo[origin] = built
        return built

    def is_allowed(self, origin: bytes) -> bool:
        return self._allowed(origin) is not None

    def reject(self, origin: bytes | None) -> bool:
        """True when a normal request must get 403: reject_disallowed and a disallowed Origin.
        Requests without Origin (navigations, curl, <img>) are never rejected."""
        return self.settings.reject_disallowed and origin is not None and self._allowed(origin) is None

    def response_headers(self, origin: bytes | None) -> Headers:
        """Fields to append to every response of an edge-mode site, for this request's Origin.
        Always ``vary: origin`` unless the policy is a static ``*`` (then ACAO ``*`` always)."""
        if self.any_origin:
            return list(self._static[0])
        allowed = self._allowed(origin)
        return [VARY_ORIGIN_FIELD] if allowed is None else list(allowed[0])

    def response_fields(self, origin: bytes | None) -> bytes:
        """``response_headers`` pre-serialized (``b"vary: origin\\r\\n..."``) for the hit path."""
        if self.any_origin:
            return self._static[1]
        allowed = self._allowed(origin)
        return VARY_ORIGIN_BYTES if allowed is None else allowed[1]

    def preflight(self, origin: bytes | None, request_method: bytes, request_headers: bytes | None) -> Preflight:
        """Answer ``OPTIONS`` + ``Access-Control-Request-Method`` (never forwarded to the origin).
        ``request_headers`` is the raw Access-Control-Request-Headers value, or None."""
        names = _parse_names(request_headers)
        if origin is None or self._allowed(origin) is None or not self._method_ok(request_method) \
                or names is None or not all(self._header_ok(n) for n in names):
            return Preflight(403, [PREFLIGHT_VARY, (b"content-length", b"0")])
        fields: Headers = [(b"access-control-allow-origin", b"*" if self.any_origin else origin)]
        if self.settings.allow_credentials:
            fields.append((b"access-control-allow-credentials", b"true"))
        # The configured list lets the browser's preflight cache cover later methods too; with "*"
        # the requested method is echoed so credentialed requests never see a literal "*".
        fields.append((b"access-control-allow-methods",
                       request_method if self._any_method else self._methods_value))
        if names:
            fields.append((b"access-control-allow-headers", b", ".join(names)))
        if self._max_age is not None:
            fields.append((b"access-control-max-age", self._max_age))
        fields.append(PREFLIGHT_VARY)
        return Preflight(204, fields)

    def _method_ok(self, method: bytes) -> bool:
        return method in self._methods or (self._any_method and TOKEN_RE.fullmatch(method) is not None)

    def _header_ok(self, name: bytes) -> bool:
        # "*" never covers Authorization (Fetch: it must always be named explicitly).
        return name in self._headers or (self._any_header and name != b"authorization")


def _parse_names(value: bytes | None) -> list[bytes] | None:
    """Access-Control-Request-Headers members, lower-cased; None when one is not a token."""
    names = [p.strip().lower() for p in (value or b"").split(b",") if p.strip()]
    return None if any(TOKEN_RE.fullmatch(n) is None for n in names) else names


def is_preflight(method: bytes, headers: Headers) -> bool:
    """A CORS preflight: OPTIONS carrying Access-Control-Request-Method (Fetch §3.2.2)."""
    return method == b"OPTIONS" and any(k == b"access-control-request-method" for k, _ in headers)


def _varies_by_origin(headers: Headers) -> bool:
    for k, v in headers:
        if k == b"access-control-allow-origin" and v.strip() != b"*":
            return True
        if k == _TIMING and any(p.strip() != b"*" for p in v.split(b",") if p.strip()):
            return True
    return False


def fix_origin_response(headers: Headers) -> Headers:
    """Origin mode: add ``Vary: Origin`` when the origin's ACAO (or Timing-Allow-Origin) is per-origin
    but its Vary forgets Origin, so the cache and the browser's cache key it per Origin.
    Returns ``headers`` itself when nothing needs fixing."""
    if not _varies_by_origin(headers):
        return headers
    vary = {m.lower() for m in get_list(headers, b"vary")}
    if b"origin" in vary or b"*" in vary:
        return headers
    return [*headers, VARY_ORIGIN_FIELD]


def strip_origin_cors(headers: Headers) -> Headers:
    """Edge mode: drop the origin's Access-Control-* and Timing-Allow-Origin fields and remove
    ``origin`` from its Vary (other members stay), so one stored copy serves every Origin."""
    out: Headers = []
    for k, v in headers:
        if k.startswith(_CORS_PREFIX) or k == _TIMING:
            continue
        if k == b"vary":
            v = b", ".join(m for m in (p.strip() for p in v.split(b",")) if m and m.lower() != b"origin")
            if not v:
                continue
        out.append((k, v))
    return out


def keep_origin_cors(answer: Headers, stored: Headers) -> Headers:
    """Origin mode: a response made from a stored one (a 304, 412 or 416 for the client's own conditionals or
    Range) keeps the origin's CORS fields, so a script can read its status; RFC 9110 §15.4.5
    would let a 304 drop them. Returns ``answer`` itself when it has ACAO already or ``stored`` has none (always,
    in edge mode: stored copies carry no CORS fields there)."""
    if any(k == b"access-control-allow-origin" for k, _ in answer):
        return answer
    extra = [(k, v) for k, v in stored if k.startswith(_CORS_PREFIX) or k == _TIMING]
    return [*answer, *extra] if extra else answer


def origin_mode_vary(request_has_origin: bool, headers: Headers) -> tuple[bytes, ...]:
    """Origin mode: extra Vary members for the cache's matching tuple (never sent on the wire).

    - ``ACAO: *`` is the same for everyone: nothing to add.
    - A specific ACAO: ``fix_origin_response`` already added ``Vary: Origin``.
    - No ACAO to a request without Origin (curl, ``<img>``, a navigation): keyed by ``:cors`` so a later CORS
      request for the same URL isn't answered with a copy that can't carry ACAO.
    - No ACAO to a CORS request: the origin refused that Origin; keyed by Origin so an allowed Origin never
      gets the refusal (pitfall 3).
    """
    for k, _ in headers:
        if k == b"access-control-allow-origin":
            return ()
    return (b"origin",) if request_has_origin else (b":cors",)
