"""Applying a purge to a store without stalling anything: the one way the shell purges (an Edge, the supervisor).

Rules kept here:
- A purge an index answers (a URL, tags, a host, a prefix on a host, a hard "all") is applied at once, in one call.
- One that visits every key (``store.walks``: a regex, a soft "all", a prefix on every host in the shared store) is
  applied in steps (cache/store.py): announced first (logged with its generation, so no fetch that started before it
  can store what it matches from then on), then walked ``BATCH`` keys at a time: keys read on the loop (one short
  read transaction each in the shared store), matched in this module's one worker thread (RE2 releases the GIL, so
  the loop serves meanwhile; a loop that matched itself would stop for as long as one key costs), and purged by key
  on the loop (one write transaction per batch). The write lock is never held while a pattern runs.
- A regex has a time budget (``[cache] regex_purge_budget``, wall clock from the announce; 0: never matched). Past
  it the walk stops: what matched so far stays purged, and the pattern's host (or everything, when the pattern does
  not name one host: cache/purge.py ``fallback_of``) is soft-purged instead, so nothing it could have matched is
  served without revalidation. The result says so under ``over_budget``; it is logged here and counted by the
  caller. A fleet journal entry is applied this way too, so it always finishes and the position advances.
- Two purges may walk at once (a control purge and a journal entry): each is complete on its own.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from edgeproxy.cache.purge import KeyProbe, PurgeAll, PurgeHost, PurgeRegex, Selector, fallback_of
from edgeproxy.cache.store import Storage

log = logging.getLogger("edgeproxy.purge")

BATCH = 512  # keys per step: a short read and match in the shared store; one write transaction of at most this
_matcher: ThreadPoolExecutor | None = None


def _thread() -> ThreadPoolExecutor:
    global _matcher
    if _matcher is None:  # made on first use: a worker process that never walks a store has no thread
        _matcher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edgeproxy-purge")
    return _matcher


def _match(selector: Selector, items: list[tuple[str, Any]], deadline: float | None) -> tuple[list[Any], bool]:
    """The items whose key ``selector`` matches, and whether the deadline passed first (then the list is partial)."""
    found = []
    for item in items:
        if deadline is not None and time.monotonic() >= deadline:
            return found, True
        if selector.matches(KeyProbe(item[0])):  # type: ignore[arg-type]
            found.append(item)
    return found, False


async def purge(store: Storage, selector: Selector, soft: bool, now: float, budget: float) -> dict[str, Any]:
    """Apply ``selector`` to ``store``; the reply's fields: ``purged`` (entries affected), and ``over_budget`` when
    a regex ran out of ``budget`` seconds and its fallback was applied instead."""
    if not store.walks(selector, soft):
        return {"purged": store.purge(selector, soft=soft, now=now)}
    started = time.monotonic()
    deadline = started + budget if isinstance(selector, PurgeRegex) else None
    count, finished = await _walk(store, selector, soft, now, deadline)
    if finished:
        return {"purged": count}
    assert isinstance(selector, PurgeRegex)
    fallback = fallback_of(selector)
    scope = f"host {fallback.host}" if isinstance(fallback, PurgeHost) else "everything"
    soft_purged = (await _walk(store, fallback, True, now, None))[0] if isinstance(fallback, PurgeAll) else \
        store.purge(fallback, soft=True, now=now)
    log.warning("purge: regex %r did not finish within its budget of %gs (%d entries purged by it); soft-purged %s "
                "instead (%d entries)", selector.pattern, budget, count, scope, soft_purged)
    return {"purged": count + soft_purged, "over_budget": {
        "budget_seconds": budget, "matched": count, "fallback": scope, "soft_purged": soft_purged,
        "seconds": round(time.monotonic() - started, 3)}}


async def _walk(store: Storage, selector: Selector, soft: bool, now: float,
                deadline: float | None) -> tuple[int, bool]:
    """Announce, then walk every key in steps; (entries purged, whether the walk finished before ``deadline``)."""
    store.announce(selector, now)
    loop = asyncio.get_running_loop()
    position: Any = None
    count = 0
    while True:
        if deadline is not None and time.monotonic() >= deadline:
            return count, False
        items, position = store.scan(position, BATCH)
        found, late = await loop.run_in_executor(_thread(), _match, selector, items, deadline)
        if found:
            count += store.purge_scanned(found, soft)
        if late:
            return count, False
        if position is None:
            return count, True
