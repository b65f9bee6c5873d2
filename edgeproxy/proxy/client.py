"""The client side: one ``asyncio.Protocol`` per client connection, feeding a parser and writing bytes.

Rules kept here:
- This layer only moves bytes: parsing is the parser seam's, decisions are the exchange's.
- A request the edge can answer at once (a cache hit, an error, a preflight) is answered synchronously inside
  ``data_received``: no task, no await, one write. Everything else runs as one task per exchange.
- Requests are answered in order: while an exchange runs, further pipelined bytes stay in the parser and reading
  pauses (back-pressure); it resumes when the exchange wants body bytes or is done.
- Deadlines are a field checked by one sweeper per process (``Edge.sweep``), not a timer per request: a head must
  arrive whole within ``header_timeout`` of its first byte (slowloris), an idle keep-alive connection closes after
  ``keepalive_timeout``, a body read waits at most ``body_timeout``.
- A request body must also keep up ``min_body_rate`` bytes/s over each ``RATE_WINDOW`` of waiting for it (the
  slow-POST attack: a few bytes every ``body_timeout`` would otherwise hold a connection and an exchange for
  hours). Only time spent waiting for the client counts: while the exchange is busy elsewhere (reading is paused,
  e.g. a slow origin taking the upload), the window stands still. Either deadline answers 408 and closes.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from edgeproxy.errors import BadRequest, ClientError, ProxyError, RequestTimeout
from edgeproxy.netutil import set_nodelay
from edgeproxy.proxy.delivery import write_error
from edgeproxy.proxy.exchange import begin
from edgeproxy.proxy.flow import FlowControl
from edgeproxy.proxy.parser import CLOSED, END, NEED_DATA, RequestHead

if TYPE_CHECKING:
    from edgeproxy.proxy.edge import Edge

INF = float("inf")
CONTINUE_100 = b"HTTP/1.1 100 Continue\r\n\r\n"

# What a deadline means when it passes.
IDLE, HEAD, BODY, BUSY = 0, 1, 2, 3
# Long enough that a TCP retransmission or a brief radio stall doesn't cut an honest upload.
RATE_WINDOW = 5.0


class ClientConnection(asyncio.Protocol):
    __slots__ = (
        "edge", "scheme", "parser", "transport", "peer", "log_peer", "task", "closed", "flow",
        "body_waiter", "deadline", "phase", "continue_due", "requests", "body_done", "lane_key", "body_error",
        "body_deadline", "rate_mark", "rate_bytes", "waited_until",
    )

    def __init__(self, edge: Edge, scheme: str = "http") -> None:
        self.edge = edge
        self.scheme = scheme
        self.parser = edge.make_parser()
        self.transport: Any = None
        self.peer = "-"
        self.log_peer = b"-"  # the peer as the access log writes it
        self.task: asyncio.Task[None] | None = None
        self.closed = False
        self.flow = FlowControl(edge.loop)
        self.body_waiter: asyncio.Future[None] | None = None
        self.deadline = INF
        self.phase = HEAD
        self.continue_due = False
        self.requests = 0
        self.body_done = True
        # (scheme, Host, target) of the head in this read, which the fast lane scanned but could not answer: the
        # full path publishes its hit under it (proxy/lane.py)
        self.lane_key: tuple[str, bytes, bytes] | None = None
        self.body_error: ClientError | None = None  # set by the sweeper: the next body read raises it
        self.body_deadline = INF  # body_timeout: the next piece must come by then
        self.rate_mark = INF  # start of the current min_body_rate window (INF: no body read yet)
        self.rate_bytes = 0  # body bytes received in that window
        self.waited_until = 0.0  # when the last wait for body bytes ended

    # ---- asyncio.Protocol ----
    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        set_nodelay(transport)
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if isinstance(peer, tuple) else "unix"
        self.log_peer = self.peer.encode()
        if not self.edge.admit(self):
            transport.abort()
            self.closed = True
            return
        self.deadline = self.edge.loop.time() + self.edge.config.server.header_timeout

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        lane = self.edge.lane
        if lane is not None and self.task is None and not self.flow.paused and self.parser.idle and lane.answer(
                self, data):
            return
        if self.phase == IDLE:
            self.phase = HEAD
            self.deadline = self.edge.loop.time() + self.edge.config.server.header_timeout
        try:
            self.parser.feed(data)
        except ClientError as e:
            self.fail(e)
            return
        if self.task is None:
            self.serve()
            return
        # An exchange owns the connection: hold further bytes in the kernel, not in memory. Even when it waits for
        # body bytes, one read is enough: libuv reads up to 32 times per wake-up while reading is on (megabytes of a
        # fast upload), and ``_wait_body`` resumes reading when the exchange wants more.
        self.transport.pause_reading()
        if self.phase == BODY:
            self.rate_bytes += len(data)
        if self.body_waiter is not None and not self.body_waiter.done():
            self.body_waiter.set_result(None)

    def eof_received(self) -> bool:
        try:
            self.parser.feed(b"")
        except ClientError as e:
            self.fail(e)
            return False
        if self.task is None:
            self.serve()
        elif self.body_waiter is not None and not self.body_waiter.done():
            self.body_waiter.set_result(None)
        return True  # half-close: finish writing what is in flight

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.edge.release(self)
        self.flow.release()
        if self.body_waiter is not None and not self.body_waiter.done():
            self.body_waiter.set_result(None)

    def pause_writing(self) -> None:
        # A client that doesn't read its answers must not make us queue more of them: hits are answered
        # synchronously, so pipelined requests would pile whole bodies into the write buffer. Stop reading (and
        # answering) until the buffer drains.
        self.flow.pause()
        if not self.closed:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.flow.resume()
        if self.task is None and not self.closed:
            self.transport.resume_reading()
            self.serve()  # requests that arrived meanwhile wait in the parser

    # ---- the request loop ----
    def serve(self) -> None:
        """Parse and answer requests until one needs a task or more bytes are needed."""
        parser = self.parser
        while not self.closed and not self.flow.paused:
            try:
                event = parser.next_event()
                if type(event) is RequestHead:
                    self.requests += 1
                    self.phase = BUSY
                    self.deadline = INF
                    self.body_done = not event.has_body
                    self.rate_mark = INF
                    if not event.has_body:
                        parser.next_event()  # the END of an empty body
                    handled = begin(self.edge, self, event)
                    self.lane_key = None  # the read it came in is used up
                    if not handled:
                        return  # an exchange task took over
                    continue
            except ClientError as e:
                self.fail(e)
                return
            if event is NEED_DATA:
                return
            if event is CLOSED:
                self.transport.close()
                self.closed = True
                return
            self.fail(BadRequest("unexpected data between requests"))
            return

    def response_done(self, keep_alive: bool) -> bool:
        """After a whole response is written: ready the next cycle or close. True when the connection stays."""
        if self.closed:
            return False
        if not keep_alive or not self.body_done:
            # An unread request body would be parsed as the next request: close instead (RFC 9112 §9.6).
            self.transport.close()
            self.closed = True
            return False
        try:
            self.parser.cycle_done()
        except ClientError as e:
            self.fail(e)
            return False
        self.phase = IDLE
        self.deadline = self.edge.loop.time() + self.edge.config.server.keepalive_timeout
        return True

    def response_done_fast(self, keep_alive: bool) -> None:
        """``response_done`` for an answer from the fast lane: the parser never saw the bytes."""
        if not keep_alive:
            self.transport.close()
            self.closed = True
            return
        edge = self.edge
        self.phase = IDLE
        self.deadline = edge.loop.time() + edge.keepalive_timeout

    def exchange_done(self, keep_alive: bool) -> None:
        """Called by an exchange task when its response is complete."""
        self.task = None
        if self.response_done(keep_alive):
            self.transport.resume_reading()
            self.serve()

    def fail(self, error: ProxyError) -> None:
        """Answer a client error (when nothing was written yet) and close."""
        if not self.closed:
            write_error(self, error, None)
            self.transport.close()
            self.closed = True

    # ---- used by exchanges ----
    async def drain(self) -> None:
        if not self.closed:
            await self.flow.drain()

    async def read_body(self) -> bytes | None:
        """The next request body chunk, or None at its end; raises ClientError on timeout or close."""
        parser = self.parser
        while True:
            event = parser.next_event()
            if type(event) is bytes:
                return event
            if event is END:
                self.body_done = True
                return None
            if event is CLOSED or self.closed:
                raise BadRequest("client closed the connection inside the request body")
            if self.continue_due:
                self.continue_due = False
                self.transport.write(CONTINUE_100)
            await self._wait_body()

    async def _wait_body(self) -> None:
        loop = self.edge.loop
        now = loop.time()
        if self.rate_mark == INF:
            self.rate_mark, self.rate_bytes = now, 0
        else:
            self.rate_mark += now - self.waited_until  # time the exchange spent elsewhere isn't the client's
        self.body_waiter = loop.create_future()
        self.phase = BODY
        self.body_deadline = now + self.edge.config.server.body_timeout
        self.deadline = min(self.body_deadline, self.rate_mark + RATE_WINDOW)
        self.transport.resume_reading()
        try:
            await self.body_waiter
        finally:
            self.body_waiter = None
            self.phase = BUSY
            self.deadline = INF
            self.waited_until = loop.time()
        if self.body_error is not None:
            raise self.body_error
        if self.closed:
            raise BadRequest("client closed the connection inside the request body")

    def _body_expired(self, now: float) -> None:
        """The body deadline or the end of a rate window: 408 (written by the exchange), or a new window."""
        assert self.body_waiter is not None
        if now >= self.body_deadline:
            self.body_error = RequestTimeout("request body timeout")
        elif self.rate_bytes < self.edge.config.server.min_body_rate * (now - self.rate_mark):
            self.body_error = RequestTimeout("request body slower than min_body_rate")
        else:
            self.rate_mark, self.rate_bytes = now, 0
            self.deadline = min(self.body_deadline, now + RATE_WINDOW)
            return
        if not self.body_waiter.done():
            self.body_waiter.set_result(None)

    def expire(self, now: float) -> None:
        """Called by the sweeper when ``deadline`` has passed."""
        if self.closed:
            return
        if self.phase == BODY and self.body_waiter is not None:
            self._body_expired(now)
        elif self.phase == HEAD and self.task is None:
            self.fail(RequestTimeout())
        else:
            self.transport.close()
            self.closed = True
