"""Freshness lifetime and age of stored responses (RFC 9111 §4.2).

Rules kept here:
- Owns §4.2.1 (lifetime), §4.2.2 (heuristic lifetime) and §4.2.3 (age). Every function takes the
  times it needs as arguments (epoch seconds); nothing here reads a clock.
- Lifetime precedence for this shared cache: a targeted field (CDN-Cache-Control, then
  Surrogate-Control, RFC 9213) replaces Cache-Control and Expires; then s-maxage, max-age,
  Expires - Date, and last the heuristic.
- An invalid Expires means "already expired" (RFC 9111 §5.3). An invalid Age (not one line of
  digits: a list, a parameter, a sign, a fraction) makes the response stale, as §4.2.1 encourages for
  invalid freshness information; overflow clamps to 2^31 (§1.2.2).
- Heuristic freshness only for the statuses RFC 9110 §15.1 lists as heuristically cacheable, or when
  the response says ``public``; it is a fraction of (Date - Last-Modified), capped by the caller.
- A missing or invalid Date is replaced by the response time (RFC 9111 §4.2.3, date_value).
Pure: no I/O, no clock.
"""

from __future__ import annotations

from edgeproxy.cache.entry import Entry
from edgeproxy.http.cachecontrol import DELTA_MAX, Directives, seconds
from edgeproxy.http.dates import parse_http_date
from edgeproxy.http.headers import Headers, get, get_all

# RFC 9110 §15.1: status codes that are heuristically cacheable.
HEURISTIC_STATUSES: frozenset[int] = frozenset({200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501})

AGE_INVALID = float(DELTA_MAX)


def age_value(headers: Headers) -> float:
    """RFC 9111 §5.1 Age as received; AGE_INVALID when present but not a single delta-seconds."""
    values = get_all(headers, b"age")
    if not values:
        return 0.0
    if len(values) != 1 or not values[0].isdigit():
        return AGE_INVALID
    return float(min(int(values[0]), DELTA_MAX))


def date_value(headers: Headers, response_time: float) -> float:
    parsed = parse_http_date(get(headers, b"date"))
    return response_time if parsed is None else parsed


def explicit_lifetime(cc: Directives, targeted: bool, headers: Headers, date: float) -> float | None:
    """§4.2.1 explicit lifetime for a shared cache, or None when the response gives none."""
    for directive in ("s-maxage", "max-age"):
        value = seconds(cc, directive)
        if value is not None:
            return float(value)
    if targeted:  # RFC 9213 §2.1: Expires is ignored along with Cache-Control
        return None
    expires = get(headers, b"expires")
    if expires is None:
        return None
    parsed = parse_http_date(expires)
    return 0.0 if parsed is None else max(0.0, parsed - date)


def heuristic_lifetime(
    status: int, cc: Directives, headers: Headers, date: float, fraction: float, cap: float
) -> float | None:
    """§4.2.2: ``fraction`` of the time since Last-Modified, at most ``cap``; None when not allowed."""
    if status not in HEURISTIC_STATUSES and "public" not in cc:
        return None
    last_modified = parse_http_date(get(headers, b"last-modified"))
    if last_modified is None:
        return None
    return min(cap, max(0.0, (date - last_modified) * fraction))


def freshness_lifetime(
    status: int,
    headers: Headers,
    cc: Directives,
    targeted: bool,
    date: float,
    fraction: float,
    cap: float,
    max_ttl: float = 0.0,
) -> float:
    lifetime = explicit_lifetime(cc, targeted, headers, date)
    if lifetime is None:
        lifetime = heuristic_lifetime(status, cc, headers, date, fraction, cap) or 0.0
    if max_ttl > 0.0:
        lifetime = min(lifetime, max_ttl)
    return lifetime


def corrected_initial_age(headers: Headers, date: float, request_time: float, response_time: float) -> float:
    """§4.2.3: the larger of the apparent age and the Age received plus the response delay."""
    apparent_age = max(0.0, response_time - date)
    response_delay = max(0.0, response_time - request_time)
    return max(apparent_age, age_value(headers) + response_delay)


def current_age(entry: Entry, now: float) -> float:
    return entry.corrected_initial_age + max(0.0, now - entry.response_time)


def ttl(entry: Entry, now: float) -> float:
    """Seconds of freshness left; negative once stale (RFC 9211 ``ttl``)."""
    return entry.freshness_lifetime - current_age(entry, now)


def staleness(entry: Entry, now: float) -> float:
    """How long the entry has been stale (0 while fresh)."""
    return max(0.0, -ttl(entry, now))
