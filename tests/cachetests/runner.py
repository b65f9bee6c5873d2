"""Run the public HTTP cache test suite (``http-cache-tests`` 0.4.5) against edgeproxy.

What this module owns: installing the pinned npm package outside the repo, starting the suite's origin
(``server/server.mjs``) and the proxy on free 127.0.0.1 ports, running the suite's client (``cli.mjs``),
tallying the results like the published scores, and comparing them with ``expected.json``.

Rules it keeps:
- Loopback only. The origin is forced onto 127.0.0.1 by a preload that patches ``net.Server.listen``
  (the package listens on every interface by default); its files are never edited.
- Every wait is bounded: start-up, the whole run (the client lingers on keep-alive connections after
  printing its JSON, so it is stopped once the JSON is complete), and each single-test rerun.
- "Passed" is a test whose result is ``true``, dependencies notwithstanding: that is the count that
  reproduces the published figures in the package's ``results/*.json`` (Squid 243 / 141 required);
  honouring ``depends_on`` there gives 222 / 122. Tests whose dependencies failed are reported apart.
- A test is timing-sensitive when it pauses (``pause_after``, 3 s) or builds a date header from the
  clock (``['Expires', 0]``: second resolution, so the outcome can flip at a second boundary). Such a
  test that fails is rerun by its id: it is flaky, not a regression, only if it passes two runs of three
  (the failed one and two reruns, so both reruns), never on one lucky pass.
- The score has a floor (``FLOOR_PASSED``, ``FLOOR_REQUIRED``): a run below it fails even where it
  matches ``expected.json``, and ``--update`` refuses to write expectations below it, so rewriting the
  expectations can never lower the bar.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import queue
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "http-cache-tests"
VERSION = "0.4.5"
SECONDS = 1.0
RUN_TIMEOUT = 120 * SECONDS
RERUN_TIMEOUT = 60 * SECONDS
START_TIMEOUT = 20 * SECONDS
STOP_TIMEOUT = 5 * SECONDS
MAX_RERUNS = 20  # more failing timing tests than this is a broken proxy, not a slow machine
RUNS, PASSES_NEEDED = 3, 2  # a failing timing test's verdict: the first run and up to two reruns, two must pass
# The floor: passed tests and passed required tests (h11 and httptools both scored 305 / 156 at fdaefb2). Raise it
# with the expectations when the score goes up; lowering it is a change of its own, with the reason.
FLOOR_PASSED = 305
FLOOR_REQUIRED = 156
KINDS = ("required", "optimal", "check")
PARSERS = ("h11", "httptools")
REPO_ROOT = Path(__file__).resolve().parents[2]
EXPECTED_PATH = Path(__file__).with_name("expected.json")
DEFAULT_PROXY_CMD = "{python} -m edgeproxy serve --config {config}"
# The verdict symbols of cli.mjs (lib/display.mjs resultTypes) that mean pass and "yes" (a check).
PASS_SYMBOLS = frozenset({"✅", "Y"})

# Lists every test the client runs (cli.mjs adds the Surrogate-Control suite) as JSON lines.
LIST_TESTS_JS = """
import tests from %(index)s
import surrogate from %(surrogate)s
import { dateHeaders } from %(defines)s
const clockDate = r => ['request_headers', 'response_headers'].some(f => (r[f] || []).some(h =>
  Array.isArray(h) && dateHeaders.has(String(h[0]).toLowerCase()) && Number.isInteger(h[1])))
for (const suite of [...tests, surrogate]) {
  for (const t of suite.tests) {
    if (t.browser_only === true) continue
    console.log(JSON.stringify({id: t.id, kind: t.kind || 'required', name: t.name, suite: suite.id,
      depends_on: t.depends_on || [], timing: t.requests.some(r => 'pause_after' in r || clockDate(r))}))
  }
}
"""
# Starts server.mjs with every listen() forced onto the loopback interface.
ORIGIN_JS = """
import net from 'node:net'
const listen = net.Server.prototype.listen
net.Server.prototype.listen = function (port, ...rest) {
  return listen.call(this, Number(port), '127.0.0.1', ...rest.filter(a => typeof a === 'function'))
}
await import(%(server)s)
"""
# control_socket: the default path is shared by every edgeproxy on the machine, so each run has its own.
PROXY_TOML = """[server]
listen = ["127.0.0.1:%(port)d"]
parser = "%(parser)s"
workers = %(workers)d
control_socket = "%(control)s"
drain_timeout = "2s"
[cache]
path = "%(cache)s"
[log]
access = false
[[site]]
hosts = ["*"]
origin = "http://127.0.0.1:%(origin_port)d"
"""
UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
DATE_RE = re.compile(r"\w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT")
PORT_RE = re.compile(r"127\.0\.0\.1:\d+")
ANSI_RE = re.compile(r"\x1b\[[0-9;]*m")

Result = bool | str  # True, or the failure as "Assertion: ..." / "Setup: ..."


class HarnessError(RuntimeError):
    """The suite could not run (install, start-up or client failure): not a test verdict."""


@dataclass(frozen=True)
class Case:
    id: str
    kind: str
    name: str
    suite: str
    depends_on: tuple[str, ...]
    timing: bool


@dataclass(frozen=True)
class Score:
    passed: int
    total: int
    by_kind: dict[str, tuple[int, int]]
    dependency_failed: int

    def __str__(self) -> str:
        kinds = ", ".join(f"{k} {p}/{t}" for k, (p, t) in self.by_kind.items())
        return (f"passed {self.passed}/{self.total} ({kinds}); "
                f"{self.dependency_failed} tests have a failed dependency")


@dataclass(frozen=True)
class Comparison:
    regressions: dict[str, Result]
    improvements: list[str]
    flaky: list[str]  # failed first, then passed both reruns (two runs of three)


# ---- install and catalogue ----

def cache_dir() -> Path:
    base = os.environ.get("EDGEPROXY_CACHE_DIR") or Path.home() / ".cache" / "edgeproxy"
    return Path(base) / "cache-tests"


def install(root: Path | None = None) -> Path:
    """Install the pinned package under ``root`` unless it is already there; return its folder."""
    root = root or cache_dir()
    pkg = root / "node_modules" / PACKAGE
    manifest = pkg / "package.json"
    if manifest.is_file() and json.loads(manifest.read_text()).get("version") == VERSION:
        return pkg
    root.mkdir(parents=True, exist_ok=True)
    cmd = ["npm", "install", "--no-audit", "--no-fund", "--prefix", str(root), f"{PACKAGE}@{VERSION}"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if done.returncode != 0 or not manifest.is_file():
        raise HarnessError(f"npm install failed:\n{done.stderr[-2000:]}")
    return pkg


def _js_url(path: Path) -> str:
    return json.dumps(path.resolve().as_uri())


def list_tests(pkg: Path) -> dict[str, Case]:
    """Read the test definitions with node: id -> kind, name, dependencies, timing sensitivity."""
    script = LIST_TESTS_JS % {"index": _js_url(pkg / "tests" / "index.mjs"),
                              "surrogate": _js_url(pkg / "tests" / "surrogate-control.mjs"),
                              "defines": _js_url(pkg / "lib" / "defines.mjs")}
    done = subprocess.run(["node", "--input-type=module", "-e", script], cwd=pkg,
                          capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise HarnessError(f"listing tests failed:\n{done.stderr[-2000:]}")
    rows = (json.loads(line) for line in done.stdout.splitlines() if line.strip())
    return {r["id"]: Case(r["id"], r["kind"], r["name"], r["suite"], tuple(r["depends_on"]), r["timing"])
            for r in rows}


# ---- processes ----

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    """Stop a process we started in its own session, and anything it spawned, by its group id."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(STOP_TIMEOUT)
        except ProcessLookupError:
            pass


@contextmanager
def _service(name: str, cmd: list[str], port: int, log: Path, **popen: object) -> Iterator[int]:
    """Run ``cmd`` until the context exits; yield ``port`` once it accepts connections."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, **popen)  # type: ignore[call-overload]
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if proc.poll() is not None:
                raise HarnessError(f"{name} exited with {proc.returncode}:\n{log.read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise HarnessError(f"{name} did not accept on port {port}") from None
                time.sleep(0.05)
        yield port
        if proc.poll() is not None:  # died under load: the results are about a dead port, not the cache
            raise HarnessError(f"{name} exited with {proc.returncode} during the run:\n"
                               f"{log.read_text(errors='replace')[-3000:]}")
    finally:
        _stop(proc)


def origin(pkg: Path, workdir: Path) -> AbstractContextManager[int]:
    port = free_port()
    env = {**os.environ, "npm_config_protocol": "http", "npm_config_port": str(port),
           "npm_config_pidfile": str(workdir / "origin.pid")}
    script = ORIGIN_JS % {"server": _js_url(pkg / "server" / "server.mjs")}
    cmd = ["node", "--no-warnings", "--input-type=module", "-e", script]
    return _service("origin", cmd, port, workdir / "origin.log", cwd=pkg, env=env)


def proxy(proxy_cmd: str, parser: str, origin_port: int, workdir: Path, workers: int = 1
          ) -> AbstractContextManager[int]:
    port = free_port()
    config = workdir / "edgeproxy.toml"
    config.write_text(PROXY_TOML % {"port": port, "parser": parser, "origin_port": origin_port,
                                    "control": workdir / "control.sock", "workers": workers,
                                    "cache": workdir / "cache"})
    words = {"python": sys.executable, "config": str(config), "port": str(port),
             "origin": f"http://127.0.0.1:{origin_port}"}
    cmd = [arg.format(**words) for arg in shlex.split(proxy_cmd)]
    path = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    return _service("proxy", cmd, port, workdir / "proxy.log", cwd=REPO_ROOT, env=env)


@contextmanager
def target(pkg: Path, proxy_cmd: str | None, parser: str = "h11", workers: int = 1) -> Iterator[str]:
    """Start the origin and, unless ``proxy_cmd`` is None, the proxy (with ``workers`` > 1: one shared cache); yield
    the base URL to test."""
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cache-tests-")))
        port = stack.enter_context(origin(pkg, workdir))
        if proxy_cmd is not None:
            port = stack.enter_context(proxy(proxy_cmd, parser, port, workdir, workers))
        try:
            yield f"http://127.0.0.1:{port}"
        except HarnessError as e:
            logs = (f"--- {log.name} ---\n{log.read_text(errors='replace')[-3000:]}"
                    for log in sorted(workdir.glob("*.log")))
            raise HarnessError("\n".join([str(e), *logs])) from e


# ---- the client ----

def _pump(stream: Iterator[str], lines: queue.Queue[str | None]) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)  # end of output


def _client_lines(pkg: Path, base: str, test_id: str, timeout: float,
                  done: Callable[[list[str]], bool]) -> list[str]:
    """Run cli.mjs and collect its stdout lines until ``done(lines)`` or it exits; then stop it."""
    env = {**os.environ, "npm_config_base": base, "npm_config_id": test_id,
           "npm_package_config_id": test_id}
    proc = subprocess.Popen(["node", "--no-warnings", "cli.mjs"], cwd=pkg, env=env, text=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    lines: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True).start()
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    try:
        while not done(seen):
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                tail = "\n".join(seen[-20:])
                raise HarnessError(f"client gave no complete answer within {timeout:.0f} s:\n{tail}") from None
            if line is None:
                break
            seen.append(ANSI_RE.sub("", line.rstrip("\n")))
    finally:
        _stop(proc)
    return seen


def _json_complete(lines: list[str]) -> bool:
    # cli.mjs prints JSON.stringify(results, null, 2): the object's last line is a bare "}".
    return bool(lines) and lines[-1] == "}" and "{" in lines


def describe(result: object) -> Result:
    """The client's ``true`` or ``[name, message]`` as True or a stable string (no uuids or dates)."""
    if result is True:
        return True
    text = f"{result[0]}: {result[1]}" if isinstance(result, list) and len(result) == 2 else repr(result)
    text = PORT_RE.sub("127.0.0.1:<port>", UUID_RE.sub("<uuid>", text))
    return DATE_RE.sub("<date>", text)


def run_client(pkg: Path, base: str, timeout: float = RUN_TIMEOUT) -> dict[str, Result]:
    """Run every test once against ``base``: test id -> True or failure description."""
    lines = _client_lines(pkg, base, "", timeout, _json_complete)
    if not _json_complete(lines):
        raise HarnessError("client exited without printing its results:\n" + "\n".join(lines[-20:]))
    raw = json.loads("\n".join(lines[lines.index("{"):]))
    return {test_id: describe(result) for test_id, result in raw.items()}


def _verdict_printed(lines: list[str]) -> bool:
    # Run by id, cli.mjs prints "==== Results" and then one line: "<symbol> - <failure or nothing>".
    return len(lines) >= 2 and lines[-2] == "==== Results"


def run_one(pkg: Path, base: str, test_id: str, timeout: float = RERUN_TIMEOUT) -> bool:
    """Run a single test by id; True if it passed."""
    lines = _client_lines(pkg, base, test_id, timeout, _verdict_printed)
    if not _verdict_printed(lines):
        raise HarnessError(f"no verdict for {test_id}:\n" + "\n".join(lines[-20:]))
    return lines[-1].split(" - ", 1)[0].strip() in PASS_SYMBOLS


# ---- tally and comparison ----

def score(results: dict[str, Result], tests: dict[str, Case]) -> Score:
    by_kind = {kind: [0, 0] for kind in KINDS}
    for test in tests.values():
        by_kind[test.kind][1] += 1
        by_kind[test.kind][0] += results.get(test.id) is True
    dependency_failed = sum(any(results.get(d) is not True for d in t.depends_on) for t in tests.values())
    passed = sum(p for p, _ in by_kind.values())
    return Score(passed, len(tests), {k: (p, t) for k, (p, t) in by_kind.items()}, dependency_failed)


def compare(expected: dict[str, Result], actual: dict[str, Result], tests: dict[str, Case],
            rerun: Callable[[str], bool]) -> Comparison:
    """Regressions are tests expected to pass that fail; a failing timing test is rerun by id first and is flaky, not
    a regression, only if it passes two runs of three."""
    failing = {i: actual.get(i, "missing from the client's results") for i, want in expected.items()
               if want is True and actual.get(i) is not True}
    timing = [i for i in failing if i in tests and tests[i].timing][:MAX_RERUNS]
    flaky = [i for i in timing if _passes_reruns(functools.partial(rerun, i))]
    regressions = {i: r for i, r in failing.items() if i not in flaky}
    improvements = sorted(i for i, r in actual.items() if r is True and expected.get(i) is not True)
    return Comparison(regressions, improvements, flaky)


def _passes_reruns(rerun: Callable[[], bool]) -> bool:
    """The first run failed: rerun until ``PASSES_NEEDED`` of ``RUNS`` passed, or that can no longer happen."""
    passes, failures = 0, 1
    while passes < PASSES_NEEDED and failures <= RUNS - PASSES_NEEDED:
        if rerun():
            passes += 1
        else:
            failures += 1
    return passes >= PASSES_NEEDED


def settled(results: dict[str, Result], outcome: Comparison) -> dict[str, Result]:
    """The results with the flaky tests counted as passed (they passed two runs of three)."""
    return {**results, **dict.fromkeys(outcome.flaky, True)}


def below_floor(result: Score) -> str | None:
    """Why ``result`` is below the floor, or None."""
    required = result.by_kind["required"][0]
    if result.passed >= FLOOR_PASSED and required >= FLOOR_REQUIRED:
        return None
    return (f"passed {result.passed} (floor {FLOOR_PASSED}), required {required} (floor {FLOOR_REQUIRED}): "
            f"below the floor in tests/cachetests/runner.py")


def load_expected(path: Path = EXPECTED_PATH) -> dict[str, Result]:
    return json.loads(path.read_text())["results"]


def save_expected(results: dict[str, Result], tests: dict[str, Case], parser: str,
                  path: Path = EXPECTED_PATH) -> str | None:
    """Write the expectations from ``results``; refuse (return why, write nothing) below the floor."""
    result = score(results, tests)
    if (refused := below_floor(result)) is not None:
        return refused
    data = {"suite": f"{PACKAGE}@{VERSION}", "parser": parser, "score": str(result),
            "results": dict(sorted(results.items()))}
    path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    return None


# ---- command line ----

def _arguments(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m tests.cachetests.runner", description=__doc__.split("\n")[0])
    how = ap.add_mutually_exclusive_group()
    how.add_argument("--proxy-cmd", default=DEFAULT_PROXY_CMD,
                     help="proxy command; {python} {config} {port} {origin} are filled in (default: %(default)s)")
    how.add_argument("--direct", action="store_true", help="no proxy: point the client at the origin")
    ap.add_argument("--parser", choices=PARSERS, default="h11", help="[server] parser in the proxy config")
    ap.add_argument("--workers", type=int, default=1, help="[server] workers in the proxy config (> 1: a shared cache)")
    ap.add_argument("--id", help="run one test by id and show its exchanges")
    ap.add_argument("--expected", type=Path, default=EXPECTED_PATH, help="expectations file (default: %(default)s)")
    ap.add_argument("--update", action="store_true", help="rewrite the expectations from this run")
    ap.add_argument("--failures", action="store_true", help="list every failing test with its reason")
    return ap.parse_args(argv)


def _describe_target(proxy_cmd: str | None, parser: str, workers: int = 1) -> str:
    if proxy_cmd is None:
        return "no proxy (straight to the origin)"
    shape = parser if workers == 1 else f"{parser}, {workers} workers"
    return f"edgeproxy ({shape})" if proxy_cmd == DEFAULT_PROXY_CMD else repr(proxy_cmd)


def _run_single(pkg: Path, proxy_cmd: str | None, parser: str, test_id: str, workers: int = 1) -> int:
    with target(pkg, proxy_cmd, parser, workers) as base:
        lines = _client_lines(pkg, base, test_id, RERUN_TIMEOUT, _verdict_printed)
    print("\n".join(lines))
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(_arguments(argv))
    except HarnessError as e:
        print(f"cache-tests could not run: {e}", file=sys.stderr)
        return 2


def _main(args: argparse.Namespace) -> int:
    pkg = install()
    proxy_cmd = None if args.direct else args.proxy_cmd
    if args.id:
        return _run_single(pkg, proxy_cmd, args.parser, args.id, args.workers)
    tests = list_tests(pkg)
    with target(pkg, proxy_cmd, args.parser, args.workers) as base:
        results = run_client(pkg, base)
        print(f"{PACKAGE}@{VERSION} via {_describe_target(proxy_cmd, args.parser, args.workers)}: "
              f"{score(results, tests)}")
        if args.failures:
            for test_id, result in sorted(results.items()):
                if result is not True:
                    print(f"  {tests[test_id].kind:8} {test_id}: {result}")
        if args.update:
            return _update(results, tests, args.parser, args.expected)
        if args.direct or not args.expected.is_file():
            return 0
        outcome = compare(load_expected(args.expected), results, tests, lambda i: run_one(pkg, base, i))
    for test_id in outcome.flaky:
        print(f"flaky (failed, then passed two reruns): {test_id}")
    for test_id in outcome.improvements:
        print(f"improved: {test_id}")
    for test_id, result in outcome.regressions.items():
        print(f"REGRESSION: {test_id}: {result}")
    low = below_floor(score(settled(results, outcome), tests)) if args.proxy_cmd == DEFAULT_PROXY_CMD else None
    if low:
        print(f"BELOW THE FLOOR: {low}")
    return 1 if outcome.regressions or low else 0


def _update(results: dict[str, Result], tests: dict[str, Case], parser: str, path: Path) -> int:
    refused = save_expected(results, tests, parser, path)
    if refused is not None:
        print(f"not writing {path}: {refused}", file=sys.stderr)
        return 1
    print(f"wrote {path}")
    result = score(results, tests)
    if result.passed > FLOOR_PASSED or result.by_kind["required"][0] > FLOOR_REQUIRED:
        print(f"the score is above the floor: raise FLOOR_PASSED / FLOOR_REQUIRED in {Path(__file__).name} with it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
