"""The fleet's purge journal: what one purge is on a Redis stream, where a node stands in it, and what it must do
with what it read. Pure: no sockets, no clock (time is passed in), no redis import.

The journal is a Redis stream. Every entry is one purge command (every kind, hard or soft) with a sequence
number that a Lua script takes from a counter in the same atomic step as the ``XADD`` (``PUBLISH_SCRIPT``), so
the entries' numbers are contiguous: 1, 2, 3... A node's place in the journal is a ``Position``: the id and
number of the last entry it applied. From that number alone a node can tell that it missed something:

- the next entry it reads must carry ``seq + 1``; anything else means entries between were trimmed away
  (``XADD ... MAXLEN ~``, ``XTRIM``);
- a counter above ``seq`` with nothing left to read after the node's id means the same (trimmed to the end);
- a counter below ``seq``, or none at all while the node has applied entries, means Redis lost the journal (a
  restart without persistence, ``FLUSHALL``, another Redis behind the same URL).

Any of these is a **gap**. A node in a gap cannot know which objects were purged, so it marks everything it
stores stale (a soft purge of everything: revalidated with the origin, not refetched) and takes the journal's
current end as its position. The same holds when a node's position is unknown while its cache holds objects (a
persisted cache and Redis unreachable at start, or a cache filled before ``[fleet]`` was configured).

The counter alone can be lost while the stream stays (evicted, ``DEL``, a partial restore). That is no gap: the
entries still carry their numbers, so the counter is **re-seeded** from the newest entry that has a readable one,
only if it is still missing or unreadable (``RESEED``, the same step that opens ``PUBLISH_SCRIPT``), and the node
reads again. A journal's end is the counter when there is one, never a number an entry claims: a forged entry can't
make a node stand ahead of the counter and find a gap on every read.

Every field of an entry is parsed defensively: an entry that is not ours (a missing field, ``seq abc``, a purge that
is not JSON or not a purge the control socket would take) is skipped and logged, never raised; its number, if it
has none, is no one's, so the entries around it still run on. Whatever the cause, the same trouble twice in a row
(a gap straight after a gap, a re-seed after a re-seed) makes the node wait ``TROUBLE_BACKOFF`` before it looks
again: a journal that stays broken costs one resync per backoff step, never a hot loop.

Replay is at least once: a node records its position after applying, so a crash in between applies one purge
twice, which removes nothing that a purge issued then would not remove.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from edgeproxy.cache.purge import PurgeAll
from edgeproxy.control.protocol import PurgeCommand, encode_request, parse_request, purge_request

# seed(stream, counter): a counter that is missing or not a plain number is set from the newest of the stream's last
# 16 entries whose seq is one (0 when none is): SET ... NX, except that a counter INCR can't count on is replaced
# too. Run inside a script, so no publish can come between the read and the SET.
_SEED = """
local function seed(stream, key)
  local counter = redis.call('GET', key)
  if counter and string.match(counter, '^[1-9]%d*$') and #counter <= 18 or counter == '0' then return counter end
  local base = '0'
  for _, entry in ipairs(redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 16)) do
    local fields = entry[2]
    for i = 1, #fields - 1, 2 do
      if fields[i] == 'seq' and string.match(fields[i + 1], '^[1-9]%d*$') and #fields[i + 1] <= 18 then
        base = fields[i + 1]
      end
    end
    if base ~= '0' then break end
  end
  redis.call('SET', key, base)
  return base
end
"""
# KEYS[1] the stream, KEYS[2] its counter. Returns the counter, re-seeded if it had to be.
RESEED_SCRIPT = _SEED + "return seed(KEYS[1], KEYS[2])\n"
# KEYS as RESEED_SCRIPT's; ARGV: approximate MAXLEN, the purge (JSON), the publishing node. One script, so the number
# and the entry are one atomic step: no reader can see number n+1 before n, and a lost counter never restarts at 1.
PUBLISH_SCRIPT = _SEED + """
seed(KEYS[1], KEYS[2])
local seq = redis.call('INCR', KEYS[2])
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'seq', seq, 'purge', ARGV[2], 'node', ARGV[3])
return {id, seq}
"""
ZERO_ID = "0-0"
MAX_DIGITS = 18  # a seq or counter longer than this is not one INCR made (2**63 has 19 digits)
MAX_NAME = 256  # a publishing node's name as logged


# What a node does when it can't know what a purge removed (a gap, an entry it can't apply): every object stale.
EVERYTHING_STALE = PurgeCommand(selector=PurgeAll(), soft=True, kind="all")


class JournalError(ValueError):
    """An entry on the stream that is not one of ours (written by hand, or by another program)."""


class TooManyWaits(RuntimeError):
    """A ``fleet_wait`` refused before anything was published: ``MAX_WAITS`` are in progress on this node."""


MAX_WAITS = 16  # concurrent --fleet-wait purges on one node; each polls the fleet's records until its deadline


def admit_wait(in_progress: int) -> None:
    """Refuse one more fleet wait when ``MAX_WAITS`` are in progress (checked before the purge is published)."""
    if in_progress >= MAX_WAITS:
        raise TooManyWaits(f"fleet_wait: {in_progress} purges are waiting for the fleet on this node already (at "
                           f"most {MAX_WAITS}); nothing was purged: try again, or purge without waiting")


@dataclass(frozen=True, slots=True)
class Position:
    """The last entry a node applied: its stream id and sequence number (``0-0``, 0: none yet)."""

    id: str = ZERO_ID
    seq: int = 0

    def pack(self) -> bytes:
        return f"{self.id} {self.seq}".encode("ascii")

    @classmethod
    def unpack(cls, data: bytes | None) -> Position | None:
        """The position ``pack`` wrote, or None for a missing or unreadable record (then the position is unknown)."""
        if not data:
            return None
        try:
            entry_id, seq = bytes(data).decode("ascii").split(" ")
            return cls(entry_id, int(seq)) if parse_id(entry_id) and int(seq) >= 0 else None
        except ValueError:
            return None


@dataclass(frozen=True, slots=True)
class Record:
    """One purge read from the stream."""

    id: str
    seq: int
    command: PurgeCommand
    node: str  # who published it
    instead: str | None = None  # why ``command`` stands in for a purge this node can't apply (EVERYTHING_STALE)

    @property
    def position(self) -> Position:
        return Position(self.id, self.seq)


def parse_id(entry_id: str) -> tuple[int, int]:
    """A stream id ``MS-SEQ`` as two integers; ValueError for anything else."""
    ms, sep, seq = entry_id.partition("-")
    if not sep or not ms.isdigit() or not seq.isdigit():
        raise ValueError(f"not a stream id: {entry_id!r}")
    return int(ms), int(seq)


def id_ms(entry_id: str) -> int:
    """When Redis added the entry: the id's milliseconds since the epoch (Redis's clock)."""
    return parse_id(entry_id)[0]


# --- entries ---------------------------------------------------------------------------------------------


def encode_purge(command: PurgeCommand) -> str:
    """The ``purge`` field of a stream entry: the command as the control protocol's JSON request."""
    return json.dumps(purge_request(command), separators=(",", ":"), sort_keys=True)


def decode_record(entry_id: str, fields: Mapping[str, str]) -> Record:
    """A stream entry as a Record; JournalError when it is not a purge this module wrote.

    The purge is parsed by the control protocol's own grammar, so an entry can ask nothing that the control socket
    would refuse (an unknown kind, a bad regex). A regex purge this node can't compile (a pattern an older node
    published, in syntax RE2 lacks) still purged something on its publisher: it becomes EVERYTHING_STALE here, so no
    object it meant is served as it was.
    """
    seq = None
    try:
        parse_id(entry_id)
        seq = parse_seq(fields.get("seq"))
        if seq is None:
            raise ValueError(f"seq: expected a number from 1, got {fields.get('seq')!r:.40}")
        command = parse_request(encode_request(json.loads(fields["purge"])).rstrip(b"\n"))
    except (KeyError, ValueError, TypeError, AttributeError) as exc:  # ProtocolError, JSONDecodeError: ValueErrors
        if seq is not None and _regex_purge(fields.get("purge")):
            return Record(entry_id, seq, EVERYTHING_STALE, str(fields.get("node", "?"))[:MAX_NAME],
                          instead=f"its regex can't be applied here ({exc})")
        raise JournalError(f"stream entry {entry_id}: not an edgeproxy purge: {exc}") from None
    if not isinstance(command, PurgeCommand):
        raise JournalError(f"stream entry {entry_id}: not an edgeproxy purge")
    return Record(entry_id, seq, command, str(fields.get("node", "?"))[:MAX_NAME])


def _regex_purge(raw: object) -> bool:
    """Whether an entry's ``purge`` field is a regex purge (whatever its pattern)."""
    try:
        purge = json.loads(raw) if isinstance(raw, str) else None
    except ValueError:
        return False
    return isinstance(purge, dict) and purge.get("kind") == "regex"


def parse_seq(value: object) -> int | None:
    """An entry's ``seq`` or the counter: a plain decimal number from 1 (no sign, space, ``_`` or non-ASCII digit,
    which ``int`` would take), else None."""
    if not isinstance(value, str) or not 0 < len(value) <= MAX_DIGITS or not value.isascii() or not value.isdigit():
        return None
    return int(value) or None


def counter_value(value: object) -> int | None:
    """The counter ``S:seq`` as read; None when it is missing or unreadable (then it is re-seeded)."""
    return 0 if value == "0" else parse_seq(value)


def encode_outbox(commands: Sequence[PurgeCommand]) -> bytes:
    """Purges applied here while Redis was unreachable, as kept with the cache until they are published."""
    return json.dumps([encode_purge(c) for c in commands]).encode()


def decode_outbox(data: bytes | None) -> list[PurgeCommand]:
    """What ``encode_outbox`` kept; an unreadable record or item is dropped (it was applied here already)."""
    try:
        items = json.loads(data) if data else []
    except ValueError:
        return []
    commands = []
    for item in items if isinstance(items, list) else []:
        try:
            command = parse_request(encode_request(json.loads(item)).rstrip(b"\n"))
        except (ValueError, TypeError):
            continue
        if isinstance(command, PurgeCommand):
            commands.append(command)
    return commands


# --- following the journal --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Apply:
    """Apply these records, in order; the position is then the last one's."""

    records: tuple[Record, ...]


@dataclass(frozen=True, slots=True)
class CaughtUp:
    """Nothing to apply: the node's position is the journal's end."""


@dataclass(frozen=True, slots=True)
class Gap:
    """Entries were lost to this node: mark everything stale, then stand at ``end``."""

    reason: str
    end: Position


@dataclass(frozen=True, slots=True)
class Reseed:
    """The counter is lost (or unreadable) but the stream holds entries: re-seed it (``RESEED_SCRIPT``), read again."""


Step = Apply | CaughtUp | Gap | Reseed


def end_position(last: Sequence[tuple[str, Mapping[str, str]]], counter: int | None) -> Position:
    """The journal's end from the stream's newest entry (``last``: none or one) and the counter: the newest id with
    the counter's number. Without a counter, the entry's own number if it has a readable one, else 0."""
    entry_id = last[0][0] if last else ZERO_ID
    if counter is not None:
        return Position(entry_id, counter)
    return Position(entry_id, (parse_seq(last[0][1].get("seq")) or 0) if last else 0)


def follow(position: Position, records: Sequence[Record], counter: int | None, end: Position) -> Step:
    """What a node at ``position`` does with ``records`` (the entries after it, in order, as one atomic read also
    gave the counter and the journal's end, ``end_position``)."""
    if counter is None and end.id != ZERO_ID:  # what runs on from the position is safe to apply without it
        run = contiguous(position, records)
        return Apply(run) if run else Reseed()
    if counter is not None:  # the script numbers every entry as it counts it: one past the counter is not ours
        records = [r for r in records if r.seq <= counter]
    if counter is None and position.seq > 0:
        return Gap("the journal is gone from Redis (restarted without persistence, or flushed)", end)
    if counter is not None and counter < position.seq:
        return Gap(f"the journal was recreated (its counter is {counter}, this node applied up to "
                   f"{position.seq})", end)
    if records:
        if records[0].seq != position.seq + 1:
            return Gap(f"entries {position.seq + 1}-{records[0].seq - 1} were trimmed from the stream before this "
                       "node read them", end)
        return Apply(contiguous(position, records))
    if counter is not None and counter > position.seq:
        return Gap(f"entries {position.seq + 1}-{counter} were trimmed from the stream before this node read them",
                   end)
    return CaughtUp()


def contiguous(position: Position, records: Sequence[Record]) -> tuple[Record, ...]:
    """The records whose numbers run on from ``position`` without a hole: what a node may apply from any read,
    even one that did not also give the counter (a blocking read that only woke it up)."""
    run: list[Record] = []
    for record in records:
        if record.seq != position.seq + 1 + len(run):
            break
        run.append(record)
    return tuple(run)


def start_position(kept: Position | None, stored_objects: int, end: Position) -> Position | Gap:
    """Where a node starts reading: its kept position, else the journal's end, unless it holds objects that a purge
    it never saw may concern (then a Gap)."""
    if kept is not None:
        return kept
    if stored_objects:
        return Gap("no journal position was kept with the cache's objects", end)
    return end


# --- the fleet's view ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NodeView:
    """One node as the fleet's records show it."""

    name: str
    alive: bool
    applied: Position
    applied_at: float  # the node's clock, epoch seconds
    behind: int  # entries published that it has not applied
    lag: float  # seconds since the oldest of them was published (0 when caught up)


def applied_value(position: Position, now: float) -> str:
    """A node's entry in the fleet's ``applied`` hash."""
    return f"{position.id} {position.seq} {now:.6f}"


def parse_applied(value: str) -> tuple[Position, float]:
    """A node's ``applied`` value; one that can't be read counts as nothing applied, never seen (0.0)."""
    try:
        entry_id, seq, at = value.split(" ")
        parse_id(entry_id)
        when = float(at)
    except ValueError:
        return Position(), 0.0
    number = 0 if seq == "0" else parse_seq(seq)
    return (Position(entry_id, number), when) if number is not None and math.isfinite(when) else (Position(), 0.0)


def node_view(name: str, value: str | None, alive: bool, counter: int, oldest_unapplied: str | None,
              redis_now_ms: int) -> NodeView:
    """A node's row from its ``applied`` value; ``oldest_unapplied`` is the id of the first entry after its
    position, when there is one (its age is the node's lag)."""
    position, at = parse_applied(value) if value else (Position(), 0.0)
    behind = max(counter - position.seq, 0)
    lag = max(redis_now_ms - id_ms(oldest_unapplied), 0) / 1000 if behind and oldest_unapplied else 0.0
    return NodeView(name, alive, position, at, behind, lag)


def forgotten(views: Sequence[NodeView], now: float, after: float) -> list[str]:
    """Nodes down and silent for longer than ``after`` seconds (by their last record): dropped from the fleet's view,
    so that a node retired for good does not stay listed as down forever. One that comes back joins again."""
    return sorted(v.name for v in views if not v.alive and now - v.applied_at > after)


def pending(views: Sequence[NodeView], seq: int) -> list[str]:
    """The live nodes that have not yet applied entry ``seq``: what a ``--fleet-wait`` still waits for."""
    return sorted(v.name for v in views if v.alive and v.applied.seq < seq)


def down(views: Sequence[NodeView], seq: int) -> list[str]:
    """The nodes without a heartbeat that have not applied entry ``seq``: not waited for (they replay it from the
    journal before they serve again), but named, so that a wait does not pass them over in silence."""
    return sorted(v.name for v in views if not v.alive and v.applied.seq < seq)


# --- pacing -----------------------------------------------------------------------------------------------

SECONDS = 1.0
# After the same trouble twice in a row (a gap, a re-seed): how long the node waits before it reads again.
TROUBLE_BACKOFF = (0.5 * SECONDS, 1 * SECONDS, 2 * SECONDS, 5 * SECONDS, 10 * SECONDS, 30 * SECONDS)
# A --fleet-wait reads the fleet's records after these pauses, then every last one until its deadline.
WAIT_POLL = (0.005 * SECONDS, 0.01 * SECONDS, 0.02 * SECONDS, 0.05 * SECONDS, 0.1 * SECONDS, 0.25 * SECONDS)


def trouble_delay(in_a_row: int) -> float:
    """The pause before reading again after ``in_a_row`` troubles in a row (1: none yet, the first is taken at once)."""
    return 0.0 if in_a_row < 2 else TROUBLE_BACKOFF[min(in_a_row - 2, len(TROUBLE_BACKOFF) - 1)]


def wait_poll(polls: int, left: float) -> float:
    """The pause before a fleet wait's next look, after ``polls`` looks, with ``left`` seconds to its deadline."""
    return max(min(WAIT_POLL[min(polls, len(WAIT_POLL) - 1)], left), 0.0)
