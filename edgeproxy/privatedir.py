"""Directories and files that only our user can change: the shared store's, and the control socket's directory.

Rules kept here:
- A directory of ours is a directory (never a symbolic link), owned by our uid, and writable by nobody else (no
  group or other write bit): whoever may write in it can swap its files for links or plant their own (cached
  responses, a fake control socket). Read and search bits are the caller's choice (a control socket's directory
  must be searchable by the users it admits). A file of ours keeps the same rules, and is a regular file.
- What is missing is made with ``os.mkdir`` (never ``makedirs(exist_ok=True)``, which accepts whatever another
  user made first), then what is there is ``lstat``-ed and checked, whoever made it. The directories above the
  first one we own (``/dev/shm``, ``/tmp``, ``/run``) are the system's and are not checked: ``/dev/shm`` is root's
  and world-writable, and its sticky bit is what keeps our directory in it ours.
- Files are opened with ``O_NOFOLLOW``; a new one with ``O_EXCL`` after unlinking what was there (``unlink``
  removes a link, never what it points to), so a planted link can never make us write through it.
- ``refusal`` decides (pure: an ``lstat`` result and a uid in, a reason or None out); ``ensure_dirs`` and
  ``open_file`` do the I/O and raise ``UnsafePath``, whose message is one line: the path and the reason.
"""

from __future__ import annotations

import errno
import os
import stat

DIRECTORY, FILE = "directory", "file"
_KINDS = {DIRECTORY: stat.S_ISDIR, FILE: stat.S_ISREG}


class UnsafePath(OSError):
    """A path we were to trust is not ours alone; the message names it and why (a start-up failure)."""


def refusal(st: os.stat_result, uid: int, kind: str = DIRECTORY) -> str | None:
    """Why the ``lstat`` result ``st`` is not a ``kind`` that only ``uid`` can change, or None when it is."""
    mode = st.st_mode
    if stat.S_ISLNK(mode):
        return "is a symbolic link"
    if not _KINDS[kind](mode):
        return f"is not a {kind}"
    if st.st_uid != uid:
        return f"is owned by uid {st.st_uid}, not by uid {uid} (this process)"
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"is writable by its group or others (mode {stat.S_IMODE(mode):04o})"
    return None


def check(path: str, what: str, uid: int, kind: str = DIRECTORY) -> None:
    """Raise ``UnsafePath`` unless ``path`` (not followed) is a ``kind`` only ``uid`` can change."""
    reason = refusal(os.lstat(path), uid, kind)
    if reason is not None:
        raise UnsafePath(f"{what} {path} {reason}; remove it, or give a path of our own")


def ensure_dirs(path: str, top: str, what: str, uid: int, mode: int = 0o700) -> None:
    """Make ``path`` and every directory from ``top`` down to it ours: created with ``mode`` when missing, else
    checked. The directories above ``top`` are made if missing (with ``mode``) but not checked."""
    path, top = os.path.normpath(path), os.path.normpath(top)
    below = os.path.relpath(path, top)
    if below.startswith(os.pardir):
        raise ValueError(f"{path} is not under {top}")
    parent = os.path.dirname(top)
    if parent and not os.path.isdir(parent):
        os.makedirs(parent, mode=mode, exist_ok=True)
    parts = [] if below == os.curdir else below.split(os.sep)
    for depth in range(len(parts) + 1):
        directory = os.path.join(top, *parts[:depth])
        try:
            os.mkdir(directory, mode)
        except FileExistsError:
            pass
        check(directory, what, uid)


def open_file(path: str, flags: int, what: str, uid: int, mode: int = 0o600, *, new: bool = False) -> int:
    """Open ``path`` with ``O_NOFOLLOW`` (``new``: unlink what was there, then create it with ``O_EXCL``) and
    check that the file opened is ours; the descriptor."""
    if new:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        flags |= os.O_CREAT | os.O_EXCL
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafePath(f"{what} {path} is a symbolic link; remove it") from None
        raise
    reason = refusal(os.fstat(fd), uid, FILE)
    if reason is not None:
        os.close(fd)
        raise UnsafePath(f"{what} {path} {reason}; remove it, or give a path of our own")
    return fd
