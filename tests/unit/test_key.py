import pytest

from edgeproxy.cache.key import (
    VARY_NORMALIZERS,
    CacheRequest,
    key_for_reference,
    matches,
    normalized,
    primary_key,
    variant_key,
    vary_names,
)


def req(target=b"/p?b=2&a=1", headers=(), method=b"GET"):
    return CacheRequest(method, "http", "example.com", target, list(headers))


@pytest.mark.parametrize(
    "target, mode, expected",
    [
        (b"/p?b=2&a=1", "keep", "http://example.com/p?b=2&a=1"),
        (b"/p?b=2&a=1", "sort", "http://example.com/p?a=1&b=2"),
        (b"/p?b=2&a=1", "ignore", "http://example.com/p"),
        (b"/p", "sort", "http://example.com/p"),
        (b"/p?", "keep", "http://example.com/p"),
    ],
)
def test_primary_key(target, mode, expected):
    assert primary_key(req(target), mode) == expected


def test_head_shares_get_key():
    assert primary_key(req(method=b"HEAD")) == primary_key(req())


@pytest.mark.parametrize(
    "reference, expected",
    [
        (b"location_target", "http://example.com/dir/location_target"),
        (b"/x?y=1", "http://example.com/x?y=1"),
        (b"http://EXAMPLE.com/z", "http://example.com/z"),
        (b"http://other.example/z", None),  # other host: never invalidated (RFC 9111 §4.4)
        (b"https://example.com/z", None),
        (b"http://[bad/", None),
    ],
)
def test_key_for_reference(reference, expected):
    assert key_for_reference(req(b"/dir/p"), reference) == expected


@pytest.mark.parametrize(
    "name, headers, expected",
    [
        (b"foo", [(b"foo", b"1, 2")], b"1, 2"),
        (b"foo", [(b"foo", b"1"), (b"foo", b"2")], b"1, 2"),  # lines combined
        (b"foo", [(b"foo", b" 1,2 ")], b"1, 2"),  # whitespace normalized
        (b"foo", [(b"foo", b"a   b")], b"a b"),
        (b"foo", [], b""),
        (b"accept-encoding", [(b"accept-encoding", b"gzip, deflate, br")], b"br"),
        (b"accept-encoding", [(b"accept-encoding", b"gzip, br;q=0")], b"gzip"),
        (b"accept-encoding", [(b"accept-encoding", b"x-gzip")], b"gzip"),
        (b"accept-encoding", [(b"accept-encoding", b"*")], b"gzip"),
        (b"accept-encoding", [(b"accept-encoding", b"deflate")], b"identity"),
        (b"accept-encoding", [], b"identity"),
        (b"accept-language", [(b"accept-language", b"en, de")], b"de,en"),
        (b"accept-language", [(b"accept-language", b" eN ,   De")], b"de,en"),
        (b":cors", [(b"origin", b"https://a.example")], b"1"),
        (b":cors", [], b""),
    ],
)
def test_normalized(name, headers, expected):
    assert normalized(headers, name) == expected


def test_normalizer_table_names_are_lower_case():
    assert all(name == name.lower() for name in VARY_NORMALIZERS)


@pytest.mark.parametrize(
    "headers, expected",
    [
        ([], ()),
        ([(b"vary", b"Foo, Bar")], (b"foo", b"bar")),
        ([(b"vary", b"foo"), (b"vary", b"FOO, baz")], (b"foo", b"baz")),
        ([(b"vary", b"*")], (b"*",)),
        ([(b"vary", b"*, *")], (b"*",)),
        ([(b"vary", b", *")], (b"*",)),
        ([(b"vary", b"")], ()),
        ([(b"vary", b""), (b"vary", b"*")], (b"*",)),
        ([(b"vary", b"Foo, *")], (b"*",)),
    ],
)
def test_vary_names(headers, expected):
    assert vary_names(headers) == expected


@pytest.mark.parametrize(
    "vary, stored_headers, new_headers, expected",
    [
        ((), [], [(b"foo", b"1")], True),
        ((b"foo",), [(b"foo", b"1")], [(b"foo", b"1")], True),
        ((b"foo",), [(b"foo", b"1")], [(b"foo", b"2")], False),
        ((b"foo",), [], [(b"foo", b"1")], False),  # stored request omitted it
        ((b"foo",), [(b"foo", b"1")], [], False),  # new request omits it
        ((b"foo", b"bar"), [(b"foo", b"1")], [(b"foo", b"1")], True),  # both omit bar
        ((b"foo",), [(b"foo", b"1"), (b"other", b"2")], [(b"foo", b"1"), (b"other", b"3")], True),
        ((b"*",), [], [], False),
        ((b":cors",), [], [(b"origin", b"https://a.example")], False),
    ],
)
def test_matches(vary, stored_headers, new_headers, expected):
    stored = variant_key(req(headers=stored_headers), vary)
    assert matches(vary, stored, req(headers=new_headers)) is expected
