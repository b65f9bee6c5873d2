"""Turning wrk runs into numbers: wrk output parsing, per-cell summaries, ratios, the issue's goals, and the
Markdown / PNG outputs.

Rules kept here:
- No processes, no sockets: everything here reads what run.py measured (``Cell``s) or the result dict.
- Ratios compare medians from the same run only: ``vs nginx``; ``vs bound``, the bound with the target's own
  parser (h11 -> bound-h11, httptools -> bound-httptools); in purge-burst ``vs no purge``, the same process
  without purges; in workers-2 ``vs 1 worker``, the ``-1w`` target started beside it (also for ``-2w``/``-4w``
  names, and in zipf-workers the hit ratio's difference from it, in points); ``vs unshared``, the
  ``-unshared`` target of the same name (the old per-worker caches). Where a scenario has no ``nginx`` (the
  realistic ones), ``vs nginx`` is against ``nginx-log``; ``vs lane off`` divides by the ``-nolane`` target of the
  same name, ``vs log off`` by the same target without ``-log`` (its access log off), ``vs log file`` a
  ``-log-stderr`` target by its ``-log`` twin.
- ``goals`` restates the issue's targets as (what, measured, goal, met) rows; a goal whose numbers are missing
  is reported as not measured, never as met. The shared-cache goals (zipf-workers, hit-1k-workers, shared-rss)
  are listed only when their scenario ran: they are not in the default set.
- The tables in benchmarks/README.md and README.md are this module's output for one named results file
  (``python -m benchmarks.report --tables results/NAME.json [--summary]``): its source line (the file and
  ``machine.machine_line``) first, then the tables; "met" is the file's own ``goals[].met``, never recomputed.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.machine import machine_line
from benchmarks.procs import ROOT, TARGETS, TICK

if TYPE_CHECKING:
    from benchmarks.run import Cell, Profile, Scenario

Results = dict[str, Any]

# ---- wrk -------------------------------------------------------------------------------------------

UNIT_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}
LATENCY_RE = re.compile(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s|m|h)\s*$", re.M)
REQUESTS_RE = re.compile(r"^\s+(\d+) requests in", re.M)
RPS_RE = re.compile(r"^Requests/sec:\s+([\d.]+)", re.M)
SOCKET_ERRORS_RE = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
NON2XX_RE = re.compile(r"Non-2xx or 3xx responses: (\d+)")
HITS_RE = re.compile(r"^HITS (\d+) TOTAL (\d+)", re.M)


def parse_wrk(text: str) -> dict[str, float]:
    """wrk --latency output -> rps, requests, p50_ms, p99_ms, errors (and hits/responses from zipf.lua)."""
    rps, requests = RPS_RE.search(text), REQUESTS_RE.search(text)
    if not rps or not requests:
        raise ValueError("unrecognised wrk output: " + text[-300:])
    if not int(requests.group(1)):
        raise ValueError("wrk completed no requests")
    out = {"rps": float(rps.group(1)), "requests": float(requests.group(1)), "errors": 0.0}
    for pct, value, unit in LATENCY_RE.findall(text):
        out[f"p{pct}_ms"] = float(value) * UNIT_MS[unit]
    for match in (SOCKET_ERRORS_RE.search(text), NON2XX_RE.search(text)):
        if match:
            out["errors"] += sum(float(g) for g in match.groups())
    if hits := HITS_RE.search(text):
        out["hits"], out["responses"] = float(hits.group(1)), float(hits.group(2))
    return out


# ---- summaries and ratios --------------------------------------------------------------------------


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def purge_summary(latencies: list[float], errors: list[str], seconds: float, cpus: list[int]) -> dict[str, object]:
    return {"purges": len(latencies), "purges_per_s": len(latencies) / seconds, "purge_errors": errors[:3],
            "purger_cpus": cpus,
            "purge_ms": {"p50": statistics.median(latencies), "p99": _percentile(latencies, 0.99),
                         "max": max(latencies)}}


def summarise(cell: Cell, seconds: int) -> dict[str, object]:
    out: dict[str, object] = {"notes": cell.notes}
    if not cell.runs:
        return out
    runs = cell.runs
    rps = [r["rps"] for r in runs]
    requests = sum(r["requests"] for r in runs)
    out |= {
        "rps_median": statistics.median(rps), "rps_min": min(rps), "rps_max": max(rps), "rps_runs": rps,
        "p50_ms": statistics.median(r.get("p50_ms", float("nan")) for r in runs),
        "p99_ms": statistics.median(r.get("p99_ms", float("nan")) for r in runs),
        "cpu_us_per_req": cell.cpu_ticks / TICK * 1e6 / requests if requests else None,
        "peak_rss_mib": round(cell.peak_rss_kib / 1024, 1), "requests": requests,
        "errors": sum(r["errors"] for r in runs),
    }
    if responses := sum(r.get("responses", 0.0) for r in runs):
        out["hit_ratio"] = sum(r.get("hits", 0.0) for r in runs) / responses
        out["hit_ratio_runs"] = [round(r["hits"] / r["responses"], 4) for r in runs if r.get("responses")]
    if cell.store:
        out["store"] = cell.store
    # CPU that other processes took meanwhile (not the target, wrk, the origins or the orchestrator), in cores.
    out["other_load_cores"] = round(cell.other_ticks / TICK / (seconds * len(runs)), 3)
    if cell.target.access_logs:  # the access log was on: did every request write its line?
        out["access_log"] = {"lines": cell.logged[0], "bytes": cell.logged[1]}
    if cell.purges.latencies_ms:
        out |= purge_summary(cell.purges.latencies_ms, cell.purges.errors, seconds * len(runs), cell.purges.cpus)
    elif cell.purge:
        out["notes"] = [*cell.notes, "no purge answered: " + "; ".join(cell.purges.errors[:2])]
    return out


WORKERS_SUFFIX = re.compile(r"-\d+w(-shared|-unshared)?$")


def reference(name: str, present: Collection[str] = ("nginx",)) -> dict[str, str]:
    """The rows a target's row is divided by: ratio key -> reference target name (``present``: the scenario's
    targets, which decide between nginx and nginx-log)."""
    refs = {"vs_nginx": "nginx" if "nginx" in present else "nginx-log"}
    spec = TARGETS.get(name.split("+")[0])
    if spec is not None and spec.kind == "edgeproxy":
        refs["vs_bound"] = f"bound-{spec.parser}"
        if spec.lane:
            refs["vs_lane_off"] = name.replace(f"-{spec.parser}", f"-{spec.parser}-nolane", 1)
        if spec.log:
            refs["vs_log_off"] = re.sub(r"-log(-stderr)?$", "", name)
        if spec.log == "stderr":
            refs["vs_log_file"] = name.removesuffix("-stderr")
    if name.endswith("+purge"):
        refs["vs_no_purge"] = name.removesuffix("+purge")
    base = WORKERS_SUFFIX.sub("", name)  # edgeproxy-httptools-2w-unshared -> edgeproxy-httptools
    if f"{base}-1w" in TARGETS and name != f"{base}-1w":
        refs["vs_1_worker"] = f"{base}-1w"
    if f"{name}-unshared" in TARGETS:
        refs["vs_unshared"] = f"{name}-unshared"
    return refs


def add_ratios(rows: dict[str, dict[str, Any]]) -> None:
    for name, row in rows.items():
        for key, ref_name in reference(name, rows).items():
            ref = rows.get(ref_name, {}).get("rps_median")
            if ref and "rps_median" in row and ref_name != name:
                row[key] = row["rps_median"] / ref
            if key == "vs_1_worker" and "hit_ratio" in row and "hit_ratio" in rows.get(ref_name, {}):
                row["hit_points_vs_1_worker"] = (row["hit_ratio"] - rows[ref_name]["hit_ratio"]) * 100


def scenario_result(scenario: Scenario, cells: dict[str, Cell], profile: Profile, rounds: int,
                    seconds: int) -> dict[str, object]:
    rows = {name: summarise(cell, seconds) for name, cell in cells.items()}
    add_ratios(rows)
    return {
        "path": scenario.path, "connections": scenario.connections, "script": scenario.script,
        "rounds": rounds, "seconds": seconds, "server_cpus": profile.cpus, "cache_mib": profile.cache_mib,
        "workers": profile.workers, "targets": rows,
    }


# ---- the goals -----------------------------------------------------------------------------


def _get(scenarios: Results, scenario: str, target: str, key: str = "rps_median") -> float | None:
    value = scenarios.get(scenario, {}).get("targets", {}).get(target, {}).get(key)
    return float(value) if isinstance(value, int | float) else None


def _div(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _max(*values: float | None) -> float | None:
    return max((v for v in values if v is not None), default=None)


def shared_goals(scenarios: Results) -> list[tuple[str, float | None, float]]:
    """The shared cache's goals, for the scenarios of it that ran: hit ratio within 1 point of one process's LRU at
    2 and 4 workers, a hit at 0.95x the unshared workers' req/s or better, host memory <= size + 40 MiB a worker."""
    g = lambda s, t, k: _get(scenarios, s, t, k)  # noqa: E731
    rows: list[tuple[str, float | None, float]] = []
    if "zipf-workers" in scenarios:
        for workers in (2, 4):
            points = g("zipf-workers", f"edgeproxy-httptools-{workers}w", "hit_points_vs_1_worker")
            rows.append((f"zipf-workers: hit-ratio points below 1 worker, {workers} workers shared (at most)",
                         None if points is None else -points, -1.0))
    if "hit-1k-workers" in scenarios:
        for lane, name in (("on", "edgeproxy-httptools-2w"), ("off", "edgeproxy-httptools-nolane-2w")):
            rows.append((f"hit-1k-workers: 2 workers shared vs unshared, lane {lane}",
                         g("hit-1k-workers", name, "vs_unshared"), 0.95))
    for row in scenarios.get("shared-rss", {}).get("targets", {}).values():
        if row.get("shared") and "goal_mib" in row:
            rows.append((f"shared-rss: host MiB with a full {scenarios['shared-rss']['cache_mib']} MiB cache, "
                         f"{row['workers']} workers shared (at most)", row.get("host_mib"), -float(row["goal_mib"])))
    return rows


def goals(scenarios: Results) -> list[dict[str, object]]:
    """Each of the issue's targets: the measured figure, the goal and whether it is met."""
    g = lambda s, t, k="rps_median": _get(scenarios, s, t, k)  # noqa: E731
    memory = scenarios.get("memory", {}).get("targets", {}).get("edgeproxy-h11", {})
    p99 = lambda t: _div(g("real-hit", t, "p99_ms"), g("real-hit", "nginx-log", "p99_ms"))  # noqa: E731
    rows = [
        # Realistic traffic (real.lua: browser-like heads, each unique; access logs on unless said otherwise): the
        # fast lane's goals.
        ("real-hit httptools, lane on, access log to a file, vs nginx (1 worker, access log on)",
         g("real-hit", "edgeproxy-httptools-log", "vs_nginx"), 1.0),
        ("real-hit h11, lane on, access log to a file, vs nginx (1 worker, access log on)",
         g("real-hit", "edgeproxy-h11-log", "vs_nginx"), 1.0),
        ("real-hit httptools, access log to stderr, vs nginx (1 worker, access log on)",
         g("real-hit", "edgeproxy-httptools-log-stderr", "vs_nginx"), 1.0),
        ("real-hit h11, access log on, vs bound-h11 (parse + prepared write, no log)",
         g("real-hit", "edgeproxy-h11-log", "vs_bound"), 0.8),
        ("real-hit httptools, lane on, CPU per request / bound-httptools's (at most)",
         _div(g("real-hit", "edgeproxy-httptools-log", "cpu_us_per_req"),
              g("real-hit", "bound-httptools", "cpu_us_per_req")), -2.0),
        ("real-zipf httptools vs nginx, access logs on", g("real-zipf", "edgeproxy-httptools-log", "vs_nginx"), 0.8),
        ("real-hit p99 / nginx p99, httptools, log to a file (at most)", p99("edgeproxy-httptools-log"), -1.5),
        ("real-hit p99 / nginx p99, httptools, log to stderr (at most)", p99("edgeproxy-httptools-log-stderr"), -1.5),
        ("real-hit p99 / nginx p99, h11, log to a file (at most)", p99("edgeproxy-h11-log"), -1.5),
        ("hit-1k httptools, lane hits: access log on (file) vs off",
         g("hit-1k", "edgeproxy-httptools-log", "vs_log_off"), 0.9),
        ("real-hit httptools, every head unique: lane on vs off (both logging to a file)",
         g("real-hit", "edgeproxy-httptools-log", "vs_lane_off"), 1.0),
        ("hit-1k h11, lane off, vs bound-h11",
         _div(g("hit-1k", "edgeproxy-h11-nolane"), g("hit-1k", "bound-h11")), 0.85),
        ("hit-1k h11, lane on, vs bound-h11", _div(g("hit-1k", "edgeproxy-h11"), g("hit-1k", "bound-h11")), 0.85),
        ("hit-1k h11 p99 / nginx p99 (at most)", _div(g("hit-1k", "edgeproxy-h11", "p99_ms"),
                                                      g("hit-1k", "nginx", "p99_ms")), -3.0),
        ("hit-1k httptools, lane on, vs nginx", _div(g("hit-1k", "edgeproxy-httptools"), g("hit-1k", "nginx")), 1.0),
        ("hit-1k httptools, lane off, vs nginx",
         _div(g("hit-1k", "edgeproxy-httptools-nolane"), g("hit-1k", "nginx")), 1.0),
        ("hit-64k httptools vs the faster nginx (nopush on/off)", _div(g("hit-64k", "edgeproxy-httptools"), _max(
            g("hit-64k", "nginx"), g("hit-64k", "nginx-nopush-off"))), 0.8),
        ("miss-1k / hit-1k, h11 process", _div(g("miss-1k", "edgeproxy-h11"), g("hit-1k", "edgeproxy-h11")), 0.5),
        ("miss-1k / hit-1k, httptools process",
         _div(g("miss-1k", "edgeproxy-httptools"), g("hit-1k", "edgeproxy-httptools")), 0.5),
        ("miss-1k / hit-1k, h11 process, lane off (every hit parsed)",
         _div(g("miss-1k", "edgeproxy-h11-nolane"), g("hit-1k", "edgeproxy-h11-nolane")), 0.5),
        ("miss-1k / hit-1k, httptools process, lane off",
         _div(g("miss-1k", "edgeproxy-httptools-nolane"), g("hit-1k", "edgeproxy-httptools-nolane")), 0.5),
        ("workers-2 h11 lane off at -c256 vs 1 worker", g("workers-2", "edgeproxy-h11-nolane", "vs_1_worker"), 1.6),
        ("workers-2 httptools lane off at -c256 vs 1 worker",
         g("workers-2", "edgeproxy-httptools-nolane", "vs_1_worker"), 1.6),
        ("workers-2 h11 lane on at -c256 vs 1 worker (wrk-bound)", g("workers-2", "edgeproxy-h11", "vs_1_worker"), 1.6),
        ("memory: RSS MiB after filling 256 MiB (at most)", memory.get("rss_mib"), -float(memory.get("goal_mib", 0))),
    ]
    rows += shared_goals(scenarios)
    # A negative goal is an upper bound ("at most"); a positive one a lower bound.
    return [{"goal": what, "measured": value, "target": abs(goal),
             "met": None if value is None else (value <= -goal if goal < 0 else value >= goal)}
            for what, value, goal in rows]


# ---- Markdown --------------------------------------------------------------------------------------

COLUMNS = ("target", "req/s median", "min-max", "p50 ms", "p99 ms", "CPU µs/req", "peak RSS MiB",
           "vs nginx", "vs bound", "other ratio", "hit %", "notes")
OTHER_RATIOS = {"vs_no_purge": "vs no purge", "vs_unshared": "vs unshared", "vs_1_worker": "vs 1 worker",
                "vs_lane_off": "vs lane off", "vs_log_off": "vs log off", "vs_log_file": "vs log file"}


def _fmt(value: object, spec: str) -> str:
    return "-" if value is None or value != value else format(value, spec)  # value != value: NaN


def _notes(row: dict[str, Any]) -> str:
    notes = list(row["notes"])
    if row.get("other_load_cores", 0) >= 0.05:
        notes.append(f"other processes used {row['other_load_cores']:.2f} cores meanwhile")
    if log := row.get("access_log"):
        per_line = f", {log['bytes'] / log['lines']:.0f} bytes a line" if log["lines"] else ""
        notes.append(f"access log: {log['lines'] / row['requests']:.3f} lines a request{per_line}")
    notes = list(dict.fromkeys(notes))  # results of 2026-12-06 carry these two in "notes" already
    if "purges" in row:
        ms = row["purge_ms"]
        errors = f", errors: {row['purge_errors']}" if row["purge_errors"] else ""
        cpus = f", sent from CPU {','.join(map(str, row['purger_cpus']))}" if row.get("purger_cpus") else ""
        notes.insert(0, f"{row['purges_per_s']:.0f} purges/s, round trip p50 {ms['p50']:.2f} / p99 {ms['p99']:.2f}"
                        f" / max {ms['max']:.1f} ms{errors}{cpus}")
    return "; ".join(n.replace("|", "/") for n in notes)


def _row(target: str, row: dict[str, Any]) -> str:
    if "rps_median" not in row:
        return f"| {target} | n/a |" + " |" * (len(COLUMNS) - 3) + f" {_notes(row)} |"
    other = "; ".join(f"{row[key]:.2f} {label}" for key, label in OTHER_RATIOS.items() if key in row)
    hit = _fmt(row["hit_ratio"] * 100 if "hit_ratio" in row else None, ".1f")
    if "hit_points_vs_1_worker" in row:
        hit += f" ({row['hit_points_vs_1_worker']:+.1f} vs 1 worker)"
    cells = [
        target, _fmt(row["rps_median"], ",.0f"), f"{row['rps_min']:,.0f}-{row['rps_max']:,.0f}",
        _fmt(row["p50_ms"], ".2f"), _fmt(row["p99_ms"], ".2f"), _fmt(row["cpu_us_per_req"], ".1f"),
        _fmt(row["peak_rss_mib"], ".0f"), _fmt(row.get("vs_nginx"), ".2f"), _fmt(row.get("vs_bound"), ".2f"),
        other or "-", hit, _notes(row),
    ]
    return "| " + " | ".join(cells) + " |"


def memory_markdown(name: str, sc: Results) -> list[str]:
    lines = [f"### {name}: fill a {sc['cache_mib']} MiB cache with {sc['sizes']} objects "
             f"({sc['overfill']} x its size requested)", "",
             "| target | requests | fill s | RSS MiB | peak RSS MiB | goal MiB | met | entries | stored MiB | notes |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for target, row in sc["targets"].items():
        stored = _fmt(row["bytes"] / 2**20 if "bytes" in row else None, ".0f")
        lines.append(f"| {target} | {row.get('requests', '-')} | {row.get('fill_seconds', '-')} | "
                     f"{row.get('rss_mib', 'n/a')} | {row.get('peak_rss_mib', '-')} | {row.get('goal_mib', '-')} | "
                     f"{'yes' if row.get('met') else 'no'} | {row.get('entries', '-')} | {stored} | "
                     f"{'; '.join(row['notes'])} |")
    return [*lines, ""]


def shared_rss_markdown(name: str, sc: Results) -> list[str]:
    lines = [f"### {name}: host memory with a full {sc['cache_mib']} MiB cache of {sc['object']} objects "
             f"(filled until {sc['overfill'] - 1:.0%} of the stored objects were evicted)", "",
             "| target | shared | processes | requests | fill s | entries | stored MiB / capacity MiB | evictions "
             "| RSS sum MiB | Pss sum MiB | USS sum MiB | store: mapped private MiB | store tmpfs MiB (apparent) "
             "| host MiB (USS) | host MiB (Pss) | goal MiB | met | LMDB map used / size MiB | map used / cache size "
             "| notes |", "|" + "---|" * 20]
    mib = lambda v: _fmt(v / 2**20 if isinstance(v, int | float) else None, ".1f")  # noqa: E731
    for target, row in sc["targets"].items():
        if "host_mib" not in row:
            lines.append(f"| {target} | n/a |" + " |" * 18 + f" {'; '.join(row['notes'])} |")
            continue
        lines.append(
            f"| {target} | {'yes' if row['shared'] else 'no'} | {row['processes']} | {row['requests']:,} | "
            f"{row['fill_seconds']} | {row.get('entries', '-'):,} | {mib(row.get('bytes'))} / "
            f"{mib(row.get('capacity'))} | {row.get('evictions', '-'):,} | {row['rss_mib']} | {row['pss_mib']} | "
            f"{row['uss_mib']} | {row['store_mapped_private_mib']} | {row['store_tmpfs_mib']} "
            f"({row['store_apparent_mib']}) | {row['host_mib']} | {row['host_pss_mib']} | {row['goal_mib']:g} | "
            f"{'yes' if row['met'] else '**no**'} | {row.get('map_used_mib', '-')} / {row.get('map_size_mib', '-')} | "
            f"{row.get('map_used_vs_size', '-')} | {'; '.join(row['notes'])} |")
    lines += ["", "host MiB (USS) = USS sum - the store's pages counted private in a process + the store's files on "
              "tmpfs; host MiB (Pss) = sum of (Pss - Pss_Shmem) + the same files.", ""]
    for target, row in sc["targets"].items():  # where the store's pages go
        if "lmdb_tables" in row:
            page = row["page_size"] / 2**20
            parts = [f"{name} {t['pages'] * page:.1f} ({t['entries']:,} records)"
                     for name, t in sorted(row["lmdb_tables"].items(), key=lambda kv: -kv[1]["pages"]) if t["pages"]]
            mean = row["lmdb_tables"].get("objects", {}).get("mean_record_bytes")
            record = f"; an objects record: {mean:,} bytes on average ({row['page_size']:,}-byte pages)" if mean else ""
            lines.append(f"- {target}, LMDB MiB by table: {', '.join(parts)}; free list and meta "
                         f"{row['lmdb_free_pages'] * page:.1f}{record}")
    return [*lines, ""]


def _measured(value: float | None, goal: float) -> str:
    """Two decimals, three where two would round onto the goal (0.896 against 0.9 must not read 0.90)."""
    text = _fmt(value, ".2f")
    return _fmt(value, ".3f") if value is not None and float(text) == round(goal, 2) != value else text


def goals_markdown(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["### the issue's targets", "", "| target | measured | goal | met |", "|---|---|---|---|"]
    for r in rows:
        met = "not measured" if r["met"] is None else ("yes" if r["met"] else "**no**")
        lines.append(f"| {r['goal']} | {_measured(r['measured'], r['target'])} | {r['target']:g} | {met} |")
    return [*lines, ""]


def logs_markdown(logs: dict[str, list[str]]) -> list[str]:
    """What the servers' logs said of errors, warnings and tracebacks (nothing: one line saying so)."""
    if not logs:
        return ["### server logs", "", "no error, warning or traceback in any server's log", ""]
    lines = ["### server logs: lines with an error, warning or traceback", ""]
    for name, found in logs.items():
        lines += [f"{name}:", "", "```", *found, "```", ""]
    return lines


def _code(sc: Results) -> str:
    code = sc.get("code")
    if not code:
        return ""
    dirty = code["uncommitted"]
    text = f", edgeproxy at {code['git']}" + (f" + uncommitted {dirty.get('sha256', '?')}" if dirty else "")
    return text + ("; **edgeproxy/ changed while the servers started**" if "changed_while_starting" in code else "")


def markdown(results: Results, for_docs: bool = False) -> str:
    """The run's Markdown; ``for_docs``: without the server logs and the goals the run did not measure."""
    lines: list[str] = []
    for name, sc in results["scenarios"].items():
        if sc.get("kind") == "memory":
            lines += memory_markdown(name, sc)
            continue
        if sc.get("kind") == "shared-rss":
            lines += shared_rss_markdown(name, sc)
            continue
        lines += [
            f"### {name}: GET {sc['path']} -c{sc['connections']}, {sc['rounds']} x {sc['seconds']} s, "
            f"servers on CPU {sc['server_cpus']}, cache {sc['cache_mib']} MiB, workers {sc['workers']}{_code(sc)}",
            "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS),
            *(_row(target, row) for target, row in sc["targets"].items()), "",
        ]
    goals = [g for g in results.get("goals", []) if g["met"] is not None or not for_docs]
    logs = [] if for_docs else logs_markdown(results.get("logs", {}))
    return "\n".join(lines + goals_markdown(goals) + logs)


# ---- the chart -------------------------------------------------------------------------------------

COLORS = {"nginx": "#2a9d8f", "edgeproxy-h11": "#e76f51", "edgeproxy-httptools": "#f4a261",
          "bound-h11": "#264653", "bound-httptools": "#8d99ae"}


def _color(target: str) -> str:
    base = WORKERS_SUFFIX.sub("", target.split("+")[0]).removesuffix("-stderr").removesuffix("-log")
    base = base.removesuffix("-nolane").removesuffix("-nopush-off")
    return COLORS.get(base, "grey")


def chart(results: Results, path: Path) -> bool:
    """The req/s chart of the wrk scenarios; False (no file) when the run had none (memory, shared-rss alone)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = {n: sc for n, sc in results["scenarios"].items() if "connections" in sc}
    if not shown:
        return False
    cols = min(3, len(shown))
    rows = -(-len(shown) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 4.2 * rows), squeeze=False)
    for ax, (name, sc) in zip(axes.flat, shown.items(), strict=False):
        bars = [(t, r) for t, r in sc["targets"].items() if "rps_median" in r]
        med = [r["rps_median"] for _, r in bars]
        spread = [[m - r["rps_min"] for m, (_, r) in zip(med, bars, strict=True)],
                  [r["rps_max"] - m for m, (_, r) in zip(med, bars, strict=True)]]
        ax.bar(range(len(bars)), med, yerr=spread, capsize=3, color=[_color(t) for t, _ in bars],
               hatch=None, edgecolor="black", linewidth=0.3)
        for x, (t, _) in enumerate(bars):  # lane off and "+purge" bars are hatched: the same server, one change
            hatch = "//" if "nolane" in t or t.endswith(("+purge", "-1w", "-nopush-off", "-unshared")) else ""
            hatch += ".." if "-log" in t else ""  # access log on
            if hatch:
                ax.patches[x].set_hatch(hatch)
        ax.set_xticks(range(len(bars)), [t for t, _ in bars], rotation=30, ha="right", fontsize=7)
        ax.set_title(f"{name} (-c{sc['connections']}, workers {sc['workers']})", fontsize=10)
        ax.set_ylabel("req/s (median, min-max)", fontsize=8)
        for x, (m, (_, r)) in enumerate(zip(med, bars, strict=True)):  # zipf: the hit ratio under the req/s
            hit = f"\n{r['hit_ratio'] * 100:.1f}% hits" if "hit_ratio" in r else ""
            ax.annotate(f"{m / 1000:.1f}k{hit}", (x, r["rps_max"]), ha="center", va="bottom", fontsize=7)
    for ax in list(axes.flat)[len(shown):]:
        ax.axis("off")
    fig.suptitle(f"edgeproxy benchmarks: {results['meta']['name']}\n"  # two lines: one panel is narrow
                 "(hatched //: lane off / purging / 1 worker / nopush off / unshared; dotted: access log on)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# ---- tables from a results file ------------------------------------------------------------------


def source_line(path: Path, results: Results) -> str:
    """Which file a table comes from and the machine it was measured on: the first line of every generated table."""
    meta = results.get("meta", {})
    shown = path.resolve().relative_to(ROOT) if path.resolve().is_relative_to(ROOT) else path
    when = f", started {meta['started']}" if "started" in meta else ""
    return f"From `{shown}`{when}. Machine: {machine_line(meta)}."


def summary(results: Results) -> list[str]:
    """The goals the run measured, with "met" as the results file says (never recomputed)."""
    rows = [r for r in results.get("goals", []) if r["met"] is not None]
    return goals_markdown(rows)[2:]  # without the heading


def tables(path: Path, short: bool = False) -> str:
    """The Markdown of one results file for the docs: its source line, then every scenario's table and the goals it
    measured (``short``: the goals alone). The server logs stay in the file."""
    results = json.loads(path.read_text())
    if "scenarios" not in results:
        raise SystemExit(f"{path}: not a results file of benchmarks.run (no scenarios)")
    body = summary(results) if short else markdown(results, for_docs=True).splitlines()
    return "\n".join([source_line(path, results), "", *body]).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.report",
                                 description="Markdown tables from one results file, with its machine line")
    ap.add_argument("--tables", type=Path, required=True, metavar="RESULTS.json")
    ap.add_argument("--summary", action="store_true", help="only the goals the run measured (the README's table)")
    args = ap.parse_args(argv)
    path = args.tables
    if not path.exists() and (ROOT / "benchmarks" / path).exists():  # results/NAME.json, as benchmarks/ names it
        path = ROOT / "benchmarks" / path
    sys.stdout.write(tables(path, short=args.summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
