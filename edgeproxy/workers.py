"""A worker process under the supervisor: one ``Server`` on inherited listeners, commanded over a private channel.

Owns: the process entry point (``worker_main``, a multiprocessing "spawn" target) and the worker's end of the
channel: request lines of the control protocol in, one reply line each out, in order.

Never: talks to systemd (the supervisor's variables are removed from the environment, so ``systemd.notify`` is a
no-op here), binds a socket, or outlives its supervisor: when the channel closes, the worker drains and exits.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys

from edgeproxy.config import Config
from edgeproxy.control import protocol
from edgeproxy.server import Listener, Server

log = logging.getLogger("edgeproxy")

CHANNEL_LIMIT = 16 * 1024 * 1024  # a stats reply is a few KiB; the bound only stops a confused peer
_SUPERVISOR_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def worker_main(config: Config, config_path: str | None, listeners: list[Listener], channel: socket.socket,
                index: int, shards: int) -> None:
    """A worker process's entry point (the multiprocessing target)."""
    for name in _SUPERVISOR_ENV:  # systemd talks to the supervisor only
        os.environ.pop(name, None)
    logging.basicConfig(level=config.log.level.upper(), stream=sys.stderr,
                        format=f"%(asctime)s %(levelname)s %(name)s[worker {index}]: %(message)s")
    import uvloop

    sys.exit(uvloop.run(_run_worker(config, config_path, listeners, channel, shards)))


async def _run_worker(config: Config, config_path: str | None, listeners: list[Listener], channel: socket.socket,
                      shards: int) -> int:
    server = Server(config, config_path, inherited=listeners, shards=shards)
    try:
        await server.start()
    except OSError as e:
        log.error("worker cannot start: %s", e)
        return 1
    reader, writer = await asyncio.open_unix_connection(sock=channel, limit=CHANNEL_LIMIT)
    channel_task = asyncio.get_running_loop().create_task(_serve_channel(server, reader, writer))
    await server.run_until_stopped()
    channel_task.cancel()
    return 0


async def _serve_channel(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while line := await reader.readline():
        writer.write(await _answer(server, line.rstrip(b"\n")))
    log.error("supervisor gone: stopping")
    server.stopping.set()


async def _answer(server: Server, line: bytes) -> bytes:
    try:
        command = protocol.parse_request(line)
        return protocol.encode_reply({**protocol.reply_echo(command), **await server.handle_command(command)})
    except Exception as exc:  # the supervisor relays the message; the worker keeps serving
        return protocol.encode_error(str(exc))
