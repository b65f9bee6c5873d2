"""The fleet, measured: three edgeproxy nodes and one redis-server on loopback, the rows of the fleet issue's goals.

- ``latency``: purges issued one after another on node 1 (each with ``fleet_wait``); for each, the time from its
  publication (the stream id's milliseconds: Redis's clock) to its application on the last of the three nodes (each
  node's ``applied`` record: its clock; one machine, one clock). Idle, then under wrk hit load on every node.
- ``replay``: node 3 stopped, purges of URLs it holds issued on node 1, node 3 started again: how long its replay
  took, and how many of the purged URLs it then served from its kept cache (the goal: none).
- ``outage``: wrk on every node while redis-server is SIGKILLed and restarted ``--outage`` seconds later: failed
  client requests (the goal: none), then a purge on node 1 that must reach all three.
- ``trim``: node 3 stopped, a purge issued, the stream trimmed to nothing, node 3 started: it marks everything stale
  (a resync) and serves none of the purged objects without the origin.
- ``throughput``: hit 1 KiB with wrk against one node with ``[fleet]`` and one without, interleaved rounds, each
  pinned to core 0 with wrk on core 1: the ratio.
- ``cluster``: one Zipf(1.0) stream of requests (``--zipf-requests`` over ``--zipf-urls`` objects of 1 KiB) sent to
  one node, then round-robin to three independent nodes, then round-robin to three clustered nodes (``[cluster]``):
  the origin fetches of each (the goal: clustered within 1.05x of one node).

    python -m benchmarks.fleet [--purges 1000] [--outage 30] [--rounds 3] [--seconds 5] [--out FILE.json]

Everything listens on 127.0.0.1 ports picked free at run time; every process is stopped at the end. Needs
redis-server (Debian's package) and wrk. The output file starts with ``meta`` (``machine.meta``: the machine, the
versions of Python's packages, redis-server, redis-py and wrk, the commit), as run.py's results do.
"""

from __future__ import annotations

import argparse
import bisect
import concurrent.futures
import http.client
import itertools
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import redis

from benchmarks.machine import meta
from benchmarks.procs import ALL_CPUS, Fleet, free_port
from edgeproxy.control.client import ControlClient, ControlError
from edgeproxy.fleet.journal import id_ms, parse_applied

STREAM = "edgeproxy:purge"
NODES = ("edge-1", "edge-2", "edge-3")
SCENARIOS = ("latency", "replay", "outage", "trim", "throughput", "cluster")


class Cluster:
    """One redis-server and three nodes (one worker each, a persisted shared store, access log to a file)."""

    def __init__(self, procs: Fleet, workdir: Path, origin_port: int) -> None:
        self.procs, self.workdir, self.origin_port = procs, workdir, origin_port
        self.redis_port = free_port()
        self.redis_proc: Any = None
        self.nodes: dict[str, dict[str, Any]] = {}

    def start_redis(self) -> None:
        argv = ["redis-server", "--bind", "127.0.0.1", "--port", str(self.redis_port), "--dir", str(self.workdir),
                "--save", "", "--appendonly", "yes", "--daemonize", "no"]
        self.redis_proc = self.procs.start("redis", argv, ALL_CPUS, self.redis_port)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if self.redis().ping():
                    return
            except redis.exceptions.BusyLoadingError:
                time.sleep(0.05)

    def kill_redis(self) -> None:
        self.redis_proc.kill()
        self.redis_proc.wait(10)

    def redis(self) -> redis.Redis:
        return redis.Redis(port=self.redis_port, decode_responses=True, socket_timeout=10)

    def start(self, name: str, fleet: bool = True, cpus: str = ALL_CPUS, cluster: str = "") -> dict[str, Any]:
        """``cluster``: a [cluster] table for this node, or none."""
        node = self.nodes.get(name) or {"port": free_port(), "control": str(self.workdir / f"{name}.sock")}
        config = self.workdir / f"{name}.toml"
        fleet_table = (f'[fleet]\nredis = "redis://127.0.0.1:{self.redis_port}/0"\nnode = "{name}"\n'
                       'connect_timeout = "1s"\n') if fleet else ""
        fleet_table += cluster
        config.write_text(
            f'[server]\nlisten = ["127.0.0.1:{node["port"]}"]\ncontrol_socket = "{node["control"]}"\n'
            f'[log]\naccess = "{self.workdir / (name + ".access.log")}"\n'
            f'[cache]\nshared = true\npath = "{self.workdir / (name + ".cache")}"\n{fleet_table}'
            f'[[site]]\norigin = "http://127.0.0.1:{self.origin_port}"\n')
        node["proc"] = self.procs.start(name, [sys.executable, "-m", "edgeproxy", "serve", "--config", str(config)],
                                        cpus, node["port"])
        self.nodes[name] = node
        control(node, {"cmd": "ping"})  # the control socket opens after the replay
        return node

    def stop(self, name: str) -> None:
        self.procs.stop(self.nodes[name]["proc"])


def control(node: dict[str, Any], fields: dict[str, Any], timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while True:
        try:
            with ControlClient(node["control"], timeout) as client:
                reply = client.request(fields)
            break
        except (OSError, ControlError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    if not reply["ok"]:
        raise RuntimeError(reply["error"])
    return reply


def get(node: dict[str, Any], target: str) -> tuple[int, str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{node['port']}{target}", timeout=10) as r:
        r.read()
        return r.status, r.headers.get("cache-status", "")


def served_from_cache(node: dict[str, Any], target: str) -> bool:
    status = get(node, target)[1]
    return "hit" in status and "fwd=" not in status


def wrk(port: int, seconds: float, connections: int = 16, cpus: str = ALL_CPUS) -> subprocess.Popen[str]:
    return subprocess.Popen(["taskset", "-c", cpus, "wrk", "-t1", f"-c{connections}", f"-d{int(seconds)}s",
                             f"http://127.0.0.1:{port}/bytes/1024"], stdout=subprocess.PIPE, text=True)


def wrk_result(proc: subprocess.Popen[str]) -> dict[str, float]:
    out, _ = proc.communicate(timeout=600)
    if "requests in" not in out:
        raise RuntimeError(f"wrk failed: {out}")
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    return {"requests": requests, "socket_errors": errors, "non_2xx": int(non2xx.group(1)) if non2xx else 0,
            "rate": rate}


# ---- scenarios ----

def latency(cluster: Cluster, purges: int, load: bool) -> dict[str, Any]:
    first = cluster.nodes[NODES[0]]
    loaders = [wrk(n["port"], 3600) for n in cluster.nodes.values()] if load else []
    r = cluster.redis()
    samples = []
    try:
        for i in range(purges):
            reply = control(first, {"cmd": "purge", "kind": "url", "url": f"http://127.0.0.1/lat?{i}",
                                    "fleet_wait": 10})
            fleet = reply["fleet"]
            if fleet["pending"]:
                raise RuntimeError(f"purge {i} not applied on {fleet['pending']}")
            applied = r.hgetall(f"{STREAM}:applied")
            last = max(parse_applied(applied[n])[1] for n in NODES)
            samples.append((last - id_ms(fleet["id"]) / 1000) * 1000)
    finally:
        for proc in loaders:
            proc.kill()
            proc.wait()
    samples.sort()
    return {"purges": purges, "under_load": load, "p50_ms": round(statistics.median(samples), 2),
            "p99_ms": round(samples[int(len(samples) * 0.99) - 1], 2), "max_ms": round(samples[-1], 2)}


def replay(cluster: Cluster, purges: int) -> dict[str, Any]:
    third = cluster.nodes[NODES[2]]
    targets = [f"/bytes/1024?replay={i}" for i in range(purges)]
    for target in targets:
        get(third, target)
    kept = [t for t in targets if served_from_cache(third, t)]
    cluster.stop(NODES[2])
    first = cluster.nodes[NODES[0]]
    for target in targets:
        control(first, {"cmd": "purge", "kind": "url", "url": f"http://127.0.0.1:{third['port']}{target}"})
    started = time.monotonic()
    third = cluster.start(NODES[2])
    ready_ms = (time.monotonic() - started) * 1000
    fleet = control(third, {"cmd": "stats"})["fleet"]
    served = sum(served_from_cache(third, t) for t in targets)
    return {"purges": purges, "cached_before": len(kept), "replayed": fleet["replayed_at_start"],
            "replay_ms": fleet["replay_ms"], "start_to_ready_ms": round(ready_ms, 1),
            "purged_served_from_cache": served, "resyncs": fleet["resyncs"]}


def outage(cluster: Cluster, seconds: float) -> dict[str, Any]:
    for node in cluster.nodes.values():
        get(node, "/bytes/1024")
    loaders = [wrk(n["port"], seconds + 8, connections=8) for n in cluster.nodes.values()]
    time.sleep(3)
    cluster.kill_redis()
    down_at = time.monotonic()
    time.sleep(seconds)
    cluster.start_redis()
    down = time.monotonic() - down_at
    results = [wrk_result(p) for p in loaders]
    back = time.monotonic()
    first = cluster.nodes[NODES[0]]
    while not all(control(n, {"cmd": "stats"})["fleet"]["connected"] for n in cluster.nodes.values()):
        time.sleep(0.05)
    reconnect_ms = (time.monotonic() - back) * 1000
    reply = control(first, {"cmd": "purge", "kind": "url", "url": "http://127.0.0.1/after-outage",
                            "fleet_wait": 10})
    return {"redis_down_s": round(down, 1), "client_requests": sum(r["requests"] for r in results),
            "failed": sum(r["socket_errors"] + r["non_2xx"] for r in results),
            "all_reconnected_after_wrk_ms": round(reconnect_ms, 1),
            "purge_after_applied_on": reply["fleet"]["applied_on"], "purge_after_ms": reply["fleet"]["waited_ms"]}


def trim(cluster: Cluster) -> dict[str, Any]:
    third = cluster.nodes[NODES[2]]
    targets = [f"/bytes/1024?trim={i}" for i in range(100)]
    for target in targets:
        get(third, target)
    cluster.stop(NODES[2])
    control(cluster.nodes[NODES[0]], {"cmd": "purge", "kind": "prefix", "prefix": "/bytes/"})
    cluster.redis().xtrim(STREAM, maxlen=0)
    third = cluster.start(NODES[2])
    fleet = control(third, {"cmd": "stats"})["fleet"]
    served = sum(served_from_cache(third, t) for t in targets)
    return {"objects": len(targets), "resyncs": fleet["resyncs"], "reason": fleet["last_resync"],
            "purged_served_from_cache": served}


def throughput(cluster: Cluster, rounds: int, seconds: float) -> dict[str, Any]:
    for name in NODES:
        cluster.stop(name)
    rates: dict[str, list[float]] = {"fleet": [], "alone": []}
    for _ in range(rounds):
        for label, fleet in (("fleet", True), ("alone", False)):
            node = cluster.start("tp", fleet=fleet, cpus="0")
            get(node, "/bytes/1024")
            rates[label].append(wrk_result(wrk(node["port"], seconds, connections=64, cpus="1"))["rate"])
            cluster.stop("tp")
    fleet, alone = statistics.median(rates["fleet"]), statistics.median(rates["alone"])
    return {"rounds": rounds, "seconds": seconds, "fleet_rps": rates["fleet"], "alone_rps": rates["alone"],
            "ratio": round(fleet / alone, 3)}


def zipf_targets(count: int, urls: int, seed: int) -> list[str]:
    """``count`` request targets over ``urls`` objects, Zipf(1.0)-distributed: the shape of a CDN's traffic."""
    rng = random.Random(seed)
    weights = list(itertools.accumulate(1 / rank for rank in range(1, urls + 1)))
    return [f"/bytes/1024?z={bisect.bisect(weights, rng.random() * weights[-1])}" for _ in range(count)]


def drive(ports: list[int], targets: list[str], threads: int = 8) -> int:
    """Send ``targets`` in order, request i to ``ports[i % len(ports)]``, on keep-alive connections; failures."""
    def worker(offset: int) -> int:
        conns = {port: http.client.HTTPConnection("127.0.0.1", port, timeout=30) for port in ports}
        failed = 0
        for i in range(offset, len(targets), threads):
            conn = conns[ports[i % len(ports)]]
            conn.request("GET", targets[i], headers={"Host": "zipf.test"})
            response = conn.getresponse()
            response.read()
            failed += response.status != 200
        return failed

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        return sum(pool.map(worker, range(threads)))


def origin_fetches(nodes: list[dict[str, Any]]) -> int:
    """Requests the nodes sent to the origin: their origin requests less those that went to a peer."""
    total = 0
    for node in nodes:
        counters = control(node, {"cmd": "stats"})["counters"]
        total += counters["origin_requests"] - counters["cluster"]["sent"]
    return total


def clustering(cluster: Cluster, requests: int, urls: int) -> dict[str, Any]:
    """Origin fetches for one Zipf stream: all to one node; round-robin over three independent nodes; round-robin
    over three clustered nodes."""
    for name in list(cluster.nodes):
        cluster.stop(name)
        del cluster.nodes[name]
    targets = zipf_targets(requests, urls, seed=14)
    secret = cluster.workdir / "cluster.key"
    secret.write_text("benchmark-cluster-secret-0123456789\n")
    results: dict[str, Any] = {"requests": requests, "urls": urls, "distinct": len(set(targets))}
    for label, size, clustered in (("one_node", 1, False), ("three_independent", 3, False),
                                   ("three_clustered", 3, True)):
        names = [f"{label}-{i}" for i in range(size)]
        ports = [free_port() for _ in names]
        peers = ", ".join(f'"127.0.0.1:{p}"' for p in ports)
        nodes = []
        for name, port in zip(names, ports, strict=True):
            cluster.nodes[name] = {"port": port, "control": str(cluster.workdir / f"{name}.sock")}
            table = (f'[cluster]\npeers = [{peers}]\nself = "127.0.0.1:{port}"\nsecret_file = "{secret}"\n'
                     if clustered else "")
            nodes.append(cluster.start(name, fleet=False, cluster=table))
        started = time.monotonic()
        failed = drive(ports, targets)
        results[label] = {"origin_fetches": origin_fetches(nodes), "failed": failed,
                          "seconds": round(time.monotonic() - started, 1)}
        for name in names:
            cluster.stop(name)
    results["clustered_vs_one"] = round(results["three_clustered"]["origin_fetches"]
                                        / results["one_node"]["origin_fetches"], 3)
    results["independent_vs_one"] = round(results["three_independent"]["origin_fetches"]
                                          / results["one_node"]["origin_fetches"], 3)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--purges", type=int, default=1000)
    parser.add_argument("--outage", type=float, default=30.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--zipf-requests", type=int, default=30000)
    parser.add_argument("--zipf-urls", type=int, default=10000)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--only", action="append", choices=SCENARIOS, help="run these scenarios (default: all)")
    opts = parser.parse_args()
    started = time.monotonic()
    # The machine, versions and code first, as run.py writes them: a figure is read with its machine.
    results: dict[str, Any] = {"meta": meta(opts.out.stem if opts.out else "fleet", sys.argv[1:], ("wrk",), redis=True)}
    with tempfile.TemporaryDirectory(prefix="edgeproxy-fleet-", dir="/dev/shm") as tmp:
        procs = Fleet(Path(tmp))
        try:
            origin_port = free_port()
            procs.start("origin", [sys.executable, "-m", "edgeproxy", "demo-origin", "--listen",
                                   f"127.0.0.1:{origin_port}"], ALL_CPUS, origin_port)
            cluster = Cluster(procs, Path(tmp), origin_port)
            cluster.start_redis()
            for name in NODES:
                cluster.start(name)
            time.sleep(1.5)  # every node's heartbeat has made it live
            for name, run in (("latency_idle", lambda: latency(cluster, opts.purges, False)),
                              ("latency_loaded", lambda: latency(cluster, opts.purges, True)),
                              ("replay", lambda: replay(cluster, opts.purges)),
                              ("outage", lambda: outage(cluster, opts.outage)),
                              ("trim", lambda: trim(cluster)),
                              ("throughput", lambda: throughput(cluster, opts.rounds, opts.seconds)),
                              ("cluster", lambda: clustering(cluster, opts.zipf_requests, opts.zipf_urls))):
                if opts.only and name.partition("_")[0] not in opts.only:
                    continue
                results[name] = run()
                print(name, json.dumps(results[name]), flush=True)
        finally:
            procs.stop_all()
    results["meta"] |= {"seconds": round(time.monotonic() - started), "loadavg_end": os.getloadavg()}
    if opts.out:
        opts.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    threading.excepthook = lambda args: None  # wrk readers are killed at the end of a scenario
    main()
