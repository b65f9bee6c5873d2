"""A worker process under the supervisor: a ``Node`` whose face is the private channel, over a ``LocalEdge``.

Owns: the process entry point (``worker_main``, a multiprocessing "spawn" target): the environment and logging
of a worker, then one Node on the inherited listeners with an equal share of the cache.

Never: talks to systemd (the supervisor's variables are removed from the environment, so ``systemd.notify`` is a
no-op here), binds a socket, or outlives its supervisor: when the channel closes, the worker drains and exits.
"""

from __future__ import annotations

import logging
import os
import socket
import sys

from edgeproxy.config import Config
from edgeproxy.listeners import Listener

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
    from edgeproxy.local import LocalEdge
    from edgeproxy.node import Node, run

    backend = LocalEdge(config, shards=shards)
    return await run(Node(config, config_path, backend, channel=channel, inherited=listeners))
