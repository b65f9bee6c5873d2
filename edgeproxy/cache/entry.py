"""One stored response: what the hit path writes and what freshness and purge need.

Rules kept here:
- An entry is complete: a body that ended early or disagreed with its framing never becomes an Entry.
- ``head`` is the serialized status line and stored fields (without Age and Cache-Status, which change
  per hit, and without the blank line): a hit appends its per-response fields and writes once.
- Times are seconds since the epoch, passed in by the caller (RFC 9111 §4.2.3 names).
- ``size`` is what the byte-bounded store charges: head + body + a fixed per-entry overhead estimate.
Pure: no I/O, no clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from edgeproxy.http.headers import Headers

# Python object overhead of an Entry, its lists, tuples and index slots, measured with tracemalloc (~1.15-1.34 KiB) on a
# 1 KiB entry (see tests/unit/test_store.py::test_overhead_estimate); charged so that many small objects
# cannot make the process exceed the configured byte bound.
ENTRY_OVERHEAD = 1536


@dataclass(slots=True, eq=False)
class Entry:
    primary_key: str  # scheme://host/target, see cache/key.py
    variant_key: tuple[bytes, ...]  # normalized values of the request fields named by Vary
    vary: tuple[bytes, ...]  # lower-case field names from Vary (empty when none)
    host: str
    path: str  # target: path + query
    status: int
    headers: Headers  # stored fields, as sent to clients (minus Age)
    body: bytes
    head: bytes  # serialize_head(status, headers)
    request_time: float
    response_time: float
    date_value: float
    corrected_initial_age: float
    freshness_lifetime: float
    stale_while_revalidate: float = 0.0
    stale_if_error: float = 0.0
    must_revalidate: bool = False  # must-revalidate, proxy-revalidate or s-maxage (§5.2.2.2, §4.2.4)
    no_cache: bool = False  # unqualified no-cache: validate on every use (§5.2.2.4)
    etag: bytes | None = None
    last_modified: bytes | None = None
    tags: frozenset[str] = field(default_factory=frozenset)
    invalidated: bool = False  # soft purge or §4.4 invalidation: stale from now on
    # When a client's request directive (no-cache, max-age=0, ...) last made the origin validate this response
    # (0: never): a forced request within revalidate_interval of it is answered from here (cache/policy.py).
    validated_at: float = 0.0
    size: int = 0
    # Where the host's shared store keeps it, and which version of that slot this copy is (edgeproxy/shared):
    # a copy in a worker's hot tier is current while the slot map still shows this version. -1: not shared.
    slot: int = -1
    version: int = 0
    # Another variant of the same URL was stored beside it after it (the in-process store's counterpart of the shared
    # store's new sibling versions): the fast lane (proxy/lane.py) then asks the store which variant the full path
    # would choose (cache/policy.select) instead of answering with this one on its own word.
    superseded: bool = False
