"""Reading and replacing a configuration file safely: a timestamped backup beside it, an
atomic replace that keeps the file's mode, and a unified diff for --dry-run."""

from __future__ import annotations

import difflib
import os
import shutil
import tempfile
import time
from pathlib import Path

from ..errors import InvalidInputError


def real_path(path: Path) -> Path:
    """The file a (possibly symlinked) config path names, so a dotfiles symlink stays a symlink."""
    return path.resolve() if path.is_symlink() else path


def read_text(path: Path) -> str | None:
    """The file's text, or None when it does not exist."""
    try:
        with open(path, encoding="utf-8", newline="") as f:
            return f.read()
    except FileNotFoundError:
        return None
    except UnicodeDecodeError as exc:
        raise InvalidInputError(
            f"[config_malformed] {path} is not UTF-8 text ({exc.reason} at byte {exc.start}); "
            "threadloom did not change it",
            rule="config_malformed",
        ) from None
    except IsADirectoryError:
        raise InvalidInputError(
            f"[config_malformed] {path} is a directory, not a configuration file", rule="config_malformed"
        ) from None


def diff(path: Path, before: str | None, after: str) -> str:
    lines = difflib.unified_diff(
        (before or "").splitlines(keepends=True),
        after.splitlines(keepends=True),
        fromfile=str(path) if before is not None else "/dev/null",
        tofile=str(path),
    )
    return "".join(
        line if line.endswith("\n") else line + "\n\\ No newline at end of file\n" for line in lines
    )


def backup_path(path: Path) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%S")
    candidate = path.with_name(f"{path.name}.threadloom-backup-{stamp}")
    n = 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}.threadloom-backup-{stamp}-{n}")
    return candidate


def replace_file(path: Path, text: str, *, existed: bool) -> Path | None:
    """Write ``text`` to ``path`` atomically; back the old file up first. Returns the backup's path."""
    path = real_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    backup = None
    mode = None
    if existed and path.exists():
        backup = backup_path(path)
        shutil.copy2(path, backup)
        mode = path.stat().st_mode & 0o7777
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        else:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return backup
