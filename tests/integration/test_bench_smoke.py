"""Smoke test of the benchmark orchestrator: one 1 s round of hit-1k against a bound, edgeproxy and nginx.

It checks that the machinery produces numbers (every target answered, a req/s and the ratios are present,
the Markdown has the rows) and that it stops what it started; it never asserts a performance figure.
Needs wrk, nginx and taskset; skipped without them.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import time

import pytest

from benchmarks import report, run
from benchmarks.procs import process_tree

TOOLS = ("wrk", "nginx", "taskset")
pytestmark = pytest.mark.skipif(
    any(shutil.which(t, path="/usr/bin:/usr/sbin:/bin:/sbin") is None for t in TOOLS),
    reason="needs " + ", ".join(TOOLS),
)
PARSER = "httptools" if importlib.util.find_spec("httptools") else "h11"
TARGETS = {"nginx", f"edgeproxy-{PARSER}", f"bound-{PARSER}"}


def test_one_round_reports_numbers_for_each_target(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/usr/sbin:" + os.environ["PATH"])  # nginx lives in /usr/sbin
    results: dict[str, dict[str, object]] = {}
    logs: dict[str, list[str]] = {}
    run.run([run.SCENARIOS["hit-1k"]], TARGETS, rounds=1, seconds=1, deadline=time.monotonic() + 60,
            results=results, logs=logs)
    assert not any("Traceback" in line for lines in logs.values() for line in lines), logs
    rows = results["hit-1k"]["targets"]
    assert set(rows) == TARGETS  # type: ignore[arg-type]
    for name, row in rows.items():  # type: ignore[union-attr]
        assert row["rps_median"] > 0, (name, row["notes"])
        assert row["requests"] > 0 and row["cpu_us_per_req"] is not None
        # A note on other load on the machine reports the machine, not the target: only that one may appear.
        assert [n for n in row["notes"] if not n.startswith("other processes used")] == [], row["notes"]
    edge = rows[f"edgeproxy-{PARSER}"]  # type: ignore[index]
    assert {"vs_nginx", "vs_bound"} <= set(edge)
    text = report.markdown({"scenarios": results, "goals": report.goals(results)})
    assert all(f"| {name} | " in text for name in TARGETS)
    assert "the issue's targets" in text


def test_fleet_leaves_no_process_behind() -> None:
    before = set(process_tree(os.getpid()))
    results: dict[str, dict[str, object]] = {}
    run.run([run.SCENARIOS["hit-1k"]], {f"bound-{PARSER}"}, rounds=1, seconds=1,
            deadline=time.monotonic() + 30, results=results, logs={})
    assert "rps_median" in results["hit-1k"]["targets"][f"bound-{PARSER}"]  # type: ignore[index]
    assert set(process_tree(os.getpid())) <= before
