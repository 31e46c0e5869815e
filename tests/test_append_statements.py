"""The statements one append runs on SQLite (issue 16: a lean append path).

Counted with the writer connection's trace callback. A single-event append to a running
thread is: BEGIN, the thread's row, the event insert, the row update, the mark that its
mirror is not written yet (it replaces the previous one: store/pending.py), COMMIT, and
the mirror's check that no other process moved the manifest meanwhile. The search index is
folded later (docs/search.md) and the thread is not read again after the commit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from threadloom.service import ThreadService
from threadloom.store import SQLiteStore

pytestmark = pytest.mark.anyio

MAX_STATEMENTS = 7


async def test_a_single_append_runs_at_most_seven_statements(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "root", durability="normal")
    async with ThreadService(store) as svc:
        t = await svc.create_thread(title="lean")
        await svc.append(t.thread_id, [{"type": "message", "role": "user", "text": "first"}])
        seen: list[str] = []
        conn = store._wconn
        assert conn is not None
        conn.set_trace_callback(seen.append)
        try:
            out = await svc.append(t.thread_id, [{"type": "message", "role": "user", "text": "second"}])
        finally:
            conn.set_trace_callback(None)
        assert out.seq == 3 or out.seqs == [3]
        print(f"{len(seen)} statements:", *seen, sep="\n  ")
        assert len(seen) <= MAX_STATEMENTS, seen
        assert not any("search_index" in s for s in seen)  # no index segment per commit
        after = await svc.get_thread(t.thread_id)
        assert after.event_count == 3  # the result built from the transaction is the stored state


@pytest.mark.parametrize("kind", ["memory", "sqlite", "postgres"])
async def test_the_first_append_to_a_created_thread_commits_once(
    tmp_path: Path, kind: str, request: pytest.FixtureRequest
) -> None:
    """Issue 16: the one-commit append starts a created thread itself instead of failing its
    status guard, rolling back and planning again (two commits, the first thrown away). On
    PostgreSQL the one-call function finds the thread created and writes nothing; the general
    path then starts it in the one commit (store/core.py)."""
    from threadloom.store import MemoryStore

    if kind == "postgres":
        from threadloom.store.postgres import PostgresStore

        store: Any = PostgresStore(request.getfixturevalue("pg_dsn"), pool_size=4)
    else:
        store = MemoryStore() if kind == "memory" else SQLiteStore(tmp_path / "root", durability="normal")
    async with ThreadService(store) as svc:
        t = await svc.create_thread(title="first")
        commits: list[int] = []
        real = store.commit

        async def counted(ops):  # type: ignore[no-untyped-def]
            commits.append(len(ops))
            return await real(ops)

        store.commit = counted  # type: ignore[method-assign]
        seen: list[str] = []
        conn = store._wconn if isinstance(store, SQLiteStore) else None
        if conn is not None:
            conn.set_trace_callback(seen.append)
        try:
            out = await svc.append(
                t.thread_id, [{"type": "message", "role": "user", "text": "go"}], single=True
            )
        finally:
            if conn is not None:
                conn.set_trace_callback(None)
        assert commits == [1]
        assert not any(s.startswith("ROLLBACK") for s in seen), seen
        assert out.seq == 2 and out.status == "running"
        after = await svc.get_thread(t.thread_id)
        assert after.status == "running" and after.status_reason == "first append"
        assert after.version == t.version + 1 and after.event_count == 2
        events = (await svc.read_events(t.thread_id)).events
        assert [e["type"] for e in events] == ["status", "message"]
        assert events[0]["from"] == "created" and events[0]["to"] == "running"
        assert events[0]["reason"] == "first append"
