"""Point reads on the caller's thread (SQLiteStore._read_quick): the same answers as the
reader pool, the pool when another caller holds the connection or SQLite is busy."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from threadloom.errors import NotFoundError
from threadloom.service import ThreadService
from threadloom.store import SQLiteStore
from threadloom.store.sqlite import _get_thread

pytestmark = pytest.mark.anyio


async def test_point_reads_skip_the_reader_pool_and_agree_with_it(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "root", durability="normal")
    async with ThreadService(store) as svc:
        t = await svc.create_thread(title="quick")
        await svc.append(t.thread_id, [{"type": "message", "role": "user", "text": "hi"}])
        pooled = await store._read(lambda c: _get_thread(c, t.thread_id))
        used: list[object] = []
        real = store._read

        async def counted(fn):  # type: ignore[no-untyped-def]
            used.append(fn)
            return await real(fn)

        store._read = counted  # type: ignore[method-assign]
        quick = await store.get_thread(t.thread_id)
        assert quick == pooled and quick.event_count == 2
        assert used == []  # no hop to a reader thread
        with pytest.raises(NotFoundError):
            await store.get_thread("0" * 12)
        with store._quick_lock:  # another caller holds the connection: the pool answers
            assert await store.get_thread(t.thread_id) == pooled
        assert len(used) == 1


async def test_a_busy_database_sends_a_point_read_to_the_pool(tmp_path: Path) -> None:
    """A quick read never waits on the event loop: busy (here an exclusive lock held by another
    connection for a moment) goes to the pool, which waits and retries off the loop."""
    store = SQLiteStore(tmp_path / "root", durability="normal")
    async with ThreadService(store) as svc:
        t = await svc.create_thread(title="busy")
        quick = store._quick_conn
        assert quick is not None
        calls = []
        real = store._read

        async def pooled(fn):  # type: ignore[no-untyped-def]
            calls.append(fn)
            return await real(fn)

        store._read = pooled  # type: ignore[method-assign]

        seen = []

        async def fn_busy_then_ok() -> object:
            def fn(c: sqlite3.Connection) -> str:
                seen.append(c)
                if c is quick:
                    raise sqlite3.OperationalError("database is locked")
                return "answered"

            return await store._read_quick(fn)

        assert await fn_busy_then_ok() == "answered"
        assert seen[0] is quick and seen[1] is not quick and len(calls) == 1
        assert (await svc.get_thread(t.thread_id)).title == "busy"
