"""The node: the one process class, whichever role the process has.

A ``Node`` serves a ``Backend``: the cache in this process (``edgeproxy.local.LocalEdge``: ``workers = 1``, and
inside each worker) or a pool of worker processes (``edgeproxy.supervisor.WorkerPool``: ``workers > 1``). The
role is chosen in ``edgeproxy.cli``. The Node owns everything that does not depend on which:

- its face: toward the operator, the control socket and the metrics listener; in a worker, the private channel
  to the supervisor. Both speak the control protocol and reach the same ``handle_command``.
- start order: toward the operator it binds the listeners (or takes socket-activated ones), starts the backend
  on them, and only then opens the control socket: a script that waits for the socket to answer can purge or
  reload with every worker there (a reload sent while a worker still starts would miss it). A worker is handed
  the supervisor's sockets.
- signals, which only set flags or schedule coroutines: SIGTERM/SIGINT stop, SIGHUP reloads (ignored in a
  worker: a closed terminal must not reload one worker alone), SIGUSR1 reopens the log files.
- systemd (operator face only): READY=1 once the backend serves, RELOADING=1 + MONOTONIC_USEC then READY=1
  around a reload, STOPPING=1, WATCHDOG=1 while this loop turns and the backend is healthy, STATUS= figures.
- reload: the new file is validated first; a bad one changes nothing and is logged; a good one goes to the
  backend; keys that need a restart keep their old values and are reported (``load_for_reload``).
- stop: the face closes, then the backend drains.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from edgeproxy import systemd
from edgeproxy.config import Config, ConfigError, keep_restart_keys, load_config, restart_keys_changed
from edgeproxy.control import protocol
from edgeproxy.control.server import ControlServer, default_socket_path
from edgeproxy.fleet.journal import TooManyWaits
from edgeproxy.http import headscan
from edgeproxy.listeners import Listener, bind_listeners
from edgeproxy.timers import Timers

if TYPE_CHECKING:
    from edgeproxy.fleet.member import FleetMember
    from edgeproxy.shared.store import SharedStore

log = logging.getLogger("edgeproxy")
STATUS_INTERVAL = 5.0


class Backend(Protocol):
    """What serves behind a Node: one process's cache, or a pool of workers each with its own."""

    async def start(self, listeners: list[Listener]) -> None: ...
    def ready_status(self) -> str: ...
    async def purge(self, command: protocol.PurgeCommand) -> dict[str, Any]: ...
    async def stats(self) -> dict[str, Any]: ...
    def figures(self) -> tuple[dict[str, Any], dict[str, Any]]: ...  # counters, store: for /metrics
    async def reload(self, config: Config) -> dict[str, Any]: ...
    def ping(self) -> dict[str, Any]: ...
    def healthy(self) -> bool: ...
    def status(self) -> str: ...
    def reopen_logs(self) -> None: ...
    def kept_store(self) -> SharedStore | None: ...  # where the fleet keeps its position with the objects
    def follow_journal(self, applied: Callable[[], int | None]) -> None: ...  # the fleet entry this cache applied
    async def stop(self, drain_timeout: float) -> None: ...


def load_for_reload(old: Config, path: str) -> tuple[Config, list[str]]:
    """Load and validate ``path`` for a reload: the new config (restart-only keys kept at their old values) and
    the names of those keys. A ConfigError leaves everything as it was; it is logged and told to systemd here."""
    try:
        new = load_config(path)
        _check_secret(new)
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


def _check_secret(config: Config) -> None:
    """A reload re-reads the cluster's secret: one that can't be read refuses the reload, as a bad key would."""
    from edgeproxy.proxy.peers import load_peers

    try:
        load_peers(config)
    except OSError as e:
        raise ConfigError("cluster.secret_file", str(e).partition(": ")[2] or str(e), config.file) from None


class Node:
    def __init__(self, config: Config, config_path: str | None, backend: Backend, *,
                 channel: socket.socket | None = None, inherited: list[Listener] | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.backend = backend
        self.channel = channel  # a worker's face; None: the operator's
        self.inherited = inherited or []
        self.loop = asyncio.get_running_loop()
        self.control: ControlServer | None = None
        self.fleet: FleetMember | None = None
        self.metrics_server: asyncio.AbstractServer | None = None
        self.stopping = asyncio.Event()
        self.timers = Timers(self.loop)
        self.tasks: set[asyncio.Task[Any]] = set()

    @property
    def worker(self) -> bool:
        return self.channel is not None

    # ---- start ----
    async def start(self) -> None:
        self._signals()  # first: a SIGTERM while workers start must stop us cleanly, not kill us
        if self.worker:
            await self.backend.start(self.inherited)
            self._background(self._serve_channel())
        else:
            await self._start_fleet()  # caught up with the fleet's purges before anything is served
            await self.backend.start(bind_listeners(self.config))
            await self._start_control()
            await self._start_metrics()
        if not self.worker:
            s = self.config.server
            if s.fast_lane and s.head_memo and not headscan.COMPILED:
                log.warning("fast lane: the compiled head scanner is not built here (no C compiler or Python headers "
                            "when edgeproxy was installed); its Python twin runs, at several times the cost per hit")
            status = self.backend.ready_status()
            log.info("edgeproxy %s", status)  # logged before systemd hears READY=1
            systemd.notify("READY=1", f"STATUS={status}")
            self.timers.every("watchdog", systemd.watchdog_interval(), self._watchdog)
            self.timers.every("status", STATUS_INTERVAL if os.environ.get("NOTIFY_SOCKET") else None,
                              lambda: systemd.notify("STATUS=" + self.backend.status()))

    async def _start_control(self) -> None:
        s = self.config.server
        self.control = ControlServer(s.control_socket or default_socket_path(), self.handle_command,
                                     group=s.control_group, allowed_uids=s.control_uids,
                                     allowed_gids=s.control_gids, expected_errors=(ConfigError, TooManyWaits),
                                     own_dir=not s.control_socket)
        await self.control.start()

    async def _start_fleet(self) -> None:
        if self.config.fleet.redis is None:
            if self.config.cluster.peers:
                log.warning("[cluster] without [fleet]: a purge reaches this node only, and a peer that still holds "
                            "the object gives it back; configure [fleet] or purge every node")
            return
        from edgeproxy.fleet.member import FleetMember  # the redis client is imported only with [fleet]

        fleet = self.fleet = FleetMember(self.config.fleet, self.backend.purge, notes=self.backend.kept_store(),
                                         stored_objects=lambda: int(self.backend.figures()[1].get("entries") or 0))
        self.backend.follow_journal(lambda: fleet.position.seq if fleet.position is not None else None)
        await fleet.start()

    async def _start_metrics(self) -> None:
        listen = self.config.metrics.listen
        if listen is not None:
            from edgeproxy.metrics_http import serve_metrics

            self.metrics_server = await serve_metrics(self.figures, *listen)

    def figures(self) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        """Counters, store and fleet figures, for /metrics."""
        counters, store = self.backend.figures()
        return counters, store, self.fleet.stats() if self.fleet is not None else {}

    def _signals(self) -> None:
        self.loop.add_signal_handler(signal.SIGTERM, self.stopping.set)
        self.loop.add_signal_handler(signal.SIGINT, self.stopping.set)
        self.loop.add_signal_handler(signal.SIGHUP, (lambda: None) if self.worker else
                                     (lambda: self._background(self._reload_logged())))
        self.loop.add_signal_handler(signal.SIGUSR1, self.backend.reopen_logs)

    def _watchdog(self) -> None:
        if self.backend.healthy():
            systemd.notify("WATCHDOG=1")

    def _background(self, coro: Any) -> None:
        task = self.loop.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # ---- commands ----
    async def handle_command(self, command: protocol.Command) -> dict[str, Any]:
        match command:
            case protocol.PurgeCommand():
                if self.fleet is not None:
                    return await self.fleet.purge(command, command.fleet_wait)
                if command.fleet_wait is not None:
                    raise ValueError("fleet_wait: this node has no [fleet] configured")
                return await self.backend.purge(command)
            case protocol.StatsCommand():
                fleet = {"fleet": self.fleet.stats()} if self.fleet is not None else {}
                return {**await self.backend.stats(), "pid": os.getpid(), **fleet}
            case protocol.PingCommand():
                return {"pong": True, "pid": os.getpid(), **self.backend.ping()}
            case protocol.ReloadCommand():
                return await self.reload()
        raise ValueError(f"unsupported command {command!r}")

    async def _reload_logged(self) -> None:
        try:
            await self.reload()
        except ConfigError:
            pass  # load_for_reload has logged it and the old config keeps serving

    async def reload(self) -> dict[str, Any]:
        if self.config_path is None:
            return {"reloaded": False, "reason": "no config file (started from flags)"}
        systemd.reloading()
        self.config, kept = load_for_reload(self.config, self.config_path)
        reply = await self.backend.reload(self.config)
        if self.fleet is not None:
            self.fleet.config = self.config.fleet  # its restart-only keys kept their values
        log.info("reloaded %s", self.config_path)
        systemd.notify("READY=1", "STATUS=reloaded")
        return {"reloaded": True, "restart_needed": kept, **reply}

    async def _serve_channel(self) -> None:
        """A worker's face: one reply line per request line, in order; the supervisor gone means stop."""
        assert self.channel is not None
        reader, writer = await asyncio.open_unix_connection(sock=self.channel, limit=protocol.CHANNEL_LIMIT)
        while line := await reader.readline():
            writer.write(await self._answer(line.rstrip(b"\n")))
        log.error("supervisor gone: stopping")
        self.stopping.set()

    async def _answer(self, line: bytes) -> bytes:
        try:
            command = protocol.parse_request(line)
            return protocol.encode_reply({**protocol.reply_echo(command), **await self.handle_command(command)})
        except Exception as exc:  # the supervisor relays the message; the worker keeps serving
            return protocol.encode_error(str(exc))

    # ---- stop ----
    async def stop(self) -> None:
        if not self.worker:
            systemd.notify("STOPPING=1")
        log.info("stopping: draining in-flight exchanges (up to %gs)", self.config.server.drain_timeout)
        self.timers.cancel_all()
        for task in self.tasks:
            task.cancel()
        if self.control is not None:
            self.control.close()
        if self.metrics_server is not None:
            self.metrics_server.close()
        if self.fleet is not None:
            await self.fleet.stop()
        await self.backend.stop(self.config.server.drain_timeout)


async def run(node: Node) -> int:
    """Start ``node`` and serve until SIGTERM; the exit code."""
    try:
        await node.start()
    except OSError as e:
        log.error("cannot start: %s", e)
        await node.stop()
        return 1
    await node.stopping.wait()
    await node.stop()
    return 0
