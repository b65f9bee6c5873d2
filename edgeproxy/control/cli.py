"""Operator commands over the control socket: ``purge``, ``stats``, ``ping``, ``reload``.

Owns: the argparse subcommands (``add_subcommands`` registers them on the main ``edgeproxy`` parser; ``main``
runs them standalone, e.g. ``python -m edgeproxy.control.cli stats``), choosing the socket path, turning
arguments into protocol requests, and printing results: human text by default, JSON with ``--json``.

Rules: success exits 0 and failure exits non-zero with exactly one ``edgeproxy: ...`` line on stderr. Exit codes
follow sysexits.h so scripts can tell "fix your arguments" from "the proxy is down" (table below). Requests are
validated locally with the same grammar the server uses before anything is sent, so a bad regex is reported
even when the proxy isn't running, and a purge is never sent twice (the client doesn't retry).

Socket path: ``--control PATH``, else ``[server] control_socket`` from ``--config FILE`` (read without validating the
rest of the file, so that ``reload`` reaches the server, which names what is wrong), else the server's
default for this user, falling back to the system-wide ``/run/edgeproxy/control.sock`` when its directory exists
(an operator in the ``edgeproxy`` group runs the CLI without root; anyone else is told "permission denied").
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from edgeproxy.cache.purge import NoRegexEngine
from edgeproxy.config import ConfigError, control_socket_in
from edgeproxy.control import protocol
from edgeproxy.control.client import (
    DEFAULT_TIMEOUT,
    ControlClient,
    ControlError,
    ControlPermissionDenied,
    ControlUnavailable,
)
from edgeproxy.control.server import SOCKET_NAME, default_socket_path

PROG = "edgeproxy"
SYSTEM_SOCKET = os.path.join("/run/edgeproxy", SOCKET_NAME)

EXIT_OK = 0
EXIT_FAILED = 1  # the server answered with an error
EXIT_USAGE = 2  # bad arguments (argparse uses 2 too)
EXIT_UNAVAILABLE = 69  # EX_UNAVAILABLE: no socket, nobody listening, no answer
EXIT_NOPERM = 77  # EX_NOPERM: file mode or SO_PEERCRED refused us
EXIT_CONFIG = 78  # EX_CONFIG: --config unreadable or invalid
FLEET_WAIT = 10.0  # seconds, --fleet-timeout's default


class ServerError(Exception):
    """The server answered ``ok: false``; the message is its error text."""


class FleetIncomplete(ServerError):
    """The purge was applied on the node asked, but not (yet) on every live node of the fleet, or not as asked (a
    regex over its budget: its fallback was applied)."""


# Most specific first: ControlUnavailable and ControlPermissionDenied are ControlErrors.
_EXIT_CODES: tuple[tuple[type[Exception], int], ...] = (
    (ControlUnavailable, EXIT_UNAVAILABLE),
    (ControlPermissionDenied, EXIT_NOPERM),
    (ConfigError, EXIT_CONFIG),
    (protocol.ProtocolError, EXIT_USAGE),
    (ControlError, EXIT_FAILED),
    (ServerError, EXIT_FAILED),
)
# Errors about what the operator asked (rather than about the socket) are prefixed with the subcommand.
_ABOUT_THE_COMMAND = (protocol.ProtocolError, ServerError)


# --- arguments to requests -------------------------------------------------------------------------------

# argparse dest -> (how the option reads in messages, the purge requests it makes). Exactly one may be given,
# except that --host narrows --prefix.
_PURGE_OPTIONS: dict[str, tuple[str, Callable[[argparse.Namespace], list[dict[str, Any]]]]] = {
    "urls": ("URL", lambda a: [{"kind": "url", "url": url} for url in a.urls]),
    "prefix": ("--prefix", lambda a: [{"kind": "prefix", "prefix": a.prefix, "host": a.host}]),
    "host": ("--host", lambda a: [{"kind": "host", "host": a.host}]),
    "tags": ("--tag", lambda a: [{"kind": "tag", "tags": a.tags}]),
    "regex": ("--regex", lambda a: [{"kind": "regex", "pattern": a.regex}]),
    "all": ("--all", lambda a: [{"kind": "all"}]),
}
_PURGE_CHOICES = "URL..., --prefix P [--host H], --host H, --tag T..., --regex R or --all"


def purge_requests(args: argparse.Namespace) -> list[dict[str, Any]]:
    """One request per URL, or one for the chosen selector, each checked by the grammar; else ProtocolError."""
    given = [dest for dest in _PURGE_OPTIONS if getattr(args, dest) not in (None, False, [])]
    if given[:2] == ["prefix", "host"]:
        given.remove("host")
    if len(given) != 1:
        got = " and ".join(_PURGE_OPTIONS[dest][0] for dest in given) or "nothing"
        raise protocol.ProtocolError(f"choose one of {_PURGE_CHOICES} (got {got})")
    wait = {"fleet_wait": args.fleet_timeout} if args.fleet_wait else {}
    requests = [{"cmd": "purge", "soft": args.soft, **fields, **wait} for fields in _PURGE_OPTIONS[given[0]][1](args)]
    for request in requests:
        try:
            protocol.parse_request(protocol.encode_request(request).rstrip(b"\n"))
        except NoRegexEngine:
            pass  # a bare interpreter can't compile RE2: the server checks the pattern (a refusal then exits 1)
    return requests


# --- rendering -------------------------------------------------------------------------------------------


def _plural(n: int, word: str, plural: str) -> str:
    return f"{n} {word if n == 1 else plural}"


def render_purge(replies: list[dict[str, Any]]) -> str:
    total = sum(int(r.get("purged", 0)) for r in replies)
    kind = replies[0].get("kind", "?")
    mode = "soft" if replies[0].get("soft") else "hard"
    fleets = [r["fleet"] for r in replies if "fleet" in r]
    if not fleets:
        return f"purged {_plural(total, 'entry', 'entries')} ({kind}, {mode})"
    # With a fleet the count is this node's: every node applies the purge to its own cache.
    line = f"purged {_plural(total, 'entry', 'entries')} here ({kind}, {mode})"
    if all("applied_on" in f for f in fleets):
        nodes = sorted({n for f in fleets for n in f["applied_on"]})
        slowest = max(f["waited_ms"] for f in fleets)
        line += f"; applied on {_plural(len(nodes), 'node', 'nodes')} ({', '.join(nodes)}) in {slowest:.1f} ms"
        down = sorted({n for f in fleets for n in f.get("down", ())})
        if down:  # not waited for: a node replays the journal before it serves again
            line += (f"; not applied yet on {_plural(len(down), 'node that is', 'nodes that are')} down: "
                     f"{', '.join(down)} (each replays it when it reconnects)")
        return line
    if all("seq" in f for f in fleets):
        return line + f"; published to the fleet as entry {fleets[-1]['seq']}"
    return line


def fleet_problem(replies: list[dict[str, Any]]) -> str | None:
    """What went wrong, when something did: a regex that ran out of its budget (its fallback was applied instead:
    done, but not as asked), unpublished, or live nodes that had not applied in time."""
    for reply in replies:
        over = reply.get("over_budget")
        if over:
            return (f"the regex did not finish within its budget of {over['budget_seconds']:g}s "
                    f"([cache] regex_purge_budget): {over['matched']} entries purged by it, then "
                    f"{over['fallback']} soft-purged instead ({over['soft_purged']} entries)")
    for reply in replies:
        fleet = reply.get("fleet") or {}
        if fleet.get("published") is False:
            return str(fleet.get("error", "not published to the fleet"))
        if fleet.get("pending"):
            down = f"; down: {', '.join(fleet['down'])}" if fleet.get("down") else ""
            return (f"not applied within {fleet['waited_ms'] / 1000:.1f}s on: {', '.join(fleet['pending'])} "
                    f"(applied on: {', '.join(fleet.get('applied_on') or ['none'])}{down})")
    return None


def _flatten(obj: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    if isinstance(obj.get("hits"), int) and isinstance(obj.get("misses"), int) and "hit_ratio" not in obj:
        looked_up = obj["hits"] + obj["misses"]
        obj = {**obj, "hit_ratio": obj["hits"] / looked_up if looked_up else 0.0}
    for key in sorted(obj):
        value = obj[key]
        if isinstance(value, dict):
            rows += _flatten(value, f"{prefix}{key}.")
        else:
            rows.append((f"{prefix}{key}", value))
    return rows


_BYTE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")
# Numbers that name something rather than count it: no thousands separators.
IDENTIFIERS = frozenset({"pid", "uid", "gid", "v"})


def _human_bytes(n: int) -> str:
    exp = 0
    while exp < len(_BYTE_UNITS) - 1 and n >= 1024 ** (exp + 1):
        exp += 1
    return f"{n} B" if exp == 0 else f"{n / 1024**exp:.1f} {_BYTE_UNITS[exp]}"


def _format_value(name: str, value: Any) -> str:
    leaf = name.rsplit(".", 1)[-1]
    if isinstance(value, float) and leaf.endswith("ratio"):
        return f"{value * 100:.1f}%"
    if isinstance(value, float) and leaf.endswith("_at"):  # epoch seconds, e.g. last_purge_at
        return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(value))
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if leaf in IDENTIFIERS:
        return str(value)
    if isinstance(value, int) and ("bytes" in leaf or leaf == "capacity"):
        return f"{value:,} ({_human_bytes(value)})"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.3f}"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) or "-"
    return str(value)


# Nested stats tables that are raw detail (the metrics counters, as /metrics exports them): ``--json`` only.
DETAIL_TABLES = frozenset({"counters"})


def render_table(fields: dict[str, Any]) -> str:
    """Nested stats as an aligned two-column table; hit ratios (given or computed) as percentages.

    Each fact is printed once: a row one table down that repeats a top-level row (``store.entries`` beside
    ``entries``) is left out, as are the ``DETAIL_TABLES``; breakdowns deeper down (``workers.0.entries``) stay.
    ``--json`` keeps everything.
    """
    body = {k: v for k, v in fields.items() if k not in protocol.REPLY_ENVELOPE and k not in DETAIL_TABLES}
    summary = {k for k, v in body.items() if not isinstance(v, dict)}
    rows = [(name, value) for name, value in _flatten(body)
            if name.count(".") != 1 or name.rsplit(".", 1)[-1] not in summary]
    width = max((len(name) for name, _ in rows), default=0)
    return "\n".join(f"{name:<{width}}  {_format_value(name, value)}" for name, value in rows)


# --- subcommands -----------------------------------------------------------------------------------------


def _body(reply: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in reply.items() if k not in protocol.REPLY_ENVELOPE}


def _send(client: ControlClient, request: dict[str, Any]) -> dict[str, Any]:
    reply = client.request(request)
    if not reply["ok"]:
        raise ServerError(reply["error"])
    return reply


def run_purge(args: argparse.Namespace, client: ControlClient) -> str:
    replies = [_send(client, request) for request in purge_requests(args)]
    output = ("\n".join(json.dumps(_body(r), sort_keys=True) for r in replies) if args.json
              else render_purge(replies))
    problem = fleet_problem(replies)
    if problem is not None:  # what was done is printed; the exit code and stderr say it is not done everywhere
        print(output)
        raise FleetIncomplete(problem)
    return output


def run_stats(args: argparse.Namespace, client: ControlClient) -> str:
    stats = _body(_send(client, {"cmd": "stats"}))
    return json.dumps(stats, indent=2, sort_keys=True) if args.json else render_table(stats)


def run_ping(args: argparse.Namespace, client: ControlClient) -> str:
    started = time.monotonic()
    reply = _body(_send(client, {"cmd": "ping"}))
    elapsed_ms = (time.monotonic() - started) * 1000
    if args.json:
        return json.dumps({**reply, "rtt_ms": round(elapsed_ms, 3)}, sort_keys=True)
    return f"pong from pid {reply.get('pid', '?')} in {elapsed_ms:.1f} ms"


def run_reload(args: argparse.Namespace, client: ControlClient) -> str:
    reply = _body(_send(client, {"cmd": "reload"}))
    if reply.get("reloaded") is False:  # e.g. started from flags, or a worker refused: systemctl reload must fail
        raise ServerError(f"not reloaded: {reply.get('reason') or reply.get('error') or 'no reason given'}")
    if args.json:
        return json.dumps(reply, sort_keys=True)
    details = render_table(reply)
    return "reloaded" + (f"\n{details}" if details else "")


def _add_purge_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("urls", nargs="*", metavar="URL", help="absolute URL(s) to purge, every variant")
    parser.add_argument("--prefix", help="path prefix, e.g. /pictures/ or /pictures/* (all hosts unless --host)")
    parser.add_argument("--host", help="purge one host, or limit --prefix to it")
    parser.add_argument("--tag", dest="tags", nargs="+", metavar="TAG", help="purge entries carrying any TAG")
    parser.add_argument("--regex", help="purge cache keys in which this RE2 regular expression is found (no "
                        "backreferences or lookaround)")
    parser.add_argument("--all", action="store_true", help="purge everything")
    parser.add_argument("--soft", action="store_true", help="mark stale (revalidate) instead of removing")
    parser.add_argument("--fleet-wait", action="store_true",
                        help="with [fleet]: return once every live node applied it, or after --fleet-timeout naming "
                             "the nodes that had not (exit 1 then)")
    parser.add_argument("--fleet-timeout", type=_wait_seconds, default=FLEET_WAIT, metavar="SECONDS",
                        help=f"how long --fleet-wait waits (default {FLEET_WAIT:g})")


def _wait_seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {value!r}") from None
    if not 0 <= seconds <= 3600:
        raise argparse.ArgumentTypeError(f"expected 0 to 3600 seconds, got {value!r}")
    return seconds


SUBCOMMANDS: dict[str, tuple[str, Callable[[argparse.Namespace, ControlClient], str], Callable[..., None]]] = {
    "purge": ("remove (or with --soft, invalidate) cached entries", run_purge, _add_purge_options),
    "stats": ("show cache and traffic counters", run_stats, lambda _parser: None),
    "ping": ("check that the proxy answers on its control socket", run_ping, lambda _parser: None),
    "reload": ("reload the configuration (as SIGHUP does)", run_reload, lambda _parser: None),
}


def add_subcommands(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register purge/stats/ping/reload; each parser's ``func(args) -> int`` runs it and returns the exit code."""
    for name, (help_text, run, add_options) in SUBCOMMANDS.items():
        parser = subparsers.add_parser(name, help=help_text, description=help_text)
        add_options(parser)
        parser.add_argument("--control", metavar="PATH", help="control socket path")
        parser.add_argument("--config", metavar="FILE", help="read [server] control_socket from this TOML config")
        parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS")
        parser.add_argument("--json", action="store_true", help="machine-readable output")
        parser.set_defaults(func=_runner(name, run))


def _runner(name: str, run: Callable[[argparse.Namespace, ControlClient], str]) -> Callable[..., int]:
    def func(args: argparse.Namespace) -> int:
        try:
            waits = getattr(args, "fleet_wait", False)
            timeout = max(args.timeout, args.fleet_timeout + DEFAULT_TIMEOUT) if waits else args.timeout
            with ControlClient(socket_path(args), timeout) as client:
                output = run(args, client)
        except tuple(cls for cls, _ in _EXIT_CODES) as exc:
            about = f"{name}: " if isinstance(exc, _ABOUT_THE_COMMAND) else ""
            print(f"{PROG}: {about}{exc}", file=sys.stderr)
            return next(code for cls, code in _EXIT_CODES if isinstance(exc, cls))
        print(output)
        return EXIT_OK

    return func


def socket_path(args: argparse.Namespace) -> str:
    if args.control:
        return args.control
    if args.config:
        configured = control_socket_in(args.config)
        if configured:
            return configured
    own = default_socket_path()
    # isdir, not exists: /run/edgeproxy is 0750, so for a user outside the group the socket in it can't even be
    # seen; connecting then says "permission denied", which is the truth, rather than "not found".
    if not os.path.exists(own) and os.path.isdir(os.path.dirname(SYSTEM_SOCKET)):
        return SYSTEM_SOCKET
    return own


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description="Operate a running edgeproxy over its control socket.")
    add_subcommands(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
