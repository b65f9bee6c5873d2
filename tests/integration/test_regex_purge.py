"""Regex purges through the real proxy that cannot stall it: a hostile pattern, RE2's refusals, the time budget.

Categories: purge, faults. A key any client can get stored (``/static/`` + a run of word characters + ``!``) and the
pattern ``/static/(\\w+\\.?)*\\.min\\.js$``, which backtracks exponentially on it in Python's ``re`` (1.8 s at 24
characters, x4 for every 2 more): purged over the control socket while a client keeps hitting, with one worker (the
in-process store) and two (the shared store, purged by the supervisor). Then RE2's refusals through the CLI (exit
2 and the reason), and a fleet journal entry a node cannot apply within its budget (``[cache] regex_purge_budget =
0``): its host is soft-purged instead and the node's position advances. A scripted origin and the proxies on
127.0.0.1; the only timed assertions are the ones issue 22 asks for (the purge within 1 s, hits' p99 under 50 ms).
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import cacheable
from tests.integration.test_fleet import Fleet, metric, stats
from tests.integration.test_ops import control
from tests.redisserver import RedisServer
from tests.scriptorigin import ScriptOrigin
from tests.support import HTTPClient, env, start_proxy

HOSTILE = "/static/" + "a" * 25 + "!"  # ~3.5 s in Python's re; RE2: microseconds
PATTERN = r"/static/(\w+\.?)*\.min\.js$"
MINIFIED = [f"/static/lib{i}.min.js" for i in range(20)]
OTHERS = ["/static/app.js", "/index.html"]
HOST = "redos.test"
INTERVAL = 0.005  # seconds between the load's requests


@pytest.fixture
def origin() -> Iterator[ScriptOrigin]:
    with ScriptOrigin() as o:
        for path in (HOSTILE, *MINIFIED, *OTHERS, "/obj"):
            o.routes[path] = cacheable
        yield o


def status(client: HTTPClient, target: str, host: str = HOST) -> str:
    return client.request("GET", target, host=host).header("cache-status") or ""


def is_hit(client: HTTPClient, target: str, host: str = HOST) -> bool:
    got = status(client, target, host)
    return got.startswith("edgeproxy; hit") and "fwd=" not in got


def p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


@pytest.mark.parametrize("workers", [1, 2], ids=["one-process", "shared-store"])
def test_a_hostile_regex_purge_finishes_within_a_second_while_hits_flow(origin: ScriptOrigin, tmp_path: Path,
                                                                         workers: int) -> None:
    proxy = start_proxy(origin.url, tmp_path, server={"workers": workers})
    try:
        with HTTPClient(proxy.port) as client:
            for target in (HOSTILE, *MINIFIED, *OTHERS):
                assert "stored" in status(client, target), target
                assert is_hit(client, target), target
        latencies: list[float] = []
        stop = threading.Event()

        def hits() -> None:
            # One request every INTERVAL, each timed from when it was due (a stall delays every request due during
            # it, as it would an open-loop load): mostly hits, and every tenth a miss that stores (which waits for
            # the store's write lock, the shared store's included).
            with HTTPClient(proxy.port) as hitter:
                due, i = time.monotonic(), 0
                while not stop.is_set():
                    target = f"/obj?n={i}" if i % 10 == 0 else "/index.html"
                    assert hitter.request("GET", target, host=HOST).status == 200
                    latencies.append(time.monotonic() - due)
                    due, i = due + INTERVAL, i + 1
                    time.sleep(max(0.0, due - time.monotonic()))

        hitter = threading.Thread(target=hits)
        hitter.start()
        time.sleep(0.3)  # hits flowing before the purge
        before = len(latencies)
        started = time.monotonic()
        reply = control(proxy, {"cmd": "purge", "kind": "regex", "pattern": PATTERN}, timeout=30)
        took = time.monotonic() - started
        time.sleep(0.3)
        stop.set()
        hitter.join(10)
        during = latencies[before:]
        assert reply["ok"] and reply["purged"] == len(MINIFIED), reply
        assert took < 1.0, f"the purge took {took:.2f}s"
        assert len(during) > 10 and p99(during) < 0.050, f"hits during the purge: p99 {p99(during) * 1000:.1f} ms"
        with HTTPClient(proxy.port) as client:
            for target in MINIFIED:
                assert not is_hit(client, target), target
            for target in (HOSTILE, *OTHERS):
                assert is_hit(client, target), target
    finally:
        proxy.stop()


@pytest.mark.parametrize(("pattern", "reason"), [
    (r"^http://redos\.test/(a+)\1", "pattern: backreferences are not supported (RE2 syntax)"),
    (r"^http://redos\.test/(?=static)", "pattern: lookahead and lookbehind are not supported (RE2 syntax)"),
    (r"(?<!min)\.js$", "pattern: lookahead and lookbehind are not supported (RE2 syntax)"),
    (r"(\w+\.?){1000}x", "pattern: too complex for RE2's bound"),
])
def test_what_re2_cannot_run_is_refused_with_exit_2_and_the_reason(origin: ScriptOrigin, tmp_path: Path,
                                                                   pattern: str, reason: str) -> None:
    proxy = start_proxy(origin.url, tmp_path)
    try:
        cli = subprocess.run([sys.executable, "-m", "edgeproxy", "purge", "--regex", pattern, "--control",
                              proxy.extra["control"]], env=env(), capture_output=True, text=True, timeout=30)
        assert cli.returncode == 2, cli
        assert reason in cli.stderr and cli.stderr.count("\n") == 1, cli.stderr
        # The server refuses it too (a client that skips the CLI's own check).
        reply = control(proxy, {"cmd": "purge", "kind": "regex", "pattern": pattern})
        assert not reply["ok"] and reason in reply["error"], reply
    finally:
        proxy.stop()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


def test_a_journal_entry_over_budget_soft_purges_its_host_and_the_position_advances(
        origin: ScriptOrigin, tmp_path: Path, redis_server: RedisServer) -> None:
    fleet = Fleet(tmp_path, origin.url, redis_server.url)
    try:
        a = fleet.start("edge-a", cache={"regex_purge_budget": 0})  # no time to match: every regex falls back
        b = fleet.start("edge-b")
        for proxy in (a, b):
            with HTTPClient(proxy.port) as client:
                for target, host in ((t, HOST) for t in (*MINIFIED[:2], "/index.html")):
                    assert "stored" in status(client, target, host)
                assert "stored" in status(client, "/obj", "other.test")
        fleet.stop("edge-a")  # it replays the entry when it starts again, before serving
        reply = control(b, {"cmd": "purge", "kind": "regex", "pattern": r"^http://redos\.test/static/.*\.min\.js$"})
        assert reply["ok"] and reply["purged"] == 2 and "over_budget" not in reply, reply
        seq = reply["fleet"]["seq"]
        a = fleet.start("edge-a", cache={"regex_purge_budget": 0})
        assert stats(a)["fleet"]["applied_seq"] == seq
        assert metric(a, "edgeproxy_purge_budget_exceeded_total") == 1
        assert "did not finish within its budget" in a.log() and "soft-purged host redos.test" in a.log()
        with HTTPClient(a.port) as client:
            for target in (*MINIFIED[:2], "/index.html"):  # the whole host: revalidated, not served as it was
                assert "fwd=stale" in status(client, target), target
            assert is_hit(client, "/obj", "other.test")
        with HTTPClient(b.port) as client:  # the node within budget applied the regex itself
            for target in MINIFIED[:2]:
                assert not is_hit(client, target)
            assert is_hit(client, "/index.html")
    finally:
        fleet.stop_all()
