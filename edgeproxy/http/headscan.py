"""The fast lane's head scanner: one request head in one read, checked strictly, read for what a hit needs.

Rules kept here (``_headscan.c`` is the compiled twin of this module and keeps the same rules, in the same order):
- ``scan(data)`` returns ``(method, target, version, host, keep_alive, origin, referer, user_agent, nfields)`` or
  None. None means "not for the lane": the full parser path reads the bytes as if the lane did not exist (it may
  accept them or refuse them). The scanner refuses nothing itself.
- It accepts a subset of what h11 0.16, llhttp (httptools) and the proxy's own parser seam all accept, so a head it
  takes is one the full path takes the same way (tests/unit/test_headscan.py and the ``headscan`` fuzz target check
  this differentially):
  1. ``data`` is exactly one head: it ends with the first CRLF CRLF and holds nothing after it.
  2. The request line is ``GET`` or ``HEAD`` (case-sensitive), one SP, an origin-form target (``/`` then bytes
     0x21-0x7E but ``#``), one SP, ``HTTP/1.1`` or ``HTTP/1.0``, CRLF.
  3. A field line is a token name (RFC 9110 §5.6.2), ``:``, a value of SP, HTAB and 0x21-0x7E, CRLF; the value is
     returned without its leading and trailing SP/HTAB, and may be empty. Anything else (any control byte, DEL,
     obs-text, a bare CR or LF, obs-fold, whitespace before the colon) is not scanned.
  4. Names are case-insensitive. Exactly one ``Host``, non-empty, of ``A-Za-z0-9.-:[]`` (returned as sent); at most
     one ``Connection``, exactly ``keep-alive`` or ``close`` in any case; none of ``FORBIDDEN`` (each can change the
     answer or the message's framing); at most one ``Origin``; the first ``Referer`` and ``User-Agent`` are
     returned, later ones ignored (as the access log reads them).
  5. keep_alive: HTTP/1.1 unless ``Connection: close``; HTTP/1.0 only with ``Connection: keep-alive``.
  6. ``nfields`` counts the field lines; the caller bounds it (``[server] max_headers``) and the lengths.
- ``fields_named(data, names)``: for a head ``scan`` accepted, each field whose lower-cased name is in ``names``, as
  ``(lower-cased name, trimmed value)`` in order. For any other input the result is unspecified (but it never fails).
- ``scan``/``fields_named`` are the compiled functions when the extension is built (``COMPILED``), else the twins;
  ``EDGEPROXY_PURE_SCAN=1`` in the environment forces the twins. ``scan_c``/``fields_named_c`` are the compiled ones
  or None, for tests.
Pure: no I/O, no clock.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable

Scan = tuple[bytes, bytes, bytes, bytes, bool, bytes | None, bytes | None, bytes | None, int]

# RFC 9110 §5.6.2: tchar = "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" / "-" / "." / "^" / "_" / "`" / "|" / "~"
# / DIGIT / ALPHA
TCHAR: bytes = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

# What a Host value may hold here: a name, an IPv4 or a bracketed IPv6 address, and a port.
HOSTCHAR: bytes = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.-:[]"

# Request fields that can change the answer (directives, credentials, conditionals, ranges), the message's framing
# or the connection's protocol, or that mark a request another proxy or cluster node is passing on.
FORBIDDEN: frozenset[bytes] = frozenset({
    b"cache-control", b"pragma", b"authorization", b"proxy-authorization", b"if-match", b"if-none-match",
    b"if-modified-since", b"if-unmodified-since", b"if-range", b"range", b"expect", b"upgrade", b"content-length",
    b"transfer-encoding", b"te", b"trailer", b"via", b"cdn-loop", b"edgeproxy-cluster", b"max-forwards",
    b"http2-settings",
})

_TOKEN = b"[" + re.escape(TCHAR) + b"]+"
# Rules 1-3 in one fullmatch: a field name can't be empty, so the head ends at the first empty line.
_HEAD = re.compile(rb"(GET|HEAD) (/[\x21\x22\x24-\x7e]*) HTTP/1\.([01])\r\n"
                   rb"((?:" + _TOKEN + rb":[\t\x20-\x7e]*\r\n)*)\r\n")
_HOST = re.compile(b"[" + re.escape(HOSTCHAR) + b"]+")
_OWS = b" \t"
_VERSIONS = {b"1": b"1.1", b"0": b"1.0"}


def scan_py(data: bytes) -> Scan | None:
    """The reference scanner (see the module rules)."""
    if type(data) is not bytes:
        data = bytes(data)
    m = _HEAD.fullmatch(data)
    if m is None:
        return None
    method, target, minor, block = m.groups()
    lines = block.split(b"\r\n")
    lines.pop()  # the block ends with CRLF: nothing after the last one
    host = connection = origin = referer = agent = None
    for line in lines:
        raw, _, value = line.partition(b":")
        name = raw.lower()
        if name in FORBIDDEN:
            return None
        if name == b"host":
            if host is not None:
                return None
            host = value.strip(_OWS)
        elif name == b"connection":
            if connection is not None:
                return None
            connection = value.strip(_OWS).lower()
            if connection != b"keep-alive" and connection != b"close":
                return None
        elif name == b"origin":
            if origin is not None:
                return None
            origin = value.strip(_OWS)
        elif name == b"referer":
            if referer is None:
                referer = value.strip(_OWS)
        elif name == b"user-agent" and agent is None:
            agent = value.strip(_OWS)
    if host is None or _HOST.fullmatch(host) is None:
        return None
    version = _VERSIONS[minor]
    keep_alive = connection != b"close" if minor == b"1" else connection == b"keep-alive"
    return method, target, version, host, keep_alive, origin, referer, agent, len(lines)


def fields_named_py(data: bytes, names: frozenset[bytes]) -> list[tuple[bytes, bytes]]:
    """The reference ``fields_named`` (see the module rules)."""
    if type(data) is not bytes:
        data = bytes(data)
    found: list[tuple[bytes, bytes]] = []
    for line in data.split(b"\r\n")[1:]:
        if not line:
            break
        raw, colon, value = line.partition(b":")
        name = raw.lower()
        if colon and name in names:
            found.append((name, value.strip(_OWS)))
    return found


scan_c: Callable[[bytes], Scan | None] | None
fields_named_c: Callable[[bytes, frozenset[bytes]], list[tuple[bytes, bytes]]] | None
try:
    from edgeproxy.http._headscan import fields_named as fields_named_c
    from edgeproxy.http._headscan import scan as scan_c
except ImportError:  # not built (no compiler where it was installed): the twins answer
    scan_c = fields_named_c = None

scan: Callable[[bytes], Scan | None]
fields_named: Callable[[bytes, frozenset[bytes]], list[tuple[bytes, bytes]]]
if scan_c is not None and fields_named_c is not None and os.environ.get("EDGEPROXY_PURE_SCAN") != "1":
    scan, fields_named, COMPILED = scan_c, fields_named_c, True
else:
    scan, fields_named, COMPILED = scan_py, fields_named_py, False
