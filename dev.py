#!/usr/bin/env python3
"""Bootstrap for a fresh clone: creates .venv, installs threadloom, then runs it.

    python3 dev.py serve [threadloom serve options]   # the MCP server (stdio by default)
    python3 dev.py test [pytest options]              # the whole test suite
    python3 dev.py run COMMAND [ARGS]                  # anything inside the venv, e.g. threadloom

`serve` installs threadloom alone; `test` and `run` also install the test tools (pytest, ruff,
import-linter).

Only the standard library is used here; every dependency is installed into .venv.
Install output goes to stderr, because a stdio MCP server owns stdout.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
VENV = HERE / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / ("python.exe" if os.name == "nt" else "python")
STAMP = VENV / ".threadloom-install"


def say(msg: str) -> None:
    print(f"dev.py: {msg}", file=sys.stderr, flush=True)


def installed() -> tuple[str, str]:
    """(pyproject hash, what was installed: "serve" or "test") recorded by the last install."""
    try:
        digest, _, level = STAMP.read_text().partition(" ")
    except OSError:
        return "", ""
    return digest, level or "test"  # a stamp from before levels always installed the test extra


def ensure_venv(level: str) -> None:
    """Make .venv hold threadloom (``serve``) or threadloom and its test tools (``test``).

    The stamp records the pyproject hash and the level; a test install also serves, so
    only a changed pyproject or a first ``test`` after ``serve`` installs again.
    """
    if sys.version_info < (3, 11):
        sys.exit(f"dev.py: threadloom needs Python >= 3.11; this is {sys.version.split()[0]}")
    want = hashlib.sha256((HERE / "pyproject.toml").read_bytes()).hexdigest()
    digest, have = installed() if PY.exists() else ("", "")
    if digest == want and (have == "test" or level == "serve"):
        return
    if not PY.exists():
        say(f"creating {VENV}")
        subprocess.check_call([sys.executable, "-m", "venv", str(VENV)], stdout=sys.stderr)
    target = f"{HERE}[test]" if level == "test" else str(HERE)
    what = "threadloom and its test tools" if level == "test" else "threadloom"
    say(f"installing {what} into {VENV} (once; pip's progress follows)")
    code = subprocess.call(
        [
            str(PY),
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--progress-bar",
            "on",
            "-e",
            target,
        ],
        stdout=sys.stderr,
    )
    if code != 0:
        sys.exit(f"dev.py: pip install failed (exit {code}); see its output above")
    STAMP.write_text(f"{want} {level}")
    say(f"installed {what}")


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"serve", "test", "run"}:
        print(__doc__, file=sys.stderr)
        return 2
    cmd, rest = argv[0], argv[1:]
    ensure_venv("serve" if cmd == "serve" else "test")
    if cmd == "serve":
        os.execv(str(PY), [str(PY), "-m", "threadloom", "serve", *rest])
    if cmd == "run":
        if not rest:
            say("run what? e.g. python3 dev.py run threadloom --help")
            return 2
        if (BIN / rest[0]).exists():
            os.execv(str(BIN / rest[0]), [str(BIN / rest[0]), *rest[1:]])
        os.execvp(rest[0], rest)  # not in the venv: found on PATH
    if not rest:  # the whole suite: lint, format and layer checks first (they take a few seconds)
        checks = (
            ["ruff", "check", "."],
            ["ruff", "format", "--check", "."],
            ["lint-imports", "--no-cache"],  # the layer contracts of pyproject's [tool.importlinter]
        )
        for check in checks:
            say("running " + " ".join(check))
            if subprocess.call([str(BIN / check[0]), *check[1:]], cwd=HERE) != 0:
                say(f"{' '.join(check)} failed")
                return 1
    code = subprocess.call([str(PY), "-m", "pytest", *rest], cwd=HERE)
    if code == 5:
        say("pytest collected no tests: that is a failure here")
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
