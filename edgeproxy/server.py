"""Wiring: listeners, the control socket, metrics, signals, systemd notifications, graceful stop and reload.

Rules kept here:
- Signal handlers only set flags / schedule coroutines; the work happens on the loop.
- Stop (SIGTERM/SIGINT): stop listening, close idle keep-alive connections, let in-flight exchanges finish within
  ``drain_timeout``, then cancel what is left; exit 0.
- Reload (SIGHUP or the control ``reload``): validate the new file first; a bad file changes nothing and is
  logged; a good one is applied without dropping the cache or open connections; keys that need a restart are
  reported and keep their old values.
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
from typing import Any

from edgeproxy import systemd
from edgeproxy.config import Config, ConfigError, load_config, restart_keys_changed
from edgeproxy.control import protocol
from edgeproxy.control.server import ControlServer, default_socket_path
from edgeproxy.proxy.client import IDLE, ClientConnection
from edgeproxy.proxy.edge import Edge

log = logging.getLogger("edgeproxy")


def server_ssl_context(cert: str, key: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


class Server:
    def __init__(self, config: Config, config_path: str | None) -> None:
        self.config = config
        self.config_path = config_path
        self.loop = asyncio.get_running_loop()
        self.edge = Edge(config, self.loop)
        self.listeners: list[tuple[str, asyncio.AbstractServer]] = []
        self.tls_context: ssl.SSLContext | None = None
        self.control: ControlServer | None = None
        self.metrics_server: asyncio.AbstractServer | None = None
        self.stopping = asyncio.Event()
        self.watchdog: asyncio.TimerHandle | None = None

    # ---- start ----
    async def start(self) -> None:
        s = self.config.server
        activated = systemd.listen_fds()
        if activated:
            for _name, sock in activated:
                await self._listen(sock=sock)
        else:
            for host, port in s.listen:
                await self._listen(host=host, port=port)
        if s.tls_listen:
            assert s.tls_cert and s.tls_key
            self.tls_context = server_ssl_context(s.tls_cert, s.tls_key)
            for host, port in s.tls_listen:
                await self._listen(host=host, port=port, tls=True)
        await self._start_control()
        await self._start_metrics()
        self.edge.start()
        self._signals()
        self._arm_watchdog()
        systemd.notify("READY=1", f"STATUS=serving on {', '.join(self.addresses())}")
        log.info("edgeproxy serving on %s", ", ".join(self.addresses()))

    async def _listen(self, *, host: str | None = None, port: int | None = None, sock: socket.socket | None = None,
                      tls: bool = False) -> None:
        scheme = "https" if tls else "http"
        server = await self.loop.create_server(
            lambda: ClientConnection(self.edge, scheme), host, port, sock=sock, backlog=4096,
            reuse_address=sock is None, reuse_port=(self.config.server.workers > 1) if sock is None else None,
            ssl=self.tls_context if tls else None)
        self.listeners.append((scheme, server))

    def addresses(self) -> list[str]:
        return [f"{scheme}://{sock.getsockname()[0]}:{sock.getsockname()[1]}"
                for scheme, server in self.listeners for sock in server.sockets]

    async def _start_control(self) -> None:
        s = self.config.server
        path = s.control_socket or default_socket_path()
        self.control = ControlServer(path, self.handle_command, group=s.control_group,
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
        self.loop.add_signal_handler(signal.SIGHUP, lambda: self.loop.create_task(self.reload()))
        self.loop.add_signal_handler(signal.SIGUSR1, self.edge.access_log.reopen)

    def _arm_watchdog(self) -> None:
        interval = systemd.watchdog_interval()
        if interval:
            def ping() -> None:
                # Runs only if the loop runs: a stuck loop stops the pings and systemd restarts us.
                systemd.notify("WATCHDOG=1")
                self.watchdog = self.loop.call_later(interval, ping)
            ping()

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
        counters = self.edge.counters.to_dict()
        hits = counters["requests"].get("hit", 0) + counters["requests"].get("stale", 0)
        lookups = hits + counters["requests"].get("miss", 0) + counters["requests"].get("revalidated", 0) + \
            counters["requests"].get("collapsed", 0)
        return {
            "entries": store["entries"], "bytes": store["bytes"], "capacity": store["capacity"],
            "hits": hits, "misses": counters["requests"].get("miss", 0),
            "hit_ratio": round(hits / lookups, 4) if lookups else 0.0,
            "stale_serves": counters["requests"].get("stale", 0),
            "revalidations": counters["requests"].get("revalidated", 0),
            "collapsed": counters["requests"].get("collapsed", 0),
            "evictions": store["evictions"], "purges": sum(counters["purges"].values()),
            "origin_errors": sum(counters["origin_errors"].values()),
            "open_connections": counters["open_connections"],
            "uptime": round(time.time() - self.edge.started, 1),
            "pid": os.getpid(),
            "counters": counters, "store": store,
        }

    async def reload(self) -> dict[str, Any]:
        if self.config_path is None:
            return {"reloaded": False, "reason": "no config file (started from flags)"}
        systemd.reloading()
        try:
            new = load_config(self.config_path)
        except ConfigError as e:
            log.error("reload refused, old config kept: %s", e)
            systemd.notify("READY=1", "STATUS=reload refused: " + str(e)[:200])
            raise
        kept = restart_keys_changed(self.config, new)
        if kept:
            log.warning("reload: these keys need a restart and keep their old values: %s", ", ".join(kept))
            new = _keep_restart_keys(self.config, new)
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
        deadline = self.loop.time() + self.config.server.drain_timeout
        while self.edge.connections and self.loop.time() < deadline:
            for client in list(self.edge.connections):
                if client.phase == IDLE and client.task is None:
                    client.transport.close()
                    client.closed = True
            await asyncio.sleep(0.05)
        for client in list(self.edge.connections):
            if client.task is not None:
                client.task.cancel()
            client.transport.abort()
        if self.watchdog is not None:
            self.watchdog.cancel()
        self.edge.stop()


def _keep_restart_keys(old: Config, new: Config) -> Config:
    server = dataclasses.replace(new.server, **{k: getattr(old.server, k) for k in (
        "listen", "tls_listen", "workers", "parser", "control_socket", "control_group")})
    cache = dataclasses.replace(new.cache, size=old.cache.size)
    return dataclasses.replace(new, server=server, cache=cache, metrics=old.metrics)


async def serve(config: Config, config_path: str | None) -> int:
    server = Server(config, config_path)
    try:
        await server.start()
    except OSError as e:
        log.error("cannot start: %s", e)
        await server.stop()
        return 1
    await server.run_until_stopped()
    return 0
