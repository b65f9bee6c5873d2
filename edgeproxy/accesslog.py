"""Access log: one line per exchange, combined-like plus cache status and timings, or JSON lines.

Rules kept here:
- Formatting is pure (``format_combined``/``format_json`` take every value, including the time).
- Lines are buffered and written every ``FLUSH_INTERVAL`` (the shell's timer), as soon as ``FLUSH_LINES`` wait, and
  at exit, so logging costs a list append on the hot path and a write of ~50 KB now and then; ``reopen()`` serves
  SIGUSR1 (logrotate).
- Values from the client are escaped: a request line can't forge a log line.

Combined format, one line:
``client - - [25/Nov/2026:17:40:00 +0000] "GET /a HTTP/1.1" 200 1024 "referer" "user-agent" cache=hit
origin_ms=1.2 total_ms=1.5``

Cost (the hit path pays it on every request): an exchange's line is written straight as bytes by ``exchange`` from
its values, in one format when none of them needs escaping (one ``bytes.translate`` over them all says so), with the
time string made once per second: in-process several times cheaper than a LogRecord formatted with
``format_combined`` and encoded at flush (benchmarks/hitcost.py with HITCOST_LOG=on); the fast lane's hits
(proxy/lane.py) take the same way, and so do JSON lines (``json``). ``format_combined`` and ``format_json`` stay
the reference: the bytes are the same (tests/unit/test_accesslog.py checks both); ``log`` with a ``LogRecord``
formats through them.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass

FLUSH_INTERVAL = 0.5
# Also written as soon as this many lines wait (~50 KB): at 100k+ lines a second, half a second of lines written at
# once stalled the event loop for milliseconds (a memo-hit p99 of 10.6 ms against 0.7 without the log).
FLUSH_LINES = 256


@dataclass(slots=True)
class LogRecord:
    client: str
    method: bytes
    target: bytes
    version: bytes
    status: int
    sent: int
    referer: bytes
    user_agent: bytes
    cache: str
    origin_ms: float
    total_ms: float
    time: float


def _esc(value: bytes) -> str:
    """Printable ASCII as is; quotes, backslashes, controls and every byte over 0x7F escaped (as nginx does), so
    a value can neither end its quoted field nor start a line, and a terminal shows the log as written."""
    text = value.decode("latin-1")
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        return text
    return text.encode("unicode_escape").decode("ascii").replace('"', '\\"')


def _clf_time(ts: float) -> str:
    return time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(ts))


# What _esc leaves as it is (printable ASCII but the quote and the backslash): ``value.translate(None, _PLAIN)`` is
# empty when a value can be written as it came. A C-level pass, ~3x cheaper than a regex search for a byte outside
# the set (0.2 against 0.6 µs over a browser's user agent and referer, measured).
_PLAIN = bytes(c for c in range(0x20, 0x7F) if c not in b'"\\')


def escape(value: bytes) -> bytes:
    """``_esc`` as bytes, with a fast path for the usual value (printable ASCII without quote or backslash)."""
    return _esc(value).encode("ascii") if value.translate(None, _PLAIN) else value


def request_part(method: bytes, target: bytes, version: bytes) -> bytes:
    """The quoted request line of a combined line."""
    return b'"%s %s HTTP/%s"' % (escape(method), escape(target), escape(version))


def agents_part(referer: bytes, user_agent: bytes) -> bytes:
    """The quoted referer and user agent of a combined line."""
    return b'"%s" "%s"' % (escape(referer) or b"-", escape(user_agent) or b"-")


def _json_inner(value: bytes) -> bytes:
    """``json.dumps(value.decode("latin-1"))`` as bytes, without its quotes."""
    return json.dumps(value.decode("latin-1")).encode("ascii")[1:-1]


def _json_float(value: float) -> bytes:
    """What json.dumps writes for ``round(value, 3)``: the float's repr, or NaN/Infinity."""
    value = round(value, 3)
    return b"%r" % value if value - value == 0.0 else json.dumps(value).encode("ascii")


def format_combined(r: LogRecord) -> str:
    return (f'{r.client} - - [{_clf_time(r.time)}] "{_esc(r.method)} {_esc(r.target)} HTTP/{_esc(r.version)}" '
            f'{r.status} {r.sent} "{_esc(r.referer) or "-"}" "{_esc(r.user_agent) or "-"}" '
            f"cache={r.cache or '-'} origin_ms={r.origin_ms:.1f} total_ms={r.total_ms:.1f}\n")


def format_json(r: LogRecord) -> str:
    return json.dumps({
        "time": _clf_time(r.time), "client": r.client, "method": r.method.decode("latin-1"),
        "target": r.target.decode("latin-1"), "version": r.version.decode("latin-1"), "status": r.status,
        "bytes": r.sent, "referer": r.referer.decode("latin-1"), "user_agent": r.user_agent.decode("latin-1"),
        "cache": r.cache, "origin_ms": round(r.origin_ms, 3), "total_ms": round(r.total_ms, 3),
    }) + "\n"


FORMATS = {"combined": format_combined, "json": format_json}


class AccessLog:
    """Buffered writer to stderr ("-") or a file; the shell calls ``flush`` on a timer.

    The file is opened with O_APPEND and written with one ``os.write`` per batch of whole lines (at most
    ``WRITE_LIMIT`` bytes): with several workers appending to one file, lines never interleave mid-line.
    """

    WRITE_LIMIT = 64 * 1024

    def __init__(self, target: str | None, fmt: str = "combined") -> None:
        self.target = target
        self.format = FORMATS[fmt]
        self.combined_fast = fmt == "combined"  # callers use ``combined`` instead of ``log``, and for json ``json``
        self.lines: list[bytes] = []
        self.fd: int | None = None
        self._second = -1
        self._stamp = b""
        self.reopen()

    @property
    def enabled(self) -> bool:
        return self.target is not None

    def reopen(self) -> None:
        self.flush()
        self._close_fd()
        if self.target == "-":
            self.fd = sys.stderr.fileno()
        elif self.target is not None:
            self.fd = os.open(self.target, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)

    def log(self, record: LogRecord) -> None:
        if self.fd is not None:
            lines = self.lines
            lines.append(self.format(record).encode("utf-8", "replace"))
            if len(lines) >= FLUSH_LINES:
                self.flush()

    def combined(self, client: bytes, now: float, request: bytes, status: int, sent: int, agents: bytes,
                 cache: bytes, origin_ms: float, total_ms: float) -> None:
        """A combined line from its parts (``request_part``, ``agents_part``; ``cache`` already ``-`` when
        empty): the bytes ``format_combined`` would give."""
        if self.fd is None:
            return
        # One format for the whole line (a tail formatted first and copied into the line cost a tenth of the log).
        stamp = self._stamp if int(now) == self._second else self._new_stamp(now)
        lines = self.lines
        lines.append(b"%s - - [%s] %s %d %d %s cache=%s origin_ms=%.1f total_ms=%.1f\n" % (
            client, stamp, request, status, sent, agents, cache, origin_ms, total_ms))
        if len(lines) >= FLUSH_LINES:
            self.flush()

    def exchange(self, client: bytes, now: float, method: bytes, target: bytes, version: bytes, status: int, sent: int,
                 referer: bytes, user_agent: bytes, cache: bytes, origin_ms: float, total_ms: float) -> None:
        """One exchange's line in this log's format, from its values (``cache`` already ``-`` when empty): the bytes
        ``format_combined`` or ``format_json`` would give."""
        if self.fd is None:
            return
        if not self.combined_fast:
            self.json(client, now, method, target, version, status, sent, referer, user_agent, cache, origin_ms,
                      total_ms)
            return
        if b"".join((method, target, version, referer, user_agent)).translate(None, _PLAIN):  # something to escape
            self.combined(client, now, request_part(method, target, version), status, sent,
                          agents_part(referer, user_agent), cache, origin_ms, total_ms)
            return
        # The usual request: one check of the five values, then one format (no parts made and copied into it).
        stamp = self._stamp if int(now) == self._second else self._new_stamp(now)
        lines = self.lines
        lines.append(b'%s - - [%s] "%s %s HTTP/%s" %d %d "%s" "%s" cache=%s origin_ms=%.1f total_ms=%.1f\n' % (
            client, stamp, method, target, version, status, sent, referer or b"-", user_agent or b"-", cache, origin_ms,
            total_ms))
        if len(lines) >= FLUSH_LINES:
            self.flush()

    def hit(self, client: bytes, now: float, method: bytes, target: bytes, version: bytes, status: int, sent: int,
            referer: bytes, user_agent: bytes) -> None:
        """``exchange`` for a hit answered within the read that brought it (the fast lane's): cache=hit, both times
        0.0; the usual line in one format with its constant tail."""
        if self.fd is None:
            return
        if not self.combined_fast or b"".join((method, target, version, referer, user_agent)).translate(None, _PLAIN):
            self.exchange(client, now, method, target, version, status, sent, referer, user_agent, b"hit", 0.0, 0.0)
            return
        stamp = self._stamp if int(now) == self._second else self._new_stamp(now)
        lines = self.lines
        lines.append(b'%s - - [%s] "%s %s HTTP/%s" %d %d "%s" "%s" cache=hit origin_ms=0.0 total_ms=0.0\n' % (
            client, stamp, method, target, version, status, sent, referer or b"-", user_agent or b"-"))
        if len(lines) >= FLUSH_LINES:
            self.flush()

    def json(self, client: bytes, now: float, method: bytes, target: bytes, version: bytes, status: int, sent: int,
             referer: bytes, user_agent: bytes, cache: bytes, origin_ms: float, total_ms: float) -> None:
        """A JSON line from the values ``format_json`` takes (``client`` as bytes, an address): the bytes it would
        give, made without a record, a dict or json.dumps for the usual values (a fraction of their cost for a line
        with a browser's user agent and referer, measured with benchmarks/hitcost.py)."""
        if self.fd is None:
            return
        stamp = self._stamp if int(now) == self._second else self._new_stamp(now)
        values = (client, method, target, version, referer, user_agent, cache)
        if b"".join(values).translate(None, _PLAIN):  # one check for all: the usual request has nothing to escape
            values = tuple(map(_json_inner, values))
        client, method, target, version, referer, user_agent, cache = values
        lines = self.lines
        lines.append(
            b'{"time": "%s", "client": "%s", "method": "%s", "target": "%s", "version": "%s", "status": %d, '
            b'"bytes": %d, "referer": "%s", "user_agent": "%s", "cache": "%s", "origin_ms": %s, "total_ms": %s}\n' % (
                stamp, client, method, target, version, status, sent, referer, user_agent, cache,
                _json_float(origin_ms), _json_float(total_ms)))
        if len(lines) >= FLUSH_LINES:
            self.flush()

    def _new_stamp(self, now: float) -> bytes:
        """The time string of a new second: made once a second, not once a line."""
        self._second = second = int(now)
        self._stamp = _clf_time(second).encode()
        return self._stamp

    def flush(self) -> None:
        if not self.lines or self.fd is None:
            return
        lines, self.lines = self.lines, []
        batch: list[bytes] = []
        size = 0
        try:
            for data in lines:
                if size + len(data) > self.WRITE_LIMIT and batch:
                    self._write(b"".join(batch))
                    batch, size = [], 0
                batch.append(data)
                size += len(data)
            self._write(b"".join(batch))
        except OSError:
            pass  # a full disk must not stop the proxy

    def _write(self, data: bytes) -> None:
        assert self.fd is not None
        while data:
            data = data[os.write(self.fd, data):]

    def _close_fd(self) -> None:
        if self.fd is not None and self.fd != sys.stderr.fileno():
            os.close(self.fd)
        self.fd = None

    def close(self) -> None:
        self.flush()
        self._close_fd()
