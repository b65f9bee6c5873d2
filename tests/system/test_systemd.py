"""The shipped unit under a real systemd: Debian 12's systemd 252 as PID 1 in a systemd-nspawn container.

Category: ops. ``systemd-analyze verify`` and ``security`` (tests/unit/test_service_unit.py) read the unit but
can't run it; this boots the root that ``scripts/nspawn-root`` built, installs with ``scripts/install-service``
as the README's deployment section says (from a wheelhouse, since pip inside has no index), and checks what
an operator relies on: start only after READY=1, a miss then a hit, ``systemctl reload`` that waits for the new
config and keeps the cache, the CLI for members of group edgeproxy only, metrics, the access log, errors in the
journal, the watchdog, and a stop that drains. The tests share one container and run in file order; the last
one stops the service.

Skipped, with the reason, only where the container can't be had (not root, no systemd-nspawn, no root built);
under CI (``CI=true``) the same reasons fail instead, since CI's machine can boot one.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.system.nspawn import Container, ContainerError, missing_tools

REPO = Path(__file__).resolve().parents[2]
ROOT = Path(os.environ.get("EDGEPROXY_NSPAWN_ROOT", "/var/cache/edgeproxy-tests/nspawn-bookworm"))
SRC = "/usr/local/src/edgeproxy"
WHEELS = "/var/cache/edgeproxy-wheels"
VENV_BIN = "/opt/edgeproxy/venv/bin"
CONFIG = "/etc/edgeproxy/edgeproxy.toml"
RELOADS = 20

pytestmark = pytest.mark.slow


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI can boot a container: this must not be skipped there)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The checkout and its dependencies as wheels: what ``install-service --wheelhouse`` takes offline."""
    out = tmp_path_factory.mktemp("wheels")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check",
                           "--wheel-dir", str(out), f"{REPO}[fast,fleet]"], capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        _unavailable(f"pip wheel of the checkout failed: {proc.stderr[-2000:]}")
    return out


@pytest.fixture(scope="module")
def box(wheelhouse: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Container]:
    if os.geteuid() != 0:
        _unavailable("booting a container needs root")
    if missing_tools():
        _unavailable(f"not installed: {', '.join(missing_tools())} (scripts/test installs systemd-container)")
    if not (ROOT / ".edgeproxy-root").exists():
        _unavailable(f"no container root at {ROOT} (scripts/nspawn-root builds it; scripts/test runs it)")
    console = tmp_path_factory.mktemp("nspawn") / "console.log"
    container = Container(ROOT, f"edgeproxy-test-{os.getpid()}", [(REPO, SRC), (wheelhouse, WHEELS)], console)
    try:
        container.boot()
    except ContainerError as exc:
        container.halt()
        _unavailable(str(exc))
    try:
        yield container
    finally:
        container.halt()


@pytest.fixture(scope="module")
def installed(box: Container) -> str:
    """Install exactly as the README says, start the demo origin the example config points at, add two users."""
    out = box.run(f"cd {SRC} && scripts/install-service --wheelhouse {WHEELS}", timeout=300).stdout
    box.run(f"systemd-run --unit=demo-origin {VENV_BIN}/edgeproxy demo-origin --listen 127.0.0.1:9000")
    box.run("for i in $(seq 100); do curl -s -o /dev/null http://127.0.0.1:9000/ && exit 0; sleep 0.1; done; exit 1")
    box.run("useradd -m -G edgeproxy ops && useradd -m outsider")  # an operator in the group, and someone else
    return out


def show(box: Container, *props: str) -> dict[str, str]:
    out = box.run(f"systemctl show edgeproxy -p {','.join(props)}").stdout
    return dict(line.split("=", 1) for line in out.splitlines())


def head(box: Container, path: str, *curl_args: str) -> dict[str, str]:
    """GET through the edge on port 80; the status and header fields (lowercase names) of the answer."""
    out = box.run(f"curl -sS -o /dev/null -D - {' '.join(curl_args)} http://127.0.0.1{path}").stdout
    lines = out.replace("\r", "").strip().splitlines()
    fields = {"status": lines[0].split()[1]}
    fields.update((k.lower(), v.strip()) for k, v in (line.split(":", 1) for line in lines[1:]))
    return fields


def set_name(name: str) -> str:
    """A shell command that makes ``[server] name`` (the Cache-Status name, reloadable) ``name``."""
    return f"sed -i 's/^name = .*//; s/^\\[server\\]$/[server]\\nname = \"{name}\"/' {CONFIG}"


def journal(box: Container) -> list[str]:
    return box.run("journalctl -u edgeproxy -o cat --no-pager").stdout.splitlines()


def test_install_service_enables_a_unit_that_is_active_only_after_ready(box: Container, installed: str) -> None:
    assert "+ systemctl enable --now edgeproxy" in installed
    assert box.run("systemctl is-enabled edgeproxy").stdout.strip() == "enabled"
    props = show(box, "ActiveState", "SubState", "Type", "StatusText", "NRestarts", "Result", "User")
    assert props["ActiveState"] == "active" and props["SubState"] == "running", props
    assert props["Type"] == "notify" and props["NRestarts"] == "0" and props["User"] == "edgeproxy"
    # STATUS= rides on the READY=1 datagram: systemd has it, so it heard READY=1.
    assert props["StatusText"].startswith("serving on http://0.0.0.0:80"), props
    # systemd said "Started" only after the process listened (its log line), never before.
    lines = journal(box)
    listening = max(i for i, line in enumerate(lines) if "edgeproxy: edgeproxy serving on" in line)
    started = max(i for i, line in enumerate(lines) if line.startswith("Started edgeproxy.service"))
    assert listening < started, lines
    # And `systemctl restart` returns once the port answers: the first request after it needs no retry.
    box.run("systemctl restart edgeproxy && curl -sS -o /dev/null --fail http://127.0.0.1/")
    # The control socket, and the shared cache ([cache] shared = true in the shipped config), kept across restarts.
    assert box.run("ls /run/edgeproxy").stdout.split() == ["cache", "control.sock"]


def test_a_miss_then_a_hit_through_the_service(box: Container, installed: str) -> None:
    first, second = head(box, "/bytes/1024"), head(box, "/bytes/1024")
    assert first["status"] == second["status"] == "200"
    assert "fwd=uri-miss" in first["cache-status"] and "; stored" in first["cache-status"]
    assert second["cache-status"].startswith("edgeproxy; hit"), second


def test_reload_waits_for_the_new_config_and_keeps_the_cache(box: Container, installed: str) -> None:
    head(box, "/bytes/2048")
    for n in range(RELOADS):  # each reload must be live when `systemctl reload` returns, not some time after
        box.run(f"{set_name(f'edge-{n}')} && systemctl reload edgeproxy")
        status = head(box, "/bytes/2048")["cache-status"]
        assert status.startswith(f"edge-{n}; hit"), (n, status)
    assert show(box, "NRestarts")["NRestarts"] == "0"


def test_a_bad_config_fails_the_reload_and_changes_nothing(box: Container, installed: str) -> None:
    box.run(f"cp {CONFIG} /root/good.toml && sed -i 's/^size = /sise = /' {CONFIG}")
    try:
        refused = box.run("systemctl reload edgeproxy", check=False)
        assert refused.returncode != 0
        assert f"edgeproxy: reload: reload failed: {CONFIG}: cache.sise: unknown key" in refused.stderr + "".join(
            journal(box)), refused
        assert any(f"reload refused, old config kept: {CONFIG}: cache.sise: unknown key" in line
                   for line in journal(box))
        assert show(box, "ActiveState")["ActiveState"] == "active"
        assert head(box, "/bytes/2048")["cache-status"].startswith(f"edge-{RELOADS - 1}; hit")
    finally:
        box.run(f"cp /root/good.toml {CONFIG} && systemctl reload edgeproxy")


def test_the_cli_serves_members_of_group_edgeproxy_only(box: Container, installed: str) -> None:
    head(box, "/bytes/4096")
    stats = box.run(f"{VENV_BIN}/edgeproxy stats --json", user="ops").stdout
    assert '"entries"' in stats
    purged = box.run(f"{VENV_BIN}/edgeproxy purge http://127.0.0.1/bytes/4096", user="ops").stdout
    assert purged.startswith("purged 1 entr"), purged
    assert "fwd=uri-miss" in head(box, "/bytes/4096")["cache-status"]
    refused = box.run(f"{VENV_BIN}/edgeproxy stats", user="outsider", check=False)
    assert refused.returncode == 77, refused  # EX_NOPERM: /run/edgeproxy is 0750 edgeproxy:edgeproxy
    assert "permission denied on control socket /run/edgeproxy/control.sock" in refused.stderr


def test_two_workers_under_the_supervisor(box: Container, installed: str) -> None:
    """workers = 2: the supervisor speaks to systemd, binds, serves the control socket and passes reloads on."""
    box.run(f"sed -i 's/^workers = 1$/workers = 2/' {CONFIG} && systemctl restart edgeproxy")
    try:
        props = show(box, "ActiveState", "StatusText")
        assert props["ActiveState"] == "active" and props["StatusText"].startswith("2 workers serving on"), props
        box.run("for i in 1 2 3 4; do curl -sS -o /dev/null --fail http://127.0.0.1/bytes/512; done")
        for n in range(5):
            box.run(f"{set_name(f'two-{n}')} && systemctl reload edgeproxy")
            assert head(box, "/bytes/512")["cache-status"].startswith(f"two-{n}; "), n
        stats = box.run(f"{VENV_BIN}/edgeproxy ping", user="ops").stdout
        assert stats.startswith("pong from pid " + show(box, "MainPID")["MainPID"])
        # One store for both, in /run/edgeproxy/cache, which RuntimeDirectoryPreserve=restart keeps: still a hit.
        box.run("systemctl restart edgeproxy")
        assert "; hit;" in head(box, "/bytes/512")["cache-status"]
        assert "kept" in box.run("journalctl -u edgeproxy -n 30 --no-pager").stdout
        assert box.run("stat -c %U:%G /run/edgeproxy/cache/lmdb/data.mdb").stdout.strip() == "edgeproxy:edgeproxy"
    finally:
        box.run(f"sed -i 's/^workers = 2$/workers = 1/' {CONFIG} && systemctl restart edgeproxy")


def test_metrics_access_log_and_errors_in_the_journal(box: Container, installed: str) -> None:
    head(box, "/bytes/1024")
    metrics = box.run("curl -sS --fail http://127.0.0.1:9145/metrics").stdout
    assert 'edgeproxy_requests_total{cache="hit"}' in metrics
    log = box.run("stat -c '%U:%G %a' /var/log/edgeproxy/access.log && cat /var/log/edgeproxy/access.log").stdout
    owner, _, lines = log.partition("\n")
    assert owner == "edgeproxy:edgeproxy 640"
    assert '"GET /bytes/1024 HTTP/1.1" 200' in lines and "cache=hit" in lines
    lines = journal(box)
    assert not any("Traceback" in line for line in lines), "\n".join(lines)


def test_the_watchdog_restarts_a_frozen_process(box: Container, installed: str) -> None:
    """SIGSTOP wedges the loop; WatchdogSec= is shortened by a drop-in so the test takes seconds, not 30."""
    dropin = "/run/systemd/system/edgeproxy.service.d"
    box.run(f"mkdir -p {dropin} && printf '[Service]\\nWatchdogSec=3\\n' > {dropin}/watchdog.conf && "
            "systemctl daemon-reload && systemctl restart edgeproxy")
    try:
        before = show(box, "MainPID", "NRestarts")
        box.run(f"kill -STOP {before['MainPID']}")
        box.run("for i in $(seq 200); do "
                "[ \"$(systemctl show edgeproxy -p NRestarts --value)\" != " + before["NRestarts"] + " ] && "
                "[ \"$(systemctl is-active edgeproxy)\" = active ] && exit 0; sleep 0.1; done; exit 1", timeout=60)
        after = show(box, "MainPID", "NRestarts", "ActiveState")
        assert after["MainPID"] != before["MainPID"] and int(after["NRestarts"]) == int(before["NRestarts"]) + 1
        assert any("Watchdog timeout" in line for line in journal(box))
        assert head(box, "/bytes/1024")["status"] == "200"
    finally:
        box.run(f"rm -rf {dropin} && systemctl daemon-reload && systemctl restart edgeproxy")


RESTART_LOOP = """
for i in $(seq {n}); do curl -s -o /dev/null -w '%{{http_code}}\\n' --max-time 10 http://127.0.0.1/bytes/256; done \\
    > /root/codes &
for r in 1 2 3; do sleep 0.3; systemctl restart edgeproxy; done
wait
"""


def test_socket_activation_restarts_refuse_no_connection(box: Container, installed: str) -> None:
    out = box.run(f"cd {SRC} && scripts/install-service --wheelhouse {WHEELS} --socket", timeout=300).stdout
    assert "+ systemctl enable --now edgeproxy.socket" in out
    assert box.run("systemctl is-active edgeproxy.socket edgeproxy").stdout.split() == ["active", "active"]
    # systemd holds the port: a connection while the service is stopped is queued and starts it.
    box.run("systemctl stop edgeproxy")
    assert head(box, "/bytes/256")["status"] == "200"
    assert box.run("systemctl is-active edgeproxy").stdout.strip() == "active"
    # Three restarts under a stream of new connections: every one answered.
    box.run(RESTART_LOOP.format(n=300), timeout=120)
    codes = box.run("sort /root/codes | uniq -c").stdout.split()
    assert codes == ["300", "200"], codes


def test_stop_drains_an_in_flight_request_and_succeeds(box: Container, installed: str) -> None:
    box.run("curl -sS -o /root/slow.out -w '%{http_code}' http://127.0.0.1/slow?ms=3000 > /root/slow.code 2>&1 &"
            " sleep 1; systemctl stop edgeproxy; wait")
    assert box.run("cat /root/slow.code").stdout == "200"
    assert box.run("cat /root/slow.out").stdout == "slow answer after 3000 ms\n"
    props = show(box, "ActiveState", "Result", "ExecMainStatus")
    assert props == {"ActiveState": "inactive", "Result": "success", "ExecMainStatus": "0"}, props
    assert any(line.startswith("stopping: draining") or " stopping: draining" in line for line in journal(box))
