"""Read-only looks at the SQLite engine and a root's database file, for ``threadloom doctor``.

They run before any store opens the file: opening it for writing would run pending
migrations and set WAL, and doctor must report the file as it found it. The service
offers them as :meth:`ThreadService.inspect_database` and :meth:`ThreadService.engine_health`;
doctor turns what they found into report lines.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from ..results import DatabaseHealth, EngineHealth
from .schema import SQLITE_MIGRATIONS


def sqlite_engine() -> EngineHealth:
    """The SQLite this process links, and whether FTS5 works in it."""
    fts5_error = None
    conn = sqlite3.connect(":memory:")
    try:
        conn.execute("CREATE VIRTUAL TABLE fts_probe USING fts5(body)")
    except sqlite3.Error as exc:
        fts5_error = str(exc)
    finally:
        conn.close()
    return EngineHealth("SQLite", sqlite3.sqlite_version, tuple(sqlite3.sqlite_version_info), fts5_error)


def inspect_sqlite(db: Path) -> DatabaseHealth:
    """Journal mode, schema version and ``PRAGMA quick_check`` of ``db`` through a read-only
    connection (it changes nothing, not even the journal mode)."""
    known = len(SQLITE_MIGRATIONS)
    if not db.exists():
        return DatabaseHealth(db, exists=False, schema_known=known)
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error as exc:
        return DatabaseHealth(db, exists=True, schema_known=known, open_error=str(exc))
    found: dict[str, object] = {}
    try:
        found["journal_mode"] = conn.execute("PRAGMA journal_mode").fetchone()[0]
        try:
            version = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations").fetchone()[0]
        except sqlite3.Error:  # no migrations table yet: nothing was migrated
            version = 0
        found["schema_version"] = version
        if version <= known:  # a newer schema is not checked further by this threadloom
            found["quick_check"] = conn.execute("PRAGMA quick_check").fetchone()[0]
    except sqlite3.Error as exc:
        found["read_error"] = str(exc)
    finally:
        conn.close()
    return DatabaseHealth(db, exists=True, schema_known=known, **found)  # type: ignore[arg-type]
