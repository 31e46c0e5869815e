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


class DeleteOutcome(BaseModel):
    """What a delete removed; deleting again is a no-op that reports the ids as missing."""

    deleted: list[str] = Field(description="threads deleted now, with their events and mirrors")
    missing: list[str] = Field(default_factory=list, description="ids that did not exist (already deleted)")
