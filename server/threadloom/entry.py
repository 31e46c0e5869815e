"""The ``threadloom`` console script: ``hook`` starts without the CLI's libraries.

A Claude Code hook runs on every tool call, so ``threadloom hook ...`` goes straight to
:mod:`threadloom.ingest.hook` (no typer, no rich, no MCP SDK); every other command is
the typer application in :mod:`threadloom.cli`.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["hook"] and not {"-h", "--help"} & set(args):
        from .ingest.hook import main as hook_main

        return hook_main(args)
    from .cli import main as cli_main

    return cli_main(args)
