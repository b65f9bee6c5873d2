"""Serialization of response heads to wire bytes, built for the hit path.

Rules kept here:
- Status lines are a table built at import (uvicorn's trick): no formatting per response.
- ``serialize_head`` returns the status line and fields *without* the blank line that ends the head,
  so callers can append per-response fields (Age, Date, Cache-Status, CORS) and then ``CRLF``.
- Values are written as given; callers must have refused CR/LF/NUL before (headers.has_bad_bytes).
Pure: no I/O, no clock.
"""

from __future__ import annotations

from http import HTTPStatus

from edgeproxy.http.headers import Headers

REASONS: dict[int, bytes] = {s.value: s.phrase.encode() for s in HTTPStatus}
REASONS.setdefault(421, b"Misdirected Request")
REASONS.setdefault(508, b"Loop Detected")

STATUS_LINES: dict[int, bytes] = {
    code: b"HTTP/1.1 %d %s\r\n" % (code, reason) for code, reason in REASONS.items()
}


def status_line(status: int, reason: bytes = b"") -> bytes:
    line = STATUS_LINES.get(status)
    if line is not None and not reason:
        return line
    return b"HTTP/1.1 %d %s\r\n" % (status, reason or REASONS.get(status, b""))


def serialize_fields(headers: Headers) -> bytes:
    # Title-case is not needed (field names are case-insensitive) and costs time; h11 writes them as
    # given too. We keep lower-case, like HTTP/2 does.
    return b"".join([k + b": " + v + b"\r\n" for k, v in headers])


def serialize_head(status: int, headers: Headers, reason: bytes = b"") -> bytes:
    """Status line + fields, not terminated: append more fields, then ``b"\\r\\n"``."""
    return status_line(status, reason) + serialize_fields(headers)
