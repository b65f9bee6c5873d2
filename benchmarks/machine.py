"""What a benchmark ran on: the machine, the versions of everything measured, and the code, for a results file's
``meta``; and the one line that every table made from a results file prints (``machine_line``).

Rules kept here:
- A figure is only read with its machine: every results writer (``run.py``, ``fleet.py``) puts ``meta(...)`` in its
  file, and every table ``report.py`` generates starts with ``machine_line(meta)``. A field an older file lacks is
  printed as "not recorded", never guessed.
- The Python side is asked of the interpreter the servers run, from the directory and PYTHONPATH ``procs.Fleet``
  gives them (the shared virtualenv may hold another checkout's ``edgeproxy``): its packages' versions and whether
  the compiled head scanner (``edgeproxy.http.headscan.COMPILED``) is what it imports. Without the compiled scanner
  every fast-lane figure is the Python twin's.
- No processes are left behind: each probe is one short ``subprocess.run`` with a timeout.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from benchmarks.procs import ALL_CPUS, CLIENT_CPUS, PYTHON, ROOT, SERVER_CPUS

PACKAGES = ("uvloop", "h11", "httptools", "lmdb")  # what the servers import; "redis" too where a fleet runs
RUNTIME_PROBE = """import importlib.metadata as m, json, sys
import edgeproxy
from edgeproxy.http import headscan
def version(name):
    try:
        return m.version(name)
    except m.PackageNotFoundError:
        return None
print(json.dumps({"edgeproxy_from": edgeproxy.__file__, "headscan_compiled": headscan.COMPILED,
                  "packages": {name: version(name) for name in sys.argv[1:]}}))
"""


def version_of(argv: list[str]) -> str:
    """The first line a tool prints for its version; "unknown" when it cannot be run."""
    with contextlib.suppress(OSError, subprocess.SubprocessError, IndexError):
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
        return (done.stdout + done.stderr).strip().splitlines()[0]
    return "unknown"


def uncommitted() -> dict[str, object]:
    """What of the product the run used that HEAD does not have: changed and new files under edgeproxy/, and a
    digest of their contents, so a result measured on a work in progress says which one."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=all", "--",
                               "edgeproxy"], capture_output=True, text=True, timeout=10, check=True)
        paths = sorted(line[3:] for line in done.stdout.splitlines() if line.strip())
        digest = hashlib.sha256()
        for path in paths:
            digest.update(path.encode() + b"\0")
            with contextlib.suppress(OSError):
                digest.update((ROOT / path).read_bytes())
        return {"files": paths, "sha256": digest.hexdigest()[:16]} if paths else {}
    return {"unknown": True}


def server_runtime(packages: tuple[str, ...] = PACKAGES) -> dict[str, Any]:
    """Where the servers' ``edgeproxy`` comes from, whether its head scanner is the compiled one, and the versions
    of ``packages``, as the servers' interpreter sees them (``None``: not installed)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    with contextlib.suppress(OSError, subprocess.SubprocessError, ValueError):
        done = subprocess.run([PYTHON, "-c", RUNTIME_PROBE, *packages], capture_output=True, text=True, timeout=30,
                              check=True, cwd=ROOT, env=env)
        return dict(json.loads(done.stdout))
    return {"edgeproxy_from": "unknown", "headscan_compiled": None, "packages": dict.fromkeys(packages)}


def code_state() -> dict[str, object]:
    """HEAD and the uncommitted edgeproxy/ files (with their digest) as they are now."""
    return {"git": version_of(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"]), "uncommitted": uncommitted()}


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def meta(name: str, argv: list[str], peers: tuple[str, ...] = ("nginx", "wrk"), redis: bool = False) -> dict[str, Any]:
    """The ``meta`` of a results file: the run, the machine, the code and the version of every program measured
    (``peers``: of nginx, wrk and redis-server, those the run starts; ``redis``: the fleet's, with redis-py)."""
    runtime = server_runtime(PACKAGES + (("redis",) if redis else ()))
    out: dict[str, Any] = {
        "name": name, "argv": argv, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **code_state(), "edgeproxy_from": runtime["edgeproxy_from"],
        "headscan_compiled": runtime["headscan_compiled"], "python": platform.python_version(),
        "packages": runtime["packages"], "cpu": cpu_model(), "cpus": os.cpu_count(), "kernel": platform.release(),
        # Other work on the machine shows up here first: compare with loadavg_end.
        "loadavg_start": os.getloadavg(),
        "pinning": {"servers": SERVER_CPUS, "wrk_and_origin": CLIENT_CPUS, "workers-2 servers": ALL_CPUS},
    }
    tools = {"nginx": ["nginx", "-v"], "wrk": ["wrk", "--version"], "redis-server": ["redis-server", "--version"]}
    for peer in (*peers, *(("redis-server",) if redis else ())):
        argv0 = shutil.which(tools[peer][0], path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin"]))
        out[peer] = version_of([argv0 or tools[peer][0], *tools[peer][1:]])
    return out


# ---- the machine line ------------------------------------------------------------------------------

TOOL_VERSION = re.compile(r"(?:nginx/|debian/|v=)?(\d+(?:\.\d+)+)")


def _tool(meta: dict[str, Any], key: str) -> str:
    text = meta.get(key)
    if not text or text == "unknown":
        return f"{key} not recorded" if not text else f"{key} unknown"
    found = TOOL_VERSION.search(str(text))
    return f"{key} {found.group(1) if found else text}"


def machine_line(meta: dict[str, Any]) -> str:
    """One line: CPU, kernel, Python and its packages, the peers, the code, the compiled scanner."""
    missing = "not recorded"
    packages = meta.get("packages")
    py = f"Python {meta.get('python', missing)}"
    if packages:
        py += " (" + ", ".join(f"{k} {v or 'absent'}" for k, v in packages.items()) + ")"
    else:
        py += " (packages not recorded)"
    scan = {True: "compiled", False: "**Python twin**", None: missing}[meta.get("headscan_compiled")]
    code = meta.get("git", missing) + (" + uncommitted" if meta.get("uncommitted") else "")
    peers = [_tool(meta, k) for k in ("nginx", "wrk", "redis-server") if k in meta or k != "redis-server"]
    return (f"{meta.get('cpu', 'CPU ' + missing)}, {meta.get('cpus', '?')} CPUs, kernel "
            f"{meta.get('kernel', missing)}; {py}; {', '.join(peers)}; edgeproxy {code}, head scan {scan}")
