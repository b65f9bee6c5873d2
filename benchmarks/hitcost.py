"""Instructions per cache hit, in-process: deterministic, so a change on the hit path is measured on a busy machine.

One ``ClientConnection`` over a null transport is fed the same keep-alive request head ``--n`` times; the entry is
stored beforehand, so every request is a hit: parsed by h11 or httptools with the fast lane off, or answered by
the lane (``lane-*``: the compiled scanner; ``twin-*``: its Python twin). No sockets, no wrk. Under callgrind the
difference between two ``--n`` counts, divided by the difference in requests, is the cost of one hit with start-up
cancelled out:

    python -m benchmarks.hitcost --compare            # runs callgrind itself: instructions per hit, each mode
    python -m benchmarks.hitcost --mode parsed-h11 --n 1000   # one loop (what --compare runs under callgrind)
    python -m benchmarks.hitcost --stores             # microseconds per hit by store: in-process, hot tier, shared

``--head real`` feeds browser-like heads instead (~450-570 bytes: a user agent, Accept, Accept-Language,
Accept-Encoding, a cookie, a Referer, over 8 cached URLs with a query), each ending in a unique X-Request-Id as
``wrk/real.lua`` sends them: no two heads are the same bytes, which the lane does not mind (it keys on the URL).
The default (``short``) is the one ~190-byte head of the earlier figures.

``--store`` picks where the entry lives: ``memory`` (the in-process LRU of ``workers = 1``), ``hot`` (a worker's hot
tier over the host's shared LMDB store: the copy is checked against the slot map) or ``shared`` (no hot tier:
every hit reads the shared store, decodes the entry and checks its version).

It uses only the public shapes of ``Edge`` and ``ClientConnection``, so the same file measures an older
checkout (copy it there) for a before/after table.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from typing import Any

MODES = ("parsed-h11", "parsed-httptools", "lane-h11", "lane-httptools", "twin-httptools")
STORES = ("memory", "hot", "shared")
HEADS = ("short", "real")
HEAD = (b"GET /bytes/1024 HTTP/1.1\r\nHost: a.test\r\nUser-Agent: hitcost/1\r\nAccept: */*\r\n"
        b"Accept-Language: en-GB,en;q=0.9\r\nAccept-Encoding: gzip, deflate, br\r\n\r\n")
# ``--head real``: browser-like heads as benchmarks/wrk/real.lua sends them (~600 bytes: user agent, Accept,
# Accept-Language, Accept-Encoding, a cookie, Referer) over OBJECTS cached URLs, each ending in a unique X-Request-Id,
# so no two heads are the same bytes. REAL_POOL heads, seeded: every run sees the same.
OBJECTS = 8
REAL_POOL = 30
_AGENTS = (
    b"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
    b"Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4.1 "
    b"Safari/605.1.15",
    b"Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
)
_ACCEPTS = (b"text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8",
            b"image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8", b"*/*")
_LANGUAGES = (b"en-US,en;q=0.9", b"de-DE,de;q=0.9,en;q=0.8", b"fr-FR,fr;q=0.9,en-US;q=0.8,en;q=0.7")
_ENCODINGS = (b"gzip, deflate, br, zstd", b"gzip, deflate, br")
_REFERERS = (b"https://www.example.com/", b"https://www.example.com/articles/2026/12/a-long-article-title?utm_source=news",
             b"https://shop.example.com/category/shoes?page=2&sort=price")


class NullTransport:
    def __init__(self) -> None:
        self.sent = 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("203.0.113.9", 40000) if name == "peername" else default

    def write(self, data: bytes) -> None:
        self.sent += len(data)

    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def close(self) -> None: ...
    def abort(self) -> None: ...

    def is_closing(self) -> bool:
        return False


def make_store(kind: str, directory: str) -> Any:
    """The store a hit reads: None (the Edge's default in-process store), or a tiered store over LMDB."""
    if kind == "memory":
        return None
    from edgeproxy.shared.store import SharedStore
    from edgeproxy.shared.tiered import TieredStore

    shared = SharedStore(directory, 64 * 1024 * 1024)
    return TieredStore(shared, 4 * 1024 * 1024 if kind == "hot" else 0, 1024 * 1024)


def real_prefixes() -> list[bytes]:
    """REAL_POOL heads up to their X-Request-Id line, each for one of the OBJECTS URLs in turn."""
    rnd = random.Random(20261206)
    out = []
    for p in range(REAL_POOL):
        cookie = b"session=%032x; consent=%016x; _ga=GA1.2.%d.%d" % (
            rnd.getrandbits(128), rnd.getrandbits(64), rnd.randint(10**8, 10**9 - 1),
            rnd.randint(16 * 10**8, 17 * 10**8))
        out.append(b"GET /bytes/1024?o=%d HTTP/1.1\r\nHost: a.test\r\nUser-Agent: %s\r\nAccept: %s\r\n"
                   b"Accept-Language: %s\r\nAccept-Encoding: %s\r\nCookie: %s\r\nReferer: %s\r\nX-Request-Id: " % (
                       p % OBJECTS, rnd.choice(_AGENTS), rnd.choice(_ACCEPTS), rnd.choice(_LANGUAGES),
                       rnd.choice(_ENCODINGS), cookie, rnd.choice(_REFERERS)))
    return out


async def loop_hits(mode: str, n: int, store: str = "memory", head: str = "short") -> int:
    from edgeproxy.cache.key import CacheRequest
    from edgeproxy.cache.storability import make_entry
    from edgeproxy.config import config_from_dict
    from edgeproxy.http import headscan
    from edgeproxy.proxy import lane
    from edgeproxy.proxy.client import ClientConnection
    from edgeproxy.proxy.edge import Edge

    twin = mode.startswith("twin")  # the lane with the scanner's Python twin
    lane.scan, lane.fields_named = (headscan.scan_py, headscan.fields_named_py) if twin else (
        headscan.scan, headscan.fields_named)
    parser = mode.rpartition("-")[2]
    access = os.environ.get("HITCOST_LOG", "off")  # on: a file access log (combined), as users run it
    config = config_from_dict({"server": {"parser": parser, "fast_lane": not mode.startswith("parsed")},
                               "log": {"access": os.devnull if access == "on" else False},
                               "site": [{"origin": "http://127.0.0.1:9"}]})
    directory = tempfile.mkdtemp(prefix="hitcost-")
    edge = Edge(config, asyncio.get_running_loop(), store=make_store(store, directory))
    site = edge.runtimes[id(config.sites[0])]
    now = time.time()
    fields = [(b"cache-control", b"max-age=3600"), (b"content-type", b"application/octet-stream"),
              (b"content-length", b"1024")]
    targets = [b"/bytes/1024?o=%d" % k for k in range(OBJECTS)] if head == "real" else [b"/bytes/1024"]
    for target in targets:
        creq = CacheRequest(b"GET", "http", "a.test", target, [])
        edge.store.put(make_entry(creq, 200, fields, b"x" * 1024, now, now, site.policy))
    conn, transport = ClientConnection(edge, "http"), NullTransport()
    conn.connection_made(transport)
    if head == "real":
        # One concatenation per request (counted in the figures: a client has to make its head too).
        prefixes = real_prefixes()
        for i in range(n):
            conn.data_received(prefixes[i % REAL_POOL] + b"%d-20261206\r\n\r\n" % i)
    else:
        for _ in range(n):
            conn.data_received(HEAD)
    return transport.sent


async def time_hits(mode: str, store: str, n: int, head: str = "short") -> float:
    """Microseconds per hit, the best of three runs of ``n``."""
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        sent = await loop_hits(mode, n, store, head)
        best = min(best, (time.perf_counter() - start) / n * 1e6)
        assert sent > n * 1024, f"not every request was a hit: {sent} bytes for {n}"
    return best


def callgrind_total(mode: str, n: int, store: str = "memory", head: str = "short") -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "cg.out")
        subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, "-m",
                        "benchmarks.hitcost", "--mode", mode, "--n", str(n), "--store", store, "--head", head],
                       check=True, capture_output=True, env={**os.environ, "PYTHONHASHSEED": "0"})
        with open(out) as f:
            return int(re.search(r"^summary: (\d+)", f.read(), re.M).group(1))  # type: ignore[union-attr]


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--mode", choices=MODES)
    args.add_argument("--n", type=int, default=1000)
    args.add_argument("--store", choices=STORES, default="memory")
    args.add_argument("--head", choices=HEADS, default="short",
                      help="short: one ~190-byte head repeated; real: browser-like ~600-byte heads, none repeated")
    args.add_argument("--compare", action="store_true", help="instructions per hit for every mode (callgrind)")
    args.add_argument("--stores", action="store_true", help="microseconds per hit for every store and mode")
    opts = args.parse_args()
    if opts.stores:
        print("| mode | " + " | ".join(f"{s} (µs)" for s in STORES) + " | shared - hot (µs) |\n|---|---|---|---|---|")
        for mode in MODES:
            times = [asyncio.run(time_hits(mode, store, opts.n, opts.head)) for store in STORES]
            print(f"| {mode} | " + " | ".join(f"{t:.2f}" for t in times) + f" | {times[2] - times[1]:+.2f} |")
        return
    if opts.compare:
        print(f"| mode | instructions per hit ({opts.store}, {opts.head} head) |\n|---|---|")
        for mode in MODES:
            low = callgrind_total(mode, 200, opts.store, opts.head)
            high = callgrind_total(mode, 1200, opts.store, opts.head)
            print(f"| {mode} | {(high - low) / 1000 / 1000:.1f}k |")
        return
    if opts.mode is None:
        args.error("--mode or --compare")
    sent = asyncio.run(loop_hits(opts.mode, opts.n, opts.store, opts.head))
    assert sent > opts.n * 1024, f"not every request was a hit: {sent} bytes for {opts.n}"


if __name__ == "__main__":
    main()
