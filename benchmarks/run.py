"""The benchmark orchestrator: wrk against edgeproxy, nginx and the bounds, side by side.

Rules kept here:
- Owns process lifetimes: every server runs in its own session (process group) with PR_SET_PDEATHSIG,
  and is stopped in ``finally`` (SIGTERM to the group, SIGKILL after 5 s), also on Ctrl-C, SIGTERM or error.
- Everything listens on 127.0.0.1 ports picked free at run time; the whole run is bounded by
  ``--max-seconds`` (durations shrink to fit, then scenarios are skipped with a note).
- Pinning (2-core machine): servers under test on core 0, wrk and the demo origin on core 1, so each
  target owns one core and the origin's work in miss scenarios slows every target's client alike.
  The workers-2 profile lets servers use both cores (and so shares core 1 with wrk): compare it only
  with itself.
- Targets run interleaved (A, B, C, A, B, C, ...) so drift (thermal, noisy neighbours) hits all alike;
  we report the median req/s with its min-max spread, never a single run.
- CPU per request is utime+stime of the target's whole process tree (/proc/PID/stat) over the wrk run,
  divided by the requests wrk completed; peak RSS is VmHWM summed over the tree at the scenario's end.
Outputs: a Markdown table on stdout, ``results/<name>.json`` and ``results/<name>.png``.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import http.client
import json
import os
import platform
import pwd
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SERVER_CPUS, CLIENT_CPUS, ALL_CPUS = "0", "1", "0,1"
TICK = os.sysconf("SC_CLK_TCK")
PYTHON = sys.executable


@dataclass(frozen=True)
class Scenario:
    name: str
    path: str
    connections: int = 64
    script: str = "plain.lua"
    profile: str = "default"
    warm_until_hit: bool = True
    purge: bool = False


@dataclass(frozen=True)
class Profile:
    cache_mib: int
    workers: int
    cpus: str
    targets: tuple[str, ...]


TARGETS = ("nginx", "edgeproxy-h11", "edgeproxy-httptools", "bound-h11", "bound-httptools")
PROFILES = {
    "default": Profile(256, 1, SERVER_CPUS, TARGETS),
    # Smaller than zipf's working set (100,000 x 1 KiB plus per-entry overhead), so eviction matters.
    "small-cache": Profile(32, 1, SERVER_CPUS, TARGETS),
    "workers-2": Profile(256, 2, ALL_CPUS, ("nginx", "edgeproxy-h11", "bound-h11")),
}
SCENARIOS = {
    s.name: s
    for s in (
        Scenario("hit-1k", "/bytes/1024"),
        Scenario("hit-64k", "/bytes/65536"),
        Scenario("hit-1m", "/bytes/1048576"),
        Scenario("hit-1k-c256", "/bytes/1024", connections=256),
        Scenario("miss-1k", "/nostore/1024", warm_until_hit=False),
        Scenario("zipf", "/", script="zipf.lua", profile="small-cache", warm_until_hit=False),
        Scenario("revalidate", "/revalidate/1024", warm_until_hit=False),
        Scenario("workers-2", "/bytes/1024", connections=256, profile="workers-2"),
        Scenario("purge-burst", "/bytes/1024", purge=True),
    )
}
DEFAULT_SCENARIOS = ("hit-1k", "hit-64k", "hit-1k-c256", "miss-1k", "zipf", "revalidate")
QUICK_SCENARIOS = ("hit-1k", "miss-1k")
PURGE_INTERVAL = 0.010
ZIPF_WARMUP_SECONDS = 2


class StartError(RuntimeError):
    """A server did not come up; the message says why (its last log lines)."""


# ---- processes -------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    # If the orchestrator is SIGKILLed, its servers get SIGTERM instead of lingering; survives exec.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Fleet:
    """The processes this run started; ``stop_all`` is what ``finally`` calls."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[subprocess.Popen[bytes]] = []
        self.env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))

    def start(self, name: str, argv: list[str], cpus: str, port: int) -> subprocess.Popen[bytes]:
        log = self.workdir / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                ["taskset", "-c", cpus, *argv], stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
                env=self.env, start_new_session=True, preexec_fn=_die_with_parent,
            )
        self.procs.append(proc)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc
            time.sleep(0.05)
        self.stop(proc)
        tail = log.read_text(errors="replace").strip().splitlines()[-3:]
        raise StartError(f"{name} did not accept on port {port}: " + (" | ".join(tail) or "no output"))

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(wait)
                break
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self.procs)):
            self.stop(proc)


def process_tree(root: int) -> list[int]:
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                parents.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(parents.get(pid, ()))
    return tree


def cpu_ticks(root: int) -> int:
    total = 0
    for pid in process_tree(root):
        with contextlib.suppress(OSError, IndexError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total


def peak_rss_kib(root: int) -> int:
    total = 0
    for pid in process_tree(root):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
    return total


# ---- targets ---------------------------------------------------------------------------------------


@dataclass
class Target:
    name: str
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    config: Path | None = None
    unavailable: str = ""
    log: Path | None = None

    def last_log_line(self) -> str:
        """The server's last words, for notes: the tmp dir and its logs are gone after the run."""
        with contextlib.suppress(OSError):
            lines = [x for x in self.log.read_text(errors="replace").splitlines() if x.strip()]  # type: ignore[union-attr]
            return f" (log: {lines[-1].strip()[:160]})" if lines else ""
        return ""


EDGEPROXY_TOML = """[server]
listen = ["127.0.0.1:{port}"]
parser = "{parser}"
workers = {workers}
control_socket = "{control}"

[cache]
size = "{cache_mib}MiB"
max_object_size = "8MiB"

[log]
access = false

[[site]]
hosts = ["*"]
origin = "http://127.0.0.1:{origin_port}"
"""


def nginx_argv(workdir: Path, port: int, origin_port: int, profile: Profile) -> list[str]:
    prefix = workdir / f"nginx-{port}"
    (prefix / "cache").mkdir(parents=True)
    values = {
        # Workers run as the invoking user so they can write the cache dir (the directive is ignored,
        # with a warning, when nginx is not started as root).
        "USER": pwd.getpwuid(os.geteuid()).pw_name,
        "WORKERS": str(profile.workers), "DIR": str(prefix), "PORT": str(port),
        "ORIGIN_PORT": str(origin_port), "CACHE_SIZE": f"{profile.cache_mib}m",
    }
    text = (HERE / "nginx.conf.template").read_text()
    for key, value in values.items():
        text = text.replace(f"@{key}@", value)
    (prefix / "nginx.conf").write_text(text)
    return [shutil.which("nginx") or "/usr/sbin/nginx", "-p", str(prefix), "-c", "nginx.conf", "-g", "daemon off;"]


def start_target(fleet: Fleet, name: str, origin_port: int, profile: Profile) -> Target:
    target = Target(name, free_port())
    kind, _, parser = name.partition("-")
    if kind == "nginx":
        argv = nginx_argv(fleet.workdir, target.port, origin_port, profile)
    elif kind == "bound":
        argv = [PYTHON, "-m", "benchmarks.bound", "--parser", parser, "--listen", f"127.0.0.1:{target.port}"]
    else:
        target.config = fleet.workdir / f"{name}-{target.port}.toml"
        control = fleet.workdir / f"{name}-{target.port}.sock"
        target.config.write_text(EDGEPROXY_TOML.format(
            port=target.port, parser=parser, workers=profile.workers, control=control,
            cache_mib=profile.cache_mib, origin_port=origin_port))
        argv = [PYTHON, "-m", "edgeproxy", "serve", "--config", str(target.config)]
    target.log = fleet.workdir / f"{name}-{target.port}.log"
    try:
        target.proc = fleet.start(f"{name}-{target.port}", argv, profile.cpus, target.port)
    except StartError as exc:
        target.unavailable = str(exc)
    return target


def fetch(port: int, path: str) -> tuple[int, dict[str, str]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}
    finally:
        conn.close()


def is_hit(headers: dict[str, str]) -> bool:
    # edgeproxy/bound: RFC 9211 "name; hit"; nginx: X-Cache-Status "HIT". Same rule as zipf.lua.
    value = (headers.get("cache-status") or headers.get("x-cache-status") or "").lower()
    return "; hit" in value or value == "hit"


def warm(target: Target, scenario: Scenario) -> str:
    """Request until the target answers from cache; returns a note when it never does."""
    if scenario.script != "plain.lua":  # the script picks its own URLs: only check the target answers
        fetch(target.port, scenario.path)
        return ""
    status, headers = 0, {}
    for _ in range(10):
        status, headers = fetch(target.port, scenario.path)
        if status >= 400:
            return f"warm-up got status {status}"
        if not scenario.warm_until_hit or is_hit(headers):
            return ""
    shown = headers.get("cache-status") or headers.get("x-cache-status") or "none"
    return f"never a hit after 10 warm-up requests (last cache status: {shown})"


# ---- wrk -------------------------------------------------------------------------------------------

UNIT_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}
LATENCY_RE = re.compile(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s|m|h)\s*$", re.M)
REQUESTS_RE = re.compile(r"^\s+(\d+) requests in", re.M)
RPS_RE = re.compile(r"^Requests/sec:\s+([\d.]+)", re.M)
SOCKET_ERRORS_RE = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
NON2XX_RE = re.compile(r"Non-2xx or 3xx responses: (\d+)")
HITS_RE = re.compile(r"^HITS (\d+) TOTAL (\d+)", re.M)


def parse_wrk(text: str) -> dict[str, float]:
    """wrk --latency output -> rps, requests, p50_ms, p99_ms, errors (and hits/responses from zipf.lua)."""
    rps, requests = RPS_RE.search(text), REQUESTS_RE.search(text)
    if not rps or not requests:
        raise ValueError("unrecognised wrk output: " + text[-300:])
    if not int(requests.group(1)):
        raise ValueError("wrk completed no requests")
    out = {"rps": float(rps.group(1)), "requests": float(requests.group(1)), "errors": 0.0}
    for pct, value, unit in LATENCY_RE.findall(text):
        out[f"p{pct}_ms"] = float(value) * UNIT_MS[unit]
    for match in (SOCKET_ERRORS_RE.search(text), NON2XX_RE.search(text)):
        if match:
            out["errors"] += sum(float(g) for g in match.groups())
    if hits := HITS_RE.search(text):
        out["hits"], out["responses"] = float(hits.group(1)), float(hits.group(2))
    return out


def run_wrk(port: int, scenario: Scenario, seconds: int) -> dict[str, float]:
    argv = [
        "taskset", "-c", CLIENT_CPUS, "wrk", "--latency", "-t1", f"-c{scenario.connections}",
        f"-d{seconds}s", "--timeout", "5s", "-s", str(HERE / "wrk" / scenario.script),
        f"http://127.0.0.1:{port}{scenario.path}",
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30, check=True)
    return parse_wrk(done.stdout)


class PurgeBurst(threading.Thread):
    """Runs ``edgeproxy purge --prefix /x/`` back to back, at most one per PURGE_INTERVAL."""

    def __init__(self, config: Path, env: dict[str, str]) -> None:
        super().__init__(daemon=True)
        self.argv = ["taskset", "-c", CLIENT_CPUS, PYTHON, "-m", "edgeproxy", "purge", "--config", str(config),
                     "--prefix", "/x/"]
        self.env, self.halt = env, threading.Event()
        self.sent = self.failed = 0

    def run(self) -> None:
        tick = time.monotonic()
        while not self.halt.is_set():
            done = subprocess.run(self.argv, env=self.env, capture_output=True, timeout=10, check=False)
            self.sent += 1
            self.failed += done.returncode != 0
            tick = max(tick + PURGE_INTERVAL, time.monotonic())
            self.halt.wait(tick - time.monotonic())


# ---- measuring -------------------------------------------------------------------------------------


@dataclass
class Cell:
    """One scenario x target: the wrk runs and what the server spent on them."""

    runs: list[dict[str, float]] = field(default_factory=list)
    cpu_ticks: int = 0
    peak_rss_kib: int = 0
    purges: list[int] = field(default_factory=lambda: [0, 0])
    notes: list[str] = field(default_factory=list)


def one_run(target: Target, scenario: Scenario, seconds: int, cell: Cell, env: dict[str, str]) -> None:
    assert target.proc is not None
    purger = PurgeBurst(target.config, env) if scenario.purge and target.config else None
    before = cpu_ticks(target.proc.pid)
    if purger:
        purger.start()
    try:
        result = run_wrk(target.port, scenario, seconds)
    finally:
        if purger:
            purger.halt.set()
            purger.join(15)
    cell.cpu_ticks += cpu_ticks(target.proc.pid) - before
    cell.runs.append(result)
    if purger:
        cell.purges[0] += purger.sent
        cell.purges[1] += purger.failed


def measure(scenario: Scenario, targets: list[Target], rounds: int, seconds: int, deadline: float,
            env: dict[str, str]) -> dict[str, Cell]:
    cells = {t.name: Cell(notes=[t.unavailable] if t.unavailable else []) for t in targets}
    live = [t for t in targets if not t.unavailable]
    for t in list(live):
        try:
            if note := warm(t, scenario):
                cells[t.name].notes.append(note)
            if scenario.script == "zipf.lua":  # fill the cache towards its steady state, not measured
                run_wrk(t.port, scenario, ZIPF_WARMUP_SECONDS)
        except (OSError, http.client.HTTPException, subprocess.SubprocessError, ValueError) as exc:
            cells[t.name].notes.append(f"warm-up failed: {exc!r}"[:120] + t.last_log_line())
            live.remove(t)
    for _ in range(rounds):
        for t in list(live):
            if time.monotonic() + seconds + 10 > deadline:
                cells[t.name].notes.append("budget (--max-seconds) exhausted")
                return cells
            try:
                one_run(t, scenario, seconds, cells[t.name], env)
            except (subprocess.SubprocessError, ValueError) as exc:
                cells[t.name].notes.append(f"wrk failed: {str(exc)[:200]}")
                live.remove(t)
            else:
                if t.proc is not None and t.proc.poll() is not None:
                    cells[t.name].notes.append(f"exited with {t.proc.returncode} during the run" + t.last_log_line())
                    live.remove(t)
    for t in targets:
        if t.proc is not None and t.proc.poll() is None:
            cells[t.name].peak_rss_kib = peak_rss_kib(t.proc.pid)
    return cells


def summarise(cell: Cell) -> dict[str, object]:
    out: dict[str, object] = {"notes": cell.notes}
    if not cell.runs:
        return out
    runs = cell.runs
    rps = [r["rps"] for r in runs]
    requests = sum(r["requests"] for r in runs)
    out |= {
        "rps_median": statistics.median(rps), "rps_min": min(rps), "rps_max": max(rps), "rps_runs": rps,
        "p50_ms": statistics.median(r.get("p50_ms", float("nan")) for r in runs),
        "p99_ms": statistics.median(r.get("p99_ms", float("nan")) for r in runs),
        "cpu_us_per_req": cell.cpu_ticks / TICK * 1e6 / requests if requests else None,
        "peak_rss_mib": round(cell.peak_rss_kib / 1024, 1), "requests": requests,
        "errors": sum(r["errors"] for r in runs),
    }
    if responses := sum(r.get("responses", 0.0) for r in runs):
        out["hit_ratio"] = sum(r.get("hits", 0.0) for r in runs) / responses
    if cell.purges[0]:
        out["purges_sent"], out["purges_failed"] = cell.purges
    return out


def scenario_result(scenario: Scenario, cells: dict[str, Cell], profile: Profile, rounds: int,
                    seconds: int) -> dict[str, object]:
    rows = {name: summarise(cell) for name, cell in cells.items()}
    for ref_name, key in (("nginx", "vs_nginx"), ("bound-h11", "vs_bound_h11")):
        ref = rows.get(ref_name, {}).get("rps_median")
        for row in rows.values():
            if ref and "rps_median" in row:
                row[key] = row["rps_median"] / ref  # type: ignore[operator]
    return {
        "path": scenario.path, "connections": scenario.connections, "script": scenario.script,
        "rounds": rounds, "seconds": seconds, "server_cpus": profile.cpus, "cache_mib": profile.cache_mib,
        "workers": profile.workers, "targets": rows,
    }


# ---- reporting -------------------------------------------------------------------------------------

COLUMNS = ("target", "req/s median", "min-max", "p50 ms", "p99 ms", "CPU µs/req", "peak RSS MiB",
           "vs nginx", "vs bound-h11", "hit %", "notes")


def _fmt(value: object, spec: str) -> str:
    return "-" if value is None or value != value else format(value, spec)  # value != value: NaN


def markdown(results: dict[str, object]) -> str:
    lines: list[str] = []
    for name, sc in results["scenarios"].items():  # type: ignore[attr-defined]
        if "skipped" in sc:
            lines += [f"### {name}", "", f"skipped: {sc['skipped']}", ""]
            continue
        lines += [
            f"### {name}: GET {sc['path']} -c{sc['connections']}, {sc['rounds']} x {sc['seconds']} s, "
            f"servers on CPU {sc['server_cpus']}, cache {sc['cache_mib']} MiB, workers {sc['workers']}",
            "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS),
        ]
        for target, row in sc["targets"].items():
            notes = "; ".join(row["notes"])
            if "purges_sent" in row:
                rate = row["purges_sent"] / (sc["rounds"] * sc["seconds"])
                notes = "; ".join([f"{rate:.0f} purges/s ({row['purges_failed']} failed)", *row["notes"]])
            if "rps_median" not in row:
                lines.append(f"| {target} | n/a |" + " |" * (len(COLUMNS) - 3) + f" {notes} |")
                continue
            cells = [
                target, _fmt(row["rps_median"], ",.0f"), f"{row['rps_min']:,.0f}-{row['rps_max']:,.0f}",
                _fmt(row["p50_ms"], ".2f"), _fmt(row["p99_ms"], ".2f"), _fmt(row["cpu_us_per_req"], ".1f"),
                _fmt(row["peak_rss_mib"], ".0f"), _fmt(row.get("vs_nginx"), ".2f"),
                _fmt(row.get("vs_bound_h11"), ".2f"),
                _fmt(row["hit_ratio"] * 100 if "hit_ratio" in row else None, ".1f"), notes,
            ]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


COLORS = {"nginx": "#2a9d8f", "edgeproxy-h11": "#e76f51", "edgeproxy-httptools": "#f4a261",
          "bound-h11": "#264653", "bound-httptools": "#8d99ae"}


def chart(results: dict[str, object], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = {n: sc for n, sc in results["scenarios"].items() if "targets" in sc}  # type: ignore[attr-defined]
    if not shown:
        return
    cols = min(3, len(shown))
    rows = -(-len(shown) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.8 * rows), squeeze=False)
    for ax, (name, sc) in zip(axes.flat, shown.items(), strict=False):
        bars = [(t, r) for t, r in sc["targets"].items() if "rps_median" in r]
        med = [r["rps_median"] for _, r in bars]
        spread = [[m - r["rps_min"] for m, (_, r) in zip(med, bars, strict=True)],
                  [r["rps_max"] - m for m, (_, r) in zip(med, bars, strict=True)]]
        ax.bar(range(len(bars)), med, yerr=spread, capsize=3, color=[COLORS.get(t, "grey") for t, _ in bars])
        ax.set_xticks(range(len(bars)), [t for t, _ in bars], rotation=25, ha="right", fontsize=8)
        ax.set_title(f"{name} (-c{sc['connections']})", fontsize=10)
        ax.set_ylabel("req/s (median, min-max)", fontsize=8)
        for x, m in enumerate(med):
            ax.annotate(f"{m / 1000:.1f}k", (x, m), ha="center", va="bottom", fontsize=7)
    for ax in list(axes.flat)[len(shown):]:
        ax.axis("off")
    fig.suptitle(f"edgeproxy benchmarks: {results['meta']['name']}", fontsize=11)  # type: ignore[index]
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _version(argv: list[str]) -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
        return (done.stdout + done.stderr).strip().splitlines()[0]
    return "unknown"


def meta(name: str, argv: list[str]) -> dict[str, object]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {
        "name": name, "argv": argv, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "git": _version(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]),
        "python": platform.python_version(), "nginx": _version(["nginx", "-v"]),
        "wrk": _version(["wrk", "--version"]), "cpu": cpu, "cpus": os.cpu_count(),
        # Other work on the machine shows up here first: compare with loadavg_end.
        "loadavg_start": os.getloadavg(),
        "pinning": {"servers": SERVER_CPUS, "wrk_and_origin": CLIENT_CPUS, "workers-2 servers": ALL_CPUS},
    }


# ---- the run ---------------------------------------------------------------------------------------


def purge_cli_problem(env: dict[str, str]) -> str:
    done = subprocess.run([PYTHON, "-m", "edgeproxy", "purge", "--help"], env=env, capture_output=True,
                          text=True, timeout=30, check=False)
    if done.returncode == 0:
        return ""
    tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
    return f"`edgeproxy purge` CLI not available yet ({tail[0]})"


def fit_seconds(scenarios: list[Scenario], targets: set[str], rounds: int, seconds: int,
                budget: float) -> int:
    """Shrink the wrk duration (not below 2 s) so the planned runs fit the budget."""
    runs = sum(rounds * len(set(PROFILES[s.profile].targets) & targets) for s in scenarios)
    overhead = 20 * len({s.profile for s in scenarios}) + 15 * len(scenarios)
    per_run = (budget - overhead) / max(1, runs) - 1.5  # wrk start-up, /proc scans
    return max(2, min(seconds, int(per_run)))


def run(scenarios: list[Scenario], wanted: set[str], rounds: int, seconds: int, deadline: float,
        results: dict[str, dict[str, object]]) -> None:
    shm = Path("/dev/shm")
    workdir = Path(tempfile.mkdtemp(prefix="edgeproxy-bench-", dir=shm if shm.is_dir() else None))
    fleet = Fleet(workdir)
    try:
        origin_port = free_port()
        fleet.start("origin", [PYTHON, "-m", "edgeproxy", "demo-origin", "--listen",
                               f"127.0.0.1:{origin_port}"], CLIENT_CPUS, origin_port)
        purge_problem = purge_cli_problem(fleet.env) if any(s.purge for s in scenarios) else ""
        for profile_name, profile in PROFILES.items():
            chosen = [s for s in scenarios if s.profile == profile_name]
            if not chosen:
                continue
            targets = [start_target(fleet, n, origin_port, profile) for n in profile.targets if n in wanted]
            for scenario in chosen:
                if scenario.purge and purge_problem:
                    results[scenario.name] = {"skipped": purge_problem}
                    continue
                cells = measure(scenario, targets, rounds, seconds, deadline, fleet.env)
                results[scenario.name] = scenario_result(scenario, cells, profile, rounds, seconds)
                print(f"  done: {scenario.name}", file=sys.stderr, flush=True)
            for t in targets:
                if t.proc is not None:
                    fleet.stop(t.proc)
    finally:
        fleet.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="scripts/bench", description="wrk: edgeproxy vs nginx vs the bounds")
    ap.add_argument("--scenario", action="append", choices=[*SCENARIOS, "all"],
                    help=f"repeatable; default {', '.join(DEFAULT_SCENARIOS)}")
    ap.add_argument("--target", action="append", choices=TARGETS, help="repeatable; default all")
    ap.add_argument("--quick", action="store_true",
                    help=f"3 rounds x 3 s; default scenarios {', '.join(QUICK_SCENARIOS)}")
    ap.add_argument("--rounds", type=int, help="interleaved rounds per scenario (>= 3; default 5)")
    ap.add_argument("--duration", type=int, help="seconds per wrk run (default 10, shrunk to fit the budget)")
    ap.add_argument("--max-seconds", type=int, default=600, help="overall budget (default 600)")
    ap.add_argument("--name", help="result file name (default: date, plus -quick)")
    ap.add_argument("--no-chart", action="store_true", help="skip the PNG (no matplotlib needed)")
    args = ap.parse_args(argv)
    if args.rounds is not None and args.rounds < 3:
        ap.error("--rounds must be at least 3: a spread needs several interleaved runs")
    return args


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM takes the same way out as Ctrl-C: through every ``finally``


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    started = time.monotonic()
    deadline = started + args.max_seconds
    names = args.scenario or (QUICK_SCENARIOS if args.quick else DEFAULT_SCENARIOS)
    scenarios = list(SCENARIOS.values()) if "all" in names else [SCENARIOS[n] for n in dict.fromkeys(names)]
    wanted = set(args.target or TARGETS)
    rounds = args.rounds or (3 if args.quick else 5)
    seconds = fit_seconds(scenarios, wanted, rounds, args.duration or (3 if args.quick else 10),
                          args.max_seconds)
    name = args.name or time.strftime("%Y%m%d-%H%M") + ("-quick" if args.quick else "")
    print(f"bench {name}: {len(scenarios)} scenarios, {rounds} rounds x {seconds} s, "
          f"budget {args.max_seconds} s", file=sys.stderr)
    results: dict[str, object] = {"meta": meta(name, argv), "scenarios": {}}
    for sig in (signal.SIGTERM, signal.SIGINT):  # SIGINT too: a shell's `&` starts us with it ignored
        signal.signal(sig, _interrupt)
    try:
        run(scenarios, wanted, rounds, seconds, deadline, results["scenarios"])  # type: ignore[arg-type]
    except KeyboardInterrupt:
        print("interrupted: every server was stopped; no results written", file=sys.stderr)
        return 130
    except StartError as exc:  # only the origin's failure is fatal; a target's becomes an n/a row
        print(f"cannot run: {exc}", file=sys.stderr)
        return 1
    done = results["scenarios"]
    results["scenarios"] = {s.name: done[s.name] for s in scenarios if s.name in done}  # asked-for order
    results["meta"] |= {  # type: ignore[operator]
        "seconds": round(time.monotonic() - started), "loadavg_end": os.getloadavg(),
    }
    out_dir = HERE / "results"
    out_dir.mkdir(exist_ok=True)
    (out_dir / f"{name}.json").write_text(json.dumps(results, indent=2, sort_keys=False) + "\n")
    print(markdown(results))
    if not args.no_chart:
        chart(results, out_dir / f"{name}.png")
    print(f"wrote benchmarks/results/{name}.json" + ("" if args.no_chart else " and .png"), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
