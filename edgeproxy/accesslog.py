"""Access log: one line per exchange, combined-like plus cache status and timings, or JSON lines.

Rules kept here:
- Formatting is pure (``format_combined``/``format_json`` take every value, including the time).
- Lines are buffered and written by the shell at most every ``FLUSH_INTERVAL`` and at exit, so logging costs a list
  append on the hot path; ``reopen()`` serves SIGUSR1 (logrotate).
- Values from the client are escaped: a request line can't forge a log line.

Combined format, one line:
``client - - [25/Nov/2026:17:40:00 +0000] "GET /a HTTP/1.1" 200 1024 "referer" "user-agent" cache=hit
origin_ms=1.2 total_ms=1.5``
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from typing import IO

FLUSH_INTERVAL = 0.5


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
    text = value.decode("latin-1")
    if text.isprintable() and '"' not in text and "\\" not in text:
        return text
    return text.encode("unicode_escape").decode("ascii").replace('"', '\\"')


def _clf_time(ts: float) -> str:
    return time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(ts))


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
    """Buffered writer to stderr ("-") or a file; the shell calls ``flush`` on a timer."""

    def __init__(self, target: str | None, fmt: str = "combined") -> None:
        self.target = target
        self.format = FORMATS[fmt]
        self.lines: list[str] = []
        self.stream: IO[str] | None = None
        self.reopen()

    @property
    def enabled(self) -> bool:
        return self.target is not None

    def reopen(self) -> None:
        self.flush()
        if self.stream is not None and self.stream is not sys.stderr:
            self.stream.close()
        if self.target is None:
            self.stream = None
        elif self.target == "-":
            self.stream = sys.stderr
        else:
            self.stream = open(self.target, "a", encoding="utf-8", buffering=1 << 16)  # noqa: SIM115

    def log(self, record: LogRecord) -> None:
        if self.stream is not None:
            self.lines.append(self.format(record))

    def flush(self) -> None:
        if self.lines and self.stream is not None:
            lines, self.lines = self.lines, []
            try:
                self.stream.write("".join(lines))
                self.stream.flush()
            except OSError:
                pass  # a full disk must not stop the proxy

    def close(self) -> None:
        self.flush()
        if self.stream is not None and self.stream is not sys.stderr:
            self.stream.close()
        self.stream = None
