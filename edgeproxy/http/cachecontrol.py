"""Cache-Control and its targeted relatives, parsed once per message (RFC 9111 §5.2, RFC 9213).

Rules kept here:
- Owns the directive grammar: ``token [ "=" ( token / quoted-string ) ]`` separated by commas, over
  every line of the field. Names are case-insensitive and returned lower-case; quoted values are
  unquoted; commas inside quotes do not split.
- The first occurrence of a directive wins (RFC 9111 §4.2.1 allows "first occurrence" for duplicates).
- A malformed member (whitespace around ``=``, an unterminated quote) is dropped, so a directive that
  is not written as the grammar says has no effect.
- ``delta_seconds`` implements RFC 9111 §1.2.2: digits only; values past 2^31 clamp to 2^31. An invalid
  argument returns 0, which makes the response stale: RFC 9111 §4.2.1 encourages treating invalid
  freshness information as stale, and that errs on the side of asking the origin.
- Targeted fields (RFC 9213 §2.1): ``CDN-Cache-Control`` then ``Surrogate-Control``; the first one
  present with a valid member replaces Cache-Control *and* Expires for this cache.
Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Callable

from edgeproxy.http.headers import Headers

Directives = dict[str, str | None]

DELTA_MAX = 2147483648  # RFC 9111 §1.2.2: "the greatest integer it can represent" floor

# RFC 9213 §2.1 preference order for this cache. Surrogate-Control (W3C Edge Architecture) predates it
# and is still sent by many origins; it ranks after the standard field.
TARGETED_FIELDS: tuple[bytes, ...] = (b"cdn-cache-control", b"surrogate-control")

_TCHAR = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _split_members(value: bytes) -> list[bytes]:
    """Comma-separated members; commas inside quoted strings do not split."""
    out: list[bytes] = []
    start = 0
    quoted = False
    i = 0
    n = len(value)
    while i < n:
        c = value[i]
        if quoted:
            if c == 0x5C:  # backslash escapes the next octet inside a quoted-string
                i += 1
            elif c == 0x22:
                quoted = False
        elif c == 0x22:
            quoted = True
        elif c == 0x2C:
            out.append(value[start:i])
            start = i + 1
        i += 1
    if quoted:  # an unterminated quote swallows the rest: drop that member
        out.append(b"")
    else:
        out.append(value[start:])
    return out


def _unquote(raw: bytes) -> bytes | None:
    if len(raw) < 2 or raw[-1] != 0x22:
        return None
    inner = raw[1:-1]
    if b"\\" not in inner:
        return inner
    out = bytearray()
    it = iter(inner)
    for c in it:
        out.append(next(it, c) if c == 0x5C else c)
    return bytes(out)


def _member(member: bytes) -> tuple[str, str | None] | None:
    member = member.strip()
    if not member:
        return None
    name, eq, raw = member.partition(b"=")
    if not name or not all(c in _TCHAR for c in name):
        return None
    if not eq:
        return name.decode("ascii").lower(), None
    if raw[:1] == b'"':
        value = _unquote(raw)
        if value is None:
            return None
    elif raw and all(c in _TCHAR for c in raw):
        value = raw
    else:
        return None
    return name.decode("ascii").lower(), value.decode("latin-1")


def parse_value(value: bytes, into: Directives | None = None) -> Directives:
    """Directives of one field line, added to ``into`` without overwriting earlier ones."""
    out: Directives = {} if into is None else into
    for raw in _split_members(value):
        item = _member(raw)
        if item is not None and item[0] not in out:
            out[item[0]] = item[1]
    return out


def parse(headers: Headers, name: bytes = b"cache-control") -> Directives:
    """All directives of every ``name`` line, first occurrence winning."""
    out: Directives = {}
    for k, v in headers:
        if k == name:
            parse_value(v, out)
    return out


def delta_seconds(value: str | None) -> int:
    """RFC 9111 §1.2.2 delta-seconds; invalid (or missing argument) is 0, overflow clamps to 2^31."""
    if not value or not value.isdigit() or not value.isascii():
        return 0
    return min(int(value), DELTA_MAX)


def seconds(cc: Directives, name: str) -> int | None:
    """delta-seconds argument of directive ``name``, or None when the directive is absent."""
    if name not in cc:
        return None
    return delta_seconds(cc[name])


def field_names(value: str | None) -> frozenset[bytes]:
    """Lower-case field names listed by a qualified ``private="a, b"`` or ``no-cache="a"``."""
    if not value:
        return frozenset()
    return frozenset(n.strip().lower().encode("latin-1") for n in value.split(",") if n.strip())


# Surrogate-Control members that concern caching; ``content="ESI/1.0"`` and the like do not make the
# field replace Cache-Control. no-store-remote addresses surrogates away from the origin, like us.
SURROGATE_DIRECTIVES: dict[str, str] = {"max-age": "max-age", "no-store": "no-store", "no-store-remote": "no-store"}


# The device token this cache announces in ``Surrogate-Capability: edgeproxy="Surrogate/1.0"`` (Edge Architecture
# 1.0 §2.2); directives targeted with ``;edgeproxy`` are ours, ones targeted at another device are ignored.
SURROGATE_DEVICE = "edgeproxy"


def _surrogate_members(headers: Headers, name: bytes) -> list[tuple[str, str | None, str | None]]:
    """``max-age=30;dev, no-store;dev2`` into (directive, argument, device or None) triples.

    The ``;device`` suffix is not Cache-Control grammar, so the members are split here."""
    out = []
    for k, v in headers:
        if k != name:
            continue
        for member in v.decode("latin-1").split(","):
            member, _, device = member.partition(";")
            directive, eq, argument = member.strip().partition("=")
            if not directive or directive != directive.rstrip() or argument != argument.lstrip():
                continue  # whitespace around "=" is not the grammar: dropped, as Cache-Control members are
            out.append((directive.lower(), argument if eq else None, device.strip() or None))
    return out


def _parse_surrogate(headers: Headers, name: bytes) -> Directives:
    """Surrogate-Control (W3C Edge Architecture): ``max-age=N+M`` is a lifetime of N seconds and M
    more seconds during which the stored response may be served if the origin fails. Members targeted at
    this device win over untargeted ones; members targeted at other devices are ignored."""
    value: Directives = {}
    mine: Directives = {}
    for k, v, device in _surrogate_members(headers, name):
        if k not in SURROGATE_DIRECTIVES or (device is not None and device != SURROGATE_DEVICE):
            continue
        (mine if device else value).setdefault(SURROGATE_DIRECTIVES[k], v)
    value.update(mine)
    max_age = value.get("max-age")
    if max_age and "+" in max_age:
        lifetime, _, extension = max_age.partition("+")
        value["max-age"] = lifetime
        value.setdefault("stale-if-error", extension)
    return value


_TARGETED_PARSERS: dict[bytes, Callable[[Headers, bytes], Directives]] = {
    b"cdn-cache-control": parse,
    b"surrogate-control": _parse_surrogate,
}


def effective(headers: Headers) -> tuple[Directives, bool]:
    """The directives this cache obeys and whether they came from a targeted field.

    When targeted, Cache-Control and Expires are to be ignored (RFC 9213 §2.1)."""
    for name in TARGETED_FIELDS:
        if any(k == name for k, _ in headers):
            directives = _TARGETED_PARSERS[name](headers, name)
            if directives:
                return directives, True
    return parse(headers), False
