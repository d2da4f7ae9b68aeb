"""Opening paths named by untrusted inputs (manifests, datasets): regular files only.

A manifest may name a FIFO (opening it blocks until some writer appears: a hung run), a
device (``/dev/zero`` never ends), a socket or a directory.  Each is refused before it is
opened: ``os.stat`` first (symlinks followed), then ``fstat`` on a non-blocking descriptor, so
a FIFO swapped in between cannot hang the open either.  The object returned is the file that
was checked: readers read it (libsndfile and FFmpeg take file objects), never the path again,
so a path swapped for a FIFO after the check cannot hang them.
"""

from __future__ import annotations

import os
import stat
from typing import BinaryIO

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


class RefusedFile(Exception):
    """A path that is no regular file, or cannot be opened; ``str(e)`` is the reason."""


def _kind_reason(mode: int) -> str | None:
    if stat.S_ISREG(mode):
        return None
    kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
    return f"is {kind}, not a regular file; refused without opening it"


def special_file_reason(path: str) -> str | None:
    """Why ``path`` is no regular file to read (missing, a directory, FIFO, device or socket),
    or None; asked with ``os.stat``, nothing is opened."""
    try:
        return _kind_reason(os.stat(path).st_mode)
    except FileNotFoundError:
        return "no such file"
    except ValueError:  # os.stat refuses a path with a NUL byte
        return "the path holds a NUL byte"
    except OSError as e:
        return f"cannot be read ({e.strerror or type(e).__name__})"


def open_regular(path: str) -> BinaryIO:
    """``path`` opened for binary reading; :class:`RefusedFile` unless it is a regular file.
    Read the returned object, not ``path``: only the opened descriptor was checked."""
    reason = special_file_reason(path)
    if reason:
        raise RefusedFile(reason)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise RefusedFile(f"cannot be opened ({e.strerror or type(e).__name__})") from e
    try:
        reason = _kind_reason(os.fstat(fd).st_mode)
        if not reason:
            os.set_blocking(fd, True)  # a regular file now: ordinary blocking reads
    except BaseException:
        os.close(fd)
        raise
    if reason:
        os.close(fd)
        raise RefusedFile(reason)
    f = os.fdopen(fd, "rb")
    f.raw.name = path  # as open() names its file (error messages, repr)
    return f
