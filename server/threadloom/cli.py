"""The ``threadloom`` command line: ``serve`` (stdio or HTTP) and operator commands.

Commands that do not serve MCP never import ``mcp`` (it costs ~0.7 s to import).
Errors become one line on stderr and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import anyio
import typer

from . import __version__
from .config import Settings, load_settings
from .errors import ThreadloomError

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
    context_window: Annotated[
        Optional[int], typer.Option(help="default context window of new threads, in tokens (default 200000)")
    ] = None,
    trigger_threshold: Annotated[
        Optional[float], typer.Option(help="hand off when context reaches this fraction of the window (default 0.9)")
    ] = None,
    resume_ceiling_tokens: Annotated[
        Optional[int], typer.Option(help="most tokens of trailing messages a handoff carries (default 16000)")
    ] = None,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="print the version and exit")
    ] = False,
) -> None:
    """Serve the MCP tools over stdio (the default, for MCP clients) or streamable HTTP."""
    logging.basicConfig(stream=sys.stderr, level=log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = settings_from(
        root=root, host=host, port=port, token=token, store=store, durability=durability,
        context_window=context_window, trigger_threshold=trigger_threshold,
        resume_ceiling_tokens=resume_ceiling_tokens,
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
def verify(
    thread_id: Annotated[Optional[str], typer.Argument(help="the thread to verify (12 hex digits)")] = None,
    all_threads: Annotated[bool, typer.Option("--all", help="verify every thread of the root")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the report(s) as JSON on stdout")] = False,
    root: RootOpt = None,
) -> None:
    """Verify signatures, checkpoints, the hash chain and the mirror files of one thread or
    of all (--all). Exit code 0 when everything is intact, 1 when a problem was found."""
    if (thread_id is None) == (not all_threads):
        fail("give a thread id or --all (not both)", 2)
    settings = settings_from(root=root)
    if not (settings.root / "threads.db").exists():
        fail(f"no threadloom data at {settings.root} (set --root or $THREADLOOM_HOME)", 2)
    try:
        ok = anyio.run(_verify, settings, thread_id, as_json)
    except ThreadloomError as exc:
        fail(exc.message, 2)
    raise typer.Exit(0 if ok else 1)


async def _verify(settings: Settings, thread_id: str | None, as_json: bool) -> bool:
    import json

    from .service import ThreadService
    from .store import make_store

    service = ThreadService(make_store(settings), settings)
    async with service:
        if thread_id is not None:
            report = await service.verify_thread(thread_id)
            if as_json:
                typer.echo(report.model_dump_json(indent=2))
            else:
                _print_report(report)
            return report.ok
        ids = await _all_thread_ids(service)
        reports = []
        progress = _progress(len(ids)) if sys.stderr.isatty() else None
        if progress is not None:
            progress.start()
            task = progress.add_task("verifying", total=len(ids))
        try:
            for tid in ids:
                reports.append(await service.verify_thread(tid))
                if progress is not None:
                    progress.advance(task)
        finally:
            if progress is not None:
                progress.stop()
        failed = [r for r in reports if not r.ok]
        if as_json:
            out = {
                "ok": not failed,
                "threads": len(reports),
                "failed": len(failed),
                "reports": [r.model_dump(mode="json") for r in reports],
            }
            typer.echo(json.dumps(out, indent=2, ensure_ascii=False))
        else:
            for r in failed:
                _print_report(r)
            typer.echo(f"{len(reports)} thread(s) verified: {len(reports) - len(failed)} intact, {len(failed)} with problems")
        return not failed


async def _all_thread_ids(service: object) -> list[str]:
    from .service import ThreadService

    assert isinstance(service, ThreadService)
    ids: list[str] = []
    cursor = None
    while True:
        page = await service.list_threads(limit=200, cursor=cursor)
        ids += [t.thread_id for t in page.threads]
        if page.next_cursor is None:
            return ids
        cursor = page.next_cursor


def _progress(total: int) -> object:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=Console(stderr=True), transient=True,
    )


def _print_report(report: object) -> None:
    from .verify import VerifyReport

    assert isinstance(report, VerifyReport)
    if report.ok:
        typer.echo(
            f"{report.thread_id}: ok ({report.events} events, {report.checkpoints} checkpoints, "
            f"files {'checked' if report.files_checked else 'not kept'})"
        )
        return
    first = f", first bad line {report.first_bad_line}" if report.first_bad_line is not None else ""
    typer.echo(f"{report.thread_id}: {len(report.problems)} problem(s){first}")
    for p in report.problems:
        where = f"{p.source}:{p.line}" if p.line is not None else p.source
        typer.echo(f"  {where}  [{p.rule}] {p.message}")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``threadloom`` console script."""
    try:
        app(args=argv, prog_name="threadloom", standalone_mode=True)
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 1
    return 0
