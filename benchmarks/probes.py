"""Hostile clients and broken origins, edgeproxy and nginx side by side: ``python -m benchmarks.probes``.

Runs the smuggling probes of ``tests/integration/test_smuggling.py`` and the faults of
``tests/integration/test_broken_origin.py`` against both (same origin, same probes), then slowloris (300 sockets
trickling heads, ``header_timeout``/``client_header_timeout`` 2 s, the share of a sequential client's requests
answered) and peak RSS under churn (64 MiB cache, 640 MiB of unique 16-256 KiB objects plus one 200 MiB object).
Prints markdown tables (the last run is in docs/hardening.md), writes ``benchmarks/results/probes.json``;
naming parts (``probes``, ``slowloris``, ``churn``) reruns only those.
Everything listens on 127.0.0.1 on ports picked free at run time; nginx is Debian's nginx-light.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tests.faultorigin import FaultOrigin
from tests.integration.test_broken_origin import FAULT_OUTCOMES, Fetched, fetch
from tests.integration.test_overload import one_request, open_connection, stream_through
from tests.integration.test_smuggling import BODY_PROBES, HEAD_PROBES, probe
from tests.scriptorigin import Reply, ScriptOrigin
from tests.support import HTTPClient, free_port, parse_responses, start_proxy, wait_port

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "benchmarks" / "nginx-probes.conf.template"
RESULTS = ROOT / "benchmarks" / "results" / "probes.json"
MIB = 1024 * 1024
CACHE_MIB = 64


# ---- the two edges ----

@contextlib.contextmanager
def nginx(origin_url: str) -> Iterator[tuple[int, int]]:
    """nginx with the probes config in front of ``origin_url``: yields (port, master pid)."""
    workdir = Path(tempfile.mkdtemp(prefix="edgeproxy-nginx-"))
    port = free_port()
    conf = TEMPLATE.read_text()
    for token, value in {"DIR": str(workdir), "PORT": str(port), "ORIGIN_PORT": origin_url.rsplit(":", 1)[1],
                         "CACHE_SIZE": f"{CACHE_MIB}m"}.items():
        conf = conf.replace(f"@{token}@", value)
    (workdir / "nginx.conf").write_text(conf)
    user = "user root;" if os.geteuid() == 0 else ""
    proc = subprocess.Popen(["nginx", "-p", str(workdir), "-c", str(workdir / "nginx.conf"), "-g",
                             f"daemon off; {user}"], stderr=subprocess.DEVNULL)
    try:
        wait_port(port, proc=proc)
        yield port, proc.pid
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


@contextlib.contextmanager
def edgeproxy(origin_url: str, **overrides: Any) -> Iterator[tuple[int, int]]:
    proxy = start_proxy(origin_url, log={"access": False}, **overrides)
    try:
        yield proxy.port, proxy.pid
    finally:
        proxy.stop()


Edge = Callable[..., contextlib.AbstractContextManager[tuple[int, int]]]
EDGES: dict[str, Edge] = {"edgeproxy": edgeproxy, "nginx": nginx}


def tree_hwm_mib(pid: int) -> float:
    """Peak RSS (VmHWM) summed over ``pid`` and its children (nginx's workers and cache manager)."""
    pids = [pid] + [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _ppid(p) == pid]
    total = 0
    for p in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
    return total / 1024


def _ppid(proc_dir: Path) -> int:
    try:
        return int(proc_dir.joinpath("stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


# ---- smuggling probes ----

def smuggling(origin: FaultOrigin, port: int) -> dict[str, dict[str, Any]]:
    out = {}
    for param in HEAD_PROBES + BODY_PROBES:
        data, _ = param.values
        origin.reset()
        answer, closed = probe(port, data)
        origin.settle()
        statuses = [r.status for r in parse_responses(answer)] or ["-"]
        out[param.id] = {"answer": "/".join(map(str, statuses)) + (" closed" if closed else " open"),
                         "forwarded": any(r.complete for r in origin.requests),
                         "smuggled": bool(origin.requests_for("/smuggled"))}
    return out


# ---- broken origins ----

def describe(got: Fetched) -> str:
    if got.status is None:
        return "no answer"
    return f"{got.status} {'complete' if got.complete else 'cut'}"


def faults(origin: FaultOrigin, port: int) -> dict[str, dict[str, Any]]:
    out = {}
    for param in FAULT_OUTCOMES:
        kind, _ = param.values
        origin.reset()
        path = f"/{kind}-{random.randrange(1 << 30)}"
        origin.script(path, kind)
        first = fetch(port, path)
        second = fetch(port, path)
        origin.settle()
        out[param.id] = {"answer": describe(first), "stored": len(origin.requests_for(path)) < 2,
                         "second": describe(second)}
    return out


# ---- slowloris ----

def slowloris(port: int, seconds: float = 4.0, sockets: int = 300) -> dict[str, Any]:
    slow = [open_connection(port) for _ in range(sockets)]
    head = b"GET /loris HTTP/1.1\r\nhost: test.local\r\nx-pad: " + b"p" * 200 + b"\r\n\r\n"
    served: list[int | None] = []
    t0 = time.monotonic()

    def good() -> None:
        while time.monotonic() - t0 < seconds:
            served.append(one_request(port, f"/good/{len(served)}"))

    thread = threading.Thread(target=good)
    thread.start()
    open_ = set(range(sockets))
    closed_at: list[float] = []
    sent = 0
    while open_ and time.monotonic() - t0 < seconds + 2:
        for i in list(open_):
            with contextlib.suppress(OSError):
                slow[i].send(head[sent:sent + 1])
        sent += 1
        for s in select.select([slow[i] for i in open_], [], [], 0.5)[0]:
            with contextlib.suppress(OSError):
                if s.recv(65536) and not select.select([s], [], [], 0.2)[0]:
                    continue
            open_.discard(slow.index(s))
            closed_at.append(time.monotonic() - t0)
    thread.join(10)
    for s in slow:
        s.close()
    ok = served.count(200)
    return {"requests": len(served), "served_pct": round(100 * ok / max(len(served), 1), 1),
            "slow_closed": len(closed_at), "closed_by_s": round(max(closed_at), 1) if closed_at else None}


# ---- churn ----

def churn(origin: ScriptOrigin, port: int, pid: int) -> dict[str, Any]:
    rng = random.Random(8)
    sizes: list[int] = []
    while sum(sizes) < 640 * MIB:
        sizes.append(rng.randint(16, 256) * 1024)
    tag = rng.randrange(1 << 30)
    for i, size in enumerate(sizes):
        origin.routes[f"/churn{tag}/{i}"] = Reply(stream=size, headers=[("cache-control", "public, max-age=600")])
    origin.routes[f"/churn{tag}/huge"] = Reply(stream=200 * MIB, headers=[("cache-control", "public, max-age=600")])
    with HTTPClient(port) as client:
        client.request("GET", "/warm-up")
    idle = tree_hwm_mib(pid)

    def worker(part: range) -> None:
        with HTTPClient(port, timeout=60) as client:
            for i in part:
                client.request("GET", f"/churn{tag}/{i}")

    t0 = time.monotonic()
    threads = [threading.Thread(target=worker, args=(range(k, len(sizes), 3),)) for k in range(3)]
    for t in threads:
        t.start()
    huge = stream_through(port, f"/churn{tag}/huge")
    for t in threads:
        t.join(300)
    return {"objects": len(sizes), "seconds": round(time.monotonic() - t0, 1), "huge_ok": huge == 200 * MIB,
            "idle_rss_mib": round(idle, 1), "peak_rss_mib": round(tree_hwm_mib(pid), 1)}


# ---- report ----

def run(parts: set[str]) -> dict[str, Any]:
    results: dict[str, Any] = json.loads(RESULTS.read_text()) if RESULTS.exists() and parts != PARTS else {}
    if parts & {"probes", "slowloris"}:
        results.update(_probes_and_slowloris(parts))
    if "churn" in parts:
        results["churn"] = {}
        with ScriptOrigin() as origin:
            for name, edge in EDGES.items():
                overrides = {"cache": {"size": f"{CACHE_MIB}MiB"}} if name == "edgeproxy" else {}
                with edge(origin.url, **overrides) as (port, pid):
                    results["churn"][name] = churn(origin, port, pid)
    return results


def _probes_and_slowloris(parts: set[str]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with contextlib.closing(_FaultOrigin()) as origin:
        for name, edge in EDGES.items():
            timeouts = {"origin": {"read_timeout": "1s"}} if name == "edgeproxy" else {}  # nginx: proxy_read_timeout
            if "probes" in parts:
                with edge(origin.url, **timeouts) as (port, _):
                    results.setdefault("smuggling", {})[name] = smuggling(origin, port)
                    results.setdefault("faults", {})[name] = faults(origin, port)
            overrides = {"server": {"header_timeout": "2s"}} if name == "edgeproxy" else {}
            if "slowloris" in parts:
                with edge(origin.url, **overrides) as (port, _):
                    results.setdefault("slowloris", {})[name] = slowloris(port)
    return results


class _FaultOrigin(FaultOrigin):
    def close(self) -> None:
        self.stop()


def markdown(results: dict[str, Any]) -> str:
    ep, ng = results["smuggling"]["edgeproxy"], results["smuggling"]["nginx"]
    lines = ["| probe | edgeproxy | nginx | forwarded (edgeproxy / nginx) |", "|---|---|---|---|"]
    for probe_id in ep:
        fwd = "/".join("yes" + (" (smuggled)" if r["smuggled"] else "") if r["forwarded"] else "no"
                       for r in (ep[probe_id], ng[probe_id]))
        lines.append(f"| {probe_id} | {ep[probe_id]['answer']} | {ng[probe_id]['answer']} | {fwd} |")
    ep, ng = results["faults"]["edgeproxy"], results["faults"]["nginx"]
    lines += ["", "| origin fault | edgeproxy | nginx | stored (edgeproxy / nginx) |", "|---|---|---|---|"]
    for fault in ep:
        stored = "/".join("yes" if r["stored"] else "no" for r in (ep[fault], ng[fault]))
        lines.append(f"| {fault} | {ep[fault]['answer']} | {ng[fault]['answer']} | {stored} |")
    lines += ["", "| overload | edgeproxy | nginx |", "|---|---|---|"]
    sl = results["slowloris"]
    lines.append("| slowloris: other client's requests answered | " + " | ".join(
        f"{sl[n]['served_pct']}% of {sl[n]['requests']}" for n in EDGES) + " |")
    lines.append("| slowloris: 300 slow sockets closed by | " + " | ".join(
        f"{sl[n]['slow_closed']} by {sl[n]['closed_by_s']} s" for n in EDGES) + " |")
    ch = results["churn"]
    lines.append("| churn: idle -> peak RSS (MiB) | " + " | ".join(
        f"{ch[n]['idle_rss_mib']} -> {ch[n]['peak_rss_mib']}" for n in EDGES) + " |")
    return "\n".join(lines)


PARTS = {"probes", "slowloris", "churn"}


def main() -> None:
    """``python -m benchmarks.probes [probes|slowloris|churn ...]``: the parts named (default all); the others are
    kept from the last results file."""
    parts = set(sys.argv[1:]) or PARTS
    if not parts <= PARTS:
        raise SystemExit(f"unknown part(s): {', '.join(sorted(parts - PARTS))} (known: {', '.join(sorted(PARTS))})")
    results = run(parts)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    print(markdown(results))


if __name__ == "__main__":
    main()
