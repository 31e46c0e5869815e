"""PostgreSQL vectors (migration ``0005_vectors``): one row per (event, model) in ``vectors``,
the vector in a ``bytea`` column (float32 little-endian, unit length).

This machine's PostgreSQL has no pgvector extension, so the search is the exact scan of
store/vectors.py over a cached matrix (``vector_index = "exact"``). Inserts take an
advisory lock so that ids become visible in order (a cache reads only rows past the last
id it saw); deletes bump ``meta.vectors_generation``, which makes every cache reload.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import anyio
import psycopg

from ..models import StoredEvent
from .base import SearchHit, VectorRow
from .vectors import GENERATION_KEY, Matrix, VectorCache, scope_filter

__all__ = ["MIGRATION", "PgVectors"]

INSERT_LOCK = 0x7468726C76656373  # "thrlvecs": serialises vector inserts so ids commit in order
BATCH = 5000

MIGRATION = [
    """CREATE TABLE IF NOT EXISTS vectors (
        id        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        thread_id TEXT NOT NULL,
        seq       BIGINT NOT NULL,
        model     TEXT NOT NULL,
        vector    BYTEA NOT NULL,
        UNIQUE (thread_id, seq, model)
    )""",
    f"INSERT INTO meta (key, value) VALUES ('{GENERATION_KEY}', '0') ON CONFLICT (key) DO NOTHING",
]


async def bump(conn: psycopg.AsyncConnection) -> None:
    await conn.execute("UPDATE meta SET value = (value::bigint + 1)::text WHERE key = %s", (GENERATION_KEY,))


async def delete_threads(conn: psycopg.AsyncConnection, thread_ids: Sequence[str]) -> None:
    """Remove the threads' vectors inside the caller's transaction."""
    cur = await conn.execute("DELETE FROM vectors WHERE thread_id = ANY(%s)", (list(thread_ids),))
    if cur.rowcount:
        await bump(conn)


async def missing(
    conn: psycopg.AsyncConnection,
    model: str,
    types: Sequence[str],
    thread_id: str | None,
    after: tuple[str, int] | None,
    limit: int,
) -> list[StoredEvent]:
    where = ["e.type = ANY(%s)"]
    args: list[object] = [list(types)]
    if thread_id is not None:
        where.append("e.thread_id = %s")
        args.append(thread_id)
    if after is not None:
        where.append("(e.thread_id, e.seq) > (%s, %s)")
        args += [after[0], after[1]]
    cur = await conn.execute(
        "SELECT e.thread_id, e.seq, e.ts, e.type, e.line, e.prev_hash FROM events AS e"
        f" WHERE {' AND '.join(where)} AND NOT EXISTS (SELECT 1 FROM vectors AS v"
        " WHERE v.thread_id = e.thread_id AND v.seq = e.seq AND v.model = %s)"
        " ORDER BY e.thread_id, e.seq LIMIT %s",
        [*args, model, limit],
    )
    return [StoredEvent(*row) for row in await cur.fetchall()]


async def count_missing(conn: psycopg.AsyncConnection, model: str, types: Sequence[str]) -> int:
    cur = await conn.execute(
        "SELECT count(*) FROM events AS e WHERE e.type = ANY(%s) AND NOT EXISTS (SELECT 1 FROM vectors"
        " AS v WHERE v.thread_id = e.thread_id AND v.seq = e.seq AND v.model = %s)",
        (list(types), model),
    )
    return int((await cur.fetchone())[0])  # type: ignore[index]


async def put(conn: psycopg.AsyncConnection, model: str, rows: Sequence[VectorRow]) -> int:
    # vectors are derived (rebuilt by reindex --embeddings): no need to wait for the WAL flush
    await conn.execute("SET LOCAL synchronous_commit = off")
    await conn.execute("SELECT pg_advisory_xact_lock(%s)", (INSERT_LOCK,))
    cur = await conn.execute(
        "INSERT INTO vectors (thread_id, seq, model, vector)"
        " SELECT r.tid, r.seq, %s, r.vec FROM unnest(%s::text[], %s::bigint[], %s::bytea[]) AS r(tid, seq, vec)"
        " WHERE EXISTS (SELECT 1 FROM events AS e WHERE e.thread_id = r.tid AND e.seq = r.seq)"
        " ON CONFLICT DO NOTHING",
        (model, [r.thread_id for r in rows], [r.seq for r in rows], [r.vector for r in rows]),
    )
    return cur.rowcount


async def clean(conn: psycopg.AsyncConnection, model: str, types: Sequence[str]) -> int:
    cur = await conn.execute(
        "DELETE FROM vectors AS v WHERE v.model != %s OR NOT EXISTS (SELECT 1 FROM events AS e"
        " WHERE e.thread_id = v.thread_id AND e.seq = v.seq AND e.type = ANY(%s))",
        (model, list(types)),
    )
    if cur.rowcount:
        await bump(conn)
    return cur.rowcount


async def count(conn: psycopg.AsyncConnection, model: str) -> int:
    cur = await conn.execute("SELECT count(*) FROM vectors WHERE model = %s", (model,))
    return int((await cur.fetchone())[0])  # type: ignore[index]


class PgVectors:
    """The cached matrices of one PostgreSQL store (refreshed under an asyncio lock per model)."""

    def __init__(self) -> None:
        self.cache = VectorCache()
        self._locks: dict[str, asyncio.Lock] = {}

    async def search(
        self,
        conn: psycopg.AsyncConnection,
        model: str,
        query: bytes,
        *,
        thread_ids: Sequence[str] | None,
        agent_id: str | None,
        limit: int,
        best_per_thread: bool,
    ) -> list[SearchHit]:
        lock = self._locks.setdefault(model, asyncio.Lock())
        agents: set[str] | None = None
        async with lock:
            while True:
                matrix = self.cache.get(model)
                cur = await conn.execute("SELECT value FROM meta WHERE key = %s", (GENERATION_KEY,))
                row = await cur.fetchone()
                generation = int(row[0]) if row else 0
                if matrix.generation == -1:
                    matrix.generation = generation
                elif generation != matrix.generation:
                    self.cache.replace(model, Matrix())
                    continue
                break
            async with conn.cursor() as cur:
                await cur.execute(
                    "SELECT id, thread_id, seq, vector FROM vectors WHERE model = %s AND id > %s"
                    " AND length(vector) > 0 ORDER BY id",
                    (model, matrix.max_id),
                )
                while rows := await cur.fetchmany(BATCH):
                    matrix.extend((i, t, s, bytes(v)) for i, t, s, v in rows)
            if agent_id is not None:
                cur = await conn.execute("SELECT thread_id FROM threads WHERE agent_id = %s", (agent_id,))
                agents = {r[0] for r in await cur.fetchall()}
            allowed = scope_filter(thread_ids, agents)
            return await anyio.to_thread.run_sync(
                lambda: matrix.search(query, allowed=allowed, limit=limit, best_per_thread=best_per_thread)
            )
