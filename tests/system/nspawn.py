"""A Debian container booted with systemd-nspawn, systemd as its PID 1, driven through nsenter.

The host of our tests and CI has no systemd as PID 1, so there is no machined to register with and no
``machinectl``: the container is started with ``--register=no --keep-unit``, and commands run inside by
entering every namespace of the container's init (``nsenter -t PID -a``) with a clean environment (the host's
``PIP_*`` and ``PYTHON*`` variables must not leak into what is tested). ``--volatile=overlay`` puts a tmpfs
over the root, so the cached root (``scripts/nspawn-root``) stays as built; ``--private-network`` gives the
container its own loopback, so the shipped config's port 80 and 9145 clash with nothing on the host.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

CLEAN_ENV = ("env", "-i", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8")
BOOT_TIMEOUT = 60.0
HALT_TIMEOUT = 30.0


class ContainerError(RuntimeError):
    """The container did not boot; the message carries its console output."""


def missing_tools() -> list[str]:
    return [tool for tool in ("systemd-nspawn", "nsenter") if shutil.which(tool) is None]


class Container:
    def __init__(self, root: Path, name: str, binds: Sequence[tuple[Path, str]], console: Path) -> None:
        self.root, self.name, self.binds, self.console = root, name, binds, console
        self.proc: subprocess.Popen[bytes] | None = None
        self.init_pid = 0

    def boot(self) -> None:
        cmd = ["systemd-nspawn", "--boot", "--register=no", "--keep-unit", "--volatile=overlay",
               "--private-network", "--console=passive", f"--machine={self.name}", "-D", str(self.root),
               *(f"--bind-ro={src}:{dst}" for src, dst in self.binds)]
        with open(self.console, "wb") as out:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        deadline = time.monotonic() + BOOT_TIMEOUT
        while not self.init_pid:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise ContainerError(f"systemd-nspawn did not boot {self.root}:\n{self.console_text()}")
            self.init_pid = _container_init(self.proc.pid)
            time.sleep(0.05)
        # Until systemd answers on its private socket, systemctl fails ("offline", or no bus at all).
        state = ""
        while state not in ("running", "degraded"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise ContainerError(f"the container's systemd is {state!r}:\n{self.console_text()}")
            time.sleep(0.1)
            state = self.run("systemctl is-system-running --wait", check=False, timeout=BOOT_TIMEOUT).stdout.strip()

    def run(self, script: str, *, user: str | None = None, check: bool = True,
            timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """``bash -c script`` inside the container, as root or as ``user``."""
        argv = ["nsenter", "-t", str(self.init_pid), "-a", *CLEAN_ENV]
        if user is not None:
            argv += ["runuser", "-u", user, "--"]
        proc = subprocess.run([*argv, "bash", "-c", script], capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"in the container: {script}\nexit {proc.returncode}\n{proc.stdout}{proc.stderr}")
        return proc

    def halt(self) -> None:
        """SIGTERM makes systemd-nspawn ask the container's systemd for an orderly halt; then it exits."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(HALT_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def console_text(self) -> str:
        return self.console.read_text(errors="replace")[-4000:] if self.console.exists() else ""


def _container_init(nspawn_pid: int) -> int:
    """The host pid of the container's PID 1: the descendant of systemd-nspawn whose pid in its own namespace
    is 1 (``NSpid:`` in /proc/PID/status lists the pid in each nested namespace)."""
    for pid in _descendants(nspawn_pid):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        nspid = next((line.split()[1:] for line in status.splitlines() if line.startswith("NSpid:")), [])
        # Before it execs systemd, nspawn's inner child is already pid 1 of the new namespace: wait for systemd.
        if len(nspid) > 1 and nspid[-1] == "1" and status.startswith("Name:\tsystemd\n"):
            return pid
    return 0


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found
