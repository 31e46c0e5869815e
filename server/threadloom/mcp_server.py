"""The MCP layer: typed tools and resources over one :class:`ThreadService`.

Thin on purpose: each tool validates nothing itself, calls the service, and turns a
domain error into a tool error whose text names the rule, the value and the next step.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal, ParamSpec, TypeVar

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ResourceNotFoundError, ToolError
from mcp.types import ToolAnnotations
from pydantic import Field

from . import __version__
from .errors import InvalidInputError, NotFoundError, ThreadloomError
from .mirror import manifest_bytes
from .models import Budget, Limits, Thread, check_thread_id
from .results import AppendOutcome, EventPage, ThreadPage
from .search import ChainSearchResults, ThreadSearchResults
from .service import ThreadService

P = ParamSpec("P")
R = TypeVar("R")

INSTRUCTIONS = """\
threadloom keeps durable threads for agents: an append-only, numbered log of what an
agent saw and did, plus a small manifest (status, title, result, cost, metadata).
Typical flow: create_thread -> append_event (messages, tool calls, results) ->
update_thread(status="completed", result=...). Read back with read_events (paged) or
the thread://{id}/transcript and thread://{id}/messages resources. Thread ids are 12
lowercase hex digits. Errors name the rule that failed and how to fix the call.
"""

READ_ONLY = ToolAnnotations(read_only_hint=True, idempotent_hint=True, open_world_hint=False)
WRITE = ToolAnnotations(read_only_hint=False, destructive_hint=False, open_world_hint=False)

ThreadId = Annotated[str, Field(description="thread id: 12 lowercase hex digits, e.g. '3f9a0c2b7d41'")]
StatusName = Literal["created", "running", "paused", "completed", "error", "cancelled", "continued"]


def tool_errors(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Turn domain errors into MCP tool errors (``is_error``) that keep their message."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await fn(*args, **kwargs)
        except ThreadloomError as exc:
            raise ToolError(f"[{exc.rule}] {exc.message}") from exc

    return wrapper


def build_server(service: ThreadService) -> MCPServer:
    """An MCPServer exposing ``service`` as threadloom's tools and resources."""
    server: MCPServer = MCPServer(
        "threadloom", instructions=INSTRUCTIONS, version=__version__, log_level="WARNING"
    )

    # ------------------------------------------------------------------ tools

    @server.tool(annotations=WRITE)
    @tool_errors
    async def create_thread(
        agent_id: Annotated[
            str | None, Field(description="owner namespace; defaults to the parent's agent, else 'default'")
        ] = None,
        directive: Annotated[str | None, Field(description="the task this thread works on")] = None,
        title: Annotated[str | None, Field(description="short human-readable title")] = None,
        parent_id: Annotated[str | None, Field(description="orchestrator thread that spawns this child")] = None,
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
        limits: Limits | None = None,
        capabilities: Annotated[
            dict[str, Any] | None, Field(description="tool definitions and capability tree of the agent")
        ] = None,
        budget: Budget | None = None,
        metadata: Annotated[dict[str, Any] | None, Field(description="free-form JSON object")] = None,
    ) -> Thread:
        """Create a new thread (status 'created') and return its manifest with its thread_id.

        Call this once at the start of a task; then record everything with append_event
        using the returned thread_id. Give parent_id to create a child thread of an
        orchestrator.
        """
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
                    "one event. Types: message {role: user|assistant|system, text}; "
                    "tool_use {id, name, input}; tool_result {tool_use_id, output, is_error}; "
                    "assistant_text {text}; result {cost, duration_ms, turns, input_tokens, "
                    "output_tokens, cache_read_tokens}; or a custom type starting with 'x-'. "
                    "Without 'type' it is a message."
                )
            ),
        ] = None,
        events: Annotated[
            list[dict[str, Any]] | None,
            Field(description="several events appended atomically (all or nothing), in order"),
        ] = None,
        idempotency_key: Annotated[
            str | None,
            Field(description="any unique string; retrying with the same key returns the original seq(s)"),
        ] = None,
    ) -> AppendOutcome:
        """Append one event (`event`) or several (`events`) to a thread's log.

        Returns `seq` (or `seqs` for a batch), the thread's status and its context usage
        (`context.used/window/ratio`). The first append moves a created thread to
        running. Pass an idempotency_key when you may retry, so nothing is written twice.
        """
        if (event is None) == (events is None):
            raise ToolError(
                "[event_or_events] give exactly one of 'event' (one object) or 'events' (a list); "
                f"got {'both' if event is not None else 'neither'}"
            )
        if event is not None:
            return await service.append(thread_id, [event], idempotency_key=idempotency_key, single=True)
        assert events is not None
        return await service.append(thread_id, events, idempotency_key=idempotency_key)

    @server.tool(annotations=READ_ONLY)
    @tool_errors
    async def get_thread(thread_id: ThreadId) -> Thread:
        """Return a thread's manifest: status, title, directive, result, outputs, cost,
        chain links, counters (event_count) and timestamps."""
        return await service.get_thread(thread_id)

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
    ) -> EventPage:
        """Read a thread's events in seq order, a page at a time.

        Pass the returned next_after_seq as after_seq to read on while has_more is true.
        """
        return await service.read_events(thread_id, after_seq=after_seq, limit=limit)

    @server.tool(annotations=WRITE)
    @tool_errors
    async def update_thread(
        thread_id: ThreadId,
        status: Annotated[
            Literal["running", "paused", "completed", "error", "cancelled"] | None,
            Field(description="new status; allowed: created->running, running<->paused, "
                  "created|running|paused -> completed|error|cancelled"),
        ] = None,
        reason: Annotated[str | None, Field(description="why the status changed")] = None,
        result: Annotated[Any, Field(description="the thread's final result (any JSON)")] = None,
        outputs: Annotated[Any, Field(description="named outputs (any JSON)")] = None,
        cost: Annotated[float | None, Field(description="total cost in your currency unit")] = None,
        title: str | None = None,
        metadata: Annotated[
            dict[str, Any] | None, Field(description="merged into metadata; a key set to null is removed")
        ] = None,
    ) -> Thread:
        """Change a thread's status and/or set result, outputs, cost, title or metadata.

        End a task with status='completed' (or 'error'/'cancelled') and its result.
        Illegal status transitions are refused and name the allowed ones.
        """
        kwargs: dict[str, Any] = {}
        if result is not None:
            kwargs["result"] = result
        if outputs is not None:
            kwargs["outputs"] = outputs
        return await service.update_thread(
            thread_id, status=status, reason=reason, cost=cost, title=title, metadata=metadata, **kwargs
        )

    @server.tool(annotations=READ_ONLY)
    @tool_errors
    async def chain_search(
        thread_id: ThreadId,
        query: Annotated[
            str,
            Field(
                description=(
                    "text: words (all preferred, any accepted), \"exact phrase\", prefix* (3+ letters), "
                    "-excluded; regex: an RE2 pattern (no backreferences or lookaround; (?i) for any case)"
                )
            ),
        ],
        search_type: Annotated[
            Literal["text", "regex"], Field(description="text (ranked, full-text index) or regex (in order)")
        ] = "text",
        limit: Annotated[int, Field(description="most hits to return, 1-100")] = 20,
        context: Annotated[int, Field(description="events to show before and after each hit, 0-10")] = 3,
        include_tools: Annotated[
            bool, Field(description="also search tool call inputs and tool outputs")
        ] = False,
    ) -> ChainSearchResults:
        """Search every thread of a continuation chain (give any thread of it) for earlier events.

        Use it to find where something happened in a long run that was handed off across
        threads, e.g. where an error first appeared. Text hits come best first (events
        holding every word before those holding some); regex hits come in chain order,
        oldest first. Each hit has thread_id, seq, role, ts, a snippet with matches between
        ** markers, and the events before/after it; read more with read_events.
        """
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
            Field(
                description='words (all preferred, any accepted), "exact phrase", prefix* (3+ letters), -excluded'
            ),
        ],
        agent_id: Annotated[str | None, Field(description="only this agent's threads")] = None,
        limit: Annotated[int, Field(description="most threads to return, 1-50")] = 5,
        context: Annotated[int, Field(description="events to show before and after each hit, 0-10")] = 3,
    ) -> ThreadSearchResults:
        """Search past threads' messages ("have I solved something like this before?").

        Returns the best-matching threads, best first, one hit each (its best message) with
        the thread's title, status, a snippet with matches between ** markers and the
        events around the hit. Pass agent_id to search only that agent's threads.
        """
        return await service.search_threads(query, agent_id=agent_id, limit=limit, context=context)

    # -------------------------------------------------------------- resources

    async def _resource(thread_id: str, make: Callable[[str], Awaitable[str]]) -> str:
        try:
            check_thread_id(thread_id)
            return await make(thread_id)
        except (NotFoundError, InvalidInputError) as exc:
            raise ResourceNotFoundError(exc.message) from exc

    async def _manifest(thread_id: str) -> str:
        return manifest_bytes(await service.get_thread(thread_id)).decode()

    async def _messages(thread_id: str) -> str:
        return json.dumps(await service.messages(thread_id), ensure_ascii=False)

    @server.resource("thread://{thread_id}/transcript", mime_type="application/x-ndjson")
    async def transcript(thread_id: str) -> str:
        """The thread's events as JSONL, one canonical JSON line per event, in seq order."""
        return await _resource(thread_id, service.transcript)

    @server.resource("thread://{thread_id}/thread.json", mime_type="application/json")
    async def thread_json(thread_id: str) -> str:
        """The thread's manifest snapshot (the same bytes as threads/<id>/thread.json)."""
        return await _resource(thread_id, _manifest)

    @server.resource("thread://{thread_id}/messages", mime_type="application/json")
    async def messages(thread_id: str) -> str:
        """The thread's conversation rebuilt from its events: [{role, content: [blocks]}]."""
        return await _resource(thread_id, _messages)

    return server
