"""OriginConnection's write errors (proxy/origin.py) over a real uvloop transport on loopback, reset by its peer.

Category: protocol shell. Which error says what decides the retry (upstream.send_request): a request of which no
byte went out may be sent again whatever its method; one cut after its head only as the retry rules allow. uvloop
refuses a write on a closed handle with a RuntimeError; these tests make it close one for real (the peer resets).
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Awaitable, Callable

import pytest
import uvloop

from edgeproxy.proxy.origin import OriginAddress, OriginClosed, OriginClosedUnsent, OriginConnection

ADDRESS = OriginAddress("http", "127.0.0.1", 9)
FIELDS = [(b"host", b"127.0.0.1:9"), (b"content-length", b"2")]
HEAD = b"POST / HTTP/1.1\r\nhost: 127.0.0.1:9\r\ncontent-length: 2\r\n\r\n"


def reset(peer: socket.socket) -> None:
    """Close with an RST (linger 0), as an origin that drops a connection does."""
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    peer.close()


async def until_lost(conn: OriginConnection) -> None:
    for _ in range(500):  # bounded: a reset on loopback is seen within a few loop turns
        if conn.lost:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the reset was never seen")


def on_loopback(parser: str, body: Callable[[OriginConnection, socket.socket], Awaitable[None]]) -> None:
    async def main() -> None:
        with socket.create_server(("127.0.0.1", 0)) as listener:
            conn = OriginConnection(ADDRESS, parser)
            transport, _ = await asyncio.get_running_loop().create_connection(
                lambda: conn, "127.0.0.1", listener.getsockname()[1])
            assert type(transport).__module__.startswith("uvloop")
            peer, _ = listener.accept()
            peer.settimeout(5.0)
            try:
                await body(conn, peer)
            finally:
                transport.close()
                peer.close()
    uvloop.run(main())


@pytest.mark.parametrize("parser", ["h11", "httptools"])
def test_a_closed_connection_before_the_head_is_unsent(parser: str) -> None:
    async def body(conn: OriginConnection, peer: socket.socket) -> None:
        reset(peer)
        await until_lost(conn)
        with pytest.raises(OriginClosedUnsent):
            conn.send_head(b"POST", b"/", FIELDS)
        assert conn.lost
    on_loopback(parser, body)


@pytest.mark.parametrize("parser", ["h11", "httptools"])
def test_a_close_after_the_head_is_not_unsent(parser: str) -> None:
    async def body(conn: OriginConnection, peer: socket.socket) -> None:
        conn.send_head(b"POST", b"/", FIELDS)
        got = b""
        while len(got) < len(HEAD):
            got += peer.recv(4096)
        assert got == HEAD  # the head went out: the origin may have acted on it
        reset(peer)
        await until_lost(conn)
        with pytest.raises(OriginClosed) as caught:
            await conn.send_body(b"ok")
        assert not isinstance(caught.value, OriginClosedUnsent) and conn.lost
    on_loopback(parser, body)
