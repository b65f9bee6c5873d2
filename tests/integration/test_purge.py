"""Purge through the real proxy: every kind hard and soft, the purge/miss race, permissions, the CLI, stats.

Categories: purge (each kind over the control socket, checked by the reply's count and by the next request's
Cache-Status and what the origin saw), race (a purge while a miss is in flight), ops (socket permissions as
``nobody``, malformed and oversized lines while HTTP keeps serving, the ``edgeproxy`` CLI's output and exit
codes, ``stats`` after a known sequence). The origin is ``tests/scriptorigin.py``: it counts requests per path
and answers conditionals with 304. Everything runs on 127.0.0.1 with ports picked at run time; every wait is
bounded.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edgeproxy.control import cli
from edgeproxy.control.client import ControlClient
from tests.scriptorigin import Reply, ScriptOrigin, Seen
from tests.support import ROOT, HTTPClient, Proc, Response, env, start_proxy

TIMEOUT = 10.0
CACHE_CONTROL = "public, max-age=300, stale-if-error=300"


# --- the scripted origin ---------------------------------------------------------------------------------


def cacheable(extra: Callable[[Seen], list[tuple[str, str]]], delay: float = 0.0) -> Callable[[Seen], Reply]:
    """A cacheable answer with an ETag per target (and per Accept-Language when it varies); 304 on a match."""

    def answer(seen: Seen) -> Reply:
        lang = seen.header("accept-language") or "-"
        etag = f'"{seen.target}|{lang}"'
        fields = [("cache-control", CACHE_CONTROL), ("etag", etag), *extra(seen)]
        if seen.header("if-none-match") == etag:
            return Reply(304, fields, framing="none")
        return Reply(200, [("content-type", "text/plain"), *fields], f"{seen.target} {lang}\n".encode(), delay=delay)

    return answer


Obj = tuple[str, str, str | None]  # host, path, Accept-Language
# Every object the purge tests store, with the response fields that matter to purges. Two variants of /vary.
OBJECTS: dict[Obj, list[tuple[str, str]]] = {
    ("a.test", "/pictures/1.png", None): [("surrogate-key", "pic a-site"), ("cache-tag", "img,blue")],
    ("a.test", "/pictures/2.png", None): [("surrogate-key", "pic")],
    ("a.test", "/docs/x.html", None): [("cache-tag", "doc, a-site")],
    ("a.test", "/vary", "en"): [("vary", "Accept-Language"), ("surrogate-key", "lang")],
    ("a.test", "/vary", "fr"): [("vary", "Accept-Language"), ("surrogate-key", "lang")],
    ("b.test", "/pictures/1.png", None): [("cache-tag", "img")],
    ("b.test", "/index.html", None): [("surrogate-key", "b-site home")],
}
EVERYTHING = frozenset(OBJECTS)


def objects(pred: Callable[[Obj], bool]) -> frozenset[Obj]:
    return frozenset(o for o in OBJECTS if pred(o))


def object_fields(seen: Seen) -> list[tuple[str, str]]:
    return OBJECTS[(seen.header("host") or "", seen.target, seen.header("accept-language"))]


def route_all(origin: ScriptOrigin) -> None:
    # ScriptOrigin routes by path; the script looks the object up by host, path and language.
    for _, path, _ in OBJECTS:
        origin.routes[path] = cacheable(object_fields)


def get(client: HTTPClient, obj: Obj, method: str = "GET") -> Response:
    host, path, lang = obj
    headers = {"accept-language": lang} if lang else {}
    return client.request(method, path, headers, host=host)


def seen_for(origin: ScriptOrigin, obj: Obj) -> list[Seen]:
    host, path, lang = obj
    return [s for s in origin.seen(path) if s.header("host") == host and s.header("accept-language") == lang]


def control(proxy: Proc, **fields: Any) -> dict[str, Any]:
    with ControlClient(proxy.extra["control"], TIMEOUT) as client:
        return client.request(fields)


# --- fixtures: one origin and proxy for the kind table; each test starts from an empty cache --------------


@pytest.fixture(scope="module")
def origin() -> Iterator[ScriptOrigin]:
    with ScriptOrigin() as o:
        yield o


@pytest.fixture(scope="module")
def shared_proxy(origin: ScriptOrigin, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    proxy = start_proxy(origin.url, tmp_path_factory.mktemp("purge"))
    yield proxy
    proxy.stop()


@pytest.fixture
def warm(shared_proxy: Proc, origin: ScriptOrigin) -> Iterator[tuple[Proc, HTTPClient]]:
    """The shared proxy with every object of ``OBJECTS`` stored once (checked), and a client to it."""
    assert control(shared_proxy, cmd="purge", kind="all")["ok"]
    origin.reset()
    route_all(origin)
    with HTTPClient(shared_proxy.port, TIMEOUT) as client:
        for obj in OBJECTS:
            response = get(client, obj)
            assert "stored" in (response.header("cache-status") or ""), obj
            # The tags are for this edge: kept with the entry, never shown to clients.
            assert response.header("surrogate-key") is None and response.header("cache-tag") is None
        for obj in OBJECTS:
            assert (get(client, obj).header("cache-status") or "").startswith("edgeproxy; hit"), obj
        yield shared_proxy, client


# --- purge: every kind, hard and soft ----------------------------------------------------------------------

A_PNG, A_PNG2, A_DOC = ("a.test", "/pictures/1.png", None), ("a.test", "/pictures/2.png", None), (
    "a.test", "/docs/x.html", None)
B_PNG, B_INDEX = ("b.test", "/pictures/1.png", None), ("b.test", "/index.html", None)
VARY = objects(lambda o: o[1] == "/vary")

KINDS: list[tuple[str, dict[str, Any], frozenset[Obj]]] = [
    ("url", {"kind": "url", "url": "http://a.test/pictures/1.png"}, frozenset({A_PNG})),
    ("url-spelling", {"kind": "url", "url": "HTTP://A.Test:80/pictures/1.png#top"}, frozenset({A_PNG})),
    ("url-every-variant", {"kind": "url", "url": "http://a.test/vary"}, VARY),
    ("url-other-scheme", {"kind": "url", "url": "https://a.test/pictures/1.png"}, frozenset()),
    ("prefix-one-host", {"kind": "prefix", "prefix": "/pictures/", "host": "a.test"}, frozenset({A_PNG, A_PNG2})),
    ("prefix-azure-all-hosts", {"kind": "prefix", "prefix": "/pictures/*"}, frozenset({A_PNG, A_PNG2, B_PNG})),
    ("prefix-star-one-host", {"kind": "prefix", "prefix": "/*", "host": "b.test"}, frozenset({B_PNG, B_INDEX})),
    ("prefix-star-all-hosts", {"kind": "prefix", "prefix": "/*"}, EVERYTHING),
    ("host", {"kind": "host", "host": "A.TEST"}, objects(lambda o: o[0] == "a.test")),
    ("tag-surrogate-key", {"kind": "tag", "tags": ["pic"]}, frozenset({A_PNG, A_PNG2})),
    ("tag-cache-tag", {"kind": "tag", "tags": ["blue"]}, frozenset({A_PNG})),
    ("tag-both-fields", {"kind": "tag", "tags": ["a-site"]}, frozenset({A_PNG, A_DOC})),
    ("tag-any-of", {"kind": "tag", "tags": ["home", "lang"]}, VARY | {B_INDEX}),
    ("regex", {"kind": "regex", "pattern": r"\.png$"}, frozenset({A_PNG, A_PNG2, B_PNG})),
    ("regex-host", {"kind": "regex", "pattern": r"^http://b\.test/"}, frozenset({B_PNG, B_INDEX})),
    ("all", {"kind": "all"}, EVERYTHING),
]


@pytest.mark.parametrize("soft", [False, True], ids=["hard", "soft"])
@pytest.mark.parametrize(("request_fields", "purged"), [(f, p) for _, f, p in KINDS], ids=[n for n, _, _ in KINDS])
def test_purge_kind(warm: tuple[Proc, HTTPClient], origin: ScriptOrigin, request_fields: dict[str, Any],
                    purged: frozenset[Obj], soft: bool) -> None:
    proxy, client = warm
    reply = control(proxy, cmd="purge", soft=soft, **request_fields)
    assert reply == {"v": 1, "ok": True, "kind": request_fields["kind"], "soft": soft, "purged": len(purged)}
    before = {obj: len(seen_for(origin, obj)) for obj in OBJECTS}
    for obj in OBJECTS:
        status = get(client, obj).header("cache-status") or ""
        if obj not in purged:
            assert status.startswith("edgeproxy; hit"), (obj, status)
            assert len(seen_for(origin, obj)) == before[obj]
        elif soft:
            assert "fwd=stale; fwd-status=304" in status, (obj, status)
            assert seen_for(origin, obj)[-1].header("if-none-match") is not None
        else:
            # The first variant of a key fetched again leaves the other one a vary-miss.
            assert re.search(r"fwd=(uri|vary)-miss; fwd-status=200; stored", status), (obj, status)
            assert seen_for(origin, obj)[-1].header("if-none-match") is None
    for obj in OBJECTS:  # stored again (hard) or freshened (soft): hits from here on
        assert (get(client, obj).header("cache-status") or "").startswith("edgeproxy; hit"), obj


@pytest.mark.parametrize("soft", [False, True], ids=["hard", "soft"])
def test_url_purge_covers_head(warm: tuple[Proc, HTTPClient], soft: bool) -> None:
    proxy, client = warm
    assert get(client, A_PNG, "HEAD").header("cache-status").startswith("edgeproxy; hit")
    assert control(proxy, cmd="purge", kind="url", url="http://a.test/pictures/1.png", soft=soft)["purged"] == 1
    status = get(client, A_PNG, "HEAD").header("cache-status") or ""
    assert "fwd=" in status and not status.startswith("edgeproxy; hit"), status


@pytest.mark.parametrize("down", ["hangs-up", "stopped"])
def test_soft_purge_then_origin_down_serves_stale(proxy_factory: Callable[..., Proc], down: str) -> None:
    origin = ScriptOrigin()
    try:
        route_all(origin)
        proxy = proxy_factory(origin.url)
        with HTTPClient(proxy.port, TIMEOUT) as client:
            assert "stored" in (get(client, A_PNG).header("cache-status") or "")
            assert control(proxy, cmd="purge", kind="tag", tags=["blue"], soft=True)["purged"] == 1
            if down == "stopped":
                origin.close()  # connections refused from now on
            else:
                origin.routes[A_PNG[1]] = Reply(hangup=True)
            response = get(client, A_PNG)
    finally:
        origin.close()
    assert response.status == 200 and response.body == b"/pictures/1.png -\n"
    status = response.header("cache-status") or ""
    assert status.startswith("edgeproxy; fwd=stale;") and "stale-if-error" in status, status
    after = origin.seen(A_PNG[1])[1:]
    if down == "stopped":
        assert after == []  # refused: nothing reached it
    else:  # it was asked, with a conditional request for the stale copy, before it hung up
        assert after and all(s.header("if-none-match") is not None for s in after), after


@pytest.mark.parametrize(
    ("mode", "stored_as", "purge_url"),
    [("sort", "/list?b=2&a=1", "http://a.test/list?a=1&b=2"), ("sort", "/list?a=1&b=2", "http://a.test/list?b=2&a=1"),
     ("ignore", "/list?x=1", "http://a.test/list?y=2"), ("keep", "/list?b=2&a=1", "http://a.test/list?b=2&a=1")],
)
def test_url_purge_uses_the_site_query_mode(proxy_factory: Callable[..., Proc], mode: str, stored_as: str,
                                            purge_url: str) -> None:
    with ScriptOrigin() as origin:
        origin.routes["/list"] = cacheable(lambda _seen: [])
        proxy = proxy_factory(origin.url, site=[{"hosts": ["*"], "origin": origin.url, "query": mode}])
        with HTTPClient(proxy.port, TIMEOUT) as client:
            assert "stored" in (client.request("GET", stored_as, host="a.test").header("cache-status") or "")
            assert control(proxy, cmd="purge", kind="url", url=purge_url)["purged"] == 1
            assert "fwd=uri-miss" in (client.request("GET", stored_as, host="a.test").header("cache-status") or "")


# --- race: a purge while a miss is in flight ----------------------------------------------------------------

SLOW = ("a.test", "/pictures/slow.png", None)


@pytest.mark.parametrize(
    ("request_fields", "stored"),
    [
        ({"kind": "url", "url": "http://a.test/pictures/slow.png"}, False),
        ({"kind": "prefix", "prefix": "/pictures/*"}, False),
        ({"kind": "host", "host": "a.test"}, False),
        ({"kind": "tag", "tags": ["slow"]}, False),  # the tag is only known from the response
        ({"kind": "regex", "pattern": "slow"}, False),
        ({"kind": "all"}, False),
        ({"kind": "host", "host": "b.test"}, True),  # an unrelated purge does not stop the store
    ],
    ids=lambda v: v["kind"] if isinstance(v, dict) else str(v),
)
def test_purge_during_a_miss_is_not_undone(proxy_factory: Callable[..., Proc], request_fields: dict[str, Any],
                                           stored: bool) -> None:
    with ScriptOrigin() as origin:
        origin.routes[SLOW[1]] = cacheable(lambda _seen: [("surrogate-key", "slow")], delay=0.5)
        proxy = proxy_factory(origin.url)
        result: list[Response] = []

        def fetch_slowly() -> None:
            with HTTPClient(proxy.port, TIMEOUT) as slow_client:
                result.append(get(slow_client, SLOW))

        fetch = threading.Thread(target=fetch_slowly)
        fetch.start()
        assert origin.wait_for(lambda: len(origin.seen(SLOW[1])) == 1)
        reply = control(proxy, cmd="purge", **request_fields)
        fetch.join(TIMEOUT)
        assert reply["ok"] and reply["purged"] == 0  # nothing stored yet
        assert result and result[0].status == 200  # the client still gets its answer
        with HTTPClient(proxy.port, TIMEOUT) as client:
            status = get(client, SLOW).header("cache-status") or ""
        assert status.startswith("edgeproxy; hit") is stored, status
        assert len(origin.seen(SLOW[1])) == (1 if stored else 2)


# --- ops: permissions --------------------------------------------------------------------------------------



@pytest.fixture
def shared_dir() -> Iterator[str]:
    """A directory ``nobody`` can traverse (pytest's tmp_path is private to root)."""
    path = tempfile.mkdtemp(prefix="edgeproxy-purge-")
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


SYSTEM_PYTHON = shutil.which("python3", path="/usr/bin:/bin")


def edgeproxy_cli(*argv: str, user: str | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m edgeproxy ARGV`` as a separate process; as ``user`` with the system Python (the dev
    virtualenv's interpreter may live under a root-only directory; the CLI needs only the standard library)."""
    if user is None:
        return subprocess.run([sys.executable, "-m", "edgeproxy", *argv], env=env(), cwd=ROOT, capture_output=True,
                              text=True, timeout=30, check=False)
    return subprocess.run([str(SYSTEM_PYTHON), "-B", "-m", "edgeproxy", *argv], cwd="/", user=user, group="nogroup",
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
                          timeout=30, check=False)


@pytest.mark.skipif(os.getuid() != 0 or SYSTEM_PYTHON is None, reason="needs root to run a client as nobody")
@pytest.mark.parametrize(
    ("server", "code", "message"),
    [
        ({}, cli.EXIT_NOPERM, "edgeproxy: permission denied on control socket"),  # mode 0660 root:root
        # The socket's group is the group meant to use it: its members pass both gates.
        ({"control_group": "nogroup"}, 0, ""),
        ({"control_group": "nogroup", "control_gids": [65534]}, 0, ""),
        ({"control_uids": [65534], "control_group": "nogroup"}, 0, ""),
    ],
    ids=["file-mode", "socket-group", "allowed-gid", "allowed-uid"],
)
def test_purge_as_nobody(proxy_factory: Callable[..., Proc], origin: ScriptOrigin, shared_dir: str,
                         server: dict[str, Any], code: int, message: str) -> None:
    route_all(origin)
    sock = os.path.join(shared_dir, "control.sock")
    proxy = proxy_factory(origin.url, server={"control_socket": sock, **server})
    with HTTPClient(proxy.port, TIMEOUT) as client:
        get(client, A_PNG)
        result = edgeproxy_cli("purge", "http://a.test/pictures/1.png", "--control", sock, user="nobody")
        assert result.returncode == code, result.stderr
        if code:
            assert result.stderr.count("\n") == 1 and result.stderr.startswith(message), result.stderr
            assert (get(client, A_PNG).header("cache-status") or "").startswith("edgeproxy; hit")
        else:
            assert result.stdout == "purged 1 entry (url, hard)\n"
            assert "fwd=uri-miss" in (get(client, A_PNG).header("cache-status") or "")


# --- ops: malformed and oversized lines while HTTP keeps serving ---------------------------------------------

BAD_LINES: list[tuple[bytes, str]] = [
    (b"not json", "malformed JSON"),
    (b'["purge"]', "request must be a JSON object"),
    (b'{"v":1,"cmd":"purge","kind":"url"}', "url: required"),
    (b'{"v":1,"cmd":"purge","kind":"tag","tags":[]}', "tags: expected a non-empty list of strings"),
    (b'{"v":1,"cmd":"purge","kind":"regex","pattern":"("}', "pattern: bad regex '('"),
    (b'{"v":1,"cmd":"purge","kind":"prefix","prefix":"pictures/"}', "prefix: must start with '/'"),
    (b'{"v":1,"cmd":"purge","kind":"all","sfot":true}', "sfot: unknown field"),
    (b'{"v":2,"cmd":"purge","kind":"all"}', "v: unsupported version 2"),
]


def read_lines(sock: socket.socket, count: int) -> list[dict[str, Any]]:
    buf = b""
    while buf.count(b"\n") < count:
        data = sock.recv(65536)
        if not data:
            break
        buf += data
    return [json.loads(line) for line in buf.splitlines()]


def test_bad_lines_get_errors_and_http_keeps_serving(warm: tuple[Proc, HTTPClient]) -> None:
    proxy, client = warm
    with socket.socket(socket.AF_UNIX) as ctl:
        ctl.settimeout(TIMEOUT)
        ctl.connect(proxy.extra["control"])
        ctl.sendall(b"".join(line + b"\n" for line, _ in BAD_LINES) + b'{"v":1,"cmd":"ping"}\n')
        replies = read_lines(ctl, len(BAD_LINES) + 1)
        for (_, error), reply in zip(BAD_LINES, replies, strict=False):
            assert reply["ok"] is False and error in reply["error"], (error, reply)
        assert replies[-1]["ok"] and replies[-1]["pong"]
        # Over 64 KiB without a newline: one error line, then the server hangs up on this peer only.
        ctl.sendall(b'{"v":1,"cmd":"purge","kind":"url","url":"http://a.test/' + b"x" * 70_000)
        assert (get(client, A_PNG).header("cache-status") or "").startswith("edgeproxy; hit")
        oversized = read_lines(ctl, 1)
        assert ctl.recv(1) == b""
    assert oversized == [{"v": 1, "ok": False, "error": "line too long (limit 65536 bytes)"}]
    for obj in OBJECTS:  # nothing was purged by any of it, and HTTP never stopped
        assert (get(client, obj).header("cache-status") or "").startswith("edgeproxy; hit"), obj
    assert control(proxy, cmd="purge", kind="all")["purged"] == len(OBJECTS)


# --- ops: the edgeproxy CLI ----------------------------------------------------------------------------------

CLI_PURGES: list[tuple[list[str], str]] = [
    (["http://a.test/pictures/1.png", "http://a.test/vary"], "purged 3 entries (url, hard)\n"),
    (["--prefix", "/pictures/*", "--host", "a.test", "--soft"], "purged 2 entries (prefix, soft)\n"),
    (["--host", "b.test"], "purged 2 entries (host, hard)\n"),
    (["--tag", "pic", "doc"], "purged 3 entries (tag, hard)\n"),
    (["--regex", r"/index\.html$", "--soft"], "purged 1 entry (regex, soft)\n"),
    (["--all", "--json"], '{"kind": "all", "purged": 7, "soft": false}\n'),
]


@pytest.mark.parametrize(("argv", "output"), CLI_PURGES, ids=[a[0].lstrip("-")[:6] for a, _ in CLI_PURGES])
def test_cli_purge(warm: tuple[Proc, HTTPClient], argv: list[str], output: str) -> None:
    proxy, _ = warm
    result = edgeproxy_cli("purge", *argv, "--control", proxy.extra["control"])
    assert (result.returncode, result.stdout, result.stderr) == (0, output, "")


@pytest.mark.parametrize(
    ("argv", "code", "error"),
    [
        (["purge", "--all"], cli.EXIT_UNAVAILABLE, "control socket {missing} not found — is edgeproxy running?"),
        (["stats"], cli.EXIT_UNAVAILABLE, "not found"),
        (["purge", "--regex", "(", "--control", "{sock}"], cli.EXIT_USAGE,
         "purge: pattern: bad regex '(': missing ): ("),
        (["purge", "--regex", "[z-a]"], cli.EXIT_USAGE,
         "purge: pattern: bad regex '[z-a]': invalid character class range: z-a"),
        (["purge", "--prefix", "/a*b"], cli.EXIT_USAGE, "purge: prefix: '*' is only allowed at the end"),
        (["purge", "ftp://a.test/x"], cli.EXIT_USAGE, "purge: url: expected an absolute http:// or https:// URL"),
    ],
)
def test_cli_errors_are_one_line(shared_proxy: Proc, tmp_path: Path, argv: list[str], code: int,
                                 error: str) -> None:
    missing = str(tmp_path / "nowhere.sock")
    argv = [a.format(sock=shared_proxy.extra["control"]) for a in argv]
    if "--control" not in argv:
        argv += ["--control", missing]
    result = edgeproxy_cli(*argv)
    assert (result.returncode, result.stdout) == (code, "")
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("edgeproxy: "), result.stderr
    assert error.format(missing=missing) in result.stderr


# --- ops: stats after a known sequence ------------------------------------------------------------------------


def test_stats_after_a_known_sequence(proxy_factory: Callable[..., Proc]) -> None:
    with ScriptOrigin() as origin:
        route_all(origin)
        proxy = proxy_factory(origin.url)
        with HTTPClient(proxy.port, TIMEOUT) as client:
            for obj in (A_PNG, A_PNG2, A_DOC, A_PNG, A_PNG, A_DOC):  # 3 misses, then 3 hits
                get(client, obj)
            assert control(proxy, cmd="purge", kind="url", url="http://a.test/pictures/1.png")["purged"] == 1
            assert control(proxy, cmd="purge", kind="tag", tags=["doc"], soft=True)["purged"] == 1
            get(client, A_PNG)  # a fourth miss
            get(client, A_DOC)  # a revalidation of the soft-purged entry
        stats = control(proxy, cmd="stats")
        summary = edgeproxy_cli("stats", "--control", proxy.extra["control"])
        full = json.loads(edgeproxy_cli("stats", "--json", "--control", proxy.extra["control"]).stdout)
    expected = {"entries": 3, "hits": 3, "misses": 4, "revalidations": 1, "purges": 2, "evictions": 0,
                "origin_errors": 0, "hit_ratio": 0.375}
    assert {k: stats[k] for k in expected} == expected
    assert stats["store"]["purged"] == 2 and stats["counters"]["purges"] == {"url": 1, "tag": 1}
    assert {k: full[k] for k in expected} == expected and "counters" in full
    rows = dict(line.split(None, 1) for line in summary.stdout.splitlines())
    assert (summary.returncode, rows["entries"], rows["hits"], rows["misses"], rows["purges"]) == (
        0, "3", "3", "4", "2")
    assert rows["hit_ratio"] == "37.5%" and rows["store.purged"] == "2"
    assert not [name for name in rows if name.startswith("counters.") or name in ("store.entries", "store.hits")]
