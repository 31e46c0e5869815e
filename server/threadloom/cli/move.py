"""Moving data between roots: ``export`` (a bundle, or Markdown) and ``import``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from ..config import Settings
from .common import (
    MOVE,
    JsonOpt,
    Out,
    RootOpt,
    arguments,
    check_ids,
    command,
    fail,
    open_service,
    run,
    settings_from,
)


@command("export", panel=MOVE)
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
    from ..bundle import atomic_output, check_output, collect_chains, export_bundle

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
        with arguments():
            check_output(output, settings.root, force=force)

    async def body() -> Any:
        async with open_service(settings) as svc:
            if all_:
                from ..lineage import group_chains

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
    from ..bundle import atomic_output, check_output
    from ..transcript_md import chain_markdown, thread_markdown

    if output is not None:
        with arguments():
            check_output(output, settings.root, force=force)

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


@command("import", panel=MOVE)
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
    from ..bundle import import_files

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
