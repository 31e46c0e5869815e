"""The SQLite search index keeps no copy of the text (issue 17 item 3).

Results, snippets and ranking are the same on the external-content index as on the
index that kept its own copy (the layout of migration 0003, rebuilt here in SQL), after
the migration that converts it, and after ``reindex``; the index is smaller than the
text it indexes, and appends stay searchable at once.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import anyio
import pytest

from search_helpers import WORDS, search_answers
from threadloom.service import ThreadService
from threadloom.store import SQLiteStore, fts

pytestmark = pytest.mark.anyio


def _sql(path: Path, *statements: str) -> list[tuple]:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        out: list[tuple] = []
        for st in statements:
            out = conn.execute(st).fetchall()
        return out
    finally:
        conn.close()


async def _fill(svc: ThreadService) -> list[str]:
    ids = []
    for t in range(6):
        thread = await svc.create_thread(agent_id=f"agent{t % 2}", title=f"t{t}")
        events: list[dict[str, Any]] = []
        for i in range(12):
            a, b, c = WORDS[(t + i) % 10], WORDS[(2 * t + i) % 10], WORDS[(t * i) % 10]
            events.append({"type": "message", "role": "user", "text": f"{a} {b} and then {c} {i}"})
            events.append({"type": "tool_use", "id": f"u{i}", "name": "grep", "input": {"q": b}})
            events.append({"type": "tool_result", "tool_use_id": f"u{i}", "output": f"{c} found {i}"})
            events.append({"type": "assistant_text", "text": f"the {b} near the {a}, not {c}"})
        await svc.append(thread.thread_id, events)
        ids.append(thread.thread_id)
    return ids


def _to_copying_layout(db: Path) -> None:
    """Turn the index back into the one the previous build made: an FTS5 table with its own
    copy of the text (migration 0003's layout), filled from the events."""
    statements = [s for s in fts.MIGRATION_SQL.split(";") if s.strip() and "CREATE VIEW" not in s]
    _sql(db, f"DROP TABLE {fts.TABLE}", *statements)


def _migrate_to_external_content(db: Path) -> None:
    """Run the statements of the migration that drops the copy, as opening an old store does."""
    _sql(db, *[s for s in fts.EXTERNAL_CONTENT_SQL.split(";") if s.strip()])


async def test_results_are_unchanged_by_the_storage_change_and_by_reindex(tmp_path: Path) -> None:
    root = tmp_path / "root"
    db = root / "threads.db"
    async with ThreadService(SQLiteStore(root, durability="normal")) as svc:
        ids = await _fill(svc)
    _to_copying_layout(db)
    assert _sql(db, "SELECT count(*) FROM search_index_content")[0][0] == 6 * 12 * 4
    async with ThreadService(SQLiteStore(root, durability="normal")) as old:
        before = await search_answers(old, ids)  # the previous layout's answers

    _migrate_to_external_content(db)
    assert _sql(db, "SELECT name FROM sqlite_schema WHERE name = 'search_index_content'") == []
    async with ThreadService(SQLiteStore(root, durability="normal")) as migrated:
        assert await search_answers(migrated, ids) == before
        stats = await migrated.reindex()
        assert (stats.added, stats.removed, stats.documents) == (0, 0, 6 * 12 * 4)
        assert await search_answers(migrated, ids) == before
    _sql(db, f"INSERT INTO {fts.TABLE}({fts.TABLE}, rank) VALUES ('integrity-check', 1)")


async def test_an_append_is_found_at_once_and_a_deleted_thread_leaves_no_rows(tmp_path: Path) -> None:
    root = tmp_path / "root"
    async with ThreadService(SQLiteStore(root, durability="normal")) as svc:
        ids = await _fill(svc)
        await svc.append(ids[0], [{"type": "message", "role": "user", "text": "a zeppelin over the bay"}])
        found = await svc.search_threads("zeppelin")
        assert [r.thread_id for r in found.results] == [ids[0]]
        await svc.delete_threads([ids[0]], force=True)
        assert (await svc.search_threads("zeppelin")).results == []
    db = root / "threads.db"
    _sql(db, f"INSERT INTO {fts.TABLE}({fts.TABLE}, rank) VALUES ('integrity-check', 1)")
    assert _sql(db, f"SELECT count(*) FROM {fts.DOCSIZE}")[0][0] == 5 * 12 * 4


async def test_an_agent_change_moves_the_rows_without_corrupting_the_index(tmp_path: Path) -> None:
    root = tmp_path / "root"
    async with ThreadService(SQLiteStore(root, durability="normal")) as svc:
        ids = await _fill(svc)
        store = svc.store
        thread = await svc.get_thread(ids[2])
        from threadloom.store.base import PutThread

        await store.commit(
            [PutThread(thread.model_copy(update={"agent_id": "zed"}), expect_version=thread.version)]
        )
        hits = await svc.search_threads("walrus", agent_id="zed", limit=10)
        assert [r.thread_id for r in hits.results] == [ids[2]]
        assert all(
            r.thread_id != ids[2] for r in (await svc.search_threads("walrus", agent_id="agent0")).results
        )
    _sql(root / "threads.db", f"INSERT INTO {fts.TABLE}({fts.TABLE}, rank) VALUES ('integrity-check', 1)")


def _indexed(db: Path) -> int:
    return _sql(db, f"SELECT count(*) FROM {fts.DOCSIZE}")[0][0]


async def test_appends_are_folded_into_the_index_in_batches_and_found_at_once(tmp_path: Path) -> None:
    """An append commits without touching the index; the next search (of any process on the
    root) folds the tail first, so what was acknowledged is found and ranked as before."""
    root = tmp_path / "root"
    db = root / "threads.db"
    async with (
        ThreadService(SQLiteStore(root, durability="normal")) as writer,
        ThreadService(SQLiteStore(root, durability="normal")) as other,
    ):
        t = await writer.create_thread(title="fold")
        for i in range(5):
            await writer.append(t.thread_id, [{"type": "message", "role": "user", "text": f"quokka {i}"}])
        assert _indexed(db) == 0  # nothing indexed yet: the tail waits
        found = await other.search_threads("quokka")  # another store on the same root folds it
        assert [r.thread_id for r in found.results] == [t.thread_id]
        assert _indexed(db) == 5
        hits = await writer.chain_search(t.thread_id, "quokka", limit=10)
        assert sorted(h.seq for h in hits.results) == [2, 3, 4, 5, 6]


async def test_an_idle_writer_folds_its_tail_and_a_busy_one_every_few_hundred_events(tmp_path: Path) -> None:
    root = tmp_path / "root"
    db = root / "threads.db"
    async with ThreadService(SQLiteStore(root, durability="normal")) as svc:
        t = await svc.create_thread(title="fold", context_window=10_000_000)
        await svc.append(t.thread_id, [{"type": "message", "role": "user", "text": "numbat"}])
        with anyio.fail_after(10):
            while _indexed(db) < 1:  # folded by the idle writer, no search needed
                await anyio.sleep(fts.FOLD_IDLE)
        batch = [{"type": "message", "role": "user", "text": f"bilby {i}"} for i in range(fts.FOLD_ROWS)]
        await svc.append(t.thread_id, batch)
        with anyio.fail_after(10):
            while _indexed(db) < 1 + fts.FOLD_ROWS:
                await anyio.sleep(0.01)
    _sql(db, f"INSERT INTO {fts.TABLE}({fts.TABLE}, rank) VALUES ('integrity-check', 1)")


async def test_deleting_a_thread_whose_events_wait_for_the_fold_keeps_the_index_whole(tmp_path: Path) -> None:
    root = tmp_path / "root"
    async with ThreadService(SQLiteStore(root, durability="normal")) as svc:
        kept = await svc.create_thread(title="kept")
        await svc.append(kept.thread_id, [{"type": "message", "role": "user", "text": "wombat one"}])
        await svc.search_threads("wombat")  # folded
        gone = await svc.create_thread(title="gone")
        await svc.append(gone.thread_id, [{"type": "message", "role": "user", "text": "wombat two"}])
        await svc.update_thread(gone.thread_id, status="completed")
        await svc.delete_threads([gone.thread_id])  # its event is still in the tail
        found = await svc.search_threads("wombat")
        assert [r.thread_id for r in found.results] == [kept.thread_id]
    _sql(root / "threads.db", f"INSERT INTO {fts.TABLE}({fts.TABLE}, rank) VALUES ('integrity-check', 1)")


async def test_words_after_a_nul_are_indexed_and_scanned(tmp_path: Path) -> None:
    """SQLite's json_extract cuts a text at a NUL: the index and the regex scan must not."""
    root = tmp_path / "root"
    async with ThreadService(SQLiteStore(root, durability="normal")) as svc:
        t = await svc.create_thread(title="nul")
        await svc.append(
            t.thread_id, [{"type": "message", "role": "user", "text": "binary\x00platypus tail"}]
        )
        found = await svc.search_threads("platypus")
        assert [r.thread_id for r in found.results] == [t.thread_id]
        regex = await svc.chain_search(t.thread_id, r"y\x00p", search_type="regex")
        assert [r.seq for r in regex.results] == [2]
