"""The MCP layer: typed tools and resources over one :class:`ThreadService`.

Thin on purpose: each tool validates nothing itself, calls the service, and turns a
domain error into a tool error whose text names the rule, the value and the next step.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Annotated, Any, Literal, ParamSpec, TypeVar

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ResourceNotFoundError, ToolError
from mcp.server.subscriptions import InMemorySubscriptionBus
from mcp.types import CallToolResult, TextContent, ToolAnnotations
from pydantic import BaseModel, Field

from . import __version__
from .capabilities import Capabilities
from .errors import InvalidInputError, NotFoundError, ThreadloomError
from .mcp_scope import install_scope_middleware
from .messages import FORMATS
from .models import Budget, Limits, Thread, check_thread_id
from .numbers import quote
from .resource_watch import ResourceWatch, serve_subscriptions
from .results import (
    AppendOutcome,
    ChainView,
    DeleteOutcome,
    EventPage,
    HandoffInfo,
    LeaseOutcome,
    ResumeOutcome,
    ThreadPage,
    WaitResult,
)
from .schema_flat import flatten_tool_schemas
from .search import ChainSearchResults, ThreadSearchResults
from .service import ThreadService
from .tool_args import guard_resource_uris, guard_tool_arguments
from .tool_surface import apply_tool_surface
from .verify import VerifyReport

P = ParamSpec("P")
R = TypeVar("R")

INSTRUCTIONS = """\
threadloom keeps durable threads for agents: an append-only, numbered log of what an
agent saw and did, plus a small manifest (status, title, result, cost, metadata).
Typical flow: create_thread -> append_event (messages, tool calls, results) ->
update_thread(status="completed", result=...). Read back with read_events (paged) or
the thread://{id}/transcript and thread://{id}/messages resources. Thread ids are 12
lowercase hex digits. Errors name the rule that failed and how to fix the call.
When a thread's context fills up (append_event's context.ratio reaches the threshold,
0.9 by default) the server hands the work off to a new thread: the append_event
result then carries `handoff.thread_id`; append there from now on. handoff_thread
does the same on request (with your summary); get_chain shows the whole chain;
resume_thread gives a finished chain a new instruction.
"""

READ_ONLY = ToolAnnotations(read_only_hint=True, idempotent_hint=True, open_world_hint=False)
WRITE = ToolAnnotations(read_only_hint=False, destructive_hint=False, open_world_hint=False)

ThreadId = Annotated[str, Field(description="thread id (12 lowercase hex digits)")]
StatusName = Literal["created", "running", "paused", "completed", "error", "cancelled", "continued"]
Owner = Annotated[str | None, Field(description="your owner name, if you hold the thread's lease")]
MessageFormat = Annotated[
    Literal["neutral", "anthropic", "openai"],
    Field(
        description="neutral content blocks; 'anthropic': Messages API shape (system apart, text/tool_use/"
        "tool_result blocks); 'openai': chat completions shape (tool_calls, role tool)"
    ),
]


def tool_errors(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Turn domain errors into MCP tool errors (``is_error``) that keep their message."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            result = await fn(*args, **kwargs)
        except ThreadloomError as exc:
            raise ToolError(f"[{exc.rule}] {exc.message}") from exc
        if isinstance(result, BaseModel):  # compact text beside the structured content
            data = result.model_dump(mode="json")
            text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
            return CallToolResult(content=[TextContent(type="text", text=text)], structured_content=data)  # type: ignore[return-value]
        return result

    return wrapper


def build_server(service: ThreadService, *, allow_delete: bool = False) -> MCPServer:
    """An MCPServer exposing ``service`` as threadloom's tools and resources.

    ``allow_delete`` adds the ``delete_thread`` tool (``threadloom serve --allow-delete``);
    without it no MCP client can erase history.
    """
    bus = InMemorySubscriptionBus()
    server: MCPServer = MCPServer(
        "threadloom", instructions=INSTRUCTIONS, version=__version__, log_level="WARNING", subscriptions=bus
    )
    serve_subscriptions(server, ResourceWatch(service, bus))

    # ------------------------------------------------------------------ tools

    @server.tool(annotations=WRITE)
    @tool_errors
    async def create_thread(
        agent_id: Annotated[
            str | None, Field(description="owner namespace; defaults to the parent's agent, else 'default'")
        ] = None,
        directive: Annotated[str | None, Field(description="the task this thread works on")] = None,
        title: Annotated[str | None, Field(description="short human-readable title")] = None,
        parent_id: Annotated[
            str | None, Field(description="orchestrator thread that spawns this child")
        ] = None,
        model: Annotated[str | None, Field(description="model name, for the record")] = None,
        context_window: Annotated[
            int | None, Field(description="context window in tokens (default 200000)")
        ] = None,
        trigger_threshold: Annotated[
            float | None, Field(description="handoff threshold as a fraction of the window (default 0.9)")
        ] = None,
        stale_after: Annotated[
            float | None, Field(description="seconds without a heartbeat before a running thread times out")
        ] = None,
        limits: Annotated[Limits | None, Field(description="caps on this thread's own usage")] = None,
        capabilities: Annotated[
            Capabilities | None,
            Field(description="the agent's tool definitions and capability tree (signed, read-only)"),
        ] = None,
        budget: Annotated[
            Budget | None,
            Field(description="spend budget for this thread and its descendants"),
        ] = None,
        metadata: Annotated[dict[str, Any] | None, Field(description="free-form JSON object")] = None,
    ) -> Thread:
        """Create a thread (status 'created') at the start of a task; returns its manifest
        with thread_id. With parent_id it is a child of an orchestrator thread, and its
        budget.max_spend is reserved from the parent's remaining budget."""
        return await service.create_thread(
            agent_id=agent_id,
            directive=directive,
            title=title,
            parent_id=parent_id,
            model=model,
            context_window=context_window,
            trigger_threshold=trigger_threshold,
            stale_after=stale_after,
            limits=limits,
            capabilities=capabilities,
            budget=budget,
            metadata=metadata,
        )

    @server.tool(annotations=WRITE)
    @tool_errors
    async def append_event(
        thread_id: ThreadId,
        event: Annotated[
            dict[str, Any] | None,
            Field(
                description=(
                    "one event: message {role: user|assistant|system, text}; tool_use {id, name, "
                    "input}; tool_result {tool_use_id, output, is_error}; assistant_text {text}; result "
                    "{cost, turns, input_tokens, output_tokens, duration_ms}; or type 'x-...'. "
                    "No type: a message."
                )
            ),
        ] = None,
        events: Annotated[
            list[dict[str, Any]] | None,
            Field(description="several events, appended all or nothing"),
        ] = None,
        idempotency_key: Annotated[
            str | None,
            Field(description="unique string: a retry with it returns the first seq(s)"),
        ] = None,
        owner: Owner = None,
    ) -> AppendOutcome:
        """Append one event or a batch to a thread's log. Returns seq (or seqs), status and
        context {used, window, ratio}; the first append moves a created thread to running.
        When context.ratio reaches the threshold the server hands off: the result has
        handoff.thread_id, append there from then on. End each turn with a result event
        (cost, turns, tokens): over a budget or limit, the thread moves to error (exceeded)."""
        if (event is None) == (events is None):
            raise ToolError(
                "[event_or_events] give exactly one of 'event' (one object) or 'events' (a list); "
                f"got {'both' if event is not None else 'neither'}"
            )
        if event is not None:
            return await service.append(
                thread_id, [event], idempotency_key=idempotency_key, single=True, owner=owner
            )
        assert events is not None
        return await service.append(thread_id, events, idempotency_key=idempotency_key, owner=owner)

    @server.tool(annotations=READ_ONLY)
    @tool_errors
    async def get_thread(thread_id: ThreadId) -> Thread:
        """A thread's manifest: status, title, directive, result, outputs, cost, chain links,
        forked_from, lease, event_count, timestamps, children by status, usage and budget."""
        return await service.get_thread(thread_id)

    @server.tool(annotations=READ_ONLY)
    @tool_errors
    async def verify_thread(thread_id: ThreadId) -> VerifyReport:
        """Check a thread's records are intact: signatures, checkpoints, the hash chain, and
        transcript.jsonl against the database. Returns ok, problems and first_bad_line."""
        return await service.verify_thread(thread_id)

    @server.tool(annotations=READ_ONLY)
    @tool_errors
    async def list_threads(
        agent_id: Annotated[str | None, Field(description="only this agent's threads")] = None,
        parent_id: Annotated[str | None, Field(description="only children of this thread")] = None,
        status: Annotated[StatusName | None, Field(description="only threads in this status")] = None,
        limit: Annotated[int, Field(description="page size, 1-200")] = 50,
        cursor: Annotated[str | None, Field(description="next_cursor from the previous page")] = None,
    ) -> ThreadPage:
        """List threads newest first, filtered by agent, parent or status; paged with cursor."""
        return await service.list_threads(
            agent_id=agent_id, parent_id=parent_id, status=status, limit=limit, cursor=cursor
        )

    @server.tool(annotations=READ_ONLY)
    @tool_errors
    async def read_events(
        thread_id: ThreadId,
        after_seq: Annotated[int, Field(description="return events with seq greater than this")] = 0,
        limit: Annotated[int, Field(description="page size, 1-1000")] = 100,
        wait: Annotated[
            float | None,
            Field(description="seconds (0-300) to wait for an event past after_seq if none exists yet"),
        ] = None,
    ) -> EventPage:
        """Read a thread's events in seq order, a page at a time.

        Pass the returned next_after_seq as after_seq to read on while has_more is true.
        With wait, the call returns as soon as anyone appends past after_seq (e.g. a parent's
        message to this running child), or with no events at the timeout.
        """
        return await service.read_events(thread_id, after_seq=after_seq, limit=limit, wait=wait)

    @server.tool(annotations=WRITE)
    @tool_errors
    async def update_thread(
        thread_id: ThreadId,
        status: Annotated[
            Literal["running", "paused", "completed", "error", "cancelled"] | None,
            Field(
                description="new status (created->running<->paused; any open -> completed|error|cancelled)"
            ),
        ] = None,
        reason: Annotated[str | None, Field(description="why the status changed")] = None,
        result: Annotated[Any, Field(description="the thread's final result (any JSON)")] = None,
        outputs: Annotated[Any, Field(description="named outputs (any JSON)")] = None,
        cost: Annotated[float | None, Field(description="total cost in your currency unit")] = None,
        title: Annotated[str | None, Field(description="new title")] = None,
        metadata: Annotated[
            dict[str, Any] | None, Field(description="merged into metadata; a key set to null is removed")
        ] = None,
        cascade: Annotated[
            bool, Field(description="when ending the thread, also cancel its open child threads")
        ] = False,
        owner: Owner = None,
    ) -> Thread:
        """Change a thread's status and/or set result, outputs, cost, title or metadata.
        End a task with status='completed' (or error/cancelled) and its result. Illegal
        transitions are refused, naming the allowed ones."""
        kwargs: dict[str, Any] = {}
        if result is not None:
            kwargs["result"] = result
        if outputs is not None:
            kwargs["outputs"] = outputs
        return await service.update_thread(
            thread_id,
            status=status,
            reason=reason,
            cost=cost,
            title=title,
            metadata=metadata,
            cascade=cascade,
            owner=owner,
            **kwargs,
        )

    @server.tool(annotations=READ_ONLY)
    @tool_errors
    async def wait_threads(
        thread_ids: Annotated[
            list[str], Field(description="threads to wait for (e.g. the children you spawned)")
        ],
        ctx: Context,
        mode: Annotated[
            Literal["all", "any"], Field(description="'all': until every thread ended; 'any': until one did")
        ] = "all",
        timeout: Annotated[
            float | None,
            Field(description="seconds to wait at most (default 600); 0 checks without waiting"),
        ] = None,
    ) -> WaitResult:
        """Wait, without polling, until the threads end (completed, error or cancelled),
        following handoffs to each chain's end (resolved_thread_id). Returns each one's
        status, result, outputs and cost, and which timed out; sends progress notifications."""

        async def progress(done: int, total: int, message: str) -> None:
            await ctx.report_progress(done, total, message)

        return await service.wait_threads(thread_ids, mode=mode, timeout=timeout, on_progress=progress)

    @server.tool(annotations=WRITE)
    @tool_errors
    async def handoff_thread(
        thread_id: ThreadId,
        summary: Annotated[
            str | None,
            Field(description="your account of the work so far and what comes next; it opens the new thread"),
        ] = None,
        reason: Annotated[str | None, Field(description="why, for the record (default 'explicit')")] = None,
        owner: Owner = None,
    ) -> HandoffInfo:
        """Continue a running thread in a fresh one now, before its context fills up: it
        opens with a continuation message (directive, your summary) and the recent
        messages; this one becomes 'continued'. Append to the returned thread_id."""
        return await service.handoff(thread_id, summary=summary, reason=reason or "explicit", owner=owner)

    @server.tool(annotations=READ_ONLY)
    @tool_errors
    async def get_chain(thread_id: ThreadId) -> ChainView:
        """The continuation chain of a thread (any member): threads in order (status,
        event_count, cost, context, link_reason), end_thread_id (where the work goes on or
        ended) and forks."""
        return await service.get_chain(thread_id)

    @server.tool(annotations=WRITE)
    @tool_errors
    async def resume_thread(
        thread_id: ThreadId,
        message: Annotated[str, Field(description="the new instruction, appended as a user message")],
        format: MessageFormat = "neutral",
    ) -> ResumeOutcome:
        """Give a finished chain (its end completed, error or cancelled) a new instruction:
        a new thread gets the end's conversation (the recent part if all would not fit)
        plus your message; returned with its messages in format, ready for a model."""
        return await service.resume(thread_id, message, format=format)

    @server.tool(annotations=WRITE)
    @tool_errors
    async def fork_thread(
        thread_id: ThreadId,
        at_seq: Annotated[int | None, Field(description="copy events up to this seq (default: all)")] = None,
        title: Annotated[str | None, Field(description="the fork's title (default: the source's)")] = None,
        directive: Annotated[str | None, Field(description="the fork's task (default: the source's)")] = None,
    ) -> Thread:
        """Branch a thread to try another path: a new thread (status 'created') holding
        copies of its messages and tool events up to at_seq, with forked_from {thread_id,
        seq}. An at_seq between a tool_use and its tool_result is refused, naming the nearest
        valid seqs. The fork has its own chain, checkpoints and a fresh budget."""
        return await service.fork_thread(thread_id, at_seq=at_seq, title=title, directive=directive)

    @server.tool(annotations=WRITE)
    @tool_errors
    async def acquire_thread(
        thread_id: ThreadId,
        owner: Annotated[str, Field(description="who runs the thread, e.g. 'worker-1' (1-200 characters)")],
        ttl: Annotated[float, Field(description="seconds the lease lasts without a write by you (1-3600)")],
    ) -> LeaseOutcome:
        """Lease a thread for one runner. Until it expires or is released, append_event,
        update_thread and handoff_thread calls that do not pass owner=<you> are refused
        ([thread_leased], naming the holder and expiry); each of your writes renews it.
        Acquiring again renews. Refused while someone else holds an unexpired lease."""
        return await service.acquire_thread(thread_id, owner, ttl)

    @server.tool(annotations=WRITE)
    @tool_errors
    async def release_thread(
        thread_id: ThreadId,
        owner: Annotated[str, Field(description="the owner that acquired the lease")],
    ) -> LeaseOutcome:
        """Release your lease of a thread (a free thread stays free); refused if another owner holds it."""
        return await service.release_thread(thread_id, owner)

    if allow_delete:

        @server.tool(
            annotations=ToolAnnotations(
                read_only_hint=False, destructive_hint=True, idempotent_hint=True, open_world_hint=False
            )
        )
        @tool_errors
        async def delete_thread(
            thread_id: ThreadId,
            chain: Annotated[
                bool,
                Field(description="delete the thread's whole continuation chain"),
            ] = False,
        ) -> DeleteOutcome:
            """Delete a finished thread for good (manifest, events, files); one of a chain goes
            only with its whole chain (chain=true). A missing thread is reported, not an error."""
            return await service.delete_threads([thread_id], chain=chain)

    @server.tool(annotations=READ_ONLY)
    @tool_errors
    async def chain_search(
        thread_id: ThreadId,
        query: Annotated[
            str,
            Field(
                description=(
                    'text: words, "a phrase", prefix*, -excluded; regex: an RE2 pattern ((?i) ignores case)'
                )
            ),
        ],
        search_type: Annotated[
            Literal["text", "regex", "semantic", "hybrid"] | None,
            Field(
                description="text (ranked, full-text index), regex (in order), semantic (by meaning) or "
                "hybrid (both fused); default: hybrid when the server has semantic search, else text"
            ),
        ] = None,
        limit: Annotated[int, Field(description="most hits to return, 1-100")] = 20,
        context: Annotated[int, Field(description="events to show before and after each hit, 0-10")] = 3,
        include_tools: Annotated[
            bool, Field(description="also search tool call inputs and tool outputs")
        ] = False,
    ) -> ChainSearchResults:
        """Search every thread of a continuation chain (any member) for earlier events,
        e.g. where an error first appeared. Text hits come best first, regex hits in chain
        order; each has thread_id, seq, role, a **marked** snippet, matched and the events around it."""
        return await service.chain_search(
            thread_id,
            query,
            search_type=search_type,
            limit=limit,
            context=context,
            include_tools=include_tools,
        )

    @server.tool(annotations=READ_ONLY)
    @tool_errors
    async def search_threads(
        query: Annotated[
            str,
            Field(description='words, "a phrase", prefix*, -excluded'),
        ],
        agent_id: Annotated[str | None, Field(description="only this agent's threads")] = None,
        limit: Annotated[int, Field(description="most threads to return, 1-50")] = 5,
        context: Annotated[int, Field(description="events to show before and after each hit, 0-10")] = 3,
        mode: Annotated[
            Literal["hybrid", "text", "semantic"] | None,
            Field(
                description="text (words), semantic (meaning) or hybrid (both fused); default: hybrid "
                "when the server has semantic search, else text"
            ),
        ] = None,
    ) -> ThreadSearchResults:
        """Search past threads' messages ("have I solved this before?"): the best threads
        first, one hit each with title, status, a **marked** snippet, matched and the events around it."""
        return await service.search_threads(query, agent_id=agent_id, limit=limit, context=context, mode=mode)

    # -------------------------------------------------------------- resources

    cap = service.settings.max_resource_bytes

    async def _resource(thread_id: str, make: Callable[[str], Awaitable[str]]) -> str:
        try:
            check_thread_id(thread_id)
            return await make(thread_id)
        except (NotFoundError, InvalidInputError) as exc:
            raise ResourceNotFoundError(f"[{exc.rule}] {exc.message}") from exc
        except ThreadloomError as exc:  # e.g. resource_size: too big for one read
            raise ResourceError(f"[{exc.rule}] {exc.message}") from exc

    async def _manifest(thread_id: str) -> str:
        return await service.manifest_json(thread_id)

    async def _messages(thread_id: str) -> str:
        return json.dumps(await service.messages(thread_id, max_bytes=cap), ensure_ascii=False)

    async def _chain(thread_id: str) -> str:
        return (await service.get_chain(thread_id)).model_dump_json()

    @server.resource("thread://{thread_id}/transcript", mime_type="application/x-ndjson")
    async def transcript(thread_id: str) -> str:
        """The thread's events as JSONL, one canonical JSON line per event, in seq order."""
        return await _resource(thread_id, partial(service.transcript, max_bytes=cap))

    @server.resource("thread://{thread_id}/thread.json", mime_type="application/json")
    async def thread_json(thread_id: str) -> str:
        """The thread's manifest snapshot (the same bytes as threads/<id>/thread.json)."""
        return await _resource(thread_id, _manifest)

    @server.resource("thread://{thread_id}/capabilities.md", mime_type="text/markdown")
    async def capabilities_md(thread_id: str) -> str:
        """The thread's tool definitions and capability tree, signed (threads/<id>/capabilities.md)."""
        return await _resource(thread_id, service.capabilities_md)

    @server.resource("thread://{thread_id}/messages", mime_type="application/json")
    async def messages(thread_id: str) -> str:
        """The thread's conversation rebuilt from its events: [{role, content: [blocks]}]."""
        return await _resource(thread_id, _messages)

    @server.resource("thread://{thread_id}/messages{?format}", mime_type="application/json")
    async def formatted_messages(thread_id: str, format: str = "neutral") -> str:
        """The conversation in a provider's shape: `?format=anthropic` gives {system?, messages}
        (Messages API), `?format=openai` gives {messages} (chat completions)."""
        if format not in FORMATS:
            raise ResourceNotFoundError(f"format must be one of {', '.join(FORMATS)}; got {quote(format)}")

        async def make(tid: str) -> str:
            return json.dumps(await service.conversation(tid, format, max_bytes=cap), ensure_ascii=False)

        return await _resource(thread_id, make)

    @server.resource("thread://{thread_id}/transcript.md", mime_type="text/markdown")
    async def transcript_md(thread_id: str) -> str:
        """The thread as a readable Markdown transcript: a manifest header, then every event
        (the same text as `threadloom export --format md`)."""
        from .transcript_md import thread_markdown

        return await _resource(thread_id, lambda tid: thread_markdown(service, tid))

    async def _children(thread_id: str) -> str:
        return (await service.children(thread_id)).model_dump_json()

    @server.resource("thread://{thread_id}/children", mime_type="application/json")
    async def children(thread_id: str) -> str:
        """The thread's children, one entry per child chain: status, end_thread_id (where its
        work goes on), last_activity, result and cost (re-read it after a context compaction)."""
        return await _resource(thread_id, _children)

    @server.resource("chain://{thread_id}", mime_type="application/json")
    async def chain_view(thread_id: str) -> str:
        """The continuation chain of a thread (any member): the same JSON as get_chain."""
        return await _resource(thread_id, _chain)

    flatten_tool_schemas(server)
    apply_tool_surface(server)
    guard_tool_arguments(server)
    guard_resource_uris(server)
    install_scope_middleware(server)
    return server
