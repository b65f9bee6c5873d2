"""Proxy counters and their Prometheus text exposition.

Rules kept here:
- The hot path touches only ``ProxyCounters``: a ``__slots__`` object of ints, small dicts and a bucket list,
  incremented in place with no locks, no label lookups and no prometheus_client objects. The shell owns one
  per worker; a worker is single-threaded, so nothing here is synchronised.
- prometheus_client is used only to render: each scrape builds a private ``CollectorRegistry`` around one
  collector that turns a snapshot into metric families. The global default registry is never touched (it
  would mix in process metrics of whichever worker answers) and no exporter thread is started; the server
  serves ``render()``'s bytes on its own loop with ``CONTENT_TYPE``.
- Snapshots (``to_dict``) are plain JSON-able dicts so a supervisor can collect them from workers and add
  them with ``merge``; every number in a snapshot is additive, the open-connection gauge included (the sum
  over workers is the node's total). Histogram buckets are stored per bucket, not cumulative, so they add
  too; the rendered ``_count`` is the sum of all buckets.
- Unknown kinds are counted rather than rejected: a label the shell invents shows up in the exposition
  instead of raising on the request path.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

from edgeproxy.cache.outcome import Outcome

CONTENT_TYPE = CONTENT_TYPE_LATEST

# The cache outcomes of a request (cache/outcome.py); exported even at zero so rates exist. NONE (no answer went
# out) is counted when it happens but not pre-exported.
# The members themselves are the keys (not their string values): the hit path's dict lookups then match by
# identity instead of comparing a str subclass with a str (~28 ns a response).
CACHE_KINDS = tuple(o for o in Outcome if o is not Outcome.NONE)
FORCED_ANSWERS = ("origin", "collapsed", "interval")
STATUS_CLASSES = {1: "1xx", 2: "2xx", 3: "3xx", 4: "4xx", 5: "5xx"}
ORIGIN_ERROR_KINDS = ("connect", "timeout", "protocol")
CLUSTER_KINDS = ("sent", "failed", "received")
# Seconds from sending a request to the origin until its response head arrived. An edge on a LAN origin sits
# in the low buckets, a far origin in the hundreds of ms; 30 s is the default origin read timeout.
LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Seconds one garbage collection stood the event loop still (gcpolicy.py keeps them in the low buckets).
GC_PAUSE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class ProxyCounters:
    """One worker's counters. ``open_connections`` is adjusted directly (``+= 1`` / ``-= 1``)."""

    __slots__ = (
        "requests", "responses", "response_bytes", "origin_requests", "origin_errors", "lane_hits",
        "latency_buckets", "latency_sum", "open_connections", "purges", "purges_over_budget", "gc_buckets", "gc_sum",
        "forced", "cluster",
    )

    def __init__(self) -> None:
        self.requests: dict[str, int] = dict.fromkeys(CACHE_KINDS, 0)
        self.responses: dict[str, int] = dict.fromkeys(STATUS_CLASSES.values(), 0)
        self.response_bytes = 0
        self.lane_hits = 0  # hits answered by the fast lane (proxy/lane.py), also counted in requests["hit"]
        self.origin_requests = 0
        self.origin_errors: dict[str, int] = dict.fromkeys(ORIGIN_ERROR_KINDS, 0)
        # One slot per bound plus the +Inf overflow slot.
        self.latency_buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0
        self.open_connections = 0
        self.purges: dict[str, int] = {}
        self.purges_over_budget = 0  # regex purges that ran out of [cache] regex_purge_budget (edgeproxy/purging.py)
        # Requests whose own directives asked for validation, by what answered them (origin shielding).
        self.forced: dict[str, int] = dict.fromkeys(FORCED_ANSWERS, 0)
        self.gc_buckets = [0] * (len(GC_PAUSE_BUCKETS) + 1)
        self.gc_sum = 0.0
        # Requests between cluster nodes: sent to a peer, failed over to the next hop, received from a peer.
        self.cluster: dict[str, int] = dict.fromkeys(CLUSTER_KINDS, 0)

    def response(self, cache: Outcome, status: int, sent_bytes: int) -> None:
        """A response went to a client: its cache outcome, status code and bytes written (head + body)."""
        self.requests[cache] = self.requests.get(cache, 0) + 1
        status_class = STATUS_CLASSES.get(status // 100, "other")
        self.responses[status_class] = self.responses.get(status_class, 0) + 1
        self.response_bytes += sent_bytes

    def origin_response(self, latency: float) -> None:
        """An origin request got its response head after ``latency`` seconds."""
        self.origin_requests += 1
        latency = max(latency, 0.0)
        self.latency_buckets[bisect_left(LATENCY_BUCKETS, latency)] += 1
        self.latency_sum += latency

    def gc_pause(self, seconds: float) -> None:
        """One garbage collection took ``seconds`` (gcpolicy.watch calls this)."""
        self.gc_buckets[bisect_left(GC_PAUSE_BUCKETS, seconds)] += 1
        self.gc_sum += seconds

    def origin_error(self, kind: str) -> None:
        """An origin request failed before a response head (``connect``, ``timeout``, ``protocol``)."""
        self.origin_requests += 1
        self.origin_errors[kind] = self.origin_errors.get(kind, 0) + 1

    def purge(self, kind: str) -> None:
        """One purge command of ``kind`` (the control protocol's names) was applied."""
        self.purges[kind] = self.purges.get(kind, 0) + 1

    def to_dict(self) -> dict[str, Any]:
        """A snapshot that shares nothing with the live counters."""
        return {
            "requests": dict(self.requests),
            "responses": dict(self.responses),
            "response_bytes": self.response_bytes,
            "lane_hits": self.lane_hits,
            "origin_requests": self.origin_requests,
            "origin_errors": dict(self.origin_errors),
            "origin_latency": {"buckets": list(self.latency_buckets), "sum": self.latency_sum},
            "open_connections": self.open_connections,
            "purges": dict(self.purges),
            "purges_over_budget": self.purges_over_budget,
            "forced": dict(self.forced),
            "cluster": dict(self.cluster),
            "gc_pause": {"buckets": list(self.gc_buckets), "sum": self.gc_sum},
        }


def _add(total: Any, value: Any) -> Any:
    if isinstance(value, Mapping):
        out = dict(total) if isinstance(total, Mapping) else {}
        for key, item in value.items():
            out[key] = _add(out.get(key), item)
        return out
    if isinstance(value, list):
        # strict: workers on different bucket layouts cannot be added.
        return list(value) if total is None else [a + b for a, b in zip(total, value, strict=True)]
    if value is None or total is None:
        return total if value is None else value
    return total + value


def merge(snapshots: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Sum ``to_dict`` snapshots key by key (dict entries, numbers and histogram buckets); None adds as 0.

    Also sums per-worker store stats dicts, where every rendered key is additive too.
    """
    total: dict[str, Any] = {}
    for snapshot in snapshots:
        total = _add(total, snapshot)
    return total


# (source, key, metric name, help, label) of the per-kind counters: "proxy" keys come from the counters
# snapshot, "store" keys from the store's stats().
_LABELLED = (
    ("proxy", "requests", "edgeproxy_requests_total", "Client requests by cache outcome.", "cache"),
    ("proxy", "responses", "edgeproxy_responses_total", "Client responses by status class.", "code"),
    ("proxy", "origin_errors", "edgeproxy_origin_errors_total",
     "Origin requests that failed before a response head.", "kind"),
    ("proxy", "purges", "edgeproxy_purges_total", "Purge commands applied, by kind.", "kind"),
    ("proxy", "forced", "edgeproxy_forced_revalidations_total",
     "Requests whose own directives (no-cache, max-age, min-fresh) asked for validation, by what answered them: "
     "the origin, a concurrent validation (collapsed) or one within revalidate_interval.", "answered"),
    ("proxy", "cluster", "edgeproxy_cluster_requests_total",
     "Requests between cluster nodes: sent to a peer, failed over to the next hop, received from a peer.", "kind"),
    ("store", "not_stored", "edgeproxy_cache_not_stored_total", "Responses the store refused, by reason.",
     "reason"),
)

# (source, key, family, metric name, help) of the unlabelled metrics; "fleet" keys come from the fleet link.
_SCALARS = (
    ("proxy", "response_bytes", CounterMetricFamily, "edgeproxy_response_bytes_total",
     "Bytes written to clients, heads and bodies."),
    ("proxy", "lane_hits", CounterMetricFamily, "edgeproxy_fast_lane_hits_total",
     "Hits answered by the fast lane from the request's bytes, without the parser (included in requests)."),
    ("proxy", "origin_requests", CounterMetricFamily, "edgeproxy_origin_requests_total",
     "Requests sent to origins, failed ones included."),
    ("proxy", "purges_over_budget", CounterMetricFamily, "edgeproxy_purge_budget_exceeded_total",
     "Regex purges that did not finish within [cache] regex_purge_budget: their host (or everything) was soft-purged "
     "instead."),
    ("proxy", "open_connections", GaugeMetricFamily, "edgeproxy_open_connections", "Open client connections."),
    ("store", "entries", GaugeMetricFamily, "edgeproxy_cache_entries", "Objects in the cache."),
    ("store", "bytes", GaugeMetricFamily, "edgeproxy_cache_bytes", "Bytes the cache accounts for."),
    ("store", "capacity", GaugeMetricFamily, "edgeproxy_cache_capacity_bytes", "Cache size limit in bytes."),
    ("store", "hits", CounterMetricFamily, "edgeproxy_cache_hits_total", "Store lookups that found an entry."),
    ("store", "misses", CounterMetricFamily, "edgeproxy_cache_misses_total", "Store lookups that found none."),
    ("store", "evictions", CounterMetricFamily, "edgeproxy_cache_evictions_total",
     "Entries evicted to stay within capacity."),
    ("store", "inserts", CounterMetricFamily, "edgeproxy_cache_inserts_total", "Entries stored."),
    ("store", "purged", CounterMetricFamily, "edgeproxy_cache_purged_total", "Entries removed by purges."),
    ("fleet", "connected", GaugeMetricFamily, "edgeproxy_fleet_connected", "1 while the fleet's Redis answers."),
    ("fleet", "lag_seconds", GaugeMetricFamily, "edgeproxy_fleet_lag_seconds",
     "How long ago the oldest purge this node has not applied was published (while Redis is unreachable: since "
     "the node was last caught up)."),
    ("fleet", "fleet_lag_seconds", GaugeMetricFamily, "edgeproxy_fleet_max_lag_seconds",
     "The largest lag of the fleet's live nodes, as this node last read it."),
    ("fleet", "nodes_alive", GaugeMetricFamily, "edgeproxy_fleet_nodes_alive", "Nodes whose heartbeat is current."),
    ("fleet", "applied_seq", GaugeMetricFamily, "edgeproxy_fleet_applied_seq",
     "The number of the last journal entry this node applied."),
    ("fleet", "published", CounterMetricFamily, "edgeproxy_fleet_purges_published_total",
     "Purges this node published to the fleet."),
    ("fleet", "applied", CounterMetricFamily, "edgeproxy_fleet_purges_applied_total",
     "Purges this node applied from the fleet's journal."),
    ("fleet", "resyncs", CounterMetricFamily, "edgeproxy_fleet_resyncs_total",
     "Times this node marked everything stale: a gap in the journal, or Redis unreachable at start."),
    ("fleet", "link_failures", CounterMetricFamily, "edgeproxy_fleet_link_failures_total",
     "Failed exchanges with the fleet's Redis."),
    ("fleet", "unpublished", CounterMetricFamily, "edgeproxy_fleet_purges_unpublished_total",
     "Purges applied on this node alone because Redis was unreachable (published when it answers again)."),
    ("fleet", "reseeds", CounterMetricFamily, "edgeproxy_fleet_counter_reseeds_total",
     "Times this node found the journal's counter lost with the stream still there, and set it again."),
    ("fleet", "waits", GaugeMetricFamily, "edgeproxy_fleet_waits", "Purges waiting for the fleet (--fleet-wait) now."),
    ("fleet", "waits_refused", CounterMetricFamily, "edgeproxy_fleet_waits_refused_total",
     "Purges with --fleet-wait refused because as many as the node allows were waiting already."),
)


# (snapshot key, bucket bounds, metric name, help) of the histograms.
_HISTOGRAMS = (
    ("origin_latency", LATENCY_BUCKETS, "edgeproxy_origin_latency_seconds",
     "Time from sending an origin request to receiving its response head."),
    ("gc_pause", GC_PAUSE_BUCKETS, "edgeproxy_gc_pause_seconds",
     "Time one garbage collection held the event loop (summed over workers)."),
)


def _histogram_family(name: str, doc: str, bounds: tuple[float, ...],
                      histogram: Mapping[str, Any]) -> HistogramMetricFamily:
    cumulative, buckets = 0, []
    for bound, count in zip((*bounds, float("inf")), histogram["buckets"], strict=True):
        cumulative += count
        buckets.append((floatToGoString(bound), cumulative))
    return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=histogram["sum"])


class _SnapshotCollector(Collector):
    """Yields the families of one merged counters snapshot and one store stats dict."""

    def __init__(self, counters: Mapping[str, Any], store: Mapping[str, Any], fleet: Mapping[str, Any]) -> None:
        self.sources = {"proxy": counters, "store": store, "fleet": fleet}

    def collect(self) -> Iterator[Metric]:
        for source, key, name, doc, label in _LABELLED:
            values = self.sources[source].get(key)
            if values is not None:
                family = CounterMetricFamily(name, doc, labels=[label])
                for kind, value in values.items():
                    family.add_metric([kind], value)
                yield family
        for key, bounds, name, doc in _HISTOGRAMS:
            yield _histogram_family(name, doc, bounds, self.sources["proxy"][key])
        for source, key, family_type, name, doc in _SCALARS:
            value = self.sources[source].get(key)
            if value is not None:
                yield family_type(name, doc, value=float(value))


def render(counters: Mapping[str, Any], store_stats: Mapping[str, Any] | None = None,
           fleet: Mapping[str, Any] | None = None) -> bytes:
    """Prometheus text exposition of a (merged) counters snapshot and the store's stats as a dict
    (``dataclasses.asdict(store.stats())``; keys entries, bytes, capacity, hits, misses, evictions, inserts,
    purged, not_stored), and the fleet link's figures (``FleetMember.stats``) when there is one. Missing counter
    keys read as zero; missing store and fleet keys leave their metric out.
    """
    snapshot = merge([ProxyCounters().to_dict(), counters])
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_SnapshotCollector(snapshot, store_stats or {}, fleet or {}))
    return generate_latest(registry)


def summarize(counters: Mapping[str, Any], store: Mapping[str, Any], started: float, now: float) -> dict[str, Any]:
    """The ``stats`` reply: headline figures first, then the raw ``counters`` and ``store`` tables."""
    requests = counters["requests"]
    hits = requests.get("hit", 0) + requests.get("stale", 0)
    lookups = hits + sum(requests.get(k, 0) for k in ("miss", "revalidated", "collapsed"))
    return {
        "entries": store["entries"], "bytes": store["bytes"], "capacity": store["capacity"],
        "hits": hits, "misses": requests.get("miss", 0),
        "hit_ratio": round(hits / lookups, 4) if lookups else 0.0,
        "stale_serves": requests.get("stale", 0), "revalidations": requests.get("revalidated", 0),
        "collapsed": requests.get("collapsed", 0), "evictions": store["evictions"],
        "purges": sum(counters["purges"].values()), "origin_errors": sum(counters["origin_errors"].values()),
        "open_connections": counters["open_connections"], "fast_lane_hits": counters.get("lane_hits", 0),
        "uptime": round(now - started, 1),
        "counters": dict(counters), "store": dict(store),
    }


def status_line(stats: Mapping[str, Any]) -> str:
    """The live figures for systemd's STATUS= (``systemctl status`` shows it)."""
    return (f"{stats['open_connections']} connections, {stats['entries']} entries, "
            f"hit ratio {stats['hit_ratio'] * 100:.1f}%, {stats['purges']} purges")
