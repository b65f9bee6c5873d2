"""This node's link to the fleet: purges published to and applied from a Redis stream (``[fleet]``).

Owns: the Redis connections (one for commands, one for the blocking read), publishing a purge (``PUBLISH_SCRIPT``),
following the journal from the node's position and applying what it reads through the injected ``apply``, keeping
the position with the cache's objects (the shared store's notes) and in the fleet's ``applied`` hash, the liveness
key, ``--fleet-wait``, and the figures (its lag and the fleet's). What an entry means and what to do with a read is
``edgeproxy.fleet.journal``; how a purge is applied is the backend's.

Rules kept here:
- Every purge, this node's own included, is applied as it is read from the stream, in the stream's order: one
  path, so every node applies the same purges in the same order. The control reply waits for this node's own
  application of the entry (the same promise as without a fleet: acknowledged once applied here).
- ``start`` runs before the node serves: with a persisted cache it replays what the node missed since its position
  (or, in a gap or with Redis unreachable, marks everything stale) before a single request can hit a purged object.
- Redis down never stops serving: a purge given meanwhile is applied here at once and published when Redis
  answers again (kept with the shared store's objects, so a restart meanwhile loses nothing; in memory for a cache of
  this process alone, which the reply says); the follow loop retries with backoff and resumes from its position.
  Nothing here raises into a request.
- The Redis URL's password and the password file's content are never logged (``redact_url``); ``rediss://`` checks
  the certificate and the host name, set here rather than left to the redis-py version's default.
- Nothing here spins or hangs: the same trouble twice in a row (a gap, a lost counter) waits
  ``journal.trouble_delay``; a ``--fleet-wait`` polls at ``journal.wait_poll`` and at most ``journal.MAX_WAITS`` run
  at once (one more is refused before it is published); ``stop`` returns within about ``STOP_WAIT`` even when
  redis-py swallows a cancel.

Keys, all named after ``[fleet] stream`` S: the stream S, its counter ``S:seq``, the hash ``S:applied`` (node ->
"id seq time"), the set ``S:nodes`` and one ``S:alive:NODE`` key per node that expires ``ALIVE_FOR`` after the
node's last heartbeat (liveness by Redis's clock, not the nodes'). A node down for ``FORGET_AFTER`` is dropped from
``S:nodes`` and ``S:applied`` by whichever node's heartbeat sees it first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from edgeproxy.config import FleetConfig, redact_url
from edgeproxy.control.protocol import PurgeCommand
from edgeproxy.fleet import journal
from edgeproxy.fleet.journal import EVERYTHING_STALE, Apply, CaughtUp, Gap, NodeView, Position, Record, Reseed

log = logging.getLogger("edgeproxy.fleet")

SECONDS = 1.0
HEARTBEAT = 1 * SECONDS
ALIVE_FOR = 3 * SECONDS  # a node silent this long is not waited for
BLOCK = 1 * SECONDS  # one blocking read; then the counter is checked (a trim to the end shows only there)
BACKOFF = (0.1, 0.2, 0.5, 1.0, 2.0)
STOP_WAIT = 2 * SECONDS  # stop() gives its tasks this long to end (cancelled again every STOP_POLL), then goes on
STOP_POLL = 0.1 * SECONDS
BATCH = 256
KEPT_RESULTS = 1024  # applied entries' results, for a publisher that reads its reply after the follower applied it
OUTBOX_LIMIT = 10_000
FORGET_AFTER = 7 * 86400.0  # a node down this long is dropped from S:nodes and S:applied (it joins again if it returns)

Applier = Callable[[PurgeCommand], Awaitable[dict[str, Any]]]
LINK_ERRORS = (RedisError, OSError, TimeoutError)


class Notes(Protocol):
    """Where the position is kept with the objects (the shared store)."""

    def read_note(self, name: str) -> bytes | None: ...
    def write_note(self, name: str, value: bytes) -> None: ...




class FleetMember:
    def __init__(self, config: FleetConfig, apply: Applier, *, notes: Notes | None,
                 stored_objects: Callable[[], int]) -> None:
        assert config.redis is not None
        self.config = config
        self.node = config.node_name
        self.apply_command = apply
        self.notes = notes
        self.stored_objects = stored_objects
        self.where = redact_url(config.redis)
        s = config.stream
        self.keys = {"stream": s, "seq": f"{s}:seq", "applied": f"{s}:applied", "nodes": f"{s}:nodes",
                     "alive": f"{s}:alive:{self.node}"}
        self.note_name = f"fleet:{s}"
        self.outbox_name = f"fleet-outbox:{s}"
        self.position: Position | None = None  # None: unknown (see journal.start_position)
        self.connected = False
        self.caught_up_at = time.monotonic()
        self.waiters: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.results: OrderedDict[int, dict[str, Any]] = OrderedDict()
        self.outbox: list[PurgeCommand] = []
        self.view: list[NodeView] = []
        self.counts = {"published": 0, "applied": 0, "resyncs": 0, "link_failures": 0, "unpublished": 0,
                       "reseeds": 0, "waits_refused": 0}
        self.troubles = 0  # gaps and re-seeds in a row (journal.trouble_delay)
        self.waits = 0  # fleet waits in progress (journal.admit_wait)
        self.stopping = False
        self.last_resync: str | None = None
        self.replay: tuple[int, float] = (0, 0.0)  # purges applied while starting, and the milliseconds it took
        self.tasks: list[asyncio.Task[None]] = []
        self.redis: Any = None
        self.reader: Any = None
        self._publish: Any = None
        self._bad_entries: set[str] = set()
        self.read_to = journal.ZERO_ID  # the newest entry id read, skipped ones included: where a blocking read starts

    # ---- start and stop ----
    async def start(self) -> None:
        """Connect and catch up before the node serves. Redis unreachable: mark what is stored stale and go on."""
        password = self._password()
        self.redis = self._client(password, self.config.wait_timeout + BLOCK)
        self.reader = self._client(password, BLOCK + self.config.wait_timeout)
        self._publish = self.redis.register_script(journal.PUBLISH_SCRIPT)
        self._reseed = self.redis.register_script(journal.RESEED_SCRIPT)
        self.position = Position.unpack(self.notes.read_note(self.note_name)) if self.notes else None
        self.outbox = journal.decode_outbox(self.notes.read_note(self.outbox_name)) if self.notes else []
        if self.outbox:
            log.info("fleet: %d purges applied here while Redis was unreachable are still to be published",
                     len(self.outbox))
        started, applied = time.monotonic(), self.counts["applied"]
        try:
            await self._catch_up()  # bounded by the sockets' timeouts, not as a whole: a long replay must finish
            self.replay = (self.counts["applied"] - applied, round((time.monotonic() - started) * 1000, 1))
            log.info("fleet: node %s follows %s on %s at entry %s; replayed %d purges in %.1f ms", self.node,
                     self.config.stream, self.where, self.position.seq if self.position else "?", *self.replay)
        except LINK_ERRORS as exc:
            self._link_failed(exc)
            if self.position is not None or self.stored_objects():
                log.warning("fleet: Redis at %s is unreachable at start (%s): every stored object is marked stale "
                            "until it answers", self.where, _reason(exc))
                await self._resync("Redis unreachable at start", self.position)
        self.tasks = [asyncio.create_task(self._follow()), asyncio.create_task(self._heartbeat())]

    async def stop(self) -> None:
        """Bounded: redis-py may swallow a cancel that lands mid-command, so the tasks are cancelled again until they
        end or STOP_WAIT passes (the loops also see ``stopping``); the clients are closed either way."""
        self.stopping = True
        pending = set(self.tasks)
        deadline = time.monotonic() + STOP_WAIT
        while pending and time.monotonic() < deadline:
            for task in pending:
                task.cancel()
            pending = (await asyncio.wait(pending, timeout=STOP_POLL))[1]
        if pending:
            log.warning("fleet: %d tasks did not end within %gs of stopping; closing the Redis link anyway",
                        len(pending), STOP_WAIT)
        for future in self.waiters.values():
            future.cancel()
        for client in (self.redis, self.reader):
            if client is not None:
                with contextlib.suppress(*LINK_ERRORS):
                    await asyncio.wait_for(client.aclose(), STOP_WAIT)

    def _password(self) -> str | None:
        if self.config.password_file is None:
            return None
        try:
            with open(self.config.password_file, encoding="utf-8") as f:
                return f.read().strip()
        except OSError as exc:
            raise OSError(f"fleet.password_file {self.config.password_file}: {exc.strerror}") from None

    def _client(self, password: str | None, read_timeout: float) -> Any:
        extra: dict[str, Any] = {"password": password} if password is not None else {}
        if self.config.redis.lower().startswith("rediss:"):  # explicit, whatever the installed redis-py defaults to
            extra.update(ssl_cert_reqs="required", ssl_check_hostname=True)
        # encoding_errors: bytes that are not UTF-8 in an entry make it unreadable (skipped), not the read an error
        return aioredis.Redis.from_url(
            self.config.redis, decode_responses=True, encoding_errors="replace",
            socket_connect_timeout=self.config.connect_timeout,
            socket_timeout=read_timeout, retry=Retry(NoBackoff(), 0), client_name=f"edgeproxy:{self.node}", **extra)

    # ---- following the journal ----
    async def _follow(self) -> None:
        failures = 0
        while not self.stopping:
            try:
                await self._catch_up()
                if self.troubles > 1:  # the same trouble again: look again later, not at once
                    await asyncio.sleep(journal.trouble_delay(self.troubles))
                    continue
                await self._flush_outbox()
                failures = 0
                await self._wait_for_entries()
            except LINK_ERRORS as exc:
                self._link_failed(exc)
                await asyncio.sleep(BACKOFF[min(failures, len(BACKOFF) - 1)])
                failures += 1
            except Exception:  # a bug must not end the loop: purges would stop arriving for good
                log.exception("fleet: following the journal failed; retrying")
                await asyncio.sleep(BACKOFF[-1])

    async def _catch_up(self) -> None:
        """Read and apply until the node stands at the journal's end (one atomic read per batch)."""
        while True:
            records, counter, end = await self._read_after(self.position or Position())
            if not self.connected:
                await self._beat()  # live at once: a --fleet-wait issued now must wait for this node too
                self.connected = True
                log.info("fleet: connected to %s", self.where)
            if self.position is None:
                start = journal.start_position(None, self.stored_objects(), end)
                if isinstance(start, Gap):
                    await self._resync(start.reason, start.end)
                else:
                    await self._advance(start, None)
                continue
            step = journal.follow(self.position, records, counter, end)
            self.troubles = self.troubles + 1 if isinstance(step, Gap | Reseed) else 0
            match step:
                case Apply(records=run):
                    await self._apply_all(run)
                case Gap(reason=reason, end=end):
                    await self._resync(reason, end)
                case Reseed():
                    seeded = await self._reseed(keys=[self.keys["stream"], self.keys["seq"]])
                    self.counts["reseeds"] += 1
                    log.warning("fleet: the journal's counter %s was lost; re-seeded at %s from the stream's newest "
                                "entry", self.keys["seq"], seeded)
                case CaughtUp():
                    self.caught_up_at = time.monotonic()
                    return
            if self.troubles > 1:  # twice in a row: the follow loop backs off (start() serves, all marked stale)
                return

    async def _read_after(self, position: Position) -> tuple[list[Record], int | None, Position]:
        k = self.keys
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xrange(k["stream"], min=f"({position.id}", max="+", count=BATCH)
            pipe.get(k["seq"])
            pipe.xrevrange(k["stream"], max="+", min="-", count=1)
            entries, counter, last = await pipe.execute()
        counter = journal.counter_value(counter)
        return self._decode(entries), counter, journal.end_position(last, counter)

    def _decode(self, entries: list[tuple[str, dict[str, str]]]) -> list[Record]:
        records = []
        for entry_id, fields in entries:
            self.read_to = max(self.read_to, entry_id, key=journal.parse_id)
            try:
                records.append(journal.decode_record(entry_id, fields))
            except journal.JournalError as exc:
                if entry_id not in self._bad_entries:  # once per entry: it is read again on every pass
                    self._bad_entries.add(entry_id)
                    log.error("fleet: %s; skipped", exc)
        return records

    async def _wait_for_entries(self) -> None:
        """Block until entries arrive after the position (or BLOCK passes); apply those that run on from it."""
        position = self.position or Position()
        # From the newest entry read, not the position: an entry that is skipped (not ours) must not end every block.
        start = max(position.id, self.read_to, key=journal.parse_id)
        reply = await self.reader.xread({self.keys["stream"]: start}, count=BATCH, block=int(BLOCK * 1000))
        if reply and self.position == position:
            run = journal.contiguous(position, self._decode(reply[0][1]))
            await self._apply_all(run)

    async def _apply_all(self, records: tuple[Record, ...]) -> None:
        for record in records:
            if record.instead is not None:
                log.warning("fleet: entry %s from %s: %s; every stored object is marked stale instead", record.id,
                            record.node, record.instead)
            result = await self._apply(record.command)
            self.counts["applied"] += 1
            await self._advance(record.position, result)

    async def _apply(self, command: PurgeCommand) -> dict[str, Any]:
        try:
            return await self.apply_command(command)
        except Exception as exc:  # a purge this node can't apply must not stall the journal for the others
            log.exception("fleet: applying a %s purge failed", command.kind)
            if command is not EVERYTHING_STALE:  # it may have meant anything: nothing is served as it was
                log.warning("fleet: every stored object is marked stale instead")
                return {**await self._apply(EVERYTHING_STALE), "error": str(exc)}
            return {"purged": 0, "error": str(exc)}

    async def _resync(self, reason: str, end: Position | None) -> None:
        log.warning("fleet: %s: every stored object is marked stale (revalidated on its next request)", reason)
        self.counts["resyncs"] += 1
        self.last_resync = reason
        result = await self._apply(EVERYTHING_STALE)
        if end is not None:
            await self._advance(end, result)

    async def _advance(self, position: Position, result: dict[str, Any] | None) -> None:
        self.position = position
        if self.notes is not None:
            self.notes.write_note(self.note_name, position.pack())
        for seq in [s for s in self.waiters if s <= position.seq]:
            future = self.waiters.pop(seq)
            if not future.done():
                future.set_result(result if seq == position.seq and result is not None else {"purged": 0})
        if result is not None:
            self.results[position.seq] = result
            while len(self.results) > KEPT_RESULTS:
                self.results.popitem(last=False)
        if self.connected:
            await self.redis.hset(self.keys["applied"], self.node, journal.applied_value(position, time.time()))

    def _link_failed(self, exc: BaseException) -> None:
        self.counts["link_failures"] += 1
        if self.connected:
            log.warning("fleet: lost Redis at %s (%s); serving on and retrying", self.where, _reason(exc))
        self.connected = False

    # ---- publishing ----
    async def purge(self, command: PurgeCommand, wait: float | None = None) -> dict[str, Any]:
        """Publish ``command`` and answer once this node applied it (and, with ``wait``, every live node)."""
        if wait is None:
            return await self._purge(command, None)
        try:
            journal.admit_wait(self.waits)
        except journal.TooManyWaits:
            self.counts["waits_refused"] += 1
            raise
        self.waits += 1
        try:
            return await self._purge(command, wait)
        finally:
            self.waits -= 1

    async def _purge(self, command: PurgeCommand, wait: float | None) -> dict[str, Any]:
        started = time.monotonic()
        try:
            entry_id, seq = await self._publish_one(command)
        except LINK_ERRORS as exc:
            self._link_failed(exc)
            return await self._purge_alone(command, exc)
        fleet: dict[str, Any] = {"id": entry_id, "seq": seq, "node": self.node}
        result = self.results.get(seq)
        if result is None:
            future = self.waiters.setdefault(seq, asyncio.get_running_loop().create_future())
            try:
                result = await asyncio.wait_for(asyncio.shield(future), self.config.wait_timeout)
            except TimeoutError:
                raise TimeoutError(f"published as entry {seq} but not applied on this node within "
                                   f"{self.config.wait_timeout:g}s (is the fleet link up? see the log)") from None
        if wait is not None:
            fleet.update(await self._wait_fleet(seq, wait, started))
        return {**result, "fleet": fleet}

    async def _publish_one(self, command: PurgeCommand) -> tuple[str, int]:
        keys = [self.keys["stream"], self.keys["seq"]]
        entry_id, seq = await self._publish(keys=keys, args=[self.config.maxlen, journal.encode_purge(command),
                                                              self.node])
        self.counts["published"] += 1
        return entry_id, int(seq)

    async def _purge_alone(self, command: PurgeCommand, exc: BaseException) -> dict[str, Any]:
        result = await self._apply(command)
        self.counts["unpublished"] += 1
        if len(self.outbox) < OUTBOX_LIMIT:
            self.outbox.append(command)
            self._keep_outbox()
        kept = "" if self.notes is not None else " (unless this node restarts first: its cache is not kept)"
        return {**result, "fleet": {"published": False, "node": self.node, "error": (
            f"Redis at {self.where} is unreachable ({_reason(exc)}): applied on this node only; it is published "
            f"when Redis answers again{kept}")}}

    def _keep_outbox(self) -> None:
        """The outbox lives with the cache (a restart before Redis answers loses nothing); in memory without one."""
        if self.notes is not None:
            self.notes.write_note(self.outbox_name, journal.encode_outbox(self.outbox))

    async def _flush_outbox(self) -> None:
        while self.outbox:
            await self._publish_one(self.outbox[0])
            self.outbox.pop(0)
            self._keep_outbox()

    async def _wait_fleet(self, seq: int, timeout: float, started: float) -> dict[str, Any]:
        deadline = started + timeout
        polls = 0
        while True:
            views = await self._read_fleet()
            waiting = journal.pending(views, seq)
            if not waiting or time.monotonic() >= deadline:
                break
            await asyncio.sleep(journal.wait_poll(polls, deadline - time.monotonic()))
            polls += 1
        applied = sorted(v.name for v in views if v.applied.seq >= seq)
        return {"applied_on": applied, "pending": waiting, "down": journal.down(views, seq),
                "waited_ms": round((time.monotonic() - started) * 1000, 3)}

    # ---- the fleet's view ----
    async def _read_fleet(self) -> list[NodeView]:
        k = self.keys
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.smembers(k["nodes"])
            pipe.hgetall(k["applied"])
            pipe.get(k["seq"])
            pipe.time()
            names, applied, counter, (secs, micros) = await pipe.execute()
        names = sorted(names | set(applied))
        if not names:
            return []
        counter = journal.counter_value(counter) or 0
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.mget([f"{k['stream']}:alive:{name}" for name in names])
            for name in names:
                pos = journal.parse_applied(applied[name])[0] if name in applied else Position()
                pipe.xrange(k["stream"], min=f"({pos.id}", max="+", count=1)
            alive, *firsts = await pipe.execute()
        now_ms = int(secs) * 1000 + int(micros) // 1000
        return [journal.node_view(name, applied.get(name), alive[i] is not None, counter,
                                  first[0][0] if first else None, now_ms)
                for i, (name, first) in enumerate(zip(names, firsts, strict=True))]

    async def _beat(self) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.set(self.keys["alive"], "1", px=int(ALIVE_FOR * 1000))
            pipe.sadd(self.keys["nodes"], self.node)
            if self.position is not None:
                pipe.hset(self.keys["applied"], self.node, journal.applied_value(self.position, time.time()))
            await pipe.execute()

    async def _heartbeat(self) -> None:
        while not self.stopping:
            if self.connected:
                try:
                    await self._beat()
                    self.view = await self._read_fleet()
                    await self._forget(journal.forgotten(self.view, time.time(), FORGET_AFTER))
                except LINK_ERRORS:
                    pass  # the follow loop notices and reconnects
                except Exception:  # the heartbeat must outlive a bug: without it this node looks dead
                    log.exception("fleet: heartbeat failed")
            await asyncio.sleep(HEARTBEAT)

    async def _forget(self, names: list[str]) -> None:
        if names:
            log.info("fleet: forgetting nodes down for over %d days: %s", FORGET_AFTER // 86400, ", ".join(names))
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.srem(self.keys["nodes"], *names)
                pipe.hdel(self.keys["applied"], *names)
                await pipe.execute()
            self.view = [v for v in self.view if v.name not in names]

    # ---- figures ----
    def lag(self) -> float:
        """Seconds this node may be behind: 0 while it follows the journal, else since it was last caught up."""
        if self.connected and self.position is not None:
            mine = next((v for v in self.view if v.name == self.node), None)
            return mine.lag if mine is not None else 0.0
        return round(time.monotonic() - self.caught_up_at, 3)

    def stats(self) -> dict[str, Any]:
        alive = [v for v in self.view if v.alive]
        return {
            "node": self.node, "redis": self.where, "stream": self.config.stream, "connected": self.connected,
            "applied_seq": self.position.seq if self.position else None,
            "applied_id": self.position.id if self.position else None,
            "lag_seconds": self.lag(), "fleet_lag_seconds": max((v.lag for v in alive), default=0.0),
            "nodes_alive": len(alive), **self.counts, "outbox": len(self.outbox), "waits": self.waits,
            "last_resync": self.last_resync,
            "replayed_at_start": self.replay[0], "replay_ms": self.replay[1],
            "nodes": {v.name: {"alive": v.alive, "applied_seq": v.applied.seq, "behind": v.behind,
                               "lag_seconds": v.lag} for v in self.view},
        }


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
