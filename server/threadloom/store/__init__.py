"""Store backends behind one interface; :func:`make_store` picks one from settings.

Only the service builds stores (``ThreadService.for_settings``); the layers above call it.
"""

from __future__ import annotations

from pathlib import Path

from ..config import Settings
from ..errors import InvalidInputError
from ..integrity import Signer
from ..results import DatabaseHealth, EngineHealth
from .base import Store
from .memory import MemoryStore
from .sqlite import SQLiteStore

__all__ = [
    "Store",
    "MemoryStore",
    "SQLiteStore",
    "make_store",
    "database_file",
    "inspect_database",
    "engine_health",
]


def make_store(settings: Settings, *, repair: bool = True, mirrors: bool = True) -> Store:
    """The store named by ``settings.store``: ``sqlite`` under ``settings.root``, ``memory``,
    or a ``postgresql://`` URL.

    A sqlite store signs with the root's key (``<root>/keys``); a memory store with a key
    that lives as long as the process. ``repair=False``: no start-up mirror repair (a look
    must not change the files); ``mirrors=False``: no mirror files at all (a scratch copy).
    """
    if settings.store == "sqlite":
        return SQLiteStore(
            settings.root,
            durability=settings.durability,
            signer=Signer.for_root(settings.root),
            reconcile=repair,
            mirrors=mirrors,
        )
    if settings.store == "memory":
        return MemoryStore()
    if settings.store.startswith(("postgresql://", "postgres://")):
        from .postgres import PostgresStore  # psycopg is imported only when asked for

        return PostgresStore(
            settings.store, durability=settings.durability, signer=Signer.for_root(settings.root)
        )
    raise InvalidInputError(
        f"store must be 'sqlite', 'memory' or a postgresql:// URL; got {settings.store!r}",
        rule="store_kind",
    )


def database_file(settings: Settings) -> Path | None:
    """The file that holds the root's data when the store is ``sqlite`` (None for others)."""
    return Path(settings.root) / "threads.db" if settings.store == "sqlite" else None


def inspect_database(settings: Settings) -> DatabaseHealth | None:
    """A read-only look at the database file (sqlite only; None for other stores)."""
    from .health import inspect_sqlite

    db = database_file(settings)
    return None if db is None else inspect_sqlite(db)


def engine_health(settings: Settings) -> EngineHealth | None:
    """The SQLite engine this process links (sqlite only; None for other stores)."""
    from .health import sqlite_engine

    return sqlite_engine() if settings.store == "sqlite" else None
