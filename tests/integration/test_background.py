"""A stale-while-revalidate refresh that fails (edgeproxy/proxy/background.py) frees its key for the next one: the
process's ``revalidating`` mark and, with a shared store, the host's claim are released whatever went wrong.

Category: faults. One proxy per case (the cache in-process or shared, ``[origin] read_timeout`` 1 s) in front of a
scripted origin whose object is stale at once (``max-age=0, stale-while-revalidate=60``) and whose every refresh
fails one way: it hangs up, never answers (the read timeout) or sends a body larger than the cache may keep. Each
stale hit may set off a refresh; the check is the origin's count of the conditional requests it got: a second one
arrives only if the first failure released the key (a claim is held for the sum of the origin's timeouts, here over
a minute with ``pool_wait_timeout`` 60 s, which no refresh here waits on).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.scriptorigin import Reply, ScriptOrigin, Seen
from tests.support import HTTPClient, Proc, Response, start_proxy

TARGET = "/bg"
STALE_AT_ONCE = [("cache-control", "public, max-age=0, stale-while-revalidate=60"), ("etag", '"v1"')]
FAILURES = {
    "hangs-up": Reply(hangup=True),
    "never-answers": Reply(stall=True),
    "too-large": Reply(200, [("cache-control", "public, max-age=60")], stream=200_000),
}


@pytest.fixture(params=["in-process", "shared"])
def cache(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def proxy(cache: str, origin: ScriptOrigin, tmp_path: Path) -> Iterator[Proc]:
    p = start_proxy(origin.url, tmp_path, cache={"path": str(tmp_path / "cache"), "shared": cache == "shared",
                                                 "max_object_size": 64 * 1024},
                    origin={"read_timeout": 1.0, "pool_wait_timeout": 60.0})
    yield p
    p.stop()


def get(proxy: Proc) -> Response:
    with HTTPClient(proxy.port) as client:
        return client.request("GET", TARGET, host="bg.test")


def refreshes(origin: ScriptOrigin) -> list[Seen]:
    return [s for s in origin.seen(TARGET) if s.header("if-none-match") == '"v1"']


@pytest.mark.parametrize("failure", list(FAILURES))
def test_a_failed_refresh_frees_the_key_for_the_next(proxy: Proc, origin: ScriptOrigin, failure: str) -> None:
    def script(seen: Seen) -> Reply:
        if seen.header("if-none-match") is None:
            return Reply(200, [("content-type", "text/plain"), *STALE_AT_ONCE], b"v1\n")
        return FAILURES[failure]

    origin.routes[TARGET] = script
    first = get(proxy)
    assert first.status == 200 and "stored" in (first.header("cache-status") or "")
    answers = []
    # Every stale hit may start a refresh; one is under way at a time. Bounded: 10 s, far less than the claim's hold.
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline and len(refreshes(origin)) < 2:
        answers.append(get(proxy))
        origin.wait_for(lambda: len(refreshes(origin)) >= 2, timeout=0.1)
    assert len(refreshes(origin)) >= 2, f"one refresh only in {len(answers)} stale hits: the key was never freed"
    assert {(a.status, a.body) for a in answers} == {(200, b"v1\n")}  # each answered at once from the stale copy
    assert len(origin.seen(TARGET)) == 1 + len(refreshes(origin))  # every request after the first was a refresh
