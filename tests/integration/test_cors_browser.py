"""CORS through the edge, judged by a real headless Chromium (category: cors, marker: browser).

A page on one loopback port calls ``fetch()`` on the edge at another port (ports differ, so origins differ).
Every URL is first stored by a raw request carrying ANOTHER Origin, so the browser is always answered from a warm
cache: a copy made for someone else must never decide what this page may read. Both modes:
- ``origin``: the scripted origin does CORS itself, echoing allowed Origins into ACAO WITHOUT ``Vary: Origin``
  (the common bug); the edge must still key its copies per Origin, and forwards preflights.
- ``edge``: the site's ``[site.cors]`` policy answers (exact page origin, credentials, a custom header, PUT);
  preflights never reach the origin, and the origin's own CORS fields are dropped.
Checked: a simple GET, a preflighted PUT with a custom header, a credentialed fetch, and a page on a refused
origin (the fetch must fail with the CORS error for a missing ACAO, not a mismatched one).
``cache: 'no-store'`` keeps Chromium's HTTP cache (shared by the two same-site ports) out of the way; it also makes
Chromium send ``Cache-Control: no-cache``, which the edge would honour by forwarding, so the sites set
``ignore_request_cache_control`` (as CDNs do) to keep answering from the warm copy. Each test uses its own URL, so
Chromium's preflight cache is never reused across tests. One browser for the module.
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from tests.browser import Browser
from tests.scriptorigin import Reply, ScriptOrigin, Seen
from tests.support import HTTPClient, Proc, start_proxy

pytestmark = pytest.mark.browser

WARM = "https://warm.example"  # the other origin whose request stores each URL first


class _Page(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"<!doctype html><title>page</title>page"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
        pass


class PageServer:
    """A page on its own loopback port: its origin is ``http://127.0.0.1:<port>``."""

    def __init__(self) -> None:
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Page)
        self.port = self.server.server_address[1]
        self.origin = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def pages() -> Iterator[tuple[PageServer, PageServer]]:
    """(allowed page, refused page)."""
    allowed, refused = PageServer(), PageServer()
    yield allowed, refused
    allowed.close()
    refused.close()


def _cors_origin(allowed: frozenset[str]) -> Any:
    """An origin doing CORS itself: echoes allowed Origins, with credentials, and forgets ``Vary: Origin``."""
    def answer(seen: Seen) -> Reply:
        origin = seen.header("origin")
        ok = origin in allowed
        if seen.method == "OPTIONS" and seen.header("access-control-request-method"):
            if not ok:
                return Reply(403, [("content-length", "0")], framing="none")
            return Reply(204, [("access-control-allow-origin", origin), ("access-control-allow-credentials", "true"),
                               ("access-control-allow-methods", "GET, PUT"),
                               ("access-control-allow-headers", seen.header("access-control-request-headers") or ""),
                               ("vary", "Origin")], framing="none")
        cors = [("access-control-allow-origin", origin), ("access-control-allow-credentials", "true"),
                ("access-control-expose-headers", "cache-status")] if ok else []
        return Reply(headers=[("cache-control", "public, max-age=300"), ("content-type", "text/plain"), *cors],
                     body=f"{seen.method} {seen.target}".encode())
    return answer


@pytest.fixture(scope="module")
def origin(pages: tuple[PageServer, PageServer]) -> Iterator[ScriptOrigin]:
    script = _cors_origin(frozenset({pages[0].origin, WARM}))
    with ScriptOrigin() as o:
        o.routes.update({path: script for path in ("/simple", "/put", "/creds", "/refused", "/refused-put")})
        yield o


def _edge_policy(page: PageServer) -> dict[str, Any]:
    return {"mode": "edge", "allow_origins": [page.origin, WARM], "allow_methods": ["GET", "HEAD", "PUT"],
            "allow_headers": ["x-custom", "content-type"], "expose_headers": ["cache-status"],
            "allow_credentials": True, "max_age": 600}


@pytest.fixture(scope="module", params=["origin", "edge"])
def scenario(request: pytest.FixtureRequest, origin: ScriptOrigin, pages: tuple[PageServer, PageServer],
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Proc]]:
    mode = request.param
    site: dict[str, Any] = {"hosts": ["*"], "origin": origin.url, "ignore_request_cache_control": True}
    if mode == "edge":
        site["cors"] = _edge_policy(pages[0])
    proxy = start_proxy(origin.url, tmp_path_factory.mktemp(f"cors-{mode}"), site=[site])
    yield mode, proxy
    proxy.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with Browser() as b:
        yield b


def warm(proxy: Proc, target: str, origin: str = WARM) -> None:
    """Store ``target`` through a raw request from another origin; it must carry that origin's ACAO."""
    with HTTPClient(proxy.port) as c:
        resp = c.request("GET", target, [("origin", origin)], host=f"127.0.0.1:{proxy.port}")
    assert resp.status == 200 and resp.header_all("access-control-allow-origin") == [origin], resp
    assert "stored" in (resp.header("cache-status") or ""), resp


def options_seen(origin: ScriptOrigin, target: str) -> int:
    return sum(1 for s in origin.requests if s.method == "OPTIONS" and s.target == target)


def test_simple_get(browser: Browser, scenario: tuple[str, Proc], pages: tuple[PageServer, PageServer]) -> None:
    mode, proxy = scenario
    target = f"/simple?mode={mode}"
    warm(proxy, target)
    browser.navigate(pages[0].origin + "/")
    for i in range(2):  # origin mode stores a copy for this page's origin first; edge mode shares the warm one
        got = browser.fetch(proxy.url + target)
        assert got.get("ok") and got["body"] == f"GET {target}", got
        cache_status = got["headers"]["cache-status"]  # readable: exposed by the origin or the policy
        assert ("hit" in cache_status) == (mode == "edge" or i == 1), got


def test_preflighted_put(browser: Browser, scenario: tuple[str, Proc], origin: ScriptOrigin,
                         pages: tuple[PageServer, PageServer]) -> None:
    mode, proxy = scenario
    target = f"/put?mode={mode}"
    warm(proxy, target)
    browser.navigate(pages[0].origin + "/")
    got = browser.fetch(proxy.url + target, method="PUT", headers={"X-Custom": "1"}, body="data")
    assert got.get("ok") and got["body"] == f"PUT {target}", got
    assert options_seen(origin, target) == (0 if mode == "edge" else 1)  # edge mode answers preflights itself


def test_credentialed_fetch(browser: Browser, scenario: tuple[str, Proc], pages: tuple[PageServer, PageServer]) -> None:
    mode, proxy = scenario
    target = f"/creds?mode={mode}"
    warm(proxy, target)
    browser.navigate(pages[0].origin + "/")
    got = browser.fetch(proxy.url + target, credentials="include")
    assert got.get("ok") and got["body"] == f"GET {target}", got
    assert ("hit" in got["headers"]["cache-status"]) == (mode == "edge"), got


def test_refused_origin(browser: Browser, scenario: tuple[str, Proc], origin: ScriptOrigin,
                        pages: tuple[PageServer, PageServer]) -> None:
    mode, proxy = scenario
    allowed, refused = pages
    target, put_target = f"/refused?mode={mode}", f"/refused-put?mode={mode}"
    warm(proxy, target, allowed.origin)  # stored for the allowed page: must not leak to the refused one
    warm(proxy, put_target, allowed.origin)
    browser.navigate(refused.origin + "/")
    got = browser.fetch(proxy.url + target)
    # A copy made for the allowed page would fail differently (AllowOriginMismatch).
    assert "error" in got and got["cors_error"] == "MissingAllowOriginHeader", got
    got = browser.fetch(proxy.url + put_target, method="PUT", headers={"X-Custom": "1"}, body="data")
    # Chromium checks the preflight's ACAO before its status (the 403).
    assert "error" in got and got["cors_error"] == "PreflightMissingAllowOriginHeader", got
    assert not [s for s in origin.requests if s.method == "PUT" and s.target == put_target]
