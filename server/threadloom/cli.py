"""The ``threadloom`` command line: ``serve`` (stdio or HTTP) and operator commands.

Commands that do not serve MCP never import ``mcp`` (it costs ~0.7 s to import).
Errors become one line on stderr and a non-zero exit code, never a traceback.
Every operator command takes ``--root`` and ``--json`` (machine-readable output on
stdout); human output is rich tables, progress bars appear only on a terminal.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import anyio
import typer
from rich.markup import escape
from rich.text import Text

from . import __version__
from .config import Settings, load_settings
from .errors import NotFoundError, ThreadloomError
from .models import Status, StoredEvent, Thread, check_thread_id
from .service import MAX_LIST, ThreadService

T = TypeVar("T")

if TYPE_CHECKING:
    from .store.base import ReindexStats

app = typer.Typer(
    name="threadloom",
    help="Durable threads for LLM agents, served over MCP.\n\n"
    "Agents use the MCP tools (`threadloom serve`); operators look at threads, follow them live, "
    "move them between roots and keep the root healthy with the commands below. Data lives in one "
    "root folder: --root, else $THREADLOOM_HOME, else ./.threadloom. Every command takes --json "
    "for machine-readable output.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
    epilog="Examples: `threadloom ls --status running` · `threadloom show ID` · `threadloom tail -f ID` · "
    "`threadloom export --all -o backup.jsonl` · `threadloom doctor` · `threadloom ls --json | jq '.threads[].title'`",
)
INSPECT, MOVE, MAINTAIN, SERVE = "Inspect", "Move data", "Maintain", "Serve"

RootOpt = Annotated[
    Path | None, typer.Option("--root", help="data folder (default ./.threadloom or $THREADLOOM_HOME)")
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


@app.command(rich_help_panel=SERVE)
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
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="print the version and exit")
    ] = False,
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
        anyio.run(_serve, settings, http, allow_delete)
    except ThreadloomError as exc:
        fail(exc.message, 2)
    except KeyboardInterrupt:
        pass


async def _serve(settings: Settings, http: bool, allow_delete: bool = False) -> None:
    from .http import check_bind, serve_http
    from .mcp_server import build_server
    from .service import ThreadService
    from .store import make_store

    if http:
        check_bind(settings)
    service = ThreadService(make_store(settings), settings)
    async with service:
        server = build_server(service, allow_delete=allow_delete)
        web = None
        if http:
            from .web import build_web_app

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
                from .stdio import run_stdio

                await run_stdio(server, settings.max_request_bytes)
            tg.cancel_scope.cancel()


UI_PORT = 8766


@app.command(rich_help_panel=SERVE)
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

        from .http import serve_http
        from .web import build_web_app

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


@app.command(rich_help_panel=SERVE)
def token(
    as_json: Annotated[bool, typer.Option("--json", help='print {"token": ...}')] = False,
) -> None:
    """Print a fresh random bearer token (43 characters) for `serve --http --token` or the tokens setting."""
    from .tokens import new_token

    value = new_token()
    typer.echo(json.dumps({"token": value}) if as_json else value)


@app.command(rich_help_panel=MAINTAIN)
def verify(
    thread_id: Annotated[str | None, typer.Argument(help="the thread to verify (12 hex digits)")] = None,
    all_threads: Annotated[bool, typer.Option("--all", help="verify every thread of the root")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the report(s) as JSON on stdout")] = False,
    root: RootOpt = None,
    store: Annotated[
        str | None,
        typer.Option("--store", help="sqlite (default, the root's threads.db) or a postgresql:// URL"),
    ] = None,
) -> None:
    """Verify signatures, checkpoints, the hash chain and the mirror files of one thread or
    of all (--all). Imported threads are checked with the key that signed them (reported as
    known or unknown, see `threadloom trust`). Exit code 0 when everything is intact, 1 when
    a problem was found."""
    if (thread_id is None) == (not all_threads):
        fail("give a thread id or --all (not both)", 2)
    settings = settings_from(root=root, store=store)
    if settings.store == "sqlite" and not (settings.root / "threads.db").exists():
        fail(f"no threadloom data at {settings.root} (set --root or $THREADLOOM_HOME)", 2)
    try:
        ok = anyio.run(_verify, settings, thread_id, as_json)
    except ThreadloomError as exc:
        fail(exc.message, 2)
    raise typer.Exit(0 if ok else 1)


async def _verify(settings: Settings, thread_id: str | None, as_json: bool) -> bool:
    import json

    from .service import ThreadService
    from .store import SQLiteStore, make_store

    # read as found: no start-up repair before the check (it would complete what it reports)
    store = (
        SQLiteStore(settings.root, durability=settings.durability, reconcile=False)
        if settings.store == "sqlite"
        else make_store(settings)
    )
    service = ThreadService(store, settings)
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
                reports.append(await _verify_one(service, tid))
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
            typer.echo(
                f"{len(reports)} thread(s) verified: {len(reports) - len(failed)} intact, {len(failed)} with problems"
            )
        return not failed


async def _verify_one(service: Any, tid: str) -> Any:
    """One thread's report; a thread that cannot be verified at all is a failed report, never the end of --all."""
    from .verify import VerifyProblem, VerifyReport

    try:
        return await service.verify_thread(tid)
    except (ThreadloomError, OSError) as exc:
        rule = exc.rule if isinstance(exc, ThreadloomError) else "unreadable"
        text = exc.message if isinstance(exc, ThreadloomError) else f"{exc.strerror or exc}"
        problem = VerifyProblem(source="database", rule=rule, message=f"cannot verify: {text}"[:500])
        return VerifyReport(
            thread_id=tid,
            ok=False,
            problems=[problem],
            summary=f"database: {problem.message}",
            events=0,
            checkpoints=0,
            files_checked=False,
            key_id=service.store.signer.key_id,
        )


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
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    )


def _print_report(report: object) -> None:
    from .verify import VerifyReport

    assert isinstance(report, VerifyReport)
    if report.ok:
        typer.echo(
            f"{report.thread_id}: ok ({report.events} events, {report.checkpoints} checkpoints, "
            f"files {'checked' if report.files_checked else 'not kept'})"
        )
        if report.imported is not None:
            typer.echo(f"  {report.imported.describe()}")
        return
    first = f", first bad line {report.first_bad_line}" if report.first_bad_line is not None else ""
    typer.echo(f"{report.thread_id}: {len(report.problems)} problem(s){first}")
    if report.imported is not None:
        typer.echo(f"  {report.imported.describe()}")
    for p in report.problems:
        where = f"{p.source}:{p.line}" if p.line is not None else p.source
        typer.echo(f"  {where}  [{p.rule}] {p.message}")


@app.command(rich_help_panel=MAINTAIN)
def key(
    root: RootOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help='print {"key_id", "public_key", "path"}')] = False,
) -> None:
    """Print this root's signing key id and public key: what another root's operator gives to
    `threadloom trust` so that threads exported from here verify there as signed by a known key."""
    from .integrity import Signer

    settings = settings_from(root=root)
    signer = Signer.for_root(settings.root)
    if signer.public_path is None or not signer.public_path.exists():
        fail(
            f"{settings.root} has no signing key yet ({signer.public_path} is missing): start the server once",
            2,
        )
    from .trust import parse_public_key

    try:
        pub = parse_public_key(signer.public_path.read_bytes(), where=str(signer.public_path))  # type: ignore[union-attr]
    except (ThreadloomError, OSError) as exc:
        fail(str(getattr(exc, "message", exc)), 2)
        raise
    if as_json:
        typer.echo(json.dumps({"key_id": pub.key_id, "public_key": pub.pem, "path": str(signer.public_path)}))
    else:
        typer.echo(f"key {pub.key_id} ({signer.public_path})")
        typer.echo(pub.pem, nl=False)


@app.command(rich_help_panel=MAINTAIN)
def trust(
    files: Annotated[
        list[Path] | None,
        typer.Argument(help="another root's public key file (its keys/ed25519.pub)", show_default=False),
    ] = None,
    list_: Annotated[bool, typer.Option("--list", help="list the keys this root trusts")] = False,
    root: RootOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Trust other roots' public keys: imported threads they signed then verify as "signed by
    key K (known)". The key is kept in ROOT/keys/trusted/ (the trusted_keys setting names
    more files); verification of threads this root signed is unchanged."""
    from .trust import trust_key, trusted_keys

    settings = settings_from(root=root)
    out = Out(as_json)
    if bool(files) == list_:
        fail("give public key files to trust, or --list", 2)
    if list_:
        try:
            keys = trusted_keys(settings.root, settings.trusted_keys)
        except ThreadloomError as exc:
            fail(f"[{exc.rule}] {exc.message}", 2)
            raise
        if out.json:
            out.emit({"keys": [{"key_id": k, "public_key": v.pem} for k, v in keys.items()]})
        else:
            for kid in keys:
                typer.echo(kid)
            out.note(f"{len(keys)} trusted key(s)")
        return
    added = []
    for f in files or []:
        try:
            with open(f, "rb") as fh:
                data = fh.read(16_385)
            pub, new = trust_key(settings.root, data, where=str(f))
        except ThreadloomError as exc:
            fail(f"[{exc.rule}] {exc.message}", 2)
            raise
        except OSError as exc:
            fail(f"{f}: {exc.strerror or exc}", 2)
            raise
        added.append({"key_id": pub.key_id, "file": str(f), "new": new})
        if not out.json:
            out.note(f"{'trusting' if new else 'already trusted:'} key {pub.key_id} ({f})")
    if out.json:
        out.emit({"trusted": added})


# ------------------------------------------------------------------ operator commands

PIPE_WIDTH = 160
JsonOpt = Annotated[
    bool, typer.Option("--json", help="machine-readable JSON on stdout (no colours, no progress)")
]
ThreadArg = Annotated[str, typer.Argument(help="thread id (12 hex digits)", show_default=False, metavar="ID")]


class Out:
    """Where a command writes: JSON or rich on stdout, messages and progress on stderr."""

    def __init__(self, json_mode: bool) -> None:
        from rich.console import Console

        self.json = json_mode
        self.console = Console(highlight=False, soft_wrap=False)
        if not self.console.is_terminal and "COLUMNS" not in os.environ:
            self.console.width = PIPE_WIDTH  # piped human output: lines are not squeezed to 80 columns
        self.err = Console(stderr=True, highlight=False)
        if not self.err.is_terminal and "COLUMNS" not in os.environ:
            self.err.width = PIPE_WIDTH

    def emit(self, data: Any) -> None:
        typer.echo(json.dumps(data, ensure_ascii=False, indent=2))

    def line(self, data: Any) -> None:
        typer.echo(json.dumps(data, ensure_ascii=False, separators=(",", ":")))

    def note(self, message: str) -> None:
        """A human remark on stderr (never mixed into --json output)."""
        self.err.print(message, highlight=False)

    @property
    def interactive(self) -> bool:
        return not self.json and self.console.is_terminal and self.err.is_terminal

    @contextmanager
    def progress(
        self, description: str, total: int | None = None
    ) -> Iterator[tuple[Callable[[int], None], Callable[[int], None]]]:
        """(advance, set_total) of a progress bar on stderr, shown only on a terminal and never under --json."""
        if not self.interactive:
            yield (lambda n: None), (lambda n: None)
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.err,
            transient=True,
        ) as bar:
            task = bar.add_task(description, total=total)
            yield (lambda n: bar.advance(task, n)), (lambda n: bar.update(task, total=n))


def run(fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Run an async command body; domain and OS errors become one line and exit code 1."""
    try:
        return anyio.run(fn, *args)
    except BaseExceptionGroup as group:  # raised through a task group: judge its one cause
        leaf = _sole_cause(group)
        if isinstance(leaf, (SystemExit, typer.Exit)):  # e.g. rich's own exit on a broken pipe
            raise leaf from None
        if isinstance(leaf, (ThreadloomError, OSError, KeyboardInterrupt)):
            _fail_with(leaf)
        raise
    except (ThreadloomError, OSError) as exc:
        _fail_with(exc)
    raise AssertionError("unreachable")


def _sole_cause(group: BaseExceptionGroup) -> BaseException | None:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        if len(exc.exceptions) != 1:
            return None
        exc = exc.exceptions[0]
    return exc


def _fail_with(exc: BaseException) -> None:
    if isinstance(exc, KeyboardInterrupt):
        raise exc
    if isinstance(exc, ThreadloomError):
        fail(exc.message)
    if isinstance(exc, BrokenPipeError):  # the reader went away (`| head`): stop quietly, like SIGPIPE
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        raise typer.Exit(141)
    assert isinstance(exc, OSError)
    fail(f"{str(exc.filename) + ': ' if exc.filename else ''}{exc.strerror or exc}")


@asynccontextmanager
async def open_service(settings: Settings, *, create: bool = False) -> AsyncIterator[ThreadService]:
    """The service on the root of ``settings``, without the start-up mirror repair.

    Refuses a root without a database unless ``create`` (import makes new roots).
    """
    from .store import SQLiteStore, make_store

    if settings.store == "sqlite":
        db = Path(settings.root) / "threads.db"
        if not create and not db.exists():
            raise NotFoundError(
                f"no threadloom data at {settings.root} ({db.name} is missing): pass --root or set "
                "THREADLOOM_HOME to the folder `threadloom serve` uses",
                rule="root_missing",
            )
        store = SQLiteStore(settings.root, durability=settings.durability, reconcile=False)
    else:
        store = make_store(settings)
    async with ThreadService(store, settings) as service:
        yield service


def confirm_or_fail(out: Out, question: str, yes: bool) -> None:
    """Ask on a terminal; elsewhere (scripts, --json) require --yes."""
    if yes:
        return
    if not out.interactive:
        fail("refusing to delete without confirmation: pass --yes (or --dry-run to only look)")
    if not typer.confirm(question, default=False, err=True):
        fail("nothing deleted", 1)


def thread_json(t: Thread) -> dict[str, Any]:
    return {**t.model_dump(mode="json"), "context": t.context().model_dump()}


def check_ids(ids: list[str]) -> list[str]:
    try:
        return [check_thread_id(t) for t in ids]
    except ThreadloomError as exc:
        fail(exc.message)
        raise


@app.command("ls", rich_help_panel=INSPECT)
def ls_(
    root: RootOpt = None,
    agent: Annotated[str | None, typer.Option("--agent", help="only this agent's threads")] = None,
    status: Annotated[str | None, typer.Option("--status", help="only threads in this status")] = None,
    parent: Annotated[str | None, typer.Option("--parent", help="only children of this thread")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="at most this many threads")] = 50,
    as_json: JsonOpt = False,
) -> None:
    """List threads, newest first: status, title, events, context use and cost."""
    settings = settings_from(root=root)
    out = Out(as_json)

    async def body() -> tuple[list[Thread], bool]:
        async with open_service(settings) as svc:
            rows: list[Thread] = []
            cursor = None
            while len(rows) < limit:
                page = await svc.list_threads(
                    agent_id=agent,
                    parent_id=parent,
                    status=status,
                    limit=min(MAX_LIST, limit - len(rows)),
                    cursor=cursor,
                )
                rows += page.threads
                cursor = page.next_cursor
                if cursor is None:
                    break
            return rows, cursor is not None

    rows, more = run(body)
    if out.json:
        out.emit({"threads": [thread_json(t) for t in rows], "more": more})
        return
    from .render import threads_table

    if not rows:
        out.note("no threads" + (" match" if agent or status or parent else " yet"))
        return
    out.console.print(threads_table(rows, width=out.console.width))
    out.note(f"{len(rows)} thread(s), newest first" + (f"; more with --limit {limit * 2}" if more else ""))


@app.command(rich_help_panel=INSPECT)
def show(
    thread_id: ThreadArg,
    root: RootOpt = None,
    events: Annotated[
        int, typer.Option("--events", "-e", min=0, help="how many of the last events to show")
    ] = 10,
    as_json: JsonOpt = False,
) -> None:
    """Show one thread: manifest, budget, its chain as a tree (parent, continuation links,
    children) and its last events."""
    settings = settings_from(root=root)
    out = Out(as_json)
    check_ids([thread_id])

    async def body() -> dict[str, Any]:
        async with open_service(settings) as svc:
            thread = await svc.get_thread(thread_id)
            chain = await svc.chain_threads(thread_id)
            parent = None
            if thread.parent_id:
                parent = (await svc.store.get_threads([thread.parent_id])).get(thread.parent_id)
            children = {}
            for member in chain:
                kids = await svc.list_threads(parent_id=member.thread_id, limit=MAX_LIST)
                if kids.threads:
                    children[member.thread_id] = list(reversed(kids.threads))
            after = max(0, thread.event_count - events)
            tail = await svc.store.read_events(thread_id, after_seq=after) if events else []
            return {
                "thread": thread,
                "chain": chain,
                "parent": parent,
                "children": children,
                "events": [e.data() for e in tail],
            }

    got = run(body)
    thread: Thread = got["thread"]
    if out.json:
        out.emit(
            {
                "thread": thread_json(thread),
                "chain": [thread_json(t) for t in got["chain"]],
                "parent": thread_json(got["parent"]) if got["parent"] else None,
                "children": [thread_json(k) for kids in got["children"].values() for k in kids],
                "events": got["events"],
            }
        )
        return
    from rich.panel import Panel

    from .render import chain_tree, event_summary, manifest_table

    out.console.print(
        Panel(manifest_table(thread), title=f"thread {thread.thread_id}", title_align="left", expand=False)
    )
    out.console.print(Text("chain", style="bold"))
    out.console.print(
        chain_tree(
            got["chain"],
            focus=thread.thread_id,
            parent=got["parent"],
            parent_id=thread.parent_id,
            children=got["children"],
        )
    )
    if got["events"]:
        shown = len(got["events"])
        out.console.print(Text(f"last {shown} of {thread.event_count} events", style="bold"))
        for data in got["events"]:
            out.console.print(
                event_summary(data, max(40, out.console.width - 40)), overflow="ellipsis", no_wrap=True
            )
    if thread.continuation_thread_id:
        out.note(
            f"continued in {thread.continuation_thread_id}: `threadloom tail -f {thread.thread_id}` follows the chain"
        )


@app.command(rich_help_panel=INSPECT)
def tail(
    thread_id: ThreadArg,
    root: RootOpt = None,
    lines: Annotated[
        int, typer.Option("--lines", "-n", min=0, help="start with this many of the last events (0: all)")
    ] = 20,
    follow_: Annotated[
        bool,
        typer.Option(
            "--follow", "-f", help="keep printing new events as they commit, across handoffs; Ctrl-C stops"
        ),
    ] = False,
    until_done: Annotated[
        bool,
        typer.Option(
            "--until-done", help="with -f: stop once the chain's end is completed, error or cancelled"
        ),
    ] = False,
    full: Annotated[
        bool, typer.Option("--full", help="print whole texts instead of one line per event")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="one JSON object per line: {thread_id, event} (JSON Lines)")
    ] = False,
) -> None:
    """Print a thread's events; with -f follow new ones live, also from other processes,
    and on into the next thread of the chain after a handoff or resume."""
    settings = settings_from(root=root)
    out = Out(as_json)
    check_ids([thread_id])
    from .render import event_summary, hop_rule

    width = 0 if full else max(40, out.console.width - 40)

    def on_event(ev: StoredEvent) -> None:
        if out.json:
            out.line({"thread_id": ev.thread_id, "event": ev.data()})
        else:
            out.console.print(
                event_summary(ev.data(), width), soft_wrap=full, overflow="ellipsis", no_wrap=not full
            )
        if follow_:
            sys.stdout.flush()  # a follower's reader (a pipe, `| grep`) sees each event as it commits

    def on_hop(old: Thread, new_id: str) -> None:
        if out.json:
            how = "handoff" if old.status == Status.CONTINUED else "resume"
            out.line({"thread_id": old.thread_id, "continued_in": new_id, "link": how})
        else:
            out.console.print(hop_rule(old.thread_id, new_id))
        sys.stdout.flush()

    async def body() -> None:
        from .follow import follow

        async with open_service(settings) as svc:
            thread = await svc.get_thread(thread_id)
            after = 0 if lines == 0 else max(0, thread.event_count - lines)
            if follow_:
                # Ctrl-C / SIGTERM end the follow as a cancellation, so the store closes in order
                # (a KeyboardInterrupt could land inside the store's shutdown and hang it)
                async with anyio.create_task_group() as tg:
                    tg.start_soon(_cancel_on_signal, tg.cancel_scope)
                    await follow(svc, thread_id, on_event, on_hop, after_seq=after, until_done=until_done)
                    tg.cancel_scope.cancel()
                return
            for ev in await svc.store.read_events(thread_id, after_seq=after):
                on_event(ev)
            if thread.continuation_thread_id and not out.json:
                out.note(f"continued in {thread.continuation_thread_id} (-f follows the chain)")

    try:
        run(body)
    except KeyboardInterrupt:
        raise typer.Exit(0) from None


async def _cancel_on_signal(scope: anyio.CancelScope) -> None:
    """Cancel ``scope`` at the first SIGINT or SIGTERM."""
    import signal

    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            scope.cancel()
            return


@app.command(rich_help_panel=INSPECT)
def search(
    query: Annotated[
        str, typer.Argument(help="words to find (or a pattern with --regex)", show_default=False)
    ],
    root: RootOpt = None,
    chain: Annotated[
        str | None, typer.Option("--chain", help="search every thread of this thread's chain")
    ] = None,
    regex: Annotated[
        bool, typer.Option("--regex", help="QUERY is a regular expression (needs --chain)")
    ] = False,
    agent: Annotated[str | None, typer.Option("--agent", help="only this agent's threads")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="at most this many hits")] = 10,
    context: Annotated[
        int, typer.Option("--context", "-C", min=0, help="messages of context around each hit")
    ] = 1,
    tools: Annotated[
        bool, typer.Option("--tools", help="with --chain: also search tool inputs and outputs")
    ] = False,
    mode: Annotated[
        str | None,
        typer.Option(
            "--mode",
            help="hybrid, text or semantic (default: hybrid when semantic search is set up, else text)",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Search messages: across threads (best hit per thread), or within one chain (--chain)."""
    settings = settings_from(root=root)
    out = Out(as_json)
    if chain:
        check_ids([chain])
    if regex and not chain:
        fail("--regex searches one chain: give --chain ID")
    if chain and agent:
        fail("--agent filters searches across threads; a --chain search is already one chain")
    if tools and not chain:
        fail("--tools applies to a --chain search")
    if regex and mode:
        fail("--regex and --mode are two kinds of search: give one")
    if not hasattr(ThreadService, "chain_search"):
        fail("search is not available in this build of threadloom (it needs the search index)")

    async def body() -> Any:
        async with open_service(settings) as svc:
            if chain:
                extra = {"include_tools": True} if tools else {}
                return await svc.chain_search(  # type: ignore[attr-defined]
                    chain,
                    query,
                    search_type="regex" if regex else mode,
                    limit=limit,
                    context=context,
                    **extra,
                )
            return await svc.search_threads(query, agent_id=agent, limit=limit, context=context, mode=mode)  # type: ignore[attr-defined]

    found = run(body)
    data = found.model_dump(mode="json") if hasattr(found, "model_dump") else found
    if out.json:
        out.emit(data)
        return
    from .render import print_search

    print_search(out.console, data)


@app.command("export", rich_help_panel=MOVE)
def export_(
    thread_ids: Annotated[
        list[str] | None,
        typer.Argument(help="threads to export (each with its whole chain)", show_default=False),
    ] = None,
    root: RootOpt = None,
    all_: Annotated[bool, typer.Option("--all", help="export every thread of the root")] = False,
    children: Annotated[
        bool, typer.Option("--children", help="also export every descendant (child threads and theirs)")
    ] = False,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="write the bundle here (default: stdout)")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="print a JSON summary (needs -o: the bundle itself is JSON Lines)")
    ] = False,
    force: Annotated[
        bool,
        typer.Option("--force", help="replace FILE if it exists (a path inside the root is always refused)"),
    ] = False,
    format_: Annotated[
        str,
        typer.Option(
            "--format",
            help="jsonl: the bundle `threadloom import` reads; md: a readable Markdown transcript of each "
            "thread (the same as the resource thread://ID/transcript.md)",
        ),
    ] = "jsonl",
    chain: Annotated[
        bool, typer.Option("--chain", help="with --format md: each thread's whole chain, in link order")
    ] = False,
) -> None:
    """Write threads as a self-contained JSON Lines bundle (manifests, events, chain links)
    that `threadloom import` reads back exactly, or (--format md) as readable Markdown."""
    from .bundle import atomic_output, check_output, collect_chains, export_bundle

    settings = settings_from(root=root)
    out = Out(as_json)
    ids = check_ids(thread_ids or [])
    if format_ not in ("jsonl", "md"):
        fail(f"[export_format] --format must be jsonl or md; got {format_!r:.200}", 2)
    if format_ == "md":
        if all_ or children or as_json or not ids:
            fail("--format md writes the threads named by id (not --all, --children or --json)", 2)
        _export_md(settings, ids, output, force=force, chain=chain)
        return
    if chain:
        fail("--chain applies to --format md (a bundle always holds whole chains)", 2)
    if bool(ids) == all_:
        fail("give thread ids or --all (not both)" if ids else "give thread ids to export, or --all")
    if as_json and output is None:
        fail("--json prints a summary and needs -o FILE (without -o the bundle itself goes to stdout)")
    if output is not None:
        try:
            check_output(output, settings.root, force=force)
        except ThreadloomError as exc:
            fail(f"[{exc.rule}] {exc.message}", 2)

    async def body() -> Any:
        async with open_service(settings) as svc:
            if all_:
                from .lineage import group_chains

                chains = group_chains(await svc.all_threads())
            else:
                chains = await collect_chains(svc, ids, children=children)
            total = sum(len(m) for m in chains.values())
            with out.progress("exporting", total) as (advance, _):
                if output is None:
                    return await export_bundle(svc, chains, sys.stdout, progress=advance)
                with atomic_output(output) as f:
                    return await export_bundle(svc, chains, f, progress=advance)

    summary = run(body)
    if as_json:
        out.emit(
            {
                "file": str(output),
                "threads": summary.threads,
                "events": summary.events,
                "chains": summary.chains,
                "thread_ids": summary.thread_ids,
            }
        )
    elif output is not None:
        out.note(
            f"exported {summary.threads} thread(s) in {summary.chains} chain(s), {summary.events} events, to {output}"
        )


def _export_md(settings: Settings, ids: list[str], output: Path | None, *, force: bool, chain: bool) -> None:
    from .bundle import atomic_output, check_output
    from .transcript_md import chain_markdown, thread_markdown

    if output is not None:
        try:
            check_output(output, settings.root, force=force)
        except ThreadloomError as exc:
            fail(f"[{exc.rule}] {exc.message}", 2)

    async def body() -> str:
        async with open_service(settings) as svc:
            make = chain_markdown if chain else thread_markdown
            return "\n".join([await make(svc, tid) for tid in ids])

    text = run(body)
    if output is None:
        sys.stdout.write(text)
        return
    with atomic_output(output) as f:
        f.write(text)
    Out(False).note(
        f"wrote the Markdown transcript of {len(ids)} {'chain' if chain else 'thread'}(s) to {output}"
    )


@app.command("import", rich_help_panel=MOVE)
def import_(
    files: Annotated[
        list[Path],
        typer.Argument(
            help="bundles from `threadloom export`, or legacy JSONL transcripts", show_default=False
        ),
    ],
    root: RootOpt = None,
    rename: Annotated[
        bool,
        typer.Option("--rename", help="import threads whose ids are taken under new ids (links rewritten)"),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Import bundles (ids, seqs and timestamps kept) and legacy single-thread JSONL files
    (a manifest line, then events; lines without a type are messages). Each chain is imported
    whole or not at all; importing the same file again changes nothing."""
    from .bundle import import_files

    settings = settings_from(root=root)
    out = Out(as_json)
    for f in files:
        if not f.is_file():
            fail(f"{f}: no such file" if not f.exists() else f"{f}: not a file")

    async def body() -> Any:
        async with open_service(settings, create=True) as svc:
            with out.progress("importing") as (advance, set_total):
                return await import_files(svc, files, rename=rename, progress=advance, on_total=set_total)

    report = run(body)
    if out.json:
        out.emit(report.as_dict())
    else:
        parts = [f"imported {len(report.imported)} thread(s)"]
        if report.renamed:
            parts.append(f"{len(report.renamed)} under new ids")
        if report.skipped:
            parts.append(f"{len(report.skipped)} already present (skipped)")
        if report.refused:
            parts.append(f"{len(report.refused)} refused")
        out.note(", ".join(parts))
        for old, new in report.renamed.items():
            out.note(f"  {old} -> {new}")
        for r in report.refused:
            out.note(f"[red]refused[/red] {r['thread_id']}: {escape(r['where'])}: {escape(r['error'])}")
        for p in report.problems:
            out.note(f"[red]problem[/red] {escape(p)}")
    if not report.ok:
        raise typer.Exit(1)


# ------------------------------------------------------------------ ingest (docs/ingest.md)

ingest_app = typer.Typer(
    help="Ingest Claude Code or Codex sessions into threads (incremental: run it again any time).",
    no_args_is_help=True,
)
app.add_typer(ingest_app, name="ingest", rich_help_panel=MOVE)
IngestPaths = Annotated[
    list[Path] | None,
    typer.Argument(
        help="session files or folders (default: the tool's own session folder)", show_default=False
    ),
]
SinceOpt = Annotated[
    str | None, typer.Option("--since", help="only files changed since: an ISO date/time or an age (7d, 12h)")
]
WatchOpt = Annotated[
    bool, typer.Option("--watch", help="keep following the sessions and ingest new lines as they are written")
]


def _ingest(
    vendor_name: str,
    paths: list[Path] | None,
    root: Path | None,
    since: str | None,
    watch: bool,
    as_json: bool,
) -> None:
    from .ingest import Ingester, vendor
    from .ingest.command import expand, parse_since, summary_lines

    settings = settings_from(root=root)
    out = Out(as_json)
    try:
        since_ts = parse_since(since)
        v = vendor(vendor_name)
    except ThreadloomError as exc:
        fail(exc.message, 2)
        raise
    targets = expand(paths)

    async def body() -> Any:
        async with open_service(settings, create=True) as svc:
            ing = Ingester(svc, v)
            with out.progress(f"ingesting {vendor_name} sessions") as (advance, set_total):
                report = await ing.ingest_paths(targets, since=since_ts, progress=advance, on_total=set_total)
            if out.json:
                out.line(report.as_dict()) if watch else out.emit(report.as_dict())
            else:
                for text in summary_lines(report):
                    out.note(escape(text))
            if watch:
                from .ingest.watch import watch_sessions

                def show(rep: Any) -> None:
                    if out.json:
                        out.line(rep.as_dict())
                    else:
                        for text in summary_lines(rep):
                            out.note(escape(text))

                out.note("watching for new lines (Ctrl-C stops)") if not out.json else None
                await watch_sessions(ing, targets, on_report=show)
            return report

    report = run(body)
    if not report.ok:
        raise typer.Exit(1)


@ingest_app.command("claude-code")
def ingest_claude_code(
    paths: IngestPaths = None,
    root: RootOpt = None,
    since: SinceOpt = None,
    watch: WatchOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Ingest Claude Code sessions (~/.claude/projects, or $CLAUDE_CONFIG_DIR/projects): one
    thread per session, subagents as child threads, compactions as continuation links.
    Only lines new since the last run are read; a file that was rewritten is reported."""
    _ingest("claude-code", paths, root, since, watch, as_json)


@ingest_app.command("codex")
def ingest_codex(
    paths: IngestPaths = None,
    root: RootOpt = None,
    since: SinceOpt = None,
    watch: WatchOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Ingest Codex sessions (~/.codex/sessions, or $CODEX_HOME/sessions): one thread per
    rollout file, spawned sessions as child threads, compactions as continuation links.
    Only lines new since the last run are read; a file that was rewritten is reported."""
    _ingest("codex", paths, root, since, watch, as_json)


hook_app = typer.Typer(help="Commands that agent tools run on their own events (they never fail).")
app.add_typer(hook_app, name="hook", rich_help_panel=MOVE)


@hook_app.command("claude-code")
def hook_claude_code(
    root: RootOpt = None,
    foreground: Annotated[
        bool, typer.Option("--foreground", help="ingest before returning (default: in a detached process)")
    ] = False,
) -> None:
    """Claude Code hook: ingest the session named in the hook JSON on stdin (transcript_path)
    incrementally. Prints nothing, always exits 0; problems go to ROOT/ingest/hook.log.
    `threadloom install claude-code --hooks` sets it up."""
    from .ingest.hook import main as hook_main

    hook_main(
        ["claude-code", *(["--root", str(root)] if root else []), *(["--foreground"] if foreground else [])]
    )


@app.command(rich_help_panel=MAINTAIN)
def gc(
    older_than: Annotated[
        str,
        typer.Option(
            "--older-than",
            help="delete chains last updated longer ago than this: 30d, 12h, 2w",
            show_default=False,
        ),
    ],
    root: RootOpt = None,
    status: Annotated[
        str, typer.Option("--status", help="end statuses that may go (comma-separated)")
    ] = "completed,error,cancelled",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="only show what would be deleted")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation")] = False,
    vacuum: Annotated[
        bool, typer.Option("--vacuum", help="afterwards give the freed space back to the disk (VACUUM)")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Delete old finished chains (retention). Whole chains only: a chain goes when its end
    has one of --status, every thread in it has ended and none was updated within --older-than."""
    from .retention import parse_age, parse_statuses, plan_gc, run_gc

    settings = settings_from(root=root)
    out = Out(as_json)
    try:
        age, statuses = parse_age(older_than), parse_statuses(status)
    except ThreadloomError as exc:
        fail(exc.message)
        raise

    async def plan_body() -> Any:
        async with open_service(settings) as svc:
            return await plan_gc(svc, age, statuses)

    plan = run(plan_body)
    n = len(plan.thread_ids)
    if not out.json:
        show_gc_plan(out, plan)
    if dry_run or not plan.doomed:
        if out.json:
            out.emit(gc_json(plan, dry_run=dry_run, deleted=0, skipped=[]))
        return
    confirm_or_fail(out, f"Delete {n} thread(s) in {len(plan.doomed)} chain(s)?", yes)

    async def delete_body() -> tuple[int, list[str]]:
        async with open_service(settings) as svc:
            with out.progress("deleting", n) as (advance, _):
                done = await run_gc(svc, plan, progress=advance)
            if vacuum:
                await svc.store.vacuum()
            return done

    deleted, skipped = run(delete_body)
    if out.json:
        out.emit(gc_json(plan, dry_run=False, deleted=deleted, skipped=skipped))
        return
    out.note(f"deleted {deleted} thread(s)" + (" and vacuumed the database" if vacuum else ""))
    for root_id in skipped:
        out.note(f"kept chain {root_id}: it changed while gc ran")


def show_gc_plan(out: Out, plan: Any) -> None:
    from rich.table import Table

    from .render import status_text, ts_short

    if not plan.doomed:
        out.note(
            f"nothing to delete: no finished chain was last updated before {ts_short(plan.cutoff)} "
            f"({len(plan.kept)} chain(s) kept)"
        )
        return
    from rich import box

    table = Table(
        title=f"chains last updated before {ts_short(plan.cutoff)}",
        header_style="bold",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        title_justify="left",
    )
    for col in ("chain", "threads", "end status", "events", "last updated", "title"):
        table.add_column(col, no_wrap=col != "title", max_width=40 if col == "title" else None)
    for c in plan.doomed:
        d = c.as_dict()
        table.add_row(
            c.chain_root_id,
            " ".join(d["thread_ids"]),
            status_text(d["end_status"]),
            str(d["events"]),
            ts_short(d["last_updated"]),
            escape(d["title"] or ""),
        )
    out.console.print(table)
    out.note(
        f"{len(plan.thread_ids)} thread(s) in {len(plan.doomed)} chain(s) would be deleted; "
        f"{len(plan.kept)} chain(s) kept"
    )


def gc_json(plan: Any, *, dry_run: bool, deleted: int, skipped: list[str]) -> dict[str, Any]:
    return {
        "dry_run": dry_run,
        "cutoff": plan.cutoff,
        "statuses": sorted(s.value for s in plan.statuses),
        "chains": [c.as_dict() for c in plan.doomed],
        "thread_ids": plan.thread_ids,
        "kept_chains": len(plan.kept),
        "deleted": deleted,
        "skipped_chains": skipped,
    }


@app.command(rich_help_panel=MAINTAIN)
def doctor(
    root: RootOpt = None,
    fix: Annotated[
        bool,
        typer.Option(
            "--fix",
            help="repair (mirrors completed from the database, WAL, modes, stale threads; moving a file "
            "aside is asked first), then check",
        ),
    ] = False,
    recover: Annotated[
        bool,
        typer.Option(
            "--recover",
            help="rebuild events the database lost from the mirror files, taking only lines that "
            "checkpoints signed by this root's key prove; rehearsed on a copy first",
        ),
    ] = False,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="with --fix: do not ask before moving files aside")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Check the root: permissions and modes, free disk, SQLite (version, FTS5, WAL), signing keys,
    mirror drift, threads the database lost and stale running threads. Prints each problem with
    its fix; exits 1 on problems."""
    from .doctor import run_doctor

    settings = settings_from(root=root)
    out = Out(as_json)

    def confirm(steps: list[str]) -> bool:
        if yes:
            return True
        if not out.interactive:
            return False
        for step in steps:
            typer.echo(f"  {step}", err=True)
        return typer.confirm(
            f"doctor --fix: run these {len(steps)} step(s)? (each file is kept beside, renamed)",
            default=False,
            err=True,
        )

    async def body() -> Any:
        if fix or recover:  # no progress bar: it would draw over the question
            return await run_doctor(settings, fix=fix, recover=recover, confirm=confirm)
        with out.progress("checking mirrors") as (advance, set_total):
            return await run_doctor(settings, progress=advance, on_total=set_total)

    report = run(body)
    if out.json:
        out.emit(report.as_dict())
    else:
        marks = {
            "ok": "[green]OK     [/green]",
            "warn": "[yellow]WARN   [/yellow]",
            "problem": "[red]PROBLEM[/red]",
        }
        for f in report.fixed:
            out.console.print(f"[blue]FIXED  [/blue] {escape(f)}")
        for c in report.checks:
            out.console.print(f"{marks[c.level]} {c.name:<12} {escape(c.detail)}")
            if c.fix and c.level != "ok":
                out.console.print(f"        {'':<12} [dim]fix:[/dim] {escape(c.fix)}")
        problems = sum(c.level == "problem" for c in report.checks)
        out.console.print(
            "[green]all checks passed[/green]" if report.ok else f"[red]{problems} problem(s)[/red]"
        )
    if not report.ok:
        raise typer.Exit(1)


@app.command(rich_help_panel=MAINTAIN)
def delete(
    thread_ids: Annotated[list[str], typer.Argument(help="threads to delete", show_default=False)],
    root: RootOpt = None,
    chain: Annotated[
        bool, typer.Option("--chain", help="delete the whole continuation chain of each thread")
    ] = False,
    force: Annotated[
        bool,
        typer.Option("--force", help="also delete threads that have not ended (created, running, paused)"),
    ] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="only show what would be deleted")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Delete threads for good (events, manifest, mirror files). A thread that is part of a
    longer chain goes only with its whole chain (--chain). Deleting twice is not an error."""
    settings = settings_from(root=root)
    out = Out(as_json)
    ids = check_ids(thread_ids)

    async def preview() -> tuple[Any, list[Thread]]:
        async with open_service(settings) as svc:
            plan = await svc.delete_threads(ids, chain=chain, force=force, dry_run=True)
            found = await svc.store.get_threads(plan.deleted)
            return plan, [found[t] for t in plan.deleted if t in found]

    plan, doomed = run(preview)
    if dry_run:
        if out.json:
            out.emit({**plan.model_dump(mode="json"), "dry_run": True})
        elif doomed:
            from .render import threads_table

            out.console.print(threads_table(doomed, title="would delete", width=out.console.width))
        for tid in plan.missing:
            out.note(f"{tid} does not exist (nothing to delete)")
        return
    if doomed and not yes and out.interactive:
        from .render import threads_table

        out.console.print(threads_table(doomed, title="to delete", width=out.console.width))
    if doomed:
        confirm_or_fail(out, f"Delete {len(doomed)} thread(s)?", yes)

    async def body() -> Any:
        async with open_service(settings) as svc:
            return await svc.delete_threads(ids, chain=chain, force=force)

    outcome = run(body)
    if out.json:
        out.emit(outcome.model_dump(mode="json"))
        return
    if outcome.deleted:
        out.note(f"deleted {len(outcome.deleted)} thread(s): {' '.join(outcome.deleted)}")
    for tid in outcome.missing:
        out.note(f"{tid} does not exist (nothing to delete)")


@app.command(rich_help_panel=MAINTAIN)
def reindex(
    root: RootOpt = None,
    embeddings: Annotated[
        bool,
        typer.Option(
            "--embeddings",
            help="backfill semantic-search vectors instead (needs threadloom[semantic] and semantic_model)",
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Bring the full-text search index (or, with --embeddings, the vectors) up to date.

    Indexes the events the index lacks (after importing old transcripts, for example)
    and removes rows whose events are gone. Idempotent: a second run has nothing to do.
    With --embeddings: embeds the messages that have no vector and removes vectors whose
    event is gone (or that another model made); each batch is committed, so a run that is
    killed resumes where it stopped. Safe while a server uses the same root.
    """
    settings = settings_from(root=root)
    if settings.store == "sqlite" and not (settings.root / "threads.db").exists():
        db = settings.root / "threads.db"
        fail(f"no threadloom database at {db} (give --root or set THREADLOOM_HOME)", 2)
    if embeddings:
        try:
            result, seconds = anyio.run(_reindex_embeddings, settings)
        except ThreadloomError as exc:
            fail(f"[{exc.rule}] {exc.message}", 2)
        if as_json:
            counts = {"embedded": result.embedded, "cleaned": result.cleaned, "vectors": result.vectors}
            typer.echo(json.dumps({**counts, "model": result.model, "seconds": round(seconds, 3)}, indent=2))
            return
        typer.echo(
            f"embeddings: {result.embedded} embedded, {result.cleaned} cleaned; {result.vectors} vectors "
            f"of model {result.model} ({seconds:.1f} s)"
        )
        return
    try:
        stats, seconds = anyio.run(_reindex, settings, as_json)
    except ThreadloomError as exc:
        fail(exc.message, 2)
    if as_json:
        out = {"added": stats.added, "removed": stats.removed, "documents": stats.documents}
        typer.echo(json.dumps({**out, "seconds": round(seconds, 3)}, indent=2))
        return
    typer.echo(
        f"search index: {stats.added} event(s) added, {stats.removed} row(s) removed; "
        f"{stats.documents} events indexed ({seconds:.1f} s)"
    )


async def _reindex(settings: Settings, quiet: bool = False) -> tuple[ReindexStats, float]:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from .service import ThreadService
    from .store import make_store

    console = Console(stderr=True)
    started = time.perf_counter()
    async with ThreadService(make_store(settings), settings) as service:
        if console.is_terminal and not quiet:
            columns = (TextColumn("indexing events"), BarColumn(), MofNCompleteColumn())
            with Progress(*columns, TimeRemainingColumn(), console=console, transient=True) as bar:
                task = bar.add_task("reindex", total=None)
                stats = await service.reindex(
                    progress=lambda done, total: bar.update(task, completed=done, total=total)
                )
        else:
            stats = await service.reindex()
    return stats, time.perf_counter() - started


async def _reindex_embeddings(settings: Settings) -> tuple[Any, float]:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from .service import ThreadService
    from .store import make_store

    console = Console(stderr=True)
    started = time.perf_counter()
    async with ThreadService(make_store(settings), settings) as service:
        if console.is_terminal:
            columns = (TextColumn("embedding messages"), BarColumn(), MofNCompleteColumn())
            with Progress(*columns, TimeRemainingColumn(), console=console, transient=True) as bar:
                task = bar.add_task("embeddings", total=None)
                result = await service.reindex_embeddings(
                    progress=lambda done, total: bar.update(task, completed=done, total=total)
                )
        else:
            last = [0.0]

            def note(done: int, total: int) -> None:  # a line every few seconds for logs
                now = time.perf_counter()
                if now - last[0] >= 5 or done == total:
                    last[0] = now
                    print(f"embedded {done}/{total}", file=sys.stderr, flush=True)

            result = await service.reindex_embeddings(progress=note)
    return result, time.perf_counter() - started


from . import cli_install  # noqa: E402,F401  (registers `install` and `uninstall`)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``threadloom`` console script."""
    try:
        app(args=argv, prog_name="threadloom", standalone_mode=True)
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug: still one line, the traceback only on request
        if os.environ.get("THREADLOOM_DEBUG"):
            raise
        typer.echo(
            f"threadloom: internal error: {type(exc).__name__}: {exc} (THREADLOOM_DEBUG=1 shows the traceback)",
            err=True,
        )
        return 1
    return 0


from . import cli_live  # noqa: E402,F401  (registers `threadloom fork` on app)
