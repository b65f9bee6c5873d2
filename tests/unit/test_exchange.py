"""The exchange in-process: every outcome driven through a real Edge with memory ports and a set clock.

tests/exchangeharness.py wires the client's and the origin's side to memory (no sockets, no sleeps for
freshness: the clock is moved). What is checked here is what the integration tests check over sockets, but
each path alone and deterministic: hit and miss, collapsing waiters, stale-if-error for each way an origin
fails, a stale-while-revalidate refresh in the background, the retry of a pooled connection the origin closed,
a purge while a fetch is in flight, a client that leaves mid-body, and back-pressure from a slow reader.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from edgeproxy.cache.purge import PurgeAll
from tests.exchangeharness import Harness, Reply, Seen, answer_on, cacheable, request


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 20))


def test_a_miss_is_stored_then_hit_on_the_injected_clock():
    async def scenario() -> None:
        h = Harness()
        h.origin.script = lambda seen: cacheable(b"body", "max-age=60")
        first = await h.get("/a")
        assert first.status == 200 and first.body == b"body"
        assert first.headers["cache-status"] == "edgeproxy; fwd=uri-miss; fwd-status=200; stored"
        h.clock.now += 42
        second = await h.get("/a")
        assert second.headers["age"] == "42" and second.headers["cache-status"] == "edgeproxy; hit; ttl=18"
        h.clock.now += 18  # exactly stale: the next one goes to the origin, conditionally
        third = await h.get("/a")
        assert "fwd=stale" in third.headers["cache-status"]
        assert [s.headers.get("if-none-match") for s in h.origin.seen] == [None, '"e1"']
        assert h.outcomes() == {"miss": 2, "hit": 1}  # a 200 to a revalidation counts as a miss
    run(scenario)


def test_concurrent_misses_collapse_onto_one_origin_fetch():
    async def scenario() -> None:
        h = Harness()
        h.origin.script = lambda seen: Reply(headers=[("cache-control", "max-age=60")], body=b"shared", delay=0.1)
        answers = await asyncio.gather(*(h.get("/c") for _ in range(5)))
        assert [a.body for a in answers] == [b"shared"] * 5
        assert len(h.origin.seen) == 1
        assert h.outcomes() == {"miss": 1, "collapsed": 4}
        assert sum('detail="collapsed"' in a.headers["cache-status"] for a in answers) == 4
    run(scenario)


FAILURES = {
    "refused": None,  # the pool can't connect
    "timeout": Reply(action="hang"),  # read_timeout (1 s in the harness)
    "reset": Reply(action="reset"),
    "503": Reply(503, [("cache-control", "no-store")], b"down"),
    "garbage": Reply(action="garbage"),  # two different Content-Lengths
}


@pytest.mark.parametrize("failure", FAILURES)
def test_stale_if_error_for_each_way_the_origin_fails(failure: str):
    async def scenario() -> None:
        h = Harness()
        h.origin.script = lambda seen: cacheable(b"kept", "max-age=60, stale-if-error=600")
        assert (await h.get("/s")).body == b"kept"
        h.clock.now += 120  # stale, within stale-if-error
        if failure == "refused":
            h.origin_down()
        else:
            h.origin.script = lambda seen: FAILURES[failure]
        got = await h.get("/s")
        assert got.status == 200 and got.body == b"kept", got
        assert "fwd=stale" in got.headers["cache-status"] and "stale-if-error" in got.headers["cache-status"]
        assert h.outcomes() == {"miss": 1, "stale": 1}
        h.clock.now += 600  # beyond stale-if-error: the failure shows
        h.origin.refuse = False
        h.origin.script = lambda seen: Reply(action="reset")
        assert (await h.get("/s")).status == 502
    run(scenario)


def test_stale_while_revalidate_answers_at_once_and_refreshes_in_the_background():
    async def scenario() -> None:
        h = Harness()
        h.origin.script = lambda seen: cacheable(b"v1", "max-age=60, stale-while-revalidate=600")
        await h.get("/w", {"cookie": "id=alice"})
        h.clock.now += 100

        def revalidate(seen: Seen) -> Reply:
            assert seen.headers.get("if-none-match") == '"e1"'
            return Reply(304, [("etag", '"e1"'), ("cache-control", "max-age=60")], delay=0.05)
        h.origin.script = revalidate
        stale = await h.get("/w", {"cookie": "id=bob"})
        assert stale.body == b"v1" and stale.headers["cache-status"].endswith('detail="stale"')
        for _ in range(100):  # the background fetch: its 304 freshens the entry
            await asyncio.sleep(0.01)
            if h.edge.collapser.revalidating == set():
                break
        background = h.origin.seen[-1]
        assert "cookie" not in background.headers and "x-forwarded-for" not in background.headers
        fresh = await h.get("/w")
        assert fresh.headers["cache-status"].startswith("edgeproxy; hit") and fresh.headers["age"] == "0"
        assert h.outcomes() == {"miss": 1, "stale": 1, "hit": 1} and len(h.origin.seen) == 2
    run(scenario)


def test_a_pooled_connection_the_origin_closed_is_retried_on_a_new_one():
    async def scenario() -> None:
        h = Harness()
        replies = iter([Reply(headers=[("cache-control", "no-store")], body=b"one"), Reply(action="close"),
                        Reply(headers=[("cache-control", "no-store")], body=b"two")])
        h.origin.script = lambda seen: next(replies)
        assert (await h.get("/r")).body == b"one"
        got = await h.get("/r")  # the pooled connection was closed by the origin while idle: a GET is retried
        assert got.status == 200 and got.body == b"two"
        assert [s.conn for s in h.origin.seen] == [1, 1, 2]
    run(scenario)


def test_a_purge_during_an_in_flight_fetch_keeps_its_response_out_of_the_cache():
    async def scenario() -> None:
        h = Harness()
        h.origin.script = lambda seen: Reply(headers=[("cache-control", "max-age=60")], body=b"old", delay=0.1)
        fetching = asyncio.ensure_future(h.get("/p"))
        await asyncio.sleep(0.03)
        await h.edge.purge(PurgeAll(), soft=False)  # e.g. the content changed at the origin a moment ago
        got = await fetching
        assert got.body == b"old" and "; stored" not in got.headers["cache-status"]
        h.origin.script = lambda seen: Reply(headers=[("cache-control", "max-age=60")], body=b"new")
        assert (await h.get("/p")).body == b"new"
        assert len(h.origin.seen) == 2
    run(scenario)


def test_a_client_that_leaves_mid_body_ends_the_exchange_and_stores_nothing():
    async def scenario() -> None:
        h = Harness()
        h.origin.script = lambda seen: Reply(headers=[("cache-control", "max-age=60")],
                                             chunks=[b"a" * 1000] * 5, delay=0.02)
        conn, transport = h.client()
        conn.data_received(request("/big"))
        while b"aaaa" not in transport.out:
            await asyncio.sleep(0.005)
        transport.close()  # the client goes away
        for _ in range(100):
            await asyncio.sleep(0.01)
            if conn.task is None:
                break
        assert conn.task is None and h.edge.store.stats().entries == 0
        assert h.edge.pool.total == 0  # the origin connection, mid-body, was not kept
    run(scenario)


def test_back_pressure_from_a_slow_reader_stops_the_relay_until_it_drains():
    async def scenario() -> None:
        h = Harness()
        h.origin.script = lambda seen: Reply(headers=[("cache-control", "no-store")], chunks=[b"x" * 100] * 6,
                                             delay=0.01)
        conn, transport = h.client()
        conn.data_received(request("/slow"))
        while b"x" * 100 not in transport.out:
            await asyncio.sleep(0.002)
        conn.pause_writing()  # the socket's buffer is full: what is in hand may still go, then the relay waits
        await asyncio.sleep(0.1)  # the origin has sent everything by now
        written = len(transport.out)
        await asyncio.sleep(0.1)
        assert len(transport.out) == written and transport.out.count(b"x") < 600 and conn.flow.paused
        conn.resume_writing()
        got = await answer_on(transport)
        assert got.body == b"x" * 600
    run(scenario)


def test_pass_and_error_outcomes_are_labelled():
    async def scenario() -> None:
        h = Harness()
        h.origin.script = lambda seen: Reply(headers=[("cache-control", "max-age=60")], body=b"r")
        conn, transport = h.client()
        conn.data_received(b"POST /form HTTP/1.1\r\nhost: a.test\r\ncontent-length: 2\r\n\r\nhi")
        assert (await answer_on(transport)).status == 200
        h.origin_down()
        assert (await h.get("/down")).status == 502
        assert h.outcomes() == {"pass": 1, "error": 1}
    run(scenario)


def test_answers_the_edge_makes_itself():
    async def scenario() -> None:
        h = Harness(site=[{"origin": "http://origin.test:8080",
                           "cors": {"mode": "edge", "allow_origins": ["https://app.example"],
                                    "reject_disallowed": True}}])
        assert (await h.get("/t", method="TRACE")).status == 405
        assert (await h.get("*", method="OPTIONS")).status == 200
        refused = await h.get("/x", {"origin": "https://evil.example"})
        assert refused.status == 403 and "access-control-allow-origin" not in refused.headers
        preflight = await h.get("/x", {"origin": "https://app.example", "access-control-request-method": "GET"},
                                method="OPTIONS")
        assert preflight.status == 204 and preflight.headers["access-control-allow-origin"] == "https://app.example"
        assert h.origin.seen == [] and h.outcomes() == {"error": 2, "pass": 2}  # none left unlabelled
    run(scenario)


def validating_origin(seen: Seen) -> Reply:
    """Stores with an ETag; answers a conditional request with 304 after a moment (so forced ones overlap)."""
    if seen.headers.get("if-none-match") == '"e1"':
        return Reply(304, [("etag", '"e1"'), ("cache-control", "max-age=600")], delay=0.05)
    return cacheable(b"payload", "max-age=600")


@pytest.mark.parametrize("forcing", [{"cache-control": "no-cache"}, {"cache-control": "max-age=0"},
                                     {"pragma": "no-cache"}])
def test_forced_revalidations_collapse_revalidate_and_satisfy_the_next_ones(forcing: dict[str, str]):
    async def scenario() -> None:
        h = Harness()
        h.origin.script = validating_origin
        await h.get("/f")
        h.clock.now += 5  # the stored copy is 5 s old: max-age=0 forces too
        answers = await asyncio.gather(*(h.get("/f", forcing) for _ in range(8)))
        assert [a.body for a in answers] == [b"payload"] * 8
        assert [s.headers.get("if-none-match") for s in h.origin.seen] == [None, '"e1"']  # one, conditional
        h.clock.now += 0.5  # within revalidate_interval (1 s) of that validation
        again = await h.get("/f", forcing)
        assert again.headers["cache-status"].endswith('detail="validated-recently"') and len(h.origin.seen) == 2
        h.clock.now += 1.0  # past it: the next forced request goes to the origin again
        await h.get("/f", forcing)
        assert len(h.origin.seen) == 3
        assert h.edge.counters.forced == {"origin": 2, "collapsed": 7, "interval": 1}
    run(scenario)


def test_forced_waiters_still_collapse_with_the_interval_off():
    async def scenario() -> None:
        h = Harness(cache={"revalidate_interval": "0s"})

        def slow_clock(seen: Seen) -> Reply:  # time passes while the origin works: its answer is newer
            h.clock.now += 0.05
            return validating_origin(seen)
        h.origin.script = slow_clock
        await h.get("/g")
        await asyncio.gather(*(h.get("/g", {"cache-control": "no-cache"}) for _ in range(5)))
        assert len(h.origin.seen) == 2  # the waiters take the validation that finished after they came
        await h.get("/g", {"cache-control": "no-cache"})
        assert len(h.origin.seen) == 3  # and nothing more: every later forced request is validated
    run(scenario)


def test_ranged_misses_share_one_full_fetch_and_are_answered_from_the_copy():
    async def scenario() -> None:
        h = Harness()
        body = bytes(range(256)) * 4
        h.origin.script = lambda seen: Reply(headers=[("cache-control", "max-age=60"), ("etag", '"r"')], body=body,
                                             delay=0.05)
        ranges = [(0, 9), (100, 199), (1000, 1023), (5, 5)]
        answers = await asyncio.gather(*(h.get("/r", {"range": f"bytes={a}-{b}"}) for a, b in ranges))
        assert [a.status for a in answers] == [206] * 4
        assert [a.body for a in answers] == [body[a:b + 1] for a, b in ranges]
        assert answers[2].headers["content-range"] == "bytes 1000-1023/1024"
        assert len(h.origin.seen) == 1 and "range" not in h.origin.seen[0].headers
        assert (await h.get("/r")).headers["cache-status"].startswith("edgeproxy; hit")
    run(scenario)


def test_a_ranged_miss_too_large_to_keep_fetches_the_range_alone():
    async def scenario() -> None:
        h = Harness(cache={"max_object_size": "64KiB", "size": "1MiB"})

        def origin(seen: Seen) -> Reply:
            if "range" in seen.headers:
                return Reply(206, [("content-range", "bytes 0-9/200000")], b"0123456789")
            return Reply(headers=[("cache-control", "max-age=60"), ("content-length", "200000")], body=b"")

        h.origin.script = origin
        got = await h.get("/huge", {"range": "bytes=0-9"})
        assert got.status == 206 and got.body == b"0123456789"
        assert [s.headers.get("range") for s in h.origin.seen] == [None, "bytes=0-9"]
        assert h.edge.store.stats().entries == 0
    run(scenario)
