"""Private files: the root is created 0700, its folders 0700 and its files 0600, whatever the umask.

Transcripts may hold secrets (prompts, tool output, keys pasted by a user), so nothing the
server writes under the root is readable by other users. Modes are passed explicitly at
creation (``os.open``/``mkdir`` modes are only ever narrowed by the umask, so 0600/0700 stay
exactly that under umask 022). SQLite creates ``-wal`` and ``-shm`` with the mode of the
database file, which :func:`ensure_file` creates 0600 before SQLite opens it.

:func:`loose_paths` finds what is not private (``doctor`` reports it, ``doctor --fix`` tightens it).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600
LOOSE = 0o077
"""Permission bits for group and others: none of them may be set under the root."""
PUBLIC_FILES = frozenset({"ed25519.pub"})
"""Files meant to be shared (a public key); their mode is not checked."""


def make_dir(path: Path) -> None:
    """Create ``path`` (and missing parents) with mode 0700; an existing folder is left as it is."""
    path.parent.mkdir(parents=True, exist_ok=True)  # parents are not ours: the usual mode
    path.mkdir(exist_ok=True, mode=DIR_MODE)


def ensure_file(path: Path) -> None:
    """Create ``path`` empty with mode 0600 unless it exists."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))
    except FileExistsError:
        pass


def create_exclusive(path: Path) -> int:
    """A new file at ``path`` (must not exist), mode 0600, open for writing."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)


def write_new(path: Path, data: bytes) -> None:
    """Write ``data`` to the new file ``path`` (mode 0600)."""
    fd = create_exclusive(path)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def _walk(root: Path) -> Iterator[tuple[Path, os.stat_result]]:
    yield root, root.lstat()
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            path = Path(entry.path)
            yield path, st
            if stat.S_ISDIR(st.st_mode):
                stack.append(path)


def loose_paths(root: Path) -> list[tuple[Path, int]]:
    """Every folder and file under ``root`` (the root too) that group or others may use: (path, mode).

    Symbolic links and the public key are skipped.
    """
    out = []
    for path, st in _walk(root):
        if stat.S_ISLNK(st.st_mode) or path.name in PUBLIC_FILES:
            continue
        mode = stat.S_IMODE(st.st_mode)
        if mode & LOOSE:
            out.append((path, mode))
    return out


def tighten(paths: list[tuple[Path, int]]) -> list[Path]:
    """Remove group and other permissions from each path; return those changed."""
    done = []
    for path, mode in paths:
        try:
            os.chmod(path, mode & ~LOOSE)
        except OSError:
            continue
        done.append(path)
    return done
