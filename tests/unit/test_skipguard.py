"""tests/skipguard.py: under CI=true a test that does not run fails the run, unless the allow-list names it.

Category: ops. Each case runs a real pytest in a subprocess on a small generated suite whose conftest loads the
guard (and allows one test by name), with and without CI=true, and reads its exit code and output.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT

CONFTEST = """
pytest_plugins = ("tests.skipguard",)


def pytest_configure(config):
    from tests import skipguard

    skipguard.ALLOWED["test_suite.py::test_allowed*"] = "the allow-list's own test"
"""
SUITE = {
    "passes": "def test_passes():\n    pass\n",
    "skipif": "import pytest\n\n@pytest.mark.skipif(True, reason='no frobnicator here')\ndef test_x():\n    pass\n",
    "skip in the body": "import pytest\n\ndef test_x():\n    pytest.skip('no frobnicator here')\n",
    "skip in a fixture": ("import pytest\n\n@pytest.fixture\ndef tool():\n    pytest.skip('no frobnicator here')\n\n"
                          "def test_x(tool):\n    pass\n"),
    "module skip": "import pytest\n\npytest.skip('no frobnicator here', allow_module_level=True)\n\n"
                   "def test_x():\n    pass\n",
    "importorskip": "import pytest\n\npytest.importorskip('no_frobnicator_here')\n\ndef test_x():\n    pass\n",
    "xfail": "import pytest\n\n@pytest.mark.xfail(reason='no frobnicator here')\ndef test_x():\n    assert False\n",
    "xpass": "import pytest\n\n@pytest.mark.xfail(reason='no frobnicator here')\ndef test_x():\n    pass\n",
    "allowed": ("import pytest\n\n@pytest.mark.parametrize('n', [1, 2])\n"
                "def test_allowed(n):\n    pytest.skip('no frobnicator here')\n"),
}


def run_suite(tmp_path: Path, body: str, ci: bool) -> subprocess.CompletedProcess[str]:
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_suite.py").write_text(body)
    (tmp_path / "test_other.py").write_text(SUITE["passes"])  # so that a skipped module leaves tests to run
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PYTHONPATH"] = str(ROOT)
    if ci:
        env["CI"] = "true"
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-ra", "."],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("case", [c for c in SUITE if c not in ("passes", "allowed")])
def test_outside_ci_a_test_that_does_not_run_passes(tmp_path: Path, case: str) -> None:
    assert run_suite(tmp_path, SUITE[case], ci=False).returncode == 0


@pytest.mark.parametrize("case", [c for c in SUITE if c not in ("passes", "allowed")])
def test_under_ci_a_test_that_does_not_run_fails_naming_it_and_why(tmp_path: Path, case: str) -> None:
    done = run_suite(tmp_path, SUITE[case], ci=True)
    assert done.returncode == 1, done.stdout
    assert "did not run under CI=true" in done.stdout
    named = "test_suite.py" if case in ("module skip", "importorskip") else "test_suite.py::test_x"
    assert f"{named} did not run under CI=true" in done.stdout
    assert ("no_frobnicator_here" if case == "importorskip" else "no frobnicator here") in done.stdout


@pytest.mark.parametrize("case", ["passes", "allowed"])
def test_under_ci_a_passing_or_allowed_test_passes(tmp_path: Path, case: str) -> None:
    done = run_suite(tmp_path, SUITE[case], ci=True)
    assert done.returncode == 0, done.stdout
    assert "did not run under CI=true" not in done.stdout


def test_the_allow_list_is_short_and_says_why() -> None:
    from tests import skipguard

    assert len(skipguard.ALLOWED) <= 5
    assert all(why.strip() for why in skipguard.ALLOWED.values())
