"""ProxyCounters on the hot path, snapshot merging across workers, and the rendered exposition."""

from __future__ import annotations

import json

import pytest
from prometheus_client.parser import text_string_to_metric_families

from edgeproxy.metrics import CONTENT_TYPE, LATENCY_BUCKETS, ProxyCounters, merge, render


def _samples(body: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


def _types(body: bytes) -> dict[str, str]:
    return {family.name: family.type for family in text_string_to_metric_families(body.decode())}


def _worker(responses, latencies, errors=(), purges=(), open_connections=0) -> ProxyCounters:
    c = ProxyCounters()
    for cache, status, sent in responses:
        c.response(cache, status, sent)
    for latency in latencies:
        c.origin_response(latency)
    for kind in errors:
        c.origin_error(kind)
    for kind in purges:
        c.purge(kind)
    c.open_connections = open_connections
    return c


@pytest.mark.parametrize(
    ("latency", "bucket"),
    [
        (0.0, 0),
        (-0.5, 0),  # a clock step must not index from the end
        (0.001, 0),  # le: a value on a bound belongs to that bound's bucket
        (0.0011, 1),
        (0.1, LATENCY_BUCKETS.index(0.1)),
        (30.0, len(LATENCY_BUCKETS) - 1),
        (31.0, len(LATENCY_BUCKETS)),  # +Inf
    ],
)
def test_origin_latency_bucket(latency: float, bucket: int):
    c = ProxyCounters()
    c.origin_response(latency)
    expected = [0] * (len(LATENCY_BUCKETS) + 1)
    expected[bucket] = 1
    assert c.latency_buckets == expected
    assert c.latency_sum == max(latency, 0.0)
    assert c.origin_requests == 1


@pytest.mark.parametrize(
    ("status", "status_class"), [(101, "1xx"), (200, "2xx"), (304, "3xx"), (404, "4xx"), (502, "5xx"), (999, "other")]
)
def test_response_counts_status_class(status: int, status_class: str):
    c = ProxyCounters()
    c.response("miss", status, 10)
    assert c.responses[status_class] == 1
    assert sum(c.responses.values()) == 1


def test_counters_are_slotted_and_snapshots_are_detached():
    c = _worker([("hit", 200, 100)], [0.02], errors=["timeout"], purges=["url"])
    with pytest.raises(AttributeError):
        c.hits = 1  # type: ignore[attr-defined]
    snapshot = c.to_dict()
    c.response("hit", 200, 100)
    c.origin_response(0.02)
    c.purge("url")
    assert snapshot["requests"]["hit"] == 1
    assert snapshot["origin_latency"]["buckets"][LATENCY_BUCKETS.index(0.025)] == 1
    assert snapshot["purges"] == {"url": 1}
    assert json.loads(json.dumps(snapshot)) == snapshot


def test_unknown_kinds_are_counted_not_rejected():
    c = _worker([("hit-for-pass", 200, 1)], [], errors=["tls"])
    assert c.requests["hit-for-pass"] == 1
    assert c.origin_errors["tls"] == 1


def test_merge_sums_two_workers_counters_and_buckets():
    a = _worker([("hit", 200, 1000), ("miss", 200, 500)], [0.003, 0.2], errors=["connect"], purges=["url"],
                open_connections=3)
    b = _worker([("hit", 304, 200), ("error", 502, 100)], [0.003, 45.0], errors=["timeout", "connect"],
                purges=["tag", "url"], open_connections=2)
    total = merge([a.to_dict(), b.to_dict()])
    assert total["requests"] == {"hit": 2, "stale": 0, "miss": 1, "revalidated": 0, "pass": 0, "collapsed": 0,
                                 "error": 1}
    assert total["responses"] == {"1xx": 0, "2xx": 2, "3xx": 1, "4xx": 0, "5xx": 1}
    assert total["response_bytes"] == 1800
    assert total["origin_requests"] == 7
    assert total["origin_errors"] == {"connect": 2, "timeout": 1, "protocol": 0}
    assert total["purges"] == {"url": 2, "tag": 1}
    assert total["open_connections"] == 5
    buckets = total["origin_latency"]["buckets"]
    assert buckets[LATENCY_BUCKETS.index(0.005)] == 2
    assert buckets[LATENCY_BUCKETS.index(0.25)] == 1
    assert buckets[-1] == 1
    assert sum(buckets) == 4
    assert total["origin_latency"]["sum"] == pytest.approx(45.206)
    # merging must not alter its inputs
    assert a.to_dict()["requests"]["hit"] == 1


def test_merge_of_nothing_none_and_mismatched_buckets():
    assert merge([]) == {}
    assert merge([{"entries": 1, "last": None}, {"entries": 2, "last": 5.0}, {"last": None}]) == {
        "entries": 3, "last": 5.0}
    with pytest.raises(ValueError):
        merge([{"origin_latency": {"buckets": [1, 2]}}, {"origin_latency": {"buckets": [1, 2, 3]}}])


STORE = {"entries": 42, "bytes": 1_048_576, "capacity": 268_435_456, "hits": 900, "misses": 100,
         "evictions": 7, "inserts": 49, "purged": 3, "not_stored": {"too-large": 2}, "last_purge_at": 1700000000.0}


def test_render_exposes_every_family_with_its_values():
    a = _worker([("hit", 200, 1000), ("stale", 200, 10)], [0.003, 0.2], errors=["protocol"], purges=["prefix"],
                open_connections=4)
    b = _worker([("miss", 404, 90)], [12.0], open_connections=1)
    a.gc_pause(0.0004)
    b.gc_pause(0.02)
    body = render(merge([a.to_dict(), b.to_dict()]), STORE)
    got = _samples(body)
    expected = {
        ("edgeproxy_requests_total", (("cache", "hit"),)): 1,
        ("edgeproxy_requests_total", (("cache", "stale"),)): 1,
        ("edgeproxy_requests_total", (("cache", "miss"),)): 1,
        ("edgeproxy_requests_total", (("cache", "collapsed"),)): 0,
        ("edgeproxy_responses_total", (("code", "2xx"),)): 2,
        ("edgeproxy_responses_total", (("code", "4xx"),)): 1,
        ("edgeproxy_response_bytes_total", ()): 1100,
        ("edgeproxy_origin_requests_total", ()): 4,
        ("edgeproxy_origin_errors_total", (("kind", "protocol"),)): 1,
        ("edgeproxy_origin_errors_total", (("kind", "connect"),)): 0,
        ("edgeproxy_purges_total", (("kind", "prefix"),)): 1,
        ("edgeproxy_forced_revalidations_total", (("answered", "interval"),)): 0,
        ("edgeproxy_open_connections", ()): 5,
        ("edgeproxy_origin_latency_seconds_bucket", (("le", "0.001"),)): 0,
        ("edgeproxy_origin_latency_seconds_bucket", (("le", "0.005"),)): 1,
        ("edgeproxy_origin_latency_seconds_bucket", (("le", "0.25"),)): 2,
        ("edgeproxy_origin_latency_seconds_bucket", (("le", "10.0"),)): 2,
        ("edgeproxy_origin_latency_seconds_bucket", (("le", "30.0"),)): 3,
        ("edgeproxy_origin_latency_seconds_bucket", (("le", "+Inf"),)): 3,
        ("edgeproxy_origin_latency_seconds_count", ()): 3,
        ("edgeproxy_origin_latency_seconds_sum", ()): pytest.approx(12.203),
        ("edgeproxy_gc_pause_seconds_bucket", (("le", "0.001"),)): 1,
        ("edgeproxy_gc_pause_seconds_bucket", (("le", "0.01"),)): 1,
        ("edgeproxy_gc_pause_seconds_bucket", (("le", "0.025"),)): 2,
        ("edgeproxy_gc_pause_seconds_count", ()): 2,
        ("edgeproxy_gc_pause_seconds_sum", ()): pytest.approx(0.0204),
        ("edgeproxy_cache_entries", ()): 42,
        ("edgeproxy_cache_bytes", ()): 1_048_576,
        ("edgeproxy_cache_capacity_bytes", ()): 268_435_456,
        ("edgeproxy_cache_hits_total", ()): 900,
        ("edgeproxy_cache_misses_total", ()): 100,
        ("edgeproxy_cache_evictions_total", ()): 7,
        ("edgeproxy_cache_inserts_total", ()): 49,
        ("edgeproxy_cache_purged_total", ()): 3,
        ("edgeproxy_cache_not_stored_total", (("reason", "too-large"),)): 2,
    }
    assert {key: got.get(key) for key in expected} == expected
    assert _types(body) == {
        "edgeproxy_requests": "counter", "edgeproxy_responses": "counter", "edgeproxy_origin_errors": "counter",
        "edgeproxy_purges": "counter", "edgeproxy_origin_latency_seconds": "histogram",
        "edgeproxy_purge_budget_exceeded": "counter",
        "edgeproxy_gc_pause_seconds": "histogram", "edgeproxy_response_bytes": "counter",
        "edgeproxy_origin_requests": "counter",
        "edgeproxy_fast_lane_hits": "counter",
        "edgeproxy_open_connections": "gauge", "edgeproxy_cache_entries": "gauge", "edgeproxy_cache_bytes": "gauge",
        "edgeproxy_cache_capacity_bytes": "gauge", "edgeproxy_cache_hits": "counter",
        "edgeproxy_cache_misses": "counter", "edgeproxy_cache_evictions": "counter",
        "edgeproxy_cache_inserts": "counter", "edgeproxy_cache_purged": "counter",
        "edgeproxy_cache_not_stored": "counter", "edgeproxy_forced_revalidations": "counter",
        "edgeproxy_cluster_requests": "counter",
    }


def test_render_tolerates_missing_keys_and_uses_no_global_metrics():
    body = render({"requests": {"hit": 3}}, {"entries": 1})
    got = _samples(body)
    assert got[("edgeproxy_requests_total", (("cache", "hit"),))] == 3
    assert got[("edgeproxy_requests_total", (("cache", "miss"),))] == 0
    assert got[("edgeproxy_origin_latency_seconds_count", ())] == 0
    assert got[("edgeproxy_cache_entries", ())] == 1
    assert ("edgeproxy_cache_bytes", ()) not in got
    assert all(name.startswith("edgeproxy_") for name, _ in got)
    assert render({}) == render(ProxyCounters().to_dict(), {})


def test_content_type_is_prometheus_text():
    assert CONTENT_TYPE.startswith("text/plain; version=")
