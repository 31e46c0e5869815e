"""Maintenance of the SQLite search index: reindex, the migration that creates it, the CLI."""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path

import anyio
import pytest

from conftest import PYTHON
from threadloom.service import ThreadService
from threadloom.store import SQLiteStore, fts
from threadloom.store.schema import SQLITE_MIGRATIONS

pytestmark = pytest.mark.anyio


def msg(text: str) -> dict:
    return {"type": "message", "role": "user", "text": text}


def sql(store: SQLiteStore, statement: str, args: tuple = ()) -> list[tuple]:
    conn = sqlite3.connect(store.path, isolation_level=None)
    try:
        return conn.execute(statement, args).fetchall()
    finally:
        conn.close()


def integrity_check(store: SQLiteStore) -> None:
    sql(store, f"INSERT INTO {fts.TABLE}({fts.TABLE}, rank) VALUES ('integrity-check', 1)")


async def seeded(root: Path) -> tuple[SQLiteStore, ThreadService, list[str]]:
    store = SQLiteStore(root, durability="normal")
    service = ThreadService(store)
    await service.open()
    ids = []
    for i in range(3):
        t = await service.create_thread(title=f"t{i}")
        await service.append(t.thread_id, [msg(f"walrus number {i} {j}") for j in range(5)])
        ids.append(t.thread_id)
    await service.search_threads("walrus")  # a search folds the appended events into the index
    return store, service, ids


async def hits(service: ThreadService, query: str = "walrus") -> int:
    return len((await service.search_threads(query, limit=50)).results)


async def test_reindex_adds_the_events_the_index_lacks_and_then_has_nothing_to_do(tmp_path: Path) -> None:
    store, service, ids = await seeded(tmp_path / "root")
    try:
        sql(
            store,
            f"DELETE FROM {fts.TABLE} WHERE rowid IN (SELECT id FROM events WHERE thread_id IN (?, ?))",
            (ids[0], ids[1]),
        )
        assert await hits(service) == 1
        seen: list[tuple[int, int]] = []
        stats = await service.reindex(progress=lambda done, total: seen.append((done, total)))
        assert (stats.added, stats.removed, stats.documents) == (10, 0, 15)
        assert seen[-1] == (10, 10) and all(done <= total for done, total in seen)
        assert await hits(service) == 3
        again = await service.reindex()
        assert (again.added, again.removed) == (0, 0)
        integrity_check(store)
    finally:
        await service.close()


async def test_reindex_removes_rows_of_threads_deleted_behind_the_stores_back(tmp_path: Path) -> None:
    store, service, ids = await seeded(tmp_path / "root")
    try:
        # another tool deleted a thread straight from the database, leaving its index rows
        sql(store, "DELETE FROM events WHERE thread_id = ?", (ids[2],))
        sql(store, "DELETE FROM threads WHERE thread_id = ?", (ids[2],))
        stats = await service.reindex()
        assert (stats.added, stats.removed, stats.documents) == (0, 5, 10)
        integrity_check(store)
        assert await hits(service) == 2
        again = await service.reindex()
        assert (again.added, again.removed) == (0, 0)
    finally:
        await service.close()


async def test_reindex_moves_rows_of_a_thread_whose_agent_changed_behind_the_stores_back(
    tmp_path: Path,
) -> None:
    store, service, ids = await seeded(tmp_path / "root")
    try:
        sql(store, "UPDATE threads SET agent_id = 'zed' WHERE thread_id = ?", (ids[1],))
        assert (await service.search_threads("walrus", agent_id="zed")).results == []
        stats = await service.reindex()
        assert (stats.added, stats.removed, stats.documents) == (5, 5, 15)
        found = await service.search_threads("walrus", agent_id="zed")
        assert [r.thread_id for r in found.results] == [ids[1]]
        integrity_check(store)
    finally:
        await service.close()


async def test_opening_a_database_made_before_the_index_indexes_its_events(tmp_path: Path) -> None:
    root = tmp_path / "root"
    store, service, _ = await seeded(root)
    await service.close()
    # turn it back into a database made before the search index
    sql(store, f"DROP TABLE {fts.TABLE}")
    sql(store, f"DROP VIEW {fts.VIEW}")
    sql(store, "DROP INDEX threads_fork")  # and undo the migrations after it (forks, leases: columns)
    for column in ("fork_of", "lease_owner", "lease_expires", "lease_ttl"):
        sql(store, f"ALTER TABLE threads DROP COLUMN {column}")
    sql(store, "DELETE FROM schema_migrations WHERE version >= 3")
    async with ThreadService(SQLiteStore(root, durability="normal")) as reopened:
        assert await hits(reopened) == 3
        stats = await reopened.reindex()
        assert (stats.added, stats.removed, stats.documents) == (0, 0, 15)
    applied = sql(store, "SELECT version, name FROM schema_migrations ORDER BY version")
    assert applied[:3] == [
        (1, "0001_threads_events"),
        (2, "0002_integrity_accounts"),
        (3, "0003_search_index"),
    ]
    assert applied == [(v, name) for v, (name, _) in enumerate(SQLITE_MIGRATIONS, start=1)]


async def test_reindex_command_reports_what_it_did(tmp_path: Path, cli_env: dict[str, str]) -> None:
    root = tmp_path / "root"
    store, service, ids = await seeded(root)
    sql(
        store,
        f"DELETE FROM {fts.TABLE} WHERE rowid IN (SELECT id FROM events WHERE thread_id = ?)",
        (ids[0],),
    )
    await service.close()
    cmd = [PYTHON, "-m", "threadloom", "reindex", "--root", str(root)]
    first = await anyio.run_process(cmd, env=cli_env, check=False)
    assert first.returncode == 0, first.stderr.decode()
    assert "5 event(s) added, 0 row(s) removed; 15 events indexed" in first.stdout.decode()
    forced = await anyio.run_process(cmd, env={**cli_env, "FORCE_COLOR": "1"}, check=False)
    assert forced.returncode == 0, forced.stderr.decode()
    assert "0 event(s) added, 0 row(s) removed; 15 events indexed" in forced.stdout.decode()


def test_reindex_command_refuses_a_root_without_a_database(tmp_path: Path, cli_env: dict[str, str]) -> None:
    out = subprocess.run(
        [PYTHON, "-m", "threadloom", "reindex", "--root", str(tmp_path / "nothing")],
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 2
    assert "no threadloom database" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "nothing").exists()
