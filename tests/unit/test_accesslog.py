"""The access log (edgeproxy/accesslog.py): pure formatting (combined and JSON lines, client values escaped so a
request can't forge a log line) and the buffered writer over a temporary file."""

from __future__ import annotations

import json
import os
from dataclasses import replace

import pytest

from edgeproxy.accesslog import (
    AccessLog,
    LogRecord,
    agents_part,
    format_combined,
    format_json,
    request_part,
)

T = 784111777.0  # Sun, 06 Nov 1994 08:49:37 GMT
RECORD = LogRecord(client="192.0.2.1", method=b"GET", target=b"/a?b=1", version=b"1.1", status=200, sent=1024,
                   referer=b"https://ref.example/", user_agent=b"curl/8.0", cache="hit", origin_ms=0.0,
                   total_ms=1.26, time=T)


def test_combined():
    assert format_combined(RECORD) == (
        '192.0.2.1 - - [06/Nov/1994:08:49:37 +0000] "GET /a?b=1 HTTP/1.1" 200 1024 "https://ref.example/" '
        '"curl/8.0" cache=hit origin_ms=0.0 total_ms=1.3\n')


def test_combined_empty_values_are_dashes():
    line = format_combined(replace(RECORD, referer=b"", user_agent=b"", cache="", status=400, sent=0))
    assert line.endswith('" 400 0 "-" "-" cache=- origin_ms=0.0 total_ms=1.3\n')


def test_json():
    assert json.loads(format_json(RECORD)) == {
        "time": "06/Nov/1994:08:49:37 +0000", "client": "192.0.2.1", "method": "GET", "target": "/a?b=1",
        "version": "1.1", "status": 200, "bytes": 1024, "referer": "https://ref.example/", "user_agent": "curl/8.0",
        "cache": "hit", "origin_ms": 0.0, "total_ms": 1.26}


ESCAPES = [
    # (field, raw client bytes, what the combined line shows between the quotes)
    ("target", b'/a" 200 0 "-" "-" cache=hit', '/a\\" 200 0 \\"-\\" \\"-\\" cache=hit'),
    ("target", b'/a\r\n10.0.0.1 - - [x] "GET /admin HTTP/1.1" 200',
     '/a\\r\\n10.0.0.1 - - [x] \\"GET /admin HTTP/1.1\\" 200'),
    ("target", b"/a\\x22", "/a\\\\x22"),  # a literal backslash can't fake an escape
    ("target", b"/a\x00\x1b[31m", "/a\\x00\\x1b[31m"),  # NUL and a terminal escape sequence
    ("target", b"/caf\xc3\xa9", "/caf\\xc3\\xa9"),  # non-ASCII bytes as \xNN, whatever their encoding
    ("target", b"/\x85next", "/\\x85next"),  # NEL, a line break for some readers
    ("target", b"/\xa0", "/\\xa0"),
    ("target", b"/a\tb", "/a\\tb"),
    ("user_agent", b'Mozilla/5.0 "quoted"', 'Mozilla/5.0 \\"quoted\\"'),
    ("referer", b"https://r.example/\n", "https://r.example/\\n"),
    ("method", b"GE\x7fT", "GE\\x7fT"),
    ("target", b"/plain-ascii_~!$&'()*+,;=:@%20", "/plain-ascii_~!$&'()*+,;=:@%20"),
]


@pytest.mark.parametrize("field, raw, shown", ESCAPES)
def test_combined_escapes_client_values(field, raw, shown):
    line = format_combined(replace(RECORD, **{field: raw}))
    assert line.count("\n") == 1 and line.endswith("\n")
    assert line.isascii() and line[:-1].isprintable()
    assert shown in line
    # the quoted fields still split where the format put them: 3 quoted values, 6 quote characters unescaped
    unescaped = line.replace("\\\\", "").replace('\\"', "")
    assert unescaped.count('"') == 6


@pytest.mark.parametrize("field, raw, shown", ESCAPES)
def test_json_escapes_client_values(field, raw, shown):
    line = format_json(replace(RECORD, **{field: raw}))
    assert line.count("\n") == 1 and line.isascii()
    assert json.loads(line)[field] == raw.decode("latin-1")


def read_lines(path) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return f.read().splitlines(keepends=True)


def test_writes_whole_lines_on_flush(tmp_path):
    path = tmp_path / "access.log"
    log = AccessLog(str(path))
    assert log.enabled
    log.log(RECORD)
    log.log(replace(RECORD, target=b"/b"))
    assert read_lines(path) == []  # buffered until the shell flushes
    log.flush()
    assert read_lines(path) == [format_combined(RECORD), format_combined(replace(RECORD, target=b"/b"))]
    log.close()


def test_appends_to_an_existing_file(tmp_path):
    path = tmp_path / "access.log"
    path.write_text("old line\n")
    log = AccessLog(str(path), "json")
    log.log(RECORD)
    log.close()
    assert read_lines(path) == ["old line\n", format_json(RECORD)]


def test_batches_past_the_write_limit_stay_whole(tmp_path):
    path = tmp_path / "access.log"
    log = AccessLog(str(path))
    records = [replace(RECORD, target=b"/" + b"x" * 1000 + b"%d" % i) for i in range(200)]  # ~200 KB
    for r in records:
        log.log(r)
    log.flush()
    assert read_lines(path) == [format_combined(r) for r in records]
    log.close()


def test_reopen_after_the_file_was_moved(tmp_path):
    path, rotated = tmp_path / "access.log", tmp_path / "access.log.1"
    log = AccessLog(str(path))
    log.log(replace(RECORD, target=b"/before"))
    log.flush()
    os.rename(path, rotated)  # logrotate moves the file, then sends SIGUSR1
    log.log(replace(RECORD, target=b"/buffered"))
    log.reopen()  # lines buffered before the signal go to the old file
    log.log(replace(RECORD, target=b"/after"))
    log.close()
    assert [line.split('"')[1] for line in read_lines(rotated)] == ["GET /before HTTP/1.1", "GET /buffered HTTP/1.1"]
    assert [line.split('"')[1] for line in read_lines(path)] == ["GET /after HTTP/1.1"]


def test_disabled_logs_nothing(tmp_path):
    log = AccessLog(None)
    assert not log.enabled
    log.log(RECORD)
    log.flush()
    assert log.lines == []
    log.close()
    assert list(tmp_path.iterdir()) == []


def test_stderr_target(capfd):
    log = AccessLog("-", "json")
    assert log.enabled
    log.log(RECORD)
    log.close()  # never closes stderr itself
    assert capfd.readouterr().err == format_json(RECORD)
    os.fstat(2)  # still open


def fast_line(r: LogRecord) -> bytes:
    """What the hit path writes for ``r`` (AccessLog.combined from its parts)."""
    log = AccessLog(os.devnull)
    log.combined(r.client.encode(), r.time, request_part(r.method, r.target, r.version), r.status, r.sent,
                 agents_part(r.referer, r.user_agent), (r.cache or "-").encode(), r.origin_ms, r.total_ms)
    (line,) = log.lines
    log.close()
    return line


# Records every fast writer must log exactly as the reference formatter does.
LINE_RECORDS = [
    RECORD, replace(RECORD, referer=b"", user_agent=b"", cache="", status=400, sent=0),
    replace(RECORD, origin_ms=12.35, total_ms=0.05, time=T + 0.999),
    *(replace(RECORD, **{field: raw}) for field, raw, _ in ESCAPES),
]


@pytest.mark.parametrize("record", LINE_RECORDS, ids=repr)
def test_the_fast_combined_line_is_the_reference_line(record):
    assert fast_line(record) == format_combined(record).encode()


def test_the_time_string_follows_the_clock():
    log = AccessLog(os.devnull)
    for t in (T, T + 0.5, T + 1.0, T + 3600):
        log.combined(b"c", t, b'"GET / HTTP/1.1"', 200, 0, b'"-" "-"', b"hit", 0.0, 0.0)
    assert [line.split(b"]")[0] for line in log.lines] == [
        b"c - - [06/Nov/1994:08:49:37 +0000", b"c - - [06/Nov/1994:08:49:37 +0000",
        b"c - - [06/Nov/1994:08:49:38 +0000", b"c - - [06/Nov/1994:09:49:37 +0000"]
    log.close()


def exchange_line(r: LogRecord, fmt: str) -> bytes:
    """What the exchange writes for ``r`` (AccessLog.exchange, from the values, in either format)."""
    log = AccessLog(os.devnull, fmt)
    log.exchange(r.client.encode(), r.time, r.method, r.target, r.version, r.status, r.sent, r.referer, r.user_agent,
                 (r.cache or "-").encode(), r.origin_ms, r.total_ms)
    (line,) = log.lines
    log.close()
    return line


@pytest.mark.parametrize("record", LINE_RECORDS, ids=repr)
def test_the_exchange_line_is_the_reference_line(record):
    assert exchange_line(record, "combined") == format_combined(record).encode()
    if record.cache:  # format_json writes an empty cache as "", the exchange never has one (Outcome.NONE is "-")
        assert exchange_line(record, "json") == format_json(record).encode()


def test_a_log_that_is_off_takes_nothing():
    log = AccessLog(None)
    log.exchange(b"c", T, b"GET", b"/", b"1.1", 200, 0, b"", b"", b"hit", 0.0, 0.0)
    assert log.lines == [] and not log.enabled


def test_a_full_buffer_is_written_without_waiting_for_the_timer(tmp_path):
    from edgeproxy.accesslog import FLUSH_LINES

    path = tmp_path / "access.log"
    log = AccessLog(str(path))
    for n in range(FLUSH_LINES - 1):
        log.combined(b"c", T, b'"GET /%d HTTP/1.1"' % n, 200, 0, b'"-" "-"', b"hit", 0.0, 0.0)
    assert read_lines(path) == []  # the timer's job, below the line count
    log.combined(b"c", T, b'"GET /last HTTP/1.1"', 200, 0, b'"-" "-"', b"hit", 0.0, 0.0)
    assert len(read_lines(path)) == FLUSH_LINES and log.lines == []
    log.close()


def fast_json(r: LogRecord) -> bytes:
    """What the exchange writes for ``r`` in the JSON format (AccessLog.json, no record)."""
    log = AccessLog(os.devnull, "json")
    log.json(r.client.encode(), r.time, r.method, r.target, r.version, r.status, r.sent, r.referer, r.user_agent,
             str(r.cache).encode(), r.origin_ms, r.total_ms)
    (line,) = log.lines
    log.close()
    return line


@pytest.mark.parametrize("record", [
    RECORD, replace(RECORD, referer=b"", user_agent=b"", cache="-", status=400, sent=0),
    replace(RECORD, origin_ms=12.3456, total_ms=0.0004, time=T + 0.999),
    replace(RECORD, origin_ms=float("inf"), total_ms=1e-9), replace(RECORD, client="unix"),
    *(replace(RECORD, **{field: raw}) for field, raw, _ in ESCAPES),
], ids=repr)
def test_the_fast_json_line_is_the_reference_line(record):
    assert fast_json(record) == format_json(record).encode()
