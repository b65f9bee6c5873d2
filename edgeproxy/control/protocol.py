"""The control channel's grammar: newline-delimited JSON, one request and one reply per line.

Owns: framing (``LineFramer``: bytes in, bounded lines out), the request envelope (``v``, ``cmd``), the field
tables of every command and of every purge kind, the frozen command dataclasses a request parses into, and the
reply shape. The UNIX-socket server and the CLI client are thin shells around it.

Never: imports asyncio, socket, time or h11; touches the store; builds purge selectors itself (that is
``edgeproxy.cache.purge.parse_selector``, the one thing this module asks of the cache).

Wire format, version 1::

    request  {"v":1,"cmd":"purge","kind":"url","url":"https://cdn.example.com/a.png","soft":false}
    reply    {"v":1,"ok":true,"purged":3,"kind":"url","soft":false}
    error    {"v":1,"ok":false,"error":"url: expected a string"}

Rules, and why:
- Every error is a ``ProtocolError`` whose message starts with the offending field (``url: expected a string``,
  the same shape the purge selectors use); the server sends it back verbatim for the operator to read.
- Unknown fields are errors, never ignored: a typo such as ``"sfot": true`` must not turn a soft purge hard.
- JSON types are strict: ``true`` is not ``1`` and ``1.0`` is not ``1`` (Python's bool-is-int would blur that).
- Lines longer than the limit are refused before JSON decoding, so a peer can't make us parse megabytes.
- Blank lines are skipped without a reply (convenient when typing into ``nc -U``).
- Replies are ASCII JSON (``ensure_ascii``), so they can never contain a raw newline and break framing.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from edgeproxy.cache.codec import selector_fields
from edgeproxy.cache.purge import parse_selector

VERSION = 1
DEFAULT_MAX_LINE = 64 * 1024
# A supervisor's private channel to a worker: a stats reply is a few KiB; the bound only stops a confused peer.
CHANNEL_LIMIT = 16 * 1024 * 1024
# Fields every request carries; they are checked before the command's own table.
ENVELOPE = frozenset({"v", "cmd"})
# Fields every reply carries; handler results can't override them.
REPLY_ENVELOPE = frozenset({"v", "ok"})
# The server's reply to a peer that SO_PEERCRED refuses. Handler failures never equal it: the server prefixes
# them with the command name.
PERMISSION_DENIED = "permission denied"


class ProtocolError(ValueError):
    """A request or reply that breaks the grammar; the message names the field and is sent to the peer."""


class LineTooLong(ProtocolError):
    """A line over the limit. The stream can't be resynchronised reliably, so the shell closes it."""


# --- field types and command tables ----------------------------------------------------------------------


@dataclass(frozen=True)
class FieldType:
    description: str
    check: Callable[[object], bool]


STRING = FieldType("a string", lambda v: isinstance(v, str))
OPTIONAL_STRING = FieldType("a string or null", lambda v: v is None or isinstance(v, str))
BOOLEAN = FieldType("true or false", lambda v: isinstance(v, bool))
INTEGER = FieldType("an integer", lambda v: type(v) is int)
SECONDS = FieldType("a number of seconds from 0 to 3600",
                    lambda v: type(v) in (int, float) and 0 <= v <= 3600)
STRING_LIST = FieldType(
    "a non-empty list of strings",
    lambda v: isinstance(v, list) and len(v) > 0 and all(isinstance(x, str) for x in v),
)


@dataclass(frozen=True)
class Spec:
    """The fields a command (or a purge kind) accepts beyond the envelope."""

    required: Mapping[str, FieldType] = field(default_factory=dict)
    optional: Mapping[str, FieldType] = field(default_factory=dict)

    def extended(self, other: Spec) -> Spec:
        return Spec({**self.required, **other.required}, {**self.optional, **other.optional})


COMMANDS: dict[str, Spec] = {
    # "kind" picks one more table from PURGE_KINDS; see _spec_for.
    # fleet_wait: with [fleet], answer once every live node applied the purge, waiting at most this long.
    "purge": Spec(required={"kind": STRING}, optional={"soft": BOOLEAN, "fleet_wait": SECONDS}),
    "stats": Spec(),
    "ping": Spec(),
    "reload": Spec(),
}

PURGE_KINDS: dict[str, Spec] = {
    "url": Spec(required={"url": STRING}),
    "prefix": Spec(required={"prefix": STRING}, optional={"host": OPTIONAL_STRING}),
    "host": Spec(required={"host": STRING}),
    "tag": Spec(required={"tags": STRING_LIST}),
    "regex": Spec(required={"pattern": STRING}),
    "all": Spec(),
}


# --- commands --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PurgeCommand:
    cmd: ClassVar[str] = "purge"
    selector: object  # one of the edgeproxy.cache.purge selector dataclasses
    soft: bool
    kind: str  # the wire name, echoed in the reply and used as a metrics label
    fleet_wait: float | None = None  # seconds; None: answer once applied on this node


@dataclass(frozen=True)
class StatsCommand:
    cmd: ClassVar[str] = "stats"


@dataclass(frozen=True)
class PingCommand:
    cmd: ClassVar[str] = "ping"


@dataclass(frozen=True)
class ReloadCommand:
    cmd: ClassVar[str] = "reload"


Command = PurgeCommand | StatsCommand | PingCommand | ReloadCommand


def _build_purge(values: dict[str, Any]) -> PurgeCommand:
    kind = values.pop("kind")
    soft = values.pop("soft", False)
    fleet_wait = values.pop("fleet_wait", None)
    try:
        # The grammar has checked names and JSON types; the selector checks the values (URL shape, regex).
        selector = parse_selector({"type": kind, **values})
    except ValueError as exc:
        raise ProtocolError(str(exc)) from exc
    return PurgeCommand(selector=selector, soft=soft, kind=kind,
                        fleet_wait=float(fleet_wait) if fleet_wait is not None else None)


_BUILDERS: dict[str, Callable[[dict[str, Any]], Command]] = {
    "purge": _build_purge,
    "stats": lambda _values: StatsCommand(),
    "ping": lambda _values: PingCommand(),
    "reload": lambda _values: ReloadCommand(),
}


# --- parsing requests ------------------------------------------------------------------------------------


def parse_request(line: bytes, max_line: int = DEFAULT_MAX_LINE) -> Command:
    """Parse one request line (without its newline) into a command, or raise ProtocolError."""
    obj = _load_object(line, max_line)
    _check_version(obj)
    cmd = obj.get("cmd")
    if "cmd" not in obj:
        raise ProtocolError("cmd: required")
    if not isinstance(cmd, str) or cmd not in COMMANDS:
        raise ProtocolError(f"cmd: unknown command {json.dumps(cmd)} (expected one of: {_names(COMMANDS)})")
    fields = {k: v for k, v in obj.items() if k not in ENVELOPE}
    values = _check_fields(fields, _spec_for(cmd, fields))
    return _BUILDERS[cmd](values)


def _load_object(line: bytes, max_line: int) -> dict[str, Any]:
    if len(line) > max_line:
        raise LineTooLong(f"line too long (limit {max_line} bytes)")
    try:
        obj = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"malformed JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("request must be a JSON object")
    return obj


def _check_version(obj: dict[str, Any]) -> None:
    if "v" not in obj:
        raise ProtocolError("v: required")
    if not INTEGER.check(obj["v"]):
        raise ProtocolError(f"v: expected {INTEGER.description}")
    if obj["v"] != VERSION:
        raise ProtocolError(f"v: unsupported version {obj['v']} (this side speaks {VERSION})")


def _spec_for(cmd: str, fields: dict[str, Any]) -> Spec:
    spec = COMMANDS[cmd]
    if cmd != "purge":
        return spec
    # The purge kind selects the remaining fields, so it is checked first.
    kind = fields.get("kind")
    if "kind" not in fields:
        raise ProtocolError("kind: required")
    if not isinstance(kind, str) or kind not in PURGE_KINDS:
        raise ProtocolError(
            f"kind: unknown purge kind {json.dumps(kind)} (expected one of: {_names(PURGE_KINDS)})"
        )
    return spec.extended(PURGE_KINDS[kind])


def _check_fields(fields: dict[str, Any], spec: Spec) -> dict[str, Any]:
    for name in sorted(fields):
        if name not in spec.required and name not in spec.optional:
            raise ProtocolError(f"{name}: unknown field")
    for name in spec.required:
        if name not in fields:
            raise ProtocolError(f"{name}: required")
    for name, value in fields.items():
        ftype = spec.required.get(name) or spec.optional[name]
        if not ftype.check(value):
            raise ProtocolError(f"{name}: expected {ftype.description}")
    return dict(fields)


def _names(table: Mapping[str, object]) -> str:
    return ", ".join(sorted(table))


# --- requests and replies on the wire --------------------------------------------------------------------


def encode_request(fields: Mapping[str, Any]) -> bytes:
    """One request line, newline included; ``v`` is added when absent."""
    return _dump({"v": VERSION, **fields})


def purge_request(command: PurgeCommand) -> dict[str, Any]:
    """The request fields (``cmd`` included, ``v`` and ``fleet_wait`` not) that parse back into ``command``: how a
    purge is handed on, to a worker or to the fleet's journal."""
    fields = selector_fields(command.selector)
    return {"cmd": "purge", "kind": fields.pop("type"), "soft": command.soft, **fields}


def reply_echo(command: Command) -> dict[str, Any]:
    """The reply fields the grammar itself supplies; the handler's fields are merged over them."""
    match command:
        case PurgeCommand(kind=kind, soft=soft):
            return {"kind": kind, "soft": soft}
        case PingCommand():
            return {"pong": True}
    return {}


def encode_reply(fields: Mapping[str, Any] | None = None) -> bytes:
    """A success line: ``{"v":1,"ok":true,...fields}``. Raises TypeError/ValueError if fields aren't JSON."""
    body = {k: v for k, v in (fields or {}).items() if k not in REPLY_ENVELOPE}
    return _dump({"v": VERSION, "ok": True, **body})


def encode_error(message: str) -> bytes:
    """An error line: ``{"v":1,"ok":false,"error":message}``."""
    return _dump({"v": VERSION, "ok": False, "error": message})


def decode_reply(line: bytes) -> dict[str, Any]:
    """Parse a reply line; raise ProtocolError unless it has the reply envelope (and an error when not ok)."""
    try:
        obj = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"malformed reply: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("malformed reply: not a JSON object")
    _check_version(obj)
    if not BOOLEAN.check(obj.get("ok")):
        raise ProtocolError("ok: expected true or false in a reply")
    if not obj["ok"] and not isinstance(obj.get("error"), str):
        raise ProtocolError("error: expected a string in a failed reply")
    return obj


def _dump(obj: Mapping[str, Any]) -> bytes:
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=True, allow_nan=False, default=_jsonable)
    return text.encode("ascii") + b"\n"


def _jsonable(value: object) -> object:
    # Stats objects are often dataclasses or carry sets; flatten them rather than making every handler do it.
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, set | frozenset):
        return sorted(value, key=repr)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


# --- framing ---------------------------------------------------------------------------------------------


class LineFramer:
    """Split a byte stream into lines of at most ``max_line`` bytes: ``feed`` bytes, pull ``next_line``.

    A trailing CR is dropped (peers typing CRLF). ``next_line`` raises LineTooLong as soon as the buffered,
    still unterminated line exceeds the limit, so memory stays bounded whatever the peer sends.
    """

    def __init__(self, max_line: int = DEFAULT_MAX_LINE) -> None:
        self.max_line = max_line
        self._buf = bytearray()
        self._scanned = 0  # bytes already known to hold no newline

    def feed(self, data: bytes) -> None:
        self._buf += data

    def next_line(self) -> bytes | None:
        end = self._buf.find(b"\n", self._scanned)
        if end < 0:
            self._scanned = len(self._buf)
            if len(self._buf) > self.max_line:
                raise LineTooLong(f"line too long (limit {self.max_line} bytes)")
            return None
        line = bytes(self._buf[:end])
        del self._buf[: end + 1]
        self._scanned = 0
        if len(line) > self.max_line:
            raise LineTooLong(f"line too long (limit {self.max_line} bytes)")
        return line[:-1] if line.endswith(b"\r") else line

    def rest(self) -> bytes:
        """What is buffered without a newline: the last line of a peer that closed without one."""
        rest, self._buf, self._scanned = bytes(self._buf), bytearray(), 0
        return rest
