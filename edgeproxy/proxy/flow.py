"""Write back-pressure for one transport, the same on both sides of the proxy (uvicorn's FlowControl).

The transport calls its protocol's ``pause_writing`` when its buffer passes the high-water mark and
``resume_writing`` when it drained; the protocol hands both to a ``FlowControl``. A writer that must not outrun the
peer awaits ``drain``, which returns at once unless writing is paused; a lost connection releases it too, so
nobody waits on a peer that is gone.
"""

from __future__ import annotations

import asyncio


class FlowControl:
    __slots__ = ("loop", "paused", "waiter")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.paused = False
        self.waiter: asyncio.Future[None] | None = None

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False
        self.release()

    def release(self) -> None:
        """Wake a waiting writer: the buffer drained, or the connection is gone (it then finds that out)."""
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def drain(self) -> None:
        if self.paused:
            self.waiter = self.loop.create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
