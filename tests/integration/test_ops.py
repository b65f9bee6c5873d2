"""Operations, single process (``workers = 1``): graceful stop, reload, a refused reload, sd_notify.

Category: ops. Real proxy processes in front of the demo origin or scripted origins on free loopback ports;
every wait is bounded. The sd_notify sequence also runs with ``workers = 2`` (the supervisor speaks to systemd).
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edgeproxy.control.client import ControlClient, ControlError
from tests.scriptorigin import Reply, ScriptOrigin
from tests.support import (
    HTTPClient,
    Proc,
    Response,
    env,
    free_port,
    proxy_config,
    start_proxy,
    to_toml,
    wait_port,
    wait_unix,
)

SLOW_REQUESTS = 20
SLOW_MS = 1500


def control(proxy: Proc, fields: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    with ControlClient(proxy.extra["control"], timeout=timeout) as client:
        return client.request(fields)


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except (OSError, ControlError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def wait_ready(proxy: Proc) -> None:
    """The control socket answers: with workers, that is after every worker listens."""
    wait_until(lambda: control(proxy, {"cmd": "ping"})["ok"], what="control socket")


def refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except ConnectionRefusedError:
        return True


def rewrite_config(proxy: Proc, origin_url: str, **overrides: Any) -> None:
    config = proxy_config(origin_url, proxy.port, proxy.workdir, **overrides)
    proxy.extra["config_path"].write_text(to_toml(config))


@pytest.fixture
def origins() -> Iterator[tuple[ScriptOrigin, ScriptOrigin]]:
    """Two scripted origins that answer every path with their own name, cacheable for 10 minutes."""
    pair = (ScriptOrigin(), ScriptOrigin())
    for name, origin in zip("AB", pair, strict=True):
        reply = Reply(headers=[("cache-control", "max-age=600"), ("content-type", "text/plain")],
                      body=name.encode())
        origin.routes.update({p: reply for p in ("/cached", "/after", "/still")})
    yield pair
    for origin in pair:
        origin.close()


# ---- graceful stop ----

def test_sigterm_drains_in_flight_requests_then_exits_0(proxy_factory: Callable[..., Proc], demo_origin: Proc) -> None:
    proxy = proxy_factory(demo_origin.url)
    results: list[Response | BaseException] = []

    def fetch(i: int) -> None:
        try:
            with HTTPClient(proxy.port, timeout=15) as client:
                results.append(client.request("GET", f"/slow?ms={SLOW_MS}&i={i}"))
        except BaseException as exc:  # the assertion below reports it
            results.append(exc)

    threads = [threading.Thread(target=fetch, args=(i,)) for i in range(SLOW_REQUESTS)]
    for t in threads:
        t.start()
    wait_until(lambda: control(proxy, {"cmd": "stats"})["open_connections"] >= SLOW_REQUESTS,
               what="20 open connections")
    proxy.signal(signal.SIGTERM)
    wait_until(lambda: refused(proxy.port), timeout=SLOW_MS / 1000, what="new connections refused")
    for t in threads:
        t.join(15)
    assert [r.status if isinstance(r, Response) else repr(r) for r in results] == [200] * SLOW_REQUESTS
    assert proxy.proc.wait(10) == 0, proxy.log()


# ---- reload ----

def test_sighup_switches_origin_keeps_cache_and_open_connection(
        proxy_factory: Callable[..., Proc], origins: tuple[ScriptOrigin, ScriptOrigin]) -> None:
    a, b = origins
    proxy = proxy_factory(a.url)
    with HTTPClient(proxy.port) as client:
        first = client.request("GET", "/cached")
        assert (first.status, first.body) == (200, b"A")
        rewrite_config(proxy, b.url)
        proxy.signal(signal.SIGHUP)
        wait_until(lambda: "reloaded" in proxy.log(), what="the reload log line")
        cached = client.request("GET", "/cached")  # the same keep-alive connection, after the reload
        assert cached.body == b"A" and "; hit" in (cached.header("cache-status") or "")
        after = client.request("GET", "/after")
    assert (after.status, after.body) == (200, b"B")
    assert "fwd=uri-miss" in (after.header("cache-status") or "")
    assert len(b.seen("/after")) == 1 and not a.seen("/after") and not b.seen("/cached")


@pytest.mark.parametrize(("overrides", "key"), [
    ({"cache": {"sise": "1MiB"}}, "cache.sise"),
    ({"site": [{"origin": "ftp://127.0.0.1:1"}]}, "site[0].origin"),
    ({"server": {"drain_timeout": "soon"}}, "server.drain_timeout"),
])
def test_bad_config_on_reload_keeps_old_config(proxy_factory: Callable[..., Proc],
                                               origins: tuple[ScriptOrigin, ScriptOrigin],
                                               overrides: dict[str, Any], key: str) -> None:
    a, b = origins
    proxy = proxy_factory(a.url)
    good = proxy.extra["config_path"].read_text()
    rewrite_config(proxy, b.url, **overrides)
    reply = control(proxy, {"cmd": "reload"})
    assert not reply["ok"] and key in reply["error"], reply
    proxy.signal(signal.SIGHUP)
    wait_until(lambda: proxy.log().count("reload refused") >= 2, what="the refusal log line")
    refusal = [line for line in proxy.log().splitlines() if "reload refused" in line][-1]
    assert "ERROR" in refusal and key in refusal
    with HTTPClient(proxy.port) as client:
        assert client.request("GET", "/still").body == b"A"
    assert not b.seen("/still")
    proxy.extra["config_path"].write_text(good)
    assert control(proxy, {"cmd": "reload"})["reloaded"] is True


# ---- sd_notify ----

@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(0.2)
    yield path, sock
    sock.close()


def receive(sock: socket.socket, until: str, timeout: float = 15.0) -> list[dict[str, str]]:
    """Datagrams as dicts, STATUS-only ones left out, up to and including the first carrying ``until``."""
    messages: list[dict[str, str]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            data = sock.recv(4096)
        except TimeoutError:
            continue
        fields = dict(line.split("=", 1) for line in data.decode().splitlines())
        if set(fields) - {"STATUS"}:
            messages.append(fields)
            if until in fields:
                return messages
    raise AssertionError(f"no {until} within {timeout}s; got {messages}")


@pytest.mark.parametrize("workers", [1, 2])
def test_sd_notify_sequence(tmp_path: Path, demo_origin: Proc, notify_socket: tuple[str, socket.socket],
                            workers: int) -> None:
    path, sock = notify_socket
    (tmp_path / "proxy").mkdir()
    proxy = start_proxy(demo_origin.url, tmp_path / "proxy", extra_env={"NOTIFY_SOCKET": path},
                        server={"workers": workers})
    try:
        ready = receive(sock, "READY")
        assert [set(m) - {"STATUS"} for m in ready] == [{"READY"}]
        with HTTPClient(proxy.port) as client:  # READY=1 came after the listeners: they answer now
            assert client.request("GET", "/bytes/10").status == 200
        assert control(proxy, {"cmd": "reload"})["reloaded"] is True
        reloading = receive(sock, "READY")
        assert reloading[0]["RELOADING"] == "1" and int(reloading[0]["MONOTONIC_USEC"]) > 0
        assert [set(m) - {"STATUS"} for m in reloading] == [{"RELOADING", "MONOTONIC_USEC"}, {"READY"}]
        proxy.signal(signal.SIGTERM)
        assert [set(m) - {"STATUS"} for m in receive(sock, "STOPPING")] == [{"STOPPING"}]
        assert proxy.proc.wait(15) == 0, proxy.log()
    finally:
        proxy.stop()


# ---- socket activation ----

# What systemd does for a .socket unit: the listening socket at fd 3, LISTEN_PID naming the process that execs.
ACTIVATE = """
import os, socket, sys
sock = socket.create_server(("127.0.0.1", int(sys.argv[1])))
if sock.fileno() != 3:
    os.dup2(sock.fileno(), 3)
os.set_inheritable(3, True)
os.environ.update(LISTEN_FDS="1", LISTEN_FDNAMES="http", LISTEN_PID=str(os.getpid()))
os.execv(sys.executable, [sys.executable, *sys.argv[2:]])
"""


@pytest.mark.parametrize("workers", [1, 2])
def test_socket_activation_serves_the_passed_socket(tmp_path: Path, demo_origin: Proc, workers: int) -> None:
    activated, configured = free_port(), free_port()
    config = proxy_config(demo_origin.url, configured, tmp_path, server={"workers": workers})
    (tmp_path / "edgeproxy.toml").write_text(to_toml(config))
    with open(tmp_path / "proxy.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-c", ACTIVATE, str(activated), "-m", "edgeproxy", "serve",
                                 "--config", str(tmp_path / "edgeproxy.toml")],
                                env=env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    proxy = Proc(proc, activated, tmp_path, tmp_path / "proxy.log", {"control": str(tmp_path / "control.sock")})
    try:
        wait_ready(proxy)
        with HTTPClient(activated) as client:
            assert client.request("GET", "/bytes/10").status == 200
        assert refused(configured)  # the [server] listen address is not bound under activation
    finally:
        assert proxy.stop() == 0, proxy.log()


def test_two_instances_from_flags_with_their_own_control_sockets(tmp_path: Path, demo_origin: Proc) -> None:
    """``serve --control PATH`` beside --listen and --origin: two quick instances, no config file, no clash."""
    procs = []
    try:
        for n in range(2):
            port, sock = free_port(), str(tmp_path / f"c{n}.sock")
            proc = subprocess.Popen(
                [sys.executable, "-m", "edgeproxy", "serve", "--listen", f"127.0.0.1:{port}",
                 "--origin", demo_origin.url, "--control", sock],
                env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            procs.append(proc)
            wait_port(port, proc=proc)
            wait_unix(sock, proc=proc)
            client = HTTPClient(port)
            assert client.request("GET", "/bytes/10").status == 200
            client.close()
        for n, proc in enumerate(procs):
            with ControlClient(str(tmp_path / f"c{n}.sock"), timeout=10) as client:
                assert client.request({"cmd": "ping"})["pid"] == proc.pid
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
            proc.wait(15)


def test_open_files_limit_is_raised_to_the_hard_limit_and_a_shortfall_logged(tmp_path: Path, demo_origin: Proc
                                                                               ) -> None:
    port = free_port()
    script = (f"ulimit -Sn 500 && ulimit -Hn 4000 && exec {sys.executable} -m edgeproxy serve "
              f"--listen 127.0.0.1:{port} --origin {demo_origin.url} --control {tmp_path / 'c.sock'}")
    proc = subprocess.Popen(["bash", "-c", script], env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        wait_port(port, proc=proc)
        with open(f"/proc/{proc.pid}/limits") as f:
            limits = next(line for line in f if line.startswith("Max open files")).split()
        assert limits[3:5] == ["4000", "4000"]  # soft raised to hard
    finally:
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=15)[0].decode()
    assert "WARNING edgeproxy: open files limit is 4000, below the 21088 that [server] max_connections" in out
