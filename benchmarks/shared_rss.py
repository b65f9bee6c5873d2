"""The shared-rss scenario: the memory of the whole host once edgeproxy's cache is full of 1 KiB objects.

With ``[server] workers`` > 1 the workers share one LMDB store on tmpfs (edgeproxy/shared), each with a small hot
tier in front of it. The question is what the host pays for that: one copy of the cache plus what each process
costs, or more (copies in the hot tiers, LMDB's pages, the slot map, a page in every worker that mapped it).

Rules kept here:
- The fill is wrk with ``wrk/fill.lua``: every request a URL never asked before (``/bytes/1024?f=<run>-<n>``), in
  wrk runs of ``FILL_CHUNK`` seconds, until the store has evicted ``OVERFILL - 1`` of the objects it holds (it sits
  at its byte bound and has churned, which is when LMDB's pages are most spread) or ``FILL_SECONDS`` passed. The
  counts come from the target's own ``stats`` (control socket): ``entries``, ``bytes``, ``capacity``, ``evictions``.
- Memory is read from every process of the target's tree (supervisor, workers, Python's resource tracker) after
  a pause of ``SETTLE`` seconds: RSS (``VmRSS``), Pss and private bytes (USS: Private_Clean + Private_Dirty) from
  ``smaps_rollup``, and the part of each that maps the store's files (``smaps``).
- The store's files are tmpfs: memory whether mapped or not, counted once from their allocated blocks
  (``st_blocks``, what ``du`` reports; ``data.mdb`` is sparse, its apparent size is the whole map).
- The host figure (the goal's): sum of USS less each process's private pages of the store's mappings (a tmpfs page
  only one process mapped is "private" to it, and is already in the files' bytes) + the files' tmpfs bytes.
  Beside it, the same from Pss: sum of (Pss - Pss_Shmem) + the files' bytes. Targets that share nothing (1 worker,
  ``-unshared``) have no store files: their host figure is their USS sum.
- Goal (the issue's): host <= ``[cache] size`` + 40 MiB x workers.
- LMDB's map: the pages in use (last page number + 1, times the page size, read from the meta pages through a
  lock-free read-only open: no reader slot, nothing written) against the configured size and the map the store
  reserved (``map_size_for``: 3 x its capacity + 64 MiB of address space, sparse).
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from pathlib import Path
from typing import Any

from benchmarks.procs import (
    CLIENT_CPUS,
    HERE,
    TARGETS,
    Target,
    control_stats,
    mapped_under_kib,
    process_tree,
    smaps_rollup_kib,
    status_kib,
)
from benchmarks.report import parse_wrk

MIB = 1024 * 1024
OBJECT_PATH = "/bytes/1024"
OVERFILL = 1.25
FILL_CHUNK = 4  # seconds per wrk run; stats are read between runs
FILL_SECONDS = 90  # per target, at most
SETTLE = 2.0
CONNECTIONS = 64
PER_WORKER_MIB = 40
SAMPLE = 1000  # records of the objects table whose size is averaged


def goal_mib(cache_mib: int, workers: int) -> float:
    return cache_mib + PER_WORKER_MIB * workers


def budget_seconds(targets: int) -> int:
    """What ``fit_seconds`` reserves: a fill of ~15-40 s at 1 KiB per target, plus start and settle."""
    return targets * 45


def full(stats: dict[str, Any]) -> bool:
    """Filled and churned: OVERFILL - 1 of what the store holds has been evicted since it reached its bound."""
    entries, evictions = stats.get("entries") or 0, stats.get("evictions") or 0
    return entries > 0 and evictions >= (OVERFILL - 1) * entries


def fill(target: Target, deadline: float) -> tuple[int, float, dict[str, Any], list[str]]:
    """wrk runs of distinct URLs until ``full``; returns (requests, seconds, last stats, notes)."""
    started, requests, notes, run = time.monotonic(), 0, [], 0
    stats = control_stats(target)
    while not full(stats):
        if time.monotonic() + FILL_CHUNK + 5 > min(deadline, started + FILL_SECONDS):
            notes.append(f"stopped filling after {time.monotonic() - started:.0f} s: not yet "
                         f"{OVERFILL - 1:.0%} evicted")
            break
        run += 1
        argv = ["taskset", "-c", CLIENT_CPUS, "wrk", "-t1", f"-c{CONNECTIONS}", f"-d{FILL_CHUNK}s", "--timeout", "5s",
                "-s", str(HERE / "wrk" / "fill.lua"), f"http://127.0.0.1:{target.port}{OBJECT_PATH}", "--", str(run)]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=FILL_CHUNK + 30, check=True)
        result = parse_wrk(done.stdout)
        requests += int(result["requests"])
        if result["errors"]:
            notes.append(f"wrk run {run}: {result['errors']:.0f} errors")
        stats = control_stats(target)
        if "stats_error" in stats:
            notes.append(f"stats: {stats['stats_error']}")
            break
    return requests, time.monotonic() - started, stats, notes


def store_files(directory: Path | None) -> dict[str, dict[str, int]]:
    """Each file of the store: apparent bytes (``st_size``) and tmpfs bytes (``st_blocks`` x 512, as ``du``)."""
    out: dict[str, dict[str, int]] = {}
    if directory is None or not directory.is_dir():
        return out
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            st = path.stat()
            out[str(path.relative_to(directory))] = {"apparent": st.st_size, "tmpfs": st.st_blocks * 512}
    return out


def lmdb_map(directory: Path | None) -> dict[str, Any]:
    """LMDB's own figures of the store: the map (``data.mdb``'s apparent size: LMDB sizes the file to the map),
    the pages in use (up to the last one ever written) and each table's pages; what the tables do not account for
    is LMDB's free list (pages freed by earlier commits, reused by later ones) and its two meta pages."""
    env_dir = directory / "lmdb" if directory is not None else None
    if env_dir is None or not (env_dir / "data.mdb").exists():
        return {}
    import lmdb

    env = lmdb.open(str(env_dir), readonly=True, lock=False, subdir=True, max_dbs=32)
    try:
        info, main = env.info(), env.stat()
        psize = int(main["psize"])
        pages = lambda st: int(st["branch_pages"]) + int(st["leaf_pages"]) + int(st["overflow_pages"])  # noqa: E731
        tables: dict[str, dict[str, int]] = {"(names)": {"pages": pages(main), "entries": int(main["entries"])}}
        with env.begin() as txn:
            names = [bytes(k) for k, _ in txn.cursor()]
            for name in names:
                st = txn.stat(env.open_db(name, txn=txn, create=False))
                tables[name.decode(errors="replace")] = {"pages": pages(st), "entries": int(st["entries"]),
                                                          "overflow_pages": int(st["overflow_pages"])}
            if b"objects" in names:  # what one record takes: LMDB fits 2 per 4 KiB page only below ~1.3 KiB
                cursor = txn.cursor(env.open_db(b"objects", txn=txn, create=False))
                sizes = [len(value) for _, (_, value) in zip(range(SAMPLE), cursor, strict=False)]
                tables["objects"]["mean_record_bytes"] = round(sum(sizes) / len(sizes)) if sizes else 0
        used = int(info["last_pgno"]) + 1
        return {"map_size": (env_dir / "data.mdb").stat().st_size, "page_size": psize, "map_used": used * psize,
                "tables": tables, "free_pages": used - sum(t["pages"] for t in tables.values())}
    finally:
        env.close()


def processes(root: int, store: Path | None) -> list[dict[str, Any]]:
    """Per process of the tree: its command, the smaps_rollup figures and its mappings of the store, in KiB."""
    out = []
    for pid in process_tree(root):
        with contextlib.suppress(OSError):
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            rollup = smaps_rollup_kib(pid)
            if not rollup:
                continue
            mapped = mapped_under_kib(pid, store) if store is not None else {"Rss": 0, "Private": 0}
            out.append({"pid": pid, "cmd": cmd[-90:], **rollup, "store_rss": mapped["Rss"],
                        "store_private": mapped["Private"]})
    return out


def memory_row(target: Target, cache_mib: int, stats: dict[str, Any]) -> dict[str, Any]:
    """The figures of one filled target (MiB unless named otherwise)."""
    assert target.proc is not None
    procs = processes(target.proc.pid, target.store)
    total = {k: sum(p.get(k, 0) for p in procs) for k in ("Rss", "Pss", "Pss_Shmem", "Private_Clean",
                                                         "Private_Dirty", "store_rss", "store_private")}
    uss = total["Private_Clean"] + total["Private_Dirty"]
    files = store_files(target.store)
    tmpfs = sum(f["tmpfs"] for f in files.values()) / MIB
    mib = lambda kib: round(kib / 1024, 1)  # noqa: E731
    host = uss / 1024 - total["store_private"] / 1024 + tmpfs
    workers = target.workers
    row: dict[str, Any] = {
        "workers": workers, "processes": len(procs),
        "rss_mib": mib(status_kib(target.proc.pid, "VmRSS:")), "rss_smaps_mib": mib(total["Rss"]),
        "pss_mib": mib(total["Pss"]), "pss_shmem_mib": mib(total["Pss_Shmem"]), "uss_mib": mib(uss),
        "store_mapped_rss_mib": mib(total["store_rss"]), "store_mapped_private_mib": mib(total["store_private"]),
        "store_tmpfs_mib": round(tmpfs, 1),
        "store_apparent_mib": round(sum(f["apparent"] for f in files.values()) / MIB, 1),
        "uss_plus_tmpfs_mib": round(uss / 1024 + tmpfs, 1),  # counts a page one worker mapped twice
        "host_mib": round(host, 1), "host_pss_mib": round((total["Pss"] - total["Pss_Shmem"]) / 1024 + tmpfs, 1),
        "goal_mib": goal_mib(cache_mib, workers), "met": host <= goal_mib(cache_mib, workers),
        "files": files, "per_process": procs,
    }
    for key in ("entries", "bytes", "capacity", "evictions", "hits", "misses"):
        if key in stats:
            row[key] = stats[key]
    lm = lmdb_map(target.store)
    if lm:
        row |= {"map_size_mib": round(lm["map_size"] / MIB, 1), "map_used_mib": round(lm["map_used"] / MIB, 1),
                "map_used_vs_size": round(lm["map_used"] / (cache_mib * MIB), 3), "page_size": lm["page_size"],
                "lmdb_tables": lm["tables"], "lmdb_free_pages": lm["free_pages"]}
    return row


def measure(targets: list[Target], cache_mib: int, deadline: float) -> dict[str, object]:
    rows: dict[str, dict[str, Any]] = {}
    for target in targets:
        if target.unavailable or target.proc is None:
            rows[target.name] = {"notes": [target.unavailable]}
            continue
        try:
            requests, seconds, stats, notes = fill(target, deadline - 10)
        except (subprocess.SubprocessError, ValueError, OSError) as exc:
            rows[target.name] = {"notes": [f"fill failed: {str(exc)[:200]}" + target.last_log_line()]}
            continue
        time.sleep(SETTLE)
        stats = control_stats(target) if "stats_error" not in stats else stats
        spec = TARGETS[target.name]
        shared = spec.shared if spec.shared is not None else target.workers > 1
        rows[target.name] = {"requests": requests, "fill_seconds": round(seconds, 1), "shared": shared,
                             **memory_row(target, cache_mib, stats), "notes": notes}
        if target.proc.poll() is not None:
            rows[target.name]["notes"].append(f"exited with {target.proc.returncode}" + target.last_log_line())
    return {"kind": "shared-rss", "cache_mib": cache_mib, "object": OBJECT_PATH + "?f=<distinct>",
            "overfill": OVERFILL, "wrk_connections": CONNECTIONS, "targets": rows}
