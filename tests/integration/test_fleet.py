"""A fleet of three edges and one real redis-server: a purge given to any node reaches every node, nothing is missed
across a node's restart, Redis's outage or a trimmed journal, and ``--fleet-wait`` says who has applied it.

Category: ops. Three proxies (each with its own persisted shared store, as under systemd) in front of the demo
origin, and a redis-server with an append-only file, all on free loopback ports in the test's directory. Every wait
is bounded.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.test_ops import control, wait_ready, wait_until
from tests.redisserver import RedisServer
from tests.scriptorigin import ScriptOrigin
from tests.support import HTTPClient, Proc, Response, env, free_port, start_proxy

NODES = ("edge-a", "edge-b", "edge-c")
STREAM = "edgeproxy:purge"


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


class Fleet:
    def __init__(self, tmp_path: Path, origin_url: str, redis_url: str) -> None:
        self.tmp_path, self.origin_url, self.redis_url = tmp_path, origin_url, redis_url
        self.nodes: dict[str, Proc] = {}

    def start(self, name: str, **overrides: Any) -> Proc:
        workdir = self.tmp_path / name
        workdir.mkdir(exist_ok=True)
        fleet = {"redis": self.redis_url, "node": name, "connect_timeout": "1s", **overrides.pop("fleet", {})}
        cache = {"shared": True, **overrides.pop("cache", {})}
        proxy = start_proxy(self.origin_url, workdir, fleet=fleet, cache=cache,
                            metrics={"listen": f"127.0.0.1:{free_port()}"}, **overrides)
        wait_ready(proxy)
        self.nodes[name] = proxy
        return proxy

    def stop(self, name: str) -> None:
        self.nodes.pop(name).stop()

    def stop_all(self) -> None:
        for name in list(self.nodes):
            self.stop(name)


@pytest.fixture
def fleet(tmp_path: Path, origin: ScriptOrigin, redis_server: RedisServer) -> Iterator[Fleet]:
    f = Fleet(tmp_path, origin.url, redis_server.url)
    yield f
    f.stop_all()


@pytest.fixture
def three(fleet: Fleet) -> Fleet:
    for name in NODES:
        fleet.start(name)
    wait_until(lambda: all(stats(p)["fleet"]["nodes_alive"] == 3 for p in fleet.nodes.values()),
               what="three live nodes")
    return fleet


def stats(proxy: Proc) -> dict[str, Any]:
    reply = control(proxy, {"cmd": "stats"})
    assert reply["ok"], reply
    return reply


def get(proxy: Proc, target: str) -> Response:
    with HTTPClient(proxy.port) as client:
        return client.request("GET", target, headers={"Host": "fleet.test"})


def cache_status(proxy: Proc, target: str) -> str:
    return get(proxy, target).header("cache-status") or ""


def is_hit(proxy: Proc, target: str) -> bool:
    status = cache_status(proxy, target)
    return "hit" in status and "fwd=" not in status


def warm(fleet: Fleet, target: str) -> None:
    """Every node stores ``target`` and then hits it."""
    for proxy in fleet.nodes.values():
        get(proxy, target)
        assert is_hit(proxy, target), cache_status(proxy, target)


def purge(proxy: Proc, fields: dict[str, Any], timeout: float = 15.0) -> dict[str, Any]:
    reply = control(proxy, {"cmd": "purge", **fields}, timeout=timeout)
    assert reply["ok"], reply
    return reply


def cli(proxy: Proc, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgeproxy", *args, "--control", proxy.extra["control"]],
                          env=env(), capture_output=True, text=True, timeout=timeout)


def metric(proxy: Proc, name: str) -> float:
    listen = proxy.extra["config"]["metrics"]["listen"]
    with urllib.request.urlopen(f"http://{listen}/metrics", timeout=5) as r:
        text = r.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return sample.value
    raise AssertionError(f"{name} not in /metrics")


# ---- a purge reaches every node ----

def test_a_purge_given_to_one_node_is_applied_by_every_node(three: Fleet) -> None:
    a, b, c = (three.nodes[n] for n in NODES)
    warm(three, "/obj?f=1")
    reply = purge(a, {"kind": "url", "url": "http://fleet.test/obj?f=1", "fleet_wait": 10})
    assert reply["purged"] == 1
    assert reply["fleet"]["pending"] == [] and reply["fleet"]["applied_on"] == sorted(NODES)
    for proxy in (a, b, c):
        assert not is_hit(proxy, "/obj?f=1")


@pytest.mark.parametrize("fields", [
    {"kind": "prefix", "prefix": "/obj*"},
    {"kind": "host", "host": "fleet.test"},
    {"kind": "regex", "pattern": "f=2"},
    {"kind": "all"},
])
@pytest.mark.parametrize("soft", [False, True])
def test_every_kind_hard_and_soft_reaches_every_node(three: Fleet, fields: dict[str, Any], soft: bool) -> None:
    warm(three, "/obj?f=2")
    reply = purge(three.nodes["edge-b"], {**fields, "soft": soft, "fleet_wait": 10})
    assert reply["fleet"]["applied_on"] == sorted(NODES), reply
    for proxy in three.nodes.values():
        status = cache_status(proxy, "/obj?f=2")
        # soft: kept and revalidated with the origin; hard: gone, fetched again
        assert "fwd=" in status and ("fwd=stale" in status if soft else "miss" in status), status


def test_a_tag_purge_reaches_every_node(three: Fleet) -> None:
    target = "/obj?tag=1&surrogate-key=fleet-tag"
    warm(three, target)
    purge(three.nodes["edge-c"], {"kind": "tag", "tags": ["fleet-tag"], "fleet_wait": 10})
    for proxy in three.nodes.values():
        assert not is_hit(proxy, target)


def test_the_cli_waits_for_the_fleet_and_says_how_long_it_took(three: Fleet) -> None:
    warm(three, "/obj?f=3")
    done = cli(three.nodes["edge-a"], "purge", "http://fleet.test/obj?f=3", "--fleet-wait")
    assert done.returncode == 0, done.stderr
    assert "purged 1 entry here (url, hard); applied on 3 nodes (edge-a, edge-b, edge-c) in" in done.stdout


def test_stats_and_metrics_show_the_fleet(three: Fleet) -> None:
    purge(three.nodes["edge-a"], {"kind": "all", "fleet_wait": 10})
    fleet = stats(three.nodes["edge-b"])["fleet"]
    assert fleet["node"] == "edge-b" and fleet["connected"] is True and fleet["lag_seconds"] == 0.0
    assert fleet["applied"] >= 1 and fleet["published"] == 0
    assert set(fleet["nodes"]) == set(NODES)
    a = three.nodes["edge-a"]
    assert metric(a, "edgeproxy_fleet_connected") == 1.0
    assert metric(a, "edgeproxy_fleet_purges_published_total") == 1.0
    assert metric(a, "edgeproxy_fleet_nodes_alive") == 3.0


@pytest.mark.parametrize("shared", [True, False])
def test_a_node_with_workers_applies_fleet_purges_in_every_worker(fleet: Fleet, shared: bool) -> None:
    a = fleet.start("edge-a")
    b = fleet.start("edge-b", server={"workers": 2}, cache={"shared": shared})
    for _ in range(100):  # fresh connections until every worker holds a copy (shared: the one store does)
        get(b, "/obj?w=1")
        rows = stats(b)["workers"].values()
        if shared or all(row["entries"] for row in rows):
            break
    assert stats(b)["entries"] == (1 if shared else 2)
    purge(a, {"kind": "url", "url": "http://fleet.test/obj?w=1", "fleet_wait": 10})
    after = stats(b)
    assert after["fleet"]["applied"] == 1 and after["entries"] == 0


def test_redis_with_a_password_from_a_file_that_is_never_logged(tmp_path: Path, origin: ScriptOrigin) -> None:
    server = RedisServer(tmp_path / "redis-auth", password="s3cret-fleet-pass").start()
    f = Fleet(tmp_path, origin.url, server.url)
    try:
        (tmp_path / "redis.pass").write_text("s3cret-fleet-pass\n")
        a = f.start("edge-a", fleet={"password_file": str(tmp_path / "redis.pass")})
        b = f.start("edge-b", fleet={"redis": f"redis://:s3cret-fleet-pass@127.0.0.1:{server.port}/0"})
        c = f.start("edge-c", fleet={"redis": f"redis://127.0.0.1:{server.port}/0?password=s3cret-fleet-pass"})
        warm(f, "/obj?auth=1")
        reply = purge(a, {"kind": "all", "fleet_wait": 10})
        assert reply["fleet"]["applied_on"] == ["edge-a", "edge-b", "edge-c"]
        assert stats(b)["fleet"]["redis"] == f"redis://:***@127.0.0.1:{server.port}/0"
        assert stats(c)["fleet"]["redis"] == f"redis://127.0.0.1:{server.port}/0?password=***"
        f.stop_all()
        for proxy in (a, b, c):
            assert "s3cret" not in proxy.log()
    finally:
        f.stop_all()
        server.stop()


def test_a_wrong_password_is_a_link_failure_not_a_crash(tmp_path: Path, origin: ScriptOrigin) -> None:
    server = RedisServer(tmp_path / "redis-auth", password="right").start()
    f = Fleet(tmp_path, origin.url, f"redis://:Wr0ngPass@127.0.0.1:{server.port}/0")
    try:
        a = f.start("edge-a")
        assert get(a, "/obj?auth=2").status == 200
        assert stats(a)["fleet"]["connected"] is False and "Wr0ngPass" not in a.log()
    finally:
        f.stop_all()
        server.stop()


def test_without_a_fleet_fleet_wait_is_refused(proxy_factory: Callable[..., Proc], demo_origin: Proc) -> None:
    proxy = proxy_factory(demo_origin.url)
    reply = control(proxy, {"cmd": "purge", "kind": "all", "fleet_wait": 1})
    assert not reply["ok"] and "no [fleet] configured" in reply["error"]


# ---- nothing missed ----

def test_a_node_stopped_while_purges_were_issued_replays_them_before_serving(three: Fleet) -> None:
    targets = [f"/obj?replay={i}" for i in range(20)]
    for target in targets:
        warm(three, target)
    three.stop("edge-c")
    a = three.nodes["edge-a"]
    for target in targets[:10]:
        purge(a, {"kind": "url", "url": f"http://fleet.test{target}"})
    c = three.start("edge-c")
    assert "kept 20 objects" in c.log() or "kept" in c.log()
    for target in targets[:10]:
        assert not is_hit(c, target), target
    assert all(is_hit(c, t) for t in targets[10:])  # what was not purged is still served from the kept cache
    fleet = stats(c)["fleet"]
    assert fleet["resyncs"] == 0 and fleet["applied"] == 10


def test_a_gap_in_the_journal_marks_everything_stale(three: Fleet, redis_server: RedisServer) -> None:
    targets = [f"/obj?gap={i}" for i in range(5)]
    for target in targets:
        warm(three, target)
    three.stop("edge-c")
    a = three.nodes["edge-a"]
    purge(a, {"kind": "url", "url": f"http://fleet.test{targets[0]}"})
    redis_server.client().xtrim(STREAM, maxlen=0)  # the journal loses the purge edge-c has not read
    c = three.start("edge-c")
    assert "were trimmed from the stream" in c.log()
    assert "every stored object is marked stale" in c.log()
    for target in targets:
        status = cache_status(c, target)
        assert "fwd=" in status, (target, status)  # none served without asking the origin
    assert stats(c)["fleet"]["resyncs"] == 1


def test_redis_down_at_start_marks_the_kept_cache_stale_then_catches_up(fleet: Fleet,
                                                                      redis_server: RedisServer) -> None:
    a = fleet.start("edge-a")
    b = fleet.start("edge-b")
    warm(fleet, "/obj?down=1")
    fleet.stop("edge-b")
    redis_server.kill()
    b = fleet.start("edge-b")
    assert "unreachable at start" in b.log()
    assert "fwd=stale" in cache_status(b, "/obj?down=1")  # revalidated, not refetched
    assert stats(b)["fleet"]["connected"] is False
    assert metric(b, "edgeproxy_fleet_connected") == 0.0
    redis_server.start()
    wait_until(lambda: stats(a)["fleet"]["connected"] and stats(b)["fleet"]["connected"], timeout=15,
               what="both nodes back on Redis")
    get(b, "/obj?down=2")
    purge(a, {"kind": "url", "url": "http://fleet.test/obj?down=2", "fleet_wait": 10})
    assert not is_hit(b, "/obj?down=2")


def test_redis_killed_under_load_no_request_fails_and_later_purges_arrive(three: Fleet,
                                                                         redis_server: RedisServer) -> None:
    warm(three, "/obj?load=1")
    redis_server.kill()
    failures = 0
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:  # bounded: 3 s of requests to every node while Redis is down
        for proxy in three.nodes.values():
            failures += get(proxy, "/obj?load=1").status != 200
    assert failures == 0
    a = three.nodes["edge-a"]
    reply = purge(a, {"kind": "url", "url": "http://fleet.test/obj?load=1"})
    assert reply["fleet"]["published"] is False and "unreachable" in reply["fleet"]["error"]
    assert not is_hit(a, "/obj?load=1")  # applied here at once
    assert stats(a)["fleet"]["lag_seconds"] > 0
    redis_server.start()
    wait_until(lambda: all(stats(p)["fleet"]["connected"] for p in three.nodes.values()), timeout=15,
               what="every node back on Redis")
    # the purge kept while Redis was down is published now: every node applies it
    wait_until(lambda: all(not is_hit(p, "/obj?load=1") for p in three.nodes.values()), timeout=10,
               what="the kept purge applied everywhere")
    warm(three, "/obj?load=2")
    reply = purge(three.nodes["edge-b"], {"kind": "url", "url": "http://fleet.test/obj?load=2",
                                          "fleet_wait": 10})
    assert reply["fleet"]["applied_on"] == sorted(NODES), (reply, [p.log() for p in three.nodes.values()])


def test_a_purge_given_while_redis_is_down_survives_a_restart_of_its_node(fleet: Fleet,
                                                                          redis_server: RedisServer) -> None:
    fleet.start("edge-a")
    b = fleet.start("edge-b")
    warm(fleet, "/obj?outbox=1")
    redis_server.kill()
    reply = purge(fleet.nodes["edge-a"], {"kind": "url", "url": "http://fleet.test/obj?outbox=1"})
    assert reply["fleet"]["published"] is False and "restarts first" not in reply["fleet"]["error"]
    fleet.stop("edge-a")  # before Redis is back: the purge waits in the store's outbox, not in memory
    redis_server.start()
    a = fleet.start("edge-a")
    assert "1 purges applied here while Redis was unreachable are still to be published" in a.log()
    wait_until(lambda: not is_hit(b, "/obj?outbox=1"), timeout=15, what="the kept purge published and applied")
    assert stats(a)["fleet"]["outbox"] == 0


def test_fleet_wait_names_a_node_that_does_not_apply(three: Fleet) -> None:
    c = three.nodes["edge-c"]
    c.signal(19)  # SIGSTOP: alive for a moment (its heartbeat key lives on), applying nothing
    try:
        done = cli(three.nodes["edge-a"], "purge", "--all", "--fleet-wait", "--fleet-timeout", "0.5")
    finally:
        c.signal(18)  # SIGCONT
    assert done.returncode == 1
    assert "not applied within" in done.stderr and "edge-c" in done.stderr, done.stderr
    assert "purged" in done.stdout


def test_entries_not_written_by_edgeproxy_are_skipped(three: Fleet, redis_server: RedisServer) -> None:
    client = redis_server.client()
    client.xadd(STREAM, {"purge": json.dumps({"cmd": "purge", "kind": "nonsense"})})
    # The skipped entry stays in the stream: a node's blocking read must start past it, not return at once forever.
    time.sleep(0.5)
    before = client.info("commandstats")["cmdstat_xread"]["calls"]
    time.sleep(1)
    calls = client.info("commandstats")["cmdstat_xread"]["calls"] - before
    assert calls <= 3 * 3, calls
    warm(three, "/obj?bad=1")
    purge(three.nodes["edge-a"], {"kind": "url", "url": "http://fleet.test/obj?bad=1", "fleet_wait": 10})
    for proxy in three.nodes.values():
        assert not is_hit(proxy, "/obj?bad=1")
        assert "not an edgeproxy purge" in proxy.log()


# ---- a journal that degrades, never spins or dies ----

def test_a_lost_counter_is_reseeded_without_a_resync_storm(three: Fleet, redis_server: RedisServer) -> None:
    a = three.nodes["edge-a"]
    warm(three, "/obj?seq=1")
    first = purge(a, {"kind": "url", "url": "http://fleet.test/obj?seq=1", "fleet_wait": 10})["fleet"]["seq"]
    client = redis_server.client()
    client.delete(f"{STREAM}:seq")  # evicted, DEL'd or left out of a restore: the stream stays
    time.sleep(2)  # the measure: 3,237 resyncs in 2 s
    assert [metric(p, "edgeproxy_fleet_resyncs_total") for p in three.nodes.values()] == [0.0, 0.0, 0.0]
    assert client.get(f"{STREAM}:seq") == str(first)  # re-seeded from the newest entry
    warm(three, "/obj?seq=2")
    reply = purge(three.nodes["edge-b"], {"kind": "url", "url": "http://fleet.test/obj?seq=2", "fleet_wait": 10})
    assert reply["fleet"]["seq"] == first + 1 and reply["fleet"]["applied_on"] == sorted(NODES), reply
    assert all(not is_hit(p, "/obj?seq=2") for p in three.nodes.values())
    assert "re-seeded at" in a.log() or "re-seeded at" in three.nodes["edge-b"].log()
    for name in NODES:  # every node stops at once on SIGTERM (a node is killed after 10 s and its code is -9)
        assert three.nodes.pop(name).stop() == 0, name


BAD_LAST_ENTRIES = {
    "seq abc": {"seq": "abc", "purge": '{"cmd":"purge","kind":"all"}'},
    "seq with a sign": {"seq": "+7", "purge": '{"cmd":"purge","kind":"all"}'},
    "no seq": {"purge": '{"cmd":"purge","kind":"all"}', "node": "x"},
    "no purge": {"seq": "2"},
    "purge not JSON": {"seq": "2", "purge": "{garbage"},
    "purge a JSON list": {"seq": "2", "purge": "[1, 2]"},
    "bytes not UTF-8": {"seq": "2", "purge": b"\xff\xfe{"},
    "seq past the counter": {"seq": "99999999999", "purge": '{"cmd":"purge","kind":"all"}'},
}


@pytest.mark.parametrize("fields", BAD_LAST_ENTRIES.values(), ids=BAD_LAST_ENTRIES.keys())
def test_a_malformed_last_entry_neither_stops_a_node_nor_the_purges(fleet: Fleet, redis_server: RedisServer,
                                                                      fields: dict[str, Any]) -> None:
    a = fleet.start("edge-a")
    fleet.start("edge-b")
    warm(fleet, "/obj?m=1")
    purge(a, {"kind": "url", "url": "http://fleet.test/obj?m=0", "fleet_wait": 10})
    fleet.stop("edge-b")
    redis.Redis(port=redis_server.port).xadd(STREAM, fields)  # bytes as given: this client does not decode
    b = fleet.start("edge-b")  # it starts (before: ValueError out of start()) and serves its kept cache
    assert is_hit(b, "/obj?m=1")
    reply = purge(a, {"kind": "url", "url": "http://fleet.test/obj?m=1", "fleet_wait": 10})
    assert reply["fleet"]["applied_on"] == ["edge-a", "edge-b"], reply
    assert not is_hit(b, "/obj?m=1") and not is_hit(a, "/obj?m=1")
    if fields is not BAD_LAST_ENTRIES["seq past the counter"]:  # well formed: skipped for its number alone
        assert "not an edgeproxy purge" in b.log()
    assert [metric(p, "edgeproxy_fleet_resyncs_total") for p in (a, b)] == [0.0, 0.0]


def test_fleet_wait_names_the_nodes_that_are_down_and_behind(three: Fleet) -> None:
    a = three.nodes["edge-a"]
    three.stop("edge-c")
    wait_until(lambda: stats(a)["fleet"]["nodes_alive"] == 2, timeout=10, what="edge-c's heartbeat to expire")
    reply = purge(a, {"kind": "all", "fleet_wait": 10})["fleet"]
    assert (reply["applied_on"], reply["pending"], reply["down"]) == (["edge-a", "edge-b"], [], ["edge-c"])
    done = cli(a, "purge", "--all", "--fleet-wait")
    assert done.returncode == 0, done.stderr  # a node that is down replays the purge before it serves again
    assert "not applied yet on 1 node that is down: edge-c" in done.stdout, done.stdout


def test_fleet_wait_polls_with_back_off_and_concurrent_waits_are_capped(three: Fleet,
                                                                        redis_server: RedisServer) -> None:
    a = three.nodes["edge-a"]
    client = redis_server.client()
    # A node that is alive and never applies anything: every wait runs to its deadline.
    client.set(f"{STREAM}:alive:ghost", "1", ex=600)
    client.sadd(f"{STREAM}:nodes", "ghost")
    before = client.info("commandstats")["cmdstat_smembers"]["calls"]
    done = cli(a, "purge", "--all", "--fleet-wait", "--fleet-timeout", "1")
    reads = client.info("commandstats")["cmdstat_smembers"]["calls"] - before
    assert done.returncode == 1 and "not applied within 1.0s on: ghost" in done.stderr, done.stderr
    # one read of the fleet's records per poll, and the heartbeats' (one a second per node): 200 polls in 1 s before
    assert reads <= 30, reads
    base = int(client.get(f"{STREAM}:seq"))
    waits = [threading.Thread(target=control, args=(a, {"cmd": "purge", "kind": "all", "fleet_wait": 5}, 15))
             for _ in range(16)]
    for thread in waits:
        thread.start()
    wait_until(lambda: stats(a)["fleet"]["waits"] == 16, what="16 waits in progress")
    # A wait is counted as it is admitted, a moment before its purge is published: all 16 published, then the 17th.
    wait_until(lambda: int(client.get(f"{STREAM}:seq")) == base + 16, what="the 16 purges published")
    seq = client.get(f"{STREAM}:seq")
    refused = control(a, {"cmd": "purge", "kind": "all", "fleet_wait": 5})
    assert not refused["ok"] and "at most 16" in refused["error"] and "nothing was purged" in refused["error"]
    assert client.get(f"{STREAM}:seq") == seq  # refused before it was published
    for thread in waits:
        thread.join(15)
    assert stats(a)["fleet"]["waits"] == 0 and metric(a, "edgeproxy_fleet_waits_refused_total") == 1.0
    assert "Traceback" not in a.log()  # a refusal, not a crash
