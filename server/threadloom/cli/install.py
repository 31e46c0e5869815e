"""`threadloom install` and `threadloom uninstall`: add threadloom to an MCP client's configuration.

The rules (where each client keeps its configuration, how files are merged, backed up and
refused) live in the ``install`` package; this module only parses flags and prints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from .common import SETUP, JsonOpt, Out, command, fail

CLIENT_NAMES = "claude-code, claude-desktop, codex, cursor, vscode or gemini-cli"
ClientArg = Annotated[str | None, typer.Argument(help=f"the MCP client: {CLIENT_NAMES}", show_default=False)]
ScopeOpt = Annotated[
    str,
    typer.Option(
        "--scope", help="user (your configuration, every project) or project (files in --project, to commit)"
    ),
]
ProjectOpt = Annotated[
    Path | None, typer.Option("--project", help="the project folder for --scope project (default: here)")
]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="print the change as a diff; write nothing")]
SCOPES = ("project", "user")


def _scope(value: str) -> Any:
    if value not in SCOPES:
        fail(f"[scope] --scope must be project or user, not {value[:200]!r}", 2)
    return value


@command(panel=SETUP, usage=("client", "scope", "hooks"))
def install(
    client: ClientArg = None,
    root: Annotated[
        Path | None,
        typer.Option(
            "--root", help="data folder the installed server uses (default: your per-user data folder)"
        ),
    ] = None,
    scope: ScopeOpt = "user",
    project: ProjectOpt = None,
    hooks: Annotated[
        bool,
        typer.Option("--hooks", help="claude-code: also add hooks that capture every session live"),
    ] = False,
    dry_run: DryRunOpt = False,
    list_: Annotated[
        bool, typer.Option("--list", help="show which clients are present and where threadloom is configured")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Add threadloom to an MCP client's configuration (merged into what is there, with a backup).

    The server entry runs this threadloom by its absolute path, from any directory, on one
    per-user root that every client shares. Running it again changes nothing."""
    from .. import install as inst

    out = Out(as_json)
    if list_:
        if client is not None:
            fail("--list shows every client; give no CLIENT with it", 2)
        _show_list(out, inst.client_status(project))
        return
    if client is None:
        fail(f"name the client to install into: {CLIENT_NAMES} (or --list)", 2)
    plan = inst.plan_install(client, scope=_scope(scope), root=root, project=project, hooks=hooks)
    present = plan.client.present()  # before our own file makes it look present
    if not dry_run:
        plan.apply()
    _report(out, plan, dry_run)
    if not present and not out.json:
        out.note(f"note: {plan.client.label} does not look installed here; the configuration waits for it")


@command(panel=SETUP, usage=("client", "scope"))
def uninstall(
    client: Annotated[str, typer.Argument(help=f"the MCP client: {CLIENT_NAMES}", show_default=False)],
    scope: ScopeOpt = "user",
    project: ProjectOpt = None,
    dry_run: DryRunOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Remove threadloom from an MCP client's configuration (and, for claude-code, our hooks);
    everything else in the file stays. Keeps a backup; the data in the root is not touched."""
    from .. import install as inst

    out = Out(as_json)
    plan = inst.plan_uninstall(client, scope=_scope(scope), project=project)
    if not dry_run:
        plan.apply()
    _report(out, plan, dry_run)


def _report(out: Out, plan: Any, dry_run: bool) -> None:
    if out.json:
        out.emit(plan.as_dict(dry_run=dry_run))
        return
    label = f"{plan.client.name} ({plan.scope})"
    if not plan.changes:
        out.note(f"{label}: threadloom is not configured (no configuration file); nothing to remove")
        return
    for change in plan.changes:
        if dry_run and change.changed:
            typer.echo(change.diff(), nl=False)
            continue
        if not change.changed:
            state = "already set up" if plan.action == "install" else "has no threadloom entry"
            out.note(f"{label}: {escape(str(change.path))} {state} ({change.what}); unchanged")
            continue
        verb = (
            "created"
            if change.before is None
            else ("updated" if plan.action == "install" else "removed from")
        )
        kept = f"; backup {escape(str(change.backup))}" if change.backup else ""
        out.note(f"{label}: {verb} {escape(str(change.path))} ({change.what}{kept})")
    if dry_run:
        out.note("dry run: nothing was written" if plan.changed else "dry run: nothing would change")
    elif plan.action == "install":
        out.note(f"server command: {escape(' '.join(plan.command))}")
        if plan.changed:
            out.note(f"restart {plan.client.label} to load it")


def _show_list(out: Out, statuses: list[Any]) -> None:
    if out.json:
        out.emit({"clients": [s.as_dict() for s in statuses]})
        return
    from rich import box
    from rich.table import Table

    table = Table(header_style="bold", box=box.SIMPLE_HEAD, show_edge=False)
    for col in ("client", "present", "scope", "threadloom", "config file"):
        table.add_column(col, no_wrap=col != "config file")
    for s in statuses:
        for scope, info in s.scopes.items():
            if "error" in info:
                state = "[red]unreadable[/red]"
            elif info["configured"]:
                state = "[green]configured[/green]"
                if info.get("hooks"):
                    state += f" + {len(info['hooks'])} hooks"
            else:
                state = "-"
            table.add_row(s.client.name, "yes" if s.present else "no", scope, state, escape(info["path"]))
    out.console.print(table)
    for s in statuses:
        for info in s.scopes.values():
            if "error" in info:
                out.note(f"[red]problem[/red] {escape(info['error'])}")
