"""The Chromium harness against two stdlib servers: a page on one loopback port, an API on another.

The API answers as its query string says (``acao``, ``acac``, ``aceh``, ``preflight``), so each test
states the CORS fields it serves and what the browser must make of them. Under ``/edge/`` the API
answers with ``edgeproxy.cors`` instead, so Chromium judges the policy's real output (preflights,
credentials, exposed headers). One browser per module.
"""

from __future__ import annotations

import http.server
import os
import threading
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest

from edgeproxy.cors import CorsPolicy, is_preflight
from tests.browser import Browser, BrowserUnavailable, JavaScriptError


class Handler(http.server.BaseHTTPRequestHandler):
    server: Server

    def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
        pass

    def _query(self) -> dict[str, str]:
        return {k: v[-1] for k, v in urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query).items()}

    def _answer(self, status: int, fields: dict[str, str], body: bytes = b"") -> None:
        self.server.seen.append((self.command, self.path, dict(self.headers)))
        self.send_response(status)
        for name, value in fields.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _cors(self, q: dict[str, str]) -> dict[str, str]:
        fields = {}
        if "acao" in q:
            fields["Access-Control-Allow-Origin"] = q["acao"].replace("PAGE", self.server.page_origin)
        if "acac" in q:
            fields["Access-Control-Allow-Credentials"] = q["acac"]
        if "aceh" in q:
            fields["Access-Control-Expose-Headers"] = q["aceh"]
        return fields

    def _edge(self, status: int, fields: dict[str, str], body: bytes = b"") -> None:
        """Answer as an edge-mode site would: the policy's fields appended to the response."""
        policy = self.server.policy
        assert policy is not None
        origin = self.headers.get("Origin")
        raw = [(k.lower().encode(), v.encode()) for k, v in self.headers.items()]
        if self.command == "OPTIONS" and is_preflight(b"OPTIONS", raw):
            acrh = self.headers.get("Access-Control-Request-Headers")
            answer = policy.preflight(origin.encode() if origin else None,
                                      self.headers["Access-Control-Request-Method"].encode(),
                                      acrh.encode() if acrh is not None else None)
            self._answer(answer.status, {k.decode(): v.decode() for k, v in answer.headers})
            return
        extra = policy.response_headers(origin.encode() if origin else None)
        self._answer(status, {**fields, **{k.decode(): v.decode() for k, v in extra}}, body)

    def do_GET(self) -> None:
        if self.path.startswith("/edge/"):
            return self._edge(200, {"Content-Type": "text/plain", "X-Exposed": "e", "Age": "3"}, b"edge")
        q = self._query()
        fields = {"Content-Type": "text/html", "X-Secret": "s", "X-Exposed": "e", **self._cors(q)}
        self._answer(200, fields, b"<!doctype html><title>page</title>hello")

    def do_PUT(self) -> None:
        if self.path.startswith("/edge/"):
            return self._edge(200, {"Content-Type": "text/plain"}, b"put")
        self._answer(200, {"Content-Type": "text/plain", **self._cors(self._query())}, b"put")

    def do_OPTIONS(self) -> None:
        if self.path.startswith("/edge/"):
            return self._edge(204, {})
        q = self._query()
        if q.get("preflight") == "allow":
            fields = {**self._cors(q), "Access-Control-Allow-Methods": "PUT",
                      "Access-Control-Allow-Headers": "x-request-id"}
            self._answer(204, fields)
        else:
            self._answer(403, {})


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.page_origin = ""
        self.policy: CorsPolicy | None = None
        self.seen: list[tuple[str, str, dict[str, str]]] = []
        self.origin = f"http://127.0.0.1:{self.server_port}"


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[Server, Server]]:
    page, api = Server(), Server()
    api.page_origin = page.origin
    threads = [threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
               for s in (page, api)]
    for t in threads:
        t.start()
    yield page, api
    for s in (page, api):
        s.shutdown()
        s.server_close()


@pytest.fixture(scope="module")
def browser(servers: tuple[Server, Server]) -> Iterator[Browser]:
    with Browser(timeout=20) as b:
        b.navigate(servers[0].origin + "/")
        yield b


@pytest.fixture
def api(servers: tuple[Server, Server]) -> Server:
    servers[1].seen.clear()
    return servers[1]


def test_allowed_origin_is_readable(browser: Browser, api: Server) -> None:
    result = browser.fetch(api.origin + "/data?acao=PAGE&aceh=x-exposed")
    assert result["ok"] and result["status"] == 200
    assert result["body"].endswith("hello")
    # Only safelisted and exposed headers reach scripts.
    assert result["headers"]["x-exposed"] == "e"
    assert "x-secret" not in result["headers"]
    assert api.seen[0][2]["Origin"] == browser.evaluate("location.origin")


@pytest.mark.parametrize(
    "query, cors_error",
    [
        ("", "MissingAllowOriginHeader"),
        ("acao=PAGE/", "AllowOriginMismatch"),  # trailing slash: byte-exact comparison
        ("acao=http://127.0.0.1:1", "AllowOriginMismatch"),
    ],
)
def test_blocked_response_fails_with_type_error(browser: Browser, api: Server, query: str, cors_error: str) -> None:
    result = browser.fetch(f"{api.origin}/data?{query}")
    assert result["error"] == "TypeError: Failed to fetch"
    assert result["cors_error"] == cors_error
    assert len(api.seen) == 1  # CORS stops reading, not sending
    assert any("blocked by CORS policy" in m["text"] for m in browser.console)


@pytest.mark.parametrize(
    "query, readable",
    [("acao=PAGE", False), ("acao=*&acac=true", False), ("acao=PAGE&acac=true", True)],
)
def test_credentials(browser: Browser, api: Server, query: str, readable: bool) -> None:
    result = browser.fetch(f"{api.origin}/data?{query}", credentials="include")
    assert ("error" not in result) is readable


@pytest.mark.parametrize("preflight, sent", [("allow", True), ("deny", False)])
def test_preflight(browser: Browser, api: Server, preflight: str, sent: bool) -> None:
    url = f"{api.origin}/thing?acao=PAGE&preflight={preflight}"
    result = browser.fetch(url, method="PUT", headers={"x-request-id": "1"}, body="x")
    assert ("error" not in result) is sent
    methods = [m for m, _, _ in api.seen]
    assert methods == (["OPTIONS", "PUT"] if sent else ["OPTIONS"])
    assert api.seen[0][2]["Access-Control-Request-Method"] == "PUT"
    assert api.seen[0][2]["Access-Control-Request-Headers"] == "x-request-id"


def test_evaluate(browser: Browser) -> None:
    assert browser.evaluate("Promise.resolve({a: [1, 2]})") == {"a": [1, 2]}
    with pytest.raises(JavaScriptError, match="boom"):
        browser.evaluate("Promise.reject(new Error('boom'))")


def test_missing_chromium_fails_loudly(tmp_path: Any) -> None:
    with pytest.raises(BrowserUnavailable, match="apt-get install chromium"), \
            Browser(chromium=str(tmp_path / "no-chromium")):
        pass


def test_close_kills_chromium_and_removes_profile() -> None:
    with Browser(timeout=20) as b:
        profile, proc = b.user_data_dir, b.proc
        assert profile is not None and os.path.isdir(profile)
    assert proc is not None and proc.returncode is not None
    assert not os.path.exists(profile)
    assert _live_group_members(proc.pid) == []  # renderers and helpers too


def _live_group_members(pgid: int) -> list[int]:
    """Processes of group ``pgid`` that still run. Zombies don't count: a helper chromium orphaned
    while exiting is PID 1's to reap, and some container inits never do."""
    live = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as f:
                state, _ppid, group = f.read().rsplit(")", 1)[1].split()[:3]
        except (OSError, ValueError, IndexError):
            continue  # not a process, or gone meanwhile
        if int(group) == pgid and state != "Z":
            live.append(int(entry))
    return live


def _edge_policy(page_origin: str, **extra: Any) -> CorsPolicy:
    return CorsPolicy.from_settings(
        mode="edge", allow_origins=["https://app.example.com", page_origin], allow_methods=["GET", "PUT"],
        allow_headers=["x-request-id"], expose_headers=["age", "x-exposed"], **extra,
    )


@pytest.mark.parametrize(
    "name, extra, init, readable, sent",
    [
        ("get", {}, {}, True, ["GET"]),
        ("put", {}, dict(method="PUT", headers={"x-request-id": "1"}, body="x"), True, ["OPTIONS", "PUT"]),
        ("patch", {}, dict(method="PATCH", body="x"), False, ["OPTIONS"]),  # method not allowed
        # "Authorization" is never implied: the preflight is refused and the PUT never sent.
        ("auth", {}, dict(method="PUT", headers={"authorization": "Bearer x"}), False, ["OPTIONS"]),
        ("creds", dict(allow_credentials=True), dict(credentials="include"), True, ["GET"]),
        ("nocreds", {}, dict(credentials="include"), False, ["GET"]),
        ("creds-put", dict(allow_credentials=True), dict(method="PUT", credentials="include"), True,
         ["OPTIONS", "PUT"]),
    ],
)
def test_edge_policy_in_chromium(browser: Browser, api: Server, name: str, extra: dict[str, Any],
                                 init: dict[str, Any], readable: bool, sent: list[str]) -> None:
    api.policy = _edge_policy(api.page_origin, **extra)
    result = browser.fetch(f"{api.origin}/edge/{name}", **init)  # a URL per case: no preflight-cache reuse
    assert ("error" not in result) is readable, result
    assert [m for m, _, _ in api.seen] == sent
    if readable and init.get("method", "GET") == "GET":
        assert result["headers"]["age"] == "3" and result["headers"]["x-exposed"] == "e"


def test_edge_policy_disallowed_origin(browser: Browser, api: Server) -> None:
    api.policy = CorsPolicy.from_settings(mode="edge", allow_origins=["https://app.example.com"])
    result = browser.fetch(f"{api.origin}/edge/other")
    assert result["cors_error"] == "MissingAllowOriginHeader"
