"""The style guide's principle 1, checked with ``ast``: the pure core never imports the event loop, sockets, the
clock or the protocol library, and the edgeproxy modules it imports are pure too. Imports inside functions and
under ``if TYPE_CHECKING`` count the same: a lazy import still runs."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "edgeproxy"
FORBIDDEN: frozenset[str] = frozenset({"asyncio", "socket", "time", "h11", "uvloop"})
PURE_FILES: list[Path] = sorted([
    *(PACKAGE / "http").glob("*.py"),
    *(PACKAGE / "cache").glob("*.py"),
    *(PACKAGE / name for name in ("cors.py", "config.py", "sites.py", "control/protocol.py",
                                  "proxy/forwarding.py", "errors.py",  # the core raises the shared errors
                                  "fleet/journal.py", "fleet/cluster.py")),
])


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


PURE_MODULES: frozenset[str] = frozenset(map(module_name, PURE_FILES))


def imported_names(source: str, package: str) -> set[str]:
    """Every module name an import statement in ``source`` names (``from a.b import c`` names ``a.b`` and
    ``a.b.c``, since ``c`` may be a submodule); relative imports resolve against ``package``."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def imported(path: Path) -> set[str]:
    name = module_name(path)
    return imported_names(path.read_text(), name if path.name == "__init__.py" else name.rsplit(".", 1)[0])


def test_pure_files_exist():
    for path in PURE_FILES:
        assert path.is_file(), path
    assert len(PURE_FILES) >= 15


IDS = [str(path.relative_to(PACKAGE)) for path in PURE_FILES]


def is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


@pytest.mark.parametrize("path", PURE_FILES, ids=IDS)
def test_no_shell_imports(path):
    bad = sorted(name for name in imported(path) if name.split(".")[0] in FORBIDDEN)
    assert bad == [], f"{path.relative_to(ROOT)} imports {bad}"


@pytest.mark.parametrize("path", PURE_FILES, ids=IDS)
def test_edgeproxy_imports_stay_in_the_core(path):
    ours = {name for name in imported(path) if name.split(".")[0] == "edgeproxy"}
    # ``from edgeproxy.http.headers import get`` also names ``edgeproxy.http.headers.get``: only modules count
    outside = sorted(name for name in ours if is_module(name) and name not in PURE_MODULES)
    assert outside == [], f"{path.relative_to(ROOT)} imports shell modules {outside}"


@pytest.mark.parametrize(
    "source, expected",
    [
        ("import asyncio", {"asyncio"}),
        ("import time as t", {"time"}),
        ("from time import monotonic", {"time", "time.monotonic"}),
        ("def f():\n    import socket", {"socket"}),
        ("if TYPE_CHECKING:\n    import h11", {"h11"}),
        ("from . import headers", {"edgeproxy.http", "edgeproxy.http.headers"}),
        ("from ..cache.entry import Entry", {"edgeproxy.cache.entry", "edgeproxy.cache.entry.Entry"}),
    ],
)
def test_imported_names_sees_every_form(source, expected):
    assert imported_names(source, "edgeproxy.http") == expected
