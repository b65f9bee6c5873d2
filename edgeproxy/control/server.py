"""The control socket: a UNIX stream socket that feeds lines to the grammar and writes replies back.

Owns: where the socket lives (``default_socket_path``), claiming the path safely (a stale socket left by a
crashed instance is replaced; a live one is never stolen; a default path's directory is ours alone), the file
mode and group, the per-connection ``SO_PEERCRED`` check, and one task per connection with an idle timeout.
Everything about what a line means is ``edgeproxy.control.protocol``; what a command does is the injected
``handler``.

Never: interprets commands itself (beyond adding the pid to a ping), lets a handler exception escape (it becomes
an error reply), or unlinks a socket file it did not create.

Access control is two layers: the file mode/group decide who can connect at all, then ``SO_PEERCRED`` admits
root, our own uid, ``allowed_uids``, and members (primary or supplementary) of ``allowed_gids`` and of ``group``
(the socket's group, when one is configured). Anyone else gets one ``permission denied`` line and is
disconnected.

Trade-offs: the stale-socket probe is a blocking connect() on a local socket at start-up only (microseconds,
bounded by a 1 s timeout). Replies are written in order per connection; a client that never reads its replies
only stalls its own task until the idle timeout closes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import logging
import os
import pwd
import socket
import stat
import struct
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from edgeproxy import privatedir
from edgeproxy.control import protocol
from edgeproxy.control.protocol import Command, LineFramer, LineTooLong, PingCommand, ProtocolError

log = logging.getLogger("edgeproxy.control")

Handler = Callable[[Command], Awaitable[dict[str, Any]]]

SECONDS = 1.0
IDLE_TIMEOUT = 60 * SECONDS
PROBE_TIMEOUT = 1 * SECONDS
READ_CHUNK = 16 * 1024
SOCKET_NAME = "control.sock"
# sockaddr_un.sun_path is 108 bytes including the terminating NUL on Linux.
MAX_PATH_BYTES = 107


class ControlSocketError(OSError):
    """The control socket can't be set up; the message names the path and the reason."""


class ControlSocketInUse(ControlSocketError):
    """Another live process answers on the path: we refuse to steal it."""


def default_socket_path() -> str:
    """systemd's RuntimeDirectory, else /run/edgeproxy for root, else the user's runtime dir or /tmp."""
    runtime = os.environ.get("RUNTIME_DIRECTORY")
    if runtime:
        # systemd may pass several colon-separated directories; the first is ours.
        return os.path.join(runtime.split(":")[0], SOCKET_NAME)
    uid = os.getuid()
    if uid == 0:
        return os.path.join("/run/edgeproxy", SOCKET_NAME)
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        return os.path.join(xdg, "edgeproxy", SOCKET_NAME)
    return os.path.join(f"/tmp/edgeproxy-{uid}", SOCKET_NAME)


def peer_allowed(
    uid: int, gids: Iterable[int], *, own_uid: int, allowed_uids: Iterable[int], allowed_gids: Iterable[int]
) -> bool:
    """The SO_PEERCRED decision: root, our own uid, a listed uid, or membership of a listed group."""
    if uid in (0, own_uid) or uid in set(allowed_uids):
        return True
    return not set(allowed_gids).isdisjoint(gids)


def peer_groups(uid: int, gid: int) -> list[int]:
    """The peer's primary gid plus the supplementary groups of its account (if it has one)."""
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        return [gid]
    return os.getgrouplist(name, gid)


def resolve_group(group: str | int) -> int:
    if isinstance(group, int) or group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ControlSocketError(f"control socket group {group!r} does not exist") from None


def claim_path(path: str, own_dir: bool = False) -> None:
    """Make ``path`` bindable: create the parent, remove a stale socket, refuse a live one or a non-socket.
    ``own_dir`` (a default path): the parent must be ours alone (privatedir.py), as anyone may make
    ``/tmp/edgeproxy-UID`` first and then swap our socket for theirs."""
    if len(os.fsencode(path)) > MAX_PATH_BYTES:
        raise ControlSocketError(f"control socket path {path} is longer than {MAX_PATH_BYTES} bytes")
    directory = os.path.dirname(path) or "."
    if own_dir:  # 0755: the users SO_PEERCRED admits must reach the socket
        try:
            privatedir.ensure_dirs(directory, directory, "control socket directory", os.geteuid(), mode=0o755)
        except privatedir.UnsafePath as exc:
            raise ControlSocketError(str(exc)) from None
    else:
        os.makedirs(directory, mode=0o755, exist_ok=True)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ControlSocketError(f"control socket path {path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(PROBE_TIMEOUT)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        # Nobody listens: a crashed instance left it behind.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    except OSError as exc:
        raise ControlSocketError(f"control socket {path} can't be probed: {exc.strerror or exc}") from None
    finally:
        probe.close()
    raise ControlSocketInUse(f"control socket {path} is in use by a running edgeproxy")


def _give_to_group(path: str, gid: int) -> None:
    """chown the socket to ``gid``. Only called when bind() did not already give it that group: under the
    shipped unit (``Group=edgeproxy``, ``control_group = "edgeproxy"``) it never runs, which matters because
    the unit's ``SystemCallFilter=~@privileged`` makes every chown fail with EPERM."""
    try:
        os.chown(path, -1, gid)
    except PermissionError as exc:  # the caller prefixes the path
        raise PermissionError(exc.errno, (
            f"can't give it to group {_group_name(gid)} ({exc.strerror}): run the service with that group as "
            "its Group= (or as a SupplementaryGroups= and with SystemCallFilter=@chown allowed under systemd), "
            "or set [server] control_group to the process's own group")) from None


def _group_name(gid: int) -> str:
    try:
        return f"{grp.getgrgid(gid).gr_name} ({gid})"
    except KeyError:
        return str(gid)


class ControlServer:
    """Serve the control protocol on a UNIX socket; ``await start()``, then ``close()``."""

    def __init__(
        self,
        path: str,
        handler: Handler,
        *,
        mode: int = 0o660,
        group: str | int | None = None,
        allowed_uids: Iterable[int] = (),
        allowed_gids: Iterable[int] = (),
        max_line: int = protocol.DEFAULT_MAX_LINE,
        idle_timeout: float = IDLE_TIMEOUT,
        expected_errors: tuple[type[Exception], ...] = (),
        own_dir: bool = False,
    ) -> None:
        self.path = path
        self.own_dir = own_dir  # a default path: its directory must be ours alone (claim_path)
        self.handler = handler
        self.mode = mode
        self.group = group
        self.allowed_uids = frozenset(allowed_uids)
        self.allowed_gids = frozenset(allowed_gids)
        self.max_line = max_line
        self.idle_timeout = idle_timeout
        # Refusals the handler reports itself (a config that does not validate): answered, not logged as crashes.
        self.expected_errors = expected_errors
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._inode: tuple[int, int] | None = None

    async def start(self) -> None:
        sock = self._bind()
        try:
            self._server = await asyncio.start_unix_server(self._on_connect, sock=sock)
        except BaseException:
            sock.close()
            self._unlink()
            raise
        log.info("control socket listening on %s", self.path)

    def _bind(self) -> socket.socket:
        claim_path(self.path, self.own_dir)
        gid = resolve_group(self.group) if self.group is not None else -1
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(self.path)
            st = os.stat(self.path)
            self._inode = (st.st_dev, st.st_ino)
            # bind() applied the umask; nobody can connect before listen(), so fixing the mode now is race-free.
            os.chmod(self.path, self.mode)
            if gid >= 0 and st.st_gid != gid:
                _give_to_group(self.path, gid)
            if gid >= 0:  # the group given the socket is the group meant to use it: no need to list its gid too
                self.allowed_gids |= {gid}
        except OSError as exc:
            sock.close()
            self._unlink()
            raise ControlSocketError(f"control socket {self.path}: {exc.strerror or exc}") from None
        sock.setblocking(False)
        return sock

    def close(self) -> None:
        """Stop listening, drop every connection and remove the socket file (if it is still ours)."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in self._tasks:
            task.cancel()
        self._unlink()

    async def wait_closed(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _unlink(self) -> None:
        # A successor may already have replaced a socket we consider stale; only remove the inode we bound.
        if self._inode is None:
            return
        with contextlib.suppress(FileNotFoundError):
            st = os.lstat(self.path)
            if (st.st_dev, st.st_ino) == self._inode:
                os.unlink(self.path)
        self._inode = None

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            if self._admit(writer):
                await self._serve(reader, writer)
            else:
                writer.write(protocol.encode_error(protocol.PERMISSION_DENIED))
                await asyncio.wait_for(writer.drain(), self.idle_timeout)
        except (OSError, TimeoutError):
            pass  # the peer went away or idled out: nothing left to tell it
        finally:
            self._tasks.discard(task)
            writer.close()

    def _admit(self, writer: asyncio.StreamWriter) -> bool:
        sock = writer.get_extra_info("socket")
        pid, uid, gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
        gids = peer_groups(uid, gid) if self.allowed_gids else [gid]
        allowed = peer_allowed(
            uid, gids, own_uid=os.getuid(), allowed_uids=self.allowed_uids, allowed_gids=self.allowed_gids
        )
        if not allowed:
            log.warning("control socket: refused pid %d uid %d gid %d", pid, uid, gid)
        return allowed

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        framer = LineFramer(self.max_line)
        while True:
            data = await asyncio.wait_for(reader.read(READ_CHUNK), self.idle_timeout)
            if not data:
                # A peer that half-closes after an unterminated last line still gets its answer.
                await self._answer(framer.rest(), writer)
                return
            framer.feed(data)
            try:
                while (line := framer.next_line()) is not None:
                    await self._answer(line, writer)
            except LineTooLong as exc:  # we can't find the next line boundary reliably: answer, then hang up
                writer.write(protocol.encode_error(str(exc)))
                await asyncio.wait_for(writer.drain(), self.idle_timeout)
                return

    async def _answer(self, line: bytes, writer: asyncio.StreamWriter) -> None:
        if not line.strip():
            return
        writer.write(await self._reply(line))
        await asyncio.wait_for(writer.drain(), self.idle_timeout)

    async def _reply(self, line: bytes) -> bytes:
        try:
            command = protocol.parse_request(line, self.max_line)
        except ProtocolError as exc:
            return protocol.encode_error(str(exc))
        fields = protocol.reply_echo(command)
        if isinstance(command, PingCommand):
            fields["pid"] = os.getpid()
        try:
            fields.update(await self.handler(command) or {})
            return protocol.encode_reply(fields)
        except Exception as exc:  # the handler is foreign code; one bad command must not kill the channel
            if not isinstance(exc, self.expected_errors):
                log.exception("control command %s failed", command.cmd)
            return protocol.encode_error(f"{command.cmd} failed: {exc}")
