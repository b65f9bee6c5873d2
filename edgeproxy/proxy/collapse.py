"""Miss collapsing: concurrent misses for one cache key share one origin fetch (Varnish's "busy" objects).

Rules kept here:
- The first miss for a key leads: it fetches and stores; later ones wait for it (bounded by ``timeout``), then
  look the cache up again. They never receive the leader's response itself: only what the cache stored, so a
  response carrying Set-Cookie or ``private`` is never handed to a waiter.
- When the leader's response turned out unstorable, the key is remembered as uncacheable for ``hit_for_miss``
  seconds (Varnish's hit-for-miss): during that time misses for it go to the origin in parallel instead of queueing
  behind each other. A fetch that failed (no complete response) starts no such window.
- One background revalidation per key at a time (stale-while-revalidate).
"""

from __future__ import annotations

import asyncio
import time


class Collapser:
    def __init__(self, timeout: float, hit_for_miss: float) -> None:
        self.timeout = timeout
        self.hit_for_miss = hit_for_miss
        self.inflight: dict[str, asyncio.Future[None]] = {}
        self.uncacheable: dict[str, float] = {}
        self.revalidating: set[str] = set()

    def lead(self, key: str) -> bool:
        """Register the caller as the leader for ``key``; False when another fetch leads or the key is hit-for-miss."""
        if key in self.inflight or self._hit_for_miss(key):
            return False
        self.inflight[key] = asyncio.get_running_loop().create_future()
        return True

    def _hit_for_miss(self, key: str) -> bool:
        until = self.uncacheable.get(key)
        if until is None:
            return False
        if until > time.monotonic():
            return True
        del self.uncacheable[key]  # the window is over: the next miss leads and finds out again
        return False

    def done(self, key: str, uncacheable: bool) -> None:
        """The leader's fetch ended. Only a response judged unstorable starts hit-for-miss: a failed fetch (origin
        down, truncated body, client gone) says nothing about the next one, which should be shared again."""
        fut = self.inflight.pop(key, None)
        if fut is not None and not fut.done():
            fut.set_result(None)
        if uncacheable:
            self.uncacheable[key] = time.monotonic() + self.hit_for_miss
            if len(self.uncacheable) > 100_000:  # bounded: forget the oldest half
                for k in list(self.uncacheable)[:50_000]:
                    del self.uncacheable[k]

    async def wait(self, fut: asyncio.Future[None]) -> bool:
        """Wait for a leader; False on timeout (the waiter then goes to the origin itself)."""
        try:
            await asyncio.wait_for(asyncio.shield(fut), self.timeout)
            return True
        except TimeoutError:
            return False
