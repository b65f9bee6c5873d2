"""sd_notify, watchdog and socket activation against real sockets and a real child process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from edgeproxy import systemd


@pytest.fixture
def path_listener(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify.sock"
    sock.bind(str(path))
    sock.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield sock
    sock.close()


@pytest.fixture
def abstract_listener(monkeypatch: pytest.MonkeyPatch):
    name = f"edgeproxy-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    sock.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    yield sock
    sock.close()


def _fields(sock: socket.socket) -> list[str]:
    return sock.recv(4096).decode().split("\n")


@pytest.mark.parametrize("listener", ["path_listener", "abstract_listener"])
def test_notify_sends_fields_in_order_one_datagram_per_call(listener: str, request: pytest.FixtureRequest):
    sock = request.getfixturevalue(listener)
    assert systemd.notify("READY=1", "STATUS=serving on 0.0.0.0:80", f"MAINPID={os.getpid()}")
    assert systemd.notify("WATCHDOG=1")
    assert systemd.notify("STOPPING=1")
    assert _fields(sock) == ["READY=1", "STATUS=serving on 0.0.0.0:80", f"MAINPID={os.getpid()}"]
    assert _fields(sock) == ["WATCHDOG=1"]
    assert _fields(sock) == ["STOPPING=1"]


def test_reloading_sends_monotonic_usec_in_the_same_datagram(path_listener: socket.socket):
    before = systemd.monotonic_usec()
    assert systemd.reloading("reloading config")
    after = systemd.monotonic_usec()
    reloading, stamp, status = _fields(path_listener)
    assert reloading == "RELOADING=1"
    assert stamp.startswith("MONOTONIC_USEC=")
    assert before <= int(stamp.removeprefix("MONOTONIC_USEC=")) <= after
    assert status == "STATUS=reloading config"


def test_notify_is_a_noop_without_socket(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert systemd.notify("READY=1") is False
    assert systemd.reloading() is False


def test_notify_reports_failure_instead_of_raising(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens.sock"))
    assert systemd.notify("READY=1") is False


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        ("30000000", None, 15.0),
        ("30000000", "self", 15.0),
        ("1000", "self", 0.0005),
        ("30000000", "other", None),
        (None, None, None),
        ("0", None, None),
        ("-5", None, None),
        ("30s", None, None),
    ],
)
def test_watchdog_interval(usec: str | None, pid: str | None, expected: float | None, monkeypatch):
    for name, value in (("WATCHDOG_USEC", usec), ("WATCHDOG_PID", pid)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            value = {"self": str(os.getpid()), "other": str(os.getpid() + 1)}.get(value, value)
            monkeypatch.setenv(name, value)
    assert systemd.watchdog_interval() == expected


# Runs in a child: moves the inherited sockets onto fds 3.., sets LISTEN_* for itself, then reports
# what listen_fds() returned and proves the TCP listener is live by connecting to it.
CHILD = textwrap.dedent(
    """
    import fcntl, json, os, socket, sys
    from edgeproxy import systemd

    src = [int(fd) for fd in sys.argv[1].split(",")]
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in src]
    for fd in src:
        os.close(fd)
    for i, fd in enumerate(high):
        os.dup2(fd, 3 + i)
        os.close(fd)
    os.environ["LISTEN_PID"] = sys.argv[2] or str(os.getpid())
    os.environ["LISTEN_FDS"] = str(len(src))
    if sys.argv[3] != "-":
        os.environ["LISTEN_FDNAMES"] = sys.argv[3]
    got = systemd.listen_fds()
    out = {
        "sockets": [
            [name, s.fileno(), s.family.name, s.type.name, os.get_inheritable(s.fileno())]
            for name, s in got
        ],
        "env": [v for v in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES") if v in os.environ],
    }
    for _, s in got:
        if s.family == socket.AF_INET and s.type == socket.SOCK_STREAM:
            with socket.create_connection(s.getsockname(), timeout=5):
                conn, _ = s.accept()
                conn.close()
            out["accepted"] = True
    print(json.dumps(out))
    """
)


def _run_child(socks: list[socket.socket], listen_pid: str, names: str) -> dict:
    fds = [s.fileno() for s in socks]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, ",".join(map(str, fds)), listen_pid, names],
        pass_fds=fds,
        env=env,
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture
def three_sockets(tmp_path: Path):
    tcp = socket.create_server(("127.0.0.1", 0))
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix.bind(str(tmp_path / "control.sock"))
    unix.listen()
    yield [tcp, udp, unix]
    for s in (tcp, udp, unix):
        s.close()


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        ("http:dns:control", ["http", "dns", "control"]),
        ("http", ["http", "unknown", "unknown"]),
        ("-", ["unknown", "unknown", "unknown"]),
    ],
)
def test_listen_fds_takes_sockets_from_fd_3(three_sockets, names: str, expected: list[str]):
    out = _run_child(three_sockets, "", names)
    assert out["sockets"] == [
        [expected[0], 3, "AF_INET", "SOCK_STREAM", False],
        [expected[1], 4, "AF_INET", "SOCK_DGRAM", False],
        [expected[2], 5, "AF_UNIX", "SOCK_STREAM", False],
    ]
    assert out["env"] == []
    assert out["accepted"] is True


def test_listen_fds_ignores_sockets_meant_for_another_process(three_sockets):
    out = _run_child(three_sockets, "1", "http:dns:control")
    assert out == {"sockets": [], "env": []}


def test_listen_fds_without_activation(monkeypatch: pytest.MonkeyPatch):
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        monkeypatch.delenv(name, raising=False)
    assert systemd.listen_fds() == []
