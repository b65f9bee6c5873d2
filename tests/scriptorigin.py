"""A scriptable origin for integration tests: raw sockets, one thread per connection, behaviour scripted per path.

Requests are parsed with h11 (one fresh server connection per request, leftovers carried over), so chunked and
pipelined requests arrive whole; responses are written as raw bytes, so a script can frame them any way it likes
(Content-Length, chunked, close-delimited), delay or withhold them, or hang up. Everything is recorded: connections
opened and ended, and every request with the connection it came on. Bodies are counted, and only their first
64 KiB kept, so a test can push hundreds of megabytes through without this process holding them.

Not a general server: 127.0.0.1 only, every blocking call bounded by ``TIMEOUT``.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import h11

TIMEOUT = 30.0
KEEP = 64 * 1024
BLOCK = b"0123456789abcdef" * 4096  # 64 KiB


@dataclass
class Seen:
    """One request as the origin received it."""

    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]
    conn: int  # which connection (1, 2, ...)
    index: int  # requests earlier on the same connection
    body_length: int = 0
    body: bytes = b""  # the first KEEP bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name), None)

    def names(self) -> set[str]:
        return {k for k, _ in self.headers}


@dataclass
class Reply:
    """What to answer. ``stream`` bytes of filler are generated in 64 KiB blocks instead of ``body``."""

    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    stream: int = 0
    framing: str = "length"  # "length", "chunked", "close" (close-delimited) or "none" (HEAD, 204, 304)
    delay: float = 0.0  # seconds before the head
    stall: bool = False  # never answer; hold the connection until the peer closes it
    hangup: bool = False  # close without answering
    close: bool = False  # close after answering, without announcing it (add ``connection: close`` to announce)

    def chunks(self) -> Iterator[bytes]:
        if not self.stream:
            if self.body:
                yield self.body
            return
        left = self.stream
        while left:
            piece = BLOCK[: min(left, len(BLOCK))]
            left -= len(piece)
            yield piece


Script = Reply | Callable[[Seen], Reply]


def echo(seen: Seen) -> Reply:
    """The default script: the request as seen, as JSON."""
    body = json.dumps({"method": seen.method, "target": seen.target, "version": seen.version,
                       "headers": seen.headers, "conn": seen.conn, "index": seen.index,
                       "body_length": seen.body_length}).encode()
    return Reply(headers=[("content-type", "application/json")], body=body)


class ScriptOrigin:
    """``routes`` maps a path (the target without its query) to a ``Reply`` or a function of the ``Seen``."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.routes: dict[str, Script] = {}
        self.requests: list[Seen] = []
        self.opened = 0
        self.closed: set[int] = set()  # numbers of the connections that have ended
        self.lock = threading.Lock()
        self.sockets: set[socket.socket] = set()
        self.running = True
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def reset(self) -> None:
        with self.lock:
            self.routes.clear()
            self.requests.clear()

    def seen(self, path: str) -> list[Seen]:
        with self.lock:
            return [s for s in self.requests if s.target.split("?")[0] == path]

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.02)
        return predicate()

    def close(self) -> None:
        self.running = False
        self.listener.close()
        with self.lock:
            for sock in list(self.sockets):
                sock.close()

    def __enter__(self) -> ScriptOrigin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- serving ----
    def _accept(self) -> None:
        while self.running:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                self.opened += 1
                self.sockets.add(sock)
                number = self.opened
            threading.Thread(target=self._serve, args=(sock, number), daemon=True).start()

    def _serve(self, sock: socket.socket, number: int) -> None:
        sock.settimeout(TIMEOUT)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        leftover, index = b"", 0
        try:
            while self.running:
                got = self._read_request(sock, leftover, number, index)
                if got is None:
                    return
                seen, leftover = got
                if not self._answer(sock, seen):
                    return
                index += 1
        except (OSError, h11.RemoteProtocolError):
            return
        finally:
            sock.close()
            with self.lock:
                self.closed.add(number)
                self.sockets.discard(sock)

    def _read_request(self, sock: socket.socket, leftover: bytes, number: int,
                      index: int) -> tuple[Seen, bytes] | None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=1 << 20)
        if leftover:
            conn.receive_data(leftover)  # b"" would mean end of stream to h11
        seen: Seen | None = None
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(sock.recv(1 << 18))
            elif isinstance(event, h11.Request):
                seen = Seen(event.method.decode(), event.target.decode("latin-1"), event.http_version.decode(),
                            [(k.decode(), v.decode("latin-1")) for k, v in event.headers], number, index)
            elif isinstance(event, h11.Data) and seen is not None:
                if seen.body_length < KEEP:
                    seen.body += bytes(event.data[: KEEP - seen.body_length])
                seen.body_length += len(event.data)
            elif isinstance(event, h11.EndOfMessage) and seen is not None:
                with self.lock:
                    self.requests.append(seen)
                return seen, conn.trailing_data[0]
            else:
                return None  # closed, or a request this origin can't make sense of

    def _answer(self, sock: socket.socket, seen: Seen) -> bool:
        """Write the scripted reply; False when the connection must end."""
        script = self.routes.get(seen.target.split("?")[0], echo)
        reply = script(seen) if callable(script) else script
        if reply.hangup:
            return False
        if reply.stall:
            while sock.recv(65536):
                pass
            return False
        if reply.delay:
            time.sleep(reply.delay)
        sock.sendall(_head(reply, seen))
        for chunk in reply.chunks():
            if reply.framing == "chunked":
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            elif reply.framing != "none":
                sock.sendall(chunk)
        if reply.framing == "chunked":
            sock.sendall(b"0\r\n\r\n")
        return not (reply.close or reply.framing == "close")


def _head(reply: Reply, seen: Seen) -> bytes:
    fields = list(reply.headers)
    size = reply.stream or len(reply.body)
    if reply.framing == "length" or (reply.framing == "none" and size):
        fields.append(("content-length", str(size)))
    elif reply.framing == "chunked":
        fields.append(("transfer-encoding", "chunked"))
    if reply.framing == "close":
        fields.append(("connection", "close"))
    lines = [f"HTTP/1.1 {reply.status} X"] + [f"{k}: {v}" for k, v in fields]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
