"""The fast lane's head scanner (edgeproxy/http/headscan.py) and its compiled twin (_headscan.c), side by side.

Every table runs against both implementations; the compiled one is skipped (with the reason) where it was not
built, which fails the run under CI=true (scripts/test builds it; tests/skipguard.py). The differential tests feed
the smuggling probes, the fuzz seeds and a few thousand heads mutated line by line from browser heads through
``tests.fuzz.targets.headscan_target``, which holds the two implementations equal and checks every head they accept
against h11, llhttp and both of the proxy's parser seams.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from benchmarks.hitcost import real_prefixes
from edgeproxy.http import headscan
from edgeproxy.proxy.parser import Limits
from tests.fuzz.targets import SEEDS, headscan_target
from tests.integration.test_smuggling import BODY_PROBES, HEAD_PROBES

IMPLS = [
    pytest.param((headscan.scan_py, headscan.fields_named_py), id="twin"),
    pytest.param((headscan.scan_c, headscan.fields_named_c), id="compiled",
                 marks=pytest.mark.skipif(headscan.scan_c is None, reason="the C extension is not built here")),
]
Impl = tuple[Callable[..., object], Callable[..., object]]

UA = b"Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0"
ACCEPT = b"text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"
COOKIE = b"session=8f14e45fceea167a5a36dedd4bea2543; consent=1c383cd30b7c298a; _ga=GA1.2.123456789.1612345678"
REF = b"https://www.example.com/articles/2026/12/a-long-article-title?utm_source=news"
BROWSER = (b"GET /static/app.js?v=3 HTTP/1.1\r\nHost: www.example.com\r\nUser-Agent: " + UA + b"\r\n"
           b"Accept: " + ACCEPT + b"\r\nAccept-Language: en-US,en;q=0.9\r\nAccept-Encoding: gzip, deflate, br, zstd\r\n"
           b"Cookie: " + COOKIE + b"\r\nReferer: " + REF + b"\r\nSec-Fetch-Dest: script\r\n"
           b"Sec-Fetch-Mode: no-cors\r\nSec-Fetch-Site: same-origin\r\nX-Request-Id: 5f2b9c0e4d3a1b7e\r\n\r\n")


def head(*fields: bytes, line: bytes = b"GET / HTTP/1.1") -> bytes:
    return line + b"\r\n" + b"".join(f + b"\r\n" for f in fields) + b"\r\n"


H = b"host: a.test"
ACCEPTED = [
    pytest.param(BROWSER, (b"GET", b"/static/app.js?v=3", b"1.1", b"www.example.com", True, None, REF, UA, 11),
                 id="browser"),
    pytest.param(head(H), (b"GET", b"/", b"1.1", b"a.test", True, None, None, None, 1), id="minimal"),
    pytest.param(head(H, line=b"HEAD /x HTTP/1.1"), (b"HEAD", b"/x", b"1.1", b"a.test", True, None, None, None, 1),
                 id="head"),
    pytest.param(head(H, b"Connection: keep-alive", line=b"GET /a HTTP/1.0"),
                 (b"GET", b"/a", b"1.0", b"a.test", True, None, None, None, 2), id="http10-keep-alive"),
    pytest.param(head(H, line=b"GET /a HTTP/1.0"), (b"GET", b"/a", b"1.0", b"a.test", False, None, None, None, 1),
                 id="http10-closes"),
    pytest.param(head(H, b"connection: CLOSE"), (b"GET", b"/", b"1.1", b"a.test", False, None, None, None, 2),
                 id="http11-close"),
    pytest.param(head(H, b"User-Agent: one", b"user-agent: two", b"REFERER: r1", b"referer: r2"),
                 (b"GET", b"/", b"1.1", b"a.test", True, None, b"r1", b"one", 5), id="first-ua-and-referer"),
    pytest.param(head(b"HOST: [::1]:8080", b"ORIGIN: https://b.test"),
                 (b"GET", b"/", b"1.1", b"[::1]:8080", True, b"https://b.test", None, None, 2), id="upper-case-names"),
    pytest.param(head(b"Host:\t a-b.test:80 \t", b"x-e:", b"x-f: \t", b"x-g:a \t b"),
                 (b"GET", b"/", b"1.1", b"a-b.test:80", True, None, None, None, 4), id="ows-and-empty-values"),
    pytest.param(head(H, line=b"GET /a/b;c?d=e&f=%20!$'()*+,:@~[]{}|^`\"<>\\ HTTP/1.1"),
                 (b"GET", b"/a/b;c?d=e&f=%20!$'()*+,:@~[]{}|^`\"<>\\", b"1.1", b"a.test", True, None, None, None, 1),
                 id="every-target-byte-class"),
    pytest.param(head(H, b"!#$%&'*+-.^_`|~09azAZ: v"), (b"GET", b"/", b"1.1", b"a.test", True, None, None, None, 2),
                 id="every-tchar"),
]

REFUSED = [
    *[pytest.param(head(H, name.title() + b": 1"), id=f"forbidden-{name.decode()}") for name in
      sorted(headscan.FORBIDDEN)],
    pytest.param(head(H, b"x-a: 1", b" folded"), id="obs-fold"),
    pytest.param(head(H, b"x-a: 1", b"\tfolded"), id="obs-fold-tab"),
    pytest.param(b"GET / HTTP/1.1\n" + H + b"\n\n", id="bare-lf"),
    pytest.param(b"GET / HTTP/1.1\r\n" + H + b"\nx-a: 1\r\n\r\n", id="bare-lf-inside"),
    pytest.param(b"GET / HTTP/1.1\r\n" + H + b"\rx-a: 1\r\n\r\n", id="bare-cr"),
    pytest.param(head(H, b"x-a: a\x00b"), id="nul"),
    pytest.param(head(H, b"x-a: a\x80b"), id="obs-text-in-value"),
    pytest.param(head(H, b"x-a: a\x7fb"), id="del-in-value"),
    pytest.param(head(H, b"x-a: a\x0bb"), id="vt-in-value"),
    pytest.param(head(H, b"x-a : 1"), id="space-before-colon"),
    pytest.param(head(H, b"x-a\t: 1"), id="tab-before-colon"),
    pytest.param(head(H, b": 1"), id="empty-name"),
    pytest.param(head(H, b"x(a): 1"), id="name-not-a-token"),
    pytest.param(head(H, b"x-a"), id="no-colon"),
    pytest.param(head(H, b"host: b.test"), id="two-hosts"),
    pytest.param(head(H, b"Host: a.test"), id="two-equal-hosts"),
    pytest.param(head(b"x-a: 1"), id="no-host"),
    pytest.param(head(b"host:"), id="empty-host"),
    pytest.param(head(b"host: a_b.test"), id="host-underscore"),
    pytest.param(head(b"host: a b"), id="host-space"),
    pytest.param(head(b"host: a@b"), id="host-userinfo"),
    pytest.param(head(b"host: a/b"), id="host-slash"),
    pytest.param(head(H, line=b"GET http://a.test/ HTTP/1.1"), id="absolute-form"),
    pytest.param(head(H, line=b"GET * HTTP/1.1"), id="asterisk-form"),
    pytest.param(head(H, line=b"GET /a#f HTTP/1.1"), id="fragment"),
    pytest.param(head(H, line=b"GET /a\x80 HTTP/1.1"), id="obs-text-in-target"),
    pytest.param(head(H, line=b"GET  / HTTP/1.1"), id="two-spaces"),
    pytest.param(head(H, line=b"GET / HTTP/1.1 "), id="space-after-version"),
    pytest.param(head(H, line=b"GET /"), id="http-0.9"),
    *[pytest.param(head(H, line=m + b" / HTTP/1.1"), id=f"method-{m.decode()}")
      for m in (b"POST", b"OPTIONS", b"PUT", b"DELETE", b"get", b"Head", b"GETS")],
    *[pytest.param(head(H, line=b"GET / HTTP/" + v), id=f"version-{v.decode()}")
      for v in (b"1.2", b"2.0", b"0.9", b"1.10", b"1", b"1.")],
    pytest.param(head(H) + head(H), id="two-heads-pipelined"),
    pytest.param(head(H) + b"x", id="head-and-body-bytes"),
    pytest.param(head(H) + b"\r\n", id="head-and-an-empty-line"),
    pytest.param(head(H)[:-2], id="partial-head"),
    pytest.param(head(H)[:-1], id="partial-head-cr"),
    pytest.param(b"\r\n" + head(H), id="leading-empty-line"),
    pytest.param(b"", id="empty"),
    pytest.param(b"GET", id="method-only"),
    pytest.param(head(H, b"connection: upgrade"), id="connection-upgrade"),
    pytest.param(head(H, b"connection: keep-alive, close"), id="connection-list"),
    pytest.param(head(H, b"connection: keep-alive", b"connection: keep-alive"), id="two-connections"),
    pytest.param(head(H, b"connection:"), id="connection-empty"),
    pytest.param(head(H, b"origin: https://b", b"origin: https://c"), id="two-origins"),
]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(("data", "expected"), ACCEPTED)
def test_accepted_heads(impl: Impl, data: bytes, expected: tuple[object, ...]) -> None:
    scan, _ = impl
    assert scan(data) == expected
    headscan_target(data)  # and h11, llhttp and the seams read it the same way


def test_browser_head_is_about_600_bytes() -> None:
    assert 550 <= len(BROWSER) <= 650


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("data", REFUSED)
def test_refused_heads(impl: Impl, data: bytes) -> None:
    scan, _ = impl
    assert scan(data) is None


@pytest.mark.parametrize("impl", IMPLS)
def test_other_bytes_like_objects_read_as_bytes(impl: Impl) -> None:
    scan, fields_named = impl
    expected = scan(BROWSER)
    assert scan(bytearray(BROWSER)) == expected and scan(memoryview(BROWSER)) == expected
    assert fields_named(bytearray(BROWSER), frozenset({b"accept"})) == [(b"accept", ACCEPT)]
    with pytest.raises(TypeError):
        scan("GET / HTTP/1.1\r\nhost: a\r\n\r\n")


NAMED = [
    pytest.param(BROWSER, {b"accept", b"cookie"}, [
        (b"accept", ACCEPT),
(b"cookie", COOKIE)], id="browser"),
    pytest.param(head(H, b"Accept-Encoding:  gzip \t", b"X-A: 1", b"accept-encoding: br", b"x-a:"),
                 {b"accept-encoding", b"x-a"},
                 [(b"accept-encoding", b"gzip"), (b"x-a", b"1"), (b"accept-encoding", b"br"), (b"x-a", b"")],
                 id="repeated-in-order"),
    pytest.param(head(H), {b"cookie"}, [], id="none"),
    pytest.param(head(H), set(), [], id="no-names"),
    pytest.param(head(H, b"Accept: x"), {b"Accept"}, [], id="names-are-given-lower-case"),
]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(("data", "names", "expected"), NAMED)
def test_fields_named(impl: Impl, data: bytes, names: set[bytes], expected: list[tuple[bytes, bytes]]) -> None:
    _, fields_named = impl
    assert fields_named(data, frozenset(names)) == expected


@pytest.mark.skipif(headscan.scan_c is None, reason="the C extension is not built here")
def test_the_compiled_tables_are_the_twins() -> None:
    from edgeproxy.http import _headscan

    assert len(_headscan.FORBIDDEN) == len(headscan.FORBIDDEN) and set(_headscan.FORBIDDEN) == headscan.FORBIDDEN
    assert _headscan.TCHAR == headscan.TCHAR and _headscan.HOSTCHAR == headscan.HOSTCHAR


@pytest.mark.skipif(headscan.scan_c is None, reason="the C extension is not built here")
def test_the_compiled_scanner_returns_its_constants() -> None:
    from edgeproxy.http import _headscan

    one, two = headscan.scan_c(head(H)), headscan.scan_c(head(H, line=b"HEAD / HTTP/1.0"))
    assert one is not None and two is not None
    assert one[0] is _headscan.GET and one[2] is _headscan.V11 and two[0] is _headscan.HEAD and two[2] is _headscan.V10


def test_the_token_table_is_rfc_9110s() -> None:
    assert set(headscan.TCHAR) == set(b"!#$%&'*+-.^_`|~") | set(range(0x30, 0x3a)) | set(range(0x41, 0x5b)) | set(
        range(0x61, 0x7b))


@pytest.mark.parametrize(("data", "status"), [p.values for p in HEAD_PROBES + BODY_PROBES])
def test_smuggling_probes_are_never_scanned(data: bytes, status: int) -> None:
    """Every probe the proxy refuses is one the lane leaves alone, in both implementations; those refused for their
    size (414, 431) only by the bounds the lane's caller checks on what the scanner returns, as the parser does."""
    scanned = headscan.scan_py(data)
    if status in (414, 431):
        limits = Limits()
        assert scanned is None or (len(scanned[1]) > limits.max_uri or scanned[8] > limits.max_headers
                                   or len(data) > limits.max_header_bytes)
    else:
        assert scanned is None
    headscan_target(data)


def test_fuzz_seeds_agree() -> None:
    for data in (s for seeds in SEEDS.values() for s in seeds):
        headscan_target(data)
        headscan_target(data[1:])  # the request-path seeds open with a byte that picks their read split


# Line-level mutations of browser heads: most stay heads, many stay acceptable, so both directions of the check
# (accepted -> every parser agrees; refused by a parser -> not accepted) get exercised.
EXTRA_LINES = [b"Host: b.test", b"Connection: close", b"connection: keep-alive", b"Connection: Upgrade",
               b"Origin: https://o.test", b"origin: null", b"Cache-Control: no-cache", b"Pragma: no-cache",
               b"If-None-Match: \"x\"", b"Range: bytes=0-1", b"Content-Length: 0", b"Transfer-Encoding: chunked",
               b"Via: 1.1 x", b"X-Empty:", b"X-Ows: \t a \t", b"x-a : 1", b" folded", b"\tfolded", b"X-Bad: a\x00b",
               b"X-Obs: caf\xc3\xa9", b"X-Del: \x7f", b"User-Agent: second", b"Referer: /second", b"Host: ",
               b"Host: [::1]", b"Host: a.test:8080", b"Host: a_b", b"TE: trailers", b"Expect: 100-continue"]
LINE_PARTS = [b"\r\n", b"\r", b"\n", b"\x00", b" ", b"\t", b":", b"#", b"\x80", b"\xff", b"\x7f", b"\r\n\r\n", b"/",
              b"HTTP/1.1", b"A", b"-"]


def mutate_head(rng: random.Random, data: bytes) -> bytes:
    lines = data[:-4].split(b"\r\n")
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(9)
        at = rng.randrange(1, len(lines) + 1)
        if op == 0:
            lines.insert(at, rng.choice(EXTRA_LINES))
        elif op == 1 and len(lines) > 1:
            del lines[rng.randrange(1, len(lines))]
        elif op == 2:
            lines.insert(at, lines[rng.randrange(len(lines))])
        elif op == 3:
            i = rng.randrange(len(lines))
            lines[i] = lines[i].swapcase() if rng.random() < 0.5 else lines[i].upper()
        elif op == 4:
            i = rng.randrange(len(lines))
            pos = rng.randint(0, len(lines[i]))
            lines[i] = lines[i][:pos] + rng.choice(LINE_PARTS) + lines[i][pos:]
        elif op == 5 and b" " in lines[0]:
            lines[0] = rng.choice([b"HEAD", b"POST", b"get", b"GET"]) + lines[0][lines[0].index(b" "):]
        elif op == 6:
            lines[0] = lines[0][:-3] + rng.choice([b"1.0", b"1.1", b"1.2", b"2.0"])
        elif op == 7:
            rng.shuffle(lines[1:])
        else:
            i = rng.randrange(len(lines))
            lines[i] = lines[i][:rng.randint(0, len(lines[i]))]
    out = b"\r\n".join(lines) + b"\r\n\r\n"
    return out + rng.choice([b"", b"", b"", b"x", head(H)]) if rng.random() < 0.1 else out[:rng.randint(0, len(out))] \
        if rng.random() < 0.02 else out


def generated_heads(n: int) -> Iterator[bytes]:
    rng = random.Random("edgeproxy-headscan")
    browsers = [p + b"%016x\r\n\r\n" % i for i, p in enumerate(real_prefixes())] + [BROWSER]
    for _ in range(n):
        yield mutate_head(rng, rng.choice(browsers))


def test_generated_heads_agree_with_every_parser() -> None:
    accepted = 0
    for data in generated_heads(3000):
        headscan_target(data)
        accepted += headscan.scan_py(data) is not None
    assert accepted >= 600, accepted  # the generator must keep feeding the "accepted" side of the check


def _import_state(env: dict[str, str], prelude: str = "") -> str:
    code = prelude + "from edgeproxy.http import headscan as h; print(h.COMPILED, h.scan is h.scan_py, not h.scan_c)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **env}, cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_the_twin_answers_where_the_extension_is_missing() -> None:
    # None in sys.modules makes the import fail as it does where the extension was not built.
    prelude = "import sys; sys.modules['edgeproxy.http._headscan'] = None; "
    assert _import_state({"EDGEPROXY_PURE_SCAN": ""}, prelude) == "False True True"


@pytest.mark.skipif(headscan.scan_c is None, reason="the C extension is not built here")
def test_the_environment_forces_the_twin() -> None:
    assert _import_state({"EDGEPROXY_PURE_SCAN": ""}) == "True False False"
    assert _import_state({"EDGEPROXY_PURE_SCAN": "1"}) == "False True False"
