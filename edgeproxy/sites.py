"""Sites: which configured site answers a request, by its Host (pure).

Rules kept here:
- Host is normalized before matching and before it enters a cache key: lower-case, no trailing dot, no default
  port for the listener's scheme. The same normalization is used for purge, so ``purge --host`` finds entries.
- Matching order: exact names, then the longest ``*.suffix`` (on a label boundary), then ``*``.
- No match answers 421 Misdirected Request (RFC 9110 §15.5.20): this node is not configured for that authority.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgeproxy.config import SiteConfig

_DEFAULT_PORTS = {"http": ":80", "https": ":443"}


def normalize_host(host: bytes, scheme: str) -> str | None:
    """``Host`` field value to its cache-key form; None when it is not a valid authority."""
    try:
        text = host.decode("ascii").strip().lower()
    except UnicodeDecodeError:
        return None
    if not text or any(c in text for c in " /\\?#@\t,"):
        return None
    default = _DEFAULT_PORTS.get(scheme, "")
    if default and text.endswith(default):
        text = text[: -len(default)]
    name, sep, port = text.rpartition(":") if not text.endswith("]") else (text, "", "")
    if sep and (not port.isdigit() or not name):
        return None
    if not sep:
        name = text
    name = name.rstrip(".")
    if not name:
        return None
    return f"{name}:{port}" if sep else name


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
            if name.endswith(suffix):
                return candidate
        return self.default
