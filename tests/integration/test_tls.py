"""TLS at both ends: a listener that terminates TLS (ALPN http/1.1, certificates re-read on reload), and an
``https://`` origin verified against its host name with a per-site CA file. Two edges chained: A terminates TLS in
front of the demo origin, B uses A as its https origin."""

from __future__ import annotations

import json
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support import Proc, free_port, parse_responses, read_all, wait_port


def make_cert(directory: Path, name: str, cn: str = "localhost") -> tuple[Path, Path]:
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "2", "-subj", f"/CN={cn}", "-addext", f"subjectAltName=DNS:{cn},IP:127.0.0.1"],
                   check=True, capture_output=True)
    return cert, key


def tls_get(port: int, cafile: Path, path: str = "/bytes/64") -> tuple[str | None, dict, bytes]:
    ctx = ssl.create_default_context(cafile=str(cafile))
    ctx.set_alpn_protocols(["http/1.1"])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost") as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n".encode())
        data = read_all(sock, 5)
        [response] = parse_responses(data)
        return sock.selected_alpn_protocol(), dict(response.headers), response.body


@pytest.fixture
def tls_edge(tmp_path: Path, proxy_factory: Callable[..., Proc], demo_origin: Proc) -> tuple[Proc, int, Path, Path]:
    cert, key = make_cert(tmp_path, "a")
    tls_port = free_port()
    proxy = proxy_factory(demo_origin.url, server={"tls_listen": [f"127.0.0.1:{tls_port}"], "tls_cert": str(cert),
                                                   "tls_key": str(key)})
    wait_port(tls_port)
    return proxy, tls_port, cert, key


def test_tls_listener_serves_and_caches(tls_edge: tuple[Proc, int, Path, Path]) -> None:
    _, port, cert, _ = tls_edge
    alpn, headers, body = tls_get(port, cert)
    assert alpn == "http/1.1" and len(body) == 64
    _, headers, _ = tls_get(port, cert)
    assert headers["cache-status"].startswith("edgeproxy; hit")


def test_https_origin_verified_with_ca_file(tls_edge: tuple[Proc, int, Path, Path], tmp_path: Path,
                                            proxy_factory: Callable[..., Proc]) -> None:
    _, port, cert, _ = tls_edge
    origin_url = f"https://localhost:{port}"
    # A second node needs its own name: with the same one, Via loop detection answers 508 (as it should).
    inner = proxy_factory(origin_url, server={"name": "edge-b"},
                          site=[{"hosts": ["*"], "origin": origin_url, "ca_file": str(cert), "host_header": "origin"}])
    with socket.create_connection(("127.0.0.1", inner.port), timeout=5) as sock:
        sock.sendall(b"GET /headers HTTP/1.1\r\nhost: outer.test\r\nconnection: close\r\n\r\n")
        [response] = parse_responses(read_all(sock, 5))
    assert response.status == 200
    seen = dict(json.loads(response.body)["headers"])
    assert seen["x-forwarded-proto"] == "https" and seen["host"] == f"localhost:{port}"  # A saw B's request
    assert seen["via"] == "1.1 edge-b, 1.1 edgeproxy"
    # Without the CA the certificate can't be verified: 502, never an unverified connection.
    other_cert, _ = make_cert(tmp_path, "other")
    unverified = proxy_factory(origin_url, server={"name": "edge-c"},
                               site=[{"hosts": ["*"], "origin": origin_url, "ca_file": str(other_cert)}])
    with socket.create_connection(("127.0.0.1", unverified.port), timeout=5) as sock:
        sock.sendall(b"GET /bytes/10 HTTP/1.1\r\nhost: outer.test\r\nconnection: close\r\n\r\n")
        [response] = parse_responses(read_all(sock, 5))
    assert response.status == 502 and "connect-error" in (response.header("cache-status") or "")


def test_certificate_reread_on_reload(tls_edge: tuple[Proc, int, Path, Path], tmp_path: Path) -> None:
    proxy, port, cert, key = tls_edge
    new_cert, new_key = make_cert(tmp_path, "b")
    old = tmp_path / "old.pem"
    old.write_bytes(cert.read_bytes())
    cert.write_bytes(new_cert.read_bytes())
    key.write_bytes(new_key.read_bytes())
    proxy.signal(signal.SIGHUP)
    deadline = time.monotonic() + 5
    while True:
        try:
            tls_get(port, new_cert)
            break
        except ssl.SSLError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    with pytest.raises(ssl.SSLError):  # the old certificate is no longer served
        tls_get(port, old)
