"""Schema versions: an older database migrates forward on open; a newer one is refused."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from conftest import pg_schema, pg_unreachable
from threadloom.errors import StoreUnavailableError
from threadloom.models import Thread, iso, utc_now
from threadloom.store import SQLiteStore
from threadloom.store.apply import manifest_doc
from threadloom.store.schema import POSTGRES_MIGRATIONS, SQLITE_MIGRATIONS, apply_sqlite_migrations

pytestmark = pytest.mark.anyio


def v1_thread() -> Thread:
    now = iso(utc_now())
    return Thread(
        thread_id="0123456789ab",
        title="from v1",
        context_window=200000,
        stale_after=3600,
        chain_root_id="0123456789ab",
        created_at=now,
        updated_at=now,
        heartbeat_at=now,
    )


async def test_a_v1_sqlite_database_migrates_to_current(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    conn = sqlite3.connect(root / "threads.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    apply_sqlite_migrations(conn, SQLITE_MIGRATIONS[:1])  # a database made by the first release
    t = v1_thread()
    conn.execute(
        "INSERT INTO threads (thread_id, agent_id, status, created_at, updated_at, heartbeat_at, heartbeat_epoch,"
        " stale_after, chain_root_id, event_count, doc) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
        (
            t.thread_id,
            t.agent_id,
            "running",
            t.created_at,
            t.updated_at,
            t.heartbeat_at,
            0,
            3600,
            t.thread_id,
            1,
            manifest_doc(t),
        ),
    )
    conn.execute(
        "INSERT INTO events (thread_id, seq, ts, type, line) VALUES (?,?,?,?,?)",
        (
            t.thread_id,
            1,
            t.created_at,
            "message",
            '{"role":"user","seq":1,"text":"old","ts":"' + t.created_at + '","type":"message"}',
        ),
    )
    conn.close()
    async with SQLiteStore(root) as store:
        got = await store.get_thread(t.thread_id)
        assert got.title == "from v1" and got.event_count == 1
        assert [e.data()["text"] for e in await store.read_events(t.thread_id)] == ["old"]
    conn = sqlite3.connect(root / "threads.db")
    versions = [r[0] for r in conn.execute("SELECT version FROM schema_migrations ORDER BY version")]
    assert versions == list(range(1, len(SQLITE_MIGRATIONS) + 1))


async def test_a_newer_sqlite_database_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    async with SQLiteStore(root):
        pass
    conn = sqlite3.connect(root / "threads.db", isolation_level=None)
    conn.execute("INSERT INTO schema_migrations VALUES (999, 'from the future', datetime('now'))")
    conn.close()
    with pytest.raises(StoreUnavailableError, match="version 999.*upgrade threadloom"):
        await SQLiteStore(root).open()


async def test_postgres_migrates_forward_and_refuses_newer() -> None:
    problem = pg_unreachable()
    if problem:
        pytest.skip(problem)
    import psycopg

    from threadloom.store.postgres import PostgresStore

    with pg_schema() as dsn:
        with psycopg.connect(dsn, autocommit=True) as conn:  # the first release's schema, by hand
            conn.execute(
                "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
            )
            for statement in POSTGRES_MIGRATIONS[0][1]:
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES (1, %s)", (POSTGRES_MIGRATIONS[0][0],)
            )
            t = v1_thread()
            conn.execute(
                "INSERT INTO threads (thread_id, agent_id, status, created_at, updated_at, heartbeat_at, heartbeat_epoch,"
                " stale_after, chain_root_id, doc) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)",
                (
                    t.thread_id,
                    t.agent_id,
                    "created",
                    t.created_at,
                    t.updated_at,
                    t.heartbeat_at,
                    0,
                    3600,
                    t.thread_id,
                    manifest_doc(t),
                ),
            )
        async with PostgresStore(dsn) as store:
            assert (await store.get_thread(t.thread_id)).title == "from v1"
        with psycopg.connect(dsn, autocommit=True) as conn:
            versions = [r[0] for r in conn.execute("SELECT version FROM schema_migrations ORDER BY version")]
            assert versions == list(range(1, len(POSTGRES_MIGRATIONS) + 1))
            conn.execute("INSERT INTO schema_migrations (version, name) VALUES (999, 'future')")
        with pytest.raises(StoreUnavailableError, match="version 999"):
            await PostgresStore(dsn).open()
