"""Named repeating timers on one event loop, cancelled together at stop.

The watchdog rides on these: a stuck loop stops every timer, the WATCHDOG=1 pings stop, and systemd restarts us.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class Timers:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.handles: dict[str, asyncio.TimerHandle] = {}

    def every(self, name: str, interval: float | None, action: Callable[[], object], first: float | None = None
              ) -> None:
        """Run ``action`` after ``first`` seconds (default ``interval``), then every ``interval``; None: never."""
        if not interval:
            return

        def tick() -> None:
            action()
            self.handles[name] = self.loop.call_later(interval, tick)
        self.handles[name] = self.loop.call_later(interval if first is None else first, tick)

    def once(self, name: str, delay: float, action: Callable[[], object]) -> None:
        self.handles[name] = self.loop.call_later(delay, action)

    def cancel_all(self) -> None:
        for handle in self.handles.values():
            handle.cancel()
        self.handles.clear()
