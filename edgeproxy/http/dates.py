"""HTTP-date parsing and formatting (RFC 9110 §5.6.7), as epoch seconds.

Rules kept here:
- Owns the three HTTP-date forms: IMF-fixdate, obsolete RFC 850 and ANSI C asctime().
- ``parse_http_date`` returns None for anything it cannot read; callers decide what an invalid date
  means (RFC 9111 §5.3: an invalid Expires is a time in the past).
- Never reads the clock: ``format_http_date`` takes the time to format.
Deliberate departures, for robustness with real origins (as most caches do):
- Day and month names and the zone are matched case-insensitively, the comma after the day name is
  optional, runs of spaces count as one and the date parts may be joined by ``-``; ``UTC`` is read as
  ``GMT``. Any other zone stays invalid, because its offset would be a guess.
- A two-digit year (RFC 850) maps to 2000-2069 or 1970-1999. RFC 9110 asks for "not more than 50 years
  ahead of now", which needs a clock; the fixed pivot agrees with it until 2020 + 49.
Pure: no I/O, no clock.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

_DAYS = (b"Mon", b"Tue", b"Wed", b"Thu", b"Fri", b"Sat", b"Sun")
_MONTH_NAMES = (b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec")
MONTHS: dict[bytes, int] = {m.lower(): i for i, m in enumerate(_MONTH_NAMES, 1)}

_DAY = rb"(?:mon|tue|wed|thu|fri|sat|sun)[a-z]*"
_MON = rb"(jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)"
_TIME = rb"(\d{1,2}):(\d\d):(\d\d)"
# IMF-fixdate "Sun, 06 Nov 1994 08:49:37 GMT" and RFC 850 "Sunday, 06-Nov-94 08:49:37 GMT".
_DMY = re.compile(
    rb"^" + _DAY + rb"\s*,?\s*(\d{1,2})[\s-]+" + _MON + rb"[\s-]+(\d{4}|\d{2})\s+" + _TIME + rb"\s+(?:gmt|utc)$",
    re.IGNORECASE,
)
# asctime "Sun Nov  6 08:49:37 1994".
_ASCTIME = re.compile(rb"^" + _DAY + rb"\s+" + _MON + rb"\s+(\d{1,2})\s+" + _TIME + rb"\s+(\d{4})$", re.IGNORECASE)


def _year(digits: bytes) -> int:
    year = int(digits)
    if len(digits) == 2:
        return year + (2000 if year < 70 else 1900)
    return year


def _epoch(year: int, month: int, day: int, hour: int, minute: int, second: int) -> float | None:
    if second == 60:  # a leap second names the same instant as :59 + 1s
        second = 59
        extra = 1.0
    else:
        extra = 0.0
    try:
        return datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp() + extra
    except ValueError:  # day 31 in a 30-day month, hour 25, year 0, ...
        return None


def parse_http_date(value: bytes | None) -> float | None:
    """Epoch seconds of an HTTP-date, or None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    m = _DMY.match(value)
    if m is not None:
        day, mon, year, hh, mm, ss = m.groups()
        return _epoch(_year(year), MONTHS[mon.lower()], int(day), int(hh), int(mm), int(ss))
    m = _ASCTIME.match(value)
    if m is not None:
        mon, day, hh, mm, ss, year = m.groups()
        return _epoch(int(year), MONTHS[mon.lower()], int(day), int(hh), int(mm), int(ss))
    return None


def format_http_date(ts: float) -> bytes:
    """IMF-fixdate of ``ts`` (fractions dropped), e.g. ``b"Sun, 06 Nov 1994 08:49:37 GMT"``."""
    d = datetime.fromtimestamp(int(ts), tz=UTC)
    return b"%s, %02d %s %04d %02d:%02d:%02d GMT" % (
        _DAYS[d.weekday()], d.day, _MONTH_NAMES[d.month - 1], d.year, d.hour, d.minute, d.second,
    )
