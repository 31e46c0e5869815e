"""list_threads filters are served by indexes in the newest-first order (issue 17 item 2).

The query plan is the proof: with any combination of agent_id, parent_id and status the
page is read off one index, with no sort of the matching rows (a temporary B-tree on
SQLite, a Sort node on PostgreSQL). The results themselves are checked per backend too.
"""

from __future__ import annotations

import itertools
import sqlite3
from pathlib import Path

import pytest

from threadloom.config import Settings
from threadloom.service import ThreadService
from threadloom.store import SQLiteStore
from threadloom.store.apply import list_threads_query

pytestmark = pytest.mark.anyio

FILTERS = ("agent_id", "parent_id", "status")
COMBOS = [c for n in range(1, 4) for c in itertools.combinations(FILTERS, n)]
VALUES = {"agent_id": "a1", "parent_id": "0123456789ab", "status": "running"}


def _query(combo: tuple[str, ...], mark: str, before: bool) -> tuple[str, list[object]]:
    return list_threads_query(
        "thread_id, doc",
        limit=20,
        before=("2026-01-01T00:00:00Z", "0123456789ab") if before else None,
        mark=mark,
        **{f: (VALUES[f] if f in combo else None) for f in FILTERS},
    )


@pytest.mark.parametrize("before", [False, True], ids=["first-page", "next-page"])
@pytest.mark.parametrize("combo", COMBOS, ids=["+".join(c) for c in COMBOS])
async def test_sqlite_plan_reads_one_index_without_sorting(
    tmp_path: Path, combo: tuple[str, ...], before: bool
) -> None:
    async with SQLiteStore(tmp_path / "root", durability="normal"):
        pass
    conn = sqlite3.connect(tmp_path / "root" / "threads.db")
    try:
        sql, args = _query(combo, "?", before)
        plan = " | ".join(r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + sql, args))
    finally:
        conn.close()
    assert "TEMP B-TREE" not in plan, plan
    assert "INDEX threads_by_" in plan, plan


@pytest.mark.parametrize("combo", COMBOS, ids=["+".join(c) for c in COMBOS])
def test_postgres_plan_reads_one_index_without_sorting(pg_dsn: str, combo: tuple[str, ...]) -> None:
    import psycopg

    from threadloom.store.postgres import PostgresStore

    async def migrate() -> None:
        async with PostgresStore(pg_dsn, pool_size=1):
            pass

    import anyio

    anyio.run(migrate)
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("SET enable_seqscan = off")
        conn.execute("SET enable_bitmapscan = off")
        sql, args = _query(combo, "%s", before=True)
        plan = "\n".join(r[0] for r in conn.execute("EXPLAIN " + sql, args))
    assert "Sort" not in plan, plan
    assert "threads_by_" in plan, plan


async def test_filtered_pages_are_newest_first_and_complete(
    service: ThreadService, settings: Settings
) -> None:
    parent = (await service.create_thread(agent_id="boss")).thread_id
    for i in range(14):
        kid = await service.create_thread(
            agent_id="a1" if i % 2 else "a2", parent_id=parent if i % 3 == 0 else None
        )
        if i % 4 == 0:
            await service.append(kid.thread_id, [{"type": "message", "role": "user", "text": "go"}])
    every = (await service.list_threads(limit=200)).threads
    probes = {"agent_id": ["boss", "a1"], "parent_id": [parent], "status": ["running", "created"]}
    for combo in COMBOS:
        for values in itertools.product(*(probes[f] for f in combo)):
            args = dict(zip(combo, values))
            seen: list[str] = []
            cursor = None
            while True:
                page = await service.list_threads(limit=2, cursor=cursor, **args)
                seen.extend(t.thread_id for t in page.threads)
                cursor = page.next_cursor
                if cursor is None:
                    break
            expected = [t.thread_id for t in every if all(getattr(t, k) == v for k, v in args.items())]
            assert seen == expected, args
