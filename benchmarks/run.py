"""The benchmark orchestrator: wrk against edgeproxy, nginx and the bounds, side by side.

Rules kept here:
- Processes come from ``procs`` (own sessions, stopped in ``finally``, also on Ctrl-C, SIGTERM or error);
  everything listens on 127.0.0.1 ports picked free at run time; the whole run is bounded by ``--max-seconds``
  (durations shrink to fit, then scenarios are cut short with a note).
- Pinning (2-core machine): servers under test on core 0, wrk, the origins and purge-burst's purging thread
  (``Purger`` pins itself) on core 1, so each target owns one core and the origin's work in miss scenarios
  slows every target's client alike. The workers-2 profile lets servers use both cores (and so shares core 1
  with wrk): compare it only with itself (2 workers against the ``-1w`` targets started beside them).
- Targets run interleaved (A, B, C, A, B, C, ...) so drift (thermal, noisy neighbours) hits all alike;
  we report the median req/s with its min-max spread, never a single run. purge-burst interleaves each
  edgeproxy target with and without purges (every 10 ms over the control socket) the same way.
- A scenario names the targets it is worth measuring (the fast lane only matters on hits, a bound has no
  miss path), so the default set fits a 15-minute budget. The shared-cache scenarios (zipf-workers,
  hit-1k-workers, shared-rss: workers sharing one store against the old per-worker caches) do not fit it and run
  by name (``--scenario zipf-workers``) or with ``--scenario all``.
- zipf-workers warms each target with 20 s of the Zipf load (the cache full and churned: steady state), and gives
  each round its own seed (the same for every target), so no measured run replays the warm-up's URLs.
- The realistic scenarios (real-hit, real-zipf) send browser-like heads (``wrk/real.lua``: 300 of them, ~600 bytes,
  and a unique X-Request-Id on every request: no two heads the same bytes, as browsers send them) to servers with
  their access logs on (the ``-log`` targets); real-zipf reseeds its URLs every round, as zipf-workers. Access logs
  are counted and emptied before each run of their target (``trim_access_logs``) and once more after the last
  round, so the files stay small on tmpfs and the result says how many lines each request logged.
Outputs (``report``): a Markdown table on stdout, ``results/<name>.json`` and ``results/<name>.png``.
"""

from __future__ import annotations

import argparse
import http.client
import importlib.util
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # standalone runs: make the repository's package importable

from benchmarks import machine, memory, report, shared_rss  # noqa: E402
from benchmarks.procs import (  # noqa: E402
    ALL_CPUS,
    CLIENT_CPUS,
    HERE,
    PYTHON,
    SERVER_CPUS,
    TARGETS,
    TICK,
    Fleet,
    PurgeLog,
    Purger,
    StartError,
    Target,
    command_lines,
    control_stats,
    cpu_ticks,
    free_port,
    log_findings,
    machine_ticks,
    remove_store,
    start_target,
    status_kib,
    trim_access_logs,
)

EP = ("edgeproxy-h11", "edgeproxy-httptools")
LANE_OFF = ("edgeproxy-h11-nolane", "edgeproxy-httptools-nolane")
BOUNDS = ("bound-h11", "bound-httptools")
ZIPF_WARMUP_SECONDS = 2
REAL_OBJECTS = 8  # wrk/real.lua's OBJECTS: real-hit asks for /bytes/1024?o=0 .. ?o=7
REVALIDATE_URLS = 1000  # revalidate's URLs, asked in turn: 2 s of warm-up stores them all at 4k req/s or more
LOG_FLUSH_WAIT = 1.5  # after a scenario's last round: nginx flushes its access log buffer every second


@dataclass(frozen=True)
class Scenario:
    name: str
    path: str
    targets: tuple[str, ...]
    connections: int = 64
    script: str = "plain.lua"
    profile: str = "default"
    warm_until_hit: bool = True
    purge: bool = False
    warmup_seconds: int = ZIPF_WARMUP_SECONDS  # a scripted load (zipf.lua): one unmeasured wrk run this long
    reseed: bool = False  # a seed per round (ROUND_SEED + round), another for the warm-up (distinct.lua: a run id)
    script_args: tuple[str, ...] = ()  # after wrk's "--", before the seed (real.lua: "zipf")
    env: tuple[tuple[str, str], ...] = ()  # added to wrk's environment (real.lua: REAL_COUNT_HITS=1 counts hits)
    warm_paths: tuple[str, ...] = ()  # a script with a fixed set of URLs: each is warmed until a hit (no wrk warm-up)


@dataclass(frozen=True)
class Profile:
    """Servers that live together for all the scenarios using them."""

    cache_mib: int
    workers: int
    cpus: str
    origin: str = "fast"  # a key of ORIGINS


# The fast origin (the bound, prepared answers) keeps the origin out of the miss figures; the demo origin
# is needed for what the bound cannot answer: 304s to conditionals, any object size.
FAST_PARSER = "httptools" if importlib.util.find_spec("httptools") else "h11"
ORIGINS = {
    "fast": [PYTHON, "-m", "benchmarks.bound", "--origin", "--parser", FAST_PARSER, "--listen"],
    "demo": [PYTHON, "-m", "edgeproxy", "demo-origin", "--listen"],
}
PROFILES = {
    "default": Profile(256, 1, SERVER_CPUS),
    # Smaller than zipf's working set (100,000 x 1 KiB plus per-entry overhead), so eviction matters.
    "small-cache": Profile(32, 1, SERVER_CPUS),
    "revalidate": Profile(256, 1, SERVER_CPUS, origin="demo"),
    "workers-2": Profile(256, 2, ALL_CPUS),
    "memory": Profile(memory.CACHE_MIB, 1, SERVER_CPUS, origin="demo"),
    # The shared cache: targets with 1, 2 and 4 workers side by side, so the servers get both cores (as in
    # workers-2; 4 workers on 2 cores are oversubscribed). The targets' names fix their workers.
    "zipf-workers": Profile(32, 2, ALL_CPUS),
    "hit-workers": Profile(256, 2, ALL_CPUS),
    "shared-rss": Profile(256, 2, ALL_CPUS),
}
SCENARIOS = {
    s.name: s
    for s in (
        # Realistic traffic: browser-like heads, every one unique (real.lua), access logs on. real-hit: 8 hot objects;
        # the h11 bound (no log) is the h11 reference, lane off beside lane on says what the lane gives a browser's hit,
        # a stderr log beside the file, and httptools with its log off what the log costs a lane hit.
        Scenario("real-hit", "/bytes/1024?o=K", ("nginx-log", "edgeproxy-h11-log", "edgeproxy-httptools-log",
                 "edgeproxy-httptools-log-stderr", "edgeproxy-httptools-nolane-log", "edgeproxy-httptools",
                 "bound-h11", "bound-httptools"), script="real.lua",
                 warm_paths=tuple(f"/bytes/1024?o={k}" for k in range(REAL_OBJECTS))),
        # real-zipf: Zipf(1.0) over 100,000 URLs into a 32 MiB cache, hits counted, a seed per round.
        Scenario("real-zipf", "/bytes/1024?i=K", ("nginx-log", "edgeproxy-httptools-log", "edgeproxy-h11-log"),
                 script="real.lua", profile="small-cache", warm_until_hit=False, warmup_seconds=5, reseed=True,
                 script_args=("zipf",), env=(("REAL_COUNT_HITS", "1"),)),
        # edgeproxy-httptools-log beside edgeproxy-httptools: what the access log costs a lane hit.
        Scenario("hit-1k", "/bytes/1024", ("nginx", *EP, *LANE_OFF, *BOUNDS, "edgeproxy-httptools-log")),
        Scenario("hit-64k", "/bytes/65536",
                 ("nginx", "nginx-nopush-off", *EP, "edgeproxy-httptools-nolane", "bound-httptools")),
        Scenario("hit-1m", "/bytes/1048576", ("nginx", *EP, *BOUNDS)),
        Scenario("hit-1k-c256", "/bytes/1024", ("nginx", *EP, *BOUNDS), connections=256),
        # Pass-through: a URL of its own for every request (wrk/distinct.lua), so no target is measured queueing
        # requests for one URL (nginx's proxy_cache_lock: a p99 of 1.3 s with one URL) instead of forwarding them.
        Scenario("miss-1k", "/nostore/1024", ("nginx", *EP, *LANE_OFF), script="distinct.lua", warm_until_hit=False,
                 reseed=True, script_args=("0",)),
        Scenario("zipf", "/", ("nginx", *EP), script="zipf.lua", profile="small-cache", warm_until_hit=False),
        # max-age=0: edgeproxy stores and revalidates (304s), nginx does not store it (each request a full pass).
        # 1,000 URLs in turn (stored by the warm-up), not one: one URL would measure edgeproxy collapsing 64
        # clients onto one revalidation and nginx's lock queueing them.
        Scenario("revalidate", "/revalidate/1024", ("nginx", *EP), script="distinct.lua", profile="revalidate",
                 warm_until_hit=False, script_args=(str(REVALIDATE_URLS),)),
        # With the lane one worker already saturates wrk's single thread (~100k req/s): lane-off rows show scaling.
        Scenario("workers-2", "/bytes/1024", ("nginx", "edgeproxy-h11", "edgeproxy-h11-1w", *LANE_OFF,
                 "edgeproxy-h11-nolane-1w", "edgeproxy-httptools-nolane-1w"), connections=256, profile="workers-2"),
        Scenario("purge-burst", "/bytes/1024", EP, purge=True),
        Scenario("memory", "/bytes/N?m=K", ("edgeproxy-h11",), profile="memory"),
        # Hit ratio with a 32 MiB cache: one process's LRU, 2 and 4 workers on the shared store, 2 workers with an
        # LRU of size / 2 each (the old layout), one process on the shared store.
        Scenario("zipf-workers", "/", ("edgeproxy-httptools-1w", "edgeproxy-httptools-2w", "edgeproxy-httptools-4w",
                 "edgeproxy-httptools-2w-unshared", "edgeproxy-httptools-1w-shared"), script="zipf.lua",
                 profile="zipf-workers", warm_until_hit=False, warmup_seconds=20, reseed=True),
        # What a hit pays for the shared store (hot tier, version check) against 2 workers that share nothing.
        Scenario("hit-1k-workers", "/bytes/1024", ("edgeproxy-httptools-2w", "edgeproxy-httptools-2w-unshared",
                 "edgeproxy-httptools-nolane-2w", "edgeproxy-httptools-nolane-2w-unshared"), profile="hit-workers"),
        # Host memory with a full 256 MiB cache of 1 KiB objects (shared_rss.py); 1 worker and 2 unshared for scale.
        Scenario("shared-rss", "/bytes/1024?f=N", ("edgeproxy-httptools-1w", "edgeproxy-httptools-2w",
                 "edgeproxy-httptools-4w", "edgeproxy-httptools-2w-unshared"), profile="shared-rss"),
    )
}
# hit-1k-c256 runs by name since the realistic scenarios joined: with them the set would not fit 900 s with 3 s runs,
# and it says what hit-1k says (lane hits of one URL) at more connections.
DEFAULT_SCENARIOS = ("real-hit", "real-zipf", "hit-1k", "hit-64k", "miss-1k", "zipf", "revalidate", "workers-2",
                     "purge-burst", "memory")
QUICK_SCENARIOS = ("hit-1k", "miss-1k")
PURGE_INTERVAL = 0.010
PURGE_REQUEST = {"cmd": "purge", "kind": "prefix", "prefix": "/x/", "soft": False}  # matches nothing stored
PURGED = "+purge"  # suffix of the purge-burst cells measured with purges running
WARMUP_SEED, ROUND_SEED = 1, 100  # zipf.lua seeds of a reseeded scenario (its default seed is 20240101)


# ---- warm-up and wrk -------------------------------------------------------------------------------


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
    if scenario.script != "plain.lua" and not scenario.warm_paths:  # the script picks its own URLs
        fetch(target.port, scenario.path)  # only check the target answers
        return ""
    for path in scenario.warm_paths or (scenario.path,):
        if note := warm_path(target, scenario, path):
            return note
    return ""


def warm_path(target: Target, scenario: Scenario, path: str) -> str:
    status, headers = 0, {}
    for _ in range(10):
        status, headers = fetch(target.port, path)
        if status >= 400:
            return f"warm-up got status {status}"
        if not scenario.warm_until_hit or is_hit(headers):
            return ""
    shown = headers.get("cache-status") or headers.get("x-cache-status") or "none"
    return f"never a hit after 10 warm-up requests of {path} (last cache status: {shown})"


def run_wrk(port: int, scenario: Scenario, seconds: int, seed: int | None = None) -> dict[str, float]:
    args = [*scenario.script_args, *([str(seed)] if seed is not None else [])]
    argv = [
        "taskset", "-c", CLIENT_CPUS, "wrk", "--latency", "-t1", f"-c{scenario.connections}",
        f"-d{seconds}s", "--timeout", "5s", "-s", str(HERE / "wrk" / scenario.script),
        f"http://127.0.0.1:{port}{scenario.path}", *(["--", *args] if args else []),
    ]
    env = dict(os.environ, **dict(scenario.env)) if scenario.env else None
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30, check=True, env=env)
    return report.parse_wrk(done.stdout)


# ---- measuring -------------------------------------------------------------------------------------


@dataclass
class Cell:
    """One scenario x target (x purges on/off): the wrk runs and what the server spent on them."""

    target: Target
    purge: bool = False
    runs: list[dict[str, float]] = field(default_factory=list)
    cpu_ticks: int = 0
    peak_rss_kib: int = 0
    purges: PurgeLog = field(default_factory=PurgeLog)
    notes: list[str] = field(default_factory=list)
    store: dict[str, object] = field(default_factory=dict)  # edgeproxy: its stats' store figures after the rounds
    logged: list[int] = field(default_factory=lambda: [0, 0])  # access log lines and bytes of the measured runs
    other_ticks: int = 0  # CPU that neither the target, the origins, wrk nor this process used during the runs


ORIGIN_PIDS: list[int] = []  # the origins run() started: their CPU is not "other load"


def own_ticks() -> float:
    """CPU of this process (with the purger thread) and of its reaped children (every wrk run so far), in ticks."""
    return sum(u.ru_utime + u.ru_stime for u in map(resource.getrusage, (resource.RUSAGE_SELF,
                                                                          resource.RUSAGE_CHILDREN))) * TICK


def one_run(cell: Cell, scenario: Scenario, seconds: int, seed: int | None = None) -> None:
    target = cell.target
    assert target.proc is not None
    purger = (Purger(str(target.control), lambda n: PURGE_REQUEST, PURGE_INTERVAL, {int(CLIENT_CPUS)})
              if cell.purge else None)
    machine, own, origins = machine_ticks(), own_ticks(), sum(map(cpu_ticks, ORIGIN_PIDS))
    before = cpu_ticks(target.proc.pid)
    if purger:
        purger.start()
    try:
        result = run_wrk(target.port, scenario, seconds, seed)
    finally:
        if purger:
            purger.halt.set()
            purger.join(15)
    spent = cpu_ticks(target.proc.pid) - before
    cell.cpu_ticks += spent
    # Whatever else ran on the machine meanwhile (other jobs): the interleaving spreads it, this says how much.
    cell.other_ticks += max(0, round(machine_ticks() - machine - spent - (own_ticks() - own)
                                     - (sum(map(cpu_ticks, ORIGIN_PIDS)) - origins)))
    cell.runs.append(result)
    if purger:
        cell.purges.latencies_ms += purger.log.latencies_ms
        cell.purges.errors += purger.log.errors
        cell.purges.cpus = purger.log.cpus


STORE_FIGURES = ("entries", "bytes", "capacity", "evictions", "hit_ratio", "stats_error")
WORKER_MARKS = {"nginx": "nginx: worker process", "edgeproxy": "multiprocessing.spawn"}


def process_note(target: Target) -> str:
    """How many workers serve: the workers-2 rows must show the supervisor really started its workers.

    Counted from the command lines under the started pid: nginx's cache manager/loader and Python's
    multiprocessing resource tracker are helpers, not workers."""
    kind = target.name.split("-")[0]
    lines = command_lines(target.proc.pid)  # type: ignore[union-attr]
    seen = sum(WORKER_MARKS[kind] in line for line in lines[1:]) if kind in WORKER_MARKS else 0
    seen = seen or 1  # one process serving by itself (workers = 1)
    text = f"{seen} worker process" + ("es" if seen > 1 else "") + f" ({len(lines)} in the tree)"
    return text + ("" if seen == target.workers else f"; NOT the configured {target.workers}")


def make_cells(scenario: Scenario, targets: list[Target]) -> dict[str, Cell]:
    cells: dict[str, Cell] = {}
    for t in targets:
        cells[t.name] = Cell(t, notes=[t.unavailable] if t.unavailable else [])
        if scenario.purge:
            cells[t.name + PURGED] = Cell(t, purge=True, notes=list(cells[t.name].notes))
    return cells


def warm_all(scenario: Scenario, cells: dict[str, Cell]) -> list[Cell]:
    """Warm every live target; returns the cells to measure (a failed warm-up leaves a note instead)."""
    live = [c for c in cells.values() if not c.target.unavailable]
    for t in {id(c.target): c.target for c in live}.values():
        mine = [c for c in live if c.target is t]
        try:
            note = warm(t, scenario)
            if scenario.script != "plain.lua" and not scenario.warm_paths:  # fill the cache towards its steady
                run_wrk(t.port, scenario, scenario.warmup_seconds,  # state, not measured
                        WARMUP_SEED if scenario.reseed else None)
        except (OSError, http.client.HTTPException, subprocess.SubprocessError, ValueError) as exc:
            note = f"warm-up failed: {exc!r}"[:120] + t.last_log_line()
            live = [c for c in live if c.target is not t]
        for c in mine:
            c.notes += [note] if note else []
            if PROFILES[scenario.profile].workers > 1:
                c.notes.append(process_note(t))
    return live


def trim_logs(cell: Cell, counted: bool) -> None:
    """Empty the cell's target's access logs; what they held is the cell's last run's when ``counted``."""
    if cell.target.access_logs:
        lines, size = trim_access_logs(cell.target)
        if counted:
            cell.logged[0] += lines
            cell.logged[1] += size


def rounds_of(scenario: Scenario, cells: dict[str, Cell], live: list[Cell], rounds: int, seconds: int,
              deadline: float) -> None:
    for round_ in range(rounds):
        for c in list(live):
            if time.monotonic() + seconds + 10 > deadline:
                c.notes.append("budget (--max-seconds) exhausted")
                return
            trim_logs(c, counted=bool(c.runs))  # the warm-up's lines, or the previous round's
            try:
                one_run(c, scenario, seconds, ROUND_SEED + round_ if scenario.reseed else None)
            except (subprocess.SubprocessError, ValueError) as exc:
                c.notes.append(f"wrk failed: {str(exc)[:200]}")
                live.remove(c)
            else:
                proc = c.target.proc
                if proc is not None and proc.poll() is not None:
                    c.notes.append(f"exited with {proc.returncode} during the run" + c.target.last_log_line())
                    live = [x for x in live if x.target is not c.target]


def measure(scenario: Scenario, targets: list[Target], rounds: int, seconds: int,
            deadline: float) -> dict[str, Cell]:
    cells = make_cells(scenario, targets)
    live = warm_all(scenario, cells)
    rounds_of(scenario, cells, live, rounds, seconds, deadline)
    if logging := [c for c in cells.values() if c.target.access_logs and c.runs]:
        time.sleep(LOG_FLUSH_WAIT)  # the last round's lines: flushed within a second
        for c in logging:
            trim_logs(c, counted=True)
    for c in cells.values():
        if c.target.proc is not None and c.target.proc.poll() is None:
            c.peak_rss_kib = status_kib(c.target.proc.pid, "VmHWM:")
            if c.target.control is not None:  # the store's own figures: is it full, has it evicted?
                stats = control_stats(c.target)
                c.store = {k: stats[k] for k in STORE_FIGURES if k in stats}
    return cells


# ---- the run ---------------------------------------------------------------------------------------


def fit_seconds(scenarios: list[Scenario], wanted: set[str], rounds: int, seconds: int, budget: float) -> int:
    """Shrink the wrk duration (not below 2 s) so the planned runs fit the budget."""
    runs = sum(rounds * len(set(s.targets) & wanted) * (2 if s.purge else 1) for s in scenarios
               if s.profile not in ("memory", "shared-rss"))
    # Measured: ~5 s to start a profile's servers, ~3 s of warm-up per scenario (zipf: 2 s of wrk per target).
    overhead = 5 * len({s.profile for s in scenarios}) + 5 * len(scenarios) + memory.BUDGET_SECONDS * any(
        s.profile == "memory" for s in scenarios)
    overhead += sum(s.warmup_seconds * len(set(s.targets) & wanted) for s in scenarios if s.reseed)  # zipf-workers
    # Access logs: ~0.2 s a run to count and empty them, and a wait for the last flush per scenario.
    logged = [sum(1 for t in set(s.targets) & wanted if TARGETS[t].log) for s in scenarios]
    overhead += sum(0.2 * rounds * n + LOG_FLUSH_WAIT * (n > 0) for n in logged)
    overhead += sum(shared_rss.budget_seconds(len(set(s.targets) & wanted)) for s in scenarios
                    if s.profile == "shared-rss")
    per_run = (budget - overhead) / max(1, runs) - 0.3  # wrk start-up, /proc scans: < 0.1 s measured
    return max(2, min(seconds, int(per_run)))


def run_profile(fleet: Fleet, profile: Profile, chosen: list[Scenario], wanted: set[str], origin_port: int,
                plan: tuple[int, int, float], results: dict[str, dict[str, object]]) -> None:
    rounds, seconds, deadline = plan
    names = [n for n in TARGETS if n in wanted and any(n in s.targets for s in chosen)]
    code = machine.code_state()  # what the servers import, now: the tree may change during a long run
    targets = [start_target(fleet, n, origin_port, profile.workers, profile.cpus, profile.cache_mib)
               for n in names]
    if (after := machine.code_state()) != code:
        code["changed_while_starting"] = after
    try:
        for scenario in chosen:
            began = time.monotonic()
            mine = [t for t in targets if t.name in scenario.targets]
            if scenario.profile == "memory":
                results[scenario.name] = memory.measure(mine, profile.cache_mib, deadline)
            elif scenario.profile == "shared-rss":
                results[scenario.name] = shared_rss.measure(mine, profile.cache_mib, deadline)
            else:
                cells = measure(scenario, mine, rounds, seconds, deadline)
                results[scenario.name] = report.scenario_result(scenario, cells, profile, rounds, seconds)
            results[scenario.name] |= {"elapsed_s": round(time.monotonic() - began, 1), "code": code}
            print(f"  done: {scenario.name} ({time.monotonic() - began:.0f} s)", file=sys.stderr, flush=True)
    finally:
        for t in targets:
            if t.proc is not None:
                fleet.stop(t.proc)
            remove_store(t)
            if t.log_findings and t.log is not None:  # found in a -log-stderr target's log before it was emptied
                fleet.findings[t.log.stem] = t.log_findings


def run(scenarios: list[Scenario], wanted: set[str], rounds: int, seconds: int, deadline: float,
        results: dict[str, dict[str, object]], logs: dict[str, list[str]] | None = None) -> None:
    """Run every profile's scenarios into ``results``; ``logs`` (if given) gets each server log's lines of trouble."""
    shm = Path("/dev/shm")
    workdir = Path(tempfile.mkdtemp(prefix="edgeproxy-bench-", dir=shm if shm.is_dir() else None))
    fleet = Fleet(workdir)
    try:
        ports: dict[str, int] = {}
        for profile_name, profile in PROFILES.items():
            if chosen := [s for s in scenarios if s.profile == profile_name]:
                origin = profile.origin
                if origin not in ports:  # started once, on the client core, kept for the whole run
                    ports[origin] = free_port()
                    ORIGIN_PIDS.append(fleet.start(f"origin-{origin}", [*ORIGINS[origin],
                                                   f"127.0.0.1:{ports[origin]}"], CLIENT_CPUS, ports[origin]).pid)
                run_profile(fleet, profile, chosen, wanted, ports[origin], (rounds, seconds, deadline), results)
    finally:
        fleet.stop_all()
        ORIGIN_PIDS.clear()
        for log in sorted([*workdir.glob("*.log"), *workdir.glob("nginx-*/error.log")]):  # nginx's error_log too
            name = log.stem if log.parent == workdir else f"{log.parent.name}/{log.stem}"
            if logs is not None and (found := fleet.findings.get(name, []) + log_findings(log)):
                logs[name] = found
        shutil.rmtree(workdir, ignore_errors=True)


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="scripts/bench", description="wrk: edgeproxy vs nginx vs the bounds")
    ap.add_argument("--scenario", action="append", choices=[*SCENARIOS, "all"],
                    help=f"repeatable; default {', '.join(DEFAULT_SCENARIOS)}")
    ap.add_argument("--target", action="append", choices=list(TARGETS),
                    help="repeatable; default all (each scenario measures the targets its table names)")
    ap.add_argument("--quick", action="store_true",
                    help=f"3 rounds x 3 s; default scenarios {', '.join(QUICK_SCENARIOS)}")
    ap.add_argument("--rounds", type=int, help="interleaved rounds per scenario (>= 3; default 5)")
    ap.add_argument("--duration", type=int, help="seconds per wrk run (default 10, shrunk to fit the budget)")
    ap.add_argument("--max-seconds", type=int, default=900, help="overall budget (default 900)")
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
    names = args.scenario or (QUICK_SCENARIOS if args.quick else DEFAULT_SCENARIOS)
    scenarios = list(SCENARIOS.values()) if "all" in names else [SCENARIOS[n] for n in dict.fromkeys(names)]
    wanted = set(args.target or TARGETS)
    rounds = args.rounds or (3 if args.quick else 5)
    seconds = fit_seconds(scenarios, wanted, rounds, args.duration or (3 if args.quick else 10), args.max_seconds)
    name = args.name or time.strftime("%Y%m%d-%H%M") + ("-quick" if args.quick else "")
    print(f"bench {name}: {len(scenarios)} scenarios, {rounds} rounds x {seconds} s, "
          f"budget {args.max_seconds} s", file=sys.stderr)
    results: dict[str, object] = {"meta": machine.meta(name, argv), "scenarios": {}, "logs": {}}
    for sig in (signal.SIGTERM, signal.SIGINT):  # SIGINT too: a shell's `&` starts us with it ignored
        signal.signal(sig, _interrupt)
    try:
        run(scenarios, wanted, rounds, seconds, started + args.max_seconds, results["scenarios"],  # type: ignore[arg-type]
            results["logs"])  # type: ignore[arg-type]
    except KeyboardInterrupt:
        print("interrupted: every server was stopped; no results written", file=sys.stderr)
        return 130
    except StartError as exc:  # only the origin's failure is fatal; a target's becomes an n/a row
        print(f"cannot run: {exc}", file=sys.stderr)
        return 1
    done = results["scenarios"]
    results["scenarios"] = {s.name: done[s.name] for s in scenarios if s.name in done}  # asked-for order
    results["goals"] = report.goals(results["scenarios"])  # type: ignore[arg-type]
    results["meta"] |= {"seconds": round(time.monotonic() - started), "loadavg_end": os.getloadavg()}  # type: ignore[operator]
    out_dir = HERE / "results"
    out_dir.mkdir(exist_ok=True)
    (out_dir / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    print(report.markdown(results))
    charted = not args.no_chart and report.chart(results, out_dir / f"{name}.png")
    print(f"wrote benchmarks/results/{name}.json" + (" and .png" if charted else ""), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
