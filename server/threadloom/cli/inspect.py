"""Looking at threads: ``ls``, ``show``, ``tail`` (``-f`` follows live), ``search`` and
``fork`` (branch a thread, docs/live.md)."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import anyio
import typer
from rich.text import Text

from ..models import Status, StoredEvent, Thread
from ..service import MAX_LIST, ThreadService
from .common import (
    INSPECT,
    JsonOpt,
    Out,
    RootOpt,
    ThreadArg,
    check_ids,
    command,
    fail,
    open_service,
    run,
    settings_from,
    thread_json,
)


@command("ls", panel=INSPECT)
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
    from ..render import threads_table

    if not rows:
        out.note("no threads" + (" match" if agent or status or parent else " yet"))
        return
    out.console.print(threads_table(rows, width=out.console.width))
    out.note(f"{len(rows)} thread(s), newest first" + (f"; more with --limit {limit * 2}" if more else ""))


@command(panel=INSPECT)
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
                parent = (await svc.get_threads([thread.parent_id])).get(thread.parent_id)
            children = {}
            for member in chain:
                kids = await svc.list_threads(parent_id=member.thread_id, limit=MAX_LIST)
                if kids.threads:
                    children[member.thread_id] = list(reversed(kids.threads))
            after = max(0, thread.event_count - events)
            tail = await svc.stored_events(thread_id, after_seq=after) if events else []
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

    from ..render import chain_tree, event_summary, manifest_table

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


@command(panel=INSPECT)
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
    from ..render import event_summary, hop_rule

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
        from ..follow import follow

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
            for ev in await svc.stored_events(thread_id, after_seq=after):
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


@command(panel=INSPECT)
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
    from ..render import print_search

    print_search(out.console, data)


@command(panel=INSPECT)
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
