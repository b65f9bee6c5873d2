"""A real ``redis-server`` for the fleet's tests: on a free loopback port, in a directory of its own, with an
append-only file (so a killed and restarted server keeps the journal, as a production one would), stopped after.

``scripts/test`` installs Debian's redis-server; a machine without it fails these tests rather than skipping them.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path

import redis

from tests.support import free_port, wait_port

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


class RedisServer:
    def __init__(self, workdir: Path, *, appendonly: bool = True, password: str | None = None) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.appendonly = appendonly
        self.password = password
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        args = [REDIS_SERVER, "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.workdir),
                "--save", "", "--appendonly", "yes" if self.appendonly else "no", "--protected-mode", "yes",
                "--logfile", str(self.workdir / "redis.log"), "--daemonize", "no",
                *(["--requirepass", self.password] if self.password else [])]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        wait_port(self.port, proc=self.proc)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # the AOF is loaded before it answers PING with PONG
            try:
                if self.client().ping():
                    return self
            except redis.exceptions.BusyLoadingError:
                time.sleep(0.05)
        raise TimeoutError("redis-server did not load its data")

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password, decode_responses=True,
                           socket_timeout=5)

    def kill(self) -> None:
        """SIGKILL, as a crash: what was acknowledged is in the append-only file already."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
