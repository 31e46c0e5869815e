"""Result models returned by the service and, unchanged, by the MCP tools."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from .models import ContextUsage, Status, Thread


class ThreadPage(BaseModel):
    """One page of threads, newest first; pass ``next_cursor`` back to get the next page."""

    threads: list[Thread]
    next_cursor: str | None = Field(default=None, description="cursor of the next page; null on the last page")


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
    carried_messages: int
    reason: str


class AppendOutcome(BaseModel):
    """What an append committed: ``seq`` for one event, ``seqs`` for a batch."""

    thread_id: str
    seq: int | None = Field(default=None, description="seq of the event (single-event append)")
    seqs: list[int] | None = Field(default=None, description="seqs of the events (batch append)")
    replayed: bool = Field(default=False, description="true when an idempotency_key matched an earlier append")
    status: Status
    context: ContextUsage
    handoff: HandoffInfo | None = None


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
