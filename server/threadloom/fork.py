"""Forks (issue 18 item 2): a new thread that starts from another thread's conversation.

``fork_thread(thread_id, at_seq?)`` copies the source's conversation events (``message``,
``assistant_text``, ``tool_use``, ``tool_result``) with ``seq <= at_seq`` into a new thread
in status ``created``. The fork is a thread of its own: its own chain (``chain_root_id`` is
its id), hash chain and checkpoints, a fresh budget and usage, and ``forked_from {thread_id,
seq}`` pointing back. A fork never separates a tool call from its result: an ``at_seq``
between a ``tool_use`` and its ``tool_result`` is refused, naming the nearest seqs that
keep every pair whole. This module plans; the service commits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .chain import CONVERSATION_TYPES, Carried
from .errors import InvalidInputError
from .models import ForkPoint, Status, StoredEvent, Thread, iso, new_thread_id, utc_now
from .store.base import NewEvent

__all__ = ["ToolSpan", "check_fork_seq", "fork_events", "fork_thread_model", "tool_spans"]


@dataclass(frozen=True, slots=True)
class ToolSpan:
    """A tool call and its result: ``use_seq`` < ``result_seq``."""

    tool_use_id: str
    use_seq: int
    result_seq: int


def tool_spans(events: Sequence[StoredEvent]) -> list[ToolSpan]:
    """Every tool call of ``events`` (in seq order) that has its result later on."""
    open_uses: dict[str, int] = {}
    spans: list[ToolSpan] = []
    for ev in events:
        if ev.type == "tool_use":
            open_uses[str(ev.data().get("id", ""))] = ev.seq
        elif ev.type == "tool_result":
            use_id = str(ev.data().get("tool_use_id", ""))
            use_seq = open_uses.pop(use_id, None)
            if use_seq is not None:
                spans.append(ToolSpan(use_id, use_seq, ev.seq))
    return spans


def check_fork_seq(thread_id: str, at_seq: int, event_count: int, events: Sequence[StoredEvent]) -> None:
    """Refuse an ``at_seq`` outside 0..event_count, or one that falls between a tool call
    and its result (``events``: the whole source thread, in seq order).

    Raises:
        InvalidInputError: ``at_seq_range``, or ``fork_splits_tool_call`` naming the call and
            the nearest valid seqs below and above.
    """
    if isinstance(at_seq, bool) or not isinstance(at_seq, int) or not (0 <= at_seq <= event_count):
        raise InvalidInputError(
            f"at_seq must be between 0 and {event_count} (the events of thread {thread_id}); got {at_seq!r:.50}",
            rule="at_seq_range",
        )
    spans = tool_spans(events)
    split = [s for s in spans if s.use_seq <= at_seq < s.result_seq]
    if not split:
        return
    # a seq is valid when no span covers it: [use_seq, result_seq - 1] are the invalid ones
    invalid = sorted((s.use_seq, s.result_seq - 1) for s in spans)
    merged: list[list[int]] = []
    for lo, hi in invalid:
        if merged and lo <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    lo, hi = next((a, b) for a, b in merged if a <= at_seq <= b)
    first = min(split, key=lambda s: s.use_seq)
    raise InvalidInputError(
        f"at_seq {at_seq} would split tool call {first.tool_use_id!r:.80} (tool_use at seq {first.use_seq}) "
        f"from its tool_result (seq {first.result_seq}) in thread {thread_id}; the nearest seqs that keep "
        f"every tool call with its result are {lo - 1} and {hi + 1}",
        rule="fork_splits_tool_call",
    )


def fork_events(events: Sequence[StoredEvent], at_seq: int) -> list[NewEvent]:
    """The copies a fork at ``at_seq`` starts with: the conversation events up to it, in order."""
    return [
        Carried.from_stored(ev).new_event()
        for ev in events
        if ev.seq <= at_seq and ev.type in CONVERSATION_TYPES
    ]


def fork_thread_model(source: Thread, at_seq: int, *, title: str | None, directive: str | None) -> Thread:
    """The new fork's manifest: the source's settings, a chain and accounts of its own."""
    now = iso(utc_now())
    tid = new_thread_id()
    return Thread(
        thread_id=tid,
        agent_id=source.agent_id,
        title=title if title is not None else source.title,
        directive=directive if directive is not None else source.directive,
        parent_id=source.parent_id,
        status=Status.CREATED,
        status_reason=f"forked from {source.thread_id} at seq {at_seq}",
        model=source.model,
        context_window=source.context_window,
        trigger_threshold=source.trigger_threshold,
        stale_after=source.stale_after,
        limits=source.limits,
        capabilities=source.capabilities,
        metadata=dict(source.metadata),
        chain_root_id=tid,
        forked_from=ForkPoint(thread_id=source.thread_id, seq=at_seq),
        created_at=now,
        updated_at=now,
        heartbeat_at=now,
    )
