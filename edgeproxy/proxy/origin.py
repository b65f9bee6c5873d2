"""Origin connections (the origin-side parser seam over an asyncio.Protocol) and the keep-alive pool.

Rules kept here:
- One ``ResponseParser`` (origin_parser.py: h11, or httptools with ``[origin] parser``) per TCP connection; it
  frames both directions, so framing headers from the client are never copied across (the caller passes
  end-to-end fields and the framing fields of the body it sends).
- Back-pressure: the socket is read only while someone waits for an event, so a slow client never makes us
  buffer an origin's whole body (at most one socket read is held).
- A connection goes back to the pool only when the parser says the exchange ended cleanly on both sides; after any
  error it is closed, never reused (a framing error may leave bytes that belong to nobody).
- The pool follows aiohttp's connector: a deque of idle connections per origin with their last-use time, one
  cleanup timer, total and per-origin limits, and a FIFO of waiters for a free slot.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from edgeproxy.errors import OriginConnectError, OriginProtocolError, OriginTimeout, PoolTimeout
from edgeproxy.http.headers import Headers
from edgeproxy.netutil import set_nodelay
from edgeproxy.proxy.backends import make_response_parser
from edgeproxy.proxy.flow import FlowControl
from edgeproxy.proxy.origin_parser import OriginEvent, ResponseError, ResponseHead
from edgeproxy.proxy.parser import CLOSED, END, NEED_DATA


@dataclass(frozen=True, slots=True)
class OriginAddress:
    scheme: str
    host: str
    port: int
    ca_file: str | None = None
    verify: bool = True
    cert_file: str | None = None  # a client certificate to show (a cluster peer with mutual TLS)
    key_file: str | None = None

    @classmethod
    def from_url(cls, url: str, ca_file: str | None = None, verify: bool = True, cert_file: str | None = None,
                 key_file: str | None = None) -> OriginAddress:
        scheme, _, rest = url.partition("://")
        hostport = rest.split("/", 1)[0]
        if hostport.startswith("["):
            host, _, port = hostport[1:].partition("]")
            port = port.lstrip(":")
        else:
            host, _, port = hostport.partition(":")
        default = 443 if scheme == "https" else 80
        return cls(scheme, host, int(port) if port else default, ca_file, verify, cert_file, key_file)

    @property
    def authority(self) -> bytes:
        default = 443 if self.scheme == "https" else 80
        return (self.host if self.port == default else f"{self.host}:{self.port}").encode()


def client_ssl_context(address: OriginAddress) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=address.ca_file)
    if not address.verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if address.cert_file is not None:
        ctx.load_cert_chain(address.cert_file, address.key_file)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


class OriginClosed(OriginProtocolError):
    """The origin closed the connection before sending anything (a stale pooled connection)."""


class OriginClosedUnsent(OriginClosed):
    """The connection was closed before any byte of the request went out: the origin never saw it, so any request
    may be sent again (RFC 9110 §9.2.2 limits retries to requests the origin may have acted on)."""


class OriginConnection(asyncio.Protocol):
    """One connection to an origin; the exchange drives it with ``send_*`` and ``next_event``."""

    def __init__(self, address: OriginAddress, parser: str = "h11") -> None:
        self.address = address
        self.parser = make_response_parser(parser)
        # Made inside the loop's create_connection. Kept: asyncio.get_running_loop() costs a getpid() syscall per
        # call on CPython 3.11 (~3% of a miss's CPU, py-spy).
        self.loop = asyncio.get_running_loop()
        self.transport: Any = None
        self.waiter: asyncio.Future[None] | None = None
        self.lost = False
        self.last_used = 0.0
        self.reused = False
        self.received = 0  # response bytes since the request was sent
        self.flow = FlowControl(self.loop)

    # ---- asyncio.Protocol ----
    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        set_nodelay(transport)

    def data_received(self, data: bytes) -> None:
        if self.parser.idle:
            # Bytes on an idle pooled connection belong to no request: never reuse it.
            self.close()
            return
        self.parser.receive_data(data)
        self.received += len(data)
        # One read at a time: libuv reads up to 32 times per wake-up while reading is on, megabytes of a fast
        # origin's body before the reader runs. ``_wait_data`` resumes reading when the next event is wanted.
        self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool | None:
        if self.parser.idle:
            self.lost = True  # an idle pooled connection the origin closed: never hand it out again
        self.parser.receive_data(b"")
        self._wake()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.parser.receive_data(b"")
        self._wake()
        self.flow.release()

    def pause_writing(self) -> None:
        self.flow.pause()

    def resume_writing(self) -> None:
        self.flow.resume()

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    # ---- used by the exchange ----
    @property
    def usable(self) -> bool:
        return not self.lost and self.transport is not None and not self.transport.is_closing()

    def send_head(self, method: bytes, target: bytes, headers: Headers) -> None:
        self.received = 0
        data = self.parser.send_head(method, target, headers)  # RequestError is an OriginProtocolError
        try:
            self.transport.write(data)
        except RuntimeError:
            # The origin closed this pooled connection an instant ago (uvloop refuses writes on a closed
            # handle before connection_lost runs): a stale connection, retried like one.
            self.lost = True
            raise OriginClosedUnsent("origin closed the connection before the request was sent") from None

    async def send_body(self, chunk: bytes) -> None:
        if chunk:
            self._write_more(self.parser.send_data(chunk))
            if not self.lost:
                await self.flow.drain()

    def send_end(self) -> None:
        self._write_more(self.parser.send_end())

    def _write_more(self, data: bytes) -> None:
        """Write after the head: a connection closed meanwhile is an origin that hung up mid-request."""
        try:
            self.transport.write(data)
        except RuntimeError:
            self.lost = True
            raise OriginClosed("origin closed the connection while the request was sent") from None

    def poll(self) -> OriginEvent | None:
        """The next event if the bytes received so far hold one, else None (never waits); raises Origin* errors.
        The relay uses it to send what is already here in one write before it waits for more."""
        try:
            event = self.parser.next_event()
        except ResponseError as e:
            if not self.received:  # with no byte received, the only possible error is the close
                # Closed after reading our request, before answering: a stale pooled connection.
                raise OriginClosed("origin closed the connection before answering") from None
            raise OriginProtocolError(f"invalid response from origin: {e}") from None
        return None if event is NEED_DATA else event

    async def next_event(self, timeout: float) -> OriginEvent:
        """The next event, waiting at most ``timeout`` for data; raises Origin* errors."""
        while True:
            event = self.poll()
            if event is not None:
                return event
            if self.lost:
                raise OriginClosed("origin closed the connection")
            await self._wait_data(timeout)

    async def _wait_data(self, timeout: float) -> None:
        loop = self.loop
        self.waiter = waiter = loop.create_future()
        self.transport.resume_reading()
        timer = loop.call_later(timeout, _expire, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self.waiter = None
        if waiter.result() is _TIMED_OUT:
            raise OriginTimeout(f"origin sent nothing for {timeout:g}s")

    async def response_head(self, timeout: float) -> ResponseHead:
        event = await self.next_event(timeout)  # 1xx answers are consumed by the parser
        if type(event) is ResponseHead:
            return event
        if event is CLOSED:
            raise OriginClosed("origin closed the connection before answering")
        raise OriginProtocolError(f"unexpected {event!r} before the response")

    async def body(self, timeout: float) -> AsyncIterator[bytes]:
        """Body chunks until EndOfMessage; raises if the body ends early or breaks its framing."""
        while (chunk := body_chunk(await self.next_event(timeout))) is not None:
            yield chunk

    def stray_bytes(self) -> bool:
        """Bytes arrived past the end of the response: its framing can't be trusted (a Content-Length shorter than
        the body, or an origin answering twice), so the response must not be stored and the connection not reused.
        Only what has arrived so far counts: bytes still in flight show up when the pool watches the idle
        connection, which then closes it."""
        return bool(self.parser.trailing)

    def answered_twice(self) -> bool:
        """The bytes past the end of the response start another response: the origin and we disagree on where
        its message ended (response splitting, a desynchronized connection), so the response can't be trusted."""
        return self.parser.trailing.lstrip(b"\r\n").startswith(b"HTTP/")

    def reusable(self) -> bool:
        return self.usable and self.parser.reusable() and not self.stray_bytes()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        self.lost = True


def body_chunk(event: OriginEvent) -> bytes | None:
    """A body event's data, or None at END; raises if the body ends early or breaks its framing."""
    if type(event) is bytes:
        return event
    if event is END:
        return None
    if event is CLOSED:
        raise OriginProtocolError("origin closed the connection mid-body")
    raise OriginProtocolError(f"unexpected {event!r} in body")


_TIMED_OUT = object()


def _expire(fut: asyncio.Future[Any]) -> None:
    if not fut.done():
        fut.set_result(_TIMED_OUT)


class OriginPool:
    """Keep-alive connections per origin, with total and per-origin limits."""

    def __init__(self, *, connect_timeout: float, idle_timeout: float, max_total: int, max_per_origin: int,
                 wait_timeout: float, parser: str = "h11") -> None:
        self.parser = parser  # the origin-side backend for new connections
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.max_total = max_total
        self.max_per_origin = max_per_origin
        self.wait_timeout = wait_timeout
        self.idle: dict[OriginAddress, collections.deque[OriginConnection]] = {}
        self.active: dict[OriginAddress, int] = collections.defaultdict(int)
        self.total = 0
        self.waiters: collections.deque[tuple[OriginAddress, asyncio.Future[None]]] = collections.deque()
        self.ssl_contexts: dict[OriginAddress, ssl.SSLContext] = {}
        self.cleanup_handle: asyncio.TimerHandle | None = None
        self.opened = 0  # connections ever opened (tests count reuse with it)

    async def acquire(self, address: OriginAddress, fresh: bool = False,
                      connect_timeout: float | None = None) -> OriginConnection:
        """An idle pooled connection (most recent first) or a new one; ``fresh`` skips the idle ones.
        ``connect_timeout``: this connection's, instead of the pool's (a cluster peer is given less time)."""
        idle = None if fresh else self.idle.get(address)
        while idle:
            conn = idle.pop()  # most recently used first: the likeliest still open
            if conn.usable and time.monotonic() - conn.last_used < self.idle_timeout:
                conn.reused = True
                return conn
            self._discard(conn)
        if not self._has_slot(address):
            await self._wait_for_slot(address)
        self.total += 1
        self.active[address] += 1
        try:
            return await self._connect(address, connect_timeout or self.connect_timeout)
        except BaseException:
            self._free_slot(address)
            raise

    def _has_slot(self, address: OriginAddress) -> bool:
        return self.total < self.max_total and self.active[address] < self.max_per_origin

    async def _wait_for_slot(self, address: OriginAddress) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_timeout
        while not self._has_slot(address):
            if not self._evict_idle_elsewhere(address):
                fut = loop.create_future()
                self.waiters.append((address, fut))
                remaining = deadline - loop.time()
                try:
                    await asyncio.wait_for(fut, max(remaining, 0))
                except TimeoutError:
                    raise PoolTimeout(f"no free connection to {address.host}:{address.port}") from None
                finally:
                    if not fut.done():
                        fut.cancel()

    def _evict_idle_elsewhere(self, address: OriginAddress) -> bool:
        """At the total limit, an idle connection to another origin may make room."""
        if self.active[address] >= self.max_per_origin:
            return False
        for other, idle in self.idle.items():
            if other != address and idle:
                self._discard(idle.popleft())
                return True
        return False

    async def _connect(self, address: OriginAddress, timeout: float) -> OriginConnection:
        loop = asyncio.get_running_loop()
        parser = self.parser
        ctx = None
        if address.scheme == "https":
            ctx = self.ssl_contexts.get(address) or self.ssl_contexts.setdefault(address, client_ssl_context(address))
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(lambda: OriginConnection(address, parser), address.host, address.port, ssl=ctx,
                                       server_hostname=address.host if ctx else None),
                timeout)
        except TimeoutError:
            raise OriginTimeout(f"connect to {address.host}:{address.port} timed out") from None
        except (OSError, ssl.SSLError) as e:
            raise OriginConnectError(f"connect to {address.host}:{address.port} failed: {e}") from None
        self.opened += 1
        self._schedule_cleanup()
        return conn

    def release(self, conn: OriginConnection) -> None:
        """Give a connection back: pooled when clean, closed otherwise."""
        if conn.reusable():
            conn.parser.next_cycle()
            conn.last_used = time.monotonic()
            conn.reused = False
            self.idle.setdefault(conn.address, collections.deque()).append(conn)
            conn.transport.resume_reading()  # watch for the origin closing it while idle
        else:
            self._discard(conn)
        self._wake_waiter()

    def _discard(self, conn: OriginConnection) -> None:
        conn.close()
        self._free_slot(conn.address)

    def _free_slot(self, address: OriginAddress) -> None:
        self.total -= 1
        self.active[address] -= 1
        self._wake_waiter()

    def _wake_waiter(self) -> None:
        while self.waiters:
            address, fut = self.waiters[0]
            if fut.done():
                self.waiters.popleft()
                continue
            if self._has_slot(address):
                self.waiters.popleft()
                fut.set_result(None)
            return

    def _schedule_cleanup(self) -> None:
        if self.cleanup_handle is None:
            loop = asyncio.get_running_loop()
            self.cleanup_handle = loop.call_later(max(self.idle_timeout / 2, 0.5), self._cleanup)

    def _cleanup(self) -> None:
        self.cleanup_handle = None
        now = time.monotonic()
        for idle in self.idle.values():
            while idle and (now - idle[0].last_used >= self.idle_timeout or not idle[0].usable):
                self._discard(idle.popleft())
        if self.total:
            self._schedule_cleanup()

    def close(self) -> None:
        for idle in self.idle.values():
            while idle:
                self._discard(idle.popleft())
        if self.cleanup_handle is not None:
            self.cleanup_handle.cancel()
            self.cleanup_handle = None
