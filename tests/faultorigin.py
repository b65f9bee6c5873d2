"""A fault-injecting origin for integration tests: scriptable per path, and it records every byte it receives.

Rules kept here:
- It runs in the test process (threads over blocking sockets) so tests can script it and read its log directly;
  the proxy under test is a separate process. It listens on 127.0.0.1 on a port picked free at run time, and every
  stall is bounded (``stall`` seconds, cut short when the peer closes or the origin stops).
- Requests are parsed by a deliberately small, lenient parser, not h11: whatever reaches the origin must be
  recorded, well-formed or not, complete or not (``Request.complete``), so a test can assert that *nothing* was
  forwarded, or that a smuggled request never arrived.
- Responses are written as raw bytes from the ``FAULTS`` table, each naming the one thing it breaks. Every
  answer, broken or not, says ``cache-control: public, max-age=300``: a cache that stored a broken response would
  serve it again, and the next request for the URL would not reach the origin (the "never stored" check).
- A connection stays open after a response unless the fault closes it, so a proxy that reused a connection after
  a framing error would show up as two requests on one ``conn`` id.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

CACHEABLE = b"cache-control: public, max-age=300\r\n"
BODY_SIZE = 1000  # the declared length of the broken bodies
SENT_SIZE = 100  # what the broken bodies actually deliver
MAX_HEAD = 256 * 1024


@dataclass
class Request:
    """One request as it reached the origin; ``raw`` is its exact bytes (head, body, trailers)."""

    conn: int
    method: bytes = b""
    target: bytes = b""
    version: bytes = b""
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    trailers: list[tuple[bytes, bytes]] = field(default_factory=list)
    raw: bytes = b""
    complete: bool = False

    def header(self, name: bytes) -> bytes | None:
        return next((v for k, v in self.headers if k == name), None)


@dataclass
class Fault:
    """What the origin does for a path: ``kind`` names a ``FAULTS`` entry; ``stall`` bounds any stall."""

    kind: str = "ok"
    stall: float = 10.0


class _Reader:
    """Buffered reads from one connection; every byte read is appended to ``log`` (the connection's raw bytes)."""

    def __init__(self, sock: socket.socket, log: bytearray) -> None:
        self.sock, self.buf, self.log = sock, b"", log

    @property
    def consumed(self) -> int:
        return len(self.log) - len(self.buf)

    def fill(self) -> bool:
        try:
            data = self.sock.recv(65536)
        except OSError:
            return False
        self.log += data
        self.buf += data
        return bool(data)

    def until(self, marker: bytes) -> bytes | None:
        while marker not in self.buf:
            if len(self.buf) > MAX_HEAD or not self.fill():
                return None
        out, _, self.buf = self.buf.partition(marker)
        return out + marker

    def exactly(self, n: int) -> bytes | None:
        while len(self.buf) < n:
            if not self.fill():
                return None
        out, self.buf = self.buf[:n], self.buf[n:]
        return out


def read_request(reader: _Reader, req: Request) -> bool:
    """Fill ``req`` from the connection; True when a whole request arrived (head, then CL or chunked body).

    ``req.raw`` is the request's exact bytes when complete, else everything received from its first byte on.
    """
    start = reader.consumed
    ok = _read_message(reader, req)
    req.raw = bytes(reader.log[start:reader.consumed] if ok else reader.log[start:])
    req.complete = ok
    return ok


def _read_message(reader: _Reader, req: Request) -> bool:
    head = reader.until(b"\r\n\r\n")
    if head is None:
        return False
    line, *lines = head[:-4].split(b"\r\n")
    req.method, req.target, req.version = ([*line.split(b" ", 2), b"", b""])[:3]
    req.headers = _fields(lines)
    if req.header(b"transfer-encoding") is not None:
        return _read_chunked(reader, req)
    length = req.header(b"content-length") or b"0"
    body = reader.exactly(int(length)) if length.isdigit() else None
    req.body = reader.buf if body is None else body
    return body is not None


def _read_chunked(reader: _Reader, req: Request) -> bool:
    while True:
        line = reader.until(b"\r\n")
        if line is None:
            return False
        try:
            size = int(line[:-2].split(b";")[0], 16)
        except ValueError:
            return False
        if size == 0:
            break
        data = reader.exactly(size + 2)
        if data is None:
            return False
        req.body += data[:-2]
    while len(reader.buf) < 2:  # an empty trailer section is a lone CRLF
        if not reader.fill():
            return False
    trailer = reader.until(b"\r\n") if reader.buf.startswith(b"\r\n") else reader.until(b"\r\n\r\n")
    if trailer is None:
        return False
    req.trailers = _fields([t for t in trailer.split(b"\r\n") if t])
    return True


def _fields(lines: list[bytes]) -> list[tuple[bytes, bytes]]:
    out = []
    for line in lines:
        name, _, value = line.partition(b":")
        out.append((name.strip().lower(), value.strip()))
    return out


# ---- the responses: each writes to the socket and returns whether the connection stays open ----

def _head(status: bytes, *fields: bytes) -> bytes:
    return b"HTTP/1.1 " + status + b"\r\n" + CACHEABLE + b"".join(f + b"\r\n" for f in fields) + b"\r\n"


def _ok(s: socket.socket, req: Request, fault: Fault) -> bool:
    body = b"ok " + req.target
    s.sendall(_head(b"200 OK", b"content-length: %d" % len(body)) + body)
    return True


def _truncate(s: socket.socket, req: Request, fault: Fault) -> bool:
    s.sendall(_head(b"200 OK", b"content-length: %d" % BODY_SIZE) + b"t" * SENT_SIZE)
    return False


def _longer(s: socket.socket, req: Request, fault: Fault) -> bool:
    s.sendall(_head(b"200 OK", b"content-length: 10") + b"0123456789" + b"EXTRA BYTES BEYOND CONTENT-LENGTH")
    return True


def _reset(s: socket.socket, req: Request, fault: Fault) -> bool:
    s.sendall(_head(b"200 OK", b"content-length: %d" % BODY_SIZE) + b"r" * SENT_SIZE)
    # SO_LINGER with a zero timeout: close() sends RST instead of FIN.
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    return False


def _stall_head(s: socket.socket, req: Request, fault: Fault) -> bool:
    _wait_peer_close(s, fault.stall)
    return False


def _stall_body(s: socket.socket, req: Request, fault: Fault) -> bool:
    s.sendall(_head(b"200 OK", b"content-length: %d" % BODY_SIZE) + b"s" * SENT_SIZE)
    _wait_peer_close(s, fault.stall)
    return False


def _garbage_status(s: socket.socket, req: Request, fault: Fault) -> bool:
    s.sendall(b"HTTP/1.1 2xx Fine\r\n" + CACHEABLE + b"content-length: 2\r\n\r\nok")
    return True


def _two_lengths(s: socket.socket, req: Request, fault: Fault) -> bool:
    s.sendall(_head(b"200 OK", b"content-length: 5", b"content-length: 12") + b"hello, world")
    return True


def _bad_header(s: socket.socket, req: Request, fault: Fault) -> bool:
    s.sendall(_head(b"200 OK", b"x-evil: a\x00b", b"content-length: 2") + b"ok")
    return True


def _chunked_no_last(s: socket.socket, req: Request, fault: Fault) -> bool:
    s.sendall(_head(b"200 OK", b"transfer-encoding: chunked") + b"5\r\nhello\r\n5\r\nworld\r\n")
    return False


def _extra_after(s: socket.socket, req: Request, fault: Fault) -> bool:
    s.sendall(_head(b"200 OK", b"content-length: 2") + b"ok"
              + b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nsmuggled")
    return True


def _close_delimited(s: socket.socket, req: Request, fault: Fault) -> bool:
    s.sendall(_head(b"200 OK", b"connection: close") + b"c" * SENT_SIZE)
    return False


FAULTS: dict[str, Callable[[socket.socket, Request, Fault], bool]] = {
    "ok": _ok,
    "truncate": _truncate,  # body shorter than Content-Length, then close
    "longer": _longer,  # body longer than Content-Length
    "reset": _reset,  # RST mid-body
    "stall_head": _stall_head,  # nothing at all until the peer gives up
    "stall_body": _stall_body,  # head and part of the body, then nothing
    "garbage_status": _garbage_status,
    "two_lengths": _two_lengths,  # two different Content-Lengths
    "bad_header": _bad_header,  # NUL in a header value
    "chunked_no_last": _chunked_no_last,  # chunked, closed before the last chunk
    "extra_after": _extra_after,  # a complete response, then bytes that belong to no request
    "close_delimited": _close_delimited,  # neither Content-Length nor chunked: the body ends at close
}


def _wait_peer_close(s: socket.socket, seconds: float) -> None:
    """Stall for at most ``seconds``; return early when the peer closes (or the origin stops and closes us)."""
    with contextlib.suppress(OSError, ValueError):
        ready, _, _ = select.select([s], [], [], seconds)
        if ready:
            s.recv(65536, socket.MSG_PEEK)


class FaultOrigin:
    """The origin: ``script(path, kind)`` then point a proxy at ``url``; ``requests`` and ``connections`` log it."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.faults: dict[bytes, Fault] = {}
        self.requests: list[Request] = []
        self.logs: dict[int, bytearray] = {}  # every byte received, by connection id
        self.marks: dict[int, int] = {}  # where each log stood at the last ``reset``
        self.accepted = 0  # connections accepted since the last ``reset``
        self.lock = threading.Lock()
        self.open: set[socket.socket] = set()
        self.closed: set[int] = set()  # ids of connections this origin has closed or seen closed
        self.next_id = 0  # ids keep growing across ``reset`` so old pooled connections never alias new ones
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def connections(self) -> int:
        """Connections accepted since the last ``reset``."""
        return self.accepted

    def is_closed(self, conn_id: int) -> bool:
        with self.lock:
            return conn_id in self.closed

    def script(self, path: str, kind: str, stall: float = 10.0) -> None:
        if kind not in FAULTS:
            raise ValueError(f"unknown fault {kind!r}")
        self.faults[path.encode()] = Fault(kind, stall)

    def reset(self) -> None:
        """Forget the logs and scripts (between tests sharing one origin); connections already open stay."""
        with self.lock:
            self.requests.clear()
            self.faults.clear()
            self.marks = {conn_id: len(log) for conn_id, log in self.logs.items()}
            self.accepted = 0

    def received(self) -> bytes:
        """Every byte received since the last ``reset``, on any connection, old or new."""
        with self.lock:
            return b"".join(bytes(log[self.marks.get(conn_id, 0):]) for conn_id, log in self.logs.items())

    def settle(self, timeout: float = 5.0) -> bool:
        """Wait until the origin has taken in everything the kernel holds for it and recorded it: no connection
        waiting to be accepted, no unread bytes or unread close on an open connection, every byte received part of
        a recorded request. Whatever the proxy wrote before answering its client is then in the log, whichever
        thread reads it. True if that happened within ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self._pending() and self._all_recorded():
                return True
            time.sleep(0.005)
        return False

    def _pending(self) -> bool:
        with self.lock:
            socks = [self.listener, *self.open]
        try:
            return bool(select.select(socks, [], [], 0)[0])
        except (OSError, ValueError):
            return True  # a socket closed under us: look again

    def _all_recorded(self) -> bool:
        received = len(self.received())
        with self.lock:
            return sum(len(r.raw) for r in self.requests) >= received

    def requests_for(self, target: str) -> list[Request]:
        with self.lock:
            return [r for r in self.requests if r.target == target.encode()]

    def stop(self) -> None:
        self.stopping.set()
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        with self.lock:
            for s in list(self.open):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
        self.thread.join(5)

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                s, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                self.next_id += 1
                self.accepted += 1
                conn_id = self.next_id
                log = self.logs[conn_id] = bytearray()
                self.open.add(s)
            threading.Thread(target=self._serve, args=(s, conn_id, log), daemon=True).start()

    def _serve(self, s: socket.socket, conn_id: int, log: bytearray) -> None:
        reader = _Reader(s, log)
        try:
            while not self.stopping.is_set():
                req = Request(conn_id)
                complete = read_request(reader, req)
                with self.lock:  # one step, so a reader of the log sees a cut-off request and its close together
                    if req.raw:
                        self.requests.append(req)
                    if not complete:
                        self.closed.add(conn_id)
                if not complete:
                    return
                fault = self.faults.get(req.target.split(b"?")[0], Fault())
                if not FAULTS[fault.kind](s, req, fault):
                    return
        except OSError:
            return
        finally:
            with self.lock:
                self.open.discard(s)
                self.closed.add(conn_id)
            s.close()


@contextlib.contextmanager
def fault_origin() -> Iterator[FaultOrigin]:
    origin = FaultOrigin()
    try:
        yield origin
    finally:
        origin.stop()
