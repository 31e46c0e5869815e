"""What an installed client runs: an absolute threadloom command and the shared per-user root.

The command must work from any directory and without the user's PATH or virtualenv being
active, since MCP clients start servers from wherever they please. Preference:

1. the ``threadloom`` console script beside the running interpreter (the same
   environment: a venv, pipx or ``uv tool`` install), as an absolute path;
2. otherwise that interpreter itself with ``-m threadloom``.

When the running package was found only through ``$PYTHONPATH`` (a source checkout), the
entry carries that one directory in ``env`` so the client's process finds it too.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

APP_NAME = "threadloom"


def default_root() -> Path:
    """The per-user data directory every installed client shares (platformdirs decides where)."""
    import platformdirs

    return Path(platformdirs.user_data_dir(APP_NAME, appauthor=False))


@dataclass(frozen=True)
class Launcher:
    """An absolute command line prefix that runs the ``threadloom`` CLI."""

    argv: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)

    @property
    def command(self) -> str:
        return self.argv[0]

    def args(self, *rest: str) -> list[str]:
        return [*self.argv[1:], *rest]

    def shell(self, *rest: str) -> str:
        """One command string (for hook settings, which take a shell command)."""
        words = [*self.argv, *rest]
        line = subprocess.list2cmdline(words) if os.name == "nt" else shlex.join(words)
        if self.env and os.name != "nt":
            line = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env.items()) + " " + line
        return line


def find_launcher() -> Launcher:
    """The launcher for the threadloom that is running now."""
    import threadloom

    python = Path(sys.executable).absolute()  # not resolved: a venv's python is a symlink
    package_parent = Path(threadloom.__file__).resolve().parent.parent
    from_pythonpath = any(
        _same(Path(p), package_parent) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p
    )
    if from_pythonpath:
        return Launcher((str(python), "-m", APP_NAME), {"PYTHONPATH": str(package_parent)})
    script = python.parent / ("threadloom.exe" if os.name == "nt" else "threadloom")
    if script.is_file() and os.access(script, os.X_OK):
        return Launcher((str(script),))
    return Launcher((str(python), "-m", APP_NAME))


def _same(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b
    except OSError:
        return False


def is_threadloom_command(words: list[str]) -> bool:
    """Whether a command line (split into words) runs threadloom: ``.../threadloom ...`` or
    ``python -m threadloom ...`` (leading ``VAR=value`` words are skipped)."""
    words = [w for w in words if not _is_assignment(w)]
    if not words:
        return False
    name = Path(words[0]).name.lower()
    if name in {"threadloom", "threadloom.exe"}:
        return True
    return any(a == "-m" and b == APP_NAME for a, b in zip(words, words[1:]))


def _is_assignment(word: str) -> bool:
    head, eq, _ = word.partition("=")
    return bool(eq) and head.isidentifier()
