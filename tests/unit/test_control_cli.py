"""How the CLI words a purge's replies, with and without a fleet (no socket: the replies as the server sends them)."""

from __future__ import annotations

from edgeproxy.control.cli import fleet_problem, render_purge

BASE = {"kind": "url", "soft": False, "purged": 1}


def test_without_a_fleet_the_count_is_all_there_is() -> None:
    assert render_purge([BASE, BASE]) == "purged 2 entries (url, hard)"
    assert fleet_problem([BASE]) is None


def test_with_fleet_wait_it_names_the_nodes_and_the_time() -> None:
    fleet = {"id": "1-0", "seq": 4, "applied_on": ["b", "a"], "pending": [], "waited_ms": 2.14}
    assert render_purge([{**BASE, "fleet": fleet}]) == \
        "purged 1 entry here (url, hard); applied on 2 nodes (a, b) in 2.1 ms"
    assert fleet_problem([{**BASE, "fleet": fleet}]) is None


def test_published_without_waiting() -> None:
    reply = {**BASE, "soft": True, "purged": 0, "fleet": {"id": "1-0", "seq": 9, "node": "a"}}
    assert render_purge([reply]) == "purged 0 entries here (url, soft); published to the fleet as entry 9"


def test_pending_nodes_and_an_unpublished_purge_are_problems() -> None:
    late = {**BASE, "fleet": {"seq": 4, "applied_on": ["a"], "pending": ["c"], "waited_ms": 500.0}}
    assert fleet_problem([late]) == "not applied within 0.5s on: c (applied on: a)"
    alone = {**BASE, "fleet": {"published": False, "error": "Redis at redis://h:6379/0 is unreachable"}}
    assert render_purge([alone]) == "purged 1 entry here (url, hard)"
    assert fleet_problem([alone]) == "Redis at redis://h:6379/0 is unreachable"


def test_a_regex_over_its_budget_is_done_but_not_as_asked() -> None:
    over = {"budget_seconds": 5.0, "matched": 3, "fallback": "host a.example", "soft_purged": 40, "seconds": 5.01}
    assert fleet_problem([{**BASE, "purged": 43, "over_budget": over}]) == (
        "the regex did not finish within its budget of 5s ([cache] regex_purge_budget): 3 entries purged by it, then "
        "host a.example soft-purged instead (40 entries)")


def test_nodes_that_are_down_and_behind_are_named_but_not_a_failure() -> None:
    fleet = {"seq": 4, "applied_on": ["a"], "pending": [], "down": ["c", "d"], "waited_ms": 2.0}
    assert render_purge([{**BASE, "fleet": fleet}]) == ("purged 1 entry here (url, hard); applied on 1 node (a) in 2.0 "
                                                        "ms; not applied yet on 2 nodes that are down: c, d (each "
                                                        "replays it when it reconnects)")
    assert fleet_problem([{**BASE, "fleet": fleet}]) is None
    late = {**BASE, "fleet": {**fleet, "pending": ["b"], "down": ["c"], "waited_ms": 500.0}}
    assert fleet_problem([late]) == "not applied within 0.5s on: b (applied on: a; down: c)"
