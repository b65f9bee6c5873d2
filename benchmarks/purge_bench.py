"""Purge and hit-path cost of the in-memory store at a million entries.

Rules kept here:
- Pure and standalone: no network, no event loop; ``python benchmarks/purge_bench.py [--entries N]``.
- One store is filled once with small entries (one cheap Entry factory, shared header list, capacity
  sized to fit them all), then each purge runs soft first (marks the matches) and hard second (removes
  them) on the same population, so each row's two figures concern the same entries.
- Population: 10 hosts; on ``h0.example`` every entry lives under ``/static/`` (10 % of the store);
  1000 tags spread evenly (0.1 % each). The regex row is there to show what an unindexed purge costs.
Outputs: a Markdown table on stdout and ``benchmarks/results/purge.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import timeit
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # standalone runs: make the repository's package importable

from edgeproxy.cache.entry import ENTRY_OVERHEAD, Entry  # noqa: E402
from edgeproxy.cache.purge import PurgeAll, PurgePrefix, PurgeRegex, PurgeTag, PurgeURL, Selector  # noqa: E402
from edgeproxy.cache.store import Store  # noqa: E402

HOSTS = 10
TAGS = [frozenset({f"t{i}"}) for i in range(1000)]
HEADERS = [(b"content-type", b"image/png"), (b"cache-control", b"max-age=3600")]
HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: image/png\r\ncache-control: max-age=3600\r\n"
SIZE = ENTRY_OVERHEAD + len(HEAD)


def make_entry(i: int) -> Entry:
    host = f"h{i % HOSTS}.example"
    path = f"/static/{i}.png" if i % HOSTS == 0 else f"/img/{i // HOSTS % 100}/{i}.png"
    return Entry(
        f"https://{host}{path}", (), (), host, path, 200, HEADERS, b"", HEAD,
        1.7e9, 1.7e9, 1.7e9, 0.0, 3600.0, tags=TAGS[i % len(TAGS)], size=SIZE,
    )  # fmt: skip


def fill(count: int) -> tuple[Store, float]:
    store = Store(count * SIZE)
    entries = [make_entry(i) for i in range(count)]
    start = time.perf_counter()
    for entry in entries:
        store.put(entry)
    return store, time.perf_counter() - start


def hit_path_ns(store: Store, count: int) -> float:
    """get + touch of one stored key, the store's share of a cache hit (best of 5)."""
    key = make_entry(count // 2).primary_key
    get, touch = store.get, store.touch
    runs = timeit.repeat(lambda: touch(get(key)[0]), number=200_000, repeat=5)
    return min(runs) / 200_000 * 1e9


def timed_purge(store: Store, selector: Selector, soft: bool) -> tuple[int, float]:
    start = time.perf_counter()
    count = store.purge(selector, soft=soft, now=1.7e9)
    return count, (time.perf_counter() - start) * 1000


def run(count: int) -> dict[str, object]:
    store, fill_s = fill(count)
    hit_ns = hit_path_ns(store, count)
    cases: list[tuple[str, Selector]] = [
        ("one URL", PurgeURL(make_entry(count // 3).primary_key)),
        ("prefix /static/* on h0 (10 %)", PurgePrefix("/static/*", "h0.example")),
        ("tag t7 (0.1 %)", PurgeTag(frozenset({"t7"}))),
        ("regex h3 .png (scan)", PurgeRegex(r"//h3\.example/.*\.png$")),
        ("all", PurgeAll()),
    ]
    rows = []
    for name, selector in cases:
        matched, soft_ms = timed_purge(store, selector, soft=True)
        removed, hard_ms = timed_purge(store, selector, soft=False)
        assert matched == removed, (name, matched, removed)
        rows.append({"purge": name, "entries": matched, "soft_ms": soft_ms, "hard_ms": hard_ms})
    return {
        "entries": count,
        "fill_seconds": fill_s,
        "puts_per_second": count / fill_s,
        "hit_path_ns": hit_ns,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "purges": rows,
    }


def markdown(result: dict[str, object]) -> str:
    lines = [
        f"{result['entries']:,} entries; fill {result['fill_seconds']:.2f} s "
        f"({result['puts_per_second']:,.0f} puts/s); hit path get+touch {result['hit_path_ns']:.0f} ns",
        "",
        "| purge | entries | soft ms | hard ms |",
        "|---|---:|---:|---:|",
    ]
    for row in result["purges"]:  # type: ignore[attr-defined]
        lines.append(f"| {row['purge']} | {row['entries']:,} | {row['soft_ms']:.3f} | {row['hard_ms']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "purge.json")
    args = parser.parse_args()
    result = run(args.entries)
    print(markdown(result))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
