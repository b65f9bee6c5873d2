"""The fleet's journal, without Redis: entries as the stream holds them, positions, and what a node does with a read
(apply, caught up, or a gap that marks everything stale)."""

from __future__ import annotations

import json

import pytest

from edgeproxy.cache.purge import PurgeAll, PurgeHost, PurgePrefix, PurgeRegex, PurgeTag, PurgeURL
from edgeproxy.control.protocol import PurgeCommand
from edgeproxy.fleet import journal
from edgeproxy.fleet.journal import (
    Apply,
    CaughtUp,
    Gap,
    JournalError,
    Position,
    Record,
    contiguous,
    decode_record,
    encode_purge,
    follow,
    forgotten,
    node_view,
    pending,
    start_position,
)

COMMANDS = [
    PurgeCommand(PurgeURL("https://a.example/x.png?v=1"), soft=False, kind="url"),
    PurgeCommand(PurgePrefix("/img/*", "a.example"), soft=True, kind="prefix"),
    PurgeCommand(PurgePrefix("/img/"), soft=False, kind="prefix"),
    PurgeCommand(PurgeHost("b.example:8080"), soft=True, kind="host"),
    PurgeCommand(PurgeTag(frozenset({"pic", "blue"})), soft=False, kind="tag"),
    PurgeCommand(PurgeRegex(r"\.css$"), soft=False, kind="regex"),
    PurgeCommand(PurgeAll(), soft=True, kind="all"),
]


def record(seq: int, ms: int = 1000) -> Record:
    return Record(f"{ms + seq}-0", seq, COMMANDS[0], "edge-a")


def records(*seqs: int) -> list[Record]:
    return [record(s) for s in seqs]


@pytest.mark.parametrize("command", COMMANDS, ids=[c.kind for c in COMMANDS])
def test_every_purge_kind_round_trips_through_a_stream_entry(command: PurgeCommand) -> None:
    fields = {"seq": "7", "purge": encode_purge(command), "node": "edge-b"}
    got = decode_record("1700000000000-3", fields)
    assert (got.seq, got.node, got.id) == (7, "edge-b", "1700000000000-3")
    assert got.command == command


def test_the_outbox_round_trips_and_drops_what_it_cannot_read() -> None:
    assert journal.decode_outbox(journal.encode_outbox(COMMANDS)) == COMMANDS
    assert journal.decode_outbox(None) == [] and journal.decode_outbox(b"not json") == []
    kept = json.dumps([encode_purge(COMMANDS[0]), "garbage", '{"cmd":"stats"}']).encode()
    assert journal.decode_outbox(kept) == [COMMANDS[0]]


def test_a_fleet_wait_is_not_part_of_the_journal() -> None:
    command = PurgeCommand(PurgeAll(), soft=False, kind="all", fleet_wait=5.0)
    assert "fleet_wait" not in encode_purge(command)


@pytest.mark.parametrize("fields, why", [
    ({"purge": encode_purge(COMMANDS[0]), "node": "x"}, "seq"),
    ({"seq": "x", "purge": encode_purge(COMMANDS[0])}, "invalid literal"),
    ({"seq": "0", "purge": encode_purge(COMMANDS[0])}, "not an edgeproxy purge"),
    ({"seq": "1", "purge": "{not json"}, "Expecting"),
    ({"seq": "1", "purge": '{"cmd":"purge","kind":"nonsense"}'}, "unknown purge kind"),
    ({"seq": "1", "purge": '{"cmd":"purge","kind":"regex","pattern":"("}'}, "pattern"),
    ({"seq": "1", "purge": '{"cmd":"stats"}'}, "not an edgeproxy purge"),
    ({"seq": "1", "purge": '{"cmd":"purge","kind":"all","extra":1}'}, "unknown field"),
])
def test_an_entry_that_is_not_ours_is_refused_with_the_reason(fields: dict[str, str], why: str) -> None:
    with pytest.raises(JournalError, match="not an edgeproxy purge") as info:
        decode_record("5-0", fields)
    assert why in str(info.value)


@pytest.mark.parametrize("data, expected", [
    (Position("1700000000000-2", 42).pack(), Position("1700000000000-2", 42)),
    (Position().pack(), Position()),
    (None, None),
    (b"", None),
    (b"garbage", None),
    (b"12-x 3", None),
    (b"12-0 -1", None),
])
def test_a_kept_position_reads_back_or_is_unknown(data: bytes | None, expected: Position | None) -> None:
    assert Position.unpack(data) == expected


END = Position("2000-0", 9)
FOLLOW = [
    # (position seq, records' seqs, counter, expected step type, reason fragment)
    ("caught up", 4, [], 4, CaughtUp, ""),
    ("next entries", 4, [5, 6, 7], 7, Apply, ""),
    ("a batch of more to come", 4, [5, 6], 9, Apply, ""),
    ("the first entry skips one", 4, [6, 7], 7, Gap, "entries 5-5 were trimmed"),
    ("trimmed to the end", 4, [], 9, Gap, "entries 5-9 were trimmed"),
    ("counter went back", 4, [], 2, Gap, "recreated"),
    ("journal gone", 4, [], None, Gap, "gone"),
    ("never applied, nothing there", 0, [], None, CaughtUp, ""),
    ("never applied, entries there", 0, [1, 2], 2, Apply, ""),
]


@pytest.mark.parametrize("seq, seqs, counter, step, why", [f[1:] for f in FOLLOW], ids=[f[0] for f in FOLLOW])
def test_follow(seq: int, seqs: list[int], counter: int | None, step: type, why: str) -> None:
    got = follow(Position(f"{1000 + seq}-0", seq), records(*seqs), counter, END)
    assert isinstance(got, step)
    if isinstance(got, Gap):
        assert why in got.reason and got.end == END
    if isinstance(got, Apply):
        assert [r.seq for r in got.records] == seqs


def test_a_hole_inside_a_batch_stops_the_run_before_it() -> None:
    got = follow(Position("1004-0", 4), records(5, 6, 8, 9), 9, END)
    assert isinstance(got, Apply) and [r.seq for r in got.records] == [5, 6]
    # the next read, from 6, sees the hole as a gap
    assert isinstance(follow(Position("1006-0", 6), records(8, 9), 9, END), Gap)


@pytest.mark.parametrize("seqs, run", [([5, 6, 7], [5, 6, 7]), ([6, 7], []), ([5, 7], [5]), ([], [])])
def test_a_blocking_read_applies_only_what_runs_on(seqs: list[int], run: list[int]) -> None:
    assert [r.seq for r in contiguous(Position("1004-0", 4), records(*seqs))] == run


def test_where_a_node_starts() -> None:
    kept = Position("5-0", 5)
    assert start_position(kept, 100, END) == kept
    assert start_position(None, 0, END) == END  # an empty cache: nothing to replay, read from the end
    gap = start_position(None, 3, END)  # objects but no position: a purge it never saw may concern them
    assert isinstance(gap, Gap) and gap.end == END and "no journal position" in gap.reason


def test_the_fleet_view_and_who_is_pending() -> None:
    now_ms = 10_000
    views = [
        node_view("a", journal.applied_value(Position("9000-0", 9), 9.5), True, 9, None, now_ms),
        node_view("b", journal.applied_value(Position("7000-0", 7), 7.5), True, 9, "8000-0", now_ms),
        node_view("c", journal.applied_value(Position("5000-0", 5), 5.5), False, 9, "6000-0", now_ms),
        node_view("d", None, True, 9, "1000-0", now_ms),
    ]
    assert [(v.behind, v.lag) for v in views] == [(0, 0.0), (2, 2.0), (4, 4.0), (9, 9.0)]
    assert pending(views, 8) == ["b", "d"]  # c is down: not waited for
    assert pending(views, 7) == ["d"]
    # c's last record is from t=5.5: down and silent for longer than `after` is forgotten; live ones never are
    assert forgotten(views, now=100.0, after=50.0) == ["c"]
    assert forgotten(views, now=50.0, after=50.0) == []
