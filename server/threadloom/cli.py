"""The ``threadloom`` command line: ``serve`` (stdio or HTTP) and operator commands.

Commands that do not serve MCP never import ``mcp`` (it costs ~0.7 s to import).
Errors become one line on stderr and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import anyio
import typer

from . import __version__
from .config import Settings, load_settings
from .errors import ThreadloomError

if TYPE_CHECKING:
    from .store.base import ReindexStats

app = typer.Typer(
    name="threadloom",
    help="Durable threads for LLM agents, served over MCP. Data lives in one root folder "
    "(./.threadloom, $THREADLOOM_HOME or --root).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

RootOpt = Annotated[
    Optional[Path], typer.Option("--root", help="data folder (default ./.threadloom or $THREADLOOM_HOME)")
]


def fail(message: str, code: int = 1) -> None:
    typer.echo(f"threadloom: {message}", err=True)
    raise typer.Exit(code)


def settings_from(**overrides: object) -> Settings:
    try:
        return load_settings(overrides)
    except ThreadloomError as exc:
        fail(exc.message, 2)
        raise AssertionError("unreachable") from exc


def _version(value: bool) -> None:
    if value:
        typer.echo(f"threadloom {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="print the version and exit")
    ] = False,
) -> None:
    """Durable threads for LLM agents, served over MCP."""


@app.command()
def serve(
    root: RootOpt = None,
    http: Annotated[bool, typer.Option("--http", help="serve streamable HTTP instead of stdio")] = False,
    host: Annotated[Optional[str], typer.Option(help="HTTP bind address (default 127.0.0.1)")] = None,
    port: Annotated[Optional[int], typer.Option(help="HTTP port (default 8765)")] = None,
    token: Annotated[
        Optional[str], typer.Option(help="bearer token required over HTTP (or $THREADLOOM_TOKEN)")
    ] = None,
    store: Annotated[Optional[str], typer.Option(help="store backend: sqlite (default) or memory")] = None,
    durability: Annotated[
        Optional[str], typer.Option(help="full (survives power loss, default) or normal (survives crashes)")
    ] = None,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR")] = "WARNING",
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="print the version and exit")
    ] = False,
) -> None:
    """Serve the MCP tools over stdio (the default, for MCP clients) or streamable HTTP."""
    logging.basicConfig(stream=sys.stderr, level=log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = settings_from(
        root=root, host=host, port=port, token=token, store=store, durability=durability
    )
    try:
        anyio.run(_serve, settings, http)
    except ThreadloomError as exc:
        fail(exc.message, 2)
    except KeyboardInterrupt:
        pass


async def _serve(settings: Settings, http: bool) -> None:
    from .http import check_bind, serve_http
    from .mcp_server import build_server
    from .service import ThreadService
    from .store import make_store

    if http:
        check_bind(settings.host, settings.token)
    service = ThreadService(make_store(settings), settings)
    async with service:
        server = build_server(service)
        async with anyio.create_task_group() as tg:
            tg.start_soon(service.run_sweeper)
            if http:
                logging.getLogger("threadloom").warning(
                    "serving MCP over HTTP at http://%s:%d/mcp (root %s)", settings.host, settings.port, settings.root
                )
                await serve_http(
                    server,
                    host=settings.host,
                    port=settings.port,
                    token=settings.token,
                    max_request_bytes=settings.max_request_bytes,
                )
            else:
                await server.run_stdio_async()
            tg.cancel_scope.cancel()


@app.command()
def reindex(root: RootOpt = None) -> None:
    """Bring the full-text search index up to date with the events.

    Indexes the events the index lacks (after importing old transcripts, for example)
    and removes rows whose events are gone. Idempotent: a second run has nothing to do.
    Safe while a server uses the same root.
    """
    settings = settings_from(root=root)
    if settings.store == "sqlite" and not (settings.root / "threads.db").exists():
        db = settings.root / "threads.db"
        fail(f"no threadloom database at {db} (give --root or set THREADLOOM_HOME)", 2)
    try:
        stats, seconds = anyio.run(_reindex, settings)
    except ThreadloomError as exc:
        fail(exc.message, 2)
    typer.echo(
        f"search index: {stats.added} event(s) added, {stats.removed} row(s) removed; "
        f"{stats.documents} events indexed ({seconds:.1f} s)"
    )


async def _reindex(settings: Settings) -> tuple[ReindexStats, float]:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from .service import ThreadService
    from .store import make_store

    console = Console(stderr=True)
    started = time.perf_counter()
    async with ThreadService(make_store(settings), settings) as service:
        if console.is_terminal:
            columns = (TextColumn("indexing events"), BarColumn(), MofNCompleteColumn())
            with Progress(*columns, TimeRemainingColumn(), console=console, transient=True) as bar:
                task = bar.add_task("reindex", total=None)
                stats = await service.reindex(
                    progress=lambda done, total: bar.update(task, completed=done, total=total)
                )
        else:
            stats = await service.reindex()
    return stats, time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``threadloom`` console script."""
    try:
        app(args=argv, prog_name="threadloom", standalone_mode=True)
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 1
    return 0
