"""The Cache-Status response field (RFC 9211), built from prepared bytes.

Rules kept here:
- Owns the field's syntax: one list member per cache, ``name; param; param=value`` (a Structured
  Fields list, RFC 8941). This cache writes exactly one member.
- Parameters used: ``hit``, ``fwd`` (one of FWD_VALUES), ``fwd-status``, ``stored``, ``collapsed``,
  ``ttl`` (seconds, negative for stale hits), ``key`` and ``detail`` (sf-strings).
- The frequent members are prefixes prepared once per cache name; a hit appends only the ttl digits.
- Never formats a float: ttl is floored to an integer (RFC 9211 §2.4 says an integer).
Pure: no I/O, no clock.
"""

from __future__ import annotations

import math

# RFC 9211 §2.2.
FWD_VALUES: tuple[str, ...] = ("bypass", "method", "uri-miss", "vary-miss", "miss", "request", "stale", "partial")
_SF_STRING_SAFE = frozenset(range(0x20, 0x7F)) - {0x22, 0x5C}


def sf_string(value: str | bytes) -> bytes:
    """An RFC 8941 sf-string: quotes and backslashes escaped, other non-printables dropped."""
    raw = value.encode("latin-1", "replace") if isinstance(value, str) else value
    out = bytearray(b'"')
    for c in raw:
        if c in _SF_STRING_SAFE:
            out.append(c)
        elif c in (0x22, 0x5C):
            out += b"\\" + bytes((c,))
    out.append(0x22)
    return bytes(out)


def _int(seconds: float) -> bytes:
    return b"%d" % math.floor(seconds)


class CacheStatus:
    """Cache-Status values for one cache name (``CachePolicy.cache_name``)."""

    __slots__ = ("name", "_hit", "_fwd")

    def __init__(self, name: bytes = b"edgeproxy") -> None:
        self.name = name
        self._hit = name + b"; hit; ttl="
        self._fwd = {fwd: name + b"; fwd=" + fwd.encode() for fwd in FWD_VALUES}

    def hit(self, ttl: float, *, key: str | None = None, detail: str | None = None) -> bytes:
        value = self._hit + b"%d" % math.floor(ttl)  # every hit: _int inlined
        return value if key is None and detail is None else _tail(value, key, detail)

    def forward(
        self,
        fwd: str,
        *,
        fwd_status: int | None = None,
        stored: bool = False,
        collapsed: bool = False,
        ttl: float | None = None,
        key: str | None = None,
        detail: str | None = None,
    ) -> bytes:
        """A member for a request that went to the origin (or would have: ``collapsed``)."""
        value = self._fwd[fwd]
        if fwd_status is not None:
            value += b"; fwd-status=%d" % fwd_status
        if stored:
            value += b"; stored"
        if collapsed:
            value += b"; collapsed"
        if ttl is not None:
            value += b"; ttl=" + _int(ttl)
        return _tail(value, key, detail)

    def plain(self, *, key: str | None = None, detail: str | None = None) -> bytes:
        """A member with neither hit nor fwd, e.g. an only-if-cached 504 (``detail="only-if-cached"``)."""
        return _tail(self.name, key, detail)


def _tail(value: bytes, key: str | None, detail: str | None) -> bytes:
    if key is not None:
        value += b"; key=" + sf_string(key)
    if detail is not None:
        value += b"; detail=" + sf_string(detail)
    return value
