"""Operations with ``workers = 2``: both serve, a killed worker comes back, purges reach every worker, /metrics sums.

Category: ops. One supervisor and two worker processes per test, in front of the demo origin, on free loopback
ports. The workers share the accept queue, so a test spreads fresh connections until both have served; every
loop is bounded.
"""

from __future__ import annotations

import os
import signal
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.test_ops import control, wait_ready, wait_until
from tests.support import HTTPClient, Proc, Response, free_port

WORKERS = 2
MAX_TRIES = 200


@pytest.fixture
def workers_proxy(proxy_factory: Callable[..., Proc], demo_origin: Proc) -> Proc:
    proxy = proxy_factory(demo_origin.url, server={"workers": WORKERS},
                          metrics={"listen": f"127.0.0.1:{free_port()}"})
    wait_ready(proxy)
    return proxy


def per_worker(proxy: Proc) -> dict[str, dict[str, Any]]:
    stats = control(proxy, {"cmd": "stats"})
    assert stats["ok"], stats
    return stats["workers"]


def fresh_get(proxy: Proc, target: str) -> Response:
    with HTTPClient(proxy.port) as client:  # a new connection: either worker may accept it
        return client.request("GET", target)


def spread(proxy: Proc, target: str, done: Callable[[dict[str, dict[str, Any]]], bool]) -> list[Response]:
    """GET ``target`` on fresh connections until ``done(per-worker stats)``; the responses."""
    responses = []
    for _ in range(MAX_TRIES):
        responses.append(fresh_get(proxy, target))
        if done(per_worker(proxy)):
            return responses
    raise AssertionError(f"workers never got there: {per_worker(proxy)}")


def test_both_workers_serve_with_their_own_pids(workers_proxy: Proc) -> None:
    rows = per_worker(workers_proxy)
    assert len(rows) == WORKERS and all(r["ready"] for r in rows.values())
    pids = {r["pid"] for r in rows.values()}
    assert len(pids) == WORKERS and workers_proxy.pid not in pids
    spread(workers_proxy, "/bytes/64", lambda rows: all(r["requests"] > 0 for r in rows.values()))


def test_killed_worker_is_restarted_and_purge_reaches_every_worker(workers_proxy: Proc) -> None:
    victim = per_worker(workers_proxy)["0"]["pid"]
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: per_worker(workers_proxy)["0"]["pid"] not in (victim, None)
               and per_worker(workers_proxy)["0"]["ready"], what="worker 0 restarted")
    rows = per_worker(workers_proxy)
    assert rows["0"]["restarts"] == 1 and rows["1"]["restarts"] == 0
    spread(workers_proxy, "/bytes/100", lambda rows: all(r["entries"] == 1 for r in rows.values()))
    reply = control(workers_proxy, {"cmd": "purge", "kind": "url", "url": "http://test.local/bytes/100"})
    assert (reply["ok"], reply["purged"], reply["workers"]) == (True, WORKERS, WORKERS)
    assert control(workers_proxy, {"cmd": "stats"})["purges"] == 1  # one command, however many workers applied it
    before = per_worker(workers_proxy)
    assert [r["entries"] for r in before.values()] == [0] * WORKERS
    responses = spread(workers_proxy, "/bytes/100",
                       lambda rows: all(rows[i]["requests"] > before[i]["requests"] for i in rows))
    after = per_worker(workers_proxy)
    assert {i: after[i]["misses"] - before[i]["misses"] for i in after} == {str(i): 1 for i in range(WORKERS)}
    statuses = [r.header("cache-status") or "" for r in responses]
    assert sum("fwd=uri-miss" in s for s in statuses) == WORKERS, statuses


def scrape(port: int) -> dict[str, float]:
    """Samples by name and labels, e.g. ``edgeproxy_requests_total{cache="hit"}``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            samples[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return samples


def test_metrics_sum_both_workers(workers_proxy: Proc) -> None:
    port = int(workers_proxy.extra["config"]["metrics"]["listen"].rsplit(":", 1)[1])
    spread(workers_proxy, "/bytes/200", lambda rows: all(r["requests"] >= 2 for r in rows.values()))
    rows = per_worker(workers_proxy)
    total = sum(r["requests"] for r in rows.values())
    requests = 'edgeproxy_requests_total{cache="%s"}'
    # /metrics reads the heartbeat snapshots: wait for one taken after the last request.
    wait_until(lambda: sum(v for k, v in scrape(port).items() if k.startswith("edgeproxy_requests_total{")) == total,
               what="/metrics to count every request")
    samples = scrape(port)
    assert samples[requests % "miss"] == WORKERS  # one miss per worker: each has its own cache
    assert samples[requests % "hit"] == total - WORKERS
    assert samples["edgeproxy_cache_entries"] == WORKERS == sum(r["entries"] for r in rows.values())
    assert samples["edgeproxy_origin_latency_seconds_count"] == WORKERS
    # Each worker timed at least its start-up settle (gcpolicy): the pauses of both are summed too.
    assert samples["edgeproxy_gc_pause_seconds_count"] >= WORKERS
