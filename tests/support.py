"""Helpers for integration tests: free loopback ports, the proxy and the demo origin as real processes, raw sockets.

Everything listens on 127.0.0.1 on ports picked free at run time; every wait is bounded.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# Both client-side parser backends: protocol, framing and smuggling tests run against each (scripts/test installs
# httptools with the test extras, so a missing one fails rather than skips).
PARSERS = ("h11", "httptools")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 10.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def wait_unix(path: str, timeout: float = 10.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Until a UNIX socket accepts connections (its file exists between bind and listen)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {path}")
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(0.5)
            s.connect(path)
            return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listening on {path} after {timeout}s")


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    e["PYTHONUNBUFFERED"] = "1"
    e.pop("NOTIFY_SOCKET", None)
    return e


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(value)


def to_toml(config: dict[str, Any]) -> str:
    """Enough TOML for test configs: tables of scalars/lists, ``site`` as an array of tables with sub-tables."""
    lines: list[str] = []
    for section, table in config.items():
        if section == "site":
            for site in table:
                lines.append("[[site]]")
                subs = {k: v for k, v in site.items() if isinstance(v, dict)}
                lines += [f"{k} = {toml_value(v)}" for k, v in site.items() if not isinstance(v, dict)]
                for name, sub in subs.items():
                    lines.append(f"[site.{name}]")
                    lines += [f"{k} = {toml_value(v)}" for k, v in sub.items()]
        else:
            lines.append(f"[{section}]")
            lines += [f"{k} = {toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


@dataclass
class Proc:
    proc: subprocess.Popen[bytes]
    port: int
    workdir: Path
    log_path: Path
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


def start_demo_origin(workdir: Path | None = None) -> Proc:
    workdir = workdir or Path(tempfile.mkdtemp(prefix="edgeproxy-origin-"))
    port = free_port()
    log_path = workdir / "origin.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "edgeproxy", "demo-origin", "--listen", f"127.0.0.1:{port}"],
                                env=env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    wait_port(port, proc=proc)
    return Proc(proc, port, workdir, log_path)


def proxy_config(origin_url: str, port: int, workdir: Path, **overrides: Any) -> dict[str, Any]:
    """A test config: one catch-all site; ``overrides`` merge per section (``site`` replaces the sites)."""
    config: dict[str, Any] = {
        "server": {"listen": [f"127.0.0.1:{port}"], "control_socket": str(workdir / "control.sock")},
        "log": {"access": str(workdir / "access.log")},
        "cache": {"path": str(workdir / "cache")},  # a shared store (workers > 1) stays in the test's directory
        "site": [{"hosts": ["*"], "origin": origin_url}],
    }
    for section, values in overrides.items():
        if section == "site":
            config["site"] = values
        else:
            config.setdefault(section, {}).update(values)
    return config


def start_proxy(origin_url: str, workdir: Path | None = None, extra_env: dict[str, str] | None = None,
                port: int | None = None, **overrides: Any) -> Proc:
    workdir = workdir or Path(tempfile.mkdtemp(prefix="edgeproxy-test-"))
    port = port or free_port()
    config = proxy_config(origin_url, port, workdir, **overrides)
    config_path = workdir / "edgeproxy.toml"
    config_path.write_text(to_toml(config))
    log_path = workdir / "proxy.log"
    e = env()
    e.update(extra_env or {})
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "edgeproxy", "serve", "--config", str(config_path)],
                                env=e, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    control = config["server"].get("control_socket")
    try:
        wait_port(port, proc=proc)
        if control:  # with workers the port accepts (backlog) before the control socket is up
            wait_unix(control, proc=proc)
    except Exception:
        proc.kill()
        raise RuntimeError(f"proxy did not start:\n{log_path.read_text(errors='replace')}") from None
    return Proc(proc, port, workdir, log_path, {"config_path": config_path, "config": config,
                                                "control": str(workdir / "control.sock")})


@contextlib.contextmanager
def running_proxy(origin_url: str, **overrides: Any) -> Iterator[Proc]:
    proxy = start_proxy(origin_url, **overrides)
    try:
        yield proxy
    finally:
        proxy.stop()


# ---- raw HTTP over a socket ----

def raw_exchange(port: int, data: bytes, timeout: float = 5.0, read_until_close: bool = True) -> bytes:
    """Send raw bytes, return everything received until the server closes (or ``timeout``)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        return read_all(s, timeout) if read_until_close else s.recv(65536)


def read_all(sock: socket.socket, timeout: float = 5.0) -> bytes:
    chunks = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(deadline - time.monotonic(), 0.01))
        try:
            chunk = sock.recv(65536)
        except (TimeoutError, ConnectionResetError):
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        name = name.lower()
        for k, v in self.headers:
            if k == name:
                return v
        return None

    def header_all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k == name.lower()]


def parse_responses(data: bytes, head_requests: int = 0) -> list[Response]:
    """Parse one or more HTTP/1.1 responses from raw bytes (Content-Length or chunked framing)."""
    import h11

    conn = h11.Connection(h11.CLIENT)
    out: list[Response] = []
    # Feed h11 fake requests so it accepts each response in turn.
    conn.send(h11.Request(method="GET", target="/", headers=[("host", "x")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(data)
    conn.receive_data(b"")
    current: Response | None = None
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError:
            if current is None:
                break  # the connection closed cleanly between responses
            raise
        if isinstance(event, h11.Response):
            current = Response(event.status_code, [(k.decode(), v.decode("latin-1")) for k, v in event.headers], b"")
        elif isinstance(event, h11.Data) and current is not None:
            current.body += event.data
        elif isinstance(event, h11.EndOfMessage) and current is not None:
            out.append(current)
            current = None
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                break
            conn.start_next_cycle()
            conn.send(h11.Request(method="GET", target="/", headers=[("host", "x")]))
            conn.send(h11.EndOfMessage())
        else:
            break
    return out


class HTTPClient:
    """A keep-alive client on one socket, for tests that need to control the connection."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.timeout = timeout

    def request(self, method: str, target: str, headers: dict[str, str] | list[tuple[str, str]] | None = None,
                body: bytes = b"", host: str = "test.local") -> Response:
        import h11

        items = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
        if not any(k.lower() == "host" for k, _ in items):
            items.insert(0, ("host", host))
        if body and not any(k.lower() in ("content-length", "transfer-encoding") for k, _ in items):
            items.append(("content-length", str(len(body))))
        head = f"{method} {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in items) + "\r\n"
        self.sock.sendall(head.encode("latin-1") + body)
        conn = h11.Connection(h11.CLIENT)
        conn.send(h11.Request(method=method, target=target, headers=items))
        if body:
            conn.send(h11.Data(data=body))
        conn.send(h11.EndOfMessage())
        resp: Response | None = None
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                self.sock.settimeout(max(deadline - time.monotonic(), 0.01))
                conn.receive_data(self.sock.recv(65536))
                continue
            if isinstance(event, h11.Response):
                resp = Response(event.status_code, [(k.decode(), v.decode("latin-1")) for k, v in event.headers],
                                b"")
            elif isinstance(event, h11.Data) and resp is not None:
                resp.body += event.data
            elif isinstance(event, h11.EndOfMessage) and resp is not None:
                return resp
            elif isinstance(event, h11.ConnectionClosed):
                break
        raise TimeoutError(f"no complete response to {method} {target}")

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> HTTPClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
