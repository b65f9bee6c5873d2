"""Header lists as h11 gives them: ``list[tuple[bytes, bytes]]`` with lower-case names.

Rules kept here:
- Names are always lower-case bytes; values are bytes with surrounding whitespace stripped.
- Comma-separated lists are split once per message by ``get_list`` (RFC 9110 §5.6.1).
- Hop-by-hop fields (RFC 9110 §7.6.1) are a table, plus whatever ``Connection`` names.
Pure: no I/O, no clock.
"""

from __future__ import annotations

Headers = list[tuple[bytes, bytes]]

# RFC 9110 §7.6.1, plus the non-standard Proxy-Connection still seen in the wild.
HOP_BY_HOP: frozenset[bytes] = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authenticate",
        b"proxy-authorization",
    }
)


def get(headers: Headers, name: bytes) -> bytes | None:
    """First value of ``name`` or None."""
    for k, v in headers:
        if k == name:
            return v
    return None


def get_all(headers: Headers, name: bytes) -> list[bytes]:
    return [v for k, v in headers if k == name]


def get_list(headers: Headers, name: bytes) -> list[bytes]:
    """All comma-separated members of every ``name`` field, stripped, empties dropped."""
    out: list[bytes] = []
    for k, v in headers:
        if k == name:
            for part in v.split(b","):
                part = part.strip()
                if part:
                    out.append(part)
    return out


def has_token(headers: Headers, name: bytes, token: bytes) -> bool:
    """Case-insensitive membership of ``token`` in the comma list ``name``."""
    token = token.lower()
    return any(p.lower() == token for p in get_list(headers, name))


def connection_tokens(headers: Headers) -> frozenset[bytes]:
    return frozenset(p.lower() for p in get_list(headers, b"connection"))


def strip_hop_by_hop(headers: Headers) -> Headers:
    """Drop hop-by-hop fields and every field that ``Connection`` names (RFC 9110 §7.6.1)."""
    named = connection_tokens(headers)
    if named:
        drop = HOP_BY_HOP | named
        return [(k, v) for k, v in headers if k not in drop]
    return [(k, v) for k, v in headers if k not in HOP_BY_HOP]


def without(headers: Headers, names: frozenset[bytes]) -> Headers:
    return [(k, v) for k, v in headers if k not in names]


def replace(headers: Headers, name: bytes, value: bytes) -> Headers:
    """Headers with every ``name`` removed and one ``name: value`` appended."""
    out = [(k, v) for k, v in headers if k != name]
    out.append((name, value))
    return out


def has_bad_bytes(value: bytes) -> bool:
    """CR, LF or NUL inside a field value: header injection (RFC 9110 §5.5)."""
    return b"\r" in value or b"\n" in value or b"\x00" in value
