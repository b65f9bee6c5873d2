"""The local backend: one ``Edge`` (the cache and the request path) serving listening sockets on this loop.

A ``Node`` serves it directly with ``[server] workers = 1``; under the supervisor each worker process runs one on
the inherited sockets. Its store (``make_store``) is a hot tier over the host's shared store when the cache is
shared (by default with several workers), else in-process (an equal share of ``cache.size`` per worker).

Owns: serving the listeners, the Edge's lifetime, the garbage-collector policy's timer, draining on stop, and the
answers about this process's cache (purge, stats, reload). Never: talks to systemd, serves the control socket
(the Node does both) or binds a socket (``edgeproxy.listeners`` does).

Stop: stop accepting, close idle keep-alive connections, let in-flight exchanges finish within the drain timeout,
then cancel what is left.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ssl
import time
from collections.abc import Callable
from typing import Any

from edgeproxy import gcpolicy
from edgeproxy.cache.store import Storage
from edgeproxy.config import Config
from edgeproxy.control.protocol import PurgeCommand
from edgeproxy.listeners import BACKLOG, Listener, addresses, server_ssl_context
from edgeproxy.metrics import status_line, summarize
from edgeproxy.proxy.client import IDLE, ClientConnection
from edgeproxy.proxy.edge import Edge
from edgeproxy.shared import layout
from edgeproxy.shared.store import SharedStore
from edgeproxy.timers import Timers

DRAIN_POLL = 0.05


def make_store(config: Config, shards: int) -> Storage:
    """This process's store: a hot tier over the host's shared store when the cache is shared (``shards`` > 1: a
    worker, which opens what its supervisor made; else this process owns the store), else in-process."""
    if not config.shared_cache:
        return layout.memory_store(config, shards)
    return layout.worker_store(config, None if shards > 1 else layout.open_owned(config))


class LocalEdge:
    """The ``Backend`` of one process that serves clients itself."""

    def __init__(self, config: Config, *, shards: int = 1) -> None:
        self.shards = shards
        self.config = config
        self.listeners: list[Listener] = []
        self.loop = asyncio.get_running_loop()
        self.edge = Edge(config, self.loop, store=make_store(config, shards))
        self.servers: list[asyncio.AbstractServer] = []
        self.tls_context: ssl.SSLContext | None = None
        self.timers = Timers(self.loop)

    async def start(self, listeners: list[Listener]) -> None:
        self.listeners = listeners
        s = self.config.server
        if any(scheme == "https" for scheme, _ in self.listeners):
            assert s.tls_cert and s.tls_key  # config validation requires both with tls_listen
            c = self.config.cluster
            self.tls_context = server_ssl_context(s.tls_cert, s.tls_key, c.ca_file if c.cert_file else None)
        for scheme, sock in self.listeners:
            self.servers.append(await self.loop.create_server(
                lambda scheme=scheme: ClientConnection(self.edge, scheme), sock=sock, backlog=BACKLOG,
                ssl=self.tls_context if scheme == "https" else None))
        self.edge.start()
        gcpolicy.watch(self.edge.counters.gc_pause)
        gcpolicy.settle()  # everything made while starting: config, modules, listeners
        self.timers.every("gc", gcpolicy.SETTLE_INTERVAL, gcpolicy.settle)

    def ready_status(self) -> str:
        return "serving on " + ", ".join(addresses(self.listeners))

    # ---- answers ----
    async def purge(self, command: PurgeCommand) -> dict[str, Any]:
        return await self.edge.purge(command.selector, command.soft)

    async def stats(self) -> dict[str, Any]:
        return self.summary()

    def summary(self) -> dict[str, Any]:
        counters, store = self.figures()
        return summarize(counters, store, self.edge.started, time.time())

    def figures(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """Counters and store stats, for /metrics. A fast-lane hit is a store lookup that found its entry, as a
        parsed hit's is: the store's hits count it."""
        counters, store = self.edge.counters.to_dict(), dataclasses.asdict(self.edge.store.stats())
        store["hits"] += counters["lane_hits"]
        return counters, store

    async def reload(self, config: Config) -> dict[str, Any]:
        self.config = new = config
        self.edge.apply(new)
        self.edge.store.max_object_size = new.cache.max_object_size
        self.edge.store.max_variants = new.cache.max_variants
        if self.tls_context is not None and new.server.tls_cert and new.server.tls_key:
            self.tls_context.load_cert_chain(new.server.tls_cert, new.server.tls_key)
        return {}

    def ping(self) -> dict[str, Any]:
        return {}

    def healthy(self) -> bool:
        return True  # this loop turning is the proof: the Node's watchdog timer runs on it

    def status(self) -> str:
        return status_line(self.summary())

    def reopen_logs(self) -> None:
        self.edge.access_log.reopen()

    def follow_journal(self, applied: Callable[[], int | None]) -> None:
        """This process follows the fleet's journal itself: its position is the one to sign peer requests with."""
        self.edge.journal = applied

    def kept_store(self) -> SharedStore | None:
        """The host's store under this process's hot tier, when it has one (it outlives the process)."""
        return getattr(self.edge.store, "shared", None)

    # ---- stop ----
    async def stop(self, drain_timeout: float) -> None:
        for server in self.servers:
            server.close()
        await self._drain(drain_timeout)
        self.timers.cancel_all()
        self.edge.stop()
        close = getattr(self.edge.store, "close", None)
        if close is not None:
            close()

    async def _drain(self, drain_timeout: float) -> None:
        deadline = self.loop.time() + drain_timeout
        while self.edge.connections and self.loop.time() < deadline:
            for client in list(self.edge.connections):
                if client.phase == IDLE and client.task is None:
                    client.transport.close()
                    client.closed = True
            await asyncio.sleep(DRAIN_POLL)
        for client in list(self.edge.connections):
            if client.task is not None:
                client.task.cancel()
            client.transport.abort()
