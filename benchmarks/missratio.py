"""Miss ratio of S3-FIFO (edgeproxy/cache/s3fifo.py) against the store's exact LRU, on seeded synthetic traces.

Rules kept here:
- Both policies see the same request sequence at the same byte capacity, and every object is charged what the
  store charges a 1 KiB response: ``OBJECT_SIZE`` = 1024 body + ``ENTRY_OVERHEAD`` + 300 of head.
- LRU is the product's own ``Store`` (cache/store.py), fed synthetic ``Entry`` objects: ``get`` then ``touch`` on a
  hit, ``put`` of a new entry on a miss (the store evicts least-recently-used entries until it fits).
- S3-FIFO is ``next_victim`` over ``MemoryQueues``, the module's own code, inside ``S3FIFOCache`` here: a hit
  raises the counter (``MemoryQueues.hit``); a miss evicts with ``next_victim`` until the object fits, then
  ``add``s it (``queue_for`` picks SMALL, or MAIN when the ghost remembers it). The cache keeps its byte count
  and checks it against the queues' at the end.
- Every request counts, the first one of each object too (compulsory misses: the same for every policy, and
  printed as "floor"). Cache sizes are shares of the Zipf population's bytes (``--objects`` x ``OBJECT_SIZE``),
  the same absolute sizes on every trace.
- Traces, all from one seed, so each is the Zipf sequence with something mixed in:
  ``zipf``: Zipf(alpha=1.0) over ``--objects`` URLs (precomputed cumulative weights, ``random.choices``).
  ``zipf+scan``: every 10th request replaced by a one-hit wonder, a URL asked for once and never again.
  ``zipf+burst``: the same share of one-hit wonders in bursts: every ``--objects`` requests, a run of
  ``--objects``/10 of them back to back (a crawler walking cold URLs), which flushes an LRU of that many objects.
  ``zipf+loop``: every 5th request replaced by the next URL of a loop over ``--objects``/5 URLs, in order and
  round again (a crawler or a batch job walking a fixed list; each loop URL comes back every 5 x loop requests).
- S3-FIFO runs with ``promote`` in {1, 2} and ``small_share`` in {0.1, 0.2}; the module's defaults are
  promote=1, small_share=0.1, and "S3-FIFO" without parameters means those.

Run: ``python -m benchmarks.missratio`` (1,000,000 requests over 100,000 URLs, about 1 min 50 s on the 2-core dev
box), ``--quick`` (150,000 over 15,000, about 13 s), ``--json PATH`` to write every figure.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import platform
import random
import sys
import time

from edgeproxy.cache.entry import ENTRY_OVERHEAD, Entry
from edgeproxy.cache.s3fifo import MAIN, PROMOTE, SMALL, SMALL_SHARE, MemoryQueues, next_victim
from edgeproxy.cache.store import Store

BODY = b"x" * 1024
HEAD = (b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: 1024\r\n"
        b"cache-control: public, max-age=3600\r\netag: \"0123456789abcdef\"\r\n").ljust(300, b"x")
OBJECT_SIZE = len(BODY) + ENTRY_OVERHEAD + len(HEAD)
HOST = "bench.example"
ALPHA = 1.0
SCAN_EVERY = 10
LOOP_EVERY = 5
CACHE_SHARES = (0.01, 0.05, 0.10, 0.25)
PARAMS = [(1, 0.1), (2, 0.1), (1, 0.2), (2, 0.2)]  # (promote, small_share)
TRACES = ("zipf", "zipf+scan", "zipf+burst", "zipf+loop")


# -- traces -----------------------------------------------------------------------------------------------------

def zipf(rng: random.Random, objects: int, requests: int, alpha: float = ALPHA) -> list[int]:
    """URL ids 0..objects-1, id i asked for with probability proportional to 1/(i+1)**alpha."""
    cumulative = list(itertools.accumulate(1.0 / (rank ** alpha) for rank in range(1, objects + 1)))
    return rng.choices(range(objects), cum_weights=cumulative, k=requests)


def make_trace(name: str, objects: int, requests: int, seed: int) -> list[int]:
    """The named trace (ids at or above ``objects`` are the ones mixed into the Zipf sequence)."""
    trace = zipf(random.Random(seed), objects, requests)
    if name == "zipf+scan":
        trace[SCAN_EVERY - 1::SCAN_EVERY] = range(objects, objects + len(trace[SCAN_EVERY - 1::SCAN_EVERY]))
    elif name == "zipf+burst":
        burst, fresh = max(objects // 10, 1), itertools.count(objects)
        for start in range(objects - burst, len(trace), objects):
            end = min(start + burst, len(trace))
            trace[start:end] = itertools.islice(fresh, end - start)
    elif name == "zipf+loop":
        loop = max(objects // 5, 1)
        count = len(trace[LOOP_EVERY - 1::LOOP_EVERY])
        trace[LOOP_EVERY - 1::LOOP_EVERY] = [objects + i % loop for i in range(count)]
    elif name != "zipf":
        raise ValueError(f"unknown trace {name!r}")
    return trace


# -- the two caches ---------------------------------------------------------------------------------------------

def make_entry(key: str, path: str) -> Entry:
    return Entry(primary_key=key, variant_key=(), vary=(), host=HOST, path=path, status=200, headers=[],
                 body=BODY, head=HEAD, request_time=0.0, response_time=0.0, date_value=0.0,
                 corrected_initial_age=0.0, freshness_lifetime=3600.0, size=OBJECT_SIZE)


def run_lru(trace: list[int], capacity: int) -> int:
    """Misses of the product's ``Store`` on ``trace``."""
    store = Store(capacity)
    get, touch, put = store.get, store.touch, store.put
    paths = [f"/obj/{i}" for i in range(max(trace) + 1)]
    prefix = f"https://{HOST}"
    misses = 0
    for url in trace:
        path = paths[url]
        key = prefix + path
        found = get(key)
        if found:
            touch(found[0])
        else:
            misses += 1
            put(make_entry(key, path))
    stats = store.stats()
    assert stats.misses == misses and stats.bytes <= capacity, stats
    return misses


class S3FIFOCache:
    """A byte-bounded cache whose only policy is cache/s3fifo.py: what it stores, which it evicts, nothing else."""

    def __init__(self, capacity: int, promote: int = PROMOTE, small_share: float = SMALL_SHARE) -> None:
        self.capacity = capacity
        self.promote = promote
        self.small_share = small_share
        self.queues = MemoryQueues()
        self.stored: set[int] = set()  # slots: a URL's id is its slot while it is stored
        self.used = 0
        self.evictions = 0

    def run(self, trace: list[int]) -> int:
        """Misses on ``trace`` (the request loop, written out flat: it runs millions of times)."""
        queues, stored, capacity = self.queues, self.stored, self.capacity
        promote, small_share = self.promote, self.small_share
        hit, add, evicted, sizes = queues.hit, queues.add, queues.evicted, queues.sizes
        size = OBJECT_SIZE
        used, misses, evictions = self.used, 0, self.evictions
        for url in trace:
            if url in stored:
                hit(url)
                continue
            misses += 1
            if size > capacity:
                continue  # never stored (the store refuses it too)
            while used + size > capacity:
                victim = next_victim(queues, capacity, small_share, promote)
                assert victim is not None, "bytes counted but both queues empty"
                used -= sizes[victim]
                evicted(victim)
                stored.remove(victim)
                evictions += 1
            add(url, size, b"%d" % url)
            stored.add(url)
            used += size
        self.used, self.evictions = used, evictions
        assert used == queues.size(SMALL) + queues.size(MAIN) <= capacity, (used, capacity)
        return misses


# -- the run ----------------------------------------------------------------------------------------------------

def policies() -> list[tuple[str, int | None, float | None]]:
    return [("lru", None, None), *((f"s3fifo p={p} s={s}", p, s) for p, s in PARAMS)]


def run(objects: int, requests: int, seed: int, traces: tuple[str, ...], out=sys.stdout) -> dict:
    results = []
    t_start = time.perf_counter()
    for name in traces:
        t0 = time.perf_counter()
        trace = make_trace(name, objects, requests, seed)
        floor = len(set(trace)) / len(trace)
        print(f"# {name}: {len(trace):,} requests, {len(set(trace)):,} URLs, trace built in "
              f"{time.perf_counter() - t0:.1f} s", file=out, flush=True)
        for share in CACHE_SHARES:
            capacity = int(objects * OBJECT_SIZE * share)
            for policy, promote, small_share in policies():
                t0 = time.perf_counter()
                if promote is None:
                    misses = run_lru(trace, capacity)
                else:
                    misses = S3FIFOCache(capacity, promote, small_share).run(trace)
                results.append({
                    "trace": name, "cache_share": share, "capacity_bytes": capacity,
                    "objects_fit": capacity // OBJECT_SIZE, "policy": policy, "promote": promote,
                    "small_share": small_share, "requests": len(trace), "misses": misses,
                    "miss_ratio": misses / len(trace), "floor": floor,
                    "seconds": round(time.perf_counter() - t0, 2),
                })
            print(f"  {share:.0%} done ({time.perf_counter() - t_start:.0f} s)", file=out, flush=True)
    return {
        "benchmark": "missratio",
        "objects": objects, "requests": requests, "seed": seed, "alpha": ALPHA, "object_size": OBJECT_SIZE,
        "scan_every": SCAN_EVERY, "burst": max(objects // 10, 1), "loop_every": LOOP_EVERY,
        "loop_urls": max(objects // 5, 1),
        "defaults": {"promote": PROMOTE, "small_share": SMALL_SHARE},
        "python": platform.python_version(), "machine": platform.machine(),
        "seconds": round(time.perf_counter() - t_start, 1),
        "results": results,
    }


def markdown(report: dict) -> str:
    rows = report["results"]
    default = f"s3fifo p={PROMOTE} s={SMALL_SHARE}"
    lines = [
        f"{report['requests']:,} requests, {report['objects']:,} Zipf URLs (alpha {report['alpha']}), "
        f"{report['object_size']:,} bytes charged per object, seed {report['seed']}; miss ratios (lower is "
        f"better), floor = compulsory misses. S3-FIFO = promote {PROMOTE}, small_share {SMALL_SHARE} "
        "(the module's defaults).",
        "",
        "| trace | cache | objects | floor | LRU | S3-FIFO | S3-FIFO / LRU | "
        + " | ".join(f"p={p} s={s}" for p, s in PARAMS) + " | best |",
        "|---|---|---|---|---|---|---|" + "---|" * len(PARAMS) + "---|",
    ]
    for key, group in itertools.groupby(rows, key=lambda r: (r["trace"], r["cache_share"])):
        by = {r["policy"]: r for r in group}
        lru, s3 = by["lru"]["miss_ratio"], by[default]["miss_ratio"]
        s3s = [by[f"s3fifo p={p} s={s}"]["miss_ratio"] for p, s in PARAMS]
        best = min(range(len(PARAMS)), key=lambda i: s3s[i])
        lines.append(
            f"| {key[0]} | {key[1]:.0%} | {by['lru']['objects_fit']:,} | {by['lru']['floor']:.4f} | {lru:.4f} | "
            f"{s3:.4f} | {s3 / lru:.3f} | " + " | ".join(f"{m:.4f}" for m in s3s)
            + f" | p={PARAMS[best][0]} s={PARAMS[best][1]} |")
    lines += ["", "Mean S3-FIFO / LRU miss ratio over the cache sizes, per trace and parameters:", "",
              "| trace | " + " | ".join(f"p={p} s={s}" for p, s in PARAMS) + " |",
              "|---|" + "---|" * len(PARAMS)]
    for name, group in itertools.groupby(rows, key=lambda r: r["trace"]):
        group = list(group)
        lru = {r["cache_share"]: r["miss_ratio"] for r in group if r["policy"] == "lru"}
        means = []
        for p, s in PARAMS:
            ratios = [r["miss_ratio"] / lru[r["cache_share"]] for r in group if r["policy"] == f"s3fifo p={p} s={s}"]
            means.append(sum(ratios) / len(ratios))
        lines.append(f"| {name} | " + " | ".join(f"{m:.3f}" for m in means) + " |")
    worse = [r for r in rows if r["policy"] == default and r["miss_ratio"] > next(
        x["miss_ratio"] for x in rows if x["policy"] == "lru" and x["trace"] == r["trace"]
        and x["cache_share"] == r["cache_share"])]
    lines += ["", "S3-FIFO (defaults) worse than LRU at: "
              + (", ".join(f"{r['trace']} {r['cache_share']:.0%}" for r in worse) if worse else "nowhere"),
              "", f"{report['seconds']} s, Python {report['python']}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.missratio", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="150,000 requests over 15,000 URLs (about 13 s)")
    ap.add_argument("--objects", type=int, help="Zipf URLs (default 100,000; 15,000 with --quick)")
    ap.add_argument("--requests", type=int, help="requests per trace (default 1,000,000; 150,000 with --quick)")
    ap.add_argument("--seed", type=int, default=20261206)
    ap.add_argument("--trace", action="append", choices=TRACES, help="run only these traces (repeatable)")
    ap.add_argument("--json", metavar="PATH", help="write every figure there")
    args = ap.parse_args(argv)
    objects = args.objects or (15_000 if args.quick else 100_000)
    requests = args.requests or (150_000 if args.quick else 1_000_000)
    gc.disable()  # nothing here makes reference cycles; the collector would only rescan the stores, many times
    report = run(objects, requests, args.seed, tuple(args.trace or TRACES), out=sys.stderr)
    gc.enable()
    print(markdown(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
            f.write("\n")


if __name__ == "__main__":
    main()
