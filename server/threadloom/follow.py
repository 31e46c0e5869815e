"""Follow a thread live (``threadloom tail -f``): its new events, then its chain's next threads.

Waking is push-based, never a timer re-reading events: the follower subscribes to the
thread it follows through the service's wake hub (``service.watch``), so commits of this
process (commit listeners) and of other processes sharing the root (the store's external
watch: SQLite ``data_version``, PostgreSQL LISTEN/NOTIFY) wake it, and events are read
only after a wake. See docs/operator-cli.md.
"""

from __future__ import annotations

from collections.abc import Callable

from .models import TERMINAL, StoredEvent, Thread
from .service import ThreadService

READ_PAGE = 500


async def follow(
    service: ThreadService,
    thread_id: str,
    on_event: Callable[[StoredEvent], None],
    on_hop: Callable[[Thread, str], None],
    *,
    after_seq: int = 0,
    until_done: bool = False,
) -> None:
    """Hand the thread's events after ``after_seq`` to ``on_event`` as they commit, then its chain's.

    When the thread has been continued (handoff or resume) and all of its events were
    handed over, ``on_hop(old_thread, next_id)`` is called and the next thread is followed
    from its first event. Runs until cancelled or, with ``until_done``, until the chain's
    end is completed, error or cancelled and nothing is left to read.
    """
    current = thread_id
    after = after_seq
    # watching starts before the first read, and a subscription keeps what commits meanwhile:
    # nothing committed between a read and the wait is missed
    sub = service.watch([thread_id])
    try:
        while True:
            thread = await service.get_thread(current, children=False)  # its count bounds the read
            while True:
                events = await service.stored_events(current, after_seq=after, limit=READ_PAGE)
                for ev in events:
                    on_event(ev)
                if events:
                    after = events[-1].seq
                if len(events) < READ_PAGE:
                    break
            if after >= thread.event_count and thread.continuation_thread_id:
                on_hop(thread, thread.continuation_thread_id)
                current, after = thread.continuation_thread_id, 0
                sub.watch([current])
                continue
            if until_done and thread.status in TERMINAL and after >= thread.event_count:
                return
            await sub.next()
    finally:
        sub.close()
