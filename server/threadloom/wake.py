"""Push-based wake-ups for waiters: one hub per store, one query per change.

Commits made through this process reach the hub through the store's commit
listeners; commits made by other processes reach it through the store's external
watch (SQLite ``PRAGMA data_version``, PostgreSQL LISTEN/NOTIFY). Either way the
hub reads the watched threads that changed **once** (for other processes' commits, an
indexed range read of threads updated since its last look) and hands the fresh
manifests to every subscription that watches them, so a thousand waiters cost one
query per commit.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from datetime import timedelta

from .models import Thread, iso, parse_iso, utc_now
from .store.base import Store

log = logging.getLogger("threadloom.wake")

CLOCK_MARGIN = 2.0  # seconds of overlap when reading changes since the last look
CHANGED_LIMIT = 500


def thread_keys(thread: Thread) -> tuple[str, ...]:
    """The relation keys a change of ``thread`` matches: its parent, its chain, its fork source."""
    keys = [f"chain:{thread.chain_root_id}"]
    if thread.parent_id:
        keys.append(f"parent:{thread.parent_id}")
    if thread.forked_from is not None:
        keys.append(f"fork:{thread.forked_from.thread_id}")
    return tuple(keys)


class Subscription:
    """A waiter's view: what it watches and the fresh manifests pushed to it.

    It watches thread ids, and relation keys (:func:`thread_keys`: ``parent:<id>`` for a
    thread's children, ``chain:<root>`` for a chain's members, ``fork:<id>`` for a thread's
    forks), which also match threads created after the watch began.
    """

    def __init__(self, hub: WakeHub, thread_ids: Iterable[str], keys: Iterable[str] = ()) -> None:
        self._hub = hub
        self.thread_ids: set[str] = set(thread_ids)
        self.keys: set[str] = set(keys)
        self.missed = False
        """Set when a burst of other processes' changes was too large to match keys against:
        anything watched by key may have changed (the consumer resets it)."""
        self._ready = asyncio.Event()
        self._updates: dict[str, Thread] = {}

    def push(self, thread: Thread) -> None:
        self._updates[thread.thread_id] = thread
        self._ready.set()

    def push_missed(self) -> None:
        self.missed = True
        self._ready.set()

    def watch(self, thread_ids: Iterable[str] = (), keys: Iterable[str] = ()) -> None:
        """Watch more threads (e.g. the continuation a chain moved on to) or relation keys."""
        new = set(thread_ids) - self.thread_ids
        new_keys = set(keys) - self.keys
        self.thread_ids |= new
        self.keys |= new_keys
        self._hub._add(self, new, new_keys)

    def unwatch(self, thread_ids: Iterable[str] = (), keys: Iterable[str] = ()) -> None:
        """Stop watching some threads or keys (the subscription stays open)."""
        gone = set(thread_ids) & self.thread_ids
        gone_keys = set(keys) & self.keys
        self.thread_ids -= gone
        self.keys -= gone_keys
        self._hub._discard(self, gone, gone_keys)

    def close(self) -> None:
        """Stop watching everything (for subscriptions opened with :meth:`WakeHub.open`)."""
        self._hub._remove(self)

    async def next(self) -> dict[str, Thread]:
        """Wait for the next batch of changed threads among those watched."""
        await self._ready.wait()
        self._ready.clear()
        updates, self._updates = self._updates, {}
        return updates


class WakeHub:
    """Routes commit notifications to subscriptions; owns the store's external watch."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._subs: dict[str, set[Subscription]] = {}
        self._key_subs: dict[str, set[Subscription]] = {}
        self._pending: set[str] | None = set()  # None: "something changed, unknown what"
        self._dirty = asyncio.Event()
        self._pump_task: asyncio.Task[None] | None = None
        self._stop_watch: object = None
        self._seen: dict[str, tuple[int, int, str, int]] = {}
        self.queries = 0  # reads the hub made: the DB work that waiting costs
        self._hwm: str | None = None  # updated_at high-water mark of external changes seen
        store.add_commit_listener(self._on_commit)

    @property
    def waiters(self) -> int:
        """How many subscriptions are registered (for tests and metrics)."""
        return len({s for subs in (*self._subs.values(), *self._key_subs.values()) for s in subs})

    # ------------------------------------------------------------- notifications

    def _on_commit(self, thread_ids: frozenset[str]) -> None:
        if not self._subs and not self._key_subs:
            return
        if self._pending is not None:  # key watches need every touched thread read (its keys)
            self._pending |= thread_ids if self._key_subs else thread_ids & self._subs.keys()
        self._dirty.set()

    def _on_external(self) -> None:
        if self._subs or self._key_subs:
            self._pending = None
            self._dirty.set()

    async def _pump(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            pending, self._pending = self._pending, set()
            watched = set(self._subs)
            ids = watched if pending is None else pending if self._key_subs else pending & watched
            if not ids and not self._key_subs:
                continue
            burst = False
            try:
                if pending is None:  # another process committed: read only what changed since
                    threads, burst = await self._changed(watched)
                elif ids:
                    threads = await self.store.get_threads(sorted(ids))
                else:
                    continue
            except Exception:
                log.exception("wake hub could not read changed threads")
                continue
            self.queries += 1
            if burst:
                for sub in {s for subs in self._key_subs.values() for s in subs}:
                    sub.push_missed()
            for tid, thread in threads.items():
                mark = (thread.event_count, thread.version, thread.status.value, thread.usage.version)
                if self._seen.get(tid) == mark:
                    # already announced in this state: an external change elsewhere, or this
                    # process's commit already seen by the external watcher (it wakes on our
                    # writer's commits too, and may read them first)
                    continue
                subs = set(self._subs.get(tid, ()))
                if self._key_subs:
                    for key in thread_keys(thread):
                        subs |= self._key_subs.get(key, set())
                if not subs:
                    continue
                self._seen[tid] = mark
                for sub in subs:
                    sub.push(thread)

    async def _changed(self, watched: set[str]) -> tuple[dict[str, Thread], bool]:
        """Watched threads (by id or key) changed since the last look (one indexed range read),
        and whether there were too many changes to look at each (a burst)."""
        since = self._hwm or iso(utc_now() - timedelta(seconds=CLOCK_MARGIN))
        rows = await self.store.changed_since(since, limit=CHANGED_LIMIT)
        if rows:
            newest = parse_iso(rows[-1].updated_at) - timedelta(seconds=CLOCK_MARGIN)
            self._hwm = max(self._hwm or "", iso(newest))
        if len(rows) >= CHANGED_LIMIT:  # a burst: fall back to reading every watched thread
            return await self.store.get_threads(sorted(watched)), True
        keys = self._key_subs.keys()
        return {
            t.thread_id: t
            for t in rows
            if t.thread_id in watched or (keys and not keys.isdisjoint(thread_keys(t)))
        }, False

    # ------------------------------------------------------------- subscriptions

    def _add(self, sub: Subscription, thread_ids: Iterable[str], keys: Iterable[str] = ()) -> None:
        for tid in thread_ids:
            self._subs.setdefault(tid, set()).add(sub)
        for key in keys:
            self._key_subs.setdefault(key, set()).add(sub)
        if self._pump_task is None or self._pump_task.done():
            self._pump_task = asyncio.get_running_loop().create_task(self._pump())
        if self._stop_watch is None:
            self._stop_watch = self.store.watch_external(self._on_external)

    def _discard(self, sub: Subscription, thread_ids: Iterable[str], keys: Iterable[str] = ()) -> None:
        for table, names in ((self._subs, thread_ids), (self._key_subs, keys)):
            for name in names:
                subs = table.get(name)
                if subs is not None:
                    subs.discard(sub)
                    if not subs:
                        del table[name]
                        self._seen.pop(name, None)
        if not self._key_subs:  # marks of threads seen only through a key watch
            for tid in [t for t in self._seen if t not in self._subs]:
                del self._seen[tid]
        if not self._subs and not self._key_subs:
            self._stop()

    def _remove(self, sub: Subscription) -> None:
        self._discard(sub, sub.thread_ids, sub.keys)

    def _stop(self) -> None:
        stop, self._stop_watch = self._stop_watch, None
        if callable(stop):
            stop()
        if self._pump_task is not None:
            self._pump_task.cancel()
            self._pump_task = None

    def open(self, thread_ids: Iterable[str] = (), keys: Iterable[str] = ()) -> Subscription:
        """Start watching now (on the running loop); the caller closes it (``sub.close()``)."""
        sub = Subscription(self, thread_ids, keys)
        self._add(sub, sub.thread_ids, sub.keys)
        return sub

    @asynccontextmanager
    async def subscribe(
        self, thread_ids: Iterable[str], keys: Iterable[str] = ()
    ) -> AsyncIterator[Subscription]:
        """Watch ``thread_ids`` for the duration of the block (register before reading state)."""
        sub = self.open(thread_ids, keys)
        try:
            yield sub
        finally:
            self._remove(sub)

    def close(self) -> None:
        """Stop the external watch and the pump (the store stays open)."""
        self.store.remove_commit_listener(self._on_commit)
        self._subs.clear()
        self._key_subs.clear()
        self._stop()
