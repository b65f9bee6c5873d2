"""The closed set of what became of a request, as one label: the access log's ``cache=``, the metrics'
``edgeproxy_requests_total{cache=...}`` and the headline ``stats`` figures all read this one enum.

``Cache-Status`` (RFC 9211) says more per response (fwd reasons, ttl, details); this is its summary:
- ``HIT``: answered from a fresh stored response (also by the fast lane);
- ``STALE``: answered from a stale one (stale-while-revalidate, stale-if-error, max-stale);
- ``MISS``: fetched from the origin to be stored (whether or not it could be);
- ``REVALIDATED``: a stored response the origin confirmed with 304;
- ``PASS``: sent to the origin with no intent to store (method, Range on a miss), or an OPTIONS answered here
  (a preflight, ``OPTIONS *``, ``Max-Forwards: 0``);
- ``COLLAPSED``: answered from what a concurrent fetch of the same key stored;
- ``ERROR``: an error response made here (client error, origin failure, refused CORS origin, TRACE);
- ``NONE``: no answer went out (the client left first).
Pure: values are the label strings, so an Outcome is usable wherever the string was.
"""

from __future__ import annotations

from enum import StrEnum


class Outcome(StrEnum):
    HIT = "hit"
    STALE = "stale"
    MISS = "miss"
    REVALIDATED = "revalidated"
    PASS = "pass"
    COLLAPSED = "collapsed"
    ERROR = "error"
    NONE = "-"


# Module-level names: the hit path reads a global instead of an attribute of the class.
HIT, STALE, MISS, REVALIDATED = Outcome.HIT, Outcome.STALE, Outcome.MISS, Outcome.REVALIDATED
PASS, COLLAPSED, ERROR, NONE = Outcome.PASS, Outcome.COLLAPSED, Outcome.ERROR, Outcome.NONE
