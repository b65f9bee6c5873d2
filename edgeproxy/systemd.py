"""The service manager's side channels: sd_notify(3), the watchdog and sd_listen_fds(3).

Rules kept here:
- Stdlib only, no dependency on libsystemd: the protocols are a datagram of ``KEY=VALUE`` lines and a few
  environment variables, so re-implementing them is smaller than binding the C library.
- Everything is a no-op outside systemd: ``notify`` returns False when ``$NOTIFY_SOCKET`` is unset,
  ``watchdog_interval`` returns None, ``listen_fds`` returns ``[]``. A failed send returns False rather
  than raising, as sd_notify(3) does: losing a status line must never take the proxy down.
- The watchdog is not driven from here. The server arms a timer on its event loop that calls
  ``notify("WATCHDOG=1")`` every ``watchdog_interval()`` seconds, so the ping proves the loop itself is
  still turning; a thread would keep pinging while the loop is wedged, which defeats ``WatchdogSec=``.
- Reload follows the ``Type=notify-reload`` protocol (systemd >= 253): ``reloading()`` sends
  ``RELOADING=1`` with ``MONOTONIC_USEC`` in one datagram, then the server sends ``READY=1`` when the new
  config is live. Older systemd (Debian 12 has 252) accepts the same messages under ``Type=notify``.
- ``listen_fds`` consumes ``LISTEN_PID``/``LISTEN_FDS``/``LISTEN_FDNAMES`` (always unsetting them, so
  children never inherit fds meant for us) and marks the sockets close-on-exec.
"""

from __future__ import annotations

import os
import socket
import time

SD_LISTEN_FDS_START = 3
_LISTEN_VARS = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")
# sd_listen_fds_with_names(3) names fds "unknown" when LISTEN_FDNAMES is absent or short.
_UNNAMED = "unknown"


def _socket_address(value: str) -> str | bytes:
    """``@name`` is Linux's abstract namespace: a leading NUL byte instead of the '@'."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    return value


def notify(*fields: str) -> bool:
    """Send ``fields`` (``"READY=1"``, ``"STATUS=..."``...) as one datagram to ``$NOTIFY_SOCKET``.

    Returns True when the datagram was sent, False when there is no socket or the send failed.
    """
    target = os.environ.get("NOTIFY_SOCKET")
    if not target or not fields:
        return False
    message = "\n".join(fields).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(message, _socket_address(target))
    except OSError:
        return False
    return True


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, the clock systemd compares ``MONOTONIC_USEC`` against."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def reloading(status: str | None = None) -> bool:
    """Announce a reload; ``notify-reload`` requires RELOADING=1 and MONOTONIC_USEC in one message."""
    fields = ["RELOADING=1", f"MONOTONIC_USEC={monotonic_usec()}"]
    if status is not None:
        fields.append(f"STATUS={status}")
    return notify(*fields)


def watchdog_interval() -> float | None:
    """Seconds between ``WATCHDOG=1`` pings: half of ``$WATCHDOG_USEC``, as sd_watchdog_enabled(3) advises.

    None when the watchdog is off, malformed, or addressed to another process (``$WATCHDOG_PID``).
    """
    pid = os.environ.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None
    try:
        usec = int(os.environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    return usec / 2 / 1_000_000


def listen_fds() -> list[tuple[str, socket.socket]]:
    """Sockets passed by socket activation, as ``(name, socket)`` in fd order starting at fd 3.

    Empty unless ``$LISTEN_PID`` is this process. The environment is cleared in every case.
    """
    pid, count, names = (os.environ.pop(name, "") for name in _LISTEN_VARS)
    if pid != str(os.getpid()):
        return []
    try:
        n = int(count)
    except ValueError:
        return []
    labels = names.split(":") if names else []
    result = []
    for i in range(max(n, 0)):
        fd = SD_LISTEN_FDS_START + i
        os.set_inheritable(fd, False)
        name = labels[i] if i < len(labels) and labels[i] else _UNNAMED
        result.append((name, socket.socket(fileno=fd)))
    return result
