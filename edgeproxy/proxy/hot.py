"""The head memo: a request head seen before, byte for byte, answered again without parsing it.

Rules kept here:
- A head is remembered only after it was parsed, checked and answered as a plain fresh hit: GET or HEAD, no body,
  none of the fields that make the decision per request (``DECISIVE``), read in one piece with nothing after it.
  The key is those exact bytes, so anything the memo answers passed the same parser and the same checks.
- The memo keeps only what the bytes determine (the entry they selected, the CORS fields, keep-alive, HEAD).
  What depends on time and on the store is checked on every use: still fresh, not soft-purged, still stored
  (``Store.touch`` says so). Any doubt falls back to the full path, which may remember the head again.
- Admission: a head is remembered only the second time it is answered as a plain fresh hit (a doorkeeper, as in
  TinyLFU): real clients' heads often never repeat (a request id, a cookie that changes), and each of those would
  cost an entry made and dropped. A head seen once costs a set insertion of its hash.
- Bounded to ``MEMO_SIZE`` heads per worker and cleared when full (heads are client-chosen) and on reload; the
  doorkeeper holds at most ``DOORKEEPER_SIZE`` hashes, cleared when full.
- It rests when it does not pay: every ``WINDOW`` lookups that found nothing it counts what it answered, and when
  that is under one in ``WORTH`` it stands aside for the next ``REST`` reads (no lookup, no doorkeeper), then looks
  again. A memo hit saves a parse (~30 µs on real heads), a head it can't answer costs a lookup and an admission
  (~2-7 µs measured under wrk): with heads that never repeat it cost 16-22% of the throughput, resting ~1%.
- ``[server] head_memo = false`` turns it off; the benchmarks report both.
Throughput trade-off, measured with callgrind on the in-process hit loop: a memo hit costs ~21.7k instructions against
~120k (httptools) or ~262k (h11) for a parsed hit; a head that isn't in the memo costs one dict lookup more.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from edgeproxy.accesslog import agents_part, request_part
from edgeproxy.cache.entry import Entry
from edgeproxy.cache.outcome import HIT
from edgeproxy.http.headers import get
from edgeproxy.proxy.delivery import write_stored
from edgeproxy.proxy.parser import RequestHead

if TYPE_CHECKING:
    from edgeproxy.proxy.client import ClientConnection
    from edgeproxy.proxy.edge import Edge

MEMO_SIZE = 2048
DOORKEEPER_SIZE = 8192
WINDOW = 1024  # lookups that found nothing, between two judgements
WORTH = 8  # answering fewer than one lookup in this many (of those that found nothing) is not worth it
REST = 65536  # reads to stand aside for, then the memo looks again
# Request fields that change a cache decision or the answer per request: heads carrying them are never memoized.
DECISIVE: frozenset[bytes] = frozenset({
    b"cache-control", b"pragma", b"if-match", b"if-none-match", b"if-modified-since", b"if-unmodified-since",
    b"if-range", b"range", b"authorization", b"expect", b"content-length", b"transfer-encoding", b"upgrade",
})


@dataclass(slots=True)
class Remembered:
    entry: Entry
    head: RequestHead
    tail: bytes  # CORS fields + Connection + the blank line
    keep_alive: bool
    head_only: bool
    # The combined log line after its time: everything these bytes and this entry fix (request line, status, bytes,
    # referer, user agent; a memo hit is answered within one read, so its times are 0.0 ms). None: that log is off.
    log_tail: bytes | None = None


def single_head(data: bytes) -> bool:
    """Whether ``data`` is exactly one request head and nothing else."""
    return data.endswith(b"\r\n\r\n") and data.find(b"\r\n\r\n") == len(data) - 4


def memoizable(head: RequestHead) -> bool:
    return (head.method == b"GET" or head.method == b"HEAD") and not head.has_body and not any(
        k in DECISIVE for k, _ in head.headers)


class HeadMemo:
    __slots__ = ("edge", "heads", "seen", "resting", "window_hits", "unanswered", "rests")

    def __init__(self, edge: Edge) -> None:
        self.edge = edge
        self.heads: dict[bytes, Remembered] = {}
        self.seen: set[int] = set()  # the doorkeeper: hashes of heads answered once
        self.resting = 0  # reads left to stand aside for (the client connection counts them down)
        self.unanswered = 0  # this window's lookups that found nothing
        # The memo hits counted when this window began: what it answered is read off the edge's counter, so that a
        # memo hit pays for no count of its own.
        self.window_hits = 0
        self.rests = 0  # times it stood aside

    def _judge(self) -> None:
        """A window is over: stand aside if the memo answered too few to pay for the lookups that found nothing."""
        hits = self.edge.counters.memo_hits
        if (hits - self.window_hits) * WORTH < self.unanswered:
            self.resting = REST
            self.rests += 1
            self.seen.clear()
        self.window_hits, self.unanswered = hits, 0

    def consider(self, data: bytes, head: RequestHead, entry: Entry, tail: bytes) -> None:
        """Remember ``data`` if its head may be answered again without parsing (a plain fresh hit just sent) and
        it was answered so once before."""
        seen, key = self.seen, hash(data)  # the bytes' hash is cached: the memo's own lookup already made it
        if key not in seen:
            if len(seen) >= DOORKEEPER_SIZE:
                seen.clear()
            seen.add(key)
            return
        if not memoizable(head) or not single_head(data):
            return
        seen.discard(key)
        if len(self.heads) >= MEMO_SIZE:
            self.heads.clear()
        remembered = Remembered(entry, head, tail, head.keep_alive, head.method == b"HEAD")
        log = self.edge.access_log
        if log.enabled and log.combined_fast:
            sent = 0 if remembered.head_only else len(entry.body)  # what write_stored will send
            remembered.log_tail = b"%s %d %d %s cache=hit origin_ms=0.0 total_ms=0.0\n" % (
                request_part(head.method, head.target, head.http_version), entry.status, sent,
                agents_part(get(head.headers, b"referer") or b"", get(head.headers, b"user-agent") or b""))
        self.heads[data] = remembered

    def answer(self, client: ClientConnection, data: bytes) -> bool:
        """Answer ``data`` from the memo; False when the full path must run."""
        found = self.heads.get(data)
        if found is None:
            self.unanswered += 1
            if self.unanswered >= WINDOW:
                self._judge()
            return False
        entry, edge = found.entry, self.edge
        # freshness.current_age, inlined: the call is ~1k instructions of a ~65k memo hit (benchmarks/hitcost.py).
        age = entry.corrected_initial_age + max(0.0, edge.clock() - entry.response_time)
        left = entry.freshness_lifetime - age
        if left <= 0.0 or entry.invalidated or not edge.store.touch(entry):
            del self.heads[data]
            return False
        sent = write_stored(client.transport.write, entry, age, edge.cache_status.hit(left), found.tail,
                            found.head_only)
        edge.counters.memo_hits += 1
        if found.log_tail is not None:
            edge.counters.response(HIT, entry.status, sent)
            edge.access_log.line(client.log_peer, edge.clock(), found.log_tail)
        elif edge.access_log.enabled:
            edge.log_exchange(client, found.head, entry.status, sent, HIT, 0.0, time.monotonic())
        else:
            edge.counters.response(HIT, entry.status, sent)
        client.requests += 1
        client.response_done_fast(found.keep_alive)
        return True
