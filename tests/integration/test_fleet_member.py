"""The fleet link (``FleetMember``) in this process against a real redis-server: what a test of whole nodes can't
force, such as a cancel that is swallowed where it lands (redis-py 8.2 ignored 19 of 20 that landed mid-pipeline).

Category: faults. One redis-server on a free loopback port; every wait is bounded.
"""

from __future__ import annotations

import asyncio
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
