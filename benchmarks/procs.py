"""Processes for the benchmarks: starting servers, reading /proc, and purging over the control socket.

Rules kept here:
- Owns process lifetimes: every server runs in its own session (process group) with PR_SET_PDEATHSIG,
  and ``Fleet.stop_all`` (called from ``finally``) stops them all: SIGTERM to the group, SIGKILL after 5 s.
- Everything listens on 127.0.0.1 ports picked free at run time.
- ``TARGETS`` is the table of what can be measured: nginx, edgeproxy per parser with the fast lane on (the
  default config) or off, and the bounds. A target's ``workers`` is the profile's unless the table fixes it
  (``-1w`` targets are the one-worker reference inside the workers-2 profile; ``-2w``/``-4w`` fix 2 or 4).
  ``[cache] shared`` is left to edgeproxy's default (shared when workers > 1) unless the name says ``-shared``
  or ``-unshared``.
- Access logs are off except in the ``-log`` targets: nginx's buffered ``combined`` log, edgeproxy's ``[log]
  access`` into a file (``-log``) or to stderr (``-log-stderr``), all in the fleet's work directory.
  ``trim_access_logs`` counts and empties them between runs (they would grow by hundreds of MiB a run on tmpfs),
  keeping from a stderr log the lines that are not access lines.
- Every edgeproxy gets ``[cache] path`` in the fleet's work directory (never the default under /dev/shm, which
  another instance on the host could be using), and ``remove_store`` deletes it once the target has stopped.
- CPU is utime+stime summed over a process's whole tree (nginx master + workers, edgeproxy's supervisor +
  workers); RSS likewise, from ``/proc/PID/status``; Pss and private bytes from ``/proc/PID/smaps_rollup``, and
  what of them lies in one directory's files (the shared store's mappings) from ``/proc/PID/smaps``.
- ``Purger`` sends purges itself, one request line per ``interval`` on one persistent control connection
  (the CLI's Python start-up would cap the rate near 5/s), and records every round trip it sees and the CPUs it
  was pinned to (the client's core in run.py's purge-burst).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # standalone runs: make the repository's package importable

from edgeproxy.control.client import ControlClient, ControlError  # noqa: E402

HERE = Path(__file__).resolve().parent
SERVER_CPUS, CLIENT_CPUS, ALL_CPUS = "0", "1", "0,1"
TICK = os.sysconf("SC_CLK_TCK")
PYTHON = sys.executable
START_TIMEOUT = 20.0


class StartError(RuntimeError):
    """A server did not come up; the message says why (its last log lines)."""


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
        self.findings: dict[str, list[str]] = {}  # a log's name -> trouble found in it before it was emptied
        self.env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))

    def start(self, name: str, argv: list[str], cpus: str, port: int) -> subprocess.Popen[bytes]:
        log = self.workdir / f"{name}.log"
        with log.open("ab") as out:  # O_APPEND: a -log-stderr target's log is emptied while it writes
            proc = subprocess.Popen(
                ["taskset", "-c", cpus, *argv], stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                env=self.env, start_new_session=True, preexec_fn=_die_with_parent,
            )
        self.procs.append(proc)
        deadline = time.monotonic() + START_TIMEOUT
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


# ---- /proc -----------------------------------------------------------------------------------------


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


def machine_ticks() -> int:
    """user + nice + system of the whole machine (``/proc/stat``): what processes are charged (irq, softirq and steal
    are not, with this kernel's IRQ time accounting), so it compares with ``cpu_ticks`` sums."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    return int(fields[1]) + int(fields[2]) + int(fields[3])


def command_lines(root: int) -> list[str]:
    """The command line of every process in the tree, the root first."""
    out = []
    for pid in process_tree(root):
        with contextlib.suppress(OSError):
            out.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
    return out


def status_kib(root: int, key: str) -> int:
    """A ``/proc/PID/status`` figure (``VmHWM:``, ``VmRSS:``) summed over the process tree, in KiB."""
    total = 0
    for pid in process_tree(root):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith(key):
                    total += int(line.split()[1])
    return total


SMAPS_KEYS = ("Rss", "Pss", "Pss_Anon", "Pss_File", "Pss_Shmem", "Shared_Clean", "Shared_Dirty", "Private_Clean",
              "Private_Dirty", "Anonymous")


def smaps_rollup_kib(pid: int) -> dict[str, int]:
    """``/proc/PID/smaps_rollup``: the ``SMAPS_KEYS`` figures of one process, in KiB (empty if it is gone)."""
    out: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in SMAPS_KEYS:
                out[key] = int(rest.split()[0])
    return out


def mapped_under_kib(pid: int, directory: Path) -> dict[str, int]:
    """Rss and private (Private_Clean + Private_Dirty) KiB of one process's mappings of files under ``directory``.

    smaps counts a tmpfs page mapped by only one process as private, so a private-bytes (USS) sum would count the
    store's pages once in the process and again in the files' tmpfs bytes; this is what to take off it."""
    prefix, out, inside = str(directory).rstrip("/") + "/", {"Rss": 0, "Private": 0}, False
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
            head = line.split(maxsplit=5)
            if head and "-" in head[0] and not head[0].endswith(":"):  # a mapping's header line
                inside = len(head) == 6 and head[5].startswith(prefix)
            elif inside and head[0] == "Rss:":
                out["Rss"] += int(head[1])
            elif inside and head[0] in ("Private_Clean:", "Private_Dirty:"):
                out["Private"] += int(head[1])
    return out


# ---- targets ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    kind: str  # "nginx" | "edgeproxy" | "bound"
    parser: str = ""
    lane: bool = True
    workers: int | None = None  # None: the profile's
    nopush: bool = True  # nginx only: tcp_nopush (see nginx.conf.template)
    shared: bool | None = None  # edgeproxy only: [cache] shared; None: edgeproxy's default (workers > 1)
    log: str = ""  # access log: "" off; "file" (nginx, edgeproxy: a file in the work dir); "stderr" (edgeproxy)


TARGETS: dict[str, Spec] = {
    "nginx": Spec("nginx"),
    "nginx-nopush-off": Spec("nginx", nopush=False),
    "edgeproxy-h11": Spec("edgeproxy", "h11"),
    "edgeproxy-h11-nolane": Spec("edgeproxy", "h11", lane=False),
    "edgeproxy-httptools": Spec("edgeproxy", "httptools"),
    "edgeproxy-httptools-nolane": Spec("edgeproxy", "httptools", lane=False),
    "edgeproxy-h11-1w": Spec("edgeproxy", "h11", workers=1),
    "edgeproxy-httptools-1w": Spec("edgeproxy", "httptools", workers=1),
    "edgeproxy-h11-nolane-1w": Spec("edgeproxy", "h11", lane=False, workers=1),
    "edgeproxy-httptools-nolane-1w": Spec("edgeproxy", "httptools", lane=False, workers=1),
    # The host-wide shared cache (zipf-workers, hit-1k-workers, shared-rss): the default with 2 or 4 workers, the
    # old per-worker LRU of size / workers (-unshared), and one process on the shared store (-1w-shared).
    "edgeproxy-httptools-1w-shared": Spec("edgeproxy", "httptools", workers=1, shared=True),
    "edgeproxy-httptools-2w": Spec("edgeproxy", "httptools", workers=2),
    "edgeproxy-httptools-4w": Spec("edgeproxy", "httptools", workers=4),
    "edgeproxy-httptools-2w-unshared": Spec("edgeproxy", "httptools", workers=2, shared=False),
    "edgeproxy-httptools-nolane-2w": Spec("edgeproxy", "httptools", lane=False, workers=2),
    "edgeproxy-httptools-nolane-2w-unshared": Spec("edgeproxy", "httptools", lane=False, workers=2, shared=False),
    # Access logs on (the realistic scenarios, and hit-1k's log on/off pair): nginx's buffered combined log,
    # edgeproxy's into a file, or to stderr (the process's stderr is its log file in the work dir, as journald would
    # take it from a unit's stderr).
    "nginx-log": Spec("nginx", log="file"),
    "edgeproxy-h11-log": Spec("edgeproxy", "h11", log="file"),
    "edgeproxy-httptools-log": Spec("edgeproxy", "httptools", log="file"),
    "edgeproxy-httptools-nolane-log": Spec("edgeproxy", "httptools", lane=False, log="file"),
    "edgeproxy-httptools-log-stderr": Spec("edgeproxy", "httptools", log="stderr"),
    "bound-h11": Spec("bound", "h11"),
    "bound-httptools": Spec("bound", "httptools"),
}


@dataclass
class Target:
    name: str
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    control: Path | None = None
    store: Path | None = None  # edgeproxy: its [cache] path (used only when the cache is shared)
    workers: int = 1
    unavailable: str = ""
    log: Path | None = None
    access_logs: list[Path] = field(default_factory=list)  # emptied by trim_access_logs (may include ``log``)
    log_findings: list[str] = field(default_factory=list)  # trouble found in ``log`` before it was emptied

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
fast_lane = {lane}
control_socket = "{control}"

[cache]
size = "{cache_mib}MiB"
max_object_size = "8MiB"
path = "{store}"
{shared}
[log]
access = {access}

[[site]]
hosts = ["*"]
origin = "http://127.0.0.1:{origin_port}"
"""


def nginx_argv(workdir: Path, port: int, origin_port: int, workers: int, cache_mib: int, nopush: bool,
               access_log: Path | None = None) -> list[str]:
    prefix = workdir / f"nginx-{port}"
    (prefix / "cache").mkdir(parents=True)
    values = {
        # The usual production setting: buffered, flushed at least every second.
        "ACCESS_LOG": f"{access_log} combined buffer=64k flush=1s" if access_log else "off",
        # Workers run as the invoking user so they can write the cache dir (the directive is ignored,
        # with a warning, when nginx is not started as root).
        "USER": pwd.getpwuid(os.geteuid()).pw_name,
        "WORKERS": str(workers), "DIR": str(prefix), "PORT": str(port),
        "ORIGIN_PORT": str(origin_port), "CACHE_SIZE": f"{cache_mib}m", "NOPUSH": "on" if nopush else "off",
    }
    text = (HERE / "nginx.conf.template").read_text()
    for key, value in values.items():
        text = text.replace(f"@{key}@", value)
    (prefix / "nginx.conf").write_text(text)
    return [shutil.which("nginx") or "/usr/sbin/nginx", "-p", str(prefix), "-c", "nginx.conf", "-g", "daemon off;"]


def target_argv(fleet: Fleet, target: Target, spec: Spec, origin_port: int, cache_mib: int) -> list[str]:
    if spec.kind == "nginx":
        access = fleet.workdir / f"{target.name}-{target.port}.access" if spec.log else None
        target.access_logs = [access] if access else []
        return nginx_argv(fleet.workdir, target.port, origin_port, target.workers, cache_mib, spec.nopush, access)
    if spec.kind == "bound":
        return [PYTHON, "-m", "benchmarks.bound", "--parser", spec.parser, "--listen", f"127.0.0.1:{target.port}"]
    config = fleet.workdir / f"{target.name}-{target.port}.toml"
    target.control = fleet.workdir / f"{target.name}-{target.port}.sock"
    target.store = fleet.workdir / f"{target.name}-{target.port}.store"
    shared = "" if spec.shared is None else f"shared = {str(spec.shared).lower()}\n"
    access = "false"
    if spec.log == "file":
        target.access_logs = [fleet.workdir / f"{target.name}-{target.port}.access"]
        access = f'"{target.access_logs[0]}"'
    elif spec.log == "stderr":  # stderr is the target's log file (Fleet.start): access lines and its own
        target.access_logs, access = [target.log], '"-"'  # type: ignore[list-item]
    config.write_text(EDGEPROXY_TOML.format(
        port=target.port, parser=spec.parser, workers=target.workers, lane=str(spec.lane).lower(),
        control=target.control, cache_mib=cache_mib, store=target.store, shared=shared, access=access,
        origin_port=origin_port))
    return [PYTHON, "-m", "edgeproxy", "serve", "--config", str(config)]


def start_target(fleet: Fleet, name: str, origin_port: int, workers: int, cpus: str, cache_mib: int) -> Target:
    """Start one target; a failure becomes ``unavailable`` (an n/a row with the reason), never an exception."""
    spec = TARGETS[name]
    target = Target(name, free_port(), workers=spec.workers or workers)
    target.log = fleet.workdir / f"{name}-{target.port}.log"
    try:
        target.proc = fleet.start(f"{name}-{target.port}", target_argv(fleet, target, spec, origin_port, cache_mib),
                                  cpus, target.port)
    except StartError as exc:
        target.unavailable = str(exc)
    return target


def control_stats(target: Target) -> dict[str, Any]:
    """The ``stats`` reply of an edgeproxy over its control socket (the store's figures are its ``entries``,
    ``bytes``, ``capacity`` and ``evictions``), or ``{"stats_error": why}``."""
    try:
        with ControlClient(str(target.control), timeout=10) as client:
            reply = client.request({"cmd": "stats"})
    except (ControlError, OSError) as exc:
        return {"stats_error": str(exc)[:200]}
    return reply if reply.get("ok", True) else {"stats_error": str(reply.get("error"))[:200]}


LOG_MARKS = re.compile(r"traceback|error|exception|critical|warning", re.I)


def findings(lines: list[str], limit: int = 20) -> list[str]:
    """The lines that say something went wrong (a traceback whole, up to its last line), the first ``limit``."""
    found: list[str] = []
    in_traceback = False
    for line in lines:
        if in_traceback:
            found.append(line)
            in_traceback = line[:1].isspace() or not line.strip()
        elif LOG_MARKS.search(line):
            found.append(line)
            in_traceback = line.startswith("Traceback")
        if len(found) >= limit:
            break
    return [line[:300] for line in found]


def log_findings(log: Path, limit: int = 20) -> list[str]:
    """``findings`` in a server's log: the logs go with the run's temporary directory, the findings go into the
    results."""
    with contextlib.suppress(OSError):
        return findings(log.read_text(errors="replace").splitlines(), limit)
    return []


ACCESS_LINE = b"127.0.0.1 - - ["  # how every access line of the benchmarks starts (combined format, loopback client)
TRIM_CHUNK = 16 << 20


def trim_access_logs(target: Target) -> tuple[int, int]:
    """Count the lines and bytes in a target's access logs and empty them; returns (lines, bytes).

    Call it when the target is idle and has flushed (nginx: ``flush=1s``; edgeproxy: every 0.5 s). Writers append
    (O_APPEND), so after the truncation their next line goes at the start. From the target's own log (a
    ``-log-stderr`` target's stderr) the lines that are not access lines are kept in ``log_findings`` first."""
    lines = size = 0
    for path in target.access_logs:
        own = path == target.log
        other: list[str] = []
        carry = b""
        with contextlib.suppress(OSError), path.open("rb") as f:
            while chunk := f.read(TRIM_CHUNK):
                lines += chunk.count(b"\n")
                size += len(chunk)
                if own:
                    parts = (carry + chunk).split(b"\n")
                    carry = parts.pop()
                    mine = [p.decode(errors="replace") for p in parts if not p.startswith(ACCESS_LINE)]
                    lines -= len(mine)  # the server's own lines are not access lines
                    other += mine
            if own and carry and not carry.startswith(ACCESS_LINE):
                other.append(carry.decode(errors="replace"))
            os.truncate(path, 0)
        if own and (found := findings(other)) and len(target.log_findings) < 40:
            target.log_findings += found
    return lines, size


def remove_store(target: Target) -> None:
    """Delete a stopped target's shared store (tmpfs: its pages are memory until the files go)."""
    if target.store is not None:
        shutil.rmtree(target.store, ignore_errors=True)


# ---- purges ----------------------------------------------------------------------------------------

Burst = Callable[[int], dict[str, object]]  # purge number -> control request fields


@dataclass
class PurgeLog:
    latencies_ms: list[float] = field(default_factory=list)
    purged: int = 0
    errors: list[str] = field(default_factory=list)
    cpus: list[int] = field(default_factory=list)  # the CPUs the purging thread was allowed to run on


class Purger(threading.Thread):
    """One purge every ``interval`` on one control connection until ``halt``; records each round trip.

    With ``cpus`` the thread pins itself there first (Linux: the affinity of the calling thread only), so its work
    shares the client's core and not the server's, whatever the orchestrator's own affinity."""

    def __init__(self, sock: str, burst: Burst, interval: float, cpus: set[int] | None = None) -> None:
        super().__init__(daemon=True)
        self.sock, self.burst, self.interval, self.cpus = sock, burst, interval, cpus
        self.halt = threading.Event()
        self.log = PurgeLog()

    def run(self) -> None:
        log = self.log
        if self.cpus is not None:
            os.sched_setaffinity(0, self.cpus)
        log.cpus = sorted(os.sched_getaffinity(0))
        try:
            with ControlClient(self.sock, timeout=10) as client:
                tick = time.monotonic()
                while not self.halt.is_set():
                    request = self.burst(len(log.latencies_ms))
                    started = time.perf_counter()
                    reply = client.request(request)
                    log.latencies_ms.append((time.perf_counter() - started) * 1000)
                    if reply["ok"]:
                        log.purged += int(reply.get("purged", 0))
                    else:
                        log.errors.append(str(reply["error"]))
                    tick = max(tick + self.interval, time.monotonic())
                    self.halt.wait(tick - time.monotonic())
        except ControlError as exc:  # the row says so; the wrk run it accompanied still counts as a hit run
            log.errors.append(str(exc))
