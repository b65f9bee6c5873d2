"""The control socket over real UNIX sockets: server in a background event loop, blocking client and CLI.

Categories: basic (every command round-trips, pipelining), faults (malformed, oversized, idle, handler errors),
ops (stale/live socket, mode and group, default path, peer credentials as ``nobody``, CLI exit codes).
Everything is bounded by short timeouts; nothing leaves the temporary directory.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvloop

from edgeproxy.cache.purge import PurgeAll, PurgeHost, PurgePrefix, PurgeRegex, PurgeTag, PurgeURL
from edgeproxy.control import cli, server
from edgeproxy.control.client import ControlClient, ControlUnavailable, server_trusted
from edgeproxy.control.protocol import PingCommand, PurgeCommand, ReloadCommand, StatsCommand
from edgeproxy.control.server import ControlServer, ControlSocketError, ControlSocketInUse

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 5.0
LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}
STATS = {
    "store": {"entries": 12, "bytes": 3 * 1024 * 1024, "capacity": 1 << 30, "not_stored": {"no-store": 2}},
    "requests": {"hits": 75, "misses": 25},
    "uptime": 12.5,
}


class Recorder:
    """A handler that records every command and answers like the proxy would."""

    def __init__(self) -> None:
        self.commands: list[Any] = []
        self.fail_reload = False
        self.reload_reply: dict[str, Any] = {}

    async def __call__(self, command: Any) -> dict[str, Any]:
        self.commands.append(command)
        match command:
            case PurgeCommand():
                return {"purged": 2}
            case StatsCommand():
                return STATS
            case ReloadCommand() if self.fail_reload:
                raise RuntimeError("config.toml: cache.size: not a size")
            case ReloadCommand():
                return self.reload_reply
        return {}


class Serving:
    """A ControlServer running on its own event loop in a thread, so blocking clients can talk to it."""

    def __init__(self, path: str, handler: Any, loop: str = "asyncio", **options: Any) -> None:
        self.loop = LOOPS[loop]()
        self.server = ControlServer(path, handler, **options)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> ControlServer:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(TIMEOUT)
        return self.server

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            self.server.close()
            await self.server.wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(TIMEOUT)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(TIMEOUT)
        self.loop.close()


@pytest.fixture
def sock_path(tmp_path: Path) -> str:
    return str(tmp_path / "run" / "control.sock")


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


def raw_exchange(path: str, payload: bytes, replies: int) -> list[dict[str, Any]]:
    """Send raw bytes on one connection and read ``replies`` reply lines."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(TIMEOUT)
        s.connect(path)
        s.sendall(payload)
        return [json.loads(line) for line in _read_lines(s, replies)]


def _read_lines(s: socket.socket, count: int) -> list[bytes]:
    buf = b""
    while buf.count(b"\n") < count:
        data = s.recv(65536)
        if not data:
            break
        buf += data
    return buf.splitlines()


# --- basic -----------------------------------------------------------------------------------------------

PURGES = [
    ({"kind": "url", "url": "https://cdn.example.com/a.png"}, PurgeURL("https://cdn.example.com/a.png")),
    ({"kind": "prefix", "prefix": "/p/", "host": "cdn.example.com"}, PurgePrefix("/p/", "cdn.example.com")),
    ({"kind": "host", "host": "cdn.example.com"}, PurgeHost("cdn.example.com")),
    ({"kind": "tag", "tags": ["a", "b"]}, PurgeTag(("a", "b"))),
    ({"kind": "regex", "pattern": "png$"}, PurgeRegex("png$")),
    ({"kind": "all"}, PurgeAll()),
]


@pytest.mark.parametrize("loop", LOOPS)
def test_every_command_round_trips_on_one_connection(sock_path: str, recorder: Recorder, loop: str) -> None:
    with Serving(sock_path, recorder, loop), ControlClient(sock_path, TIMEOUT) as client:
        assert client.request({"cmd": "ping"}) == {"v": 1, "ok": True, "pong": True, "pid": os.getpid()}
        assert client.request({"cmd": "stats"}) == {"v": 1, "ok": True, **STATS}
        assert client.request({"cmd": "reload"}) == {"v": 1, "ok": True}
        for fields, _ in PURGES:
            reply = client.request({"cmd": "purge", "soft": True, **fields})
            assert reply == {"v": 1, "ok": True, "purged": 2, "kind": fields["kind"], "soft": True}
    purges = [PurgeCommand(selector, soft=True, kind=fields["kind"]) for fields, selector in PURGES]
    assert recorder.commands == [PingCommand(), StatsCommand(), ReloadCommand(), *purges]


@pytest.mark.parametrize("loop", LOOPS)
def test_pipelined_commands_answer_in_order(sock_path: str, recorder: Recorder, loop: str) -> None:
    requests = b"".join(
        json.dumps({"v": 1, "cmd": "purge", "kind": "url", "url": f"https://a.example/{i}"}).encode() + b"\n"
        for i in range(200)
    )
    with Serving(sock_path, recorder, loop):
        replies = raw_exchange(sock_path, requests + b"\n\r\n" + b'{"v":1,"cmd":"ping"}\n', 201)
    assert [r["purged"] for r in replies[:200]] == [2] * 200
    assert replies[200]["pong"] is True  # blank lines were skipped without replies
    assert [c.selector.url for c in recorder.commands[:200]] == [f"https://a.example/{i}" for i in range(200)]


def test_unterminated_last_line_is_answered_at_eof(sock_path: str, recorder: Recorder) -> None:
    with Serving(sock_path, recorder), socket.socket(socket.AF_UNIX) as s:
        s.settimeout(TIMEOUT)
        s.connect(sock_path)
        s.sendall(b'{"v":1,"cmd":"ping"}')
        s.shutdown(socket.SHUT_WR)
        assert json.loads(_read_lines(s, 1)[0])["pong"] is True


# --- faults ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("loop", LOOPS)
def test_bad_lines_get_errors_and_the_connection_keeps_serving(sock_path: str, recorder: Recorder, loop: str) -> None:
    bad = [
        (b"{oops", "malformed JSON"),
        (b'{"v":2,"cmd":"ping"}', "v: unsupported version 2"),
        (b'{"v":1,"cmd":"shutdown"}', 'cmd: unknown command "shutdown"'),
        (b'{"v":1,"cmd":"purge","kind":"url"}', "url: required"),
        (b'{"v":1,"cmd":"purge","kind":"regex","pattern":"("}', "pattern:"),
    ]
    payload = b"".join(raw + b"\n" for raw, _ in bad) + b'{"v":1,"cmd":"ping"}\n'
    with Serving(sock_path, recorder, loop):
        replies = raw_exchange(sock_path, payload, len(bad) + 1)
    for reply, (_, message) in zip(replies, bad, strict=False):
        assert reply["ok"] is False and reply["error"].startswith(message), reply
    assert replies[-1]["pong"] is True
    assert recorder.commands == [PingCommand()]


@pytest.mark.parametrize("loop", LOOPS)
def test_oversized_line_gets_an_error_then_close_and_others_are_served(
    sock_path: str, recorder: Recorder, loop: str
) -> None:
    with Serving(sock_path, recorder, loop, max_line=1024), ControlClient(sock_path, TIMEOUT) as other:
        assert other.request({"cmd": "ping"})["ok"]
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(TIMEOUT)
            s.connect(sock_path)
            s.sendall(b'{"v":1,"cmd":"ping","pad":"' + b"x" * 4096)  # no newline: refused while still buffering
            lines = _read_lines(s, 2)
        assert [json.loads(x) for x in lines] == [{"v": 1, "ok": False, "error": "line too long (limit 1024 bytes)"}]
        assert other.request({"cmd": "ping"})["ok"]  # the same, older connection still works


def test_idle_and_slow_clients_do_not_block_others(sock_path: str, recorder: Recorder) -> None:
    with Serving(sock_path, recorder, idle_timeout=0.3), socket.socket(socket.AF_UNIX) as idle:
        idle.settimeout(TIMEOUT)
        idle.connect(sock_path)
        idle.sendall(b'{"v":1,')  # half a request, then silence
        with ControlClient(sock_path, TIMEOUT) as client:
            assert client.request({"cmd": "ping"})["ok"]
        assert idle.recv(1) == b""  # closed by the idle timeout, well before TIMEOUT


@pytest.mark.parametrize("expected", [(), (RuntimeError,)])
def test_handler_exception_becomes_an_error_reply(
    sock_path: str, recorder: Recorder, caplog: pytest.LogCaptureFixture, expected: tuple[type[Exception], ...]
) -> None:
    recorder.fail_reload = True
    with Serving(sock_path, recorder, expected_errors=expected), ControlClient(sock_path, TIMEOUT) as client:
        assert client.request({"cmd": "reload"}) == {
            "v": 1, "ok": False, "error": "reload failed: config.toml: cache.size: not a size"
        }
        assert client.request({"cmd": "ping"})["ok"]
    # A crash is logged with its traceback; a refusal the handler expects (a bad config) only in the reply.
    crashes = [r for r in caplog.records if r.getMessage() == "control command reload failed"]
    assert [bool(r.exc_info) for r in crashes] == ([] if expected else [True])


# --- ops: the socket file --------------------------------------------------------------------------------


def test_socket_file_mode_group_parent_and_unlink(tmp_path: Path, recorder: Recorder) -> None:
    path = tmp_path / "new" / "dir" / "control.sock"
    with Serving(str(path), recorder, mode=0o600, group=os.getgid()):
        st = path.stat()
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600 and st.st_gid == os.getgid()
        assert stat.S_IMODE(path.parent.stat().st_mode) & 0o755 == 0o755 & ~_umask()
    assert not path.exists()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_stale_socket_is_replaced(sock_path: str, recorder: Recorder) -> None:
    os.makedirs(os.path.dirname(sock_path))
    with socket.socket(socket.AF_UNIX) as crashed:
        crashed.bind(sock_path)  # bound, never listening, not unlinked: what a killed process leaves
    with Serving(sock_path, recorder), ControlClient(sock_path, TIMEOUT) as client:
        assert client.request({"cmd": "ping"})["ok"]


@pytest.mark.parametrize("loop", LOOPS)
def test_live_socket_is_not_stolen(sock_path: str, recorder: Recorder, loop: str) -> None:
    with Serving(sock_path, recorder, loop):
        second = Serving(sock_path, Recorder(), loop)
        second.thread.start()
        with pytest.raises(ControlSocketInUse, match=sock_path):
            asyncio.run_coroutine_threadsafe(second.server.start(), second.loop).result(TIMEOUT)
        second.__exit__()
        with ControlClient(sock_path, TIMEOUT) as client:
            assert client.request({"cmd": "ping"})["ok"]  # the first instance still owns it


def test_close_does_not_unlink_a_successors_socket(sock_path: str, recorder: Recorder) -> None:
    first = Serving(sock_path, recorder)
    first.__enter__()
    os.unlink(sock_path)  # e.g. an operator cleaned up; a new instance then binds the same path
    with socket.socket(socket.AF_UNIX) as successor:
        successor.bind(sock_path)
        first.__exit__()
        assert os.path.exists(sock_path)


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda p: Path(p).write_text("not a socket"), "exists and is not a socket"),
        (lambda p: None, "longer than"),
    ],
)
def test_unusable_paths_are_refused_naming_the_path(tmp_path: Path, setup: Any, message: str) -> None:
    path = str(tmp_path / "control.sock") if message != "longer than" else str(tmp_path / ("x" * 120))
    setup(path)
    with pytest.raises(ControlSocketError, match=message) as info:
        asyncio.run(ControlServer(path, Recorder()).start())
    assert path in str(info.value)


def test_unknown_group_is_refused(sock_path: str) -> None:
    with pytest.raises(ControlSocketError, match="no-such-group-xyz"):
        asyncio.run(ControlServer(sock_path, Recorder(), group="no-such-group-xyz").start())


@pytest.mark.parametrize(
    ("env", "uid", "expected"),
    [
        ({"RUNTIME_DIRECTORY": "/run/edgeproxy"}, 0, "/run/edgeproxy/control.sock"),
        ({"RUNTIME_DIRECTORY": "/run/a:/run/b"}, 1000, "/run/a/control.sock"),
        ({}, 0, "/run/edgeproxy/control.sock"),
        ({"XDG_RUNTIME_DIR": "/run/user/1000"}, 1000, "/run/user/1000/edgeproxy/control.sock"),
        ({}, 1000, "/tmp/edgeproxy-1000/control.sock"),
    ],
)
def test_default_socket_path(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], uid: int, expected: str) -> None:
    for name in ("RUNTIME_DIRECTORY", "XDG_RUNTIME_DIR"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(server.os, "getuid", lambda: uid)
    assert server.default_socket_path() == expected


# --- ops: peer credentials -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uid", "gids", "allowed_uids", "allowed_gids", "allowed"),
    [
        (0, [0], (), (), True),  # root
        (500, [500], (), (), True),  # our own uid (own_uid=500 below)
        (1000, [1000], (), (), False),
        (1000, [1000], (1000,), (), True),
        (1000, [1000, 44], (), (44,), True),  # supplementary group
        (1000, [1000, 44], (), (45,), False),
    ],
)
def test_peer_allowed(uid: int, gids: list[int], allowed_uids: Any, allowed_gids: Any, allowed: bool) -> None:
    assert server.peer_allowed(
        uid, gids, own_uid=500, allowed_uids=allowed_uids, allowed_gids=allowed_gids
    ) is allowed


SYSTEM_PYTHON = shutil.which("python3", path="/usr/bin:/bin")
as_nobody = pytest.mark.skipif(
    os.getuid() != 0 or SYSTEM_PYTHON is None, reason="needs root to run a client as nobody"
)
PEER_CLIENT = """
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(5)
try:
    s.connect(sys.argv[1])
except PermissionError:
    print("EACCES"); sys.exit(0)
try:
    s.sendall(b'{"v":1,"cmd":"ping"}\\n')
except BrokenPipeError:
    pass  # refused and already closed: the reason is still readable
print(s.makefile("rb").readline().decode().strip())
"""


@pytest.fixture
def shared_dir() -> Iterator[str]:
    """A directory ``nobody`` can traverse (pytest's tmp_path is private to root)."""
    path = tempfile.mkdtemp(prefix="edgeproxy-ctl-")
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def run_as_nobody(args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, user="nobody", group="nogroup", capture_output=True, text=True, timeout=30, check=False, **kwargs
    )


@as_nobody
@pytest.mark.parametrize(
    ("mode", "options", "expected"),
    [
        (0o666, {}, '{"v":1,"ok":false,"error":"permission denied"}'),
        (0o666, {"allowed_uids": [65534]}, '"pong":true'),
        (0o666, {"allowed_gids": [65534]}, '"pong":true'),
        (0o666, {"allowed_gids": [4242]}, '{"v":1,"ok":false,"error":"permission denied"}'),
        (0o660, {"allowed_uids": [65534]}, "EACCES"),  # the file mode is the first gate
        (0o660, {"group": "nogroup"}, '"pong":true'),  # the socket's group passes both gates
    ],
)
def test_peer_credentials_as_nobody(
    shared_dir: str, recorder: Recorder, mode: int, options: Any, expected: str
) -> None:
    path = os.path.join(shared_dir, "control.sock")
    with Serving(path, recorder, mode=mode, **options):
        result = run_as_nobody([str(SYSTEM_PYTHON), "-c", PEER_CLIENT, path])
    assert result.returncode == 0, result.stderr
    assert expected in result.stdout
    assert recorder.commands == ([PingCommand()] if "pong" in expected else [])


@as_nobody
@pytest.mark.parametrize(("mode", "message"), [(0o666, "permission denied by"), (0o660, "permission denied on")])
def test_cli_permission_denied_as_nobody(shared_dir: str, recorder: Recorder, mode: int, message: str) -> None:
    path = os.path.join(shared_dir, "control.sock")
    with Serving(path, recorder, mode=mode):
        result = run_as_nobody(
            [str(SYSTEM_PYTHON), "-B", "-m", "edgeproxy.control.cli", "ping", "--control", path],
            env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        )
    assert result.returncode == cli.EXIT_NOPERM
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(f"edgeproxy: {message} control socket {path}")


BIND_AS_NOBODY = """
import asyncio, os, stat, sys
from edgeproxy.control.server import ControlServer, ControlSocketError
async def handler(command):
    return {}
async def main():
    server = ControlServer(sys.argv[1], handler, group=sys.argv[2])
    try:
        await server.start()
    except ControlSocketError as exc:
        print("refused:", exc); return
    print("gid", os.stat(sys.argv[1]).st_gid, "mode", oct(stat.S_IMODE(os.stat(sys.argv[1]).st_mode)))
    server.close()
asyncio.run(main())
"""


@as_nobody
@pytest.mark.parametrize(
    ("group", "expected"),
    [
        # The socket already has the process's group: nothing to chown (systemd's ~@privileged filter would
        # refuse it), the file just gets its mode.
        ("nogroup", "gid 65534 mode 0o660"),
        # A group the process is not in: a real EPERM, told with what to change.
        ("root", "refused: control socket {path}: can't give it to group root (0) (Operation not permitted): "
                 "run the service with that group as its Group="),
    ],
)
def test_socket_group_as_nobody(shared_dir: str, group: str, expected: str) -> None:
    os.chown(shared_dir, 65534, 65534)  # nobody binds there
    path = os.path.join(shared_dir, "control.sock")
    result = run_as_nobody([str(SYSTEM_PYTHON), "-B", "-c", BIND_AS_NOBODY, path, group],
                           env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(expected.format(path=path)), result.stdout
    assert not os.path.exists(path)


# --- the CLI ---------------------------------------------------------------------------------------------


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("argv", "output", "sent"),
    [
        (["https://cdn.example.com/img/a.png"], "purged 2 entries (url, hard)\n",
         [PurgeCommand(PurgeURL("https://cdn.example.com/img/a.png"), False, "url")]),
        (["https://a.example/1", "https://a.example/2", "--soft"], "purged 4 entries (url, soft)\n",
         [PurgeCommand(PurgeURL(f"https://a.example/{i}"), True, "url") for i in (1, 2)]),
        (["--prefix", "/pictures/", "--host", "cdn.example.com"], "purged 2 entries (prefix, hard)\n",
         [PurgeCommand(PurgePrefix("/pictures/", "cdn.example.com"), False, "prefix")]),
        (["--prefix", "/pictures/*"], "purged 2 entries (prefix, hard)\n",
         [PurgeCommand(PurgePrefix("/pictures/", None), False, "prefix")]),
        (["--host", "cdn.example.com"], "purged 2 entries (host, hard)\n",
         [PurgeCommand(PurgeHost("cdn.example.com"), False, "host")]),
        (["--tag", "t1", "t2"], "purged 2 entries (tag, hard)\n", [PurgeCommand(PurgeTag(("t1", "t2")), False, "tag")]),
        (["--regex", r"\.png$"], "purged 2 entries (regex, hard)\n",
         [PurgeCommand(PurgeRegex(r"\.png$"), False, "regex")]),
        (["--all", "--json"], '{"kind": "all", "purged": 2, "soft": false}\n',
         [PurgeCommand(PurgeAll(), False, "all")]),
        (["--all", "--fleet-wait", "--fleet-timeout", "2.5"], "purged 2 entries (all, hard)\n",
         [PurgeCommand(PurgeAll(), False, "all", fleet_wait=2.5)]),
    ],
)
def test_cli_purge(
    capsys: pytest.CaptureFixture[str], sock_path: str, recorder: Recorder, argv: list[str], output: str, sent: Any
) -> None:
    with Serving(sock_path, recorder):
        assert run_cli(capsys, "purge", *argv, "--control", sock_path) == (0, output, "")
    assert recorder.commands == sent


def test_cli_stats_table_and_json(capsys: pytest.CaptureFixture[str], sock_path: str, recorder: Recorder) -> None:
    with Serving(sock_path, recorder):
        code, table, _ = run_cli(capsys, "stats", "--control", sock_path)
        assert code == 0
        assert table.splitlines() == [
            "requests.hit_ratio         75.0%",
            "requests.hits              75",
            "requests.misses            25",
            "store.bytes                3,145,728 (3.0 MiB)",
            "store.capacity             1,073,741,824 (1.0 GiB)",
            "store.entries              12",
            "store.not_stored.no-store  2",
            "uptime                     12.500",
        ]
        code, raw, _ = run_cli(capsys, "stats", "--json", "--control", sock_path)
        assert code == 0 and json.loads(raw) == STATS


def test_cli_ping_reload_and_config_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, sock_path: str, recorder: Recorder
) -> None:
    config = tmp_path / "edgeproxy.toml"
    config.write_text(f'[server]\ncontrol_socket = "{sock_path}"\n')
    with Serving(sock_path, recorder):
        code, out, _ = run_cli(capsys, "ping", "--config", str(config))
        assert code == 0 and out.startswith(f"pong from pid {os.getpid()} in ")
        assert run_cli(capsys, "reload", "--config", str(config)) == (0, "reloaded\n", "")
        recorder.fail_reload = True
        assert run_cli(capsys, "reload", "--control", sock_path) == (
            cli.EXIT_FAILED, "", "edgeproxy: reload: reload failed: config.toml: cache.size: not a size\n"
        )
        # A file the server will refuse still names the socket: the reload reaches the server, which says why.
        config.write_text(f'[server]\ncontrol_socket = "{sock_path}"\n[cache]\nsise = 1\n')
        assert run_cli(capsys, "reload", "--config", str(config))[0] == cli.EXIT_FAILED
        assert recorder.commands[-1] == ReloadCommand()
        recorder.fail_reload = False
        recorder.reload_reply = {"reloaded": False, "reason": "no config file (started from flags)"}
        assert run_cli(capsys, "reload", "--control", sock_path) == (
            cli.EXIT_FAILED, "", "edgeproxy: reload: not reloaded: no config file (started from flags)\n"
        )


@pytest.mark.parametrize(
    ("argv", "code", "error"),
    [
        (["purge", "https://a.example/", "--all"], cli.EXIT_USAGE, "edgeproxy: purge: choose one of"),
        (["purge", "https://a.example/", "--host", "a.example"], cli.EXIT_USAGE, "(got URL and --host)"),
        (["purge"], cli.EXIT_USAGE, "(got nothing)"),
        (["purge", "--regex", "("], cli.EXIT_USAGE, "edgeproxy: purge: pattern: bad regex"),
        (["purge", "not-a-url"], cli.EXIT_USAGE, "edgeproxy: purge: url:"),
        (["ping", "--config", "/nonexistent/x.toml"], cli.EXIT_CONFIG, "edgeproxy: /nonexistent/x.toml: -:"),
    ],
)
def test_cli_bad_arguments_print_one_line(
    capsys: pytest.CaptureFixture[str], sock_path: str, argv: list[str], code: int, error: str
) -> None:
    got, out, err = run_cli(capsys, *argv, "--control", sock_path) if "--config" not in argv else run_cli(capsys, *argv)
    assert (got, out) == (code, "")
    assert err.count("\n") == 1 and error in err, err


def test_cli_without_a_server(capsys: pytest.CaptureFixture[str], sock_path: str) -> None:
    os.makedirs(os.path.dirname(sock_path))
    assert run_cli(capsys, "stats", "--control", sock_path) == (
        cli.EXIT_UNAVAILABLE, "", f"edgeproxy: control socket {sock_path} not found — is edgeproxy running?\n"
    )
    with socket.socket(socket.AF_UNIX) as dead:
        dead.bind(sock_path)
        code, _, err = run_cli(capsys, "ping", "--control", sock_path)
    assert code == cli.EXIT_UNAVAILABLE
    assert err == f"edgeproxy: control socket {sock_path} refuses connections — is edgeproxy running?\n"


def test_cli_as_a_module(sock_path: str, recorder: Recorder) -> None:
    command = [sys.executable, "-m", "edgeproxy.control.cli"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    missing = subprocess.run([*command, "ping", "--control", sock_path], env=env, capture_output=True, text=True,
                             timeout=30, check=False)
    assert missing.returncode == cli.EXIT_UNAVAILABLE and missing.stderr.count("\n") == 1
    with Serving(sock_path, recorder):
        found = subprocess.run([*command, "purge", "--all", "--control", sock_path], env=env, capture_output=True,
                               text=True, timeout=30, check=False)
    assert (found.returncode, found.stdout, found.stderr) == (0, "purged 2 entries (all, hard)\n", "")


def test_client_times_out_on_a_silent_server(sock_path: str) -> None:
    os.makedirs(os.path.dirname(sock_path))
    with socket.socket(socket.AF_UNIX) as silent:
        silent.bind(sock_path)
        silent.listen()  # accepted by the kernel, never answered
        with pytest.raises(ControlUnavailable, match="did not answer within 0.2s"), ControlClient(sock_path, 0.2) as c:
            c.request({"cmd": "ping"})


# -- whose directory, whose server ---------------------------------------------------------------------------

def start_now(server: ControlServer) -> None:
    async def start() -> None:
        await server.start()
        server.close()

    asyncio.run(start())


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to give a directory to another user")
def test_a_default_directory_another_user_made_first_is_refused(tmp_path: Path, recorder: Recorder) -> None:
    """/tmp/edgeproxy-UID, the fallback: anyone may make it before us, then swap our socket for theirs."""
    directory = tmp_path / "edgeproxy-1000"
    directory.mkdir(mode=0o755)
    os.chown(directory, 65534, 65534)
    path = str(directory / "control.sock")
    with pytest.raises(ControlSocketError, match=f"control socket directory {directory} is owned by uid 65534"):
        start_now(ControlServer(path, recorder, own_dir=True))
    assert list(directory.iterdir()) == []
    start_now(ControlServer(path, recorder))  # a path the operator configured: the operator's choice


def test_a_default_directory_others_can_write_is_refused_and_a_missing_one_is_made_ours(
        tmp_path: Path, recorder: Recorder) -> None:
    everyones = tmp_path / "everyones"
    everyones.mkdir()
    everyones.chmod(0o777)
    with pytest.raises(ControlSocketError, match="is writable by its group or others \\(mode 0777\\)"):
        start_now(ControlServer(str(everyones / "control.sock"), recorder, own_dir=True))
    made = tmp_path / "made" / "edgeproxy"
    start_now(ControlServer(str(made / "control.sock"), recorder, own_dir=True))
    st = made.lstat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o755, os.geteuid())


FAKE_SERVER = """
import os, socket, sys
s = socket.socket(socket.AF_UNIX)
s.bind(sys.argv[1])
os.chmod(sys.argv[1], 0o666)
s.listen(1)
print("ready", flush=True)
c, _ = s.accept()
c.settimeout(5)
try:
    c.recv(4096)
    c.sendall(b'{"v":1,"ok":true,"pong":true,"pid":4242}\\n')
except OSError:
    pass
"""


@as_nobody
@pytest.mark.parametrize("directory_made_by", ["nobody", "root"])
def test_the_cli_trusts_only_a_server_it_should(shared_dir: str, directory_made_by: str) -> None:
    """A server as another user, in a directory it made in a world-writable one (/tmp/edgeproxy-UID made first by
    someone else), is refused before anything is sent; in a directory root made and gave it (systemd's
    RuntimeDirectory, /run/edgeproxy) it is the service, and an operator trusts it."""
    base = os.path.join(shared_dir, "tmp")
    os.mkdir(base)
    os.chmod(base, 0o1777 if directory_made_by == "nobody" else 0o755)
    directory = os.path.join(base, "edgeproxy-0")
    if directory_made_by == "root":
        os.mkdir(directory, 0o755)
        os.chown(directory, 65534, 65534)
    else:
        run_as_nobody(["mkdir", "-m", "0755", directory]).check_returncode()
    path = os.path.join(directory, "control.sock")
    fake = subprocess.Popen([str(SYSTEM_PYTHON), "-c", FAKE_SERVER, path], user="nobody", group="nogroup",
                            stdout=subprocess.PIPE, text=True)
    try:
        assert fake.stdout is not None and fake.stdout.readline() == "ready\n"
        result = subprocess.run([sys.executable, "-m", "edgeproxy.control.cli", "ping", "--control", path],
                                capture_output=True, text=True, timeout=30, check=False, cwd=REPO)
    finally:
        fake.kill()
        fake.wait(TIMEOUT)
    if directory_made_by == "root":
        assert (result.returncode, result.stdout.startswith("pong from pid 4242")) == (0, True), result
        return
    assert (result.returncode, result.stdout) == (cli.EXIT_NOPERM, ""), result
    assert result.stderr == (f"edgeproxy: control socket {path} is served by uid 65534, not by root, by us (uid 0) "
                             "nor by the owner of a directory only root could give it: not trusted\n")


@pytest.mark.parametrize(("server_uid", "directory", "parent", "trusted"), [
    (0, None, None, True),
    (1000, None, None, True),  # ourselves
    (65534, None, None, False),
    (65534, (0o750, 65534), (0o755, 0), True),  # /run/edgeproxy: the service user's, in root's /run
    (65534, (0o750, 65534), (0o1777, 0), False),  # /tmp/edgeproxy-0: whoever came first
    (65534, (0o770, 65534), (0o755, 0), False),  # writable by its group: anyone in it could answer
    (65534, (0o750, 4242), (0o755, 0), False),  # a directory of someone else's
    (65534, (0o750, 65534), (0o755, 4242), False),  # in a directory of someone else's: not root's choice
])
def test_server_trusted(server_uid: int, directory: tuple[int, int] | None, parent: tuple[int, int] | None,
                        trusted: bool) -> None:
    def dir_stat(found: tuple[int, int] | None) -> os.stat_result | None:
        return None if found is None else os.stat_result((stat.S_IFDIR | found[0], 1, 1, 1, found[1], 0, 0, 0, 0, 0))

    assert server_trusted(server_uid, 1000, dir_stat(directory), dir_stat(parent)) is trusted
