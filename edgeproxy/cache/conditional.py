"""Client preconditions evaluated against a stored response (RFC 9110 §13), and entity-tag matching.

Rules kept here:
- Owns entity-tag comparison (RFC 9110 §8.8.3.2) and ``respond_from_entry``: what a stored response
  becomes for *this* request: the full stored response (None), a 304, a 412, or (via ranges.py) a
  206 or 416. If-Range is judged here (§13.1.5): a strong entity-tag match, or a date equal to
  Last-Modified; otherwise the Range is ignored and the full response is sent.
- Preconditions in the RFC 9110 §13.2.2 order: If-Match (412), else If-Unmodified-Since (412);
  If-None-Match (weak comparison, 304 for GET/HEAD), else If-Modified-Since (304); then Range.
- If-Modified-Since compares with Last-Modified, or with Date when there is none (RFC 9111 §4.3.2).
- A 304 carries the fields RFC 9110 §15.4.5 names (Cache-Control, Content-Location, Date, ETag,
  Expires, Vary) and Last-Modified; the shell adds Age and Cache-Status as on any hit.
- The common case, a request without preconditions or Range, costs one scan of the request's field
  names and returns None: the hit path writes ``entry.head`` and ``entry.body`` as they are.
Deliberate departure: entity-tags are compared with their quotes stripped, and a lower-case ``w/`` is
read as weak, so origins and clients that forget the quotes still match (no tag is mistaken for a
different one by this).
Pure: no I/O, no clock.
"""

from __future__ import annotations

import re

from edgeproxy.cache.entry import Entry
from edgeproxy.cache.key import CacheRequest
from edgeproxy.cache.ranges import Answer, apply_range
from edgeproxy.http.dates import parse_http_date
from edgeproxy.http.headers import Headers, get

PRECONDITION_FIELDS: frozenset[bytes] = frozenset(
    {b"if-match", b"if-none-match", b"if-modified-since", b"if-unmodified-since", b"range"}
)
# RFC 9110 §15.4.5 plus Last-Modified, in the order they are looked up.
NOT_MODIFIED_FIELDS: frozenset[bytes] = frozenset(
    {b"cache-control", b"content-location", b"date", b"etag", b"expires", b"vary", b"last-modified"}
)
_ETAG = re.compile(rb'(?:[Ww]/)?"[^"]*"|[^\s,]+')


def opaque(tag: bytes) -> tuple[bool, bytes]:
    """(is weak, opaque-tag without quotes) of one entity-tag."""
    weak = tag[:2] in (b"W/", b"w/")
    if weak:
        tag = tag[2:]
    if len(tag) >= 2 and tag[0] == 0x22 and tag[-1] == 0x22:
        tag = tag[1:-1]
    return weak, tag


def weak_match(a: bytes, b: bytes) -> bool:
    return opaque(a)[1] == opaque(b)[1]


def strong_match(a: bytes, b: bytes) -> bool:
    weak_a, tag_a = opaque(a)
    weak_b, tag_b = opaque(b)
    return not weak_a and not weak_b and tag_a == tag_b


def etag_list(value: bytes) -> list[bytes]:
    """Members of If-Match / If-None-Match; commas inside quoted tags do not split."""
    return _ETAG.findall(value)


def _any_match(field: bytes, etag: bytes | None, strong: bool) -> bool:
    tags = etag_list(field)
    if b"*" in tags:
        return True
    if etag is None:
        return False
    compare = strong_match if strong else weak_match
    return any(compare(t, etag) for t in tags)


def _modified_since(entry: Entry, field: bytes) -> bool | None:
    """Whether ``entry`` changed after the date in ``field``; None when the field must be ignored."""
    since = parse_http_date(field)
    if since is None:
        return None
    modified = parse_http_date(entry.last_modified) if entry.last_modified is not None else entry.date_value
    if modified is None:
        return None
    return modified > since


def not_modified(entry: Entry) -> Answer:
    return Answer(304, [(k, v) for k, v in entry.headers if k in NOT_MODIFIED_FIELDS])


def precondition_failed() -> Answer:
    return Answer(412, [(b"content-length", b"0")])


def evaluate(method: bytes, headers: Headers, entry: Entry) -> Answer | None:
    """RFC 9110 §13.2.2 steps 1-4 for a stored response; None when the method may proceed."""
    if_match = get(headers, b"if-match")
    if if_match is not None:
        if not _any_match(if_match, entry.etag, strong=True):
            return precondition_failed()
    else:
        since = get(headers, b"if-unmodified-since")
        if since is not None and entry.last_modified is not None and _modified_since(entry, since):
            return precondition_failed()
    if_none_match = get(headers, b"if-none-match")
    if if_none_match is not None:
        if _any_match(if_none_match, entry.etag, strong=False):
            return not_modified(entry) if method in (b"GET", b"HEAD") else precondition_failed()
        return None
    if method in (b"GET", b"HEAD"):
        since = get(headers, b"if-modified-since")
        if since is not None and _modified_since(entry, since) is False:
            return not_modified(entry)
    return None


def if_range_holds(value: bytes, entry: Entry) -> bool:
    """RFC 9110 §13.1.5: a strong entity-tag match, or exactly the stored Last-Modified."""
    if value[:1] == b'"' or value[:2] in (b"W/", b"w/"):
        return entry.etag is not None and strong_match(value, entry.etag)
    return entry.last_modified is not None and value.strip() == entry.last_modified


def respond_from_entry(req: CacheRequest, entry: Entry) -> Answer | None:
    """What to send for this request from ``entry``: None means the full stored response
    (``entry.head`` + ``entry.body``), otherwise the Answer to send instead."""
    if req.plain:  # none of DECIDING_FIELDS, which hold PRECONDITION_FIELDS
        return None
    headers = req.headers
    for name, _ in headers:
        if name in PRECONDITION_FIELDS:
            break
    else:
        return None
    answer = evaluate(req.method, headers, entry)
    if answer is not None:
        return answer
    range_value = get(headers, b"range")
    if range_value is None:
        return None
    if_range = get(headers, b"if-range")
    if if_range is not None and not if_range_holds(if_range, entry):
        return None
    return apply_range(req.method, range_value, entry)
