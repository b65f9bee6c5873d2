"""Purge selectors, their parsing, and the secondary indexes that answer them without scanning.

Rules kept here:
- A selector is a frozen, validated value: constructing one normalizes it (URL scheme and host
  lower-cased, default port dropped; Azure-style ``/pictures/*`` prefixes; regexes compiled) or raises
  ``ValueError`` whose message starts with the offending field name, so the control socket can answer
  with it unchanged.
- ``matches(entry)`` answers for one entry (the store's purge-generation log uses it); the indexes
  answer for the whole store. Both must agree; tests/unit/test_purge.py checks that.
- URL, host, tag and prefix purges touch only matching entries: the store looks URLs up by primary
  key; ``PurgeIndex`` keeps the primary keys sorted (a host or a prefix is a bisect plus a walk over
  the matches) and tag -> entries. Regex and "all" purges scan (regex necessarily: a pattern cannot
  be indexed).
- The purge URL is normalized like the cache key ``{scheme}://{host}{target}``: scheme and host
  lower-case, ``:80``/``:443`` dropped for http/https, fragment dropped, empty target = ``/``, then
  cache/key.py's ``key_for`` (an empty query drops its ``?``). The path is kept byte for byte (no
  percent-decoding): it must equal what clients sent.
- Host matching is exact on the key's host (with its non-default port, if any): ``example.com`` does
  not purge ``example.com:8080``; a port-blind purge would need a second index for a rare case.
- Regexes are RE2's (google-re2): linear in the key, no backtracking, so no pattern can make one key cost
  exponential time. What RE2 lacks (backreferences, lookaround, atomic groups, possessive repeats) is refused at
  parse time with the reason (``_RE2_GAPS``), as are patterns over ``_MAX_PATTERN`` characters, over
  ``MAX_PROGRAM`` RE2 instructions (a key's cost grows with both: a long repeated group on a long key costs RE2's
  NFA a measurable fraction of a second, tests/unit/test_purge.py), or over RE2's memory bound ``_RE2_MEMORY``.
  Searched against primary keys; the shell matches a whole store off its event loop with a time budget
  (edgeproxy/purging.py), whose fallback is ``fallback_of``.
- ``may_match`` is ``matches`` for the purge log, where a put waits for the answer inside a write transaction:
  a regex whose cost on this key (instructions x bytes) is over ``LOG_MATCH_WORK`` counts as a match (refusing
  the put costs a miss; a wrong answer would be a purged object served).
Pure: no I/O, no clock, no asyncio.
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right, insort
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from edgeproxy.cache.entry import Entry
from edgeproxy.cache.key import QUERY_MODES, key_for
from edgeproxy.sites import normalize_host

try:
    import re2
except ImportError:  # the CLI may run under a bare interpreter (it needs only the standard library): see NoRegexEngine
    re2 = None

if TYPE_CHECKING:
    from edgeproxy.sites import SiteTable

_DEFAULT_PORTS: dict[str, str] = {"http": ":80", "https": ":443"}
# Registered names, IPv4, bracketed IPv6 and a port; anything else cannot be in a key the proxy built.
_HOST_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-._:[]")
_TAG_FORBIDDEN = frozenset(" ,\t\r\n\x00")
_MAX_PATTERN = 1024
MAX_PROGRAM = 2000  # RE2 instructions: a 1,000-character alternation of literal paths needs about 1,000
_RE2_MEMORY = 1 << 20  # bytes RE2 may use for one pattern's program and its DFA cache (its default is 8 MiB)
LOG_MATCH_WORK = 1 << 18  # instructions x key bytes: a few milliseconds of RE2's NFA inside a write transaction
# RE2's error, or the pattern, (a regex on "error\npattern") -> what to tell the operator: the Perl syntax RE2 lacks.
_RE2_GAPS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"invalid escape sequence: \\[1-9]|\n.*\(\?P="), "backreferences are not supported (RE2 syntax)"),
    (re.compile(r"invalid perl operator: \(\?<?[=!]"), "lookahead and lookbehind are not supported (RE2 syntax)"),
    (re.compile(r"invalid perl operator: \(\?>"), "atomic groups are not supported (RE2 syntax)"),
    (re.compile(r"bad repetition operator: [*+?]\+"), "possessive repeats are not supported (RE2 syntax)"),
    (re.compile(r"invalid escape sequence: \\Z"), "\\Z is not supported (RE2 syntax: use \\z)"),
    (re.compile(r"pattern too large"), f"too large for RE2's memory bound ({_RE2_MEMORY >> 10} KiB)"),
)
# A host named by an anchored pattern: ^ or \A, a literal scheme (https? for both), ://, a literal host, then / or the
# end. Dots must be escaped: an unescaped one matches any character, so the host would not be one host.
_HOST_PATTERN = re.compile(r"(?:\^|\\A)(?:https\?|https|http)(?::|\\:)(?:/|\\/){2}"
                           r"((?:[a-z0-9-]|\\[.\-:]|:)+)(?:/|\\/|\$)")


def _check_host(name: str, host: str, scheme: str = "") -> str:
    """The host as cache keys spell it (sites.normalize_host: the proxy's own normalization), or ValueError."""
    normalized = normalize_host(host.encode("latin-1", "replace"), scheme) if set(host.lower()) <= _HOST_CHARS else None
    if normalized is None:
        raise ValueError(f"{name}: not a valid host: {host!r}")
    return normalized


def _has_ctl_or_space(text: str) -> bool:
    return any(c <= " " or c == "\x7f" for c in text)


def normalize_url(url: str, query_mode: str = "keep") -> str:
    """``url`` (absolute http/https) as the cache's primary key, or ValueError naming ``url``.

    The key itself is built by cache/key.py's ``key_for``; ``query_mode`` is the site's (keep, sort,
    ignore), which only the caller knows: a keep-mode key re-normalized with another mode is correct.
    """
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in _DEFAULT_PORTS:
        raise ValueError(f"url: expected an absolute http:// or https:// URL, got {url!r}")
    if _has_ctl_or_space(url):
        raise ValueError(f"url: spaces or control characters in {url!r}")
    cut = min((i for i in map(rest.find, "/?#") if i >= 0), default=len(rest))
    authority, target = rest[:cut], rest[cut:].partition("#")[0]
    if "@" in authority:
        raise ValueError(f"url: userinfo is not allowed in {url!r}")
    host = _check_host("url", authority, scheme)
    if not target.startswith("/"):
        target = "/" + target
    if query_mode not in QUERY_MODES:
        raise ValueError(f"query_mode: expected one of {', '.join(QUERY_MODES)}, got {query_mode!r}")
    return key_for(scheme, host, target, query_mode)


@dataclass(frozen=True, slots=True)
class PurgeURL:
    """Every stored variant of one URL."""

    url: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "url", normalize_url(self.url))

    def matches(self, entry: Entry) -> bool:
        return entry.primary_key == self.url


@dataclass(frozen=True, slots=True)
class PurgePrefix:
    """Every target starting with ``prefix`` on ``host`` (all hosts when None); a trailing ``*`` is
    accepted and means the same thing (Azure Front Door style ``/pictures/*``, ``/*``)."""

    prefix: str
    host: str | None = None

    def __post_init__(self) -> None:
        prefix = self.prefix
        if not prefix.startswith("/"):
            raise ValueError(f"prefix: must start with '/', got {prefix!r}")
        if "*" in prefix[:-1]:
            raise ValueError(f"prefix: '*' is only allowed at the end, got {prefix!r}")
        if _has_ctl_or_space(prefix):
            raise ValueError(f"prefix: spaces or control characters in {prefix!r}")
        object.__setattr__(self, "prefix", prefix.removesuffix("*"))
        if self.host is not None:
            object.__setattr__(self, "host", _check_host("host", self.host))

    def matches(self, entry: Entry) -> bool:
        # The key's target, not entry.path: under a site's query mode (sort, ignore) only the key is what the
        # sorted index holds, and the two must agree.
        key = entry.primary_key
        target = key[key.index("/", key.index("://") + 3):]
        return (self.host is None or entry.host == self.host) and target.startswith(self.prefix)


@dataclass(frozen=True, slots=True)
class PurgeHost:
    """Everything stored for one host."""

    host: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "host", _check_host("host", self.host))

    def matches(self, entry: Entry) -> bool:
        return entry.host == self.host


@dataclass(frozen=True, slots=True)
class PurgeTag:
    """Every entry carrying any of ``tags`` (Surrogate-Key / Cache-Tag values)."""

    tags: frozenset[str]

    def __post_init__(self) -> None:
        if isinstance(self.tags, str):  # a lone string would silently become a set of characters
            raise ValueError("tags: expected a collection of tags, got a string")
        tags = frozenset(self.tags)
        if not tags:
            raise ValueError("tags: at least one tag is required")
        for tag in tags:
            if not isinstance(tag, str) or not tag or not _TAG_FORBIDDEN.isdisjoint(tag):
                raise ValueError(f"tags: not a valid tag: {tag!r}")
        object.__setattr__(self, "tags", tags)

    def matches(self, entry: Entry) -> bool:
        return not self.tags.isdisjoint(entry.tags)


class NoRegexEngine(ImportError):
    """google-re2 is not installed in this interpreter: only the CLI may run without it (the server depends on it),
    and it then leaves the pattern to the server's check."""


def compile_regex(pattern: str) -> tuple[Any, int]:
    """``pattern`` compiled by RE2 and its size in instructions, or ValueError naming ``pattern`` and the reason."""
    if not pattern or len(pattern) > _MAX_PATTERN:
        raise ValueError(f"pattern: expected 1 to {_MAX_PATTERN} characters, got {len(pattern)}")
    if re2 is None:
        raise NoRegexEngine("pattern: google-re2 is not installed here")
    options = re2.Options()
    options.max_mem = _RE2_MEMORY
    options.log_errors = False  # the reason goes to the operator, not to stderr
    try:
        compiled = re2.compile(pattern, options)
    except re2.error as exc:
        message = exc.args[0].decode("utf-8", "replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        gap = next((why for found, why in _RE2_GAPS if found.search(f"{message}\n{pattern}")), None)
        raise ValueError(f"pattern: {gap}: {pattern!r}" if gap else f"pattern: bad regex {pattern!r}: {message}") \
            from None
    program = int(compiled._regexp.ProgramSize())  # the wrapper's RE2 object: RE2::ProgramSize
    if program > MAX_PROGRAM:
        raise ValueError(f"pattern: too complex for RE2's bound ({program} instructions, at most {MAX_PROGRAM}): "
                         f"{pattern!r}")
    return compiled, program


def host_of_pattern(pattern: str) -> str | None:
    """The one host every key ``pattern`` finds is on, when the pattern says so plainly (anchored, literal scheme
    and host, no alternative at its top level), else None: it may find keys on any host."""
    found = _HOST_PATTERN.match(pattern)
    if found is None or _top_level_alternation(pattern):
        return None
    try:
        return _check_host("host", found.group(1).replace("\\", ""))
    except ValueError:
        return None


def _top_level_alternation(pattern: str) -> bool:
    depth, i, in_class = 0, 0, False
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            i += 1
        elif in_class:
            in_class = c != "]"
        elif c == "[":
            in_class = True
            i += 2 if pattern[i + 1:i + 3] == "^]" else 1 if pattern[i + 1:i + 2] == "]" else 0  # a leading ]
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        elif c == "|" and depth == 0:
            return True
        i += 1
    return False


@dataclass(frozen=True, slots=True)
class PurgeRegex:
    """Every primary key in which ``pattern`` is found (RE2's search)."""

    pattern: str
    compiled: Any = field(init=False, repr=False, compare=False)
    program: int = field(init=False, repr=False, compare=False)  # RE2 instructions: a key costs about program x bytes

    def __post_init__(self) -> None:
        compiled, program = compile_regex(self.pattern)
        object.__setattr__(self, "compiled", compiled)
        object.__setattr__(self, "program", program)

    def matches(self, entry: Entry) -> bool:
        return self.compiled.search(entry.primary_key) is not None


@dataclass(frozen=True, slots=True)
class PurgeAll:
    """The whole store."""

    def matches(self, entry: Entry) -> bool:
        return True


Selector = PurgeURL | PurgePrefix | PurgeHost | PurgeTag | PurgeRegex | PurgeAll


def may_match(selector: Selector, entry: Entry) -> bool:
    """``selector.matches(entry)``, except that a regex too costly on this key (``LOG_MATCH_WORK``) says yes."""
    if isinstance(selector, PurgeRegex) and selector.program * len(entry.primary_key) > LOG_MATCH_WORK:
        return True
    return selector.matches(entry)


def walks(selector: Selector, soft: bool) -> bool:
    """Whether purging ``selector`` visits every key, as no index answers it: a regex, and a soft "all" (a hard one
    drops everything at once). A store adds its own (shared/store.py: a prefix on every host)."""
    return isinstance(selector, PurgeRegex) or (isinstance(selector, PurgeAll) and soft)


class KeyProbe:
    """What ``matches`` reads of an entry, from its primary key alone: enough for the kinds a walk applies (regex,
    all, prefix), which decide by key, so every variant of a key shares the answer."""

    __slots__ = ("primary_key", "host", "tags")

    def __init__(self, key: str) -> None:
        self.primary_key = key
        self.host = key.partition("://")[2].partition("/")[0]
        self.tags: frozenset[str] = frozenset()


def fallback_of(selector: PurgeRegex) -> PurgeHost | PurgeAll:
    """What to soft-purge instead of a regex that could not be matched in time: its host, else everything."""
    host = host_of_pattern(selector.pattern)
    return PurgeAll() if host is None else PurgeHost(host)

# kind -> (selector class, its fields in positional order, how many are required).
KINDS: dict[str, tuple[Any, tuple[str, ...], int]] = {
    "url": (PurgeURL, ("url",), 1),
    "prefix": (PurgePrefix, ("prefix", "host"), 1),
    "host": (PurgeHost, ("host",), 1),
    "tag": (PurgeTag, ("tags",), 1),
    "regex": (PurgeRegex, ("pattern",), 1),
    "all": (PurgeAll, (), 0),
}


def _field_value(name: str, value: object) -> object:
    """Tags may come as a list or as one space/comma separated string; every other field is a string."""
    if name == "tags":
        if isinstance(value, str):
            return value.replace(",", " ").split()
        if isinstance(value, list | tuple) and all(isinstance(t, str) for t in value):
            return value
        raise ValueError(f"tags: expected a list of strings or a string, got {type(value).__name__}")
    if not isinstance(value, str):
        raise ValueError(f"{name}: expected a string, got {type(value).__name__}")
    return value


def parse_selector(fields: Mapping[str, object]) -> Selector:
    """A selector from JSON-ish fields: ``{"type": "prefix", "prefix": "/img/*", "host": "a.example"}``.

    Unknown or missing fields and bad values raise ValueError naming the field.
    """
    kind = fields.get("type")
    if not isinstance(kind, str) or kind not in KINDS:
        raise ValueError(f"type: expected one of {', '.join(KINDS)}, got {kind!r}")
    cls, names, required = KINDS[kind]
    for name in fields:
        if name != "type" and name not in names:
            raise ValueError(f"{name}: unknown field for a {kind} purge")
    for name in names[:required]:
        if fields.get(name) is None:
            raise ValueError(f"{name}: required for a {kind} purge")
    args = {n: _field_value(n, fields[n]) for n in names if fields.get(n) is not None}
    selector: Selector = cls(**args)
    return selector


def site_purge_url(sites: SiteTable, selector: PurgeURL) -> PurgeURL:
    """The purge URL shaped by its site's query mode, as the exchange shapes the keys it stores.

    The control grammar has no site table, so it normalizes in "keep" mode; a site with ``query = "sort"``
    or ``"ignore"`` stores other keys (``?b=2&a=1`` is stored as ``?a=1&b=2``) and would never match.
    """
    host = selector.url.partition("://")[2].partition("/")[0]
    site = sites.match(host)
    mode = "keep" if site is None else site.query
    return selector if mode == "keep" else PurgeURL(normalize_url(selector.url, mode))


def parse_words(words: Sequence[str]) -> Selector:
    """A selector from command words: ``url URL``, ``prefix /img/* [HOST]``, ``host HOST``,
    ``tag TAG...``, ``regex PATTERN``, ``all``."""
    if not words:
        raise ValueError(f"type: expected one of {', '.join(KINDS)}, got nothing")
    kind, args = words[0], list(words[1:])
    if kind not in KINDS:
        raise ValueError(f"type: expected one of {', '.join(KINDS)}, got {kind!r}")
    _, names, required = KINDS[kind]
    if kind == "tag":
        return parse_selector({"type": kind, "tags": args} if args else {"type": kind})
    if len(args) > len(names):
        raise ValueError(f"{kind}: too many arguments ({len(args)}, at most {len(names)})")
    if len(args) < required:
        raise ValueError(f"{names[len(args)]}: required for a {kind} purge")
    return parse_selector({"type": kind, **dict(zip(names, args, strict=False))})


class SortedPaths:
    """Distinct strings kept sorted in chunks of at most ``2 * load``.

    One flat sorted list would make every insort an O(n) memmove (about 0.5 ms at a million keys);
    chunks keep insert and remove at O(log n + load) and a prefix query at a bisect plus the matches
    (the idea of the sortedcontainers package, without the dependency). Chunks that shrink are not
    merged, only freed when empty: a few half-empty chunks cost less than rebalancing on every remove.
    """

    __slots__ = ("_chunks", "_maxes", "_load")

    def __init__(self, load: int = 512) -> None:
        self._chunks: list[list[str]] = []
        self._maxes: list[str] = []
        self._load = load

    def __len__(self) -> int:
        return sum(map(len, self._chunks))

    def add(self, item: str) -> None:
        maxes = self._maxes
        if not maxes:
            self._chunks.append([item])
            maxes.append(item)
            return
        i = bisect_left(maxes, item)
        if i == len(maxes):  # beyond the current maximum: append to the last chunk
            i -= 1
            chunk = self._chunks[i]
            chunk.append(item)
            maxes[i] = item
        else:
            chunk = self._chunks[i]
            insort(chunk, item)
        if len(chunk) > 2 * self._load:
            half = self._load
            self._chunks[i : i + 1] = [chunk[:half], chunk[half:]]
            maxes[i : i + 1] = [chunk[half - 1], chunk[-1]]

    def remove(self, item: str) -> None:
        i = bisect_left(self._maxes, item)
        chunk = self._chunks[i]
        j = bisect_left(chunk, item)
        del chunk[j]
        if not chunk:
            del self._chunks[i]
            del self._maxes[i]
        elif j == len(chunk):
            self._maxes[i] = chunk[-1]

    def after(self, item: str | None, limit: int) -> list[str]:
        """Up to ``limit`` items greater than ``item`` (all items from the first when None), in order."""
        out: list[str] = []
        chunks = self._chunks
        i = 0 if item is None else bisect_right(self._maxes, item)
        while i < len(chunks) and len(out) < limit:
            chunk = chunks[i]
            j = 0 if item is None else bisect_right(chunk, item)
            out += chunk[j:j + limit - len(out)]
            i += 1
        return out

    def with_prefix(self, prefix: str) -> list[str]:
        out: list[str] = []
        chunks = self._chunks
        for i in range(bisect_left(self._maxes, prefix), len(chunks)):
            chunk = chunks[i]
            for j in range(bisect_left(chunk, prefix), len(chunk)):
                if not chunk[j].startswith(prefix):
                    return out
                out.append(chunk[j])
        return out

    def pop_prefix(self, prefix: str) -> list[str]:
        """Remove and return the items starting with ``prefix``: one slice deletion per chunk, not one
        bisect and memmove per item (a 100k-key hard purge spent 40 % of its time in those)."""
        out: list[str] = []
        chunks, maxes = self._chunks, self._maxes
        i = bisect_left(maxes, prefix)
        while i < len(chunks):
            chunk = chunks[i]
            start = end = bisect_left(chunk, prefix)
            while end < len(chunk) and chunk[end].startswith(prefix):
                end += 1
            run_ends_here = end < len(chunk)
            out += chunk[start:end]
            del chunk[start:end]
            if chunk:
                maxes[i] = chunk[-1]
                i += 1
            else:
                del chunks[i]
                del maxes[i]
            if run_ends_here:
                break
        return out


class PurgeIndex:
    """The secondary indexes the store keeps: every primary key in sorted order, the hosts with their
    key counts, and tag -> entries.

    A key is ``{scheme}://{host}{target}`` and a host never contains ``/``, so a prefix purge on one
    host is one bisect per scheme into the sorted keys, and a host purge is the prefix ``/``. Sorting
    the keys themselves (not per-host path tables) costs one list slot per key: the strings are the
    entries' own. A host-less prefix purge does that per known host.
    """

    __slots__ = ("_keys", "_hosts", "_tags")

    def __init__(self) -> None:
        self._keys = SortedPaths()
        self._hosts: dict[str, int] = {}  # host -> number of primary keys stored for it
        self._tags: dict[str, set[Entry]] = {}

    def add_key(self, key: str, host: str) -> None:
        self._keys.add(key)
        self._hosts[host] = self._hosts.get(host, 0) + 1

    def discard_key(self, key: str, host: str) -> None:
        """Forget ``key``; it must have been added (the store guarantees it)."""
        self._keys.remove(key)
        self._forget_keys_of(host, 1)

    def _forget_keys_of(self, host: str, count: int) -> None:
        left = self._hosts[host] - count
        if left:
            self._hosts[host] = left
        else:
            del self._hosts[host]

    def add_tags(self, entry: Entry) -> None:
        for tag in entry.tags:
            self._tags.setdefault(tag, set()).add(entry)

    def discard_tags(self, entry: Entry) -> None:
        for tag in entry.tags:
            tagged = self._tags[tag]
            tagged.discard(entry)
            if not tagged:
                del self._tags[tag]

    def clear(self) -> None:
        self._keys = SortedPaths()
        self._hosts.clear()
        self._tags.clear()

    def _hosts_for(self, host: str | None) -> list[str]:
        if host is None:
            return list(self._hosts)
        return [host] if host in self._hosts else []

    def keys_with_prefix(self, prefix: str, host: str | None) -> list[str]:
        """Primary keys whose target starts with ``prefix``, on ``host`` or on any host."""
        keys = self._keys
        return [
            k
            for h in self._hosts_for(host)
            for scheme in _DEFAULT_PORTS
            for k in keys.with_prefix(f"{scheme}://{h}{prefix}")
        ]

    def take_keys_with_prefix(self, prefix: str, host: str | None) -> list[str]:
        """``keys_with_prefix``, forgetting the keys at once (a hard purge drops their entries next)."""
        taken: list[str] = []
        for h in self._hosts_for(host):
            keys = [k for scheme in _DEFAULT_PORTS for k in self._keys.pop_prefix(f"{scheme}://{h}{prefix}")]
            if keys:
                self._forget_keys_of(h, len(keys))
                taken += keys
        return taken

    def keys_after(self, key: str | None, limit: int) -> list[str]:
        """Up to ``limit`` primary keys after ``key`` in sorted order: a walk in batches that survives changes."""
        return self._keys.after(key, limit)

    def by_tags(self, tags: Iterable[str]) -> list[Entry]:
        found: set[Entry] = set()
        for tag in tags:
            found.update(self._tags.get(tag, ()))
        return list(found)
