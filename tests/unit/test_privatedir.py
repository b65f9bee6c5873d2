"""privatedir.refusal as a table of lstat results: what counts as a directory (or file) only we can change."""

from __future__ import annotations

import os
import stat

import pytest

from edgeproxy.privatedir import DIRECTORY, FILE, refusal

US, OTHER = 1000, 65534


def lstat_of(kind: int, perms: int, uid: int) -> os.stat_result:
    return os.stat_result((kind | perms, 1, 1, 1, uid, uid, 4096, 0, 0, 0))


@pytest.mark.parametrize(("kind", "perms", "uid", "expected", "reason"), [
    (stat.S_IFDIR, 0o700, US, DIRECTORY, None),
    (stat.S_IFDIR, 0o750, US, DIRECTORY, None),
    (stat.S_IFDIR, 0o755, US, DIRECTORY, None),  # readable by others is the caller's choice; writable is the danger
    (stat.S_IFDIR, 0o770, US, DIRECTORY, "is writable by its group or others (mode 0770)"),
    (stat.S_IFDIR, 0o702, US, DIRECTORY, "is writable by its group or others (mode 0702)"),
    (stat.S_IFDIR, 0o777, US, DIRECTORY, "is writable by its group or others (mode 0777)"),
    (stat.S_IFDIR, 0o1777, US, DIRECTORY, "is writable by its group or others (mode 1777)"),  # /dev/shm's kind
    (stat.S_IFDIR, 0o700, OTHER, DIRECTORY, f"is owned by uid {OTHER}, not by uid {US} (this process)"),
    (stat.S_IFDIR, 0o755, 0, DIRECTORY, f"is owned by uid 0, not by uid {US} (this process)"),
    (stat.S_IFLNK, 0o777, US, DIRECTORY, "is a symbolic link"),
    (stat.S_IFLNK, 0o777, OTHER, DIRECTORY, "is a symbolic link"),
    (stat.S_IFREG, 0o700, US, DIRECTORY, "is not a directory"),
    (stat.S_IFSOCK, 0o700, US, DIRECTORY, "is not a directory"),
    (stat.S_IFREG, 0o600, US, FILE, None),
    (stat.S_IFREG, 0o640, US, FILE, None),
    (stat.S_IFREG, 0o666, US, FILE, "is writable by its group or others (mode 0666)"),
    (stat.S_IFREG, 0o600, OTHER, FILE, f"is owned by uid {OTHER}, not by uid {US} (this process)"),
    (stat.S_IFDIR, 0o700, US, FILE, "is not a file"),
    (stat.S_IFLNK, 0o777, US, FILE, "is a symbolic link"),
])
def test_refusal(kind: int, perms: int, uid: int, expected: str, reason: str | None) -> None:
    assert refusal(lstat_of(kind, perms, uid), US, expected) == reason


def test_root_checks_its_own_directories_the_same_way() -> None:
    assert refusal(lstat_of(stat.S_IFDIR, 0o700, 0), 0) is None
    assert refusal(lstat_of(stat.S_IFDIR, 0o700, OTHER), 0) == f"is owned by uid {OTHER}, not by uid 0 (this process)"
