"""What a burst of purges costs the hit path: wrk on one hit URL while a thread purges over the control socket.

Rules kept here:
- Processes and pinning as in run.py (``procs.Fleet`` and ``procs.Purger``, ``report.parse_wrk``, the CPU
  sets): edgeproxy alone on core 0; wrk, the demo origin and this script (the purging thread) on core 1.
  Everything on 127.0.0.1 ports picked free at run time, every process stopped in ``finally``.
- Population: ``--entries`` URLs ``/bytes/1024?i=NNNN`` (zero-padded), so the prefix ``/bytes/1024?i=3`` is
  exactly 10 % of them; wrk's URL ``/bytes/1024`` is matched by none of the purges, so it stays a hit and what
  moves is the time the event loop spends purging instead of serving.
- Bursts, one purge every ``--interval`` (10 ms) for the whole wrk run, on one persistent control connection:
  ``prefix-soft`` cycles through the ten 10 % groups (each purge marks 10 % of the entries, every time);
  ``prefix-hard`` cycles the same way, so only its first ten purges find entries (the cache is empty of the
  population after that; the purged column says so); ``url-hard`` removes one stored URL per purge.
  Latency is the control request's round trip as this client sees it (purge + queueing behind HTTP work).
- Rounds run the scenarios interleaved (baseline, bursts, baseline, ...) and the population is warmed again
  before each scenario, so every burst starts from the same full cache; we report medians over rounds.
Outputs: a Markdown table on stdout and ``benchmarks/results/purge_load.json``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # standalone runs: make the repository's package importable

from benchmarks.procs import CLIENT_CPUS, PYTHON, SERVER_CPUS, Burst, Fleet, Purger, StartError, free_port  # noqa: E402
from benchmarks.report import parse_wrk  # noqa: E402
from edgeproxy.control.client import ControlClient  # noqa: E402

HERE = Path(__file__).resolve().parent
HIT_PATH = "/bytes/1024"
GROUPS = 10  # prefix groups: the first digit of the zero-padded index

CONFIG = """[server]
listen = ["127.0.0.1:{port}"]
control_socket = "{control}"

[cache]
size = "256MiB"

[log]
access = false

[[site]]
hosts = ["*"]
origin = "http://127.0.0.1:{origin_port}"
"""


def population(entries: int) -> list[str]:
    width = len(str(entries - 1))
    return [f"{HIT_PATH}?i={i:0{width}d}" for i in range(entries)]


def warm(port: int, paths: list[str]) -> int:
    """GET every path on one keep-alive connection; returns how many were not already hits."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    fetched = 0
    try:
        for path in paths:
            conn.request("GET", path)
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                raise RuntimeError(f"warm-up: {path} answered {resp.status}")
            fetched += "; hit" not in (resp.getheader("cache-status") or "")
    finally:
        conn.close()
    return fetched


# --- bursts: a function from the purge number to the request -----------------------------------------------


def prefix_burst(entries: int, soft: bool) -> Burst:
    width = len(str(entries - 1))
    if entries != 10**width:
        raise SystemExit(f"--entries must be a power of ten for 10 % prefix groups, got {entries}")
    return lambda n: {"cmd": "purge", "kind": "prefix", "prefix": f"{HIT_PATH}?i={n % GROUPS}", "soft": soft}


def url_burst(port: int, paths: list[str]) -> Burst:
    return lambda n: {"cmd": "purge", "kind": "url", "url": f"http://127.0.0.1:{port}{paths[n % len(paths)]}"}


def run_wrk(port: int, seconds: int, connections: int) -> dict[str, float]:
    argv = ["taskset", "-c", CLIENT_CPUS, "wrk", "--latency", "-t1", f"-c{connections}", f"-d{seconds}s",
            "--timeout", "5s", "-s", str(HERE / "wrk" / "plain.lua"), f"http://127.0.0.1:{port}{HIT_PATH}"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30, check=True)
    return parse_wrk(done.stdout)


@dataclass
class Run:
    """One wrk run and, with a burst, every purge round trip seen meanwhile."""

    rps: float
    p99_ms: float
    errors: float
    latencies_ms: list[float] = field(default_factory=list)
    purged: int = 0
    purge_errors: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        lat = self.latencies_ms
        return {"rps": self.rps, "p99_ms": self.p99_ms, "errors": self.errors, "purges": len(lat),
                "purged": self.purged, "purge_errors": self.purge_errors[:3],
                "latency_ms": _spread(lat) if lat else None}


def _spread(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def one_run(port: int, sock: str, burst: Burst | None, args: argparse.Namespace) -> Run:
    purger = Purger(sock, burst, args.interval) if burst is not None else None
    if purger is not None:
        purger.start()
    try:
        wrk = run_wrk(port, args.seconds, args.connections)
    finally:
        if purger is not None:
            purger.halt.set()
            purger.join(15)
    run = Run(wrk["rps"], wrk.get("p99_ms", 0.0), wrk["errors"])
    if purger is not None:
        run.latencies_ms, run.purged, run.purge_errors = purger.log.latencies_ms, purger.log.purged, purger.log.errors
    return run


def summarise(runs: list[Run]) -> dict[str, Any]:
    rps = [r.rps for r in runs]
    latencies = [x for r in runs for x in r.latencies_ms]
    out: dict[str, Any] = {"rps_median": statistics.median(rps), "rps_min": min(rps), "rps_max": max(rps),
                              "p99_ms_median": statistics.median(r.p99_ms for r in runs)}
    if latencies:
        out |= {"purges": len(latencies), "purged_per_purge": sum(r.purged for r in runs) / len(latencies),
                "latency_ms": _spread(latencies)}
    return out | {"runs": [r.to_json() for r in runs]}


def markdown(results: dict[str, dict[str, Any]], baseline: float) -> str:
    lines = ["| scenario | hit req/s (median, min-max) | vs baseline | p99 ms | purges | entries/purge "
             "| purge latency ms min / median / max |", "|---|---|---|---|---|---|---|"]
    for name, s in results.items():
        lat = s.get("latency_ms")
        lat_text = f"{lat['min']:.2f} / {lat['median']:.2f} / {lat['max']:.1f}" if lat else "-"
        per = f"{s['purged_per_purge']:.0f}" if "purged_per_purge" in s else "-"
        lines.append(f"| {name} | {s['rps_median']:,.0f} ({s['rps_min']:,.0f}-{s['rps_max']:,.0f}) "
                     f"| {s['rps_median'] / baseline - 1:+.1%} | {s['p99_ms_median']:.2f} | {s.get('purges', '-')} "
                     f"| {per} | {lat_text} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=10_000, help="URLs to warm (a power of ten)")
    parser.add_argument("--seconds", type=int, default=5, help="wrk duration per run")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--interval", type=float, default=0.010, help="seconds between purges")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--output", type=Path, default=HERE / "results" / "purge_load.json")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.sched_setaffinity(0, {int(CLIENT_CPUS)})  # the purging thread shares core 1 with wrk, not the proxy's
    paths = population(args.entries)
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    workdir = Path(tempfile.mkdtemp(prefix="edgeproxy-purgeload-", dir=shm))
    fleet = Fleet(workdir)
    try:
        origin_port, port = free_port(), free_port()
        sock = str(workdir / "control.sock")
        fleet.start("origin", [PYTHON, "-m", "edgeproxy", "demo-origin", "--listen", f"127.0.0.1:{origin_port}"],
                    CLIENT_CPUS, origin_port)
        config = workdir / "edgeproxy.toml"
        config.write_text(CONFIG.format(port=port, control=sock, origin_port=origin_port))
        fleet.start("edgeproxy", [PYTHON, "-m", "edgeproxy", "serve", "--config", str(config)], SERVER_CPUS, port)
        bursts: dict[str, Burst | None] = {
            "baseline": None, "prefix-soft": prefix_burst(args.entries, soft=True),
            "prefix-hard": prefix_burst(args.entries, soft=False), "url-hard": url_burst(port, paths),
        }
        started = time.monotonic()
        warm(port, [HIT_PATH, *paths])
        runs: dict[str, list[Run]] = {name: [] for name in bursts}
        for round_no in range(args.rounds):
            for name, burst in bursts.items():
                refetched = warm(port, paths)
                print(f"round {round_no + 1} {name}: re-warmed {refetched}", file=sys.stderr)
                runs[name].append(one_run(port, sock, burst, args))
        with ControlClient(sock) as client:
            stats = client.request({"cmd": "stats"})
    except StartError as exc:
        print(f"cannot run: {exc}", file=sys.stderr)
        return 1
    finally:
        fleet.stop_all()
    results: dict[str, dict[str, Any]] = {name: summarise(r) for name, r in runs.items()}
    baseline = float(results["baseline"]["rps_median"])
    out = {"meta": {"entries": args.entries, "seconds": args.seconds, "connections": args.connections,
                    "interval_s": args.interval, "rounds": args.rounds, "python": platform.python_version(),
                    "machine": platform.machine(), "cpus": os.cpu_count(), "took_s": round(time.monotonic() - started),
                    "final_entries": stats.get("entries"), "final_purges": stats.get("purges"),
                    "loadavg_end": os.getloadavg()},
           "scenarios": results}
    args.output.parent.mkdir(exist_ok=True)
    args.output.write_text(json.dumps(out, indent=2) + "\n")
    print(markdown(results, baseline))
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
