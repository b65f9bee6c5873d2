"""The head memo's pure helpers (edgeproxy/proxy/hot.py): which reads are one whole head, which heads may be
remembered. The memo itself is exercised over sockets in tests/integration/test_head_memo.py."""

from __future__ import annotations

import types

import pytest

from edgeproxy.proxy.hot import DECISIVE, REST, WINDOW, WORTH, HeadMemo, memoizable, single_head
from edgeproxy.proxy.parser import RequestHead

GET = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.mark.parametrize(
    "data, expected",
    [
        (GET, True),
        (b"GET / HTTP/1.0\r\n\r\n", True),
        (b"\r\n" + GET, True),  # a leading empty line is part of the exact bytes the memo keys on
        (GET + GET, False),  # pipelined: the second head would be lost
        (GET + b"G", False),  # the start of the next request
        (GET + b"\r\n", False),
        (GET[:-2], False),  # incomplete
        (GET[:-1], False),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nbody", False),
        (b"", False),
        (b"\r\n", False),
    ],
)
def test_single_head(data, expected):
    assert single_head(data) is expected


def head(method: bytes = b"GET", headers: tuple[tuple[bytes, bytes], ...] = (), has_body: bool = False) -> RequestHead:
    return RequestHead(method=method, target=b"/a", headers=[(b"host", b"x"), *headers], http_version=b"1.1",
                       keep_alive=True, expect_continue=False, has_body=has_body)


@pytest.mark.parametrize(
    "request_head, expected",
    [
        (head(), True),
        (head(b"HEAD"), True),
        (head(headers=((b"accept", b"*/*"), (b"accept-encoding", b"gzip"), (b"cookie", b"a=1"),
                       (b"user-agent", b"curl"), (b"connection", b"keep-alive"))), True),
        (head(b"POST"), False),
        (head(b"OPTIONS"), False),
        (head(b"PURGE"), False),
        (head(b"get"), False),  # methods are case-sensitive (RFC 9110 §9.1)
        (head(has_body=True), False),
        *[(head(headers=((name, b"1"),)), False) for name in sorted(DECISIVE)],
    ],
)
def test_memoizable(request_head, expected):
    assert memoizable(request_head) is expected


def test_decisive_fields_cover_the_request_directives_and_conditionals():
    for name in (b"cache-control", b"pragma", b"range", b"if-none-match", b"if-modified-since", b"authorization"):
        assert name in DECISIVE


class Counted:
    """The one thing an empty memo asks of its edge: the memo-hit counter."""

    def __init__(self, memo_hits: int = 0) -> None:
        self.counters = types.SimpleNamespace(memo_hits=memo_hits)


def test_the_memo_stands_aside_when_it_does_not_pay() -> None:
    memo = HeadMemo(Counted())  # type: ignore[arg-type]
    for n in range(WINDOW):  # heads that never repeat: every lookup finds nothing
        assert not memo.answer(None, b"GET /x HTTP/1.1\r\nX-Request-Id: %d\r\n\r\n" % n)  # type: ignore[arg-type]
    assert (memo.resting, memo.rests, memo.unanswered) == (REST, 1, 0)


def test_the_memo_keeps_answering_while_it_pays() -> None:
    edge = Counted()
    memo = HeadMemo(edge)  # type: ignore[arg-type]
    edge.counters.memo_hits = WINDOW // WORTH  # one answer in WORTH lookups during the window: worth its cost
    for n in range(WINDOW):
        memo.answer(None, b"GET /%d HTTP/1.1\r\n\r\n" % n)  # type: ignore[arg-type]
    assert (memo.resting, memo.rests, memo.unanswered, memo.window_hits) == (0, 0, 0, WINDOW // WORTH)
