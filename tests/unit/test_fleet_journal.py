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
    Reseed,
    TooManyWaits,
    admit_wait,
    contiguous,
    decode_record,
    down,
    encode_purge,
    end_position,
    follow,
    forgotten,
    node_view,
    parse_applied,
    parse_seq,
    pending,
    start_position,
    trouble_delay,
    wait_poll,
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
    ({"seq": "x", "purge": encode_purge(COMMANDS[0])}, "seq: expected a number from 1, got 'x'"),
    ({"seq": "0", "purge": encode_purge(COMMANDS[0])}, "seq: expected a number"),
    ({"seq": " 7", "purge": encode_purge(COMMANDS[0])}, "seq: expected a number"),
    ({"seq": "1_0", "purge": encode_purge(COMMANDS[0])}, "seq: expected a number"),
    ({"seq": "\u0663", "purge": encode_purge(COMMANDS[0])}, "seq: expected a number"),  # an Arabic-Indic 3
    ({"seq": "9" * 19, "purge": encode_purge(COMMANDS[0])}, "seq: expected a number"),
    ({"seq": "1"}, "purge"),
    ({"seq": "1", "purge": "[1, 2]"}, "not an edgeproxy purge"),
    ({"seq": "1", "purge": "null"}, "not an edgeproxy purge"),
    ({"seq": "1", "purge": '"all"'}, "not an edgeproxy purge"),
    ({"seq": "1", "purge": "\ufffd\ufffd{"}, "Expecting"),  # bytes that were not UTF-8, as the client gives them
    ({"seq": "1", "purge": "{not json"}, "Expecting"),
    ({"seq": "1", "purge": '{"cmd":"purge","kind":"nonsense"}'}, "unknown purge kind"),
    ({"seq": "1", "purge": '{"cmd":"stats"}'}, "not an edgeproxy purge"),
    ({"seq": "1", "purge": '{"cmd":"purge","kind":"all","extra":1}'}, "unknown field"),
])
def test_an_entry_that_is_not_ours_is_refused_with_the_reason(fields: dict[str, str], why: str) -> None:
    with pytest.raises(JournalError, match="not an edgeproxy purge") as info:
        decode_record("5-0", fields)
    assert why in str(info.value)


@pytest.mark.parametrize("pattern", ["(", "(a)\\1", "(?=x)y", "a{1001}"])
def test_a_regex_this_node_cannot_apply_marks_everything_stale(pattern: str) -> None:
    """An older node's pattern in syntax RE2 lacks (a backreference, a lookahead) purged something where it was
    published: here nothing it meant may be served as it was."""
    purge = json.dumps({"cmd": "purge", "kind": "regex", "pattern": pattern})
    got = decode_record("5-0", {"seq": "3", "purge": purge, "node": "old-node"})
    assert got.command == journal.EVERYTHING_STALE and got.seq == 3 and got.node == "old-node"
    assert got.instead is not None and "can't be applied here" in got.instead
    with pytest.raises(JournalError):  # without a number it is not an entry of ours at all
        decode_record("5-0", {"purge": purge})


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
    ("only the counter lost", 4, [], None, Reseed, ""),
    ("the counter lost, entries run on", 4, [5, 6], None, Apply, ""),
    ("the counter lost, entries do not run on", 4, [6, 7], None, Reseed, ""),
    ("an entry numbered past the counter", 4, [99], 4, CaughtUp, ""),
    ("an entry numbered past the counter after real ones", 4, [5, 99], 5, Apply, ""),
    ("never applied, nothing there", 0, [], None, CaughtUp, ""),
    ("never applied, entries there", 0, [1, 2], 2, Apply, ""),
]


NO_STREAM = {"journal gone", "never applied, nothing there"}  # the stream is gone too: its end is 0-0


@pytest.mark.parametrize("name, seq, seqs, counter, step, why", FOLLOW, ids=[f[0] for f in FOLLOW])
def test_follow(name: str, seq: int, seqs: list[int], counter: int | None, step: type, why: str) -> None:
    end = Position() if name in NO_STREAM else END
    got = follow(Position(f"{1000 + seq}-0", seq), records(*seqs), counter, end)
    assert isinstance(got, step)
    if isinstance(got, Gap):
        assert why in got.reason and got.end == end
    if isinstance(got, Apply):
        assert [r.seq for r in got.records] == [s for s in seqs if s != 99]


@pytest.mark.parametrize("last, counter, expected", [
    ([], None, Position()),
    ([], 5, Position("0-0", 5)),
    ([("9-0", {"seq": "7"})], 7, Position("9-0", 7)),
    ([("9-0", {"seq": "99999"})], 7, Position("9-0", 7)),  # the counter, never a number an entry claims
    ([("9-0", {"seq": "abc"})], 7, Position("9-0", 7)),
    ([("9-0", {"seq": "7"})], None, Position("9-0", 7)),
    ([("9-0", {"seq": "abc"})], None, Position("9-0", 0)),
    ([("9-0", {})], None, Position("9-0", 0)),
])
def test_the_journals_end_never_raises(last: list[tuple[str, dict[str, str]]], counter: int | None,
                                       expected: Position) -> None:
    assert end_position(last, counter) == expected


@pytest.mark.parametrize("raw, seq, counter", [
    ("7", 7, 7), ("0", None, 0), (None, None, None), ("", None, None), ("abc", None, None), ("-1", None, None),
    ("+7", None, None), ("7.0", None, None), ("9" * 18, int("9" * 18), int("9" * 18)), ("9" * 19, None, None),
])
def test_a_number_is_read_strictly(raw: str | None, seq: int | None, counter: int | None) -> None:
    assert parse_seq(raw) == seq and journal.counter_value(raw) == counter


@pytest.mark.parametrize("value, expected", [
    ("9-0 4 12.5", (Position("9-0", 4), 12.5)),
    ("0-0 0 1.0", (Position(), 1.0)),
    ("garbage", (Position(), 0.0)),
    ("9-0 x 12.5", (Position(), 0.0)),
    ("9-x 4 12.5", (Position(), 0.0)),
    ("9-0 4 nan", (Position(), 0.0)),
])
def test_an_applied_record_that_cant_be_read_counts_as_nothing_applied(value: str,
                                                                      expected: tuple[Position, float]) -> None:
    assert parse_applied(value) == expected


def test_the_same_trouble_again_waits_longer_up_to_a_bound() -> None:
    delays = [trouble_delay(n) for n in range(1, 12)]
    assert delays[0] == 0.0  # the first gap is taken at once
    assert delays[1] > 0 and delays == sorted(delays) and delays[-1] == journal.TROUBLE_BACKOFF[-1]


def test_a_fleet_wait_polls_less_often_as_it_waits_and_never_past_its_deadline() -> None:
    polls = [wait_poll(n, 60.0) for n in range(20)]
    assert polls[0] == 0.005 and polls == sorted(polls) and polls[-1] == journal.WAIT_POLL[-1]
    assert sum(polls) < 4.0  # 20 looks take seconds, not 0.1 s
    assert wait_poll(10, 0.03) == 0.03 and wait_poll(10, -1.0) == 0.0


def test_concurrent_fleet_waits_are_capped() -> None:
    admit_wait(journal.MAX_WAITS - 1)
    with pytest.raises(TooManyWaits, match=f"at most {journal.MAX_WAITS}.*nothing was purged"):
        admit_wait(journal.MAX_WAITS)


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
    assert down(views, 8) == ["c"] and down(views, 5) == []  # ...but named while it is behind
    assert pending(views, 7) == ["d"]
    # c's last record is from t=5.5: down and silent for longer than `after` is forgotten; live ones never are
    assert forgotten(views, now=100.0, after=50.0) == ["c"]
    assert forgotten(views, now=50.0, after=50.0) == []
