"""The supervisor: ``[server] workers = N`` (N > 1) worker processes behind one control socket.

Owns: the listening sockets (bound here, or taken from socket activation, and inherited by every worker),
starting workers (``edgeproxy.workers.worker_main`` under multiprocessing "spawn": a fresh interpreter, so no
event loop, lock or half-written buffer is copied by fork), restarting one that dies, a private channel per
worker (a socketpair speaking the control protocol's NDJSON lines), the control socket, the metrics listener,
sd_notify and the watchdog.

Never: serves a client request or holds a cache. Each worker runs a ``Server`` with its own ``Edge`` and an LRU
of ``cache.size / N``: the memory bound stays what the operator configured, at the price of N separate caches
(an object may be fetched and stored once per worker).

Rules kept here:
- READY=1 only once every worker answered a ping on its channel (a worker reads it only after it listens) and
  the control socket is up. RELOADING=1 + MONOTONIC_USEC, then READY=1, around a reload; STOPPING=1 on stop.
- A purge is acknowledged when every ready worker applied it; ``purged`` is the sum. A worker still starting
  has an empty cache, and one that dies or does not answer (it is killed) loses its cache: for both, the purge
  holds without them.
- A reload validates the file once here; a bad one changes nothing. Workers then re-read the same file: the
  channel speaks the control protocol, whose ``reload`` carries no config.
- ``stats`` asks every worker and sums (metrics.merge); /metrics sums the heartbeat snapshots (a ``stats``
  every HEARTBEAT), so a scrape is at most that old and costs the workers nothing. A dead worker's counters die
  with it: Prometheus sees a counter reset.
- WATCHDOG=1 only while this loop turns and no live worker has been silent for HANG_TIMEOUT; a worker that is
  gets SIGKILL and is restarted like any worker that dies, after BACKOFF.

Trade-off: the workers share one accept queue per address instead of SO_REUSEPORT groups. The kernel then does
not hash connections evenly; whichever worker is idle wins the accept race, which is the balance we want for
keep-alive connections of uneven cost. In exchange a dying or restarting worker never refuses nor drops a
connection (the queue lives on in the supervisor and the other workers), and socket activation works the same.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import multiprocessing
import os
import signal
import socket
import time
from multiprocessing.process import BaseProcess
from types import SimpleNamespace
from typing import Any

from edgeproxy import metrics, systemd
from edgeproxy.cache.purge import KINDS
from edgeproxy.cache.store import StoreStats
from edgeproxy.config import Config, ConfigError
from edgeproxy.control import protocol
from edgeproxy.control.server import ControlServer, default_socket_path
from edgeproxy.server import Listener, load_for_reload, status_line, summarize
from edgeproxy.workers import CHANNEL_LIMIT, worker_main

log = logging.getLogger("edgeproxy.supervisor")

SECONDS = 1.0
HEARTBEAT = 1 * SECONDS
HANG_TIMEOUT = 10 * SECONDS
COMMAND_TIMEOUT = 60 * SECONDS  # a regex purge over millions of entries
START_TIMEOUT = 30 * SECONDS
STOP_GRACE = 5 * SECONDS  # beyond drain_timeout, before SIGKILL
STABLE_AFTER = 10 * SECONDS  # a worker that lived this long starts its backoff afresh
BACKOFF = (0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
BACKLOG = 4096
WORKER_FIGURES = ("entries", "hits", "misses", "open_connections")  # per worker in the stats breakdown


class WorkerGone(Exception):
    """The worker's channel failed: it died, or did not answer in time."""


class Worker:
    """The supervisor's handle on one worker slot: its process, channel and last heartbeat snapshot."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.process: BaseProcess | None = None
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.lock = asyncio.Lock()  # one request at a time: replies come back in order
        self.ready = False
        self.started = self.last_reply = 0.0
        self.snapshot: dict[str, Any] | None = None
        self.restarts = 0
        self.failures = 0  # deaths in a row, each before STABLE_AFTER

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.is_alive()

    async def request(self, fields: dict[str, Any], timeout: float) -> dict[str, Any]:
        async with self.lock:
            if self.reader is None or self.writer is None:
                raise WorkerGone(f"worker {self.index} is not running")
            try:
                self.writer.write(protocol.encode_request(fields))
                line = await asyncio.wait_for(self.reader.readline(), timeout)
                reply = protocol.decode_reply(line)
            except (OSError, TimeoutError, ValueError) as exc:  # ProtocolError and LimitOverrun are ValueErrors
                raise WorkerGone(f"worker {self.index}: {exc or type(exc).__name__}") from None
            self.last_reply = time.monotonic()
            return reply

    def close_channel(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None
        self.ready = False


def purge_fields(command: protocol.PurgeCommand) -> dict[str, Any]:
    """The request line that carries a parsed purge on to a worker."""
    _cls, names, _required = KINDS[command.kind]
    fields: dict[str, Any] = {"cmd": "purge", "kind": command.kind, "soft": command.soft}
    for name in names:
        value = getattr(command.selector, name)
        if value is not None:
            fields[name] = sorted(value) if name == "tags" else value
    return fields


def _worker_row(w: Worker) -> dict[str, Any]:
    """One worker in the ``stats`` breakdown, from its latest snapshot."""
    snap = w.snapshot or {}
    requests = sum(snap["counters"]["requests"].values()) if snap else 0
    return {"pid": w.process.pid if w.process else None, "ready": w.ready, "restarts": w.restarts,
            "requests": requests, **{k: snap.get(k, 0) for k in WORKER_FIGURES}}


def bind_listeners(config: Config) -> list[Listener]:
    """Socket-activated sockets (plain HTTP) or the configured ``listen``; then ``tls_listen``."""
    plain = [sock for _name, sock in systemd.listen_fds()]
    plain = plain or [_bind(host, port) for host, port in config.server.listen]
    return [("http", sock) for sock in plain] + [("https", _bind(h, p)) for h, p in config.server.tls_listen]


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=BACKLOG)


class Supervisor:
    def __init__(self, config: Config, config_path: str | None) -> None:
        self.config = config
        self.config_path = config_path
        self.loop = asyncio.get_running_loop()
        self.workers = [Worker(i) for i in range(config.server.workers)]
        self.purges: dict[str, int] = {}  # purge commands by kind: each worker counts its share of one command
        self.listeners: list[Listener] = []
        self.control: ControlServer | None = None
        self.metrics_server: asyncio.AbstractServer | None = None
        self.stopping = asyncio.Event()
        self.closing = False
        self.timers: dict[str, asyncio.TimerHandle] = {}
        self.tasks: set[asyncio.Task[Any]] = set()
        self.beating: asyncio.Task[None] | None = None
        self.started = time.time()
        self.status = ""
        self.context = multiprocessing.get_context("spawn")

    # ---- start ----
    async def start(self) -> None:
        self.listeners = bind_listeners(self.config)
        await asyncio.gather(*(self._spawn(w) for w in self.workers))
        if not all(w.ready for w in self.workers):
            raise OSError("a worker did not start (see its log lines above)")
        s = self.config.server
        self.control = ControlServer(s.control_socket or default_socket_path(), self.handle_command,
                                     expected_errors=(ConfigError,),
                                     group=s.control_group, allowed_uids=s.control_uids, allowed_gids=s.control_gids)
        await self.control.start()
        if self.config.metrics.listen is not None:
            from edgeproxy.metrics_http import serve_metrics

            self.metrics_server = await serve_metrics(self._metrics_view(), *self.config.metrics.listen)
        self._signals()
        addresses = ", ".join(f"{scheme}://{sock.getsockname()[0]}:{sock.getsockname()[1]}"
                              for scheme, sock in self.listeners)
        log.info("supervisor %d: %d workers serving on %s", os.getpid(), len(self.workers), addresses)
        systemd.notify("READY=1", f"STATUS={len(self.workers)} workers serving on {addresses}")
        self._every("heartbeat", HEARTBEAT, self._beat)
        interval = systemd.watchdog_interval()
        if interval:
            self._every("watchdog", interval, self._watchdog)

    def _signals(self) -> None:
        self.loop.add_signal_handler(signal.SIGTERM, self.stopping.set)
        self.loop.add_signal_handler(signal.SIGINT, self.stopping.set)
        self.loop.add_signal_handler(signal.SIGHUP, lambda: self._background(self._reload_logged()))
        self.loop.add_signal_handler(signal.SIGUSR1, lambda: self._signal_workers(signal.SIGUSR1))

    def _every(self, name: str, interval: float, action: Any) -> None:
        def tick() -> None:
            action()
            self.timers[name] = self.loop.call_later(interval, tick)
        self.timers[name] = self.loop.call_later(interval, tick)

    def _background(self, coro: Any) -> None:
        task = self.loop.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # ---- workers ----
    async def _spawn(self, w: Worker) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        process = self.context.Process(
            target=worker_main, name=f"edgeproxy-worker-{w.index}",
            args=(self.config, self.config_path, self.listeners, child, w.index, len(self.workers)))
        try:
            process.start()
        finally:
            child.close()
        w.process, w.snapshot = process, None
        w.started = w.last_reply = time.monotonic()
        w.reader, w.writer = await asyncio.open_unix_connection(sock=parent, limit=CHANNEL_LIMIT)
        self.loop.add_reader(process.sentinel, self._on_exit, w, process)
        w.ready = await self._ask(w, {"cmd": "ping"}, START_TIMEOUT) is not None
        if w.ready:
            log.info("worker %d (pid %d) serving", w.index, process.pid)

    def _on_exit(self, w: Worker, process: BaseProcess) -> None:
        self.loop.remove_reader(process.sentinel)
        process.join(0)
        if w.process is not process:
            return
        w.process = None
        w.close_channel()
        if self.closing:
            return
        lived = time.monotonic() - w.started
        w.failures = 0 if lived >= STABLE_AFTER else w.failures + 1
        delay = BACKOFF[min(w.failures, len(BACKOFF) - 1)]
        w.restarts += 1
        log.error("worker %d (pid %d) exited with status %s after %.1fs; restarting in %gs",
                  w.index, process.pid, process.exitcode, lived, delay)
        self.timers[f"restart-{w.index}"] = self.loop.call_later(delay, self._restart, w)

    def _restart(self, w: Worker) -> None:
        if not self.closing and w.process is None:
            self._background(self._spawn(w))

    def _kill(self, w: Worker, why: str) -> None:
        if w.alive and w.process is not None:
            log.error("worker %d (pid %s): %s; killing it", w.index, w.process.pid, why)
            w.process.kill()

    def _signal_workers(self, sig: int) -> None:
        for w in self.workers:
            if w.alive and w.process is not None and w.process.pid is not None:
                os.kill(w.process.pid, sig)

    async def _ask(self, w: Worker, fields: dict[str, Any], timeout: float) -> dict[str, Any] | None:
        """One worker's reply, or None when it is gone; a worker that fails to answer is killed."""
        try:
            return await w.request(fields, timeout)
        except WorkerGone as exc:
            self._kill(w, str(exc))
            return None

    async def _broadcast(self, fields: dict[str, Any], timeout: float = COMMAND_TIMEOUT) -> list[dict[str, Any]]:
        ready = [w for w in self.workers if w.ready]
        replies = await asyncio.gather(*(self._ask(w, fields, timeout) for w in ready))
        return [r for r in replies if r is not None]

    def _beat(self) -> None:
        if self.beating is None or self.beating.done():  # one heartbeat in flight: a slow worker can't pile them
            self.beating = self.loop.create_task(self._heartbeat())

    async def _heartbeat(self) -> None:
        await self._collect(HANG_TIMEOUT)
        summary = self.summary()
        status = f"{sum(w.ready for w in self.workers)}/{len(self.workers)} workers, " + status_line(summary)
        if status != self.status:
            self.status = status
            systemd.notify("STATUS=" + status)

    async def _collect(self, timeout: float) -> None:
        ready = [w for w in self.workers if w.ready]
        replies = await asyncio.gather(*(self._ask(w, {"cmd": "stats"}, timeout) for w in ready))
        for w, reply in zip(ready, replies, strict=True):
            if reply is not None and reply["ok"]:
                w.snapshot = reply

    def _watchdog(self) -> None:
        now = time.monotonic()
        if all(not w.alive or now - w.last_reply < HANG_TIMEOUT + 2 * HEARTBEAT for w in self.workers):
            systemd.notify("WATCHDOG=1")

    # ---- figures ----
    def totals(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """Counters and store stats summed over the ready workers' latest snapshots."""
        snaps = [w.snapshot for w in self.workers if w.ready and w.snapshot is not None]
        counters = metrics.merge([metrics.ProxyCounters().to_dict(), *(s["counters"] for s in snaps)])
        counters["purges"] = dict(self.purges)  # commands, not the sum of the workers' shares
        stores = [dict(s["store"]) for s in snaps]
        last_purge = max((s.pop("last_purge_at") or 0.0 for s in stores), default=0.0)
        store = metrics.merge([dataclasses.asdict(StoreStats(0, 0, 0)), *stores])
        store["last_purge_at"] = last_purge or None  # an epoch is not additive: the latest one
        return counters, store

    def summary(self) -> dict[str, Any]:
        counters, store = self.totals()
        per_worker = {str(w.index): _worker_row(w) for w in self.workers}
        return {**summarize(counters, store, self.started, time.time()), "pid": os.getpid(), "workers": per_worker}

    def _metrics_view(self) -> Any:
        """What metrics_http reads of a server (``edge.store.stats()``, ``edge.counters.to_dict()``), answered
        from the heartbeat snapshots summed over the workers."""
        store = SimpleNamespace(stats=lambda: StoreStats(**self.totals()[1]))
        counters = SimpleNamespace(to_dict=lambda: self.totals()[0])
        return SimpleNamespace(edge=SimpleNamespace(store=store, counters=counters))

    # ---- control ----
    async def handle_command(self, command: protocol.Command) -> dict[str, Any]:
        match command:
            case protocol.PurgeCommand():
                replies = await self._broadcast(purge_fields(command))
                self.purges[command.kind] = self.purges.get(command.kind, 0) + 1
                return {"purged": sum(r.get("purged", 0) for r in replies), "workers": len(replies)}
            case protocol.StatsCommand():
                await self._collect(COMMAND_TIMEOUT)
                return self.summary()
            case protocol.PingCommand():
                return {"pong": True, "pid": os.getpid(), "workers": sum(w.ready for w in self.workers)}
            case protocol.ReloadCommand():
                return await self.reload()
        raise ValueError(f"unsupported command {command!r}")

    async def _reload_logged(self) -> None:
        try:
            await self.reload()
        except ConfigError:
            pass  # load_for_reload logged it; the old config keeps serving

    async def reload(self) -> dict[str, Any]:
        if self.config_path is None:
            return {"reloaded": False, "reason": "no config file (started from flags)"}
        systemd.reloading()
        self.config, kept = load_for_reload(self.config, self.config_path)
        replies = await self._broadcast({"cmd": "reload"})
        failed = [r["error"] for r in replies if not r["ok"]]
        if failed:  # the file changed again between our read and theirs
            log.error("reload: %d workers refused: %s", len(failed), failed[0])
        log.info("reloaded %s in %d workers", self.config_path, len(replies) - len(failed))
        systemd.notify("READY=1", "STATUS=reloaded")
        return {"reloaded": not failed, "restart_needed": kept, "workers": len(replies) - len(failed),
                **({"error": failed[0]} if failed else {})}

    # ---- stop ----
    async def stop(self) -> None:
        self.closing = True
        systemd.notify("STOPPING=1")
        log.info("stopping %d workers (drain up to %gs)", len(self.workers), self.config.server.drain_timeout)
        for timer in self.timers.values():
            timer.cancel()
        for task in [*self.tasks, *([self.beating] if self.beating else [])]:
            task.cancel()
        if self.control is not None:
            self.control.close()
        if self.metrics_server is not None:
            self.metrics_server.close()
        for _scheme, sock in self.listeners:
            sock.close()  # the workers close their copies as they drain: then the port refuses
        self._signal_workers(signal.SIGTERM)
        deadline = time.monotonic() + self.config.server.drain_timeout + STOP_GRACE
        while any(w.alive for w in self.workers) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for w in self.workers:
            self._kill(w, "still running after drain_timeout")
            if w.process is not None:
                w.process.join(STOP_GRACE)
            w.close_channel()


async def supervise(config: Config, config_path: str | None) -> int:
    supervisor = Supervisor(config, config_path)
    try:
        await supervisor.start()
    except OSError as e:
        log.error("cannot start: %s", e)
        await supervisor.stop()
        return 1
    await supervisor.stopping.wait()
    await supervisor.stop()
    return 0
