"""Under CI (``CI=true``) a test that does not run is a failure, unless the allow-list below names it.

Owns: the allow-list and the pytest hooks that enforce it (loaded by ``tests/conftest.py``).
Rules it keeps:
- Outside CI nothing changes: a developer's machine may lack chromium, nginx or root, and the skip says why
  (``scripts/test`` runs pytest with ``-ra``, which lists skips but passes).
- Under CI every dependency is there (``scripts/test`` installs the Debian packages, the npm suite and the test
  extras, and builds the compiled head scanner; CI runs as root), so a skip means a check quietly did not run.
  A skipped test (a ``skipif`` mark, ``pytest.skip`` in a fixture or the test) and an xfail (xfailed, or a
  non-strict xpass) become failures whose message names the test and its reason; a skipped module fails the
  session (a collection skip has no test to turn into a failure) and is listed at the end.
- The allow-list is short and every entry says why CI may skip it. Keys are node ids or ``fnmatch`` patterns
  (``tests/unit/test_x.py::test_y[*]``). Adding an entry is a reviewed change, like lowering a floor.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Generator

import pytest

# node id or pattern -> why CI may skip it. Empty: CI has everything every test needs.
ALLOWED: dict[str, str] = {
}


def in_ci() -> bool:
    return os.environ.get("CI") == "true"


def allowed(nodeid: str) -> bool:
    return any(fnmatch.fnmatchcase(nodeid, pattern) for pattern in ALLOWED)


def _reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    if hasattr(report, "wasxfail"):
        return f"xfail: {report.wasxfail or 'no reason given'}"
    if isinstance(report.longrepr, tuple):  # (path, line, "Skipped: reason")
        path, line, message = report.longrepr
        return f"{message} ({path}:{line})"
    return str(report.longrepr)


def _message(nodeid: str, reason: str) -> str:
    return (f"{nodeid} did not run under CI=true: {reason}. CI has every dependency, so this is a failure; "
            f"fix what made it skip, or add it with the reason to ALLOWED in tests/skipguard.py")


_unrun: list[str] = []  # messages for the end of the session


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    unrun = report.skipped or hasattr(report, "wasxfail")  # skipped, xfailed, or xpassed (non-strict)
    if not unrun or not in_ci() or allowed(report.nodeid):
        return report
    message = _message(report.nodeid, _reason(report))
    _unrun.append(message)
    report.outcome = "failed"
    report.longrepr = message
    if hasattr(report, "wasxfail"):
        del report.wasxfail
    return report


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if report.skipped and in_ci() and not allowed(report.nodeid):
        _unrun.append(_message(report.nodeid, _reason(report)))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _unrun and exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _unrun:
        terminalreporter.section("tests that did not run under CI=true", sep="=", red=True, bold=True)
        for message in _unrun:
            terminalreporter.line(message, red=True)
