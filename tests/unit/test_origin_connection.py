"""OriginConnection's write errors (proxy/origin.py), with a transport that refuses writes as uvloop does once a
connection is closed: no sockets.

Category: protocol shell. Which error says what decides the retry (upstream.send_request): a request of which no
byte went out may be sent again whatever its method; one cut after its head only as the retry rules allow.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from edgeproxy.proxy.origin import OriginAddress, OriginClosed, OriginClosedUnsent, OriginConnection

ADDRESS = OriginAddress("http", "127.0.0.1", 9)
FIELDS = [(b"host", b"127.0.0.1:9"), (b"content-length", b"2")]


class ClosedTransport:
    """Refuses every write, as uvloop does for a handle closed before connection_lost ran."""

    def write(self, data: bytes) -> None:
        raise RuntimeError("unable to perform operation on <TCPTransport closed=True>")

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def is_closing(self) -> bool:
        return True


class OpenThenClosed(ClosedTransport):
    """Takes the head, then closes."""

    def __init__(self) -> None:
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        if self.writes > 1:
            super().write(data)


@pytest.mark.parametrize("parser", ["h11", "httptools"])
def test_a_closed_connection_before_the_head_is_unsent(parser: str) -> None:
    async def main() -> None:
        conn = OriginConnection(ADDRESS, parser)
        conn.transport = ClosedTransport()
        with pytest.raises(OriginClosedUnsent):
            conn.send_head(b"POST", b"/", FIELDS)
        assert conn.lost
    asyncio.run(main())


@pytest.mark.parametrize("parser", ["h11", "httptools"])
def test_a_close_after_the_head_is_not_unsent(parser: str) -> None:
    async def main() -> None:
        conn = OriginConnection(ADDRESS, parser)
        conn.transport = OpenThenClosed()
        conn.send_head(b"POST", b"/", FIELDS)
        with pytest.raises(OriginClosed) as caught:
            await conn.send_body(b"ok")
        assert not isinstance(caught.value, OriginClosedUnsent) and conn.lost
    asyncio.run(main())
