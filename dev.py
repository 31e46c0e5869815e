#!/usr/bin/env python3
"""Bootstrap for a fresh clone: creates .venv, installs threadloom, then runs it.

    python3 dev.py serve [threadloom serve options]   # the MCP server (stdio by default)
    python3 dev.py test [pytest options]              # the whole test suite
    python3 dev.py run COMMAND [ARGS]                  # anything inside the venv

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


def ensure_venv() -> None:
    if sys.version_info < (3, 11):
        sys.exit(f"dev.py: threadloom needs Python >= 3.11; this is {sys.version.split()[0]}")
    want = hashlib.sha256((HERE / "pyproject.toml").read_bytes()).hexdigest()
    if PY.exists() and STAMP.exists() and STAMP.read_text() == want:
        return
    if not PY.exists():
        say(f"creating {VENV}")
        subprocess.check_call([sys.executable, "-m", "venv", str(VENV)], stdout=sys.stderr)
    say("installing threadloom and its test dependencies (once)")
    subprocess.check_call(
        [str(PY), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-e", f"{HERE}[test]"],
        stdout=sys.stderr,
    )
    STAMP.write_text(want)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"serve", "test", "run"}:
        print(__doc__, file=sys.stderr)
        return 2
    ensure_venv()
    cmd, rest = argv[0], argv[1:]
    if cmd == "serve":
        os.execv(str(PY), [str(PY), "-m", "threadloom", "serve", *rest])
    if cmd == "run":
        exe = BIN / rest[0] if (BIN / rest[0]).exists() else rest[0]
        os.execv(str(exe), [str(exe), *rest[1:]])
    if not rest:  # the whole suite: lint and format checks first (they take a second)
        for check in (["ruff", "check", "."], ["ruff", "format", "--check", "."]):
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
