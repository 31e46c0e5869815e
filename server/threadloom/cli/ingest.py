"""Ingesting agent tools' sessions (docs/ingest.md): ``ingest claude-code|codex`` and the
``hook claude-code`` that Claude Code runs on its own events."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from .common import MOVE, JsonOpt, Out, RootOpt, app, arguments, command, open_service, run, settings_from

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
    from ..ingest import Ingester, vendor
    from ..ingest.command import expand, parse_since, summary_lines

    settings = settings_from(root=root)
    out = Out(as_json)
    with arguments():
        since_ts = parse_since(since)
        v = vendor(vendor_name)
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
                from ..ingest.watch import watch_sessions

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


@command("claude-code", on=ingest_app)
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


@command("codex", on=ingest_app)
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


@command("claude-code", on=hook_app)
def hook_claude_code(
    root: RootOpt = None,
    foreground: Annotated[
        bool, typer.Option("--foreground", help="ingest before returning (default: in a detached process)")
    ] = False,
) -> None:
    """Claude Code hook: ingest the session named in the hook JSON on stdin (transcript_path)
    incrementally. Prints nothing, always exits 0; problems go to ROOT/ingest/hook.log.
    `threadloom install claude-code --hooks` sets it up."""
    from ..ingest.hook import main as hook_main

    hook_main(
        ["claude-code", *(["--root", str(root)] if root else []), *(["--foreground"] if foreground else [])]
    )
