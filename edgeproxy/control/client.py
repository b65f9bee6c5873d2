"""A blocking client for the control socket, used by the CLI (and by tests).

Owns: connecting (lazily, once, reused for every request), sending one request line and reading one reply line,
and turning transport failures into ``ControlError`` subclasses whose message is one line an operator can act on.
Never: interprets reply fields beyond the envelope; retries (a purge must not be sent twice by accident); sends a
request to a server it does not trust (``server_trusted``: anyone who can make the socket's directory first, as in
a world-writable ``/tmp``, could otherwise answer a purge with a fake "done").
"""

from __future__ import annotations

import os
import socket
import struct
from types import TracebackType
from typing import Any

from edgeproxy import privatedir
from edgeproxy.control import protocol
from edgeproxy.control.protocol import PERMISSION_DENIED, LineFramer, ProtocolError

MIB = 1024 * 1024
# Replies (stats) may be larger than requests; still bounded so a confused peer can't exhaust memory.
MAX_REPLY_LINE = 16 * MIB
DEFAULT_TIMEOUT = 10.0


class ControlError(Exception):
    """The request could not be carried out; the message is one line for stderr."""


class ControlUnavailable(ControlError):
    """No server answers on the socket: not created, nobody listening, or no reply in time."""


class ControlPermissionDenied(ControlError):
    """The socket file's mode or the server's SO_PEERCRED check refused us."""


class ControlUntrusted(ControlPermissionDenied):
    """The process answering on the socket is not one we trust to be edgeproxy (``server_trusted``)."""


def server_trusted(server_uid: int, own_uid: int, directory: os.stat_result | None,
                   parent: os.stat_result | None) -> bool:
    """Whether to trust a server running as ``server_uid``: root, ourselves, or the user who owns the socket's
    ``directory`` (``lstat``) when only root could have given it to them: a directory writable by nobody else in a
    ``parent`` (``stat``) that is root's and writable by nobody else. The last is systemd's RuntimeDirectory
    (``/run/edgeproxy``, owned by the service user), which an operator in the service's group reaches."""
    if server_uid in (0, own_uid):
        return True
    if directory is None or parent is None or directory.st_uid != server_uid:
        return False
    return privatedir.refusal(directory, server_uid) is None and privatedir.refusal(parent, 0) is None


class ControlClient:
    def __init__(self, path: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.path = path
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._framer = LineFramer(MAX_REPLY_LINE)

    def request(self, fields: dict[str, Any]) -> dict[str, Any]:
        """Send one request and return the decoded reply (``ok`` may be false; the caller decides)."""
        sock = self._connect()
        try:
            self._send(sock, protocol.encode_request(fields))
            reply = protocol.decode_reply(self._read_line(sock))
        except (OSError, ProtocolError, ControlError) as exc:
            # Whatever was half-read belongs to this failed request: never reuse the connection after it.
            self.close()
            raise self._transport_error(exc) from None
        if not reply["ok"] and reply["error"] == PERMISSION_DENIED:
            self.close()  # the server hangs up after refusing
            raise ControlPermissionDenied(f"permission denied by control socket {self.path}")
        return reply

    def _transport_error(self, exc: Exception) -> ControlError:
        match exc:
            case ControlError():
                return exc
            case TimeoutError():
                return ControlUnavailable(f"control socket {self.path} did not answer within {self.timeout:g}s")
            case ProtocolError():
                return ControlError(f"control socket {self.path}: {exc}")
            case OSError():
                return ControlError(f"control socket {self.path}: {exc.strerror or exc}")
        return ControlError(str(exc))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _connect(self) -> socket.socket:
        if self._sock is not None:
            return self._sock
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except OSError as exc:
            sock.close()
            raise _connect_error(self.path, exc) from None
        try:
            self._check_server(sock)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        return sock

    def _check_server(self, sock: socket.socket) -> None:
        """Refuse a server we do not trust, before anything is sent to it (SO_PEERCRED: its uid at listen())."""
        _pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
        directory = os.path.dirname(os.path.abspath(self.path))
        try:
            found, parent = os.lstat(directory), os.stat(os.path.dirname(directory))
        except OSError:
            found = parent = None
        if not server_trusted(uid, os.geteuid(), found, parent):
            raise ControlUntrusted(
                f"control socket {self.path} is served by uid {uid}, not by root, by us (uid {os.geteuid()}) nor by "
                f"the owner of a directory only root could give it: not trusted")

    @staticmethod
    def _send(sock: socket.socket, data: bytes) -> None:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # a refusing server hangs up at once; its reason is still waiting in our receive buffer

    def _read_line(self, sock: socket.socket) -> bytes:
        while (line := self._framer.next_line()) is None:
            data = sock.recv(64 * 1024)
            if not data:
                raise ControlError(f"control socket {self.path} closed the connection without a reply")
            self._framer.feed(data)
        return line


def _connect_error(path: str, exc: OSError) -> ControlError:
    match exc:
        case FileNotFoundError():
            return ControlUnavailable(f"control socket {path} not found — is edgeproxy running?")
        case ConnectionRefusedError():
            return ControlUnavailable(f"control socket {path} refuses connections — is edgeproxy running?")
        case PermissionError():
            return ControlPermissionDenied(f"permission denied on control socket {path} (root or its group only)")
        case TimeoutError():
            return ControlUnavailable(f"control socket {path} did not accept within the timeout")
    return ControlError(f"control socket {path}: {exc.strerror or exc}")
