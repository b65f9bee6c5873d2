"""Sites: which configured site answers a request, by its Host (pure).

Rules kept here:
- Host is normalized before matching and before it enters a cache key: lower-case, no trailing dot, no default
  port for the listener's scheme, ports without leading zeros, IPv6 literals compressed; anything that is not an
  authority is refused. The same normalization is used for purge, so ``purge --host`` finds entries.
- Matching order: exact names, then the longest ``*.suffix`` (on a label boundary), then ``*``.
- No match answers 421 Misdirected Request (RFC 9110 §15.5.20): this node is not configured for that authority.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from edgeproxy.config import SiteConfig

_DEFAULT_PORTS = {"http": 80, "https": 443}
# RFC 9110 §7.2 / RFC 3986 §3.2.2: an IPv6 literal in brackets, or a name (the characters host names use in
# practice; the rarer sub-delims and percent-encodings of reg-name are refused), then an optional port.
_AUTHORITY = re.compile(r"(?P<host>\[[0-9a-f:.]+\]|[a-z0-9_.-]+)(?::(?P<port>[0-9]{1,5}))?")


def normalize_host(host: bytes, scheme: str) -> str | None:
    """``Host`` field value to its cache-key form; None when it is not a valid authority (the shell answers 400,
    RFC 9112 §3.2). One spelling per authority, so a key can't be split by ``:080`` or ``[0::1]``."""
    try:
        text = host.decode("ascii").strip().lower()
    except UnicodeDecodeError:
        return None
    m = _AUTHORITY.fullmatch(text)
    if m is None:
        return None
    name, port = m["host"], m["port"]
    if name.startswith("["):
        try:
            name = f"[{ipaddress.IPv6Address(name[1:-1]).compressed}]"
        except ValueError:
            return None
    else:
        name = name[:-1] if name.endswith(".") else name  # the root label: "example.com." is "example.com"
        if not all(name.split(".")):  # an empty label: "", ".a", "a..b"
            return None
    if port is None or int(port) == _DEFAULT_PORTS.get(scheme):
        return name
    return f"{name}:{int(port)}" if int(port) <= 65535 else None


@dataclass(frozen=True, slots=True)
class SiteTable:
    exact: dict[str, SiteConfig]
    suffixes: tuple[tuple[str, SiteConfig], ...]  # longest first
    default: SiteConfig | None

    @classmethod
    def build(cls, sites: tuple[SiteConfig, ...]) -> SiteTable:
        exact: dict[str, SiteConfig] = {}
        suffixes: list[tuple[str, SiteConfig]] = []
        default = None
        for site in sites:
            for pattern in site.hosts:
                if pattern == "*":
                    default = default or site
                elif pattern.startswith("*."):
                    suffixes.append((pattern[1:], site))
                else:
                    exact.setdefault(pattern, site)
        suffixes.sort(key=lambda item: -len(item[0]))
        return cls(exact, tuple(suffixes), default)

    def match(self, host: str) -> SiteConfig | None:
        site = self.exact.get(host)
        if site is not None:
            return site
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        site = self.exact.get(name)
        if site is not None:
            return site
        for suffix, candidate in self.suffixes:
            # a port-less pattern matches any port (as exact names do); "*.example.com:8080" only that port
            if name.endswith(suffix) or host.endswith(suffix):
                return candidate
        return self.default
