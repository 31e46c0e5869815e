"""The SQLite rows hold nothing they can rebuild (migration 0010, issue 17 item 3).

A store in the previous layout (made here in SQL from one the current code wrote: ``ts``
in every row, ``prev_hash`` in hex, full manifest documents, default accounts spelled out,
4 KiB pages) converts when it is opened, and then reads, verifies and searches exactly as
before: the same events (ts, lines, hashes), manifests, hits, snippets and ranking; and
the same again after ``reindex``, which gives back the pages the conversion freed.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from search_helpers import QUERIES as BASE_QUERIES
from search_helpers import WORDS, search_answers
from threadloom.integrity import GENESIS
from threadloom.models import MANIFEST_FIELDS, Thread, canonical_json
from threadloom.service import ThreadService
from threadloom.store import SQLiteStore, fts
from threadloom.store.schema import SQLITE_MIGRATIONS
from threadloom.store.sqlrows import DEFAULT_ACCOUNTS, event_ts, hash_hex, hash_value, line_ts, stored_ts

pytestmark = pytest.mark.anyio

QUERIES = [*BASE_QUERIES, "nul"]


def _sql(path: Path, *statements: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        out: list[tuple[Any, ...]] = []
        for st in statements:
            out = conn.execute(st, args if "?" in st else ()).fetchall()
        return out
    finally:
        conn.close()


async def _fill(svc: ThreadService) -> list[str]:
    ids = []
    parent = None
    for t in range(5):
        thread = await svc.create_thread(agent_id=f"agent{t % 2}", title=f"t{t}", parent_id=parent)
        parent = parent or thread.thread_id
        for turn in range(3):
            events: list[dict[str, Any]] = []
            for i in range(4):
                a, b, c = WORDS[(t + i) % 10], WORDS[(2 * t + i + turn) % 10], WORDS[(t * i + turn) % 10]
                events.append({"type": "message", "role": "user", "text": f"{a} {b} and then {c} {i}"})
                # a nested "ts" key before the event's own
                events.append(
                    {"type": "tool_use", "id": f"u{turn}{i}", "name": "grep", "input": {"q": b, "ts": "x"}}
                )
                events.append(
                    {"type": "tool_result", "tool_use_id": f"u{turn}{i}", "output": f"{c} found {i}"}
                )
                events.append({"type": "assistant_text", "text": f"the {b} near the {a}, not {c}\u0000nul"})
            # a custom event whose keys sort after "type", one of them holding a "ts"
            events.append({"type": "x-note", "zz": {"ts": "2001-01-01T00:00:00Z"}})
            await svc.append(thread.thread_id, events)
        if t == 1:
            await svc.append(
                thread.thread_id, [{"type": "result", "cost": 0.25, "turns": 1, "input_tokens": 10}]
            )
        if t % 2 == 0:
            await svc.update_thread(thread.thread_id, status="completed", result="ok")
        ids.append(thread.thread_id)
    return ids


async def _state(svc: ThreadService, ids: list[str]) -> list[Any]:
    out: list[Any] = []
    for tid in ids:
        out.append((await svc.get_thread(tid)).model_dump())
        out.append([(e.seq, e.ts, e.type, e.line, e.prev_hash) for e in await svc.all_events(tid)])
        report = await svc.verify_thread(tid)
        out.append((report.ok, [p.rule for p in report.problems]))
    return out


def _to_previous_layout(db: Path, threads: list[Thread]) -> None:
    """Rewrite the rows as migrations 0001-0009 left them, and record version 9."""
    _sql(
        db,
        f"DROP VIEW {fts.VIEW}",
        """CREATE TABLE events_old (
            id        INTEGER PRIMARY KEY,
            thread_id TEXT NOT NULL,
            seq       INTEGER NOT NULL,
            ts        TEXT NOT NULL,
            type      TEXT NOT NULL,
            line      TEXT NOT NULL,
            prev_hash TEXT,
            UNIQUE (thread_id, seq)
        )""",
        "INSERT INTO events_old SELECT id, thread_id, seq, COALESCE(ts, json_extract(line, '$.ts')), type, line,"
        " CASE WHEN prev_hash IS NULL THEN NULL ELSE lower(hex(prev_hash)) END FROM events ORDER BY id",
        "DROP TABLE events",
        "ALTER TABLE events_old RENAME TO events",
        fts.VIEW_SQL,
        "UPDATE threads SET accounts = ? WHERE accounts IS NULL",
        args=(DEFAULT_ACCOUNTS,),
    )
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        for t in threads:  # the document as the previous manifest_doc wrote it: every field
            doc = canonical_json(t.model_dump(mode="json", include=set(MANIFEST_FIELDS)))
            conn.execute("UPDATE threads SET doc = ? WHERE thread_id = ?", (doc, t.thread_id))
        conn.execute("DELETE FROM schema_migrations WHERE version = 10")
        conn.execute("PRAGMA journal_mode=DELETE")
        conn.execute("PRAGMA page_size=4096")
        conn.execute("VACUUM")
        conn.execute("PRAGMA journal_mode=WAL")
    finally:
        conn.close()


def _row_bytes(db: Path, table: str) -> int:
    """The bytes of a table's rows (not of its pages: a small store is mostly empty pages)."""
    return _sql(db, "SELECT sum(payload) FROM dbstat WHERE name = ?", args=(table,))[0][0]


async def test_a_store_in_the_previous_layout_converts_and_answers_the_same(tmp_path: Path) -> None:
    root = tmp_path / "root"
    db = root / "threads.db"
    async with ThreadService(SQLiteStore(root, durability="normal")) as svc:
        ids = await _fill(svc)
        before = await search_answers(svc, ids, QUERIES)
        state = await _state(svc, ids)
        threads = [await svc.get_thread(t) for t in ids]
    assert all(ok for ok, _ in state[2::3])
    events = _sql(db, "SELECT count(*) FROM events")[0][0]

    _to_previous_layout(db, threads)
    assert (
        _sql(db, "SELECT count(*) FROM events WHERE typeof(prev_hash) = 'text' AND length(prev_hash) = 64")[
            0
        ][0]
        == events
    )
    assert (
        _sql(db, "SELECT count(*) FROM threads WHERE accounts IS NOT NULL AND doc LIKE '%\"status\":%'")[0][0]
        == 5
    )
    old_bytes = {t: _row_bytes(db, t) for t in ("events", "threads")}

    async with ThreadService(SQLiteStore(root, durability="normal")) as migrated:
        assert _sql(db, "SELECT max(version) FROM schema_migrations")[0][0] == len(SQLITE_MIGRATIONS)
        assert await search_answers(migrated, ids, QUERIES) == before
        assert await _state(migrated, ids) == state
        free = _sql(db, "PRAGMA freelist_count")[0][0]
        assert free >= 0.25 * _sql(db, "PRAGMA page_count")[0][0]  # the old events table's pages
        stats = await migrated.reindex()
        assert (stats.added, stats.removed) == (0, 0)
        assert stats.reclaimed >= free * 4096 and _sql(db, "PRAGMA freelist_count")[0][0] == 0
        assert await search_answers(migrated, ids, QUERIES) == before
        assert await _state(migrated, ids) == state
        assert (await migrated.reindex()).reclaimed == 0  # nothing left to give back

    # the rows are lean: hashes as bytes, ts only where the line does not give it back
    assert (
        _sql(db, "SELECT count(*) FROM events WHERE typeof(prev_hash) = 'blob' AND length(prev_hash) = 32")[
            0
        ][0]
        == events
    )
    explicit = _sql(db, "SELECT type, count(*) FROM events WHERE ts IS NOT NULL GROUP BY type")
    assert explicit == [("x-note", 15)]  # their "zz" key follows "type" and holds a "ts"
    # all but the thread that spent and its parent, to which the spend cascades
    assert _sql(db, "SELECT count(*) FROM threads WHERE accounts IS NULL")[0][0] == 3
    docs = [r[0] for r in _sql(db, "SELECT doc FROM threads")]
    assert not any('"status"' in d or "null" in d or '"thread_id"' in d for d in docs)
    assert _row_bytes(db, "events") < 0.85 * old_bytes["events"]
    assert _row_bytes(db, "threads") < 0.6 * old_bytes["threads"]
    _sql(db, f"INSERT INTO {fts.TABLE}({fts.TABLE}, rank) VALUES ('integrity-check', 1)")


async def test_edits_behind_the_stores_back_survive_the_conversion_as_they_were(tmp_path: Path) -> None:
    """A hash that is not lowercase hex and a line whose ``ts`` differs from the row's are
    kept as written, so verification reports the same problems after the conversion."""
    root = tmp_path / "root"
    db = root / "threads.db"
    async with ThreadService(SQLiteStore(root, durability="normal")) as svc:
        ids = await _fill(svc)
        threads = [await svc.get_thread(t) for t in ids]
    _to_previous_layout(db, threads)
    tid = ids[0]
    _sql(db, "UPDATE events SET prev_hash = upper(prev_hash) WHERE thread_id = ? AND seq = 3", args=(tid,))
    _sql(db, "UPDATE events SET ts = '2000-01-01T00:00:00Z' WHERE thread_id = ? AND seq = 4", args=(tid,))
    async with ThreadService(SQLiteStore(root, durability="normal")) as migrated:
        evs = {e.seq: e for e in await migrated.all_events(tid)}
        report = await migrated.verify_thread(tid)
    assert (
        evs[3].prev_hash is not None
        and evs[3].prev_hash == evs[3].prev_hash.upper() != evs[3].prev_hash.lower()
    )
    assert evs[4].ts == "2000-01-01T00:00:00Z" != line_ts(evs[4].line)
    assert {p.rule for p in report.problems} == {"hash_chain"}
    assert report.first_bad_line == 2  # event 2 no longer hashes to what event 3 holds
    assert _sql(db, "SELECT typeof(prev_hash) FROM events WHERE thread_id = ? AND seq = 3", args=(tid,)) == [
        ("text",)
    ]


def test_row_values_read_back_as_written() -> None:
    line = '{"role":"user","seq":1,"text":"a \\"ts\\":\\"no\\"","ts":"2026-01-02T03:04:05.000006Z","type":"message"}'
    assert line_ts(line) == "2026-01-02T03:04:05.000006Z"
    assert stored_ts("2026-01-02T03:04:05.000006Z", line) is None
    assert event_ts(None, line) == "2026-01-02T03:04:05.000006Z"
    later = '{"seq":2,"ts":"2026-01-02T03:04:05Z","type":"x-a","zz":{"ts":"1999"}}'
    assert stored_ts("2026-01-02T03:04:05Z", later) == "2026-01-02T03:04:05Z"  # kept: the line would say 1999
    assert event_ts(stored_ts("2026-01-02T03:04:05Z", later), later) == "2026-01-02T03:04:05Z"
    assert event_ts(None, "not json") == ""
    h = "ab" * 32
    assert hash_value(h) == bytes.fromhex(h) and hash_hex(hash_value(h)) == h
    assert hash_value(GENESIS) == bytes(32)
    for odd in (h.upper(), "ab" * 31, "zz" * 32, None):
        assert hash_value(odd) == odd and hash_hex(hash_value(odd)) == odd
