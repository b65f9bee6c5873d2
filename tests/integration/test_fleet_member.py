"""The fleet link (``FleetMember``) in this process against a real redis-server: what a test of whole nodes can't
force, such as a cancel that is swallowed where it lands (redis-py 8.2 ignored 19 of 20 that landed mid-pipeline),
a node retired for longer than FORGET_AFTER, or a beat that fails on a command error.

Category: faults. One redis-server on a free loopback port; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgeproxy.cache.purge import PurgeAll
from edgeproxy.config import FleetConfig
from edgeproxy.control.protocol import PurgeCommand
from edgeproxy.fleet.member import FleetMember
from tests.redisserver import RedisServer

BOUND = 5.0  # seconds: stop() gives its tasks STOP_WAIT (2 s), then closes the link
PURGE = PurgeCommand(PurgeAll(), soft=False, kind="all")


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


def test_stop_returns_in_bounded_time_when_a_task_swallows_its_cancel(redis_server: RedisServer) -> None:
    async def scenario() -> tuple[bool, float]:
        entered = asyncio.Event()

        async def stubborn_apply(command: PurgeCommand) -> dict[str, Any]:
            entered.set()
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:  # as redis-py does with a cancel that lands mid-pipeline
                pass
            return {"purged": 0}

        member = FleetMember(FleetConfig(redis=redis_server.url, node="n1"), stubborn_apply, notes=None,
                             stored_objects=lambda: 0)
        await member.start()
        publish = asyncio.create_task(member.purge(PURGE))
        await asyncio.wait_for(entered.wait(), 10)
        started = time.monotonic()
        stopping = asyncio.create_task(member.stop())
        done, _ = await asyncio.wait([stopping], timeout=BOUND + 5)
        elapsed = time.monotonic() - started
        publish.cancel()
        for task in (publish, *member.tasks):  # whatever stop() left behind, so that the loop can close
            task.cancel()
        await asyncio.wait([publish, *member.tasks], timeout=1)
        return bool(done), elapsed

    returned, elapsed = asyncio.run(scenario())
    assert returned and elapsed < BOUND, elapsed


@pytest.mark.parametrize("url", ["rediss://cache.internal:6380/0", "rediss://cache.internal/0?db=1"])
def test_a_tls_link_checks_the_servers_certificate_and_host_name(url: str) -> None:
    """Set explicitly: redis-py 5 did not check the host name by default (6.0 does; 6.1.0's asyncio path did not)."""
    member = FleetMember(FleetConfig(redis=url, node="n1"), lambda _c: asyncio.sleep(0), notes=None,
                         stored_objects=lambda: 0)
    kwargs = member._client(None, 1.0).connection_pool.connection_kwargs
    assert kwargs["ssl_check_hostname"] is True and kwargs["ssl_cert_reqs"] == "required"
    plain = FleetMember(FleetConfig(redis="redis://cache.internal/0", node="n1"), lambda _c: asyncio.sleep(0),
                        notes=None, stored_objects=lambda: 0)
    assert "ssl_check_hostname" not in plain._client(None, 1.0).connection_pool.connection_kwargs


async def until(predicate: Any, timeout: float = 10.0) -> bool:
    """Poll ``predicate`` (a few heartbeats' worth); whether it came true. Bounded."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.05)
    return bool(predicate())


def test_a_node_down_for_longer_than_forget_after_is_dropped_from_the_fleet(redis_server: RedisServer,
                                                                            caplog: pytest.LogCaptureFixture) -> None:
    from edgeproxy.fleet.member import FORGET_AFTER

    caplog.set_level(logging.INFO, logger="edgeproxy.fleet")
    stream = "edgeproxy:purge"
    r = redis_server.client()
    now = time.time()
    r.sadd(f"{stream}:nodes", "retired", "resting")
    r.hset(f"{stream}:applied", mapping={"retired": f"0-0 0 {now - FORGET_AFTER - 86400:.6f}",  # 8 days silent
                                         "resting": f"0-0 0 {now - 86400:.6f}"})  # down for a day: kept

    async def scenario() -> tuple[bool, list[str]]:
        member = FleetMember(FleetConfig(redis=redis_server.url, node="n1"), lambda _c: asyncio.sleep(0),
                             notes=None, stored_objects=lambda: 0)
        await member.start()
        try:
            forgotten = await until(lambda: not r.sismember(f"{stream}:nodes", "retired"))
            await until(lambda: "resting" in [v.name for v in member.view])
            return forgotten, [v.name for v in member.view]
        finally:
            await member.stop()

    forgotten, view = asyncio.run(scenario())
    assert forgotten and r.hget(f"{stream}:applied", "retired") is None
    assert r.smembers(f"{stream}:nodes") == {"n1", "resting"} and r.hget(f"{stream}:applied", "resting")
    assert "retired" not in view and {"n1", "resting"} <= set(view)
    assert "forgetting nodes down for over 7 days: retired" in caplog.text


def wrongtype(r: Any) -> int:
    """WRONGTYPE errors the server has answered (INFO errorstats)."""
    return int(r.info("errorstats").get("errorstat_WRONGTYPE", {}).get("count", 0))


def test_the_heartbeat_outlives_a_redis_error(redis_server: RedisServer) -> None:
    """A command error (here WRONGTYPE: the ``applied`` hash replaced by a string) fails a beat, not the heartbeat:
    once the key is right again the beats write this node's record and read the fleet again."""
    stream = "edgeproxy:purge"
    r = redis_server.client()

    async def scenario() -> tuple[int, bool]:
        member = FleetMember(FleetConfig(redis=redis_server.url, node="n1"), lambda _c: asyncio.sleep(0),
                             notes=None, stored_objects=lambda: 0)
        await member.start()
        try:
            assert await until(lambda: r.hget(f"{stream}:applied", "n1") is not None and member.view)
            r.delete(f"{stream}:applied")
            r.set(f"{stream}:applied", "not a hash")
            member.view = []
            before = wrongtype(r)
            assert await until(lambda: wrongtype(r) >= before + 2)  # two beats failed (the server's count)
            r.delete(f"{stream}:applied")
            recovered = await until(lambda: r.hget(f"{stream}:applied", "n1") is not None and bool(member.view))
            return sum(1 for t in member.tasks if t.done()), recovered
        finally:
            await member.stop()

    ended, recovered = asyncio.run(scenario())
    assert ended == 0 and recovered
