"""Smoke test of the benchmark orchestrator: one 1 s round of hit-1k against a bound, edgeproxy and nginx.

It checks that the machinery produces numbers (every target answered, a req/s and the ratios are present,
the Markdown has the rows) and that it stops what it started; it never asserts a performance figure.
Needs wrk, nginx and taskset; skipped without them, which fails the run under CI=true (scripts/test installs them;
tests/skipguard.py), and redis-server for the fleet benchmark's smoke run. httptools is required, as in the suite.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httptools  # noqa: F401  (required: the benchmark's edgeproxy rows run on it)
import pytest

from benchmarks import report, run
from benchmarks.procs import process_tree

TOOLS = ("wrk", "nginx", "taskset")
pytestmark = pytest.mark.skipif(
    any(shutil.which(t, path="/usr/bin:/usr/sbin:/bin:/sbin") is None for t in TOOLS),
    reason="needs " + ", ".join(TOOLS),
)
PARSER = "httptools"
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


def test_the_fleet_benchmark_reports_every_row(tmp_path: Path) -> None:
    """benchmarks/fleet.py at its smallest (a second of outage, a few purges): every scenario returns its figures."""
    out = tmp_path / "fleet.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.fleet", "--purges", "20", "--outage", "1", "--rounds", "1", "--seconds", "1",
         "--zipf-requests", "600", "--zipf-urls", "200", "--out", str(out)],
        cwd=run.ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = json.loads(out.read_text())
    assert set(rows) == {"latency_idle", "latency_loaded", "replay", "outage", "trim", "throughput", "cluster"}
    assert rows["replay"]["purged_served_from_cache"] == 0 and rows["trim"]["purged_served_from_cache"] == 0
    assert rows["outage"]["failed"] == 0 and len(rows["outage"]["purge_after_applied_on"]) == 3
    assert rows["cluster"]["three_clustered"]["origin_fetches"] == rows["cluster"]["one_node"]["origin_fetches"]
