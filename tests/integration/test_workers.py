"""Operations with several workers: all serve one shared cache (stored by one, hit by another), a killed worker
comes back, a purge reaches every worker's hot tier, /metrics reports one store, the cache outlives a restart, and
``[cache] shared = false`` still gives each worker a cache of its own.

Category: ops. One supervisor and two worker processes per test, in front of the demo origin, on free loopback
ports. The workers share the accept queue, so a test spreads fresh connections until both have served; every
loop is bounded.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.test_ops import control, wait_ready, wait_until
from tests.support import HTTPClient, Proc, Response, env, free_port, proxy_config, to_toml

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
    first = spread(workers_proxy, "/bytes/100", lambda rows: all(r["requests"] > 0 for r in rows.values()))
    statuses = [r.header("cache-status") or "" for r in first]
    assert sum("fwd=uri-miss" in s for s in statuses) == 1, statuses  # stored by one, a hit for the other
    reply = control(workers_proxy, {"cmd": "purge", "kind": "url", "url": "http://test.local/bytes/100"})
    assert (reply["ok"], reply["purged"], reply["workers"]) == (True, 1, WORKERS)
    assert control(workers_proxy, {"cmd": "stats"})["purges"] == 1
    before = per_worker(workers_proxy)
    responses = spread(workers_proxy, "/bytes/100",
                       lambda rows: all(rows[i]["requests"] > before[i]["requests"] for i in rows))
    statuses = [r.header("cache-status") or "" for r in responses]
    # Acknowledged means gone everywhere: the first answer after the purge is a miss, whichever worker gives it,
    # although both had the object in their hot tier; then the others hit what it stored again.
    assert "fwd=uri-miss" in statuses[0] and sum("fwd=uri-miss" in s for s in statuses) == 1, statuses


def test_every_purge_kind_reaches_every_worker(workers_proxy: Proc) -> None:
    paths = ["/bytes/11", "/bytes/12", "/bytes/13", "/bytes/14"]
    purges = [{"kind": "url", "url": "http://test.local/bytes/11"}, {"kind": "prefix", "prefix": "/bytes/1"},
              {"kind": "host", "host": "test.local"}, {"kind": "regex", "pattern": "bytes/1[1-4]$"},
              {"kind": "all"}]
    for purge in purges:
        for soft in (False, True):
            for path in paths:  # in every hot tier
                spread(workers_proxy, path, lambda rows: True)
                for _ in range(6):
                    fresh_get(workers_proxy, path)
            reply = control(workers_proxy, {"cmd": "purge", "soft": soft, **purge})
            assert reply["ok"] and reply["purged"] >= 1, (purge, reply)
            target = paths[0]
            statuses = [fresh_get(workers_proxy, target).header("cache-status") or "" for _ in range(4)]
            assert "hit" not in statuses[0], (purge, soft, statuses)  # soft: revalidated first, never a plain hit


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
    assert samples[requests % "miss"] == 1  # one store for the host: fetched once, whichever worker asked first
    assert samples[requests % "hit"] == total - 1
    assert samples["edgeproxy_cache_entries"] == 1  # the one store's entries, not a sum of copies
    assert samples["edgeproxy_origin_latency_seconds_count"] == 1
    # Each worker timed at least its start-up settle (gcpolicy): the pauses of both are summed too.
    assert samples["edgeproxy_gc_pause_seconds_count"] >= WORKERS


def test_a_restart_keeps_the_cache(proxy_factory: Callable[..., Proc], demo_origin: Proc) -> None:
    first = proxy_factory(demo_origin.url, server={"workers": WORKERS})
    wait_ready(first)
    assert "fwd=uri-miss" in (fresh_get(first, "/bytes/300").header("cache-status") or "")
    assert first.stop() == 0
    config = first.extra["config"]
    again = proxy_factory(demo_origin.url, server={"workers": WORKERS}, cache=config["cache"])
    wait_ready(again)
    answer = fresh_get(again, "/bytes/300")
    assert answer.status == 200 and len(answer.body) == 300
    assert "; hit;" in (answer.header("cache-status") or ""), answer.header("cache-status")
    assert "kept 1 objects from the previous run" in again.log()
    assert control(again, {"cmd": "stats"})["store"]["entries"] == 1


def test_a_second_instance_on_the_same_path_is_refused(proxy_factory: Callable[..., Proc],
                                                        demo_origin: Proc) -> None:
    first = proxy_factory(demo_origin.url, server={"workers": WORKERS})
    wait_ready(first)
    with pytest.raises(RuntimeError, match="is in use by another edgeproxy"):
        proxy_factory(demo_origin.url, server={"workers": WORKERS}, cache=first.extra["config"]["cache"])


@pytest.mark.parametrize("workers", [1, WORKERS])
def test_a_store_directory_others_can_write_stops_the_start(demo_origin: Proc, tmp_path: Path, workers: int) -> None:
    """Whoever can write in the store's directory can plant cached responses or links: one line, exit 1."""
    path = tmp_path / "everyones"
    path.mkdir()
    path.chmod(0o777)
    config = proxy_config(demo_origin.url, free_port(), tmp_path, server={"workers": workers},
                          cache={"path": str(path), "shared": True})
    (tmp_path / "edgeproxy.toml").write_text(to_toml(config))
    result = subprocess.run([sys.executable, "-m", "edgeproxy", "serve", "--config", str(tmp_path / "edgeproxy.toml")],
                            env=env(), capture_output=True, text=True, timeout=20, check=False)
    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.splitlines() if "cannot start" in line]
    assert len(lines) == 1 and lines[0].endswith(
        f"cannot start: cache path {path} is writable by its group or others (mode 0777); remove it, or give a path "
        "of our own"), result.stderr
    assert list(path.iterdir()) == []


def test_four_workers_keep_the_byte_bound_under_churn(proxy_factory: Callable[..., Proc], demo_origin: Proc) -> None:
    size = 1024 * 1024
    proxy = proxy_factory(demo_origin.url, server={"workers": 4}, cache={"size": size, "max_object_size": 65536})
    wait_ready(proxy)
    with HTTPClient(proxy.port) as client:
        for n in range(1, 501):  # ~10x the size through it: 500 objects of 20-23 KB (+ heads and overhead)
            answer = client.request("GET", f"/bytes/{20000 + n * 6}")
            assert answer.status == 200 and len(answer.body) == 20000 + n * 6
    store = control(proxy, {"cmd": "stats"})["store"]
    assert 0 < store["bytes"] <= store["capacity"] < size, store
    assert store["evictions"] >= 400 and store["entries"] < 60, store


def test_unshared_workers_each_keep_their_own_cache(proxy_factory: Callable[..., Proc],
                                                    demo_origin: Proc) -> None:
    proxy = proxy_factory(demo_origin.url, server={"workers": WORKERS}, cache={"shared": False})
    wait_ready(proxy)
    responses = spread(proxy, "/bytes/100", lambda rows: all(r["requests"] > 0 for r in rows.values()))
    statuses = [r.header("cache-status") or "" for r in responses]
    assert sum("fwd=uri-miss" in s for s in statuses) == WORKERS, statuses
    reply = control(proxy, {"cmd": "purge", "kind": "url", "url": "http://test.local/bytes/100"})
    assert (reply["ok"], reply["purged"], reply["workers"]) == (True, WORKERS, WORKERS)
    assert not os.path.exists(proxy.extra["config"]["cache"]["path"])


def test_workers_killed_while_storing_leave_the_store_whole(proxy_factory: Callable[..., Proc],
                                                              demo_origin: Proc) -> None:
    """SIGKILL lands on workers in the middle of storing (a stream of distinct misses): LMDB rolls a dead writer's
    transaction back, so the store stays readable, consistent with its figures and bounded."""
    size = 2 * 1024 * 1024
    proxy = proxy_factory(demo_origin.url, server={"workers": WORKERS}, cache={"size": size, "max_object_size": 65536})
    wait_ready(proxy)
    served = 0
    for round_ in range(4):
        for n in range(60):
            try:
                served += fresh_get(proxy, f"/bytes/{4000 + n}?r={round_}").status == 200
            except OSError:
                pass  # a connection the killed worker held
            if n == 30:
                victim = per_worker(proxy)[str(round_ % WORKERS)]["pid"]
                if victim:
                    os.kill(victim, signal.SIGKILL)
        wait_until(lambda: all(r["ready"] for r in per_worker(proxy).values()), what="workers back")
    assert served >= 4 * 60 - 8
    store = control(proxy, {"cmd": "stats"})["store"]
    assert 0 < store["bytes"] <= store["capacity"] and store["entries"] > 0, store
    # Everything the store says it holds can be read back, by either worker.
    for n in range(0, 60, 7):
        answer = fresh_get(proxy, f"/bytes/{4000 + n}?r=3")
        assert answer.status == 200 and len(answer.body) == 4000 + n
        assert "; hit" in (answer.header("cache-status") or ""), answer.header("cache-status")
    assert "Traceback" not in proxy.log(), proxy.log()[-3000:]
