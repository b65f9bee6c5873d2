"""Garbage-collection pauses while responses go through a large store, with and without ``gcpolicy``.

Rules kept here:
- In-process, no sockets: ``--objects`` 1 KiB responses are made with ``make_entry`` and ``put`` into a store sized
  for ``--entries`` of them, so the store fills and then churns (evicting as it stores), as a cache does after a
  restart. ``gc.callbacks`` times every collection.
- ``default`` leaves CPython's collector as it is; ``settle`` runs ``gcpolicy.settle()`` once before the first
  response and then every ``SETTLE_INTERVAL`` of the loop's time, as the server does.
- Reported per mode: collections by generation, the longest pause, the total time collecting, the wall time.

Run: ``python -m benchmarks.gc_pauses [--entries 220000] [--objects 450000]`` (about 25 s for both modes).
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time

from edgeproxy import gcpolicy
from edgeproxy.cache.key import CacheRequest
from edgeproxy.cache.policy import CachePolicy
from edgeproxy.cache.storability import make_entry
from edgeproxy.cache.store import Store

FIELDS = [(b"content-type", b"application/octet-stream"), (b"cache-control", b"max-age=3600"),
          (b"content-length", b"1024"), (b"etag", b'"x"')]
ENTRY_BYTES = 3000  # the store's charge for one 1 KiB response: head, body and ENTRY_OVERHEAD, rounded up


def run(mode: str, entries: int, objects: int) -> dict[str, float]:
    """One mode in this process (a fresh interpreter each: see ``main``)."""
    store, policy, now = Store(entries * ENTRY_BYTES, 1 << 20, 32), CachePolicy(), time.time()
    pauses: list[tuple[int, float]] = []
    started = [0.0]

    def watch(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            pauses.append((info["generation"], time.perf_counter() - started[0]))

    gc.callbacks.append(watch)
    if mode == "settle":
        gcpolicy.settle()
    t0 = last = time.perf_counter()
    for i in range(objects):
        req = CacheRequest(b"GET", "http", "bench.test", b"/bytes/1024?i=%d" % i, [(b"host", b"bench.test")])
        store.put(make_entry(req, 200, FIELDS, b"x" * 1024, now, now, policy, ()), since=0)
        if mode == "settle" and time.perf_counter() - last >= gcpolicy.SETTLE_INTERVAL:
            gcpolicy.settle()
            last = time.perf_counter()
    wall = time.perf_counter() - t0
    gc.callbacks.remove(watch)
    return {
        "mode": mode, "entries": store.stats().entries, "responses": objects, "wall_s": round(wall, 2),
        "collections": [sum(1 for g, _ in pauses if g == n) for n in (0, 1, 2)],
        "max_pause_ms": round(max((p for _, p in pauses), default=0.0) * 1000, 1),
        "total_gc_ms": round(sum(p for _, p in pauses) * 1000),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.gc_pauses", description=__doc__.split("\n")[0])
    ap.add_argument("--entries", type=int, default=220_000, help="store size, in 1 KiB responses")
    ap.add_argument("--objects", type=int, default=450_000, help="responses stored (fill, then churn)")
    ap.add_argument("--mode", choices=["default", "settle"], help="run one mode here (used by the parent run)")
    args = ap.parse_args(argv)
    if args.mode:
        print(json.dumps(run(args.mode, args.entries, args.objects)))
        return
    print("| mode | entries | responses | wall s | collections gen0/1/2 | longest pause ms | total GC ms |")
    print("|---|---|---|---|---|---|---|")
    for mode in ("default", "settle"):  # each in a fresh interpreter: nothing frozen or collected carries over
        out = subprocess.run([sys.executable, "-m", "benchmarks.gc_pauses", "--mode", mode, "--entries",
                              str(args.entries), "--objects", str(args.objects)],
                             check=True, capture_output=True, text=True).stdout
        r = json.loads(out)
        gens = "/".join(str(n) for n in r["collections"])
        print(f"| {mode} | {r['entries']} | {r['responses']} | {r['wall_s']} | {gens} | {r['max_pause_ms']} | "
              f"{r['total_gc_ms']} |")


if __name__ == "__main__":
    main()
