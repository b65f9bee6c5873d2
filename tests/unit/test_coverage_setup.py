""".coveragerc: what scripts/test measures. A process the tests start counts, wherever it starts.

Category: ops. A real ``coverage run`` with the repository's .coveragerc runs a script that starts
``python -m edgeproxy --help`` in another directory; after ``coverage combine`` the CLI module, which only that
subprocess imported, has measured lines and branches.
"""

from __future__ import annotations

import configparser
import json
import os
import subprocess
import sys
from pathlib import Path

from tests.support import ROOT

CHILD = """
import subprocess, sys
subprocess.run([sys.executable, "-m", "edgeproxy", "--help"], cwd=sys.argv[1], check=True, capture_output=True)
assert "edgeproxy.cli" not in sys.modules
"""


def coverage(args: list[str], cwd: Path, data: Path) -> subprocess.CompletedProcess[str]:
    # The run under test is its own: none of scripts/test's own coverage settings leak into it.
    env = {k: v for k, v in os.environ.items() if not k.startswith("COVERAGE_")}
    env.update(COVERAGE_FILE=str(data), PYTHONPATH=str(ROOT))
    command, *rest = args
    done = subprocess.run([sys.executable, "-m", "coverage", command, f"--rcfile={ROOT / '.coveragerc'}", *rest],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done


def test_a_subprocess_in_another_directory_is_measured(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    script = tmp_path / "parent.py"
    script.write_text(CHILD)
    data = tmp_path / "data" / ".coverage"
    data.parent.mkdir()
    coverage(["run", str(script), str(elsewhere)], tmp_path, data)
    coverage(["combine", "-q"], tmp_path, data)
    report = coverage(["json", "-q", "--fail-under=0", "-o", "-"], ROOT, data)
    files = json.loads(report.stdout)["files"]
    cli = files["edgeproxy/cli.py"]
    assert cli["executed_lines"] and cli["executed_branches"], cli["summary"]
    assert not list(elsewhere.iterdir())  # its data went next to COVERAGE_FILE, to be combined


def test_the_floor_is_set() -> None:
    rc = configparser.ConfigParser()
    rc.read(ROOT / ".coveragerc")
    assert rc.getboolean("run", "branch") and rc.getboolean("run", "parallel")
    assert rc.getfloat("report", "fail_under") >= 80
