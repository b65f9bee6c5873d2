import pytest

from edgeproxy.cache.conditional import PRECONDITION_FIELDS, etag_list, respond_from_entry, strong_match, weak_match
from edgeproxy.cache.key import DECIDING_FIELDS, CacheRequest
from edgeproxy.cache.ranges import UNSATISFIABLE, Answer, parse_range
from edgeproxy.cache.storability import make_entry
from edgeproxy.http.dates import format_http_date

NOW = 1_700_000_000.0
LM = format_http_date(NOW - 3000)
BODY = b"0123456789A"


def req(headers=(), method=b"GET"):
    return CacheRequest(method, "http", "example.com", b"/", list(headers))


def entry(*extra, status=200, body=BODY, etag=b'"abc"'):
    headers = [
        (b"date", format_http_date(NOW)),
        (b"cache-control", b"max-age=100"),
        (b"content-type", b"text/plain"),
        (b"content-length", b"%d" % len(body)),
        (b"x-other", b"1"),
        *extra,
    ]
    if etag is not None:
        headers.append((b"etag", etag))
    return make_entry(req(), status, headers, body, NOW, NOW)


LMH = (b"last-modified", LM)


@pytest.mark.parametrize(
    "request_headers, method, extra, expected_status",
    [
        ([], b"GET", (), None),
        ([(b"accept", b"*/*")], b"GET", (), None),
        # If-None-Match: weak comparison
        ([(b"if-none-match", b'"abc"')], b"GET", (), 304),
        ([(b"if-none-match", b'W/"abc"')], b"GET", (), 304),
        ([(b"if-none-match", b"abc")], b"GET", (), 304),  # unquoted
        ([(b"if-none-match", b'"x", "abc", "y"')], b"GET", (), 304),
        ([(b"if-none-match", b'"x,abc", "y"')], b"GET", (), None),  # comma inside a tag
        ([(b"if-none-match", b"*")], b"HEAD", (), 304),
        ([(b"if-none-match", b'"zzz"')], b"GET", (), None),
        # INM takes precedence over IMS
        ([(b"if-none-match", b'"abc"'), (b"if-modified-since", format_http_date(NOW - 9999))], b"GET", (LMH,), 304),
        ([(b"if-none-match", b'"zzz"'), (b"if-modified-since", LM)], b"GET", (LMH,), None),
        # If-Modified-Since against Last-Modified, or Date when there is none
        ([(b"if-modified-since", LM)], b"GET", (LMH,), 304),
        ([(b"if-modified-since", format_http_date(NOW - 2000))], b"GET", (LMH,), 304),
        ([(b"if-modified-since", format_http_date(NOW - 4000))], b"GET", (LMH,), None),
        ([(b"if-modified-since", format_http_date(NOW - 3000 + 0))], b"GET", (), None),  # Date is later
        ([(b"if-modified-since", format_http_date(NOW + 10))], b"GET", (), 304),
        ([(b"if-modified-since", b"Thursday, 01-Jan-70 00:00:00 GMT")], b"GET", (), None),
        ([(b"if-modified-since", b"garbage")], b"GET", (LMH,), None),
        # If-Match / If-Unmodified-Since
        ([(b"if-match", b'"abc"')], b"GET", (), None),
        ([(b"if-match", b'W/"abc"')], b"GET", (), 412),  # strong comparison
        ([(b"if-match", b'"nope"')], b"GET", (), 412),
        ([(b"if-match", b"*")], b"GET", (), None),
        ([(b"if-unmodified-since", format_http_date(NOW - 4000))], b"GET", (LMH,), 412),
        ([(b"if-unmodified-since", LM)], b"GET", (LMH,), None),
        ([(b"if-unmodified-since", format_http_date(NOW - 4000))], b"GET", (), None),  # no LM: ignored
        ([(b"if-match", b'"abc"'), (b"if-unmodified-since", format_http_date(NOW - 4000))], b"GET", (LMH,), None),
    ],
)
def test_preconditions(request_headers, method, extra, expected_status):
    answer = respond_from_entry(req(request_headers, method), entry(*extra))
    assert (answer.status if answer else None) == expected_status


def test_not_modified_fields():
    e = entry(LMH, (b"expires", LM), (b"vary", b"Accept"), (b"content-location", b"/x"))
    answer = respond_from_entry(req([(b"if-none-match", b'"abc"')]), e)
    assert [k for k, _ in answer.headers] == [
        b"date", b"cache-control", b"last-modified", b"expires", b"vary", b"content-location", b"etag",
    ]
    assert answer.body == b""


@pytest.mark.parametrize(
    "value, length, expected",
    [
        (b"bytes=0-1", 11, (0, 1)),
        (b"bytes=1-", 11, (1, 10)),
        (b"bytes=-1", 11, (10, 10)),
        (b"bytes=-20", 11, (0, 10)),
        (b"bytes=5-100", 11, (5, 10)),
        (b"Bytes = 2-3", 11, (2, 3)),
        (b"bytes=11-", 11, UNSATISFIABLE),
        (b"bytes=-0", 11, UNSATISFIABLE),
        (b"bytes=-5", 0, UNSATISFIABLE),
        (b"bytes=0-1,3-4", 11, None),  # several ranges: full response
        (b"bytes=3-1", 11, None),
        (b"bytes=a-1", 11, None),
        (b"bytes=1", 11, None),
        (b"items=0-1", 11, None),
        (b"bytes", 11, None),
    ],
)
def test_parse_range(value, length, expected):
    assert parse_range(value, length) == expected


@pytest.mark.parametrize(
    "request_headers, method, status, expected",
    [
        ([(b"range", b"bytes=0-1")], b"GET", 200, (206, b"01", b"bytes 0-1/11")),
        ([(b"range", b"bytes=-1")], b"GET", 200, (206, b"A", b"bytes 10-10/11")),
        ([(b"range", b"bytes=1-")], b"GET", 200, (206, b"123456789A", b"bytes 1-10/11")),
        ([(b"range", b"bytes=20-")], b"GET", 200, (416, b"", b"bytes */11")),
        ([(b"range", b"bytes=0-1,4-5")], b"GET", 200, None),
        ([(b"range", b"bytes=0-1")], b"HEAD", 200, None),  # ranges are defined for GET only
        ([(b"range", b"bytes=0-1")], b"GET", 404, None),
        ([(b"range", b"bytes=0-1"), (b"if-range", b'"abc"')], b"GET", 200, (206, b"01", b"bytes 0-1/11")),
        ([(b"range", b"bytes=0-1"), (b"if-range", b'"zzz"')], b"GET", 200, None),
        ([(b"range", b"bytes=0-1"), (b"if-range", b'W/"abc"')], b"GET", 200, None),
        ([(b"range", b"bytes=0-1"), (b"if-range", LM)], b"GET", 200, (206, b"01", b"bytes 0-1/11")),
        ([(b"range", b"bytes=0-1"), (b"if-range", format_http_date(NOW))], b"GET", 200, None),
        ([(b"range", b"bytes=0-1"), (b"if-none-match", b'"abc"')], b"GET", 200, (304, b"", None)),
    ],
)
def test_ranges(request_headers, method, status, expected):
    answer = respond_from_entry(req(request_headers, method), entry(LMH, status=status))
    if expected is None:
        assert answer is None
        return
    status_code, body, content_range = expected
    assert (answer.status, answer.body) == (status_code, body)
    fields = dict(answer.headers)
    assert fields.get(b"content-range") == content_range
    if status_code == 206:
        assert fields[b"content-length"] == b"%d" % len(body)
        assert fields[b"x-other"] == b"1"
        assert [k for k, _ in answer.headers].count(b"content-length") == 1


def test_answer_is_frozen():
    with pytest.raises(AttributeError):
        Answer(304, []).status = 200


@pytest.mark.parametrize(
    "a, b, weak, strong",
    [
        (b'"x"', b'"x"', True, True),
        (b'W/"x"', b'"x"', True, False),
        (b'W/"x"', b'W/"x"', True, False),
        (b'w/"x"', b'W/"x"', True, False),
        (b"x", b'"x"', True, True),
        (b'"x"', b'"y"', False, False),
        (b'"x\xc3\xbc"', b'"x\xc3\xbc"', True, True),
    ],
)
def test_etag_comparison(a, b, weak, strong):
    assert (weak_match(a, b), strong_match(a, b)) == (weak, strong)


def test_etag_list():
    assert etag_list(b'"a", W/"b,c" ,d') == [b'"a"', b'W/"b,c"', b"d"]


def test_plain_requests_skip_the_scan_and_hold_no_precondition():
    # CacheRequest.plain promises none of DECIDING_FIELDS: those must cover every field respond_from_entry reads.
    assert PRECONDITION_FIELDS <= DECIDING_FIELDS
    fields = [(b"accept", b"*/*"), (b"if-range", b'"abc"')]  # If-Range alone decides nothing
    stored = entry(LMH)
    assert respond_from_entry(CacheRequest(b"GET", "http", "example.com", b"/a", fields, plain=True), stored) is None
    assert respond_from_entry(req(fields), stored) is None
