"""A small headless-Chromium driver over the DevTools protocol, for CORS tests a real browser judges.

Rules kept here:
- One dependency: ``websocket-client``. Chromium is Debian's ``/usr/bin/chromium`` (``EDGEPROXY_CHROMIUM``
  overrides); when it is missing, ``Browser()`` raises ``BrowserUnavailable`` with the fix, so tests fail
  loudly instead of skipping.
- Every run gets a fresh ``--user-data-dir`` (no shared HTTP cache, cookies or preflight cache between
  runs) and ``--remote-debugging-port=0``; the chosen port is read from ``DevToolsActivePort``.
- Chromium runs in its own process group; leaving the context manager kills that group (renderers
  included), reaps it and removes the profile directory, on success and on failure alike.
- Every wait has a deadline; nothing blocks longer than ``timeout`` seconds.
- A CORS block is what scripts see: ``fetch`` returns ``{"error": "TypeError: Failed to fetch"}``, plus
  ``cors_error`` (DevTools' reason, e.g. ``MissingAllowOriginHeader``) when Chromium reported one.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from typing import Any

import websocket

CHROMIUM = os.environ.get("EDGEPROXY_CHROMIUM", "/usr/bin/chromium")

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--no-zygote",  # helpers stay children of the browser, which reaps them (no orphans for PID 1)
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--disable-dev-shm-usage",  # small /dev/shm in containers crashes renderers
    "--disable-client-side-phishing-detection",
    "--disable-features=Translate,MediaRouter,OptimizationHints,AutofillServerCommunication",
    "--no-proxy-server",  # the environment's proxy variables must not reroute loopback tests
    "--password-store=basic",
    "--mute-audio",
    "--remote-debugging-port=0",
)

# fetch() run in the page: the readable outcome a script would see, as JSON.
_FETCH_JS = """(async (url, init) => {
  try {
    const r = await fetch(url, init);
    const headers = {};
    r.headers.forEach((v, k) => { headers[k] = v; });
    return {ok: r.ok, status: r.status, headers, body: await r.text()};
  } catch (e) {
    return {error: String(e)};
  }
})(%s, %s)"""


class BrowserUnavailable(RuntimeError):
    """Chromium is not installed or did not start; the message says what to do."""


class JavaScriptError(RuntimeError):
    """An expression given to ``evaluate`` threw (or its promise rejected)."""


class Browser:
    """``with Browser() as b: b.navigate(page); b.fetch(url, ...)``. One page target per browser."""

    def __init__(self, timeout: float = 15.0, chromium: str = CHROMIUM) -> None:
        self.timeout = timeout
        self.chromium = chromium
        self.console: list[dict[str, Any]] = []  # console API calls and log entries: {level, text, url}
        self.network_failures: list[dict[str, Any]] = []  # {url, error, cors_error, blocked}
        self.user_data_dir: str | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self._ws: websocket.WebSocket | None = None
        self._session: str | None = None
        self._next_id = 0
        self._urls: dict[str, str] = {}  # network requestId -> URL
        self._events: list[dict[str, Any]] = []  # unhandled events, for wait_for_event

    def __enter__(self) -> Browser:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start(self) -> None:
        if not (os.path.isfile(self.chromium) and os.access(self.chromium, os.X_OK)):
            raise BrowserUnavailable(
                f"{self.chromium} not found: the CORS browser tests need Debian's chromium "
                "(apt-get install chromium; scripts/test installs it) or EDGEPROXY_CHROMIUM=/path"
            )
        self.user_data_dir = tempfile.mkdtemp(prefix="edgeproxy-chromium-")
        with open(os.path.join(self.user_data_dir, "chromium.log"), "wb") as log:  # chromium keeps its own fd
            self.proc = subprocess.Popen(
                [self.chromium, *FLAGS, f"--user-data-dir={self.user_data_dir}", "about:blank"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
            )
        port, path = self._wait_for_devtools()
        self._ws = websocket.create_connection(f"ws://127.0.0.1:{port}{path}", timeout=self.timeout,
                                               suppress_origin=True, http_no_proxy=["127.0.0.1"])
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        self._session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable")

    def _wait_for_devtools(self) -> tuple[str, str]:
        assert self.proc is not None and self.user_data_dir is not None
        marker = os.path.join(self.user_data_dir, "DevToolsActivePort")
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BrowserUnavailable(f"chromium exited with {self.proc.returncode}: {self._log_tail()}")
            try:
                with open(marker) as f:
                    lines = f.read().split("\n")
                if len(lines) >= 2 and lines[1].startswith("/devtools/"):
                    return lines[0].strip(), lines[1].strip()
            except FileNotFoundError:
                pass
            time.sleep(0.05)
        raise BrowserUnavailable(f"chromium did not open DevTools within {self.timeout}s: {self._log_tail()}")

    def _log_tail(self) -> str:
        try:
            with open(os.path.join(self.user_data_dir or "", "chromium.log"), "rb") as f:
                return f.read()[-2000:].decode(errors="replace")
        except OSError:
            return "(no log)"

    def close(self) -> None:
        """Stop chromium (politely, then by killing its process group), reap it and remove the
        profile; safe to call twice. ``Browser.close`` first lets chromium reap most of its own
        helpers (where PID 1 never reaps orphans, a helper orphaned mid-exit stays a zombie: harmless,
        nothing runs); the group kill then guarantees nothing of this browser keeps running."""
        if self._ws is not None:
            try:
                self.send("Browser.close", timeout=3)
            except Exception:
                pass  # a dead or hung browser: the process-group kill below handles it
            try:
                self._ws.close(timeout=1)
            except Exception:
                pass
            self._ws = None
        if self.proc is not None:
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            if self.proc.poll() is None:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
            try:  # renderers and zygotes in the same group may outlive the browser process by a moment
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if self.user_data_dir is not None:
            shutil.rmtree(self.user_data_dir, ignore_errors=True)
            self.user_data_dir = None

    # -- DevTools protocol --------------------------------------------------------------------------

    def send(self, method: str, timeout: float | None = None, **params: Any) -> dict[str, Any]:
        """One DevTools command; returns its ``result``. Events seen meanwhile are recorded."""
        if self._ws is None:
            raise BrowserUnavailable("browser is not running")
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if self._session is not None and not method.startswith(("Target.", "Browser.")):  # browser-wide
            message["sessionId"] = self._session
        self._ws.send(json.dumps(message))
        reply = self._read_until(lambda m: m.get("id") == message["id"], timeout or self.timeout, method)
        if "error" in reply:
            raise RuntimeError(f"{method} failed: {reply['error']}")
        return reply.get("result", {})

    def _read_until(self, done: Callable[[dict[str, Any]], bool], timeout: float, what: str) -> dict[str, Any]:
        assert self._ws is not None
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no answer to {what} within {timeout}s")
            self._ws.settimeout(left)
            try:
                message = json.loads(self._ws.recv())
            except websocket.WebSocketTimeoutException:
                raise TimeoutError(f"no answer to {what} within {timeout}s") from None
            if done(message):
                return message
            if "method" in message:
                self._record(message)

    def _record(self, event: dict[str, Any]) -> None:
        method, params = event["method"], event.get("params", {})
        if method == "Runtime.consoleAPICalled":
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
            self.console.append({"level": params.get("type"), "text": text, "url": ""})
        elif method == "Log.entryAdded":
            entry = params["entry"]
            self.console.append({"level": entry.get("level"), "text": entry.get("text"), "url": entry.get("url", "")})
        elif method == "Network.requestWillBeSent":
            self._urls[params["requestId"]] = params["request"]["url"]
        elif method == "Network.loadingFailed":
            cors = params.get("corsErrorStatus") or {}
            self.network_failures.append({
                "url": self._urls.get(params["requestId"], ""),
                "error": params.get("errorText"),
                "cors_error": cors.get("corsError"),
                "blocked": params.get("blockedReason"),
            })
        self._events.append(event)
        del self._events[:-200]  # bounded: only recent events are waited for

    def wait_for_event(self, method: str, predicate: Callable[[dict[str, Any]], bool] | None = None,
                       timeout: float | None = None) -> dict[str, Any] | None:
        """The first event ``method`` (already seen or arriving) whose params satisfy ``predicate``;
        None after ``timeout``."""
        def match(m: dict[str, Any]) -> bool:
            return m.get("method") == method and (predicate is None or predicate(m.get("params", {})))

        for i, event in enumerate(self._events):
            if match(event):
                return self._events.pop(i)
        try:
            event = self._read_until(match, timeout if timeout is not None else self.timeout, method)
        except TimeoutError:
            return None
        self._record(event)
        self._events.remove(event)
        return event

    # -- page -----------------------------------------------------------------------------------------

    def navigate(self, url: str) -> None:
        """Load ``url`` in the page and wait for its load event."""
        self._events.clear()
        result = self.send("Page.navigate", url=url)
        if result.get("errorText"):
            raise RuntimeError(f"navigate {url}: {result['errorText']}")
        if self.wait_for_event("Page.loadEventFired") is None:
            raise TimeoutError(f"{url} did not load within {self.timeout}s")

    def evaluate(self, expression: str, timeout: float | None = None) -> Any:
        """Run ``expression`` in the page, await it if it is a promise, return its JSON value."""
        limit = timeout or self.timeout
        result = self.send("Runtime.evaluate", timeout=limit, expression=expression, awaitPromise=True,
                           returnByValue=True)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise JavaScriptError(details.get("exception", {}).get("description") or details.get("text"))
        return result["result"].get("value")

    def fetch(self, url: str, method: str = "GET", headers: dict[str, str] | None = None,
              body: str | None = None, credentials: str = "same-origin", cache: str = "no-store",
              mode: str = "cors") -> dict[str, Any]:
        """``fetch()`` from the current page. Returns ``{ok, status, headers, body}`` with only the
        headers a script can read, or ``{error, cors_error}`` when the browser blocked it."""
        init: dict[str, Any] = {"method": method, "headers": headers or {}, "credentials": credentials,
                                "cache": cache, "mode": mode}
        if body is not None:
            init["body"] = body
        outcome = self.evaluate(_FETCH_JS % (json.dumps(url), json.dumps(init)))
        if "error" in outcome:
            failed = self.wait_for_event("Network.loadingFailed",
                                         lambda p: self._urls.get(p["requestId"]) == url, timeout=2)
            cors = (failed or {}).get("params", {}).get("corsErrorStatus") or {}
            outcome["cors_error"] = cors.get("corsError")
        return outcome
