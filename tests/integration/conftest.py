"""Fixtures of the integration tests that share them: a scripted origin serving one cacheable object route."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.scriptorigin import Reply, ScriptOrigin, Seen


def cacheable(seen: Seen) -> Reply:
    """Cacheable for an hour, with an ETag (a soft-purged copy revalidates with 304) and a tag."""
    etag = f'"{seen.target}"'
    fields = [("cache-control", "public, max-age=3600"), ("etag", etag), ("surrogate-key", "fleet-tag")]
    if seen.header("if-none-match") == etag:
        return Reply(304, fields, framing="none")
    return Reply(200, [("content-type", "text/plain"), *fields], f"{seen.target}\n".encode())


@pytest.fixture
def origin() -> Iterator[ScriptOrigin]:
    with ScriptOrigin() as o:
        o.routes["/obj"] = cacheable
        yield o
