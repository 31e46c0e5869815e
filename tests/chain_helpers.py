"""Helpers shared by the continuation-chain tests (not a test module)."""

from __future__ import annotations

import copy
import sqlite3
from pathlib import Path
from typing import Any

from threadloom.config import Settings
from threadloom.service import ThreadService
from threadloom.store import MemoryStore, SQLiteStore
from threadloom.store.base import Store
from threadloom.store.postgres import PostgresStore

WINDOW = 1000  # the smallest window a thread may have: 900 tokens (3600 chars) to the threshold
CEILING = 100  # tokens a handoff carries (400 characters)


def small(settings: Settings, **changes: Any) -> Settings:
    """Settings with a small window and ceiling so that a few events cross the threshold."""
    return settings.model_copy(update={"context_window": WINDOW, "resume_ceiling_tokens": CEILING, **changes})


def msg(text: str, role: str = "user") -> dict[str, Any]:
    return {"type": "message", "role": role, "text": text}


def use(call_id: str, name: str = "ls", **inp: Any) -> dict[str, Any]:
    return {"type": "tool_use", "id": call_id, "name": name, "input": inp}


def result(call_id: str, output: Any = "ok", is_error: bool = False) -> dict[str, Any]:
    return {"type": "tool_result", "tool_use_id": call_id, "output": output, "is_error": is_error}


def filler(n: int, size: int = 90) -> list[dict[str, Any]]:
    """``n`` alternating user/assistant messages of ``size`` characters each."""
    return [msg(f"{i:04d} " + "x" * (size - 5), "user" if i % 2 == 0 else "assistant") for i in range(n)]


async def fill_to(svc: ThreadService, tid: str, ratio: float = 0.85) -> None:
    """Append filler until the thread's context ratio reaches ``ratio`` (below the threshold)."""
    t = await svc.get_thread(tid)
    need = int(ratio * t.context_window * 4) - t.text_chars
    events = filler(max(1, need // 90))
    await svc.append(tid, events)


async def conversation_events(svc: ThreadService, tid: str) -> list[dict[str, Any]]:
    return [
        e.data()
        for e in await svc.all_events(tid)
        if e.type in ("message", "tool_use", "tool_result", "assistant_text")
    ]


def snapshot(store: Store) -> Any:
    """Everything a store holds: its rows (or dicts) and, for SQLite, every mirror file's bytes."""
    if isinstance(store, MemoryStore):
        return copy.deepcopy((store._threads, store._events, store._idem))
    if isinstance(store, PostgresStore):
        import psycopg

        with psycopg.connect(store.dsn) as pg:
            return {
                table: pg.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall()
                for table in ("threads", "events", "idempotency")
            }
    assert isinstance(store, SQLiteStore)
    conn = sqlite3.connect(f"file:{store.path}?mode=ro", uri=True)
    try:
        db = {
            table: conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall()
            for table in ("threads", "events", "idempotency")
        }
    finally:
        conn.close()
    files = {
        str(p.relative_to(store.root)): p.read_bytes()
        for p in sorted(Path(store.root, "threads").rglob("*"))
        if p.is_file()
    }
    return db, files
