"""The memory scenario: RSS of edgeproxy after filling its 256 MiB cache with 1 KiB-64 KiB objects.

Rules kept here:
- The loader is plain Python (``http.client`` keep-alive connections, a few threads), not wrk: it must
  request distinct URLs (``/bytes/N?m=K``), and a Lua ``request()`` buys nothing at a few thousand req/s.
- Sizes are uniform over 1 KiB-64 KiB from a fixed seed, so every run stores the same objects.
- The cache is filled past its size (``OVERFILL`` x the capacity in body bytes), so eviction has run and
  the store sits at its byte bound when RSS is read; the store's own accounting comes from ``stats``.
- The goal from the issue: RSS <= 1.3 x cache size + 40 MiB (Python objects, buffers, the interpreter).
"""

from __future__ import annotations

import http.client
import random
import threading
import time

from benchmarks.procs import Target, status_kib
from edgeproxy.control.client import ControlClient, ControlError

CACHE_MIB = 256
MIB = 1024 * 1024
OVERFILL = 1.25
THREADS = 4
SEED = 20261125
BUDGET_SECONDS = 30  # what fit_seconds reserves (a fill takes ~5 s); it stops at the run's deadline anyway


def goal_mib(cache_mib: int) -> float:
    return 1.3 * cache_mib + 40


def plan(cache_mib: int) -> list[str]:
    rng = random.Random(SEED)
    paths, total = [], 0
    while total < OVERFILL * cache_mib * MIB:
        size = rng.randint(1024, 64 * 1024)
        paths.append(f"/bytes/{size}?m={len(paths)}")
        total += size
    return paths


def load(port: int, paths: list[str], deadline: float, errors: list[str]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        for path in paths:
            if time.monotonic() > deadline:
                errors.append("deadline reached before the cache was full")
                return
            conn.request("GET", path)
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                errors.append(f"{path} answered {resp.status}")
                return
    except (OSError, http.client.HTTPException) as exc:
        errors.append(f"{exc!r}"[:120])
    finally:
        conn.close()


def fill(port: int, cache_mib: int, deadline: float) -> tuple[int, float, list[str]]:
    """Request every planned URL over THREADS connections; returns (requests, seconds, errors)."""
    paths, errors = plan(cache_mib), []
    started = time.monotonic()
    threads = [threading.Thread(target=load, args=(port, paths[i::THREADS], deadline, errors), daemon=True)
               for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(paths), time.monotonic() - started, errors


def store_stats(target: Target) -> dict[str, object]:
    try:
        with ControlClient(str(target.control)) as client:
            reply = client.request({"cmd": "stats"})
    except ControlError as exc:
        return {"stats_error": str(exc)}
    return {k: reply.get(k) for k in ("entries", "bytes", "capacity", "evictions") if k in reply}


def measure(targets: list[Target], cache_mib: int, deadline: float) -> dict[str, object]:
    rows: dict[str, dict[str, object]] = {}
    for target in targets:
        if target.unavailable or target.proc is None:
            rows[target.name] = {"notes": [target.unavailable]}
            continue
        requests, seconds, errors = fill(target.port, cache_mib, deadline - 10)
        pid = target.proc.pid
        rss = status_kib(pid, "VmRSS:") / 1024
        rows[target.name] = {
            "requests": requests, "fill_seconds": round(seconds, 1), "rss_mib": round(rss, 1),
            "peak_rss_mib": round(status_kib(pid, "VmHWM:") / 1024, 1), "goal_mib": goal_mib(cache_mib),
            "met": rss <= goal_mib(cache_mib) and not errors, **store_stats(target), "notes": errors[:3],
        }
    return {"kind": "memory", "cache_mib": cache_mib, "sizes": "1 KiB-64 KiB uniform", "overfill": OVERFILL,
            "targets": rows}
