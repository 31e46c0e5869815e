"""Agent scopes in the service: which threads the caller being served may see and write.

The caller's :class:`~threadloom.scope.AgentScope` is :func:`~threadloom.scope.current_scope`
(set per request by the HTTP guard and the MCP layer; unrestricted for stdio and the
CLI). A thread of an agent outside the scope is reported exactly as a thread that does
not exist (``thread_not_found``, the same words), is left out of every list and search,
and cannot be written, waited on, subscribed to or used as a parent. Every service
method that takes a thread id starts with :func:`visible`; the helpers here do nothing
(and cost nothing) for an unrestricted caller.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from .errors import InvalidInputError, NotFoundError
from .models import DEFAULT_AGENT_ID, Status, Thread, check_agent_id, check_thread_id
from .numbers import quote
from .scope import current_scope

if TYPE_CHECKING:
    from .search import ThreadSearchResults
    from .store.base import Store

T = TypeVar("T", bound=Thread)


def not_found(thread_id: str) -> NotFoundError:
    """The error a thread outside the scope gets: the store's own words for a missing thread."""
    return NotFoundError(f"thread {thread_id!r} does not exist", rule="thread_not_found")


def allows(thread: Thread) -> bool:
    """True when the current caller may see ``thread``."""
    return current_scope().allows(thread.agent_id)


async def visible(store: Store, thread_id: str, *, field: str = "thread_id") -> Thread | None:
    """Check the current caller may see ``thread_id``: the thread (read for a scoped caller
    only; None for an unrestricted one).

    Raises:
        InvalidInputError: a malformed id.
        NotFoundError: no such thread, or one of an agent outside the scope.
    """
    scope = current_scope()
    check_thread_id(thread_id, field=field)
    if scope.unrestricted:
        return None
    thread = await store.get_thread(thread_id)
    if not scope.allows(thread.agent_id):
        raise not_found(thread_id)
    return thread


def keep(threads: Iterable[T]) -> list[T]:
    """The threads the current caller may see, in their order."""
    scope = current_scope()
    return list(threads) if scope.unrestricted else [t for t in threads if scope.allows(t.agent_id)]


def keep_map(threads: Mapping[str, T]) -> dict[str, T]:
    """``threads`` (id -> thread) without the ones the current caller may not see."""
    scope = current_scope()
    if scope.unrestricted:
        return dict(threads)
    return {k: t for k, t in threads.items() if scope.allows(t.agent_id)}


def agent_for_new_thread(agent_id: str | None, parent: Thread | None) -> str:
    """The agent of a thread being created: the one given, else the parent's, else the
    default agent (for a caller scoped to one agent: that agent).

    Raises:
        InvalidInputError: ``agent_scope`` when the current caller may not act for it.
    """
    scope = current_scope()
    if agent_id is None:
        if parent is not None:
            agent_id = parent.agent_id
        elif scope.unrestricted or scope.allows(DEFAULT_AGENT_ID):
            agent_id = DEFAULT_AGENT_ID
        elif len(scope.sorted_agents()) == 1:
            agent_id = scope.sorted_agents()[0]
        elif not scope.sorted_agents():
            raise InvalidInputError("this request may act for no agent", rule="agent_scope")
        else:
            raise InvalidInputError(
                "give agent_id: this token acts for several agents "
                f"({quote(', '.join(scope.sorted_agents()))})",
                rule="agent_scope",
            )
    check_agent_id(agent_id)
    if not scope.allows(agent_id):
        raise InvalidInputError(
            f"agent_id {quote(agent_id)} is not an agent this token may act for; it may act for "
            f"{quote(', '.join(scope.sorted_agents()))}",
            rule="agent_scope",
        )
    return agent_id


async def list_threads(
    store: Store,
    *,
    agent_id: str | None,
    parent_id: str | None,
    status: Status | None,
    limit: int,
    before: tuple[str, str] | None,
) -> list[Thread]:
    """``store.list_threads`` limited to the current scope, in the same order and paging.

    Several agents: one keyset page per agent, merged newest first (the store's order).
    """
    scope = current_scope()
    kw: dict[str, Any] = {"parent_id": parent_id, "status": status, "limit": limit, "before": before}
    if scope.unrestricted:
        return await store.list_threads(agent_id=agent_id, **kw)
    if agent_id is not None:
        return await store.list_threads(agent_id=agent_id, **kw) if scope.allows(agent_id) else []
    pages = [await store.list_threads(agent_id=a, **kw) for a in scope.sorted_agents()]
    merged = heapq.merge(*pages, key=lambda t: (t.created_at, t.thread_id), reverse=True)
    return [t for _, t in zip(range(limit), merged, strict=False)]


async def child_counts(store: Store, parent_id: str) -> dict[str, int]:
    """How many children ``parent_id`` has by status, counting only visible ones."""
    counts = await store.child_counts(parent_id)
    scope = current_scope()
    if scope.unrestricted or not counts:
        return counts
    out: dict[str, int] = {}
    for agent in scope.sorted_agents():
        before: tuple[str, str] | None = None
        while True:
            rows = await store.list_threads(agent_id=agent, parent_id=parent_id, limit=500, before=before)
            for t in rows:
                out[t.status.value] = out.get(t.status.value, 0) + 1
            if len(rows) < 500:
                break
            before = (rows[-1].created_at, rows[-1].thread_id)
    return out


async def search_threads(
    store: Store, query: str, *, agent_id: str | None, limit: int, context: int, **options: Any
) -> ThreadSearchResults:
    """search.search_threads limited to the current scope (several agents: merged by score).

    ``options`` go to search.search_threads as they are (``mode``, ``semantic``)."""
    from .search import search_threads as search

    scope = current_scope()
    if scope.unrestricted:
        return await search(store, query, agent_id=agent_id, limit=limit, context=context, **options)
    if agent_id is not None:
        found = await search(store, query, agent_id=agent_id, limit=limit, context=context, **options)
        return found if scope.allows(agent_id) else found.model_copy(update={"results": []})
    agents = scope.sorted_agents()
    if not agents:  # a request that lost its token's scope: check the query, find nothing
        found = await search(store, query, agent_id=DEFAULT_AGENT_ID, limit=limit, context=context, **options)
        return found.model_copy(update={"results": [], "agent_id": None})
    each = [await search(store, query, agent_id=a, limit=limit, context=context, **options) for a in agents]
    results = sorted((r for found in each for r in found.results), key=lambda r: -(r.score or 0.0))
    return each[0].model_copy(update={"results": results[:limit], "agent_id": None})
