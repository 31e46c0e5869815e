"""The thread page's timeline: events in pages, tool calls paired with their results.

A page is the events after a seq, at most ``limit`` of them, extended (by at most
``LOOKAHEAD`` events) until every tool call in it has its result, so a call and its
result are shown together; a result whose call is on another page (or that came late,
live) is rendered on its own with ``data-for`` and the page script puts it beside its
call. Reads go through the service only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..service import ThreadService

FIRST_PAGE = 50
"""Events rendered with the thread page itself (the first screen)."""
NEXT_PAGE = 200
"""Events per fragment loaded as the user scrolls."""
LOOKAHEAD = 100
"""Most events read past a page's end to find the results of its tool calls."""


@dataclass
class Item:
    """One row of the timeline: an event, or a tool call with its result."""

    kind: str
    seq: int
    ts: str
    data: dict[str, Any]
    result: dict[str, Any] | None = None
    """For a tool call: its tool_result event, when it is on this page."""

    @property
    def is_error(self) -> bool:
        if self.kind == "tool_result":
            return bool(self.data.get("is_error"))
        return bool(self.result and self.result.get("is_error"))


@dataclass
class Page:
    items: list[Item] = field(default_factory=list)
    last_seq: int = 0
    has_more: bool = False
    event_count: int = 0
    first_seq: int = 1
    """The seq the page starts at (above 1: earlier events can be loaded)."""


def pair(events: list[dict[str, Any]]) -> list[Item]:
    """Timeline items of ``events`` (seq order): each tool result joins the call before it."""
    items: list[Item] = []
    calls: dict[str, Item] = {}
    for ev in events:
        kind = str(ev.get("type", "message"))
        item = Item(kind, int(ev.get("seq", 0)), str(ev.get("ts", "")), ev)
        if kind == "tool_use":
            calls[str(ev.get("id"))] = item
        elif kind == "tool_result":
            call = calls.get(str(ev.get("tool_use_id")))
            if call is not None and call.result is None:
                call.result = ev
                continue
        items.append(item)
    return items


def _open_calls(events: list[dict[str, Any]]) -> set[str]:
    open_: set[str] = set()
    for ev in events:
        if ev.get("type") == "tool_use":
            open_.add(str(ev.get("id")))
        elif ev.get("type") == "tool_result":
            open_.discard(str(ev.get("tool_use_id")))
    return open_


async def read_page(service: ThreadService, thread_id: str, *, after_seq: int, limit: int) -> Page:
    """The timeline page after ``after_seq`` (NotFoundError for a missing thread)."""
    page = await service.read_events(thread_id, after_seq=after_seq, limit=limit)
    events = list(page.events)
    has_more, count = page.has_more, page.event_count
    looked = 0
    while has_more and looked < LOOKAHEAD:
        open_ = _open_calls(events)
        if not open_:
            break
        more = await service.read_events(thread_id, after_seq=int(events[-1]["seq"]), limit=20)
        take = 0  # up to the last result of a call still open on this page
        for i, ev in enumerate(more.events, 1):
            if ev.get("type") == "tool_result" and str(ev.get("tool_use_id")) in open_:
                take = i
        if take == 0:  # no result in this stretch: take it and keep looking
            take = len(more.events)
        events += more.events[:take]
        looked += take
        has_more = more.has_more or take < len(more.events)
    last = int(events[-1]["seq"]) if events else after_seq
    return Page(pair(events), last, has_more, count, after_seq + 1)


async def read_before(service: ThreadService, thread_id: str, *, before_seq: int, limit: int) -> Page:
    """The events just before ``before_seq`` (scrolling back from the latest), not extended:
    a result shown further down is put beside its call by the page script."""
    after = max(0, before_seq - 1 - limit)
    page = await service.read_events(thread_id, after_seq=after, limit=max(1, before_seq - 1 - after))
    events = [e for e in page.events if int(e["seq"]) < before_seq]
    last = int(events[-1]["seq"]) if events else after
    return Page(pair(events), last, True, page.event_count, after + 1)
