"""Result models returned by the service and, unchanged, by the MCP tools."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from .models import ContextUsage, Exceeded, ForkPoint, Lease, Status, Thread


class ThreadPage(BaseModel):
    """One page of threads, newest first; pass ``next_cursor`` back to get the next page."""

    threads: list[Thread]
    next_cursor: str | None = Field(
        default=None, description="cursor of the next page; null on the last page"
    )


class EventPage(BaseModel):
    """Events in seq order; ``next_after_seq`` is the cursor for the next page."""

    thread_id: str
    events: list[dict[str, Any]]
    next_after_seq: int = Field(description="pass as after_seq to read the next page")
    has_more: bool
    event_count: int = Field(description="events in the thread in total")


class HandoffInfo(BaseModel):
    """Where an agent must continue after its thread handed off."""

    thread_id: str = Field(description="the continuation thread: append there from now on")
    previous_thread_id: str
    carried_messages: int = Field(
        description="conversation events carried into the new thread after its seed"
    )
    reason: str
    omitted_events: int = Field(
        default=0, description="events of the previous thread not carried (read them there)"
    )
    context: ContextUsage | None = Field(default=None, description="the new thread's context usage")
    message: str = Field(default="", description="what happened and what to do next, in words")


class AppendOutcome(BaseModel):
    """What an append committed: ``seq`` for one event, ``seqs`` for a batch."""

    thread_id: str
    seq: int | None = Field(default=None, description="seq of the event (single-event append)")
    seqs: list[int] | None = Field(default=None, description="seqs of the events (batch append)")
    replayed: bool = Field(
        default=False, description="true when an idempotency_key matched an earlier append"
    )
    status: Status
    context: ContextUsage
    handoff: HandoffInfo | None = None
    warning: str | None = Field(
        default=None, description="something the agent should know (e.g. a handoff could not run)"
    )
    exceeded: Exceeded | None = Field(
        default=None,
        description="set when this append went over a budget or limit: it was recorded and the thread moved to error",
    )


class WaitItem(BaseModel):
    """The outcome of one waited-on thread, reported under the id that was asked for."""

    thread_id: str = Field(description="the id that was asked for")
    resolved_thread_id: str = Field(description="the end of its continuation chain, whose outcome this is")
    status: Status
    status_reason: str | None = None
    done: bool = Field(description="true when the resolved thread is completed, error or cancelled")
    result: Any = None
    outputs: Any = None
    cost: float | None = None


class WaitResult(BaseModel):
    """What wait_threads saw when it returned."""

    mode: str
    settled: bool = Field(description="true when the wait condition (all/any) was met")
    threads: list[WaitItem]
    done: list[str] = Field(description="requested ids whose threads ended")
    timed_out: list[str] = Field(description="requested ids still open when the timeout ran out")
    waited_ms: float


class ChainLink(BaseModel):
    """One thread of a continuation chain, as get_chain lists it."""

    thread_id: str
    status: Status
    status_reason: str | None = None
    title: str | None = None
    created_at: str
    updated_at: str
    event_count: int
    cost: float | None = None
    context: ContextUsage
    link_reason: str | None = Field(
        default=None, description="how this thread joined the chain: handoff | resume"
    )
    continuation_of: str | None = None
    continuation_thread_id: str | None = None

    @classmethod
    def of(cls, t: Thread) -> ChainLink:
        return cls(
            thread_id=t.thread_id,
            status=t.status,
            status_reason=t.status_reason,
            title=t.title,
            created_at=t.created_at,
            updated_at=t.updated_at,
            event_count=t.event_count,
            cost=t.cost,
            context=t.context(),
            link_reason=t.link_reason,
            continuation_of=t.continuation_of,
            continuation_thread_id=t.continuation_thread_id,
        )


class ForkLink(BaseModel):
    """A fork made of one of a chain's threads, as get_chain lists it."""

    thread_id: str
    forked_from: ForkPoint
    status: Status
    title: str | None = None
    created_at: str
    event_count: int

    @classmethod
    def of(cls, t: Thread) -> ForkLink:
        assert t.forked_from is not None
        return cls(
            thread_id=t.thread_id,
            forked_from=t.forked_from,
            status=t.status,
            title=t.title,
            created_at=t.created_at,
            event_count=t.event_count,
        )


class ChainView(BaseModel):
    """A whole continuation chain, oldest first, with its resolved end."""

    thread_id: str = Field(description="the thread asked about")
    chain_root_id: str
    end_thread_id: str = Field(description="the chain's current end: where work goes on or ended")
    end_status: Status
    threads: list[ChainLink]
    total_events: int
    total_cost: float | None = Field(
        default=None, description="sum of the threads' cost (null if none reported)"
    )
    problems: list[str] = Field(
        default_factory=list, description="broken links or cycles; empty when healthy"
    )
    forks: list[ForkLink] = Field(
        default_factory=list,
        description="threads forked from this chain's threads (fork_thread), oldest first",
    )


class ResumeOutcome(BaseModel):
    """The thread a resume created, and its conversation ready for a model."""

    thread: Thread
    previous_thread_id: str = Field(description="the finished chain end that was resumed")
    carried_messages: int = Field(description="conversation events copied from the previous thread")
    trimmed: bool = Field(description="true when only the trailing part fitted below the threshold")
    omitted_events: int
    context: ContextUsage
    format: str
    system: str | None = Field(default=None, description="system prompt (anthropic format only)")
    messages: list[dict[str, Any]]
    message: str = Field(description="what happened, in words")


class DeleteOutcome(BaseModel):
    """What a delete removed; deleting again is a no-op that reports the ids as missing."""

    deleted: list[str] = Field(description="threads deleted now, with their events and mirrors")
    missing: list[str] = Field(default_factory=list, description="ids that did not exist (already deleted)")


class LeaseOutcome(BaseModel):
    """A thread's run lease after acquire_thread or release_thread."""

    thread_id: str
    lease: Lease | None = Field(description="owner and expires_at now; null when the thread is free")
    message: str


class ChildChain(BaseModel):
    """One child of a thread with the chain it grew into (continuations and resumes of a
    child are children too): where its work goes on or ended, and how it went."""

    thread_id: str = Field(description="the child the parent spawned (its chain's first thread)")
    title: str | None = None
    status: Status = Field(description="status of the chain's current end")
    end_thread_id: str = Field(description="the chain's current end: where the child's work goes on or ended")
    threads: int = Field(description="threads in the child's chain")
    last_activity: str = Field(description="newest updated_at among the chain's threads")
    result: Any = None
    cost: float | None = Field(default=None, description="sum of the chain's reported costs")


class ChildrenView(BaseModel):
    """What an orchestrator has in flight: its children, one entry per child chain, oldest first."""

    thread_id: str
    children: list[ChildChain]
    open: int = Field(description="children whose chain end is created, running or paused")


# ------------------------------------------------------------- operator jobs (CLI, doctor)


@dataclass(frozen=True, slots=True)
class ReindexStats:
    """What a reindex did: events added to the search index, index rows removed (rows
    whose event is gone or whose thread changed agent), and how many events the index
    holds afterwards."""

    added: int = 0
    removed: int = 0
    documents: int = 0
    reclaimed: int = 0
    """Bytes the database file gave back: SQLite compacts it when a quarter or more of it
    is free pages (as a layout migration leaves it, store/sqlrows.py)."""


ReindexProgress = Callable[[int, int], None]
"""Called as ``progress(done, total)`` while a reindex runs (possibly from a worker thread)."""


@dataclass(frozen=True, slots=True)
class EngineHealth:
    """The database engine this process links (``threadloom doctor``): SQLite's version and
    whether its full-text search (FTS5) works (``fts5_error`` says why not)."""

    name: str
    version: str
    version_info: tuple[int, ...]
    fts5_error: str | None = None


@dataclass(frozen=True, slots=True)
class DatabaseHealth:
    """What a read-only look at a root's database file found, before anything opens it for
    writing (which would migrate it and set WAL). A field is None when the look stopped
    before it: ``open_error`` (the file cannot be opened) or ``read_error`` (it failed part
    way; the fields before it stand)."""

    path: Path
    exists: bool
    schema_known: int
    """How many schema migrations this threadloom knows."""
    open_error: str | None = None
    journal_mode: str | None = None
    schema_version: int | None = None
    quick_check: str | None = None
    read_error: str | None = None
