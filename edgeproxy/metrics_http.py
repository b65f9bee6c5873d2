"""The optional metrics listener: ``GET /metrics`` in Prometheus text format on a loopback address.

A tiny h11 server on the proxy's own loop (no exporter thread): one response per request, then keep-alive. It
reads the figures through one callable (the Node's backend: this process's cache, or the workers' sums).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import h11

from edgeproxy.metrics import CONTENT_TYPE, render

Figures = Callable[[], tuple[dict[str, Any], ...]]  # () -> (counters, store stats[, fleet figures])


class MetricsProtocol(asyncio.Protocol):
    def __init__(self, figures: Figures) -> None:
        self.figures = figures
        self.conn = h11.Connection(h11.SERVER)
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.conn.receive_data(data)
        try:
            while True:
                event = self.conn.next_event()
                if isinstance(event, h11.Request):
                    self._answer(event)
                elif event is h11.PAUSED and self.conn.our_state is h11.DONE:
                    self.conn.start_next_cycle()
                elif event is h11.NEED_DATA or event is h11.PAUSED or isinstance(event, h11.ConnectionClosed):
                    break
        except (h11.RemoteProtocolError, h11.LocalProtocolError):
            self.transport.close()

    def _answer(self, request: h11.Request) -> None:
        if request.target.split(b"?")[0] == b"/metrics":
            body, status, ctype = render(*self.figures()), 200, CONTENT_TYPE.encode()
        else:
            body, status, ctype = b"not found: try /metrics\n", 404, b"text/plain"
        headers = [(b"content-type", ctype), (b"content-length", b"%d" % len(body))]
        out = self.conn.send(h11.Response(status_code=status, headers=headers))
        if request.method != b"HEAD":
            out += self.conn.send(h11.Data(data=body))
        out += self.conn.send(h11.EndOfMessage())
        self.transport.write(out)


async def serve_metrics(figures: Figures, host: str, port: int) -> asyncio.AbstractServer:
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: MetricsProtocol(figures), host, port, reuse_address=True)
