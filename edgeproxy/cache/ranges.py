"""Byte ranges served from a complete stored response (RFC 9110 §14).

Rules kept here:
- Owns Range parsing (§14.1.2, §14.2) and the 206 / 416 answers (§15.3.7, §15.5.17). If-Range is
  judged by conditional.py, which calls in here only when the Range may be honoured.
- Only GET ranges are served, and only from a stored 200 (a 206 is never stored: see storability).
- One satisfiable range gives a 206 with Content-Range and the sliced body. A range that starts past
  the end (or a zero-length suffix, or any range of an empty body) gives 416 with
  ``Content-Range: bytes */length``.
- Multiple ranges, other units and syntax errors give the full 200, as §14.2 allows ("a server MAY
  ignore the Range header field"): multipart/byteranges is rarely used and costs a copy of the body.
Pure: no I/O, no clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from edgeproxy.cache.entry import Entry
from edgeproxy.http.headers import Headers

UNSATISFIABLE: Literal["unsatisfiable"] = "unsatisfiable"
# Fields of the stored 200 that describe the whole body, replaced on a 206.
_WHOLE_BODY_FIELDS: frozenset[bytes] = frozenset({b"content-length", b"content-range"})


@dataclass(frozen=True, slots=True)
class Answer:
    """A response made for this request from a stored entry (304, 206, 412, 416)."""

    status: int
    headers: Headers
    body: bytes = b""


def _digits(value: bytes) -> int | None:
    return int(value) if value.isdigit() else None


def parse_range(value: bytes, length: int) -> tuple[int, int] | Literal["unsatisfiable"] | None:
    """First and last byte (inclusive) of a single byte range over ``length`` bytes; UNSATISFIABLE;
    or None when the field is to be ignored (other unit, several ranges, bad syntax)."""
    unit, eq, spec = value.partition(b"=")
    if not eq or unit.strip().lower() != b"bytes" or b"," in spec:
        return None
    first_raw, dash, last_raw = spec.strip().partition(b"-")
    if not dash:
        return None
    if not first_raw:  # suffix-range: the last N bytes
        suffix = _digits(last_raw)
        if suffix is None:
            return None
        if suffix == 0 or length == 0:
            return UNSATISFIABLE
        return max(0, length - suffix), length - 1
    first = _digits(first_raw)
    last = _digits(last_raw) if last_raw else None
    if first is None or (last_raw and last is None) or (last is not None and last < first):
        return None
    if first >= length:
        return UNSATISFIABLE
    return first, length - 1 if last is None else min(last, length - 1)


def partial(entry: Entry, first: int, last: int) -> Answer:
    length = len(entry.body)
    headers = [(k, v) for k, v in entry.headers if k not in _WHOLE_BODY_FIELDS]
    headers.append((b"content-range", b"bytes %d-%d/%d" % (first, last, length)))
    headers.append((b"content-length", b"%d" % (last - first + 1)))
    return Answer(206, headers, entry.body[first : last + 1])


def unsatisfiable(entry: Entry) -> Answer:
    return Answer(416, [(b"content-range", b"bytes */%d" % len(entry.body)), (b"content-length", b"0")])


def apply_range(method: bytes, range_value: bytes, entry: Entry) -> Answer | None:
    """The 206 or 416 for ``Range: range_value``, or None to send the full stored response."""
    if method != b"GET" or entry.status != 200:
        return None
    parsed = parse_range(range_value, len(entry.body))
    if parsed is None:
        return None
    if parsed == UNSATISFIABLE:
        return unsatisfiable(entry)
    first, last = parsed
    return partial(entry, first, last)
