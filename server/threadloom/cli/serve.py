"""Serving: ``serve`` (the MCP tools over stdio or HTTP), ``ui`` (the web inspector alone)
and ``token`` (a fresh bearer token)."""

from __future__ import annotations

import json
import logging
import sys
from typing import Annotated

import anyio
import typer

from ..config import Settings
from ..service import ThreadService
from .common import SERVE, RootOpt, VersionOpt, command, open_service, run, settings_from


@command(panel=SERVE, code=2)
def serve(
    root: RootOpt = None,
    http: Annotated[bool, typer.Option("--http", help="serve streamable HTTP instead of stdio")] = False,
    host: Annotated[str | None, typer.Option(help="HTTP bind address (default 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(help="HTTP port (default 8765)")] = None,
    token: Annotated[
        str | None, typer.Option(help="bearer token required over HTTP (or $THREADLOOM_TOKEN)")
    ] = None,
    allow_host: Annotated[
        list[str] | None,
        typer.Option(
            "--allow-host",
            help="also answer HTTP requests whose Host is this name (repeatable; or $THREADLOOM_ALLOWED_HOSTS)",
        ),
    ] = None,
    allow_origin: Annotated[
        list[str] | None,
        typer.Option(
            "--allow-origin",
            help="also accept browser requests from this origin, e.g. https://app.example:8443 "
            "(repeatable; or $THREADLOOM_ALLOWED_ORIGINS)",
        ),
    ] = None,
    store: Annotated[str | None, typer.Option(help="store backend: sqlite (default) or memory")] = None,
    durability: Annotated[
        str | None, typer.Option(help="full (survives power loss, default) or normal (survives crashes)")
    ] = None,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR")] = "WARNING",
    context_window: Annotated[
        int | None, typer.Option(help="default context window of new threads, in tokens (default 200000)")
    ] = None,
    trigger_threshold: Annotated[
        float | None,
        typer.Option(help="hand off when context reaches this fraction of the window (default 0.9)"),
    ] = None,
    resume_ceiling_tokens: Annotated[
        int | None, typer.Option(help="most tokens of trailing messages a handoff carries (default 16000)")
    ] = None,
    allow_delete: Annotated[
        bool,
        typer.Option(
            "--allow-delete",
            help="offer MCP clients the delete_thread tool (off: no client can erase history)",
        ),
    ] = False,
    version: VersionOpt = False,
) -> None:
    """Serve the MCP tools over stdio (the default, for MCP clients) or streamable HTTP."""
    logging.basicConfig(
        stream=sys.stderr, level=log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    settings = settings_from(
        root=root,
        host=host,
        port=port,
        token=token,
        allowed_hosts=allow_host or None,
        allowed_origins=allow_origin or None,
        store=store,
        durability=durability,
        context_window=context_window,
        trigger_threshold=trigger_threshold,
        resume_ceiling_tokens=resume_ceiling_tokens,
    )
    try:
        run(_serve, settings, http, allow_delete)
    except KeyboardInterrupt:
        pass


async def _serve(settings: Settings, http: bool, allow_delete: bool = False) -> None:
    from ..http import check_bind, serve_http
    from ..mcp_server import build_server

    if http:
        check_bind(settings)
    async with ThreadService.for_settings(settings) as service:
        server = build_server(service, allow_delete=allow_delete)
        web = None
        if http:
            from ..web import build_web_app

            web = build_web_app(service, settings)
        semantic = service.semantic
        if semantic.enabled:  # a configured model that is missing stops the server now, saying how to get it
            await anyio.to_thread.run_sync(semantic.embedder)
        elif settings.semantic_model:
            logging.getLogger("threadloom").warning(
                "semantic_model is set but %s: searches are text only (pip install 'threadloom[semantic]')",
                semantic.status()["extra_missing"],
            )
        async with anyio.create_task_group() as tg:
            tg.start_soon(service.run_sweeper)
            if semantic.enabled:
                tg.start_soon(service.run_indexer)
            if http:
                logging.getLogger("threadloom").warning(
                    "serving MCP over HTTP at http://%s:%d/mcp and the inspector at http://%s:%d/ (root %s)",
                    settings.host,
                    settings.port,
                    settings.host,
                    settings.port,
                    settings.root,
                )
                await serve_http(server, settings, web)
            else:
                from ..stdio import run_stdio

                await run_stdio(server, settings.max_request_bytes)
            tg.cancel_scope.cancel()


UI_PORT = 8766


@command(panel=SERVE)
def ui(
    root: RootOpt = None,
    port: Annotated[int, typer.Option(help="port on 127.0.0.1 (0: any free port)")] = UI_PORT,
    open_: Annotated[
        bool, typer.Option("--open", help="open the inspector in the default web browser")
    ] = False,
    token: Annotated[
        str | None, typer.Option(help="token the pages ask for once (or $THREADLOOM_TOKEN)")
    ] = None,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR")] = "WARNING",
) -> None:
    """Serve the read-only web inspector alone, on loopback (`serve --http` serves it beside /mcp)."""
    logging.basicConfig(
        stream=sys.stderr, level=log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    settings = settings_from(root=root, host="127.0.0.1", port=port, token=token)

    async def body() -> None:
        import socket

        from ..http import serve_http
        from ..web import build_web_app

        async with open_service(settings) as svc:
            if settings.port == 0:  # pick a free port now, so the address printed is the real one
                with socket.socket() as s:
                    s.bind(("127.0.0.1", 0))
                    settings.port = s.getsockname()[1]
            url = f"http://127.0.0.1:{settings.port}/"
            typer.echo(f"threadloom inspector at {url} (root {settings.root}); Ctrl-C stops", err=True)
            if open_:
                import webbrowser

                webbrowser.open(url)
            await serve_http(None, settings, build_web_app(svc, settings))

    try:
        run(body)
    except KeyboardInterrupt:
        raise typer.Exit(0) from None


@command(panel=SERVE)
def token(
    as_json: Annotated[bool, typer.Option("--json", help='print {"token": ...}')] = False,
) -> None:
    """Print a fresh random bearer token (43 characters) for `serve --http --token` or the tokens setting."""
    from ..tokens import new_token

    value = new_token()
    typer.echo(json.dumps({"token": value}) if as_json else value)
