"""The ``threadloom`` command line: ``serve`` (stdio or HTTP) and operator commands.

Commands that do not serve MCP never import ``mcp`` (it costs ~0.7 s to import).
Errors become one line on stderr, ``threadloom: [rule] message``, and a non-zero exit code,
never a traceback. Every operator command takes ``--root`` and ``--json`` (machine-readable
output on stdout); human output is rich tables, progress bars appear only on a terminal.

Where each command lives, by its group in ``threadloom --help``:

    common.py     the app, shared options, output, and the one way a command runs
                  (``@command``: errors as one line; ``run``; ``open_service``)
    serve.py      serve, ui, token
    integrity.py  verify, key, trust
    inspect.py    ls, show, tail, search, fork
    move.py       export, import
    ingest.py     ingest claude-code|codex, hook claude-code
    maintain.py   gc, doctor, delete, reindex
    install.py    install, uninstall

Commands call the service (``ThreadService.for_settings``), never the store.
"""

from __future__ import annotations

from .common import Out, app, fail, main, open_service, run, settings_from

# each module registers its commands on import: this order is the order of `threadloom --help`
# (pyproject keeps ruff's import sorting off for this file)
from . import serve as serve
from . import integrity as integrity
from . import inspect as inspect
from . import move as move
from . import ingest as ingest
from . import maintain as maintain
from . import install as install

__all__ = ["app", "main", "Out", "fail", "open_service", "run", "settings_from"]
