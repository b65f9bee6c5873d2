"""Whether a response may be stored, the Entry it becomes, and its update by a 304.

Rules kept here:
- Owns RFC 9111 §3 (storing) and §3.5 (Authorization) for a *shared* cache, §3.1-3.2 (which fields
  are stored and updated) and §4.3.3-4.3.4 (freshening with a 304).
- ``storable`` returns None or the short reason it refuses. Only complete GET responses with a final
  status are stored; 206 is not (ranges are served from complete 200s) and neither is 304.
- Directives come from the targeted field when there is one (CDN-Cache-Control, Surrogate-Control;
  RFC 9213), otherwise from Cache-Control. must-understand refuses unknown statuses and, for known
  ones, overrides no-store (§5.2.2.3).
- Set-Cookie responses are refused unless ``store_set_cookie``; then (and always, on 304 updates) the
  stored copy has no Set-Cookie, so one client's cookie is never handed to another.
- Stored fields: the response's minus hop-by-hop, Age, Set-Cookie, fields named by ``private=`` /
  ``no-cache=`` (§5.2.2.4, §5.2.2.7), the targeted fields we consume and the purge tags
  (Surrogate-Key, Cache-Tag), plus a Date when the origin sent none or an invalid one.
- A cluster peer that asks for an entry gets this cache's decision with it (``decision_fields``): the lifetime,
  stale extensions, revalidation flags and purge tags as a ``CDN-Cache-Control`` and tag fields, which the stored
  head lacks (they are consumed here). The peer stores it as this cache did, tags included, not by the fields a
  browser gets.
- A 304 updates every stored field it carries except the ones describing the stored body
  (NOT_UPDATED_BY_304, §3.2). It only applies to the entry whose validators it matches (§4.3.4).
Deliberate departures:
- A 304 with no validator at all is taken as answering the conditional we built from this entry's
  validators (§4.3.4 spells out only the validator-less stored response case).
- Freshness after a 304 is computed from the updated fields plus the 304's own targeted fields; a 304
  that omits CDN-Cache-Control is judged by Cache-Control (origins send the same fields on 304s).
Pure: no I/O, no clock.
"""

from __future__ import annotations

from edgeproxy.cache.conditional import strong_match, weak_match
from edgeproxy.cache.entry import ENTRY_OVERHEAD, Entry
from edgeproxy.cache.freshness import (
    HEURISTIC_STATUSES,
    corrected_initial_age,
    date_value,
    freshness_lifetime,
)
from edgeproxy.cache.key import CacheRequest, primary_key, variant_key, vary_names
from edgeproxy.cache.policy import DEFAULT_POLICY, CachePolicy, request_directives
from edgeproxy.http.cachecontrol import (
    TARGETED_FIELDS,
    Directives,
    delta_seconds,
    effective,
    field_names,
    parse,
)
from edgeproxy.http.dates import format_http_date, parse_http_date
from edgeproxy.http.headers import Headers, get, get_list, strip_hop_by_hop
from edgeproxy.http.wire import REASONS, serialize_head

# Statuses whose semantics this cache implements (must-understand, §5.2.2.3): the registered final
# ones, except those it never stores.
NEVER_STORED: dict[int, str] = {206: "partial", 304: "status"}
UNDERSTOOD_STATUSES: frozenset[int] = frozenset(s for s in REASONS if s >= 200 and s not in NEVER_STORED)
TAG_FIELDS: frozenset[bytes] = frozenset({b"surrogate-key", b"cache-tag"})
# Consumed by this cache, never stored or sent on: Age is regenerated per hit.
CONSUMED_FIELDS: frozenset[bytes] = frozenset({b"age", b"set-cookie", *TARGETED_FIELDS, *TAG_FIELDS})
# §3.2: fields that describe the stored body as received; a 304 cannot change them.
NOT_UPDATED_BY_304: frozenset[bytes] = frozenset(
    {b"content-length", b"content-encoding", b"content-range", b"content-md5", b"transfer-encoding"}
)
# §3.5: a shared cache may store an answer to an authenticated request only with one of these.
AUTHORIZED_STORE_DIRECTIVES: tuple[str, ...] = ("must-revalidate", "public", "s-maxage")
MUST_REVALIDATE_DIRECTIVES: tuple[str, ...] = ("must-revalidate", "proxy-revalidate", "s-maxage")


def _has(headers: Headers, name: bytes) -> bool:
    return any(k == name for k, _ in headers)


def _unqualified(cc: Directives, name: str) -> bool:
    """``no-cache`` / ``private`` without a field-name list (which only restricts those fields)."""
    return name in cc and cc[name] is None


def _directive_reason(req: CacheRequest, status: int, cc: Directives, opts: CachePolicy) -> str | None:
    if "must-understand" in cc:
        if status not in UNDERSTOOD_STATUSES:
            return "must-understand"
    elif "no-store" in cc:
        return "no-store"
    if "no-store" in request_directives(req, opts):
        return "request-no-store"
    if _unqualified(cc, "private"):
        return "private"
    if _has(req.headers, b"authorization") and not any(d in cc for d in AUTHORIZED_STORE_DIRECTIVES):
        return "authorization"
    return None


def _lifetime_reason(status: int, headers: Headers, cc: Directives, targeted: bool) -> str | None:
    """§3: explicit freshness, or a heuristically cacheable (or public) response that can be validated."""
    validator = _has(headers, b"etag") or _has(headers, b"last-modified")
    if _unqualified(cc, "no-cache") and not validator:
        return "no-cache"  # every use would be an unconditional fetch: storing it only costs memory
    if "max-age" in cc or "s-maxage" in cc or (not targeted and _has(headers, b"expires")):
        return None
    if status not in HEURISTIC_STATUSES and "public" not in cc:
        return "status"
    return None if validator else "no-validator-or-lifetime"


def storable(
    req: CacheRequest, status: int, resp_headers: Headers, opts: CachePolicy = DEFAULT_POLICY
) -> str | None:
    """None when this response to ``req`` may be stored, else the reason it may not (RFC 9111 §3)."""
    if req.method != b"GET":
        return "method"
    if status < 200 or status in NEVER_STORED:
        return NEVER_STORED.get(status, "status")
    cc, targeted = effective(resp_headers)
    reason = _directive_reason(req, status, cc, opts)
    if reason is not None:
        return reason
    if not opts.store_set_cookie and _has(resp_headers, b"set-cookie"):
        return "set-cookie"
    if vary_names(resp_headers) == (b"*",):
        return "vary-star"
    return _lifetime_reason(status, resp_headers, cc, targeted)


def parse_tags(headers: Headers) -> frozenset[str]:
    """Purge tags: Surrogate-Key is space-separated, Cache-Tag comma-separated."""
    tags = {t.decode("latin-1") for k, v in headers if k == b"surrogate-key" for t in v.split()}
    tags.update(t.decode("latin-1") for t in get_list(headers, b"cache-tag"))
    return frozenset(tags)


def decision_fields(entry: Entry) -> Headers:
    """What this cache decided about ``entry``, as fields another edgeproxy obeys (RFC 9213 targeted field, purge
    tags): sent with the entry to a cluster peer, whose stored copy then lives and is purged as this one is."""
    directives = [b"public", b"max-age=%d" % entry.freshness_lifetime]
    if entry.stale_while_revalidate:
        directives.append(b"stale-while-revalidate=%d" % entry.stale_while_revalidate)
    if entry.stale_if_error:
        directives.append(b"stale-if-error=%d" % entry.stale_if_error)
    if entry.must_revalidate:
        directives.append(b"must-revalidate")
    if entry.no_cache:
        directives.append(b"no-cache")
    out = [(b"cdn-cache-control", b", ".join(directives))]
    keys = sorted(t for t in entry.tags if " " not in t)  # Surrogate-Key is space-separated, Cache-Tag comma-
    listed = sorted(t for t in entry.tags if " " in t)
    if keys:
        out.append((b"surrogate-key", " ".join(keys).encode("latin-1")))
    if listed:
        out.append((b"cache-tag", ", ".join(listed).encode("latin-1")))
    return out


def _withheld(headers: Headers, cc: Directives, targeted: bool) -> frozenset[bytes]:
    """Fields named by ``private=`` / ``no-cache=``. Cache-Control's lists count even when a targeted
    field rules freshness: an origin that marks a field private never wants it shared."""
    named = field_names(cc.get("private")) | field_names(cc.get("no-cache"))
    if targeted:
        plain = parse(headers)
        named |= field_names(plain.get("private")) | field_names(plain.get("no-cache"))
    return named


def stored_headers(headers: Headers, drop: frozenset[bytes], date: float | None, response_time: float) -> Headers:
    """The fields kept in the store and sent on hits: minus hop-by-hop, CONSUMED_FIELDS and ``drop``."""
    drop = CONSUMED_FIELDS | drop
    out = [(k, v) for k, v in strip_hop_by_hop(headers) if k not in drop]
    if date is None:
        out = [(k, v) for k, v in out if k != b"date"]
        out.append((b"date", format_http_date(response_time)))
    return out


def _blank(
    key: str, vkey: tuple[bytes, ...], vary: tuple[bytes, ...], host: str, path: str, status: int,
    body: bytes, tags: frozenset[str],
) -> Entry:
    """An Entry with its identity set; ``_build`` fills what the response headers decide."""
    return Entry(
        primary_key=key, variant_key=vkey, vary=vary, host=host, path=path, status=status, headers=[],
        body=body, head=b"", request_time=0.0, response_time=0.0, date_value=0.0,
        corrected_initial_age=0.0, freshness_lifetime=0.0, tags=tags,
    )


def _build(
    shape: Entry, headers: Headers, request_time: float, response_time: float, opts: CachePolicy
) -> Entry:
    """Fill the response-derived fields of ``shape`` (keys, status, body already set) from ``headers``."""
    cc, targeted = effective(headers)
    parsed_date = parse_http_date(get(headers, b"date"))
    date = date_value(headers, response_time)
    stored = stored_headers(headers, _withheld(headers, cc, targeted), parsed_date, response_time)
    shape.headers = stored
    shape.head = serialize_head(shape.status, stored)
    shape.request_time = request_time
    shape.response_time = response_time
    shape.date_value = date
    shape.corrected_initial_age = corrected_initial_age(headers, date, request_time, response_time)
    shape.freshness_lifetime = freshness_lifetime(
        shape.status, headers, cc, targeted, date, opts.heuristic_fraction, opts.heuristic_max, opts.max_ttl
    )
    shape.stale_while_revalidate = float(delta_seconds(cc.get("stale-while-revalidate")))
    shape.stale_if_error = float(delta_seconds(cc.get("stale-if-error")))
    shape.must_revalidate = any(d in cc for d in MUST_REVALIDATE_DIRECTIVES)
    shape.no_cache = _unqualified(cc, "no-cache")
    shape.etag = get(stored, b"etag")
    shape.last_modified = get(stored, b"last-modified")
    shape.invalidated = False
    shape.size = len(shape.head) + len(shape.body) + ENTRY_OVERHEAD
    return shape


def make_entry(
    req: CacheRequest,
    status: int,
    resp_headers: Headers,
    body: bytes,
    request_time: float,
    response_time: float,
    opts: CachePolicy = DEFAULT_POLICY,
    extra_vary: tuple[bytes, ...] = (),
) -> Entry:
    """The Entry for a response that ``storable`` accepted. ``extra_vary`` adds pseudo fields
    (``b":cors"``) to the matching tuple; they never reach the wire."""
    vary = tuple(dict.fromkeys(vary_names(resp_headers) + extra_vary))
    shape = _blank(primary_key(req, opts.query_mode), variant_key(req, vary), vary, req.host,
                   req.target.decode("latin-1"), status, body, parse_tags(resp_headers))
    return _build(shape, resp_headers, request_time, response_time, opts)


def validates(entry: Entry, resp_304_headers: Headers) -> bool:
    """§4.3.4: whether a 304 applies to ``entry``. A strong ETag must match strongly, a weak one
    weakly, else Last-Modified must be the same; a 304 without validators answers our conditional.
    When False the shell fetches the response again without conditions."""
    etag = get(resp_304_headers, b"etag")
    if etag is not None:
        if entry.etag is None:
            return False
        return weak_match(etag, entry.etag) if etag[:2] in (b"W/", b"w/") else strong_match(etag, entry.etag)
    last_modified = get(resp_304_headers, b"last-modified")
    if last_modified is not None:
        return entry.last_modified is not None and (
            parse_http_date(last_modified) == parse_http_date(entry.last_modified)
        )
    return True


def freshen(
    entry: Entry,
    resp_304_headers: Headers,
    request_time: float,
    response_time: float,
    opts: CachePolicy = DEFAULT_POLICY,
) -> Entry:
    """A new Entry: ``entry`` updated with a matching 304 (§4.3.4), same body, no longer invalidated."""
    update = [(k, v) for k, v in strip_hop_by_hop(resp_304_headers) if k not in NOT_UPDATED_BY_304]
    if parse_http_date(get(update, b"date")) is None:  # the 304 is the newest message: date it
        update = [(k, v) for k, v in update if k != b"date"]
        update.append((b"date", format_http_date(response_time)))
    replaced = {k for k, _ in update}
    merged = [(k, v) for k, v in entry.headers if k not in replaced] + update
    tags = parse_tags(resp_304_headers) if replaced & TAG_FIELDS else entry.tags
    shape = _blank(entry.primary_key, entry.variant_key, entry.vary, entry.host, entry.path, entry.status,
                   entry.body, tags)
    return _build(shape, merged, request_time, response_time, opts)
