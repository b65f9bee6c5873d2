"""Purge selectors: normalization, parsing and its error messages, matches() against the indexes,
and the sorted-key structure behind prefix purges."""

from __future__ import annotations

import random
from typing import Any

import pytest

from edgeproxy.cache.purge import (
    PurgeAll,
    PurgeHost,
    PurgeIndex,
    PurgePrefix,
    PurgeRegex,
    PurgeTag,
    PurgeURL,
    Selector,
    SortedPaths,
    fallback_of,
    host_of_pattern,
    may_match,
    normalize_url,
    parse_selector,
    parse_words,
)
from edgeproxy.cache.store import Store
from tests.unit.test_store import make_entry


@pytest.mark.parametrize(
    ("url", "key"),
    [
        ("HTTP://Example.COM:80/a?b=1#frag", "http://example.com/a?b=1"),
        ("https://a.example:443", "https://a.example/"),
        ("https://a.example:8443/x", "https://a.example:8443/x"),
        ("http://a.example:443/", "http://a.example:443/"),
        ("https://a.example?q=1", "https://a.example/?q=1"),
        ("http://[::1]:80/x", "http://[::1]/x"),
        ("https://A.example/Path/%7Efoo", "https://a.example/Path/%7Efoo"),
        ("http://a.example/p?", "http://a.example/p"),
    ],
)
def test_normalize_url(url: str, key: str) -> None:
    assert normalize_url(url) == key
    assert PurgeURL(url).url == key


@pytest.mark.parametrize(
    ("url", "mode", "key"),
    [
        ("https://a.example/p?b=2&a=1", "sort", "https://a.example/p?a=1&b=2"),
        ("https://a.example/p?b=2&a=1", "ignore", "https://a.example/p"),
    ],
)
def test_normalize_url_query_modes(url: str, mode: str, key: str) -> None:
    assert normalize_url(url, mode) == key


@pytest.mark.parametrize(
    "url",
    [
        "ftp://a.example/x",
        "/relative/path",
        "a.example/x",
        "http://user@a.example/x",
        "http://a b/x",
        "http:///x",
        "http://a.example/x y",
        "http://exa%mple/",
        "http://a.example/\x00",
    ],
)
def test_bad_urls_name_the_field(url: str) -> None:
    with pytest.raises(ValueError, match="^url: "):
        PurgeURL(url)


def test_bad_query_mode() -> None:
    with pytest.raises(ValueError, match="^query_mode: "):
        normalize_url("https://a.example/", "shuffle")


@pytest.mark.parametrize(
    ("pattern", "prefix"),
    [("/pictures/*", "/pictures/"), ("/*", "/"), ("/a", "/a"), ("/pictures/cat.jpg", "/pictures/cat.jpg")],
)
def test_prefix_patterns(pattern: str, prefix: str) -> None:
    assert PurgePrefix(pattern).prefix == prefix


@pytest.mark.parametrize(
    ("pattern", "host", "field"),
    [
        ("pictures/*", None, "prefix"),
        ("/a*b", None, "prefix"),
        ("/**", None, "prefix"),
        ("*", None, "prefix"),
        ("/a b", None, "prefix"),
        ("/a", "bad/host", "host"),
        ("/a", "", "host"),
    ],
)
def test_bad_prefixes(pattern: str, host: str | None, field: str) -> None:
    with pytest.raises(ValueError, match=f"^{field}: "):
        PurgePrefix(pattern, host)


def test_hosts_are_lower_cased() -> None:
    assert PurgeHost("A.Example:8443").host == "a.example:8443"
    assert PurgePrefix("/x", "A.EXAMPLE").host == "a.example"


@pytest.mark.parametrize("tags", [[], [""], ["a b"], ["a,b"], "img", [1]])
def test_bad_tags(tags: Any) -> None:
    with pytest.raises(ValueError, match="^tags: "):
        PurgeTag(tags)


@pytest.mark.parametrize("pattern", ["(", "[a-", "*x", "", "x" * 1025])
def test_bad_regex_is_named(pattern: str) -> None:
    with pytest.raises(ValueError, match="^pattern: ") as caught:
        PurgeRegex(pattern)
    if pattern and len(pattern) < 10:
        assert repr(pattern) in str(caught.value)


@pytest.mark.parametrize(
    ("fields", "selector"),
    [
        ({"type": "url", "url": "HTTPS://A.example/x"}, PurgeURL("https://a.example/x")),
        ({"type": "prefix", "prefix": "/img/*"}, PurgePrefix("/img/")),
        ({"type": "prefix", "prefix": "/img/*", "host": "A.example"}, PurgePrefix("/img/", "a.example")),
        ({"type": "prefix", "prefix": "/img/*", "host": None}, PurgePrefix("/img/")),
        ({"type": "host", "host": "a.example"}, PurgeHost("a.example")),
        ({"type": "tag", "tags": ["a", "b"]}, PurgeTag(frozenset({"a", "b"}))),
        ({"type": "tag", "tags": "a, b c"}, PurgeTag(frozenset({"a", "b", "c"}))),
        ({"type": "regex", "pattern": r"\.css$"}, PurgeRegex(r"\.css$")),
        ({"type": "all"}, PurgeAll()),
    ],
)
def test_parse_selector(fields: dict[str, object], selector: Selector) -> None:
    assert parse_selector(fields) == selector


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({}, "^type: expected one of url, prefix, host, tag, regex, all, got None"),
        ({"type": "ban"}, "^type: "),
        ({"type": 3}, "^type: "),
        ({"type": "url"}, "^url: required for a url purge"),
        ({"type": "url", "url": None}, "^url: required"),
        ({"type": "url", "url": 5}, "^url: expected a string, got int"),
        ({"type": "url", "url": "https://a.example/", "host": "a.example"}, "^host: unknown field for a url purge"),
        ({"type": "all", "soft": True}, "^soft: unknown field"),
        ({"type": "tag", "tags": {"a": 1}}, "^tags: expected a list of strings"),
        ({"type": "tag", "tags": ""}, "^tags: at least one tag"),
        ({"type": "prefix", "prefix": "/a*b"}, "^prefix: "),
        ({"type": "regex", "pattern": "("}, "^pattern: bad regex"),
    ],
)
def test_parse_selector_errors(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_selector(fields)


@pytest.mark.parametrize(
    ("words", "selector"),
    [
        (["url", "https://a.example/x"], PurgeURL("https://a.example/x")),
        (["prefix", "/img/*"], PurgePrefix("/img/")),
        (["prefix", "/img/*", "a.example"], PurgePrefix("/img/", "a.example")),
        (["host", "a.example"], PurgeHost("a.example")),
        (["tag", "a", "b"], PurgeTag(frozenset({"a", "b"}))),
        (["regex", "^https://"], PurgeRegex("^https://")),
        (["all"], PurgeAll()),
    ],
)
def test_parse_words(words: list[str], selector: Selector) -> None:
    assert parse_words(words) == selector


@pytest.mark.parametrize(
    ("words", "message"),
    [
        ([], "^type: "),
        (["everything"], "^type: "),
        (["url"], "^url: required"),
        (["tag"], "^tags: required"),
        (["host", "a.example", "b.example"], "^host: too many arguments"),
        (["all", "now"], "^all: too many arguments"),
    ],
)
def test_parse_words_errors(words: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_words(words)


def _population(rng: random.Random) -> list[Any]:
    hosts = ["a.example", "b.example", "b.example:8443", "img.a.example"]
    paths = ["/", "/img", "/img/", "/img/1.jpg", "/img/2.jpg?w=100", "/imgx/a", "/css/site.css", "/i"]
    out = []
    for _ in range(120):
        variant = (bytes([rng.randrange(3)]),)
        tags = rng.sample(["img", "css", "home", "x"], rng.randrange(3))
        host, path = rng.choice(hosts), rng.choice(paths)
        out.append(make_entry(path=path, host=host, scheme=rng.choice(["http", "https"]), variant=variant, tags=tags))
    return out


SELECTORS: list[Selector] = [
    PurgeURL("https://a.example/img/1.jpg"),
    PurgeURL("http://b.example:8443/img"),
    PurgePrefix("/img"),
    PurgePrefix("/img/*", "a.example"),
    PurgePrefix("/*", "b.example:8443"),
    PurgePrefix("/i", "img.a.example"),
    PurgePrefix("/nothing"),
    PurgeHost("b.example"),
    PurgeHost("c.example"),
    PurgeTag(frozenset({"img", "home"})),
    PurgeTag(frozenset({"x"})),
    PurgeRegex(r"\.jpg"),
    PurgeRegex(r"^http://a\.example/"),
    PurgeAll(),
]


@pytest.mark.parametrize("soft", [True, False])
@pytest.mark.parametrize("selector", SELECTORS, ids=repr)
def test_indexes_agree_with_matches(selector: Selector, soft: bool) -> None:
    """The store selects through its indexes; ``matches`` is the reference (the purge log uses it)."""
    store = Store(10**9)
    stored = [e for e in _population(random.Random(7)) if store.put(e)]
    stored = [e for e in stored if e in store.get(e.primary_key)]  # later puts replaced some
    expected = {id(e) for e in stored if selector.matches(e)}
    assert store.purge(selector, soft=soft, now=0.0) == len(expected)
    if soft:
        assert {id(e) for e in stored if e.invalidated} == expected
    else:
        assert {id(e) for e in stored if e not in store.get(e.primary_key)} == expected
        assert store.stats().bytes == sum(e.size for e in stored) - 100 * len(expected)
        assert store.stats().entries == len(stored) - len(expected)


def test_index_take_forgets_keys_and_hosts() -> None:
    index = PurgeIndex()
    keys = [
        ("https://a.example/x/1", "a.example"),
        ("http://a.example/x/2", "a.example"),
        ("https://a.example/y", "a.example"),
    ]
    keys += [("https://b.example/x/1", "b.example")]
    for key, host in keys:
        index.add_key(key, host)
    assert sorted(index.take_keys_with_prefix("/x/", "a.example")) == ["http://a.example/x/2", "https://a.example/x/1"]
    assert index.keys_with_prefix("/", None) == ["https://a.example/y", "https://b.example/x/1"]
    assert sorted(index.take_keys_with_prefix("/", None)) == ["https://a.example/y", "https://b.example/x/1"]
    assert (index._hosts, len(index._keys)) == ({}, 0)


def test_index_forgets_everything() -> None:
    index = PurgeIndex()
    entries = _population(random.Random(3))
    for n, e in enumerate(entries):
        index.add_key(f"{e.primary_key}#{n}", e.host)
        index.add_tags(e)
    for n, e in enumerate(entries):
        index.discard_key(f"{e.primary_key}#{n}", e.host)
        index.discard_tags(e)
    assert index.keys_with_prefix("/", None) == []
    assert index.take_keys_with_prefix("/", None) == []
    assert index.by_tags(["img", "css", "home", "x"]) == []
    assert (index._hosts, index._tags, len(index._keys)) == ({}, {}, 0)


@pytest.mark.parametrize("seed", range(4))
def test_sorted_paths_against_a_sorted_list(seed: int) -> None:
    rng = random.Random(seed)
    paths = SortedPaths(load=3)  # tiny chunks: every operation crosses chunk boundaries
    model: set[str] = set()
    for _ in range(600):
        item = "/" + "".join(rng.choice("ab/") for _ in range(rng.randrange(5)))
        if item in model and rng.random() < 0.6:
            paths.remove(item)
            model.discard(item)
        elif item not in model:
            paths.add(item)
            model.add(item)
        prefix = "/" + "".join(rng.choice("ab/") for _ in range(rng.randrange(3)))
        matching = sorted(s for s in model if s.startswith(prefix))
        assert paths.with_prefix(prefix) == matching
        if rng.random() < 0.05:
            assert paths.pop_prefix(prefix) == matching
            model -= set(matching)
            assert paths.with_prefix("") == sorted(model)
        assert len(paths) == len(model)
    assert paths.with_prefix("") == sorted(model)


# --- RE2: what it refuses and why, what a pattern costs, which host it names --------------------------------

def keyed(key: str) -> Any:
    scheme, _, rest = key.partition("://")
    host, slash, path = rest.partition("/")
    return make_entry(slash + path, host, scheme)


@pytest.mark.parametrize(("pattern", "reason"), [
    (r"(a+)\1", "backreferences are not supported (RE2 syntax)"),
    (r"(?P<x>a)(?P=x)", "backreferences are not supported (RE2 syntax)"),
    (r"/a(?=b)", "lookahead and lookbehind are not supported (RE2 syntax)"),
    (r"/a(?!b)", "lookahead and lookbehind are not supported (RE2 syntax)"),
    (r"(?<=/)a", "lookahead and lookbehind are not supported (RE2 syntax)"),
    (r"(?<!/)a", "lookahead and lookbehind are not supported (RE2 syntax)"),
    (r"(?>a+)b", "atomic groups are not supported (RE2 syntax)"),
    (r"a++b", "possessive repeats are not supported (RE2 syntax)"),
    (r"\.js\Z", r"\Z is not supported (RE2 syntax: use \z)"),
    (r"(\w+\.?){1000}x", "too complex for RE2's bound (8005 instructions, at most 2000)"),
    (r"(\pL|\d){500}x", "too large for RE2's memory bound (1024 KiB)"),
    (r"a{1001}", "bad regex 'a{1001}': invalid repetition size: {1001}"),
])
def test_re2_refusals_say_why(pattern: str, reason: str) -> None:
    with pytest.raises(ValueError) as caught:
        PurgeRegex(pattern)
    assert str(caught.value).startswith(f"pattern: {reason}")


@pytest.mark.parametrize(("pattern", "key", "found"), [
    (r"/static/(\w+\.?)*\.min\.js$", "http://h/static/" + "a" * 5000 + "!", False),  # linear: no backtracking
    (r"/static/(\w+\.?)*\.min\.js$", "http://h/static/app.min.js", True),
    (r"\.js\z", "http://h/a.js", True),
    (r"(?i)^HTTPS://A\.EXAMPLE/", "https://a.example/x", True),
    (r"caf\xe9", "http://h/caf\xe9", True),  # keys are latin-1 text: matched by code point, as Python's re did
])
def test_re2_search(pattern: str, key: str, found: bool) -> None:
    assert PurgeRegex(pattern).matches(keyed(key)) is found


@pytest.mark.parametrize(("pattern", "host"), [
    (r"^https://a\.example/static/", "a.example"),
    (r"^https?://a\.example/", "a.example"),
    (r"\Ahttps:\/\/a\.example:8080\/", "a.example:8080"),
    (r"^https://a\.example$", "a.example"),
    (r"^https://a\.example/(js|css)/", "a.example"),
    (r"^https://a\.example/[|]", "a.example"),
    (r"^https://a.example/", None),  # an unescaped dot: any character
    (r"https://a\.example/", None),  # not anchored: http://b/?u=https://a.example/ too
    (r"^https://a\.example/x|/y", None),  # an alternative at the top: any host
    (r"^https://a\.example.*", None),  # a.example.b.example too
    (r"^(http|https)://a\.example/", None),  # plainly written only
    (r"(?i)^https://a\.example/", None),
    (r"\.js$", None),
])
def test_the_host_a_pattern_names(pattern: str, host: str | None) -> None:
    assert host_of_pattern(pattern) == host
    assert fallback_of(PurgeRegex(pattern)) == (PurgeAll() if host is None else PurgeHost(host))


def test_the_purge_log_counts_a_costly_regex_on_a_long_key_as_a_match() -> None:
    costly = PurgeRegex(r"(\w+\.?){200}x")  # ~1,600 instructions
    short, long = keyed("http://h/" + "a" * 50), keyed("http://h/" + "a" * 4000)
    assert not costly.matches(short) and not may_match(costly, short)
    assert not costly.matches(long) and may_match(costly, long)  # refusing a put is a miss; waiting is a stall
    assert not may_match(PurgeRegex(r"\.js$"), long)
