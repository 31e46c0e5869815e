"""What every command shares: the app and its options, where output goes, and the one way a
command runs and fails.

Every command is registered with :func:`command`: anything it raises that is a
:class:`~threadloom.errors.ThreadloomError` (or an ``OSError``) becomes one line on stderr,
``threadloom: [rule] message``, and the command's exit code (1 unless it says otherwise; a
rule named in ``usage`` exits 2, like click's usage errors), never a traceback. An async
body runs with :func:`run`; a body that needs the data opens it with :func:`open_service`
(never a store: the service builds it from the settings).
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import anyio
import typer

from .. import __version__
from ..config import Settings, load_settings
from ..errors import NotFoundError, ThreadloomError
from ..models import Thread, check_thread_id
from ..service import ThreadService

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

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
INSPECT, MOVE, MAINTAIN, SERVE, SETUP = "Inspect", "Move data", "Maintain", "Serve", "Set up"

RootOpt = Annotated[
    Path | None, typer.Option("--root", help="data folder (default ./.threadloom or $THREADLOOM_HOME)")
]
JsonOpt = Annotated[
    bool, typer.Option("--json", help="machine-readable JSON on stdout (no colours, no progress)")
]
ThreadArg = Annotated[str, typer.Argument(help="thread id (12 hex digits)", show_default=False, metavar="ID")]
PIPE_WIDTH = 160


# ------------------------------------------------------------------ errors


def fail(message: str, code: int = 1) -> NoReturn:
    """Stop the command with one line on stderr and exit ``code``."""
    typer.echo(f"threadloom: {message}", err=True)
    raise typer.Exit(code)


def error_line(exc: ThreadloomError) -> str:
    """``[rule] message``: the rule that failed, then the message (which names the value), on
    one line (a driver's message may bring lines of context: they are joined with "; ")."""
    prefix = f"[{exc.rule}]"
    message = "; ".join(part.strip() for part in exc.message.splitlines() if part.strip())
    return message if message.startswith(prefix) else f"{prefix} {message}"


def fail_with(exc: BaseException, code: int = 1) -> NoReturn:
    """The one line of a domain or OS error, and exit ``code``; a reader that went away
    (``| head``) stops the command quietly, like SIGPIPE."""
    if isinstance(exc, ThreadloomError):
        fail(error_line(exc), code)
    if isinstance(exc, BrokenPipeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        raise typer.Exit(141)
    if isinstance(exc, OSError):
        fail(f"{str(exc.filename) + ': ' if exc.filename else ''}{exc.strerror or exc}", code)
    raise exc


def command(
    name: str | None = None,
    *,
    panel: str | None = None,
    code: int = 1,
    usage: Collection[str] = (),
    on: typer.Typer = app,
) -> Callable[[F], F]:
    """Register a command on ``on`` (the app, or a group such as ``ingest``), run the one way:
    a ThreadloomError or OSError it raises, also from inside :func:`run`, becomes one line
    (:func:`fail_with`) and exit ``code``; an error whose rule is in ``usage`` (a bad argument)
    exits 2."""

    def register(fn: F) -> F:
        @functools.wraps(fn)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except (ThreadloomError, OSError) as exc:
                bad_argument = isinstance(exc, ThreadloomError) and exc.rule in usage
                fail_with(exc, 2 if bad_argument else code)

        options: dict[str, Any] = {} if panel is None else {"rich_help_panel": panel}
        on.command(name, **options)(guarded)
        return guarded  # type: ignore[return-value]

    return register


@contextmanager
def arguments() -> Iterator[None]:
    """Checks of a command's arguments before it runs: a ThreadloomError exits 2 (usage)."""
    try:
        yield
    except ThreadloomError as exc:
        fail_with(exc, 2)


def run(fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Run a command's async body; what it raises through a task group is re-raised as its one
    cause, so :func:`command` reports it (and ``except KeyboardInterrupt`` sees it)."""
    try:
        return anyio.run(fn, *args)
    except BaseExceptionGroup as group:
        leaf = _sole_cause(group)
        if leaf is None:
            raise
        raise leaf from None


def _sole_cause(group: BaseExceptionGroup) -> BaseException | None:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        if len(exc.exceptions) != 1:
            return None
        exc = exc.exceptions[0]
    return exc


# ------------------------------------------------------------------ settings and the service


def settings_from(**overrides: object) -> Settings:
    """The settings with the command's options on top; invalid settings exit 2."""
    try:
        return load_settings(overrides)
    except ThreadloomError as exc:
        fail_with(exc, 2)


def check_root(settings: Settings) -> None:
    """Refuse a root that holds no threadloom data (a look never creates one).

    Raises:
        NotFoundError: ``root_missing``, naming the root and how to point at the right one.
    """
    db = ThreadService.database_file(settings)
    if db is not None and not db.exists():
        raise NotFoundError(
            f"no threadloom data at {settings.root} (no threadloom database {db.name} there): pass --root "
            "or set THREADLOOM_HOME to the folder `threadloom serve` uses",
            rule="root_missing",
        )


@asynccontextmanager
async def open_service(
    settings: Settings, *, create: bool = False, repair: bool = False
) -> AsyncIterator[ThreadService]:
    """The service on the root of ``settings``, by default without the start-up mirror repair
    (a look must not change the files; ``repair`` for commands that write, like reindex).

    Refuses a root without data (:func:`check_root`) unless ``create`` (import and ingest
    may fill a new root).
    """
    if not create:
        check_root(settings)
    async with ThreadService.for_settings(settings, repair=repair) as service:
        yield service


def check_ids(ids: list[str]) -> list[str]:
    """The ids, checked (a malformed one exits 1 naming it)."""
    try:
        return [check_thread_id(t) for t in ids]
    except ThreadloomError as exc:
        fail_with(exc)


def thread_json(t: Thread) -> dict[str, Any]:
    return {**t.model_dump(mode="json"), "context": t.context().model_dump()}


# ------------------------------------------------------------------ output


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


def confirm_or_fail(out: Out, question: str, yes: bool) -> None:
    """Ask on a terminal; elsewhere (scripts, --json) require --yes."""
    if yes:
        return
    if not out.interactive:
        fail("refusing to delete without confirmation: pass --yes (or --dry-run to only look)")
    if not typer.confirm(question, default=False, err=True):
        fail("nothing deleted", 1)


# ------------------------------------------------------------------ the app itself


def _version(value: bool) -> None:
    if value:
        typer.echo(f"threadloom {__version__}")
        raise typer.Exit()


VersionOpt = Annotated[
    bool, typer.Option("--version", callback=_version, is_eager=True, help="print the version and exit")
]


@app.callback()
def _main(version: VersionOpt = False) -> None:
    """Durable threads for LLM agents, served over MCP."""


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
