"""The worker pool: ``[server] workers = N`` (N > 1) worker processes, the ``Backend`` of the supervisor's Node.

Owns: starting workers (``edgeproxy.workers.worker_main`` under multiprocessing "spawn": a fresh interpreter, so
no event loop, lock or half-written buffer is copied by fork) on the listening sockets the Node bound, restarting
one that dies, a private channel per worker (a socketpair speaking the control protocol's NDJSON lines), the
heartbeat, and answering purge/stats/reload/ping for all of them. The Node around it has the control socket, the
metrics listener, signals and systemd.

Never: serves a client request. With a shared cache (the default: edgeproxy/shared) it owns the host's store: it
opens and checks it before any worker starts, applies purges to it once, reports its figures, and frees the LMDB
reader slot of a worker that died and republishes the slot map's versions from the records (it may have died
between a commit and its publish); the workers read and write it. With ``[cache] shared = false`` each worker runs an
LRU of ``cache.size / N`` and the supervisor holds no cache (an object may then be fetched once per worker).

Rules kept here:
- ``start`` returns (and so the Node says READY=1) only once every worker answered a ping on its channel (a
  worker reads it only after it listens).
- A purge is acknowledged once applied: to the shared store (whose new versions make every worker's hot copies
  miss from then on), or, unshared, by every ready worker (``purged`` is the sum; a worker still starting has an
  empty cache, and one that dies or does not answer is killed and loses its cache: the purge holds without them).
- The Node validates a reload's file once; a bad one changes nothing. Workers then re-read the same file: the
  channel speaks the control protocol, whose ``reload`` carries no config.
- ``stats`` asks every worker and sums (metrics.merge), except the shared store's own figures (entries, bytes,
  evictions...), read from it once; /metrics sums the heartbeat snapshots (a ``stats``
  every HEARTBEAT), so a scrape is at most that old and costs the workers nothing. A dead worker's counters die
  with it: Prometheus sees a counter reset.
- ``healthy`` (the Node's WATCHDOG=1) only while no live worker has been silent for HANG_TIMEOUT; a worker that
  is gets SIGKILL and is restarted like any worker that dies, after BACKOFF.

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
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from typing import Any

from edgeproxy import metrics, purging
from edgeproxy.cache.purge import PurgeURL, site_purge_url
from edgeproxy.cache.store import StoreStats
from edgeproxy.config import Config
from edgeproxy.control import protocol
from edgeproxy.listeners import Listener, addresses
from edgeproxy.shared import layout
from edgeproxy.shared.store import SharedStore
from edgeproxy.sites import SiteTable
from edgeproxy.timers import Timers
from edgeproxy.workers import worker_main

log = logging.getLogger("edgeproxy.supervisor")

SECONDS = 1.0
HEARTBEAT = 1 * SECONDS
HANG_TIMEOUT = 10 * SECONDS
COMMAND_TIMEOUT = 60 * SECONDS  # above a regex purge's budget ([cache] regex_purge_budget: at most 30 s)
START_TIMEOUT = 30 * SECONDS
STOP_GRACE = 5 * SECONDS  # beyond drain_timeout, before SIGKILL
STABLE_AFTER = 10 * SECONDS  # a worker that lived this long starts its backoff afresh
BACKOFF = (0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
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


def _worker_row(w: Worker, shared: bool) -> dict[str, Any]:
    """One worker in the ``stats`` breakdown, from its latest snapshot (``entries`` only when it has a store of its
    own: with a shared one every worker would show the same count)."""
    snap = w.snapshot or {}
    requests = sum(snap["counters"]["requests"].values()) if snap else 0
    figures = [k for k in WORKER_FIGURES if not (shared and k == "entries")]
    return {"pid": w.process.pid if w.process else None, "ready": w.ready, "restarts": w.restarts,
            "requests": requests, **{k: snap.get(k, 0) for k in figures}}


class WorkerPool:
    """The ``Backend`` of a supervisor: N worker processes on the same listening sockets."""

    def __init__(self, config: Config, config_path: str | None) -> None:
        self.config = config
        self.config_path = config_path
        self.loop = asyncio.get_running_loop()
        self.workers = [Worker(i) for i in range(config.server.workers)]
        self.purges: dict[str, int] = {}  # purge commands by kind: each worker counts its share of one command
        self.purges_over_budget = 0  # regex purges of the shared store that ran out of their budget
        self.listeners: list[Listener] = []
        self.closing = False
        self.timers = Timers(self.loop)
        self.tasks: set[asyncio.Task[Any]] = set()
        self.beating: asyncio.Task[None] | None = None
        self.started = time.time()
        self.context = multiprocessing.get_context("spawn")
        # One store for the host: opened (created, checked) here before any worker opens it; purges and the store's
        # figures are answered from it, once, instead of by every worker.
        self.store: SharedStore | None = layout.open_owned(config) if config.shared_cache else None
        self.sites = SiteTable.build(config.sites)

    async def start(self, listeners: list[Listener]) -> None:
        self.listeners = listeners
        await asyncio.gather(*(self._spawn(w) for w in self.workers))
        if not all(w.ready for w in self.workers):
            raise OSError("a worker did not start (see its log lines above)")
        log.info("supervisor %d: %d workers", os.getpid(), len(self.workers))
        self.timers.every("heartbeat", HEARTBEAT, self._beat)

    def ready_status(self) -> str:
        return f"{len(self.workers)} workers serving on {', '.join(addresses(self.listeners))}"

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
        w.reader, w.writer = await asyncio.open_unix_connection(sock=parent, limit=protocol.CHANNEL_LIMIT)
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
        if self.store is not None:
            self.store.reader_check()  # the dead worker's LMDB reader slot, if it held one
        if self.closing:
            return
        if self.store is not None:
            # It may have died between a commit and publishing the versions it changed (shared/slotmap.py).
            self.store.republish()
        lived = time.monotonic() - w.started
        w.failures = 0 if lived >= STABLE_AFTER else w.failures + 1
        delay = BACKOFF[min(w.failures, len(BACKOFF) - 1)]
        w.restarts += 1
        log.error("worker %d (pid %d) exited with status %s after %.1fs; restarting in %gs",
                  w.index, process.pid, process.exitcode, lived, delay)
        self.timers.once(f"restart-{w.index}", delay, lambda: self._restart(w))

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
            self.beating = self.loop.create_task(self._collect(HANG_TIMEOUT))

    async def _collect(self, timeout: float) -> None:
        ready = [w for w in self.workers if w.ready]
        replies = await asyncio.gather(*(self._ask(w, {"cmd": "stats"}, timeout) for w in ready))
        for w, reply in zip(ready, replies, strict=True):
            if reply is not None and reply["ok"]:
                w.snapshot = reply

    def healthy(self) -> bool:
        now = time.monotonic()
        return all(not w.alive or now - w.last_reply < HANG_TIMEOUT + 2 * HEARTBEAT for w in self.workers)

    # ---- figures ----
    def figures(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """Counters and store stats summed over the ready workers' latest snapshots."""
        snaps = [w.snapshot for w in self.workers if w.ready and w.snapshot is not None]
        counters = metrics.merge([metrics.ProxyCounters().to_dict(), *(s["counters"] for s in snaps)])
        counters["purges"] = dict(self.purges)  # commands, not the sum of the workers' shares
        counters["purges_over_budget"] += self.purges_over_budget
        stores = [dict(s["store"]) for s in snaps]
        last_purge = max((s.pop("last_purge_at") or 0.0 for s in stores), default=0.0)
        store = metrics.merge([dataclasses.asdict(StoreStats(0, 0, 0)), *stores])
        store["last_purge_at"] = last_purge or None  # an epoch is not additive: the latest one
        if self.store is not None:  # one store: its own figures, with the reads and refusals each worker counted
            shared = dataclasses.asdict(self.store.stats())
            shared.update(hits=store["hits"], misses=store["misses"], not_stored=store["not_stored"])
            store = shared
        return counters, store

    def summary(self) -> dict[str, Any]:
        counters, store = self.figures()
        per_worker = {str(w.index): _worker_row(w, self.store is not None) for w in self.workers}
        return {**metrics.summarize(counters, store, self.started, time.time()), "workers": per_worker}

    def status(self) -> str:
        ready = sum(w.ready for w in self.workers)
        return f"{ready}/{len(self.workers)} workers, " + metrics.status_line(self.summary())

    # ---- answers ----
    async def purge(self, command: protocol.PurgeCommand) -> dict[str, Any]:
        self.purges[command.kind] = self.purges.get(command.kind, 0) + 1
        if self.store is not None:
            # Applied once to the one store; the versions it retires make every worker's hot copies miss from now.
            selector = command.selector
            if isinstance(selector, PurgeURL):
                selector = site_purge_url(self.sites, selector)
            # A walk (a regex) runs in steps off this loop, within its budget: the heartbeat and commands go on.
            result = await purging.purge(self.store, selector, command.soft, time.time(),
                                         self.config.cache.regex_purge_budget)
            self.purges_over_budget += "over_budget" in result
            return {**result, "workers": sum(w.ready for w in self.workers)}
        replies = await self._broadcast(protocol.purge_request(command))
        over = next((r["over_budget"] for r in replies if "over_budget" in r), None)  # each worker counted its own
        return {"purged": sum(r.get("purged", 0) for r in replies), "workers": len(replies),
                **({"over_budget": over} if over is not None else {})}

    async def stats(self) -> dict[str, Any]:
        await self._collect(COMMAND_TIMEOUT)
        return self.summary()

    def ping(self) -> dict[str, Any]:
        return {"workers": sum(w.ready for w in self.workers)}

    async def reload(self, config: Config) -> dict[str, Any]:
        self.config = config  # what a restarted worker starts with
        self.sites = SiteTable.build(config.sites)
        if self.store is not None:
            self.store.max_object_size = config.cache.max_object_size
            self.store.max_variants = config.cache.max_variants
        replies = await self._broadcast({"cmd": "reload"})
        failed = [r["error"] for r in replies if not r["ok"]]
        if failed:  # the file changed again between our read and theirs
            log.error("reload: %d workers refused: %s", len(failed), failed[0])
        return {"reloaded": not failed, "workers": len(replies) - len(failed),
                **({"error": failed[0]} if failed else {})}

    def reopen_logs(self) -> None:
        self._signal_workers(signal.SIGUSR1)

    def kept_store(self) -> SharedStore | None:
        return self.store

    def follow_journal(self, applied: Callable[[], int | None]) -> None:
        """Nothing to hand on: workers over a shared store read the position the fleet keeps in it; workers with
        caches of their own don't know it (their requests to cluster peers carry none)."""

    # ---- stop ----
    async def stop(self, drain_timeout: float) -> None:
        self.closing = True
        log.info("stopping %d workers (drain up to %gs)", len(self.workers), drain_timeout)
        self.timers.cancel_all()
        for task in [*self.tasks, *([self.beating] if self.beating else [])]:
            task.cancel()
        for _scheme, sock in self.listeners:
            sock.close()  # the workers close their copies as they drain: then the port refuses
        self._signal_workers(signal.SIGTERM)
        deadline = time.monotonic() + drain_timeout + STOP_GRACE
        while any(w.alive for w in self.workers) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for w in self.workers:
            self._kill(w, "still running after drain_timeout")
            if w.process is not None:
                w.process.join(STOP_GRACE)
            w.close_channel()
        if self.store is not None:
            self.store.close()
