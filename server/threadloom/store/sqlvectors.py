"""SQLite vectors (migration ``0004_vectors``): one row per (event, model) in ``vectors``.

``id`` grows with every insert (the single writer assigns it), so a reader's cache
loads only rows past the last id it saw; deleting rows bumps ``meta.vectors_generation``
in the same transaction, which makes every cache reload (store/vectors.py).
sqlite-vec is not used: this Python's sqlite3 cannot load extensions, and a plain table
keeps deletes working where the semantic extra is not installed (docs/semantic.md).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from ..models import StoredEvent
from .base import SearchHit, VectorRow
from .sqlrows import event_ts, hash_hex
from .vectors import GENERATION_KEY, Matrix, VectorCache, scope_filter

__all__ = ["MIGRATION_SQL"]

BATCH = 2000

MIGRATION_SQL = f"""
CREATE TABLE IF NOT EXISTS vectors (
    id       INTEGER PRIMARY KEY,
    event_id INTEGER NOT NULL,
    thread_id TEXT NOT NULL,
    seq      INTEGER NOT NULL,
    model    TEXT NOT NULL,
    vector   BLOB NOT NULL,
    UNIQUE (event_id, model)
);
CREATE INDEX IF NOT EXISTS vectors_thread ON vectors (thread_id, seq);
INSERT OR IGNORE INTO meta (key, value) VALUES ('{GENERATION_KEY}', '0')
"""


def _types(types: Sequence[str]) -> str:
    return ",".join("?" * len(types))


def bump(conn: sqlite3.Connection) -> None:
    conn.execute(
        "UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = ?",
        (GENERATION_KEY,),
    )


def delete_thread_vectors(conn: sqlite3.Connection, thread_id: str) -> int:
    """Remove a thread's vectors (inside the caller's transaction)."""
    n = conn.execute("DELETE FROM vectors WHERE thread_id = ?", (thread_id,)).rowcount
    if n:
        bump(conn)
    return n


def missing(
    conn: sqlite3.Connection,
    model: str,
    types: Sequence[str],
    thread_id: str | None,
    after: tuple[str, int] | None,
    limit: int,
) -> list[StoredEvent]:
    where = [f"e.type IN ({_types(types)})"]
    args: list[object] = [*types]
    if thread_id is not None:
        where.append("e.thread_id = ?")
        args.append(thread_id)
    if after is not None:
        where.append("(e.thread_id, e.seq) > (?, ?)")
        args += [after[0], after[1]]
    q = (
        "SELECT e.thread_id, e.seq, e.ts, e.type, e.line, e.prev_hash FROM events AS e"
        f" WHERE {' AND '.join(where)}"
        " AND NOT EXISTS (SELECT 1 FROM vectors AS v WHERE v.event_id = e.id AND v.model = ?)"
        " ORDER BY e.thread_id, e.seq LIMIT ?"
    )
    return [
        StoredEvent(tid, seq, event_ts(ts, line), typ, line, hash_hex(prev))
        for tid, seq, ts, typ, line, prev in conn.execute(q, [*args, model, limit])
    ]


def count_missing(conn: sqlite3.Connection, model: str, types: Sequence[str]) -> int:
    q = (
        f"SELECT count(*) FROM events AS e WHERE e.type IN ({_types(types)})"
        " AND NOT EXISTS (SELECT 1 FROM vectors AS v WHERE v.event_id = e.id AND v.model = ?)"
    )
    return conn.execute(q, [*types, model]).fetchone()[0]


def put(conn: sqlite3.Connection, model: str, rows: Sequence[VectorRow]) -> int:
    """Insert the rows whose event still exists (inside the caller's transaction)."""
    cur = conn.executemany(
        "INSERT OR IGNORE INTO vectors (event_id, thread_id, seq, model, vector)"
        " SELECT id, thread_id, seq, ?, ? FROM events WHERE thread_id = ? AND seq = ?",
        [(model, r.vector, r.thread_id, r.seq) for r in rows],
    )
    return cur.rowcount


def stale_ids(conn: sqlite3.Connection, model: str, types: Sequence[str]) -> list[int]:
    """Ids of vector rows of another model, or whose event is gone or not of ``types``."""
    q = (
        "SELECT v.id FROM vectors AS v WHERE v.model != ? OR NOT EXISTS (SELECT 1 FROM events AS e"
        f" WHERE e.id = v.event_id AND e.thread_id = v.thread_id AND e.type IN ({_types(types)}))"
        " ORDER BY v.id"
    )
    return [r[0] for r in conn.execute(q, [model, *types])]


def remove(conn: sqlite3.Connection, ids: Sequence[int]) -> int:
    n = conn.execute(f"DELETE FROM vectors WHERE id IN ({','.join('?' * len(ids))})", list(ids)).rowcount
    if n:
        bump(conn)
    return n


def count(conn: sqlite3.Connection, model: str) -> int:
    return conn.execute("SELECT count(*) FROM vectors WHERE model = ?", (model,)).fetchone()[0]


def _generation(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (GENERATION_KEY,)).fetchone()
    return int(row[0]) if row else 0


def search(
    conn: sqlite3.Connection,
    cache: VectorCache,
    model: str,
    query: bytes,
    *,
    thread_ids: Sequence[str] | None,
    agent_id: str | None,
    limit: int,
    best_per_thread: bool,
) -> list[SearchHit]:
    """Bring the cached matrix of ``model`` up to date (read in one snapshot), then scan it."""
    agents: set[str] | None = None
    while True:
        matrix = cache.get(model)
        with matrix.lock:
            conn.execute("BEGIN")
            try:
                generation = _generation(conn)
                if matrix.generation == -1:
                    matrix.generation = generation
                elif generation != matrix.generation:  # rows were deleted: load them all again
                    cache.replace(model, Matrix())
                    continue
                cur = conn.execute(
                    "SELECT id, thread_id, seq, vector FROM vectors WHERE model = ? AND id > ?"
                    " AND length(vector) > 0 ORDER BY id",
                    (model, matrix.max_id),
                )
                while rows := cur.fetchmany(BATCH):
                    matrix.extend(rows)
                if agent_id is not None:
                    q = "SELECT thread_id FROM threads WHERE agent_id = ?"
                    agents = {r[0] for r in conn.execute(q, (agent_id,))}
            finally:
                conn.execute("COMMIT")
            return matrix.search(
                query, allowed=scope_filter(thread_ids, agents), limit=limit, best_per_thread=best_per_thread
            )
