"""Wiring: listeners, the control socket, metrics, signals, systemd notifications, graceful stop and reload.

One ``Server`` is one event loop serving clients with one ``Edge``. It runs in two roles:
- standalone (``[server] workers = 1``, the fast path): it binds (or takes socket-activated) listeners, serves
  the control socket and the metrics listener, and talks to systemd itself;
- worker (``workers > 1``, started by ``edgeproxy.supervisor``): it serves listening sockets inherited from the
  supervisor, answers the supervisor's commands on a private channel, and leaves the control socket, metrics
  and systemd to the supervisor. Its cache holds ``cache.size / workers`` bytes.

Rules kept here:
- Signal handlers only set flags / schedule coroutines; the work happens on the loop.
- Stop (SIGTERM/SIGINT): stop listening, close idle keep-alive connections, let in-flight exchanges finish within
  ``drain_timeout``, then cancel what is left; exit 0.
- Reload (SIGHUP or the control ``reload``): validate the new file first; a bad file changes nothing and is
  logged; a good one is applied without dropping the cache or open connections; keys that need a restart are
  reported and keep their old values. ``load_for_reload`` is that rule, shared with the supervisor.
- ``summarize`` turns counters and store stats into the ``stats`` reply; the supervisor feeds it sums.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import socket
import ssl
import time
from collections.abc import Mapping
from typing import Any

from edgeproxy import fdlimit, gcpolicy, systemd
from edgeproxy.config import Config, ConfigError, keep_restart_keys, load_config, restart_keys_changed
from edgeproxy.control import protocol
from edgeproxy.control.server import ControlServer, default_socket_path
from edgeproxy.proxy.client import IDLE, ClientConnection
from edgeproxy.proxy.edge import Edge

log = logging.getLogger("edgeproxy")
STATUS_INTERVAL = 5.0
DRAIN_POLL = 0.05
Listener = tuple[str, socket.socket]  # (scheme, listening socket)


def server_ssl_context(cert: str, key: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def shard(config: Config, shards: int) -> Config:
    """A worker's view of the config: its LRU holds an equal share of ``cache.size``."""
    if shards <= 1:
        return config
    size = max(config.cache.size // shards, config.cache.max_object_size)
    return dataclasses.replace(config, cache=dataclasses.replace(config.cache, size=size))


def load_for_reload(old: Config, path: str) -> tuple[Config, list[str]]:
    """Load and validate ``path`` for a reload: the new config (restart-only keys kept at their old values) and
    the names of those keys. A ConfigError leaves everything as it was; it is logged and told to systemd here."""
    try:
        new = load_config(path)
        kept = restart_keys_changed(old, new)
        if kept:
            new = keep_restart_keys(old, new)
    except ConfigError as e:
        log.error("reload refused, old config kept: %s", e)
        systemd.notify("READY=1", "STATUS=reload refused: " + str(e)[:200])
        raise
    if kept:
        log.warning("reload: these keys need a restart and keep their old values: %s", ", ".join(kept))
    logging.getLogger().setLevel(new.log.level.upper())
    return new, kept


def summarize(counters: Mapping[str, Any], store: Mapping[str, Any], started: float, now: float) -> dict[str, Any]:
    """The ``stats`` reply: headline figures first, then the raw ``counters`` and ``store`` tables."""
    requests = counters["requests"]
    hits = requests.get("hit", 0) + requests.get("stale", 0)
    lookups = hits + sum(requests.get(k, 0) for k in ("miss", "revalidated", "collapsed"))
    return {
        "entries": store["entries"], "bytes": store["bytes"], "capacity": store["capacity"],
        "hits": hits, "misses": requests.get("miss", 0),
        "hit_ratio": round(hits / lookups, 4) if lookups else 0.0,
        "stale_serves": requests.get("stale", 0), "revalidations": requests.get("revalidated", 0),
        "collapsed": requests.get("collapsed", 0), "evictions": store["evictions"],
        "purges": sum(counters["purges"].values()), "origin_errors": sum(counters["origin_errors"].values()),
        "open_connections": counters["open_connections"], "head_memo_hits": counters.get("memo_hits", 0),
        "uptime": round(now - started, 1),
        "counters": dict(counters), "store": dict(store),
    }


def status_line(stats: Mapping[str, Any]) -> str:
    """The live figures for systemd's STATUS= (``systemctl status`` shows it)."""
    return (f"{stats['open_connections']} connections, {stats['entries']} entries, "
            f"hit ratio {stats['hit_ratio'] * 100:.1f}%, {stats['purges']} purges")


class Server:
    def __init__(self, config: Config, config_path: str | None, *, inherited: list[Listener] | None = None,
                 shards: int = 1) -> None:
        self.worker = inherited is not None
        self.inherited = inherited or []
        self.shards = shards
        self.config = shard(config, shards)
        self.config_path = config_path
        self.loop = asyncio.get_running_loop()
        self.edge = Edge(self.config, self.loop)
        self.listeners: list[tuple[str, asyncio.AbstractServer]] = []
        self.tls_context: ssl.SSLContext | None = None
        self.control: ControlServer | None = None
        self.metrics_server: asyncio.AbstractServer | None = None
        self.stopping = asyncio.Event()
        self.timers: dict[str, asyncio.TimerHandle] = {}

    # ---- start ----
    async def start(self) -> None:
        s = self.config.server
        if s.tls_listen:
            assert s.tls_cert and s.tls_key
            self.tls_context = server_ssl_context(s.tls_cert, s.tls_key)
        if self.worker:
            for scheme, sock in self.inherited:
                await self._listen(sock=sock, tls=scheme == "https")
        else:
            # The control socket first: once the HTTP port accepts, a purge or reload script can talk to us.
            await self._start_control()
            await self._bind_all()
            await self._start_metrics()
        self.edge.start()
        self._signals()
        gcpolicy.watch(self.edge.counters.gc_pause)
        gcpolicy.settle()  # everything made while starting: config, modules, listeners
        self._every("gc", gcpolicy.SETTLE_INTERVAL, gcpolicy.settle, first=gcpolicy.SETTLE_INTERVAL)
        log.info("edgeproxy serving on %s", ", ".join(self.addresses()))  # logged before systemd hears READY=1
        if not self.worker:
            systemd.notify("READY=1", f"STATUS=serving on {', '.join(self.addresses())}")
            self._every("watchdog", systemd.watchdog_interval(), lambda: systemd.notify("WATCHDOG=1"))
            self._every("status", STATUS_INTERVAL if os.environ.get("NOTIFY_SOCKET") else None,
                        lambda: systemd.notify("STATUS=" + status_line(self.stats())), first=STATUS_INTERVAL)

    async def _bind_all(self) -> None:
        activated = systemd.listen_fds()
        if activated:
            for _name, sock in activated:
                await self._listen(sock=sock)
        else:
            for host, port in self.config.server.listen:
                await self._listen(host=host, port=port)
        for host, port in self.config.server.tls_listen:
            await self._listen(host=host, port=port, tls=True)

    async def _listen(self, *, host: str | None = None, port: int | None = None, sock: socket.socket | None = None,
                      tls: bool = False) -> None:
        scheme = "https" if tls else "http"
        server = await self.loop.create_server(
            lambda: ClientConnection(self.edge, scheme), host, port, sock=sock, backlog=4096,
            reuse_address=sock is None, ssl=self.tls_context if tls else None)
        self.listeners.append((scheme, server))

    def addresses(self) -> list[str]:
        return [f"{scheme}://{sock.getsockname()[0]}:{sock.getsockname()[1]}"
                for scheme, server in self.listeners for sock in server.sockets]

    async def _start_control(self) -> None:
        s = self.config.server
        path = s.control_socket or default_socket_path()
        self.control = ControlServer(path, self.handle_command, group=s.control_group, expected_errors=(ConfigError,),
                                     allowed_uids=s.control_uids, allowed_gids=s.control_gids)
        await self.control.start()

    async def _start_metrics(self) -> None:
        listen = self.config.metrics.listen
        if listen is not None:
            from edgeproxy.metrics_http import serve_metrics

            self.metrics_server = await serve_metrics(self, *listen)

    def _signals(self) -> None:
        self.loop.add_signal_handler(signal.SIGTERM, self.stopping.set)
        self.loop.add_signal_handler(signal.SIGINT, self.stopping.set)
        # A worker reloads when its supervisor says so; a SIGHUP reaching it (a closed terminal) changes nothing.
        self.loop.add_signal_handler(signal.SIGHUP, (lambda: None) if self.worker else
                                     (lambda: self.loop.create_task(self._reload_logged())))
        self.loop.add_signal_handler(signal.SIGUSR1, self.edge.access_log.reopen)

    def _every(self, name: str, interval: float | None, action: Any, first: float = 0.0) -> None:
        """Run ``action`` after ``first`` seconds, then every ``interval`` seconds, on the loop. The watchdog rides
        on this: a stuck loop stops the pings and systemd restarts us."""
        if not interval:
            return

        def tick() -> None:
            action()
            self.timers[name] = self.loop.call_later(interval, tick)
        self.timers[name] = self.loop.call_later(first, tick)

    # ---- control ----
    async def handle_command(self, command: Any) -> dict[str, Any]:
        match command:
            case protocol.PurgeCommand(selector=selector, soft=soft):
                return {"purged": self.edge.purge(selector, soft)}
            case protocol.StatsCommand():
                return self.stats()
            case protocol.PingCommand():
                return {"pong": True, "pid": os.getpid()}
            case protocol.ReloadCommand():
                return await self.reload()
        raise ValueError(f"unsupported command {command!r}")

    def stats(self) -> dict[str, Any]:
        store = dataclasses.asdict(self.edge.store.stats())
        return {**summarize(self.edge.counters.to_dict(), store, self.edge.started, time.time()), "pid": os.getpid()}

    async def _reload_logged(self) -> None:
        try:
            await self.reload()
        except ConfigError:
            pass  # load_for_reload has logged it and the old config keeps serving

    async def reload(self) -> dict[str, Any]:
        if self.config_path is None:
            return {"reloaded": False, "reason": "no config file (started from flags)"}
        systemd.reloading()
        new, kept = load_for_reload(self.config, self.config_path)
        new = shard(new, self.shards)
        self.config = new
        self.edge.apply(new)
        self.edge.store.max_object_size = new.cache.max_object_size
        self.edge.store.max_variants = new.cache.max_variants
        if self.tls_context is not None and new.server.tls_cert and new.server.tls_key:
            self.tls_context.load_cert_chain(new.server.tls_cert, new.server.tls_key)
        log.info("reloaded %s", self.config_path)
        systemd.notify("READY=1", "STATUS=reloaded")
        return {"reloaded": True, "restart_needed": kept}

    # ---- stop ----
    async def run_until_stopped(self) -> None:
        await self.stopping.wait()
        await self.stop()

    async def stop(self) -> None:
        systemd.notify("STOPPING=1")
        log.info("stopping: draining in-flight exchanges (up to %gs)", self.config.server.drain_timeout)
        self.edge.draining = True
        for _scheme, server in self.listeners:
            server.close()
        if self.control is not None:
            self.control.close()
        if self.metrics_server is not None:
            self.metrics_server.close()
        await self._drain()
        for timer in self.timers.values():
            timer.cancel()
        self.edge.stop()

    async def _drain(self) -> None:
        deadline = self.loop.time() + self.config.server.drain_timeout
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


async def serve(config: Config, config_path: str | None) -> int:
    """Run until SIGTERM; the exit code. ``workers > 1`` hands over to the supervisor."""
    shortfall = fdlimit.shortfall(config, fdlimit.raise_soft_limit())  # workers inherit the raised limit
    if shortfall:
        log.warning("%s", shortfall)
    if config.server.workers > 1:
        from edgeproxy.supervisor import supervise

        return await supervise(config, config_path)
    server = Server(config, config_path)
    try:
        await server.start()
    except OSError as e:
        log.error("cannot start: %s", e)
        await server.stop()
        return 1
    await server.run_until_stopped()
    return 0
