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

Replay is at least once: a node records its position after applying, so a crash in between applies one purge
twice, which removes nothing that a purge issued then would not remove.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from edgeproxy.control.protocol import PurgeCommand, encode_request, parse_request, purge_request

# KEYS[1] the stream, KEYS[2] its counter; ARGV: approximate MAXLEN, the purge (JSON), the publishing node.
# One script, so the number and the entry are one atomic step: no reader can see number n+1 before n.
PUBLISH_SCRIPT = """
local seq = redis.call('INCR', KEYS[2])
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'seq', seq, 'purge', ARGV[2], 'node', ARGV[3])
return {id, seq}
"""
ZERO_ID = "0-0"


class JournalError(ValueError):
    """An entry on the stream that is not one of ours (written by hand, or by another program)."""


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
    would refuse (an unknown kind, a bad regex).
    """
    try:
        parse_id(entry_id)
        seq = int(fields["seq"])
        command = parse_request(encode_request(json.loads(fields["purge"])).rstrip(b"\n"))
    except (KeyError, ValueError, TypeError) as exc:  # ProtocolError and JSONDecodeError are ValueErrors
        raise JournalError(f"stream entry {entry_id}: not an edgeproxy purge: {exc}") from None
    if not isinstance(command, PurgeCommand) or seq < 1:
        raise JournalError(f"stream entry {entry_id}: not an edgeproxy purge")
    return Record(entry_id, seq, command, fields.get("node", "?"))


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


Step = Apply | CaughtUp | Gap


def follow(position: Position, records: Sequence[Record], counter: int | None, end: Position) -> Step:
    """What a node at ``position`` does with ``records`` (the entries after it, in order, as one atomic read also
    gave the counter and the journal's last entry ``end``)."""
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
    entry_id, seq, at = value.split(" ")
    parse_id(entry_id)
    return Position(entry_id, int(seq)), float(at)


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
