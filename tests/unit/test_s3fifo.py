"""S3-FIFO's pure algorithm (cache/s3fifo.py) driven through ``MemoryQueues``: where objects start, what the
SMALL and MAIN queues do with read and unread objects at their tails, the ghost, the saturating counter, byte
accounting under churn, and scan resistance."""

from __future__ import annotations

import random
from collections import OrderedDict

import pytest

from edgeproxy.cache.s3fifo import MAIN, MAX_FREQ, SMALL, MemoryQueues, next_victim, queue_for


def ident(slot: int) -> bytes:
    return b"url-%d" % slot


def admit(q: MemoryQueues, capacity: int, slot: int, size: int = 1, **params: float) -> list[int]:
    """What a cache does on a miss: evict with ``next_victim`` until ``slot`` fits, then add it. The victims."""
    victims = []
    while q.size(SMALL) + q.size(MAIN) + size > capacity:
        victim = next_victim(q, capacity, **params)
        assert victim is not None
        q.evicted(victim)
        victims.append(victim)
    q.add(slot, size, ident(slot))
    return victims


def into_main(q: MemoryQueues, slot: int, size: int = 1) -> None:
    """Put ``slot`` in MAIN the way it gets there in a cache: dropped unread from SMALL, then stored again while
    the ghost remembers it. SMALL must be empty before."""
    assert q.size(SMALL) == 0
    q.add(slot, size, ident(slot))
    assert next_victim(q, capacity=0) == slot  # SMALL over its (zero) share: its unread tail goes
    q.evicted(slot)
    q.add(slot, size, ident(slot))
    assert q.where[slot] == MAIN


def test_new_objects_start_in_small():
    q = MemoryQueues()
    assert queue_for(q, ident(1)) == SMALL
    q.add(1, 10, ident(1))
    q.add(2, 5, ident(2))
    assert q.where == {1: SMALL, 2: SMALL}
    assert (q.size(SMALL), q.size(MAIN)) == (15, 0)
    assert q.freq(1) == q.freq(2) == 0


def test_empty_queues_have_no_victim():
    q = MemoryQueues()
    assert next_victim(q, 100) is None
    q.add(1, 10, ident(1))
    assert next_victim(q, 100) == 1
    q.evicted(1)
    assert next_victim(q, 100) is None
    assert (q.size(SMALL), q.size(MAIN)) == (0, 0)


def test_unread_tail_of_small_is_evicted_into_the_ghost():
    q = MemoryQueues()
    for slot in (1, 2, 3):
        q.add(slot, 10, ident(slot))
    assert next_victim(q, 30) == 1  # the oldest, unread
    assert ident(1) in q.ghost
    assert (q.size(SMALL), q.size(MAIN)) == (20, 0)
    assert 1 not in q.where
    q.evicted(1)
    assert 1 not in q.sizes and 1 not in q.counts


def test_an_object_stored_again_while_in_the_ghost_starts_in_main():
    q = MemoryQueues()
    q.add(1, 10, ident(1))
    assert next_victim(q, 10) == 1
    q.evicted(1)
    q.add(1, 10, ident(1))
    assert q.where[1] == MAIN
    assert ident(1) not in q.ghost  # recalled once, then forgotten there
    q.add(2, 10, ident(2))
    assert q.where[2] == SMALL


def test_a_read_object_moves_from_small_to_main_instead_of_being_evicted():
    q = MemoryQueues()
    q.add(1, 10, ident(1))
    q.add(2, 10, ident(2))
    q.hit(1)
    assert next_victim(q, 20) == 2  # 1 was older but read: it moved on, 2 went instead
    assert q.where[1] == MAIN
    assert ident(2) in q.ghost and ident(1) not in q.ghost
    assert (q.size(SMALL), q.size(MAIN)) == (0, 10)


@pytest.mark.parametrize(("reads", "promoted"), [(0, False), (1, False), (2, True), (3, True)])
def test_promote_sets_the_reads_that_earn_main(reads: int, promoted: bool):
    q = MemoryQueues()
    q.add(1, 10, ident(1))
    q.add(2, 10, ident(2))
    for _ in range(reads):
        q.hit(1)
    victim = next_victim(q, 20, promote=2)
    assert (victim == 2) is promoted
    assert (q.where.get(1) == MAIN) is promoted


def test_main_gives_a_read_object_a_second_chance_and_lowers_its_counter():
    q = MemoryQueues()
    into_main(q, 1)
    into_main(q, 2)
    q.hit(1)
    q.hit(1)
    assert next_victim(q, 2) == 2  # 1 was at MAIN's tail, but read
    assert q.freq(1) == 1
    assert list(q.queues[MAIN]) == [1]
    q.evicted(2)
    into_main(q, 3)
    assert next_victim(q, 2) == 3
    assert q.freq(1) == 0
    q.evicted(3)
    into_main(q, 4)
    assert next_victim(q, 2) == 1  # no reads left: now it goes
    assert list(q.queues[MAIN]) == [4]


def test_the_counter_saturates_at_max_freq():
    q = MemoryQueues()
    into_main(q, 1)
    for _ in range(MAX_FREQ + 5):
        q.hit(1)
    assert q.freq(1) == MAX_FREQ
    # so it survives exactly MAX_FREQ passes of MAIN's tail, however often it was read
    slot = 100
    for _ in range(MAX_FREQ):
        into_main(q, slot)
        assert next_victim(q, 2) == slot
        q.evicted(slot)
        slot += 1
    into_main(q, slot)
    assert next_victim(q, 2) == 1


@pytest.mark.parametrize(("promote", "small_share"), [(1, 0.1), (2, 0.1), (1, 0.3), (2, 0.3)])
def test_queue_bytes_match_their_objects_under_churn(promote: int, small_share: float):
    rng = random.Random(20261206 + promote)
    q = MemoryQueues(min_ghost=8)
    capacity = 2_000
    sizes = {slot: rng.randint(1, 300) for slot in range(120)}
    params = {"promote": promote, "small_share": small_share}
    peak_main = 0
    for _ in range(3_000):
        slot = min(int(rng.paretovariate(1.0)) - 1, 119)  # skewed: some slots are hot
        roll = rng.random()
        if slot in q.where:
            if roll < 0.05:
                q.discard(slot)  # replaced or purged
            else:
                q.hit(slot)
        else:
            victims = admit(q, capacity, slot, sizes[slot], **params)
            assert slot not in victims
            assert all(v not in q.where and v not in q.sizes for v in victims)
        for queue in (SMALL, MAIN):
            assert q.size(queue) == sum(q.sizes[s] for s in q.queues[queue])
            assert all(q.where[s] == queue for s in q.queues[queue])
        assert q.size(SMALL) + q.size(MAIN) <= capacity
        assert set(q.where) == set(q.sizes) == set(q.counts) == set(q.identities)
        assert all(0 <= c <= MAX_FREQ for c in q.counts.values())
        peak_main = max(peak_main, len(q.queues[MAIN]))
        assert len(q.ghost) <= max(8, peak_main)  # trimmed when it grows, against MAIN's count then


def test_a_scan_of_one_hit_wonders_never_evicts_main_objects_read_between_scans():
    capacity, hot, cold, burst = 100, range(60), range(1000, 1035), 50
    q = MemoryQueues()
    lru: OrderedDict[int, None] = OrderedDict()  # the same requests through exact LRU, for contrast
    lru_lost_hot = False

    def request(slot: int) -> list[int]:
        nonlocal lru_lost_hot
        if slot in lru:
            lru.move_to_end(slot)
        else:
            if len(lru) == capacity:
                lru_lost_hot |= lru.popitem(last=False)[0] in hot
            lru[slot] = None
        if slot in q.where:
            q.hit(slot)
            return []
        return admit(q, capacity, slot)

    victims: list[int] = []
    for slot in [*hot, *hot, *hot, *cold, *cold]:  # hot read twice after storing, cold once: both earn MAIN
        victims += request(slot)
    wonder = 10_000
    for _ in range(20):
        for _ in range(burst):
            victims += request(wonder)
            wonder += 1
        for slot in hot:
            victims += request(slot)
    assert not set(victims) & set(hot)
    assert all(q.where[slot] == MAIN for slot in hot)
    assert set(victims) & set(cold)  # MAIN was reached: its unread objects are the ones that went
    assert lru_lost_hot  # a burst plus the hot set overflows the cache: recency alone loses hot objects
