"""``threadloom fork``: the CLI side of live threads (docs/live.md), registered on cli.app."""

from __future__ import annotations

from typing import Annotated

import typer

from .cli import INSPECT, JsonOpt, Out, RootOpt, ThreadArg, app, check_ids, open_service, run, settings_from
from .models import Thread


@app.command(rich_help_panel=INSPECT)
def fork(
    thread_id: ThreadArg,
    root: RootOpt = None,
    at_seq: Annotated[
        int | None, typer.Option("--at-seq", min=0, help="copy events up to this seq (default: all)")
    ] = None,
    title: Annotated[str | None, typer.Option(help="the fork's title (default: the source's)")] = None,
    directive: Annotated[str | None, typer.Option(help="the fork's task (default: the source's)")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Branch a thread: a new thread (status created) with copies of its conversation up to
    --at-seq, linked by forked_from. A seq between a tool call and its result is refused,
    naming the nearest valid seqs."""
    settings = settings_from(root=root)
    out = Out(as_json)
    check_ids([thread_id])

    async def body() -> Thread:
        async with open_service(settings) as svc:
            return await svc.fork_thread(thread_id, at_seq=at_seq, title=title, directive=directive)

    new = run(body)
    if out.json:
        out.emit(new.model_dump(mode="json"))
        return
    assert new.forked_from is not None
    typer.echo(new.thread_id)
    out.note(
        f"forked {new.forked_from.thread_id} at seq {new.forked_from.seq} into {new.thread_id} "
        f"({new.event_count} events, status {new.status.value})"
    )
