"""Origin shielding, counted: how many origin requests clients that force revalidation cost for one cached object.

For each request directive a client can send (``Cache-Control: no-cache``, ``Cache-Control: max-age=0``,
``Pragma: no-cache``) and each ``[cache] revalidate_interval`` (the default 1 s, and 0 = off, which leaves only
collapsing), one edgeproxy with its default config in front of the demo origin: the object is fetched once, then
``wrk -t1 -c32 -d10s`` sends the forcing header. The figures are counts read from the edge's own counters
(``edgeproxy stats``): requests answered, origin requests, and how the forced requests were answered. Counts, not
timings: the issue's goal is at most one origin request per second (11 in 10 s).

    python -m benchmarks.shielding [--seconds 10] [--connections 32]

Everything listens on 127.0.0.1 ports picked free at run time; every process is stopped at the end.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

from benchmarks.procs import ALL_CPUS, Fleet, free_port
from edgeproxy.control.client import ControlClient

FORCING = {"no-cache": "Cache-Control: no-cache", "max-age=0": "Cache-Control: max-age=0",
           "Pragma": "Pragma: no-cache"}
INTERVALS = ("1s", "0s")
PATH = "/bytes/1024"


def measure(fleet: Fleet, workdir: Path, origin_port: int, header: str, interval: str, seconds: int,
            connections: int) -> dict[str, int | str]:
    port, control = free_port(), str(workdir / f"control-{free_port()}.sock")
    config = workdir / f"edge-{port}.toml"
    config.write_text(f'[server]\nlisten = ["127.0.0.1:{port}"]\ncontrol_socket = "{control}"\n'
                      f'[log]\naccess = false\n[cache]\nrevalidate_interval = "{interval}"\n'
                      f'[[site]]\norigin = "http://127.0.0.1:{origin_port}"\n')
    proc = fleet.start(f"edge-{port}", [sys.executable, "-m", "edgeproxy", "serve", "--config", str(config)],
                       ALL_CPUS, port)
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}{PATH}", timeout=5).read()
        wrk = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "-H", header,
                              f"http://127.0.0.1:{port}{PATH}"], capture_output=True, text=True, check=True,
                             timeout=seconds + 30)
        with ControlClient(control, 10) as client:
            stats = client.request({"cmd": "stats"})
        counters = stats["counters"]
        requests = sum(counters["requests"].values())
        if "Non-2xx" in wrk.stdout:
            raise RuntimeError(f"non-2xx answers under load:\n{wrk.stdout}")
        forced = counters["forced"]
        return {"requests": requests, "origin_requests": counters["origin_requests"],
                "forced": f"{forced['origin']:,} / {forced['collapsed']:,} / {forced['interval']:,}"}
    finally:
        fleet.stop(proc)


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--seconds", type=int, default=10)
    args.add_argument("--connections", type=int, default=32)
    opts = args.parse_args()
    with tempfile.TemporaryDirectory(prefix="edgeproxy-shield-", dir="/dev/shm") as tmp:
        workdir = Path(tmp)
        fleet = Fleet(workdir)
        try:
            origin_port = free_port()
            fleet.start("origin", [sys.executable, "-m", "edgeproxy", "demo-origin", "--listen",
                                   f"127.0.0.1:{origin_port}"], ALL_CPUS, origin_port)
            print(f"wrk -t1 -c{opts.connections} -d{opts.seconds}s on one cached {PATH}, default config\n")
            print("| forcing header | revalidate_interval | requests | origin requests (incl. the first fetch) "
                  "| forced: origin / collapsed / interval |")
            print("|---|---|---|---|---|")
            for name, header in FORCING.items():
                for interval in INTERVALS:
                    r = measure(fleet, workdir, origin_port, header, interval, opts.seconds, opts.connections)
                    print(f"| {name} | {interval} | {r['requests']:,} | {r['origin_requests']:,} | {r['forced']} |",
                          flush=True)
        finally:
            fleet.stop_all()


if __name__ == "__main__":
    main()
