"""The open-files limit (RLIMIT_NOFILE): take all the hard limit allows, and say at start-up when that is less
than the configured connection limits need.

Every client and origin connection is a file descriptor, so ``[server] max_connections`` means nothing above
the limit: past it ``accept()`` fails with EMFILE and the kernel's queue fills while the loop retries. Two ways
the limit ends up lower than an operator thinks:
- systemd's ``LimitNOFILE=65536`` is silently capped by the hard limit the service manager itself has (20000
  in a container seen on our test host), and
- a shell usually starts programs with a soft limit of 1024 under a much higher hard one. Raising the soft
  limit to the hard one is what nginx's ``worker_rlimit_nofile`` and Go's runtime do; it needs no privilege.
  Under the shipped unit ``SystemCallFilter=~@resources`` refuses setrlimit(), which is fine: systemd has set
  soft = hard already.

``fds_needed`` and ``shortfall`` are pure; ``raise_soft_limit`` is the one call that touches the process.
"""

from __future__ import annotations

import resource

from edgeproxy.config import Config

# Listeners, the control and metrics sockets, log files, the event loop's own descriptors and, with workers,
# the supervisor's channels: a few dozen at most.
RESERVED_FDS = 64


def fds_needed(config: Config) -> int:
    """Descriptors one serving process may hold at once: every client and origin connection it allows."""
    return config.server.max_connections + config.origin.max_connections + RESERVED_FDS


def shortfall(config: Config, soft_limit: int) -> str | None:
    """A warning when ``soft_limit`` can't hold what ``config`` allows; None when it can."""
    if soft_limit == resource.RLIM_INFINITY or soft_limit >= fds_needed(config):
        return None
    return (f"open files limit is {soft_limit}, below the {fds_needed(config)} that [server] max_connections "
            f"({config.server.max_connections}) + [origin] max_connections ({config.origin.max_connections}) + "
            f"{RESERVED_FDS} need: connections past it fail with EMFILE. Raise LimitNOFILE= (and the hard limit "
            "of whatever starts the service), or lower max_connections")


def raise_soft_limit() -> int:
    """Set the soft limit to the hard one where allowed; the soft limit in force afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (OSError, ValueError):
            pass  # a seccomp filter (the unit's ~@resources) or a hard limit above the kernel's nr_open
    return soft
