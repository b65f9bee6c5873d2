"""Shared fixtures: the demo origin (one per session) and a proxy factory that stops what it started."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import Proc, start_demo_origin, start_proxy

# Under CI=true a skip or an xfail fails the run unless tests/skipguard.py allows it.
pytest_plugins = ("tests.skipguard",)


@pytest.fixture(scope="session")
def demo_origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    origin = start_demo_origin(tmp_path_factory.mktemp("origin"))
    yield origin
    origin.stop()


@pytest.fixture
def proxy_factory(tmp_path: Path) -> Iterator[Callable[..., Proc]]:
    started: list[Proc] = []

    def factory(origin_url: str, **overrides: Any) -> Proc:
        workdir = tmp_path / f"proxy{len(started)}"
        workdir.mkdir()
        proxy = start_proxy(origin_url, workdir, **overrides)
        started.append(proxy)
        return proxy

    yield factory
    for proxy in started:
        proxy.stop()


@pytest.fixture
def proxy(proxy_factory: Callable[..., Proc], demo_origin: Proc) -> Proc:
    """A proxy with default settings in front of the demo origin."""
    return proxy_factory(demo_origin.url)
