"""Continuation chains (DESIGN §7): handoff at the context threshold, resume, the chain view.

A chain is one logical execution split across threads: A -> B -> C. A thread moves
on to a fresh sibling either by **handoff** (its context filled up, or the client
asked) or by **resume** (a finished thread gets a new instruction). Both plan the
same way:

1. pick the trailing conversation of the old thread, newest first, within a budget
   (``resume_ceiling_tokens``, and never so much that the new thread would start at
   or above its threshold), trimmed so that the first carried event is a ``user``
   message and no ``tool_use`` is carried without its ``tool_result`` or the reverse;
2. build the continuation thread (same parent, agent, directive, limits,
   capabilities, window) linked by ``continuation_of`` / ``chain_root_id``;
3. seed it with ``continued_from``, a continuation message rendered from the
   template, and the carried events;
4. link the old thread (``continued`` + ``continuation_thread_id`` for a handoff;
   only the link for a resume, whose old end stays terminal);
5. log ``handoff`` (or ``thread_resumed``) in the old thread.

The result is one list of store operations committed atomically, guarded by the old
thread's version and event count, so a race makes the caller re-plan instead of
losing an event. This module plans and reads; :class:`~threadloom.service.ThreadService`
decides when to run a plan and commits it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import LimitExceededError, NotFoundError
from .event_types import context_chars
from .models import (
    ContextUsage,
    ContinuedFromEvent,
    HandoffEvent,
    MessageEvent,
    Status,
    StatusEvent,
    StoredEvent,
    Thread,
    ThreadResumedEvent,
    event_payload,
    iso,
    new_thread_id,
    utc_now,
)
from .store.base import AppendEvents, CreateThread, NewEvent, Op, PutThread, Store
from .templates import render_continuation

__all__ = [
    "CONVERSATION_TYPES",
    "Carried",
    "ChainWalk",
    "ContinuationPlan",
    "context_of",
    "conversation_chars",
    "max_tokens_below",
    "plan_handoff",
    "plan_resume",
    "read_carry",
    "resolve_end",
    "threshold_of",
    "trim_carry",
    "walk_chain",
]

CONVERSATION_TYPES = frozenset({"message", "assistant_text", "tool_use", "tool_result"})
"""Event types that are part of the conversation a model sees (carried, copied, counted)."""

TAIL_PAGE_MIN = 64
"""Fewest events read per page while walking a thread's tail backwards."""

# ---------------------------------------------------------------------- context


def threshold_of(thread: Thread, default: float) -> float:
    """The thread's handoff threshold: its own override, else the server default."""
    return thread.trigger_threshold if thread.trigger_threshold is not None else default


def context_of(chars: int, window: int) -> ContextUsage:
    """Context usage of a conversation of ``chars`` characters (same formula as Thread.context)."""
    used = chars // 4
    return ContextUsage(used=used, window=window, ratio=round(used / window, 6))


def max_tokens_below(window: int, threshold: float) -> int:
    """The most tokens a thread may use and stay below ``threshold`` of ``window``."""
    used = max(0, math.ceil(threshold * window))
    while used > 0 and round(used / window, 6) >= threshold:
        used -= 1
    return used


conversation_chars = context_chars
"""Characters an event (a dict) adds to a model's context (event_types.context_chars)."""


# ------------------------------------------------------------------------ carry


@dataclass(frozen=True, slots=True)
class Carried:
    """A conversational event of the old thread chosen to seed the new one."""

    seq: int
    type: str
    payload: dict[str, Any]
    chars: int
    source: str | None = None
    """The thread it was read from (its payload is that event's, unchanged)."""

    @classmethod
    def from_stored(cls, ev: StoredEvent) -> Carried | None:
        """The event as carried, or None when it is no part of the conversation. The type is
        the line's own (what verification proves), never the row's ``type`` column."""
        data = ev.data()
        etype = data.get("type")
        if etype not in CONVERSATION_TYPES:
            return None
        del data["seq"], data["ts"]
        return cls(ev.seq, etype, data, conversation_chars(data), ev.thread_id)

    def new_event(self) -> NewEvent:
        copy_of = (self.source, self.seq) if self.source is not None else None
        return NewEvent(self.type, self.payload, self.chars, copy_of=copy_of)


def _is_user_message(ev: Carried) -> bool:
    return ev.type == "message" and ev.payload.get("role") == "user"


def trim_carry(events: Sequence[Carried]) -> list[Carried]:
    """Cut the front of a trailing run of events (oldest first) until it is well-formed.

    The first event must be a ``user`` message, and no ``tool_result`` may be kept
    whose ``tool_use`` was cut (a pending ``tool_use`` at the end is fine: its result
    will be appended to the new thread). Cutting again after either rule until both
    hold; the cut only moves forward, so this ends.
    """
    start, n = 0, len(events)
    while True:
        while start < n and not _is_user_message(events[start]):
            start += 1
        uses: set[str] = set()
        cut = -1
        for i in range(start, n):
            ev = events[i]
            if ev.type == "tool_use":
                uses.add(ev.payload.get("id", ""))
            elif ev.type == "tool_result" and ev.payload.get("tool_use_id") not in uses:
                cut = i
        if cut < 0:
            return list(events[start:])
        start = cut + 1


async def read_carry(store: Store, thread: Thread, budget_chars: int) -> list[Carried]:
    """The trailing conversation of ``thread`` that fits ``budget_chars``, trimmed.

    Reads the tail backwards in pages sized from the thread's average event size, so
    a 10,000-event thread costs one or two range reads near its end, never a scan of
    the whole thread. The fill is contiguous: the first event (newest first) that
    does not fit ends it, so nothing in the middle is ever skipped.
    """
    count = thread.event_count
    if count == 0 or budget_chars <= 0:
        return []
    avg = max(1, thread.text_chars // count)  # conversational characters per event, on average
    want = min(count, budget_chars * 5 // (4 * avg) + TAIL_PAGE_MIN)
    picked: list[Carried] = []
    used = 0
    hi = count
    full = False
    while hi > 0 and not full:
        lo = max(0, hi - want)
        page = await store.read_events(thread.thread_id, after_seq=lo, limit=hi - lo)
        for ev in reversed(page):
            c = Carried.from_stored(ev)
            if c is None:
                continue
            if used + c.chars > budget_chars:
                full = True
                break
            used += c.chars
            picked.append(c)
        hi = lo
        want *= 4
    picked.reverse()
    return trim_carry(picked)


# ------------------------------------------------------------------------- plans


@dataclass(slots=True)
class ContinuationPlan:
    """Everything a handoff or resume will commit, and what it will report."""

    old: Thread
    new: Thread
    ops: list[Op]
    carried: list[Carried]
    seed_text: str | None
    context: ContextUsage
    threshold: float
    trimmed: bool = True

    @property
    def omitted(self) -> int:
        """Events of the old thread (any type) that the new thread does not hold."""
        return self.old.event_count - len(self.carried)


def _continuation_thread(old: Thread, link: str, reason: str) -> Thread:
    now = iso(utc_now())
    return Thread(
        thread_id=new_thread_id(),
        agent_id=old.agent_id,
        title=old.title,
        directive=old.directive,
        parent_id=old.parent_id,
        status=Status.RUNNING,
        status_reason=f"continues {old.thread_id} ({reason})",
        model=old.model,
        context_window=old.context_window,
        trigger_threshold=old.trigger_threshold,
        stale_after=old.stale_after,
        limits=old.limits,
        capabilities=old.capabilities,
        budget=old.budget,
        metadata=dict(old.metadata),
        continuation_of=old.thread_id,
        chain_root_id=old.chain_root_id,
        link_reason=link,  # type: ignore[arg-type]
        created_at=now,
        updated_at=now,
        heartbeat_at=now,
    )


def _seed_budget(
    old: Thread,
    *,
    template: str,
    reason: str,
    summary: str | None,
    extra_chars: int,
    ceiling_tokens: int,
    threshold: float,
) -> tuple[int, int]:
    """(chars the carried events may use, chars of the longest possible seed message).

    The carry gets at most half of the room left below the threshold after the seed
    (and ``extra_chars``, e.g. a resume message), so that a continuation never starts
    right under its trigger and hands off again on its next append. Raises
    LimitExceededError when even the seed alone would not fit below the threshold.
    """
    longest_seed = len(
        render_continuation(
            template,
            directive=old.directive,
            previous_thread_id=old.thread_id,
            summary=summary,
            reason=reason,
            carried_count=old.event_count,
            omitted_count=old.event_count,
        )
    )
    max_chars = (max_tokens_below(old.context_window, threshold) + 1) * 4 - 1
    room = max_chars - longest_seed - extra_chars
    if room < 0:
        raise LimitExceededError(
            f"a continuation of thread {old.thread_id} cannot start below its threshold "
            f"{threshold} of {old.context_window} tokens: the continuation message alone is "
            f"~{longest_seed // 4} tokens (directive {len(old.directive or '') // 4}, summary "
            f"{len(summary or '') // 4}){f' plus {extra_chars // 4} for the new message' if extra_chars else ''}, "
            f"over the {max_chars // 4} available; shorten the summary or directive, or raise context_window",
            rule="continuation_too_large",
        )
    return min(ceiling_tokens * 4, room // 2), longest_seed


async def plan_handoff(
    store: Store,
    old: Thread,
    *,
    reason: str,
    summary: str | None,
    template: str,
    ceiling_tokens: int,
    threshold: float,
) -> ContinuationPlan:
    """Plan the five steps of a handoff of the running thread ``old`` (nothing is written).

    Raises:
        LimitExceededError: the continuation could not start below the threshold.
    """
    budget, _ = _seed_budget(
        old,
        template=template,
        reason=reason,
        summary=summary,
        extra_chars=0,
        ceiling_tokens=ceiling_tokens,
        threshold=threshold,
    )
    carried = await read_carry(store, old, budget)
    new = _continuation_thread(old, "handoff", reason)
    seed = render_continuation(
        template,
        directive=old.directive,
        previous_thread_id=old.thread_id,
        summary=summary,
        reason=reason,
        carried_count=len(carried),
        omitted_count=old.event_count - len(carried),
    )
    seed_event = event_payload(MessageEvent(role="user", text=seed))
    first = event_payload(
        ContinuedFromEvent(from_thread_id=old.thread_id, reason=reason, carried_count=len(carried))
    )
    new_events = (
        NewEvent("continued_from", first),
        NewEvent("message", seed_event, len(seed)),
        *(c.new_event() for c in carried),
    )
    status_ev = StatusEvent(**{"from": Status.RUNNING, "to": Status.CONTINUED, "reason": reason})
    handoff_ev = HandoffEvent(
        to_thread_id=new.thread_id, trailing_count=len(carried), reason=reason, summary=summary
    )
    linked = old.model_copy(
        update={"status": Status.CONTINUED, "status_reason": reason, "continuation_thread_id": new.thread_id}
    )
    ops: list[Op] = [
        CreateThread(new),
        AppendEvents(new.thread_id, new_events),
        AppendEvents(
            old.thread_id,
            (NewEvent("status", event_payload(status_ev)), NewEvent("handoff", event_payload(handoff_ev))),
            allowed_statuses=frozenset({Status.RUNNING}),
            expect_event_count=old.event_count,
        ),
        PutThread(linked, expect_version=old.version),
    ]
    chars = len(seed) + sum(c.chars for c in carried)
    return ContinuationPlan(old, new, ops, carried, seed, context_of(chars, new.context_window), threshold)


async def plan_resume(
    store: Store,
    end: Thread,
    message: str,
    *,
    template: str,
    ceiling_tokens: int,
    threshold: float,
) -> ContinuationPlan:
    """Plan a resume of the finished chain end ``end`` with the user's ``message``.

    The whole conversation is copied when it fits below the threshold with the
    message; otherwise only its trailing part within the ceiling, after a
    continuation message (reason ``resume``), exactly as a handoff carries it.
    """
    window = end.context_window
    max_chars = (max_tokens_below(window, threshold) + 1) * 4 - 1
    reason = "resume"
    if end.text_chars + len(message) <= max_chars:
        events = await store.read_events(end.thread_id)
        carried = [c for e in events if (c := Carried.from_stored(e)) is not None]
        seed: str | None = None
        trimmed = False
    else:
        budget, _ = _seed_budget(
            end,
            template=template,
            reason=reason,
            summary=None,
            extra_chars=len(message),
            ceiling_tokens=ceiling_tokens,
            threshold=threshold,
        )
        carried = await read_carry(store, end, budget)
        seed = render_continuation(
            template,
            directive=end.directive,
            previous_thread_id=end.thread_id,
            summary=None,
            reason=reason,
            carried_count=len(carried),
            omitted_count=end.event_count - len(carried),
        )
        trimmed = True
    new = _continuation_thread(end, "resume", reason)
    first = event_payload(
        ContinuedFromEvent(from_thread_id=end.thread_id, reason=reason, carried_count=len(carried))
    )
    new_events: list[NewEvent] = [NewEvent("continued_from", first)]
    if seed is not None:
        new_events.append(NewEvent("message", event_payload(MessageEvent(role="user", text=seed)), len(seed)))
    new_events += [c.new_event() for c in carried]
    new_events.append(
        NewEvent("message", event_payload(MessageEvent(role="user", text=message)), len(message))
    )
    resumed = ThreadResumedEvent(to_thread_id=new.thread_id, message=message)
    ops: list[Op] = [
        CreateThread(new),
        AppendEvents(new.thread_id, tuple(new_events)),
        AppendEvents(end.thread_id, (NewEvent("thread_resumed", event_payload(resumed)),)),
        PutThread(
            end.model_copy(update={"continuation_thread_id": new.thread_id}), expect_version=end.version
        ),
    ]
    chars = (len(seed) if seed else 0) + sum(c.chars for c in carried) + len(message)
    return ContinuationPlan(end, new, ops, carried, seed, context_of(chars, window), threshold, trimmed)


# ------------------------------------------------------------------------ chains


@dataclass(slots=True)
class ChainWalk:
    """A chain in link order, its resolved end, and anything wrong with its links."""

    root_id: str
    threads: list[Thread]
    end: Thread
    problems: list[str] = field(default_factory=list)


async def resolve_end(store: Store, thread: Thread) -> tuple[Thread, str | None]:
    """Follow forward links from ``thread`` to the chain's end.

    Returns (end, problem): ``problem`` describes a cycle or a link to a missing
    thread, where the walk stopped (a visited set makes a cycle end the walk).
    """
    seen = {thread.thread_id}
    while thread.continuation_thread_id:
        nxt_id = thread.continuation_thread_id
        if nxt_id in seen:
            return thread, f"cycle: thread {thread.thread_id} links back to {nxt_id}"
        try:
            nxt = await store.get_thread(nxt_id)
        except NotFoundError:
            return thread, f"thread {thread.thread_id} links to missing thread {nxt_id}"
        seen.add(nxt_id)
        thread = nxt
    return thread, None


async def walk_chain(store: Store, start: Thread) -> ChainWalk:
    """Every thread of ``start``'s chain: the link order from the root, then any stray member.

    Members are the threads sharing ``chain_root_id`` (one indexed query) plus any
    thread a forward link reaches. The end is resolved from ``start`` (what appends
    and resumes use), so a corrupted chain still answers where ``start`` leads.
    """
    members = {t.thread_id: t for t in await store.list_chain(start.chain_root_id)}
    members[start.thread_id] = start
    problems: list[str] = []
    # the first thread: the root, else the earliest ancestor reachable backwards from start
    first = members.get(start.chain_root_id)
    if first is None:
        problems.append(f"chain root {start.chain_root_id} does not exist")
        first, seen_back = start, {start.thread_id}
        while first.continuation_of and first.continuation_of not in seen_back:
            prev = members.get(first.continuation_of) or (
                await store.get_threads([first.continuation_of])
            ).get(first.continuation_of)
            if prev is None:
                break
            seen_back.add(prev.thread_id)
            first = prev
    ordered: list[Thread] = []
    seen: set[str] = set()
    cur: Thread | None = first
    while cur is not None:
        ordered.append(cur)
        seen.add(cur.thread_id)
        nxt_id = cur.continuation_thread_id
        if not nxt_id:
            break
        if nxt_id in seen:
            problems.append(f"cycle: thread {cur.thread_id} links back to {nxt_id}")
            break
        cur = members.get(nxt_id) or (await store.get_threads([nxt_id])).get(nxt_id)
        if cur is None:
            problems.append(f"thread {ordered[-1].thread_id} links to missing thread {nxt_id}")
    stray = sorted(
        (t for t in members.values() if t.thread_id not in seen), key=lambda t: (t.created_at, t.thread_id)
    )
    if stray:
        problems.append(
            "not reachable by links from the chain's start: " + ", ".join(t.thread_id for t in stray)
        )
    end, problem = await resolve_end(store, start)
    if problem and problem not in problems:
        problems.append(problem)
    return ChainWalk(start.chain_root_id, ordered + stray, end, problems)
