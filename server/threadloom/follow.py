"""Follow a thread live (``threadloom tail -f``): its new events, then its chain's next threads.

Waking is push-based, never a timer re-reading events. When the service has the wake
hub (``service.hub``, issue 5) the follower subscribes to the thread it follows, so
commits of this process (commit listeners) and of other processes sharing the root
(the store's external watch: SQLite ``data_version``, PostgreSQL LISTEN/NOTIFY) wake
it. Without a hub, the same two sources are watched here directly: the store's commit
listeners, and ``PRAGMA data_version`` on one read-only connection checked every few
milliseconds (a cheap pragma on an open connection; events are read only when it moved).
See docs/operator-cli.md.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio

from .models import TERMINAL, StoredEvent, Thread
from .service import ThreadService

DATA_VERSION_INTERVAL = 0.005  # seconds between data_version checks (PERF-NOTES: p50 2.4 ms, 0.7% CPU)
READ_PAGE = 500


class ChangeSignal:
    """An edge-triggered flag: ``arm`` before reading, ``wait`` after, and no change is lost."""

    def __init__(self) -> None:
        self._event = anyio.Event()

    def arm(self) -> None:
        if self._event.is_set():
            self._event = anyio.Event()

    def fire(self) -> None:
        self._event.set()

    async def wait(self) -> None:
        await self._event.wait()

    def watch(self, thread_id: str) -> None:
        """Every commit fires this signal: nothing to add for another thread."""


class _HubWaker:
    """The same three calls over a wake-hub subscription (changes of the watched threads only)."""

    def __init__(self, sub: Any) -> None:
        self._sub = sub

    def arm(self) -> None:
        """A subscription keeps what arrived while the caller read: nothing to do."""

    async def wait(self) -> None:
        await self._sub.next()

    def watch(self, thread_id: str) -> None:
        self._sub.watch([thread_id])


@asynccontextmanager
async def wake_on_change(service: ThreadService, thread_id: str) -> AsyncIterator[ChangeSignal | _HubWaker]:
    """Wake-ups for changes of ``thread_id`` (and threads added with ``watch``): the
    service's wake hub when it has one, else :func:`watch_store`."""
    hub = getattr(service, "hub", None)
    if hub is not None and hasattr(hub, "subscribe"):
        async with hub.subscribe([thread_id]) as sub:
            yield _HubWaker(sub)
    else:
        async with watch_store(service) as signal:
            yield signal


@asynccontextmanager
async def watch_store(service: ThreadService) -> AsyncIterator[ChangeSignal]:
    """A signal fired by every commit to the store, in this process or (SQLite) any other."""
    signal = ChangeSignal()

    def on_commit(_ids: frozenset[str]) -> None:
        signal.fire()

    store = service.store
    store.add_commit_listener(on_commit)
    db = getattr(store, "path", None)
    try:
        async with anyio.create_task_group() as tg:
            if isinstance(db, Path):
                tg.start_soon(_watch_data_version, db, signal)
            yield signal
            tg.cancel_scope.cancel()
    finally:
        store.remove_commit_listener(on_commit)


async def _watch_data_version(db: Path, signal: ChangeSignal) -> None:
    """Fire ``signal`` whenever another connection commits to ``db``."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, check_same_thread=False)
    try:
        last = conn.execute("PRAGMA data_version").fetchone()[0]
        while True:
            await anyio.sleep(DATA_VERSION_INTERVAL)
            now = conn.execute("PRAGMA data_version").fetchone()[0]
            if now != last:
                last = now
                signal.fire()
    finally:
        conn.close()


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
    async with wake_on_change(service, thread_id) as signal:
        while True:
            signal.arm()
            thread = await service.store.get_thread(current)  # the manifest first: its count bounds the read
            while True:
                events = await service.store.read_events(current, after_seq=after, limit=READ_PAGE)
                for ev in events:
                    on_event(ev)
                if events:
                    after = events[-1].seq
                if len(events) < READ_PAGE:
                    break
            if after >= thread.event_count and thread.continuation_thread_id:
                on_hop(thread, thread.continuation_thread_id)
                current, after = thread.continuation_thread_id, 0
                signal.watch(current)
                continue
            if until_done and thread.status in TERMINAL and after >= thread.event_count:
                return
            await signal.wait()
