"""Entries and purge selectors as bytes, for a store that other processes read (edgeproxy/shared).

Rules kept here:
- ``marshal`` of a flat tuple: the stored fields are str, bytes, floats, ints, bools, None, tuples, lists and a
  frozenset, which marshal writes and reads in C (decoding a 1 KiB entry: ~1 µs on the 2-core dev box, pickle ~1.15
  µs) and, unlike pickle, cannot name a callable to run on load. Its format (``marshal.version``) is part of
  ``FORMAT``: a store written in another format is dropped, never misread.
- What a copy's process sets itself is not encoded: ``slot``, ``version`` and ``invalidated`` come from the
  store's own records (a soft purge rewrites a small record, not the body).
- Selectors travel as their control-socket fields (``KINDS``), so decoding one re-validates it.
Pure: no I/O.
"""

from __future__ import annotations

import marshal
from typing import Any

from edgeproxy.cache.entry import Entry
from edgeproxy.cache.purge import KINDS, Selector, parse_selector

# Bumped whenever the tuple below changes shape or meaning.
LAYOUT = 1
FORMAT = b"edgeproxy-shared-cache layout=%d marshal=%d" % (LAYOUT, marshal.version)


def encode_entry(e: Entry) -> bytes:
    return marshal.dumps((
        e.primary_key, e.variant_key, e.vary, e.host, e.path, e.status, e.headers, e.body, e.head,
        e.request_time, e.response_time, e.date_value, e.corrected_initial_age, e.freshness_lifetime,
        e.stale_while_revalidate, e.stale_if_error, e.must_revalidate, e.no_cache, e.etag, e.last_modified,
        e.tags, e.validated_at, e.size,
    ))


def decode_entry(data: bytes | memoryview) -> Entry:
    """The Entry ``encode_entry`` wrote; ValueError (or marshal's own) when ``data`` is not one."""
    fields = marshal.loads(data)
    if not isinstance(fields, tuple) or len(fields) != 23:
        raise ValueError("not an encoded entry")
    (key, vkey, vary, host, path, status, headers, body, head, request_time, response_time, date_value,
     initial_age, lifetime, swr, sie, must_revalidate, no_cache, etag, last_modified, tags, validated_at,
     size) = fields
    return Entry(key, vkey, vary, host, path, status, headers, body, head, request_time, response_time, date_value,
                 initial_age, lifetime, swr, sie, must_revalidate, no_cache, etag, last_modified, tags,
                 False, validated_at, size)


def selector_fields(selector: Selector) -> dict[str, Any]:
    """``parse_selector``'s input for ``selector``."""
    kind = next(k for k, (cls, _, _) in KINDS.items() if isinstance(selector, cls))
    fields: dict[str, Any] = {"type": kind}
    for name in KINDS[kind][1]:
        value = getattr(selector, name)
        if value is not None:
            fields[name] = sorted(value) if name == "tags" else value
    return fields


def encode_selector(selector: Selector) -> bytes:
    return marshal.dumps(tuple(selector_fields(selector).items()))


def decode_selector(data: bytes | memoryview) -> Selector:
    return parse_selector(dict(marshal.loads(data)))
