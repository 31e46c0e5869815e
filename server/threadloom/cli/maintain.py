"""Keeping a root healthy: ``gc`` (retention), ``doctor``, ``delete`` and ``reindex``."""

from __future__ import annotations

import json
import sys
import time
from typing import Annotated, Any

import typer
from rich.markup import escape

from ..config import Settings
from ..models import Thread
from ..results import ReindexStats
from .common import (
    MAINTAIN,
    JsonOpt,
    Out,
    RootOpt,
    check_ids,
    command,
    confirm_or_fail,
    open_service,
    run,
    settings_from,
)


@command(panel=MAINTAIN)
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
    from ..retention import parse_age, parse_statuses, plan_gc, run_gc

    settings = settings_from(root=root)
    out = Out(as_json)
    age, statuses = parse_age(older_than), parse_statuses(status)

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
                await svc.vacuum()
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

    from ..render import status_text, ts_short

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


@command(panel=MAINTAIN)
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
    from ..doctor import run_doctor

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


@command(panel=MAINTAIN)
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
            found = await svc.get_threads(plan.deleted)
            return plan, [found[t] for t in plan.deleted if t in found]

    plan, doomed = run(preview)
    if dry_run:
        if out.json:
            out.emit({**plan.model_dump(mode="json"), "dry_run": True})
        elif doomed:
            from ..render import threads_table

            out.console.print(threads_table(doomed, title="would delete", width=out.console.width))
        for tid in plan.missing:
            out.note(f"{tid} does not exist (nothing to delete)")
        return
    if doomed and not yes and out.interactive:
        from ..render import threads_table

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


@command(panel=MAINTAIN, code=2)
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
    if embeddings:
        result, seconds = run(_reindex_embeddings, settings)
        if as_json:
            counts = {"embedded": result.embedded, "cleaned": result.cleaned, "vectors": result.vectors}
            typer.echo(json.dumps({**counts, "model": result.model, "seconds": round(seconds, 3)}, indent=2))
            return
        typer.echo(
            f"embeddings: {result.embedded} embedded, {result.cleaned} cleaned; {result.vectors} vectors "
            f"of model {result.model} ({seconds:.1f} s)"
        )
        return
    stats, seconds = run(_reindex, settings, as_json)
    if as_json:
        out = {
            "added": stats.added,
            "removed": stats.removed,
            "documents": stats.documents,
            "reclaimed_bytes": stats.reclaimed,
        }
        typer.echo(json.dumps({**out, "seconds": round(seconds, 3)}, indent=2))
        return
    typer.echo(
        f"search index: {stats.added} event(s) added, {stats.removed} row(s) removed; "
        f"{stats.documents} events indexed ({seconds:.1f} s)"
        + (f"; the database gave back {stats.reclaimed:,} bytes" if stats.reclaimed else "")
    )


async def _reindex(settings: Settings, quiet: bool = False) -> tuple[ReindexStats, float]:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    started = time.perf_counter()
    async with open_service(settings, repair=True) as service:
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

    console = Console(stderr=True)
    started = time.perf_counter()
    async with open_service(settings, repair=True) as service:
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
