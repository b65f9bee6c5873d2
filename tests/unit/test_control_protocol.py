"""The control grammar as tables: request lines in, commands or field-naming errors out; replies; framing."""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from edgeproxy.cache.purge import PurgeAll, PurgeHost, PurgePrefix, PurgeRegex, PurgeTag, PurgeURL
from edgeproxy.control import protocol
from edgeproxy.control.protocol import (
    LineFramer,
    LineTooLong,
    PingCommand,
    ProtocolError,
    PurgeCommand,
    ReloadCommand,
    StatsCommand,
)


def line(**fields: object) -> bytes:
    return json.dumps({"v": 1, **fields}).encode()


VALID = [
    (line(cmd="ping"), PingCommand()),
    (line(cmd="stats"), StatsCommand()),
    (line(cmd="reload"), ReloadCommand()),
    (
        line(cmd="purge", kind="url", url="https://cdn.example.com/a.png", soft=False),
        PurgeCommand(PurgeURL("https://cdn.example.com/a.png"), soft=False, kind="url"),
    ),
    (
        line(cmd="purge", kind="url", url="HTTPS://CDN.example.com:443/a.png?x=1"),
        PurgeCommand(PurgeURL("https://cdn.example.com/a.png?x=1"), soft=False, kind="url"),
    ),
    (
        line(cmd="purge", kind="prefix", prefix="/pictures/", soft=True),
        PurgeCommand(PurgePrefix("/pictures/", None), soft=True, kind="prefix"),
    ),
    (
        line(cmd="purge", kind="prefix", prefix="/pictures/*", host="cdn.example.com"),
        PurgeCommand(PurgePrefix("/pictures/", "cdn.example.com"), soft=False, kind="prefix"),
    ),
    (
        line(cmd="purge", kind="prefix", prefix="/p/", host=None),
        PurgeCommand(PurgePrefix("/p/", None), soft=False, kind="prefix"),
    ),
    (
        line(cmd="purge", kind="host", host="cdn.example.com"),
        PurgeCommand(PurgeHost("cdn.example.com"), soft=False, kind="host"),
    ),
    (
        line(cmd="purge", kind="tag", tags=["product-1", "home"]),
        PurgeCommand(PurgeTag(("product-1", "home")), soft=False, kind="tag"),
    ),
    (
        line(cmd="purge", kind="regex", pattern=r"\.png$"),
        PurgeCommand(PurgeRegex(r"\.png$"), soft=False, kind="regex"),
    ),
    (line(cmd="purge", kind="all", soft=True), PurgeCommand(PurgeAll(), soft=True, kind="all")),
    (line(cmd="purge", kind="all", fleet_wait=5), PurgeCommand(PurgeAll(), soft=False, kind="all", fleet_wait=5.0)),
    (line(cmd="purge", kind="all", fleet_wait=0.25),
     PurgeCommand(PurgeAll(), soft=False, kind="all", fleet_wait=0.25)),
    # Field order doesn't matter, nor whitespace, nor a CR-less line with trailing spaces.
    (b'{ "cmd" : "ping" , "v" : 1 }  ', PingCommand()),
]


@pytest.mark.parametrize(("raw", "expected"), VALID)
def test_valid_requests(raw: bytes, expected: protocol.Command) -> None:
    assert protocol.parse_request(raw) == expected


ERRORS = [
    # framing and envelope
    (b"{not json", "malformed JSON"),
    (b"\xff\xfe", "malformed JSON"),
    (b"[1, 2]", "request must be a JSON object"),
    (b'"ping"', "request must be a JSON object"),
    (b'{"cmd":"ping"}', "v: required"),
    (b'{"v":"1","cmd":"ping"}', "v: expected an integer"),
    (b'{"v":true,"cmd":"ping"}', "v: expected an integer"),
    (b'{"v":1.0,"cmd":"ping"}', "v: expected an integer"),
    (b'{"v":2,"cmd":"ping"}', "v: unsupported version 2"),
    (line(), "cmd: required"),
    (line(cmd="explode"), 'cmd: unknown command "explode"'),
    (line(cmd=7), "cmd: unknown command 7"),
    # fields of simple commands
    (line(cmd="ping", verbose=True), "verbose: unknown field"),
    (line(cmd="stats", kind="url"), "kind: unknown field"),
    # purge: kind first, then the kind's table
    (line(cmd="purge", url="https://a.example/"), "kind: required"),
    (line(cmd="purge", kind="everything"), 'kind: unknown purge kind "everything"'),
    (line(cmd="purge", kind=["url"]), "kind: unknown purge kind"),
    (line(cmd="purge", kind="url"), "url: required"),
    (line(cmd="purge", kind="url", url=5), "url: expected a string"),
    (line(cmd="purge", kind="url", url="https://a.example/", sfot=True), "sfot: unknown field"),
    (line(cmd="purge", kind="url", url="https://a.example/", soft=1), "soft: expected true or false"),
    (line(cmd="purge", kind="url", url="https://a.example/", soft="yes"), "soft: expected true or false"),
    (line(cmd="purge", kind="url", url="https://a.example/", host="a.example"), "host: unknown field"),
    (line(cmd="purge", kind="all", fleet_wait="5"), "fleet_wait: expected a number of seconds"),
    (line(cmd="purge", kind="all", fleet_wait=True), "fleet_wait: expected a number of seconds"),
    (line(cmd="purge", kind="all", fleet_wait=-1), "fleet_wait: expected a number of seconds"),
    (line(cmd="purge", kind="all", fleet_wait=3601), "fleet_wait: expected a number of seconds"),
    (line(cmd="purge", kind="prefix"), "prefix: required"),
    (line(cmd="purge", kind="prefix", prefix="/p/", host=3), "host: expected a string or null"),
    (line(cmd="purge", kind="host"), "host: required"),
    (line(cmd="purge", kind="host", host=None), "host: expected a string"),
    (line(cmd="purge", kind="tag", tags="product-1"), "tags: expected a non-empty list of strings"),
    (line(cmd="purge", kind="tag", tags=[]), "tags: expected a non-empty list of strings"),
    (line(cmd="purge", kind="tag", tags=["a", 1]), "tags: expected a non-empty list of strings"),
    (line(cmd="purge", kind="regex"), "pattern: required"),
    (line(cmd="purge", kind="all", url="https://a.example/"), "url: unknown field"),
    # values the selectors refuse keep their field name
    (line(cmd="purge", kind="url", url="ftp://a.example/x"), "url:"),
    (line(cmd="purge", kind="url", url="/relative"), "url:"),
    (line(cmd="purge", kind="regex", pattern="("), "pattern:"),
    (line(cmd="purge", kind="prefix", prefix="/a*b"), "prefix:"),
    (line(cmd="purge", kind="host", host="bad host"), "host:"),
]


@pytest.mark.parametrize(("raw", "message"), ERRORS)
def test_errors_name_the_field(raw: bytes, message: str) -> None:
    with pytest.raises(ProtocolError) as info:
        protocol.parse_request(raw)
    assert str(info.value).startswith(message), str(info.value)


@pytest.mark.parametrize(("size", "limit", "too_long"), [(100, 100, False), (101, 100, True), (70_000, 65_536, True)])
def test_line_limit(size: int, limit: int, too_long: bool) -> None:
    raw = b'{"v":1,"cmd":"ping"}'.ljust(size)
    if too_long:
        with pytest.raises(LineTooLong, match=f"limit {limit} bytes"):
            protocol.parse_request(raw, max_line=limit)
    else:
        assert protocol.parse_request(raw, max_line=limit) == PingCommand()


@dataclass
class _Counters:
    hits: int
    tags: frozenset[str]


REPLIES = [
    ({"purged": 3}, b'{"v":1,"ok":true,"purged":3}\n'),
    (None, b'{"v":1,"ok":true}\n'),
    # the envelope can't be overridden by a handler
    ({"ok": False, "v": 9, "x": 1}, b'{"v":1,"ok":true,"x":1}\n'),
    # dataclasses and sets are flattened; non-ASCII is escaped so a reply is always one ASCII line
    ({"c": _Counters(1, frozenset({"b", "a"}))}, b'{"v":1,"ok":true,"c":{"hits":1,"tags":["a","b"]}}\n'),
    ({"host": "b\u00fccher.example\n"}, b'{"v":1,"ok":true,"host":"b\\u00fccher.example\\n"}\n'),
]


@pytest.mark.parametrize(("fields", "wire"), REPLIES)
def test_encode_reply(fields: dict[str, object] | None, wire: bytes) -> None:
    assert protocol.encode_reply(fields) == wire
    assert protocol.decode_reply(wire.rstrip(b"\n"))["ok"] is True


@pytest.mark.parametrize("bad", [{"x": object()}, {"x": float("nan")}])
def test_encode_reply_refuses_non_json(bad: dict[str, object]) -> None:
    with pytest.raises((TypeError, ValueError)):
        protocol.encode_reply(bad)


def test_error_reply_round_trip() -> None:
    wire = protocol.encode_error('url: expected a string, got "x"')
    assert wire == b'{"v":1,"ok":false,"error":"url: expected a string, got \\"x\\""}\n'
    assert protocol.decode_reply(wire) == {"v": 1, "ok": False, "error": 'url: expected a string, got "x"'}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"nope", "malformed reply"),
        (b"[]", "malformed reply: not a JSON object"),
        (b'{"ok":true}', "v: required"),
        (b'{"v":2,"ok":true}', "v: unsupported version"),
        (b'{"v":1}', "ok: expected true or false"),
        (b'{"v":1,"ok":false}', "error: expected a string"),
    ],
)
def test_decode_reply_errors(raw: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        protocol.decode_reply(raw)


@pytest.mark.parametrize(
    ("command", "echo"),
    [
        (PurgeCommand(PurgeAll(), soft=True, kind="all"), {"kind": "all", "soft": True}),
        (PingCommand(), {"pong": True}),
        (StatsCommand(), {}),
        (ReloadCommand(), {}),
    ],
)
def test_reply_echo(command: protocol.Command, echo: dict[str, object]) -> None:
    assert protocol.reply_echo(command) == echo


def test_encode_request_adds_version_and_parses_back() -> None:
    wire = protocol.encode_request({"cmd": "purge", "kind": "tag", "tags": ["a"]})
    assert wire.endswith(b"\n") and wire.count(b"\n") == 1
    assert protocol.parse_request(wire.rstrip(b"\n")) == PurgeCommand(PurgeTag(("a",)), soft=False, kind="tag")


@pytest.mark.parametrize(
    ("chunks", "lines"),
    [
        ([b"a\nb\n"], [b"a", b"b"]),
        ([b"a", b"b", b"\nc"], [b"ab"]),  # split across reads; "c" waits for its newline
        ([b"a\r\n", b"\n"], [b"a", b""]),  # CRLF tolerated; blank lines come out empty (the server skips them)
        ([b"x" * 8 + b"\n"], [b"x" * 8]),  # exactly the limit
    ],
)
def test_framer(chunks: list[bytes], lines: list[bytes]) -> None:
    framer = LineFramer(max_line=8)
    out = []
    for chunk in chunks:
        framer.feed(chunk)
        while (got := framer.next_line()) is not None:
            out.append(got)
    assert out == lines


@pytest.mark.parametrize("chunks", [[b"x" * 9], [b"x" * 5, b"x" * 4], [b"x" * 9 + b"\n"], [b"ok\n" + b"y" * 20]])
def test_framer_refuses_long_lines_before_their_newline(chunks: list[bytes]) -> None:
    framer = LineFramer(max_line=8)
    with pytest.raises(LineTooLong):
        for chunk in chunks:
            framer.feed(chunk)
            while framer.next_line() is not None:
                pass


def test_framer_rest_returns_an_unterminated_last_line() -> None:
    framer = LineFramer()
    framer.feed(b'{"v":1,"cmd":"ping"}\n{"v":1,')
    assert framer.next_line() == b'{"v":1,"cmd":"ping"}'
    assert framer.next_line() is None
    assert framer.rest() == b'{"v":1,'
    assert framer.rest() == b""


def test_protocol_is_pure() -> None:
    source = Path(protocol.__file__).read_text()
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"asyncio", "socket", "time", "h11"}
